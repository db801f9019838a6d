//! Gets a token with `DefaultAzureCredential`, as an application would: from the environment,
//! a workload identity, the host's managed identity, the shared token cache, Azure CLI or
//! Azure Developer CLI — whichever answers first (`AZURE_TOKEN_CREDENTIALS=dev` or `prod`
//! narrows the list). Prints which credential answered and when the token expires — never the
//! token itself, unless `--show-token` is given. `RUST_LOG=tower_identity=debug` shows why each
//! credential before it was unavailable.
//!
//! ```text
//! cargo run --example get_token -- --scope https://management.azure.com/.default
//! cargo run --example get_token -- --scope https://graph.microsoft.com/.default --tenant contoso.onmicrosoft.com
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tower_identity::{CredentialExt, DefaultAzureCredential, HttpClient, Roots, TokenRequest};

const USAGE: &str =
    "usage: get_token --scope <scope> [--scope <scope>…] [--tenant <tenant>] [--show-token]";

struct Args {
    scopes: Vec<String>,
    tenant: Option<String>,
    show_token: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scopes: Vec::new(),
        tenant: None,
        show_token: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--scope" => args.scopes.push(it.next().ok_or("--scope needs a value")?),
            "--tenant" => args.tenant = Some(it.next().ok_or("--tenant needs a value")?),
            "--show-token" => args.show_token = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.scopes.is_empty() {
        args.scopes
            .push("https://management.azure.com/.default".into());
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("RUST_LOG"))
        .init();

    // Token requests trust Mozilla's roots and the platform's store, where IT installs the CA
    // of a TLS-inspecting proxy (on Linux, SSL_CERT_FILE or SSL_CERT_DIR name the store).
    let credential = HttpClient::builder()
        .roots(Roots::BundledAndPlatform)
        .build()
        .and_then(|http| DefaultAzureCredential::builder().http_client(http).build());
    let credential = match credential {
        Ok(credential) => credential,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut request = TokenRequest::new(args.scopes.clone());
    if let Some(tenant) = &args.tenant {
        request = request.with_tenant_id(tenant.clone());
    }
    match credential.get_token_with(request).await {
        Ok(token) => {
            let expires_in = token.expires_in();
            let at = SystemTime::now() + expires_in;
            println!("scopes:      {}", args.scopes.join(" "));
            println!("answered by: {}", token.credential().unwrap_or("unknown"));
            println!(
                "expires:     {} (in {})",
                httpdate::fmt_http_date(at),
                human(expires_in)
            );
            if args.show_token {
                println!("token:       {}", token.secret().expose_secret());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h {:02}m {:02}s", s / 3600, s % 3600 / 60, s % 60)
}
