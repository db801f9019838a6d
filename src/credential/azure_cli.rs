//! [`AzureCliCredential`]: the account signed in to the Azure CLI (`az login`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::arc_credential_service;
use super::process::{self, Tool};
use super::settings::settings_setters;
use super::tool::{Inner, ToolSettings};
use crate::cache::CacheKey;
use crate::encoding::{decode_base64, number};
use crate::error::{ConfigError, CredentialError};
use crate::flight::{SingleFlight, WhenAbandoned};
use crate::token::{AccessToken, TokenRequest, instant_from_unix, unix_now};

const NAME: &str = "AzureCliCredential";
const DEFAULT_PROGRAM: &str = if cfg!(windows) { "az.cmd" } else { "az" };
const AZ: Tool = Tool {
    credential: NAME,
    display: "Azure CLI",
    install_hint: "Install it from https://aka.ms/azure-cli and run 'az login'",
    try_command: "az account get-access-token --output json",
};
const NOT_SIGNED_IN: &str = "Azure CLI is not signed in. Run 'az login' to sign in, then try again";

/// Gets tokens from the Azure CLI's signed-in account.
///
/// Runs `az account get-access-token --output json --scope <scope> [--tenant <tenant>]`
/// directly (no shell), from a system directory (`/bin`, else `/`; on Windows
/// `%SYSTEMROOT%`, without which it is *unavailable*), and reads the token and its
/// `expires_on`. Azure CLI before 2.54 prints no `expires_on`, only a local time without its
/// zone; then the expiry is read from the token itself (its `exp`, unverified), and when that
/// cannot be read either, the credential is *unavailable*, advising the upgrade. Scope and
/// tenant are checked character by character before they reach the command line; neither
/// may start with `-`.
///
/// `az` is not trusted to behave. Each run is bounded:
///
/// * it must exit within the timeout (10 s unless set with `process_timeout`);
/// * at most 1 MiB of its stdout and 1 MiB of its stderr are kept (it is read to the end, the
///   rest discarded); an error quotes at most 300 characters of one stderr line, scrubbed of
///   tokens;
/// * on Unix it runs in a process group of its own, and the whole group is killed (`SIGKILL`)
///   on timeout or when the run is abandoned (runtime shutdown) — the Linux `az` is a shell
///   script whose Python child would otherwise live on. A caller that stops waiting does not
///   abandon the run: it goes on for the token cache. Where this process is PID 1 with no
///   init (a container without `--init`), killed children of `az` are never reaped and stay
///   zombies; `az` inherits any file descriptor this process opened without close-on-exec;
/// * the answer is decided when `az` exits, not when its output pipes close: processes it left
///   behind still holding them are killed (on Unix; on Windows they live on), not waited for;
/// * an `expires_on` further ahead than a week is treated as a week.
///
/// *Unavailable* (a chain moves on) when `az` is not installed, not signed in, or too slow
/// (the error's `is_timeout` and `is_transient` are then true);
/// *authentication failed* for any other failure of `az`, including Entra refusing (an
/// `AADSTS` error, even when `az` also says to run `az login`). Tokens are kept in memory and
/// renewed like every other credential's, so concurrent callers start one `az` process. So
/// after `az login` as someone else, a token already cached is still the previous identity's
/// until its renewal (5 minutes before it expires); build a new credential to get the new
/// identity's at once.
///
/// A request with claims (a claims challenge) cannot be passed to `az`. While this
/// credential holds no valid token for the request's tenant and scope it is *unavailable*
/// with the `az login --claims-challenge … --scope …` command to run (Azure CLI 2.76 or
/// later). When such a token is held, `az` is asked
/// first (one run for concurrent challenges): once the user has run that command it answers
/// a new token, which is taken as the answer and cached in place of the rejected one;
/// otherwise the command is given as *authentication failed*, so that a chain does not
/// answer the challenge with another identity. `az` takes no claims, so a new token is all
/// this can check, not that it satisfies them: a token `az` renewed on its own (the held
/// one near its expiry, or `az` signed in again without the claims) passes too. The bearer
/// layer re-sends the request once with it; when the resource still refuses the token, that
/// 401 (with its challenge) is the caller's answer, and the next challenge gives the
/// command again.
#[derive(Clone)]
pub struct AzureCliCredential {
    inner: Arc<Inner<Self>>,
}

