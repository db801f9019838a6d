//! [`AzureDeveloperCliCredential`]: the account signed in to the Azure Developer CLI.

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
use crate::error::{ConfigError, CredentialError};
use crate::token::{AccessToken, TokenRequest, instant_from_unix, unix_now};

const NAME: &str = "AzureDeveloperCliCredential";
const DEFAULT_PROGRAM: &str = if cfg!(windows) { "azd.exe" } else { "azd" };
const AZD: Tool = Tool {
    credential: NAME,
    display: "Azure Developer CLI",
    install_hint: "Install it from https://aka.ms/azd-install and run 'azd auth login'",
    try_command: "azd auth token --output json --scope <scope>",
};
const NOT_SIGNED_IN: &str =
    "Azure Developer CLI is not signed in. Run 'azd auth login' to sign in, then try again";
const NO_CLAIMS_FLAG: &str = "this Azure Developer CLI cannot answer a claims challenge (it has \
     no --claims flag); update it to version 1.18.1 or later";

/// Gets tokens from the Azure Developer CLI's signed-in account.
///
/// ```no_run
/// use tower_identity::{AzureDeveloperCliCredential, CredentialExt};
///
/// # async fn run() -> Result<(), tower_identity::CredentialError> {
/// let credential = AzureDeveloperCliCredential::new();
/// let token = credential.get_token(["https://management.azure.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// Runs `azd auth token --output json --no-prompt --scope <scope>… [--tenant-id <tenant>]
/// [--claims <base64>]` directly (no shell), with `NO_COLOR=true`, and reads `token` and
/// `expiresOn` (RFC 3339, UTC) from its answer. Scopes and tenant are checked character by
/// character before they reach the command line; claims are passed base64-encoded.
///
/// `azd` is run under the same bounds as `az` (see [`AzureCliCredential`]): from a system
/// directory, a timeout (10 s unless set with `process_timeout`), at most 1 MiB of each output
/// kept, its whole process group killed (on Windows, `azd` itself) on timeout or when the run
/// is abandoned (runtime shutdown) — a caller that stops waiting does not abandon it: it goes
/// on for the token cache — and the answer decided on exit.
///
/// *Unavailable* (a chain moves on) when `azd` is not installed, not signed in, too slow
/// (the error's `is_timeout` and `is_transient` are then true), or too old to take `--claims`
/// (before 1.18.1); *authentication failed* for any other failure of `azd` — also one that
/// tells to run `azd auth login` again, such as reauthentication for a scope — quoting one
/// scrubbed line of it: the message of its JSON error lines (each version's layout), else its
/// first `ERROR:` line. A claims challenge for a scope this credential already holds a token
/// for is *authentication failed* whatever stops `azd` from answering it (too old for
/// `--claims`, signed out, too slow): its identity has answered, and a chain must not answer
/// the challenge with another.
///
/// Tokens are kept in memory and renewed like every other credential's: after `azd auth
/// login` as someone else, a token already cached is still the previous identity's until its
/// renewal (5 minutes before it expires); build a new credential to get the new identity's at
/// once.
///
/// [`AzureCliCredential`]: crate::AzureCliCredential
#[derive(Clone)]
pub struct AzureDeveloperCliCredential {
    inner: Arc<Inner<Self>>,
}

impl AzureDeveloperCliCredential {
    /// `azd` (on Windows `azd.exe`) from `PATH`, its default tenant, a 10 s timeout.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner::with_defaults(NAME, DEFAULT_PROGRAM)),
        }
    }

    /// A builder for the tenant, the timeout and the `azd` program.
    pub fn builder() -> AzureDeveloperCliCredentialBuilder {
        AzureDeveloperCliCredentialBuilder {
            tool: ToolSettings::new(NAME, DEFAULT_PROGRAM),
        }
    }
}

impl Default for AzureDeveloperCliCredential {
    fn default() -> Self {
        Self::new()
    }
}

arc_credential_service!(AzureDeveloperCliCredential);

impl fmt::Debug for AzureDeveloperCliCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Settings for an [`AzureDeveloperCliCredential`].
pub struct AzureDeveloperCliCredentialBuilder {
    tool: ToolSettings,
}

