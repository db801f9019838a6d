//! AzureDeveloperCliCredential running a stand-in `azd` (a shell script answering like
//! `azd auth token --output json`): the command line and environment, parsing, caching, each
//! failure mode and the timeout. The process bounds themselves (floods, process groups, pipes
//! held open) are shared with Azure CLI and tested in `azure_cli.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tower_identity::{AzureDeveloperCliCredential, CredentialExt, TokenRequest};

use crate::support::programs::{Procs, fake_tool, hang, lines, pids};

const MGMT: &str = "https://management.azure.com/.default";
const GRAPH: &str = "https://graph.microsoft.com/.default";

/// Prints a token valid for an hour, its expiry in RFC 3339 UTC as azd does.
const SIGNED_IN: &str = r#"exp=$(date -u -d "@$(( $(date +%s) + 3600 ))" +%Y-%m-%dT%H:%M:%SZ)
printf '{"token":"azd-token","expiresOn":"%s"}\n' "$exp""#;

fn fake_azd(dir: &Path, body: &str) -> PathBuf {
    fake_tool(dir, "azd", body)
}

fn credential(azd: &Path) -> AzureDeveloperCliCredential {
    AzureDeveloperCliCredential::builder()
        .program(azd)
        .build()
        .unwrap()
}

#[tokio::test]
async fn runs_azd_with_the_documented_arguments_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(dir.path(), SIGNED_IN);
    let token = credential(&azd).get_token([MGMT, GRAPH]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "azd-token");
    let left = token.expires_in();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    assert_eq!(
        lines(dir.path().join("args")),
        [
            "auth",
            "token",
            "--output",
            "json",
            "--no-prompt",
            "--scope",
            MGMT,
            "--scope",
            GRAPH
        ]
    );
    // Run from a system directory with colour off, whatever the caller's directory.
    let bin = std::fs::canonicalize("/bin").unwrap();
    assert_eq!(
        lines(dir.path().join("context"))[..2],
        [format!("cwd={}", bin.display()), "NO_COLOR=true".to_owned()]
    );
}

/// An `azd` too old for `--claims`: *unavailable* while this credential holds no token (a
/// chain may answer the challenge), *authentication failed* once it has answered for that
/// scope (a chain must not answer with another identity).
#[tokio::test]
async fn an_azd_without_claims_is_unavailable_only_until_it_has_answered() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(
        dir.path(),
        &format!(
            "case \"$*\" in *--claims*) echo 'ERROR: unknown flag: --claims' >&2; exit 1;; esac\n{SIGNED_IN}"
        ),
    );
    let cli = credential(&azd);
    let challenge = || TokenRequest::new([MGMT]).with_claims("{}");
    let err = cli.get_token_with(challenge()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    cli.get_token([MGMT]).await.unwrap();
    let err = cli.get_token_with(challenge()).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.message().contains("--claims"), "{err}");
}

#[tokio::test]
async fn tenant_and_claims_are_passed_and_claims_bypass_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(dir.path(), SIGNED_IN);
    let cli = AzureDeveloperCliCredential::builder()
        .program(&azd)
        .tenant_id("contoso.onmicrosoft.com")
        .build()
        .unwrap();
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(
        lines(dir.path().join("args"))[7..],
        ["--tenant-id", "contoso.onmicrosoft.com"]
    );
    // Cached: no second run.
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(lines(dir.path().join("calls")).len(), 1);
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1"}}}"#;
    cli.get_token_with(TokenRequest::new([MGMT]).with_claims(claims))
        .await
        .unwrap();
    assert_eq!(lines(dir.path().join("calls")).len(), 2);
    let args = lines(dir.path().join("args"));
    let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
    assert_eq!(args[9..], ["--claims", encoded.as_str()]);
}

#[tokio::test]
async fn not_signed_in_is_unavailable_and_says_run_azd_auth_login() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(
        dir.path(),
        "echo 'ERROR: fetching token: not logged in, run `azd auth login` to login' >&2; exit 1",
    );
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("Run 'azd auth login'"), "{err}");
}

