//! The integration tests' loopback HTTPS token authority, for the library's own tests that
//! need one (to reach a credential a chain builds, which the public API does not expose).
//! These files depend only on crates in `Cargo.toml`, never on the library.

#[path = "../tests/it/support/authority.rs"]
pub(crate) mod authority;
#[path = "../tests/it/support/serve.rs"]
mod serve;
#[path = "../tests/it/support/tls.rs"]
mod tls;
