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
fn get_token_without_environment_or_az_exits_non_zero_listing_both_attempts() {
    let output = Command::new(example("get_token"))
        .args(["--scope", "https://management.azure.com/.default"])
        .env_clear()
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.stdout.is_empty());
    let env_at = stderr
        .find("1. EnvironmentCredential (unavailable)")
        .expect(&stderr);
    let cli_at = stderr
        .find("2. AzureCliCredential (unavailable)")
        .expect(&stderr);
    assert!(env_at < cli_at);
    assert!(
        stderr.contains("Set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"),
        "{stderr}"
    );
    assert!(stderr.contains("az login"), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "one message: {stderr}");
}
