pub mod authority;
pub mod client;
pub mod creds;
pub mod oidc;
pub mod python;
pub mod resource;
pub mod tls;
pub mod vectors;
