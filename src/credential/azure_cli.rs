//! [`AzureCliCredential`]: the account signed in to the Azure CLI (`az login`).
//!
//! Runs `az account get-access-token --output json --scope <scope> [--tenant <tenant>]`
//! directly (no shell), with a timeout, and reads the token and its `expires_on`. Scope and
//! tenant are checked character by character before they reach the command line.
//!
//! *Unavailable* (a chain moves on) when `az` is not installed, not signed in, or too slow;
//! *authentication failed* for any other failure of `az`. Tokens are kept in memory and
//! renewed like every other credential's, so concurrent callers start one `az` process.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::arc_credential_service;
use super::settings::{Settings, settings_setters};
use crate::cache::{CacheKey, TokenCache};
use crate::entra::authority::TenantPolicy;
use crate::entra::token_client::number;
use crate::error::CredentialError;
use crate::redact::scrub;
use crate::token::{AccessToken, TokenRequest, instant_from_unix, unix_now};

const NAME: &str = "AzureCliCredential";
/// How long `az` may take by default (it may refresh its own tokens over the network).
const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_PROGRAM: &str = if cfg!(windows) { "az.cmd" } else { "az" };
const NOT_SIGNED_IN: &str = "Azure CLI is not signed in. Run 'az login' to sign in, then try again";

/// Gets tokens from the Azure CLI's signed-in account.
#[derive(Clone)]
pub struct AzureCliCredential {
    inner: Arc<Inner>,
}

struct Inner {
    program: PathBuf,
    tenants: TenantPolicy,
    timeout: Duration,
    cache: TokenCache,
}

impl AzureCliCredential {
    /// `az` from `PATH`, its default tenant, a 10 s timeout.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default settings have no tenant to validate")
    }

    /// A builder for the tenant, the timeout and the `az` program.
    pub fn builder() -> AzureCliCredentialBuilder {
        AzureCliCredentialBuilder {
            program: PathBuf::from(DEFAULT_PROGRAM),
            tenant_id: None,
            settings: Settings::default(),
            timeout: DEFAULT_PROCESS_TIMEOUT,
        }
    }
}

impl Default for AzureCliCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        request.validate(NAME)?;
        if request.claims_json().is_some() {
            return Err(CredentialError::unavailable(
                NAME,
                "Azure CLI cannot answer a claims challenge here. Run \
                 'az login --claims-challenge <base64 claims> --scope <scope>' and try again",
            ));
        }
        let [scope] = request.scopes() else {
            return Err(CredentialError::invalid_request(
                NAME,
                format!(
                    "Azure CLI takes exactly one scope per request; got {}",
                    request.scopes().len()
                ),
            ));
        };
        validate_scope(scope).map_err(|m| CredentialError::invalid_request(NAME, m))?;
        let tenant = self
            .tenants
            .resolve(request.requested_tenant())
            .map_err(|m| CredentialError::invalid_request(NAME, m))?
            .map(str::to_owned);
        let key = CacheKey::new(tenant.as_deref().unwrap_or(""), request.scopes(), false);
        let this = Arc::clone(self);
        let scope = scope.clone();
        self.cache
            .get_or_acquire(key, false, move || async move {
                this.run_az(&scope, tenant.as_deref()).await
            })
            .await
    }

    async fn run_az(
        &self,
        scope: &str,
        tenant: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args([
            "account",
            "get-access-token",
            "--output",
            "json",
            "--scope",
            scope,
        ]);
        if let Some(tenant) = tenant {
            command.args(["--tenant", tenant]);
        }
        command
            .env("AZURE_CORE_NO_COLOR", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Run from a system directory, not wherever the caller happens to be.
        if let Some(dir) = safe_working_dir() {
            command.current_dir(dir);
        }
        let child = spawn(&mut command).await.map_err(|e| {
            let message = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "Azure CLI not found ({} is not on PATH). Install it from \
                     https://aka.ms/azure-cli and run 'az login'",
                    self.program.display()
                ),
                _ => format!(
                    "could not start Azure CLI ({}): {e}",
                    self.program.display()
                ),
            };
            CredentialError::unavailable(NAME, message)
        })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return Err(CredentialError::unavailable(
                    NAME,
                    format!("reading Azure CLI's output failed: {e}"),
                ));
            }
            // The child is killed when its handle drops with the timed-out future.
            Err(_) => {
                return Err(CredentialError::unavailable(
                    NAME,
                    format!(
                        "Azure CLI did not answer within {:?}. Check that 'az account get-access-token' \
                         works in a terminal",
                        self.timeout
                    ),
                ));
            }
        };
        if !output.status.success() {
            return Err(classify_failure(&String::from_utf8_lossy(&output.stderr)));
        }
        parse_output(&output.stdout)
    }
}

/// Starts the command. "Text file busy" (a process forked elsewhere in this program still
/// holds a just-written executable open, between its fork and exec) passes in moments, so it
/// is retried a few times.
async fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// `az` failed: not signed in is *unavailable*; anything else is a failure quoting `az`.
fn classify_failure(stderr: &str) -> CredentialError {
    if stderr.contains("az login") || stderr.contains("az account set") {
        return CredentialError::unavailable(NAME, NOT_SIGNED_IN);
    }
    let detail = scrub(stderr.trim(), &[]);
    let first = detail
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error output");
    let first = first.strip_prefix("ERROR: ").unwrap_or(first);
    CredentialError::authentication_failed(NAME, format!("Azure CLI failed: {first}"))
}

