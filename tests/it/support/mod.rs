pub mod authority;
pub mod certs;
pub mod client;
pub mod clock;
pub mod creds;
pub mod mi_emulator;
pub mod oidc;
pub mod programs;
pub mod proxy;
pub mod python;
#[cfg(feature = "redis")]
pub mod redis;
pub mod resource;
#[cfg(all(feature = "keyring", target_os = "linux"))]
pub mod secret_service;
pub mod serve;
pub mod tls;
pub mod vectors;