impl AzureDeveloperCliCredentialBuilder {
    /// Ask `azd` for tokens from this tenant (`--tenant-id`). Default: `azd`'s own.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tool.set_tenant_id(tenant.into());
        self
    }

    settings_setters!(tool.settings; additionally_allowed_tenants, disable_multitenant_auth);

    /// How long `azd` may take (default 10 s); it is killed after that, with every process
    /// it started (on Unix).
    pub fn process_timeout(mut self, timeout: Duration) -> Self {
        self.tool.set_process_timeout(timeout);
        self
    }

    /// The `azd` executable to run (default `azd` from `PATH`; on Windows `azd.exe`). A
    /// relative path with a
    /// directory (`./tools/azd`) is taken from the current directory, not `PATH`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.tool.set_program(program.into());
        self
    }

    /// Validates the tenant ids and builds.
    pub fn build(self) -> Result<AzureDeveloperCliCredential, ConfigError> {
        Ok(AzureDeveloperCliCredential {
            inner: Arc::new(self.tool.build()?),
        })
    }
}

impl fmt::Debug for AzureDeveloperCliCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tool.debug("AzureDeveloperCliCredentialBuilder", f)
    }
}

impl Inner<AzureDeveloperCliCredential> {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        request.validate(NAME)?;
        for scope in request.scopes() {
            process::validate_scope(AZD.display, scope)
                .map_err(|m| CredentialError::invalid_request(NAME, m))?;
        }
        let tenant = self
            .tenants
            .resolve(request.tenant_id())
            .map_err(|m| CredentialError::invalid_request(NAME, m))?
            .map(str::to_owned);
        let claims = request
            .claims()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        let key = CacheKey::new(tenant.as_deref().unwrap_or(""), request.scopes(), false);
        // A claims challenge to a token this credential holds: its identity answered, so what
        // stops `azd` from answering the claims (too old for `--claims`, signed out) is this
        // credential's failure, not a reason for a chain to answer with another identity.
        let held = claims.is_some() && self.cache.current(&key).is_some();
        let this = Arc::clone(self);
        let scopes = request.scopes().to_vec();
        let answer = self
            .cache
            .get_or_acquire(key, claims.is_some(), move || async move {
                this.run_azd(&scopes, tenant.as_deref(), claims.as_deref())
                    .await
            })
            .await;
        match answer {
            Err(error) if held && error.is_unavailable() => Err(
                CredentialError::authentication_failed(NAME, error.message().to_owned())
                    .with_cause(error.cause()),
            ),
            answer => answer,
        }
    }

    async fn run_azd(
        &self,
        scopes: &[String],
        tenant: Option<&str>,
        claims: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        let configure = |command: &mut tokio::process::Command| {
            command.args(["auth", "token", "--output", "json", "--no-prompt"]);
            for scope in scopes {
                command.args(["--scope", scope]);
            }
            if let Some(tenant) = tenant {
                command.args(["--tenant-id", tenant]);
            }
            if let Some(claims) = claims {
                command.args(["--claims", claims]);
            }
            command.env("NO_COLOR", "true");
        };
        let output = process::run_tool(&AZD, &self.program, configure, self.timeout).await?;
        if !output.status.success() {
            return Err(classify_failure(&output.stderr.bytes, &output.stdout.bytes));
        }
        parse_output(&output.stdout.bytes)
    }
}

/// What `azd` prints when no account is signed in. Only this is *unavailable*: other errors
/// also tell to run `azd auth login` (reauthentication for a scope, and from 1.24 a
/// suggestion attached to every authentication error), but those are failures worth hearing.
const NOT_LOGGED_IN: &[u8] = b"not logged in, run `azd auth login` to login";

/// `azd` failed. Not signed in is *unavailable* — unless Entra refused (an `AADSTS` code),
/// which is worth hearing — and so is an `azd` too old for `--claims` (another credential
/// may answer the challenge); anything else is a failure quoting `azd`. `azd` writes some
/// errors to stdout, so both are read.
pub(crate) fn classify_failure(stderr: &[u8], stdout: &[u8]) -> CredentialError {
    let either =
        |needle: &[u8]| process::contains(stderr, needle) || process::contains(stdout, needle);
    if either(NOT_LOGGED_IN) && !either(b"AADSTS") {
        return CredentialError::unavailable(NAME, NOT_SIGNED_IN);
    }
    if either(b"unknown flag: --claims") {
        return CredentialError::unavailable(NAME, NO_CLAIMS_FLAG);
    }
    let quote = |output: &[u8]| process::quote_stderr(&error_text(output));
    let quoted = quote(stderr).or_else(|| quote(stdout));
    let first = quoted.as_deref().unwrap_or("no error output");
    // What azd advises (from 1.24: to sign in again) is what the user should do; quoted on its
    // own, so a long error does not cut it off.
    let advice = suggestion(stderr)
        .or_else(|| suggestion(stdout))
        .map(|s| format!("; azd suggests: {s}"))
        .unwrap_or_default();
    CredentialError::authentication_failed(
        NAME,
        format!("Azure Developer CLI failed: {first}{advice}"),
    )
}

