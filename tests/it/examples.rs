//! The README's first command, run as a user would: the built example binary.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside this binary.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test` (which builds examples)",
        path.display()
    );
    path
}

#[test]
fn get_token_with_nothing_configured_exits_non_zero_listing_every_attempt() {
    // IMDS at a closed loopback port, no home with a token cache, no az or azd on PATH.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(example("get_token"))
        .args(["--scope", "https://management.azure.com/.default"])
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", home.path())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    let mut last = 0;
    for (i, name) in (1..).zip([
        "EnvironmentCredential",
        "WorkloadIdentityCredential",
        "ManagedIdentityCredential",
        "SharedTokenCacheCredential",
        "AzureCliCredential",
        "AzureDeveloperCliCredential",
    ]) {
        let at = stderr
            .find(&format!("{i}. {name} (unavailable)"))
            .unwrap_or_else(|| panic!("{name} missing or out of order:\n{stderr}"));
        assert!(at >= last);
        last = at;
    }
    for hint in [
        "Set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "az login",
        "azd auth login",
    ] {
        assert!(stderr.contains(hint), "{hint}: {stderr}");
    }
    assert_eq!(stderr.matches("error:").count(), 1, "one message: {stderr}");
}

/// Runs an example to completion and returns its stdout; it must exit 0.
fn run_example(name: &str) -> String {
    let output = Command::new(example(name)).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} exited with {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_demo_shows_every_step_and_exits_0() {
    let out = run_example("demo");
    for line in [
        "EnvironmentCredential: unavailable",
        "ClientSecretCredential: answered",
        "(token acquired)",
        "(cached)",
        "(the renewed token)",
        "401 insufficient_claims → claims token → re-sent",
        "4 token requests",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.contains("requests answered 200"))
        .expect(&out);
    let words: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(words[0], words[2], "every request answered 200: {summary}");
}

#[test]
fn the_client_examples_run_against_loopback_and_exit_0() {
    assert!(run_example("hyper_client").contains("token requests: 1"));
    assert!(run_example("axum_outbound").contains("token requests: 1"));
    assert!(run_example("timeout_retry").contains("after one retry"));
    #[cfg(feature = "reqwest-middleware")]
    assert!(run_example("reqwest_middleware").contains("after a claims challenge and one re-send"));
}
