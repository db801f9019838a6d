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

/// The longest this program waits before a retry. A throttled credential may be asked to
/// wait up to an hour; rather than sleep that long, the program gives up with the
/// credential's error, which says how long the provider asked to wait.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Retries failures that may pass by themselves (timeouts, 5xx, throttling), waiting
/// 1 s, then 2 s, or as long as the provider asked if that is longer (at most [`MAX_WAIT`]).
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
        // Wait at least as long as the provider asked, within reason.
        let wait =
            Duration::from_secs(1 << self.attempt).max(error.retry_after().unwrap_or_default());
        if wait > MAX_WAIT {
            return None;
        }
        self.attempt += 1;
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