/// The `suggestion` of `azd`'s structured JSON error (`{"error": …, "suggestion": …}`), quoted
/// as an error line is.
fn suggestion(output: &[u8]) -> Option<String> {
    output
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line.trim_ascii()).ok())
        .filter(|object| object.get("error").is_some())
        .find_map(|object| {
            let text = object.get("suggestion")?.as_str()?;
            process::quote_stderr(one_line(text).as_bytes())
        })
}

/// `azd`'s error output as text lines, for [`process::quote_stderr`]. With `--output json`
/// `azd` writes its messages as JSON lines: before 1.23.7 a `consoleMessage` whose
/// `data.message` holds the text (`"\nERROR: …"`); from 1.23.7 an `{"error": …}` object
/// (which wins), which 1.23.7–1.23.15 precede with an empty `consoleMessage`. Each message
/// becomes one line — from its `ERROR:` line on, when it has one — since `azd` wraps its
/// messages and the `AADSTS` code is often on the second line. Other lines stay as they are.
fn error_text(output: &[u8]) -> Vec<u8> {
    let lines = || output.split(|&b| b == b'\n').map(<[u8]>::trim_ascii);
    let parsed = |line: &[u8]| match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    let text = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .map(one_line)
    };
    if let Some(error) = lines().find_map(|l| text(parsed(l)?.get("error"))) {
        return error.into_bytes();
    }
    let mut out = Vec::with_capacity(output.len());
    for line in lines() {
        match parsed(line) {
            Some(object) => {
                let message = object.get("data").and_then(|data| data.get("message"));
                if let Some(message) = text(message) {
                    out.extend_from_slice(message.as_bytes());
                }
            }
            None => out.extend_from_slice(line),
        }
        out.push(b'\n');
    }
    out
}

/// A message of several lines as one: its non-blank lines from the first `ERROR:` line on
/// (all of them when none is), joined with spaces.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines
        .iter()
        .position(|l| l.starts_with("ERROR:"))
        .unwrap_or(0);
    lines.get(from..).unwrap_or_default().join(" ")
}

