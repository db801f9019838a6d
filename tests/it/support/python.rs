//! The Python peers (tests/peers/python): msal and azure-identity, run as
//! `.venv/bin/python peer.py <subcommand> …`, each printing one JSON object.
//!
//! A missing venv fails the test with the command that installs it.

use std::path::PathBuf;

use super::oidc::Peer;

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/python")
}

/// Runs a subcommand against `peer` (adds `--authority-base` and `--ca`) and returns its JSON
/// answer, success or error alike; `ok` says which.
pub async fn run(peer: &Peer, args: &[&str]) -> serde_json::Value {
    let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    full.extend([
        "--authority-base".to_owned(),
        peer.base.clone(),
        "--ca".to_owned(),
        peer.ca_path.display().to_string(),
    ]);
    run_raw(&full).await
}

/// Runs a subcommand with exactly these arguments.
pub async fn run_raw(args: &[String]) -> serde_json::Value {
    run_with_env(args, &[]).await
}

/// Variables that would steer azure-identity's managed identity (or its proxy use) if the
/// test process happened to have them: removed before `env` is applied, so the peer sees
/// exactly the source the test sets up.
const STEERING_VARS: [&str; 16] = [
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TOKEN_CREDENTIALS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
];

/// Runs a subcommand with these arguments and these environment variables added (after the
/// managed-identity and proxy variables of the test process are removed, and with
/// `NO_PROXY=*` so requests to the loopback emulators never go through a proxy). An empty
/// `env` changes nothing: that is `run_raw`.
pub async fn run_with_env(args: &[String], env: &[(String, String)]) -> serde_json::Value {
    let python = peer_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "the Python peers are not installed: run tests/peers/python/install.sh (tests/run.sh does)"
    );
    let mut command = tokio::process::Command::new(&python);
    command.arg(peer_dir().join("peer.py")).args(args);
    if !env.is_empty() {
        for name in STEERING_VARS {
            command.env_remove(name);
        }
        command.env("NO_PROXY", "*").env("no_proxy", "*");
        command.envs(env.iter().map(|(k, v)| (k, v)));
    }
    let output = command.output().await.expect("run peer.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "peer.py {args:?} did not print JSON ({e}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Asserts a peer answer succeeded and returns it.
pub fn ok(answer: serde_json::Value) -> serde_json::Value {
    assert_eq!(answer["ok"], true, "peer.py failed: {answer}");
    answer
}