/// Parses `az account get-access-token --output json`.
pub(crate) fn parse_output(stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    let unexpected = |why: &str| {
        CredentialError::authentication_failed(
            NAME,
            format!("unexpected output from Azure CLI: {why}"),
        )
    };
    let json: Value = serde_json::from_slice(stdout).map_err(|_| unexpected("not JSON"))?;
    let secret = match json.get("accessToken") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        _ => return Err(unexpected("no accessToken")),
    };
    let Some(expires_on) = json.get("expires_on").and_then(number) else {
        return Err(if json.get("expiresOn").is_some() {
            unexpected(
                "no expires_on (only the local-time expiresOn, which cannot be read reliably); upgrade Azure CLI to 2.54 or later",
            )
        } else {
            unexpected("no expires_on")
        });
    };
    if expires_on <= unix_now() {
        return Err(CredentialError::authentication_failed(
            NAME,
            "Azure CLI returned an expired token; check the system clock, or run 'az login' again",
        ));
    }
    let token_type = json
        .get("tokenType")
        .and_then(Value::as_str)
        .unwrap_or("Bearer");
    Ok(AccessToken::new(secret, instant_from_unix(expires_on)).with_token_type(token_type))
}

/// Scopes reach a command line: ASCII letters, digits and `_-.:/` only.
fn validate_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.starts_with('-') {
        return Err(format!("scope {scope:?} is not valid for Azure CLI"));
    }
    match scope
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:/".contains(*c)))
    {
        Some(bad) => Err(format!(
            "scope {scope:?} contains {bad:?}; only ASCII letters, digits, '_', '-', '.', ':' and '/' are allowed"
        )),
        None => Ok(()),
    }
}

fn safe_working_dir() -> Option<PathBuf> {
    let dir = if cfg!(windows) {
        PathBuf::from(std::env::var_os("SYSTEMROOT")?)
    } else {
        PathBuf::from("/bin")
    };
    dir.is_dir().then_some(dir)
}

arc_credential_service!(AzureCliCredential);

impl fmt::Debug for AzureCliCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("program", &self.inner.program)
            .field("tenant_id", &self.inner.tenants.tenant())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// Settings for an [`AzureCliCredential`].
#[derive(Debug)]
pub struct AzureCliCredentialBuilder {
    program: PathBuf,
    tenant_id: Option<String>,
    settings: Settings,
    timeout: Duration,
}

settings_setters!(AzureCliCredentialBuilder {
    additionally_allowed_tenants,
    disable_multitenant_auth,
});

impl AzureCliCredentialBuilder {
    /// Ask `az` for tokens from this tenant (`--tenant`). Default: `az`'s current account.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// How long `az` may take (default 10 s); it is killed after that.
    pub fn process_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `az` executable to run (default `az` from `PATH`).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Validates the tenant ids and builds.
    pub fn build(self) -> Result<AzureCliCredential, crate::ConfigError> {
        let tenants = self.settings.tenants(NAME, self.tenant_id.as_deref())?;
        Ok(AzureCliCredential {
            inner: Arc::new(Inner {
                program: self.program,
                tenants,
                timeout: self.timeout,
                cache: TokenCache::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_with_shell_or_flag_characters_are_rejected() {
        assert!(validate_scope("https://management.azure.com/.default").is_ok());
        assert!(validate_scope("api://my-app_1/.default").is_ok());
        for bad in [
            "", "--debug", "a b", "a;b", "a&b", "a|b", "a$b", "a\"b", "ü", "a\nb",
        ] {
            assert!(validate_scope(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn not_signed_in_is_unavailable_other_failures_are_not() {
        let e = classify_failure("ERROR: Please run 'az login' to setup account.\n");
        assert!(e.is_unavailable());
        assert!(e.message().contains("Run 'az login'"), "{e}");
        let e =
            classify_failure("ERROR: AADSTS70043: The refresh token has expired eyJa.b.c\nmore");
        assert!(e.is_authentication_failed());
        assert_eq!(
            e.message(),
            "Azure CLI failed: AADSTS70043: The refresh token has expired ***"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn output_parsing() {
        let future = unix_now() + 3600;
        let ok = format!(
            r#"{{"accessToken":"tok","expiresOn":"2030-01-01 00:00:00.000000","expires_on":{future},"subscription":"s","tenant":"t","tokenType":"Bearer"}}"#
        );
        let t = parse_output(ok.as_bytes()).unwrap();
        assert_eq!(t.secret().expose_secret(), "tok");
        assert!(t.expires_in() > Duration::from_secs(3590));
        let as_string = format!(r#"{{"accessToken":"tok","expires_on":"{future}"}}"#);
        assert!(parse_output(as_string.as_bytes()).is_ok());
        let old = r#"{"accessToken":"tok","expiresOn":"2030-01-01 00:00:00.000000"}"#;
        assert!(
            parse_output(old.as_bytes())
                .unwrap_err()
                .message()
                .contains("upgrade Azure CLI")
        );
        let expired = r#"{"accessToken":"tok","expires_on":1000}"#;
        assert!(
            parse_output(expired.as_bytes())
                .unwrap_err()
                .message()
                .contains("expired")
        );
        assert!(
            parse_output(b"garbage")
                .unwrap_err()
                .message()
                .contains("not JSON")
        );
    }

    #[tokio::test]
    async fn missing_az_is_unavailable_with_install_hint() {
        let c = AzureCliCredential::builder()
            .program("/nonexistent/az-not-here")
            .build()
            .unwrap();
        let err = crate::CredentialExt::get_token(&c, ["https://management.azure.com/.default"])
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.message().contains("Install it"), "{err}");
    }

    #[test]
    fn build_validates_tenant_ids() {
        assert!(
            AzureCliCredential::builder()
                .tenant_id("a;b")
                .build()
                .is_err()
        );
        assert!(
            AzureCliCredential::builder()
                .additionally_allowed_tenants(["a b"])
                .build()
                .is_err()
        );
    }
}