/// Parses `azd auth token --output json`: `{"token": "…", "expiresOn": "<RFC 3339>"}`.
/// Never panics, whatever the bytes.
pub(crate) fn parse_output(stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    let unexpected = |why: &str| {
        CredentialError::authentication_failed(
            NAME,
            format!("unexpected output from Azure Developer CLI: {why}"),
        )
    };
    let json: Value = serde_json::from_slice(stdout).map_err(|_| unexpected("not JSON"))?;
    let secret = match json.get("token") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        _ => return Err(unexpected("no token")),
    };
    let expires_on = json
        .get("expiresOn")
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected("no expiresOn"))?;
    // azd prints UTC with an offset (`Z`); an offset is honoured rather than read as local
    // time (azure-identity's Python reads it as local time, off by the zone).
    let expires_on = time::OffsetDateTime::parse(
        expires_on.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| unexpected("expiresOn is not an RFC 3339 time"))?
    .unix_timestamp();
    let expires_on = u64::try_from(expires_on).unwrap_or(0);
    if expires_on <= unix_now() {
        return Err(CredentialError::authentication_failed(
            NAME,
            "Azure Developer CLI returned an expired token; check the system clock, or run \
             'azd auth login' again",
        ));
    }
    Ok(AccessToken::new(secret, instant_from_unix(expires_on)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MAX_TOKEN_LIFETIME;

    #[tokio::test(start_paused = true)]
    async fn output_parsing() {
        let token = parse_output(br#"{"token":"tok","expiresOn":"2099-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(token.secret().expose_secret(), "tok");
        // 2099 is further than a week: clamped, not an overflow.
        assert_eq!(token.expires_in(), MAX_TOKEN_LIFETIME);
        let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3600);
        let text = soon
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let json = format!(r#"{{"token":"tok","expiresOn":"{text}"}}"#);
        let t = parse_output(json.as_bytes()).unwrap();
        assert!((3590..=3600).contains(&t.expires_in().as_secs()), "{t:?}");
        // An offset is honoured: an hour from now, written two hours east of UTC, is an hour
        // from now (read as UTC it would be three; read as local time, off by the zone).
        let east = soon.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        let text = east
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert!(text.ends_with("+02:00"), "{text}");
        let json = format!(r#"{{"token":"tok","expiresOn":"{text}"}}"#);
        let t = parse_output(json.as_bytes()).unwrap();
        assert!((3590..=3600).contains(&t.expires_in().as_secs()), "{t:?}");
        for (bad, want) in [
            (&b"garbage"[..], "not JSON"),
            (br#"{"expiresOn":"2099-01-01T00:00:00Z"}"#, "no token"),
            (
                br#"{"token":"","expiresOn":"2099-01-01T00:00:00Z"}"#,
                "no token",
            ),
            (br#"{"token":"tok"}"#, "no expiresOn"),
            (
                br#"{"token":"tok","expiresOn":"2099-01-01 00:00:00"}"#,
                "RFC 3339",
            ),
            (
                br#"{"token":"tok","expiresOn":"1999-01-01T00:00:00Z"}"#,
                "expired",
            ),
            (
                br#"{"token":"tok","expiresOn":"1800-01-01T00:00:00Z"}"#,
                "expired",
            ),
        ] {
            let err = parse_output(bad).unwrap_err();
            assert!(err.message().contains(want), "{err} / {want}");
            assert!(!err.to_string().contains("tok\""), "{err}");
        }
    }

    #[test]
    fn not_signed_in_is_unavailable_unless_entra_refused() {
        let e = classify_failure(
            b"ERROR: fetching token: not logged in, run `azd auth login` to login\n",
            b"",
        );
        assert!(e.is_unavailable(), "{e}");
        assert!(e.message().contains("azd auth login"), "{e}");
        let e = classify_failure(
            b"",
            b"ERROR: AADSTS50076: MFA required. run `azd auth login` to login eyJa.b.c",
        );
        assert!(e.is_authentication_failed(), "{e}");
        assert!(e.message().contains("AADSTS50076"), "{e}");
        assert!(!e.message().contains("eyJa.b.c"), "{e}");
        assert_eq!(
            classify_failure(b"", b"").message(),
            "Azure Developer CLI failed: no error output"
        );
        // azd's advice follows the error, however long the error is.
        let long = "x".repeat(400);
        let e = classify_failure(
            format!(
                r#"{{"error":"{long}","suggestion":"Run 'azd auth login'\nto sign in again."}}"#
            )
            .as_bytes(),
            b"",
        );
        assert!(
            e.message()
                .ends_with("; azd suggests: Run 'azd auth login' to sign in again."),
            "{e}"
        );
        for blank in [
            r#"{"error":"e","suggestion":" "}"#,
            r#"{"error":"e","suggestion":7}"#,
        ] {
            assert_eq!(
                classify_failure(blank.as_bytes(), b"").message(),
                "Azure Developer CLI failed: e"
            );
        }
        // An azd older than --claims (1.18.1), on stderr or stdout.
        for (stderr, stdout) in [
            (&b"ERROR: unknown flag: --claims\n"[..], &b""[..]),
            (b"", b"Error: unknown flag: --claims\nUsage: ..."),
        ] {
            let e = classify_failure(stderr, stdout);
            assert!(e.is_unavailable(), "{e}");
            assert!(e.message().contains("1.18.1"), "{e}");
        }
    }

    #[test]
    fn error_text_reads_json_messages_and_keeps_other_lines() {
        let text = |output: &[u8]| String::from_utf8(error_text(output)).unwrap();
        // Plain text is left as it was.
        assert_eq!(text(b"WARNING: w\nERROR: e\n"), "WARNING: w\nERROR: e\n\n");
        // JSON that is not azd's message shape says nothing; a message keeps its ERROR: line
        // on, as one line.
        assert_eq!(
            text(
                br#"[1]
{"error":5}
{"data":{"message":7}}
{"type":"consoleMessage","data":{"message":"WARNING: old\n\nERROR: a:\n b \n"}}"#
            ),
            "[1]\n\n\nERROR: a: b\n"
        );
        // A structured error wins over the console messages around it.
        assert_eq!(
            text(
                br#"{"data":{"message":"progress"}}
{"error":"  \n "}
{"error":"x:\ny","suggestion":"Run 'azd auth login' to sign in again."}"#
            ),
            "x: y"
        );
        assert_eq!(process::quote_stderr(&error_text(b"")), None);
    }

    #[tokio::test]
    async fn missing_azd_is_unavailable_with_install_hint() {
        let c = AzureDeveloperCliCredential::builder()
            .program("/nonexistent/azd-not-here")
            .build()
            .unwrap();
        let err = crate::CredentialExt::get_token(&c, ["https://management.azure.com/.default"])
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.message().contains("aka.ms/azd-install"), "{err}");
    }

    #[test]
    fn build_validates_tenant_ids() {
        for option in ["--debug", "a;b"] {
            assert!(
                AzureDeveloperCliCredential::builder()
                    .tenant_id(option)
                    .build()
                    .is_err(),
                "{option}"
            );
        }
    }
}
