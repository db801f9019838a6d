//! Gets a token the way a developer machine or a CI job would: from the environment
//! (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`), else from the Azure CLI.
//! Prints which credential answered and when the token expires — never the token itself,
//! unless `--show-token` is given.
//!
//! ```text
//! cargo run --example get_token -- --scope https://management.azure.com/.default
//! cargo run --example get_token -- --scope https://graph.microsoft.com/.default --tenant contoso.onmicrosoft.com
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tower_identity::{AzureCliCredential, CredentialExt, EnvironmentCredential, TokenRequest};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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

/// Remembers the credential named by the chain's "credential answered" event.
#[derive(Clone, Default)]
struct Answered(Arc<Mutex<Option<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Answered {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        struct Find(Option<String>);
        impl Visit for Find {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "credential" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        let mut find = Find(None);
        event.record(&mut find);
        if let Some(name) = find.0 {
            *self.0.lock().unwrap() = Some(name);
        }
    }
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
    let answered = Answered::default();
    tracing_subscriber::registry()
        .with(answered.clone())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::from_env("RUST_LOG")),
        )
        .init();

    let credential = EnvironmentCredential::new().or(AzureCliCredential::new());
    let mut request = TokenRequest::new(args.scopes.clone());
    if let Some(tenant) = &args.tenant {
        request = request.tenant_id(tenant.clone());
    }
    match credential.get_token_with(request).await {
        Ok(token) => {
            let who = answered.0.lock().unwrap().clone();
            let expires_in = token.expires_in();
            let at = SystemTime::now() + expires_in;
            println!("scopes:      {}", args.scopes.join(" "));
            println!("answered by: {}", who.as_deref().unwrap_or("unknown"));
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
