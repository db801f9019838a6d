//! Integration tests: one binary (one link) for every suite.

mod authority_selftest;
mod azure_cli;
mod chain;
mod client_secret;
mod examples;
mod oidc;
mod secrets;
mod support;
