//! The store keys of an entry: `{prefix}:{hash}:token`, `{prefix}:{hash}:lease`,
//! `{prefix}:{hash}:failed` and `{prefix}:{hash}:throttled`.
//!
//! The hash is the hex SHA-256 of the fields that make two requests want the same token:
//! the authority (its whole normalised URL: host, port and path) and tenant, the client id, the identity (the credential's name, and
//! for a managed identity which one), the scope set (sorted, duplicates dropped) and the CAE
//! flag. Each field is length-prefixed, so no two field lists hash alike by concatenation.
//! The braces make the hash a Redis Cluster hash tag: an entry's keys live in one slot. Nothing in a key is secret, and nothing in it names a tenant or an app in clear.

use std::fmt;
use std::sync::Arc;

use ring::digest;

/// Bumped when the fields or their encoding change: old entries are then simply not found
/// (misses, not errors; they expire with their tokens). 2: the authority is its whole URL,
/// not only its host (1 let authorities on one host, on other ports or paths, share entries).
const KEY_VERSION: &str = "tower-identity/distributed/2";

/// What a credential contributes to its entries' keys (the request adds tenant, scopes, CAE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The normalised authority URL (`https://login.microsoftonline.com`, with any port and
    /// path: see `Authority::as_str`), or the token source of a credential that has none
    /// (managed identity).
    pub(crate) authority: String,
    pub(crate) client_id: String,
    /// The credential's name, and which identity it is when one credential can be several
    /// (managed identity: the user-assigned id's kind and value, or `system=` and the label
    /// the user gave the system-assigned identity, on Azure ML with its default's GUID:
    /// `system={label}/default={guid}`; without a label, or on Azure ML without a GUID
    /// default, it is never shared).
    pub(crate) identity: String,
}

/// The keys of one entry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EntryKey {
    base: Arc<str>,
}

impl EntryKey {
    /// The entry for `identity` asking for `scopes` (any order, duplicates allowed) in
    /// `tenant`, under `prefix`.
    pub(crate) fn new(
        prefix: &str,
        identity: &Identity,
        tenant: &str,
        scopes: &[String],
        cae: bool,
    ) -> Self {
        let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut context = digest::Context::new(&digest::SHA256);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_be_bytes());
            context.update(bytes);
        };
        field(KEY_VERSION.as_bytes());
        field(identity.authority.as_bytes());
        field(tenant.as_bytes());
        field(identity.client_id.as_bytes());
        field(identity.identity.as_bytes());
        field(&(scopes.len() as u64).to_be_bytes());
        for scope in &scopes {
            field(scope.as_bytes());
        }
        field(&[u8::from(cae)]);
        let hash = hex(context.finish().as_ref());
        Self {
            base: format!("{prefix}:{{{hash}}}").into(),
        }
    }

    /// Where the sealed token is stored.
    pub(crate) fn token(&self) -> String {
        format!("{}:token", self.base)
    }

    /// Where the lease of the entry's acquisition is taken.
    pub(crate) fn lease(&self) -> String {
        format!("{}:lease", self.base)
    }

    /// Where a holder whose request failed leaves its mark for the waiters.
    pub(crate) fn failed(&self) -> String {
        format!("{}:failed", self.base)
    }

    /// Where a holder the identity provider throttled leaves its throttle mark,
    /// `{status}:{end in Unix ms}:{holder}` (sealed: then `:` and its MAC), for the wait
    /// asked: the time left is the key's
    /// own expiry (`PTTL`); the end it carries is read by the reader's clock only when the
    /// store cannot tell a key's time left (an hour on at most).
    pub(crate) fn throttled(&self) -> String {
        format!("{}:throttled", self.base)
    }
}

impl fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            authority: "https://login.microsoftonline.com".into(),
            client_id: "client".into(),
            identity: "ClientSecretCredential".into(),
        }
    }

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    const STABLE: &str = "2cd93a448d27de01f28ec899059ad3ad7edaa15eff0b6890bc2862d6710b7b43";

    #[test]
    fn keys_are_stable_and_ignore_scope_order_and_duplicates() {
        let a = EntryKey::new("p", &identity(), "t", &scopes(&["b", "a", "a"]), false);
        let b = EntryKey::new("p", &identity(), "t", &scopes(&["a", "b"]), false);
        assert_eq!(a, b);
        // Stable across builds and processes: a fixed input has a fixed key.
        assert_eq!(a.token(), format!("p:{{{STABLE}}}:token"));
        assert_eq!(a.token().len(), "p:{}:token".len() + 64);
        assert!(a.lease().ends_with("}:lease"));
        assert_eq!(a.token()[..67], a.lease()[..67], "one hash tag for both");
        assert_eq!(a.token()[..67], a.throttled()[..67], "one hash tag for all");
        assert!(a.throttled().ends_with("}:throttled"));
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = EntryKey::new("p", &identity(), "t", &scopes(&["a"]), false);
        let authority = |authority: &str| Identity {
            authority: authority.into(),
            ..identity()
        };
        let variants = [
            EntryKey::new("q", &identity(), "t", &scopes(&["a"]), false),
            EntryKey::new(
                "p",
                &authority("https://login.microsoftonline.us"),
                "t",
                &scopes(&["a"]),
                false,
            ),
            EntryKey::new("p", &identity(), "u", &scopes(&["a"]), false),
            EntryKey::new("p", &identity(), "t", &scopes(&["a", "b"]), false),
            EntryKey::new("p", &identity(), "t", &scopes(&["a"]), true),
            EntryKey::new(
                "p",
                &Identity {
                    client_id: "other".into(),
                    ..identity()
                },
                "t",
                &scopes(&["a"]),
                false,
            ),
            EntryKey::new(
                "p",
                &Identity {
                    identity: "ClientCertificateCredential".into(),
                    ..identity()
                },
                "t",
                &scopes(&["a"]),
                false,
            ),
            // Length prefixes: moving a boundary between fields is another key.
            EntryKey::new("p", &identity(), "t", &scopes(&["ab"]), false),
        ];
        for v in variants {
            assert_ne!(base, v, "{v:?}");
        }
        assert_ne!(
            EntryKey::new("p", &identity(), "t", &scopes(&["ab"]), false),
            EntryKey::new("p", &identity(), "t", &scopes(&["a", "b"]), false)
        );
        // One host, another port or path: possibly another token service, another entry.
        let key = |a: &str| EntryKey::new("p", &authority(a), "t", &scopes(&["a"]), false);
        assert_ne!(key("https://localhost:8443"), key("https://localhost:9443"));
        assert_ne!(
            key("https://gw.corp/entra-a"),
            key("https://gw.corp/entra-b")
        );
    }
}