#[tokio::test]
async fn other_azd_failures_stop_a_chain_and_quote_azd() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(
        dir.path(),
        "echo 'ERROR: fetching token: AADSTS700082: The refresh token has expired. run `azd auth login` to login' >&2; exit 1",
    );
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message()
            .starts_with("Azure Developer CLI failed: fetching token: AADSTS700082"),
        "{err}"
    );
}

/// A stand-in `azd` that writes `stderr` (as given, byte for byte) and exits 1.
fn failing_azd(dir: &Path, stderr: &str) -> PathBuf {
    std::fs::write(dir.join("stderr"), stderr).unwrap();
    fake_azd(dir, &format!("cat '{}/stderr' >&2; exit 1", dir.display()))
}

/// Entra's answer as `azd` words it (wrapped: the code is on the second line).
const TENANT_NOT_FOUND: &str = r"fetching token: failed to authenticate:\n(invalid_tenant) AADSTS90002: Tenant 'test' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Trace ID: 0000 Correlation ID: 0000 Timestamp: 2026-04-14 00:43:58Z\n";

/// With `--output json`, azd writes its errors as JSON lines on stderr, in a layout that
/// changed over its versions; each is read for the message, not quoted as JSON.
#[tokio::test]
async fn json_errors_of_every_azd_version_are_quoted_as_their_message() {
    let structured = format!(
        r#"{{"error":"{TENANT_NOT_FOUND}","links":[{{"title":"azd auth login reference","url":"https://learn.microsoft.com/azure/developer/azure-developer-cli/reference#azd-auth-login"}}],"message":"Authentication with Azure failed.","suggestion":"Run 'azd auth login' to sign in again."}}"#
    );
    let layouts = [
        // Before 1.23.7: one consoleMessage holding the whole text.
        format!(
            r#"{{"type":"consoleMessage","timestamp":"2026-04-14T22:03:37.687535934Z","data":{{"message":"\nERROR: {TENANT_NOT_FOUND}\n"}}}}"#
        ) + "\n",
        // 1.23.7 to 1.23.15: an empty consoleMessage, then the structured error.
        r#"{"type":"consoleMessage","timestamp":"2026-04-13T17:43:24.7558297-07:00","data":{"message":"\n"}}"#
            .to_owned()
            + "\n"
            + &structured
            + "\n",
        // 1.24 and later: the structured error alone.
        structured.clone() + "\n",
    ];
    for stderr in layouts {
        let dir = tempfile::tempdir().unwrap();
        let azd = failing_azd(dir.path(), &stderr);
        let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{err}\n{stderr}");
        assert!(
            err.message().starts_with(
                "Azure Developer CLI failed: fetching token: failed to authenticate: \
                 (invalid_tenant) AADSTS90002: Tenant 'test' not found."
            ),
            "{err}\n{stderr}"
        );
        assert!(!err.message().contains("consoleMessage"), "{err}");
        assert!(!err.message().contains('{'), "{err}");
    }
}

/// Only "not logged in" is *unavailable*: an error that merely tells to sign in again (azd
/// 1.24 suggests it for every authentication error) is a failure quoting azd.
#[tokio::test]
async fn an_error_suggesting_azd_auth_login_is_a_failure_unless_not_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    let azd = failing_azd(
        dir.path(),
        "{\"error\":\"fetching token: reauthentication required, run `azd auth login --scope https://graph.microsoft.com/.default` to log in\\n\",\"message\":\"Authentication with Azure failed.\",\"suggestion\":\"Run 'azd auth login' to sign in again.\"}\n",
    );
    let err = credential(&azd).get_token([GRAPH]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message()
            .starts_with("Azure Developer CLI failed: fetching token: reauthentication required"),
        "{err}"
    );
    assert!(
        err.message()
            .ends_with("; azd suggests: Run 'azd auth login' to sign in again."),
        "{err}"
    );
    // Not signed in, as azd writes it with --output json: unavailable.
    let dir = tempfile::tempdir().unwrap();
    let azd = failing_azd(
        dir.path(),
        "{\"type\":\"consoleMessage\",\"timestamp\":\"2026-04-14T22:03:37Z\",\"data\":{\"message\":\"\\nERROR: fetching token: not logged in, run `azd auth login` to login\\n\"}}\n",
    );
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("Run 'azd auth login'"), "{err}");
}

