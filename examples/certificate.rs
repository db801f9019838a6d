//! Gets a token with a certificate, configured the way azure-identity reads it:
//!
//! | variable | meaning |
//! |---|---|
//! | `AZURE_TENANT_ID` | the tenant (directory) id |
//! | `AZURE_CLIENT_ID` | the app's client id |
//! | `AZURE_CLIENT_CERTIFICATE_PATH` | PEM (certificate + RSA key) or PKCS#12 (`.pfx`) |
//! | `AZURE_CLIENT_CERTIFICATE_PASSWORD` | optional: the PKCS#12 password |
//! | `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` | optional: any non-empty value sends the chain (`x5c`) |
//! | `AZURE_AUTHORITY_HOST` | optional: another cloud |
//!
//! Prints the scope and when the token expires, never the token.
//!
//! ```text
//! AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_CERTIFICATE_PATH=/etc/app/cert.pem \
//!   cargo run --example certificate -- --scope https://graph.microsoft.com/.default
//! ```

use std::process::ExitCode;

use tower_identity::{
    CertificateSource, ClientCertificateCredential, CredentialExt, HttpClient, Roots, Secret,
};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let scope = match (args.next().as_deref(), args.next()) {
        (None, _) => "https://management.azure.com/.default".to_owned(),
        (Some("--scope"), Some(scope)) => scope,
        _ => {
            eprintln!("usage: certificate [--scope <scope>]");
            return ExitCode::from(2);
        }
    };
    let (Some(tenant), Some(client), Some(path)) = (
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID"),
        var("AZURE_CLIENT_CERTIFICATE_PATH"),
    ) else {
        eprintln!(
            "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH \
             (and AZURE_CLIENT_CERTIFICATE_PASSWORD for a protected .pfx)"
        );
        return ExitCode::from(2);
    };
    let password = var("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Secret::new);
    // Token requests trust Mozilla's roots and the platform's store, where IT installs the CA
    // of a TLS-inspecting proxy (on Linux, SSL_CERT_FILE or SSL_CERT_DIR name the store).
    let http = match HttpClient::builder()
        .roots(Roots::BundledAndPlatform)
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    // Everything is read and checked here: a wrong password, an expired certificate or a key
    // that does not match fails now, with a message that says which.
    let credential = ClientCertificateCredential::builder(
        tenant,
        client,
        CertificateSource::from_path(path, password),
    )
    .send_certificate_chain(var("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN").is_some())
    .http_client(http)
    .build();
    let credential = match credential {
        Ok(credential) => credential,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match credential.get_token([scope.as_str()]).await {
        Ok(token) => {
            println!("scope:   {scope}");
            println!("expires: in {} s", token.expires_in().as_secs());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