impl AzureCliCredential {
    /// `az` (on Windows `az.cmd`) from `PATH`, its default tenant, a 10 s timeout.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner::with_defaults(NAME, DEFAULT_PROGRAM)),
        }
    }

    /// A builder for the tenant, the timeout and the `az` program.
    pub fn builder() -> AzureCliCredentialBuilder {
        AzureCliCredentialBuilder {
            tool: ToolSettings::new(NAME, DEFAULT_PROGRAM),
        }
    }
}

impl Default for AzureCliCredential {
    fn default() -> Self {
        Self::new()
    }
}

arc_credential_service!(AzureCliCredential);

impl fmt::Debug for AzureCliCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Settings for an [`AzureCliCredential`].
pub struct AzureCliCredentialBuilder {
    tool: ToolSettings,
}

impl AzureCliCredentialBuilder {
    /// Ask `az` for tokens from this tenant (`--tenant`). Default: `az`'s own.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tool.set_tenant_id(tenant.into());
        self
    }

    settings_setters!(tool.settings; additionally_allowed_tenants, disable_multitenant_auth);

    /// How long `az` may take (default 10 s); it is killed after that, with every process
    /// it started (on Unix).
    pub fn process_timeout(mut self, timeout: Duration) -> Self {
        self.tool.set_process_timeout(timeout);
        self
    }

    /// The `az` executable to run (default `az` from `PATH`; on Windows `az.cmd`, the batch
    /// file the Azure CLI installs). A relative path with a
    /// directory (`./tools/az`) is taken from the current directory, not `PATH`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.tool.set_program(program.into());
        self
    }

    /// Validates the tenant ids and builds.
    pub fn build(self) -> Result<AzureCliCredential, ConfigError> {
        Ok(AzureCliCredential {
            inner: Arc::new(self.tool.build()?),
        })
    }
}

impl fmt::Debug for AzureCliCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tool.debug("AzureCliCredentialBuilder", f)
    }
}

impl Inner<AzureCliCredential> {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        request.validate(NAME)?;
        let [scope] = request.scopes() else {
            return Err(CredentialError::invalid_request(
                NAME,
                format!(
                    "Azure CLI takes exactly one scope per request; got {}",
                    request.scopes().len()
                ),
            ));
        };
        process::validate_scope(AZ.display, scope)
            .map_err(|m| CredentialError::invalid_request(NAME, m))?;
        let tenant = self
            .tenants
            .resolve(request.tenant_id())
            .map_err(|m| CredentialError::invalid_request(NAME, m))?
            .map(str::to_owned);
        let key = CacheKey::new(tenant.as_deref().unwrap_or(""), request.scopes(), false);
        let this = Arc::clone(self);
        let scope = scope.clone();
        if let Some(claims) = request.claims() {
            return self.answer_claims(claims, key, scope, tenant).await;
        }
        self.cache
            .get_or_acquire(key, false, move || async move {
                this.run_az(&scope, tenant.as_deref()).await
            })
            .await
    }

    /// `az account get-access-token` takes no claims: the user must sign in with them. Once
    /// they have, `az` answers a new token while this credential still holds the rejected
    /// one, so a challenge is first checked against `az` (when a token is held to compare):
    /// a different token is taken (and cached) as the answer — not proof the user signed in
    /// with the claims: one `az` renewed on its own differs too (see the type's docs: the
    /// resource's next 401 is the answer then); the same one, or none to compare, is the
    /// advice to sign in, with the command filled in (as azure-identity).
    /// The advice is *unavailable* when no token is held, as azure-identity's; once this
    /// credential has answered, it is *authentication failed*: a chain must not answer the
    /// challenge with another identity. Concurrent challenges share one run of `az`, which
    /// goes on if they stop waiting.
    async fn answer_claims(
        self: &Arc<Self>,
        claims: &str,
        key: CacheKey,
        scope: String,
        tenant: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        let mut command = format!(
            "az login --claims-challenge {}",
            base64::engine::general_purpose::STANDARD.encode(claims)
        );
        if let Some(tenant) = &tenant {
            command.push_str(" --tenant ");
            command.push_str(tenant);
        }
        command.push_str(" --scope ");
        command.push_str(&scope);
        let advice = format!(
            "Azure CLI cannot answer a claims challenge itself; sign in with the claims \
             (Azure CLI 2.76 or later): run '{command}', then try again"
        );
        let Some(held) = self.cache.current(&key) else {
            return Err(CredentialError::unavailable(NAME, advice));
        };
        let refused = |said: Option<&CredentialError>| match said {
            Some(error) => CredentialError::authentication_failed(
                NAME,
                format!("{advice} (Azure CLI: {})", error.message()),
            )
            .with_cause(error.cause()),
            None => CredentialError::authentication_failed(NAME, advice.clone()),
        };
        let flight = {
            let mut flights = self.claims_check.0.lock();
            match flights.running(&key) {
                Some(flight) => flight,
                None => {
                    let this = Arc::clone(self);
                    let asked = key.clone();
                    let work = async move {
                        let run = Arc::clone(&this);
                        this.cache
                            .get_or_acquire(asked, true, move || async move {
                                run.run_az(&scope, tenant.as_deref()).await
                            })
                            .await
                    };
                    flights.start(key, WhenAbandoned::RunOn, work, |_, answer| answer)
                }
            }
        };
        match flight.await {
            Ok(token) if token.secret() != held.secret() => Ok(token),
            Ok(_) => Err(refused(None)),
            Err(error) => Err(refused(Some(&error))),
        }
    }

    async fn run_az(
        &self,
        scope: &str,
        tenant: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        let configure = |command: &mut tokio::process::Command| {
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
            command.env("AZURE_CORE_NO_COLOR", "true");
        };
        let output = process::run_tool(&AZ, &self.program, configure, self.timeout).await?;
        if !output.status.success() {
            return Err(classify_failure(&output.stderr.bytes));
        }
        parse_output(&output.stdout.bytes)
    }
}

