//! The Microsoft Entra ID protocol and its token cache: authorities and tenants, the token
//! endpoint, the MSAL cache document and the file it is shared in. Nothing in here knows about
//! tower services or credentials.

pub(crate) mod authority;
pub(crate) mod msal_cache;
pub(crate) mod persistence;
pub(crate) mod store;
pub(crate) mod token_client;
