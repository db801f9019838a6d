//! A credential inside tower middleware: `EnvironmentCredential` (set `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`) with at most 10 s per attempt and up to two
//! retries of transient failures, falling back to Azure CLI when the environment is not
//! configured. Prints which credential answered and when the token expires.
//!
//! ```text
//! cargo run --example credential_middleware -- https://management.azure.com/.default
//! ```

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use tower::ServiceBuilder;
use tower::retry::Policy;
use tower_identity::{
    AccessToken, AzureCliCredential, CredentialError, CredentialExt, EnvironmentCredential,
    HttpClient, Roots, TokenRequest,
};

/// Retries failures that may pass by themselves (timeouts, 5xx, throttling), waiting
/// 1 s, then 2 s.
#[derive(Clone)]
struct RetryTransient {
    attempt: u32,
}

impl Policy<TokenRequest, AccessToken, CredentialError> for RetryTransient {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut TokenRequest,
        result: &mut Result<AccessToken, CredentialError>,
    ) -> Option<Self::Future> {
        let Err(error) = result else { return None };
        if !error.is_transient() || self.attempt >= 2 {
            return None;
        }
        self.attempt += 1;
        // Wait at least as long as the provider asked.
        let wait = Duration::from_secs(1 << (self.attempt - 1))
            .max(error.retry_after().unwrap_or_default());
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, request: &TokenRequest) -> Option<TokenRequest> {
        Some(request.clone())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let scope = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "https://management.azure.com/.default".into());

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
    // The timeout inside, so each attempt gets its own 10 s; `with_middleware` turns its
    // elapsed deadline into a transient `CredentialError`, which the retry policy retries.
    let timed = EnvironmentCredential::builder()
        .http_client(http)
        .build()
        .with_middleware(ServiceBuilder::new().timeout(Duration::from_secs(10)));
    // `Retry` keeps the credential's error type: it is a credential as it stands.
    let credential = ServiceBuilder::new()
        .retry(RetryTransient { attempt: 0 })
        .service(timed)
        .or(AzureCliCredential::new());

    match credential.get_token([scope]).await {
        Ok(token) => {
            println!("answered by: {}", token.credential().unwrap_or("unknown"));
            println!("expires in:  {} s", token.expires_in().as_secs());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