/// Azure CLI's checks of `az` on claims challenges: concurrent challenges for one key share
/// one run.
pub(super) struct ClaimsCheck(SingleFlight<CacheKey, AccessToken>);

impl Default for ClaimsCheck {
    fn default() -> Self {
        Self(SingleFlight::new(NAME, "Azure CLI's claims check", ()))
    }
}

/// `az` failed: not signed in is *unavailable* — unless Entra refused (an `AADSTS` code, such
/// as MFA required, whose message also says to run `az login`), which is worth hearing;
/// anything else is a failure quoting `az`.
fn classify_failure(stderr: &[u8]) -> CredentialError {
    if (process::contains(stderr, b"az login") || process::contains(stderr, b"az account set"))
        && !process::contains(stderr, b"AADSTS")
    {
        return CredentialError::unavailable(NAME, NOT_SIGNED_IN);
    }
    let quoted = process::quote_stderr(stderr);
    let first = quoted.as_deref().unwrap_or("no error output");
    CredentialError::authentication_failed(NAME, format!("Azure CLI failed: {first}"))
}

/// Parses `az account get-access-token --output json`. Never panics, whatever the bytes.
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
    let expires_on = match json.get("expires_on") {
        Some(value) => number(value).ok_or_else(|| {
            unexpected("expires_on is not a number of seconds since 1970 (the token's expiry)")
        })?,
        // Azure CLI before 2.54 gives only `expiresOn`, a local time without its zone (which
        // azure-identity reads in ours, wrong when az ran elsewhere or across a clock change).
        // The token's own expiry is read instead.
        None => match jwt_expiry(secret) {
            Some(exp) => exp,
            None if json.get("expiresOn").is_some() => {
                return Err(CredentialError::unavailable(
                    NAME,
                    "Azure CLI gave no expires_on (only the local-time expiresOn of versions \
                     before 2.54) and its token carries no readable expiry; upgrade Azure CLI \
                     to 2.54 or later",
                ));
            }
            None => return Err(unexpected("no expires_on")),
        },
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

/// The most characters of a token's payload read for its expiry: a token is a few kilobytes.
const MAX_JWT_PAYLOAD: usize = 16 * 1024;

/// The `exp` of a token that is a JWT (`header.payload.signature`), unverified: only for when
/// the token expires, which Entra puts in every access token it signs. `None` for anything else
/// (an opaque or encrypted token, a payload too big or not JSON, no `exp`).
fn jwt_expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if payload.len() > MAX_JWT_PAYLOAD {
        return None;
    }
    let claims: Value = serde_json::from_slice(&decode_base64(payload).ok()?).ok()?;
    claims.get("exp").and_then(number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MAX_TOKEN_LIFETIME;

    /// A JWT whose payload is `claims` (unsigned: only its expiry is read).
    fn jwt(claims: &str) -> String {
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        format!("{}.{}.c2ln", encode(r#"{"alg":"RS256"}"#), encode(claims))
    }

    /// Azure CLI before 2.54 gives no `expires_on`: the token's own `exp` is read (before, the
    /// output was refused as *authentication failed*, stopping a chain). Without a readable
    /// `exp` that is *unavailable*, advising the upgrade; the token never shows in an error.
    #[tokio::test(start_paused = true)]
    async fn without_expires_on_the_tokens_own_expiry_is_read() {
        let exp = unix_now() + 3600;
        let token = jwt(&format!(r#"{{"aud":"x","exp":{exp}}}"#));
        let old = format!(
            r#"{{"accessToken":"{token}","expiresOn":"2030-01-01 00:00:00.000000","tokenType":"Bearer"}}"#
        );
        let read = parse_output(old.as_bytes()).unwrap();
        assert_eq!(read.secret().expose_secret(), token);
        // Whole seconds: the wall clock may tick between the two readings.
        let left = read.expires_in().as_secs();
        assert!((3599..=3600).contains(&left), "{left}");
        let huge = jwt(r#"{"exp":1e300}"#);
        let read = parse_output(format!(r#"{{"accessToken":"{huge}"}}"#).as_bytes()).unwrap();
        assert_eq!(read.expires_in(), MAX_TOKEN_LIFETIME);
        let unreadable = [
            "opaque-token-value".to_owned(),
            jwt(r#"{"aud":"x"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt("not json"),
            "a.!!!.c".to_owned(),
            format!("{}.x", jwt(&format!(r#"{{"exp":{exp}}}"#))),
            jwt(&format!(
                r#"{{"exp":{exp},"pad":"{}"}}"#,
                "x".repeat(MAX_JWT_PAYLOAD)
            )),
        ];
        for token in unreadable {
            let old =
                format!(r#"{{"accessToken":"{token}","expiresOn":"2030-01-01 00:00:00.000000"}}"#);
            let err = parse_output(old.as_bytes()).unwrap_err();
            assert!(err.is_unavailable(), "{err}");
            assert!(err.message().contains("upgrade Azure CLI to 2.54"), "{err}");
            assert!(!format!("{err} {err:?}").contains(&token), "{err}");
            // Neither key: not an old Azure CLI, just not its answer.
            let none = format!(r#"{{"accessToken":"{token}"}}"#);
            let err = parse_output(none.as_bytes()).unwrap_err();
            assert!(err.is_authentication_failed(), "{err}");
            assert!(err.message().ends_with("no expires_on"), "{err}");
        }
        let expired = jwt(r#"{"exp":1000}"#);
        let err = parse_output(format!(r#"{{"accessToken":"{expired}"}}"#).as_bytes());
        assert!(err.unwrap_err().message().contains("expired"));
    }

    /// An `expires_on` that is there but unreadable is named as such, not taken for an old
    /// Azure CLI (before, the message said to upgrade to 2.54, which has it).
    #[tokio::test(start_paused = true)]
    async fn a_bad_expires_on_is_named_not_taken_for_an_old_az() {
        let exp = unix_now() + 3600;
        let token = jwt(&format!(r#"{{"exp":{exp}}}"#));
        for bad in ["null", "\"N/A\"", "-1", "\"\"", "{}"] {
            let output = format!(
                r#"{{"accessToken":"{token}","expiresOn":"2030-01-01 00:00:00.000000","expires_on":{bad}}}"#
            );
            let err = parse_output(output.as_bytes()).unwrap_err();
            assert!(err.is_authentication_failed(), "{bad}: {err}");
            assert!(
                err.message()
                    .contains("expires_on is not a number of seconds since 1970"),
                "{bad}: {err}"
            );
            assert!(!err.message().contains("upgrade"), "{bad}: {err}");
            assert!(!format!("{err} {err:?}").contains(&token), "{err}");
        }
    }

    #[test]
    fn scopes_with_shell_or_flag_characters_are_rejected() {
        assert!(
            process::validate_scope("Azure CLI", "https://management.azure.com/.default").is_ok()
        );
        assert!(process::validate_scope("Azure CLI", "api://my-app_1/.default").is_ok());
        for bad in [
            "", "--debug", "a b", "a;b", "a&b", "a|b", "a$b", "a\"b", "ü", "a\nb",
        ] {
            assert!(
                process::validate_scope("Azure CLI", bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn not_signed_in_is_unavailable_other_failures_are_not() {
        let e = classify_failure(b"ERROR: Please run 'az login' to setup account.\n");
        assert!(e.is_unavailable());
        assert!(e.message().contains("Run 'az login'"), "{e}");
        let e =
            classify_failure(b"ERROR: AADSTS70043: The refresh token has expired eyJa.b.c\nmore");
        assert!(e.is_authentication_failed());
        assert_eq!(
            e.message(),
            "Azure CLI failed: AADSTS70043: The refresh token has expired ***"
        );
        // Entra refused, and az says to sign in again: the refusal is the news.
        let e = classify_failure(
            b"ERROR: AADSTS50076: Due to a configuration change you must use multi-factor \
              authentication.\nTo re-authenticate, please run:\naz login --scope \
              https://management.core.windows.net//.default\n",
        );
        assert!(e.is_authentication_failed(), "{e}");
        assert!(
            e.message().starts_with("Azure CLI failed: AADSTS50076"),
            "{e}"
        );
        assert_eq!(
            classify_failure(b"").message(),
            "Azure CLI failed: no error output"
        );
        // One line, cut: never the whole of a flood.
        let flood = format!("ERROR: {}\n{}", "x".repeat(100_000), "y".repeat(100_000));
        let e = classify_failure(flood.as_bytes());
        assert_eq!(
            e.message(),
            format!(
                "Azure CLI failed: {}…",
                "x".repeat(process::MAX_QUOTE_CHARS)
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_expiry_is_clamped_to_a_week_not_a_panic() {
        for expires_on in [
            "1e20",
            "\"1e20\"",
            "18446744073709551615",
            "1.8446744073709552e19",
            "1e308",
        ] {
            let json = format!(r#"{{"accessToken":"tok","expires_on":{expires_on}}}"#);
            let token = parse_output(json.as_bytes()).unwrap();
            assert_eq!(token.expires_in(), MAX_TOKEN_LIFETIME, "{expires_on}");
        }
        for broken in ["1e400", "-1", "\"NaN\"", "\"inf\"", "null", "[]"] {
            let json = format!(r#"{{"accessToken":"tok","expires_on":{broken}}}"#);
            assert!(parse_output(json.as_bytes()).is_err(), "{broken}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn output_parsing() {
        let future = unix_now() + 3600;
        let ok = format!(
            r#"{{"accessToken":"tok","expiresOn":"2030-01-01 00:00:00.000000","expires_on":{future},"subscription":"s","tenant":"t","tokenType":"Bearer"}}"#
        );
        let t = parse_output(ok.as_bytes()).unwrap();
        assert_eq!(t.secret().expose_secret(), "tok");
        assert!(t.expires_in() > std::time::Duration::from_secs(3590));
        let as_string = format!(r#"{{"accessToken":"tok","expires_on":"{future}"}}"#);
        assert!(parse_output(as_string.as_bytes()).is_ok());
        let old = r#"{"accessToken":"tok","expiresOn":"2030-01-01 00:00:00.000000"}"#;
        let err = parse_output(old.as_bytes()).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.message().contains("upgrade Azure CLI"), "{err}");
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
        for option in ["--debug", "-h", "--subscription"] {
            let err = AzureCliCredential::builder()
                .tenant_id(option)
                .build()
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("must start with a letter or digit"),
                "{err}"
            );
        }
        assert!(
            AzureCliCredential::builder()
                .additionally_allowed_tenants(["a b"])
                .build()
                .is_err()
        );
    }
}
