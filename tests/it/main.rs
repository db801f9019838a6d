//! Integration tests: one binary (one link) for every suite.

mod auth_code;
mod authority_selftest;
mod azure_cli;
mod azure_developer_cli;
mod bearer;
mod cache_file;
mod chain;
mod client_assertion;
mod client_certificate;
mod client_secret;
mod default_credential;
mod device_code;
#[cfg(feature = "redis")]
mod distributed;
mod environment;
mod examples;
#[cfg(feature = "redis")]
mod fleet;
mod http_version;
#[cfg(all(feature = "keyring", target_os = "linux"))]
mod keyring;
mod limits;
mod managed_identity;
mod mi_emulator_selftest;
mod middleware;
mod oidc;
mod proxy;
#[cfg(feature = "redis")]
mod redis_store;
mod refresh_rules;
#[cfg(feature = "reqwest-middleware")]
mod reqwest_mw;
mod resource_selftest;
mod roots;
mod secrets;
mod shared_cache;
mod support;
mod workload_identity;
