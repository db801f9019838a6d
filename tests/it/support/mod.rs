pub mod authority;
pub mod creds;
pub mod oidc;
pub mod tls;
