//! AzureDeveloperCliCredential running a stand-in `azd` (a shell script answering like
//! `azd auth token --output json`): the command line and environment, parsing, caching, each
//! failure mode and the timeout. The process bounds themselves (floods, process groups, pipes
//! held open) are shared with Azure CLI and tested in `azure_cli.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tower_identity::{AzureDeveloperCliCredential, CredentialExt, TokenRequest};

use crate::support::programs::{fake_tool, lines};

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
        lines(dir.path().join("context")),
        [format!("cwd={}", bin.display()), "NO_COLOR=true".to_owned()]
    );
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

#[tokio::test(start_paused = true)]
async fn a_slow_azd_is_killed_after_the_timeout_and_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let azd = fake_azd(dir.path(), "sleep 30");
    let cli = AzureDeveloperCliCredential::builder()
        .program(&azd)
        .process_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = cli.get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message().contains("did not answer within 300ms"),
        "{err}"
    );
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
