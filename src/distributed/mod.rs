//! A distributed token cache: a second level under a credential's in-process cache, shared by
//! every process of a fleet through a store such as Redis, so that a fleet makes one token
//! request per token lifetime.
//!
//! (Being built for issue 13: the store interface is fixed here; the cache, its sealing and
//! its Redis store follow.)

#[cfg(feature = "redis")]
mod redis;
mod store;

#[cfg(feature = "redis")]
pub use redis::RedisTokenCache;
pub use store::{StoreError, TokenStore};
