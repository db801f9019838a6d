//! The Microsoft Entra ID protocol: authorities and tenants, and the token endpoint.
//! Nothing in here knows about tower services or credentials.

pub(crate) mod authority;
pub(crate) mod token_client;
