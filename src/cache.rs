//! The in-memory token cache of a credential: one [`TokenSlot`] per key.
//!
//! A key is the tenant, the scope set (order and duplicates ignored), and whether the CAE
//! capability was announced — CAE and non-CAE tokens are never mixed, since a CAE token is
//! long-lived and only safe for callers that handle claims challenges. (A user credential is
//! pinned to one account, so the account needs no place in the key.)
//!
//! A request with `claims` must reach the provider, so it skips the lookup; its token is
//! stored in the slot afterwards so later requests use the token that satisfies the claims.
//!
//! With a [distributed cache](crate::distributed) the slots stay the first level: a token a
//! slot hands out never touches the store. A slot's acquisition (one per key per process)
//! goes through the shared level, which answers from the store or has one process of the
//! fleet ask the provider; claims requests skip the shared level as they skip the slot.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::distributed::SharedLevel;
use crate::error::CredentialError;
use crate::refresh::{RefreshPolicy, TokenSlot};
use crate::token::AccessToken;

/// What a cached token is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    tenant: String,
    scopes: Vec<String>,
    cae: bool,
}

impl CacheKey {
    pub(crate) fn new(tenant: &str, scopes: &[String], cae: bool) -> Self {
        let mut scopes = scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        Self {
            tenant: tenant.to_owned(),
            scopes,
            cae,
        }
    }
}

/// The slots of one credential.
pub(crate) struct TokenCache {
    /// The credential, for errors.
    name: &'static str,
    slots: Mutex<HashMap<CacheKey, Arc<TokenSlot>>>,
    /// The second level, when the credential was given a distributed cache.
    shared: Option<SharedLevel>,
}

impl TokenCache {
    /// The cache of the credential called `name`.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            slots: Mutex::default(),
            shared: None,
        }
    }

    /// The same cache over a distributed cache's shared level, if any.
    pub(crate) fn with_shared(mut self, shared: Option<SharedLevel>) -> Self {
        self.shared = shared;
        self
    }

    /// The rules every slot of this cache follows (and the shared level judges entries by).
    fn policy() -> RefreshPolicy {
        RefreshPolicy::default()
    }

    fn slot(&self, key: &CacheKey) -> Arc<TokenSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(key) {
            return Arc::clone(slot);
        }
        let slot = TokenSlot::new(self.name, Self::policy());
        slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// The cached token for `key`, or the result of `acquire` under the refresh rules
    /// (see [`crate::refresh`]). With `bypass` (a request carrying claims) the lookup is
    /// skipped and the new token replaces the cached one.
    pub(crate) async fn get_or_acquire<F, Fut>(
        &self,
        key: CacheKey,
        bypass: bool,
        acquire: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        // The token names the credential that obtained it; stamped before it is cached.
        let name = self.name;
        // Through the shared level unless the request carries claims.
        let shared = self.shared.as_ref().filter(|_| !bypass);
        // Whether this caller started the acquisition (else memory answered it).
        let started = AtomicBool::new(false);
        let acquire = || -> BoxFuture<'static, Result<AccessToken, CredentialError>> {
            started.store(true, Ordering::Relaxed);
            // Made inside the slot's acquisition span, only when an acquisition starts.
            let span = tracing::debug_span!(
                "token_request",
                tenant = %key.tenant,
                scopes = ?key.scopes,
                cae = key.cae
            );
            let stamp = move |result: Result<AccessToken, CredentialError>| {
                result.map(|token| token.with_credential(name))
            };
            match shared {
                Some(level) => level
                    .acquire(&key.tenant, &key.scopes, key.cae, Self::policy(), acquire())
                    .map(stamp)
                    .instrument(span)
                    .boxed(),
                None => acquire().map(stamp).instrument(span).boxed(),
            }
        };
        let slot = self.slot(&key);
        if bypass {
            if let Some(level) = &self.shared {
                level.bypassed();
            }
            // The slot refuses a token that has already expired, keeping the one it holds.
            let token = acquire().await?;
            slot.store(token.clone())?;
            Ok(token)
        } else {
            let result = slot.get(acquire).await;
            if let Some(level) = shared.filter(|_| !started.load(Ordering::Relaxed)) {
                level.local_hit();
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_ignore_scope_order_and_duplicates_but_not_cae() {
        let a = CacheKey::new("t", &scopes(&["b", "a", "a"]), false);
        let b = CacheKey::new("t", &scopes(&["a", "b"]), false);
        assert_eq!(a, b);
        assert_ne!(a, CacheKey::new("t", &scopes(&["a", "b"]), true));
        assert_ne!(a, CacheKey::new("u", &scopes(&["a", "b"]), false));
    }

    #[tokio::test(start_paused = true)]
    async fn claims_bypass_the_lookup_and_replace_the_cached_token() {
        let cache = TokenCache::new("Test");
        let key = CacheKey::new("t", &scopes(&["s"]), false);
        let make = |name: &'static str| {
            move || async move {
                Ok(AccessToken::new(
                    name,
                    Instant::now() + Duration::from_secs(3600),
                ))
            }
        };
        let first = cache
            .get_or_acquire(key.clone(), false, make("one"))
            .await
            .unwrap();
        let cached = cache
            .get_or_acquire(key.clone(), false, make("two"))
            .await
            .unwrap();
        assert_eq!(first.secret(), cached.secret());
        let claims = cache
            .get_or_acquire(key.clone(), true, make("three"))
            .await
            .unwrap();
        assert_eq!(claims.secret().expose_secret(), "three");
        let after = cache
            .get_or_acquire(key, false, make("four"))
            .await
            .unwrap();
        assert_eq!(after.secret().expose_secret(), "three");
    }

    /// A provider answering a claims request with `expires_in: 0`: the token is refused with
    /// an error, and the valid cached token is kept (before, it was replaced by the expired
    /// one, and the next request sent that).
    #[tokio::test(start_paused = true)]
    async fn an_expired_claims_token_is_an_error_and_the_cached_token_stays() {
        let cache = TokenCache::new("Test");
        let key = CacheKey::new("t", &scopes(&["s"]), false);
        let valid = || async {
            Ok(AccessToken::new(
                "valid",
                Instant::now() + Duration::from_secs(3600),
            ))
        };
        cache
            .get_or_acquire(key.clone(), false, valid)
            .await
            .unwrap();
        let expired = || async { Ok(AccessToken::new("expired", Instant::now())) };
        let err = cache
            .get_or_acquire(key.clone(), true, expired)
            .await
            .unwrap_err();
        assert!(err.message().contains("already expired"), "{err}");
        let never = || async { Err(CredentialError::authentication_failed("Test", "not asked")) };
        let after = cache.get_or_acquire(key, false, never).await.unwrap();
        assert_eq!(after.secret().expose_secret(), "valid");
    }
}