/// A launcher that cannot find what it runs exits 127: `azd` is not installed properly,
/// which is *unavailable* (a chain moves on), quoting what the launcher said.
#[tokio::test]
async fn a_launcher_exiting_127_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(
        dir.path(),
        "echo '/usr/local/bin/azd: 2: /opt/microsoft/azd/azd-linux-amd64: No such file or directory' >&2; exit 127",
    );
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("No such file or directory"), "{err}");
    assert!(err.message().contains("exited with status 127"), "{err}");
}

/// The timeout fires only once `azd` runs (time stands still until it has recorded its id),
/// and `azd` is gone after it. The error is *unavailable*, and a timeout that may pass by
/// itself (before, neither `is_timeout` nor `is_transient`).
#[tokio::test(start_paused = true)]
async fn a_slow_azd_is_killed_after_the_timeout_and_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let azd = fake_azd(dir.path(), &hang(dir.path()));
    let cli = AzureDeveloperCliCredential::builder()
        .program(&azd)
        .process_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), procs.until_started(1));
    let err = result.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(
        err.message().contains("did not answer within 300ms"),
        "{err}"
    );
    assert_eq!(procs.pids().len(), 1);
    procs.assert_all_gone();
}

/// A claims challenge for a scope this credential holds a token for: `azd` too slow is
/// *authentication failed* (its identity answered), still marked as a timeout.
#[tokio::test(start_paused = true)]
async fn a_slow_azd_on_a_claims_challenge_after_a_token_is_a_failure_and_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let azd = fake_azd(
        dir.path(),
        &format!(
            "case \"$*\" in *--claims*) {};; esac\n{SIGNED_IN}",
            hang(dir.path())
        ),
    );
    let cli = AzureDeveloperCliCredential::builder()
        .program(&azd)
        .process_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Time stands still until the first azd has answered and been reaped.
    let answered = procs.wait_until("the first azd was reaped", |dir| {
        let pids = pids(dir);
        pids.len() == 1 && std::fs::metadata(format!("/proc/{}", pids[0])).is_err()
    });
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), answered);
    result.unwrap();
    let challenge = TokenRequest::new([MGMT]).with_claims("{}");
    let (result, ()) = tokio::join!(cli.get_token_with(challenge), procs.until_started(2));
    let err = result.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(err.message().contains("did not answer within 5s"), "{err}");
    procs.assert_all_gone();
}

#[tokio::test]
async fn garbage_and_expired_output_are_clear_failures() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(dir.path(), "echo 'WARNING: something'");
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed());
    assert!(
        err.message()
            .contains("unexpected output from Azure Developer CLI: not JSON"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(
        dir.path(),
        r#"echo '{"token":"old-token","expiresOn":"2001-01-01T00:00:00Z"}'"#,
    );
    let err = credential(&azd).get_token([MGMT]).await.unwrap_err();
    assert!(err.message().contains("expired token"), "{err}");
    assert!(!format!("{err} {err:?}").contains("old-token"));
}

#[tokio::test]
async fn bad_scopes_never_reach_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(dir.path(), SIGNED_IN);
    let cli = credential(&azd);
    for scope in ["--debug", "a b", "x;rm -rf /"] {
        let err = cli.get_token([MGMT, scope]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
    }
    assert!(lines(dir.path().join("calls")).is_empty());
}

#[tokio::test]
async fn missing_azd_is_unavailable_with_an_install_hint() {
    let cli = AzureDeveloperCliCredential::builder()
        .program("/nonexistent/bin/azd")
        .build()
        .unwrap();
    let err = cli.get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message().contains("https://aka.ms/azd-install"),
        "{err}"
    );
}
