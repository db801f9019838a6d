//! The Microsoft Entra ID protocol and its token cache: authorities and tenants, the token
//! endpoint, the MSAL cache document and the file it is shared in.
//!
//! What it shares with the rest of the crate: the token endpoint is sent through
//! [`HttpClient`](crate::transport::HttpClient), and its failures are
//! [`CredentialError`](crate::CredentialError)s named after the credential that asked (a
//! provider's answer becomes the error's provider details), because that is what a credential
//! returns. It knows nothing of the credentials themselves: not the `TokenRequest` service
//! they implement, the chain, when a token is refreshed, or the bearer layer. `credential` and
//! `bearer` depend on this module, never the other way.

pub(crate) mod authority;
pub(crate) mod msal_cache;
pub(crate) mod persistence;
pub(crate) mod store;
pub(crate) mod token_client;
