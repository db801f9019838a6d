//! AzureCliCredential running a stand-in `az` (a shell script that answers like Azure CLI
//! 2.54+): the command line, parsing, caching, and each failure mode. The real `az` is not
//! installed on CI machines; its absence is covered too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tower_identity::{AzureCliCredential, CredentialExt, TokenRequest};

const MGMT: &str = "https://management.azure.com/.default";

/// Writes an executable `az` into `dir` running `body` (POSIX sh). The script records its
/// arguments, one per line, in `dir/args` and appends a line to `dir/calls` per run.
fn fake_az(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("az");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{dir}/args'\necho run >> '{dir}/calls'\n{body}\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const SIGNED_IN: &str = r#"now=$(date +%s); exp=$((now + 3600))
printf '{"accessToken":"cli-token","expiresOn":"2099-01-01 00:00:00.000000","expires_on":%s,"subscription":"sub","tenant":"t","tokenType":"Bearer"}\n' "$exp""#;

fn credential(az: &Path) -> AzureCliCredential {
    AzureCliCredential::builder().program(az).build().unwrap()
}

fn lines(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn runs_az_with_the_documented_arguments_and_reads_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let token = credential(&az).get_token([MGMT]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
    assert!(token.expires_in() > Duration::from_secs(3500));
    assert_eq!(
        lines(dir.path().join("args")),
        [
            "account",
            "get-access-token",
            "--output",
            "json",
            "--scope",
            MGMT
        ]
    );
}

#[tokio::test]
async fn a_tenant_is_passed_with_tenant_flag() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let cli = AzureCliCredential::builder()
        .program(&az)
        .tenant_id("contoso.onmicrosoft.com")
        .additionally_allowed_tenants(["fabrikam"])
        .build()
        .unwrap();
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(
        lines(dir.path().join("args"))[6..],
        ["--tenant", "contoso.onmicrosoft.com"]
    );
    cli.get_token_with(TokenRequest::new([MGMT]).tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(
        lines(dir.path().join("args"))[6..],
        ["--tenant", "fabrikam"]
    );
    let err = cli
        .get_token_with(TokenRequest::new([MGMT]).tenant_id("other"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_request());
}

#[tokio::test]
async fn concurrent_callers_start_one_az_process_and_reuse_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), &format!("sleep 0.2\n{SIGNED_IN}"));
    let cli = credential(&az);
    let calls: Vec<_> = (0..50).map(|_| cli.get_token([MGMT])).collect();
    for result in futures_join(calls).await {
        assert_eq!(result.unwrap().secret().expose_secret(), "cli-token");
    }
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(lines(dir.path().join("calls")).len(), 1);
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let mut out = Vec::new();
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn not_signed_in_is_unavailable_and_says_run_az_login() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("Run 'az login'"), "{err}");
}

#[tokio::test]
async fn other_az_failures_stop_a_chain_and_quote_az() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        "echo 'ERROR: AADSTS50076: Due to a configuration change you must use multi-factor authentication.' >&2\nexit 1",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message().starts_with("Azure CLI failed: AADSTS50076"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_az_is_killed_after_the_timeout_and_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), "sleep 30");
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = cli.get_token([MGMT]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message().contains("did not answer within 300ms"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_output_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), "echo 'WARNING: something'");
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed());
    assert!(
        err.message()
            .contains("unexpected output from Azure CLI: not JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_scopes_and_claims_never_reach_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let cli = credential(&az);
    for scope in ["https://x/.default; rm -rf /", "--debug", "a b"] {
        let err = cli.get_token([scope]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{scope}: {err}");
    }
    let err = cli
        .get_token([MGMT, "https://graph.microsoft.com/.default"])
        .await
        .unwrap_err();
    assert!(err.message().contains("exactly one scope"), "{err}");
    let err = cli
        .get_token_with(TokenRequest::new([MGMT]).claims("{}"))
        .await
        .unwrap_err();
    assert!(
        err.is_unavailable() && err.message().contains("--claims-challenge"),
        "{err}"
    );
    assert!(lines(dir.path().join("calls")).is_empty());
}

#[tokio::test]
async fn missing_az_is_unavailable_with_an_install_hint() {
    let err = AzureCliCredential::builder()
        .program("/nonexistent/bin/az")
        .build()
        .unwrap()
        .get_token([MGMT])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert!(err.message().contains("https://aka.ms/azure-cli"), "{err}");
}
