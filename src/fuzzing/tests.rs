//! Every entry point over its seed corpus (`fuzz/corpus/<target>/`) and the recorded
//! regressions: the targets keep holding their invariants on the inputs that found bugs, in
//! a plain `cargo test --features fuzzing`, without cargo-fuzz.

use std::path::Path;

/// Runs `target` on every file of `fuzz/corpus/<name>` and `fuzz/regressions/<name>`.
fn run(name: &str, target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no seed for {name} under {}", root.display());
    // Inputs the corpus may not have: nothing, and one byte of each value.
    target(b"");
    for b in 0..=u8::MAX {
        target(&[b]);
    }
}

#[test]
fn www_authenticate() {
    run("www_authenticate", super::www_authenticate);
}

#[test]
fn token_response() {
    run("token_response", super::token_response);
}

#[test]
fn mi_response() {
    run("mi_response", super::mi_response);
}

#[test]
fn msal_cache() {
    run("msal_cache", super::msal_cache);
}

#[test]
fn az_output() {
    run("az_output", super::az_output);
}

#[test]
fn retry_after() {
    run("retry_after", super::retry_after);
}

#[test]
fn certificate() {
    run("certificate", super::certificate);
}

#[test]
fn posix_acl() {
    run("posix_acl", super::posix_acl);
}
