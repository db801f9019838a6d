//! Sealing entries at rest: AES-256-GCM under the user's key, bound to the entry's key.
//!
//! A sealed value is `SEALED` ‖ the key id ‖ 96-bit random nonce ‖ ciphertext and tag. The key
//! id (the first 8 bytes of a SHA-256 of the key's name) is in clear so that a reader tells an
//! entry sealed under another key name, which a fleet rotating its key writes for a while, from
//! one that does not open: the first is a quiet miss ([`Unopened::OtherKey`]), the second an
//! error. The associated data is the key's name, a zero byte, and the store key of the entry,
//! so a value copied under another entry's key, or whose key id was edited, does not open. The
//! plaintext is the JSON [`Payload`]; every buffer that holds it is zeroized when dropped.
//!
//! The plaintext opt-out stores `PLAIN` ‖ JSON: a cache opens only values of its own kind.
//! With no associated data to bind it, a plaintext payload names its store key (`entry`) and
//! opens only under that key, so a value copied under another entry's key does not open
//! there. (Values written before payloads named their key are under keys of an older
//! `KEY_VERSION`, which this version never reads.)

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::clock::WallClock;
use crate::error::ConfigError;
use crate::token::AccessToken;

/// The version prefix of a sealed value. `ti1s` had no key id; since the entry keys changed
/// with it (`KEY_VERSION` 2), this version never meets one.
const SEALED: &[u8] = b"ti2s";
/// The key id's length: enough that two names of one fleet never share one by chance.
const KEY_ID_LEN: usize = 8;
/// The version prefix of a plaintext value (the opt-out).
const PLAIN: &[u8] = b"ti1p";
/// AES-256: the key is 32 bytes.
const KEY_LEN: usize = 32;

/// A 256-bit key that seals the distributed cache's entries (AES-256-GCM), with a name bound
/// into every entry.
///
/// Rotate by giving the new key a new name: an entry sealed under another name is a miss, not
/// a store error (it carries a short hash of the name in clear). While the fleet rolls over,
/// processes on the old key and on the new one do not share: each finds the other's entry a
/// miss (logged at DEBUG, counted in `CacheStats::other_key_misses`, not as a store error), asks the identity provider and replaces it. A new key
/// under the same name makes old entries fail to open: store errors (WARN) until replaced.
///
/// Its `Debug` shows the name only.
#[derive(Clone)]
pub struct SealingKey {
    name: Arc<str>,
    /// Written in clear in front of every value sealed under this key (see the module docs).
    id: [u8; KEY_ID_LEN],
    key: Arc<LessSafeKey>,
}

impl SealingKey {
    /// A key named `name` (for example where it is kept: `"vault:token-cache-key"`) from
    /// exactly 32 bytes, such as the output of `openssl rand 32`.
    pub fn new(name: impl Into<String>, key: &[u8]) -> Result<Self, ConfigError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ConfigError::new(
                "SealingKey: the key name is empty; name the key (where it is kept, its version)",
            ));
        }
        if key.len() != KEY_LEN {
            return Err(ConfigError::new(format!(
                "SealingKey {name:?}: the key is {} bytes; AES-256 needs exactly {KEY_LEN} \
                 (e.g. `openssl rand -base64 32`)",
                key.len()
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| {
            ConfigError::new(format!("SealingKey {name:?}: the key was not accepted"))
        })?;
        Ok(Self {
            id: key_id(&name),
            name: name.into(),
            key: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// The key in the environment variable `var`: base64 (standard or URL-safe alphabet,
    /// padded or not) of 32 bytes. The key's name is `var`: to rotate, read the new key from a
    /// variable of another name (or name it with [`new`](Self::new)).
    pub fn from_env(var: &str) -> Result<Self, ConfigError> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| {
            ConfigError::new(format!(
                "SealingKey: {var} is not set (or not Unicode); set it to the base64 of 32 \
                 random bytes (`openssl rand -base64 32`)"
            ))
        })?);
        Self::from_base64(var, &value)
    }

    /// The key whose base64 is `value`, named `name` (the variable it came from).
    fn from_base64(name: &str, value: &str) -> Result<Self, ConfigError> {
        // The decoder's error names an offending byte: not repeated, it is key material.
        let bytes = Zeroizing::new(crate::encoding::decode_base64(value).map_err(|_| {
            ConfigError::new(format!(
                "SealingKey: {name} is not base64; set it to the base64 of 32 random bytes \
                 (`openssl rand -base64 32`)"
            ))
        })?);
        Self::new(name, &bytes)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How a cache keeps its entries at rest.
#[derive(Clone, Debug)]
pub(super) enum Sealing {
    Sealed(SealingKey),
    Plaintext,
}

/// What an entry holds, as JSON. Times are Unix seconds; `stored_on` is when the entry was
/// published, so that every process judges its refresh time from the same start.
#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    access_token: Cow<'a, str>,
    #[serde(borrow)]
    token_type: Cow<'a, str>,
    expires_on: u64,
    refresh_on: Option<u64>,
    stored_on: u64,
    /// Plaintext only: the store key the value was written under (a sealed value's is bound
    /// in its associated data instead).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    entry: Option<Cow<'a, str>>,
}

/// Why a stored value did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unopened {
    /// Sealed under a key of another name: the fleet is rotating its key. A miss.
    OtherKey,
    /// Anything else: garbage, the other mode, another key under this key's name, another
    /// entry's value. A miss too, but a store error.
    Unreadable,
}

/// A token read from the store, with when it was published.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) token: AccessToken,
    pub(super) stored_on: Instant,
    /// The Unix times sealed in the entry (`stored_on`, `expires_on`): the same at every read
    /// on every host, where `stored_on` moves with the reader's clock and the store's time
    /// left (see `open`).
    pub(super) sealed_times: (u64, u64),
}

impl Sealing {
    /// The value to store for `token` under the store key `entry`, published at `now`;
    /// `None` if sealing failed (no randomness: the entry is then not shared).
    pub(super) fn seal(
        &self,
        entry: &str,
        token: &AccessToken,
        now: Instant,
        clock: WallClock,
    ) -> Option<Zeroizing<Vec<u8>>> {
        let payload = Payload {
            access_token: Cow::Borrowed(token.secret().expose_secret()),
            token_type: Cow::Borrowed(token.token_type()),
            expires_on: clock.to_unix(token.expires_on()),
            refresh_on: token.refresh_on().map(|at| clock.to_unix(at)),
            stored_on: clock.to_unix(now),
            entry: matches!(self, Sealing::Plaintext).then_some(Cow::Borrowed(entry)),
        };
        // Sized up front: a growing buffer would leave copies of the token behind.
        let capacity = token
            .secret()
            .expose_secret()
            .len()
            .saturating_add(entry.len())
            .saturating_add(256);
        let mut json = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *json, &payload).ok()?;
        match self {
            Sealing::Plaintext => {
                let mut value =
                    Zeroizing::new(Vec::with_capacity(PLAIN.len().saturating_add(json.len())));
                value.extend_from_slice(PLAIN);
                value.extend_from_slice(&json);
                Some(value)
            }
            Sealing::Sealed(key) => {
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new().fill(&mut nonce).ok()?;
                let aad = associated_data(key, entry);
                let tag = key
                    .key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut json,
                    )
                    .ok()?;
                let mut value = Vec::with_capacity(
                    SEALED
                        .len()
                        .saturating_add(KEY_ID_LEN)
                        .saturating_add(NONCE_LEN)
                        .saturating_add(json.len())
                        .saturating_add(tag.as_ref().len()),
                );
                value.extend_from_slice(SEALED);
                value.extend_from_slice(&key.id);
                value.extend_from_slice(&nonce);
                value.extend_from_slice(&json);
                value.extend_from_slice(tag.as_ref());
                Some(Zeroizing::new(value))
            }
        }
    }

    /// The token in `value`, stored under the store key `entry`, else why it does not open:
    /// sealed under another key name ([`Unopened::OtherKey`]); or another kind (sealed /
    /// plaintext), another key under this one's name, another entry's value, or bytes that are
    /// no entry at all ([`Unopened::Unreadable`]). `left` is the time the store said the entry
    /// has left, if it said.
    pub(super) fn open(
        &self,
        entry: &str,
        value: &[u8],
        now: Instant,
        clock: WallClock,
        left: Option<Duration>,
    ) -> Result<Stored, Unopened> {
        if let Sealing::Sealed(key) = self {
            let id = value
                .strip_prefix(SEALED)
                .and_then(|rest| rest.get(..KEY_ID_LEN));
            if id.is_some_and(|id| id != key.id) {
                return Err(Unopened::OtherKey);
            }
        }
        self.open_own(entry, value, now, clock, left)
            .ok_or(Unopened::Unreadable)
    }

    /// [`open`](Self::open) for a value that is not under another key name.
    fn open_own(
        &self,
        entry: &str,
        value: &[u8],
        now: Instant,
        clock: WallClock,
        left: Option<Duration>,
    ) -> Option<Stored> {
        let json: Zeroizing<Vec<u8>> = match self {
            Sealing::Plaintext => Zeroizing::new(value.strip_prefix(PLAIN)?.to_vec()),
            Sealing::Sealed(key) => {
                let rest = value.strip_prefix(SEALED)?.get(KEY_ID_LEN..)?;
                let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut buffer = Zeroizing::new(sealed.to_vec());
                let aad = associated_data(key, entry);
                let opened = key
                    .key
                    .open_in_place(nonce, Aad::from(&aad), &mut buffer)
                    .ok()?
                    .len();
                buffer.truncate(opened);
                buffer
            }
        };
        let payload: Payload<'_> = serde_json::from_slice(&json).ok()?;
        if payload.access_token.is_empty() {
            return None;
        }
        if matches!(self, Sealing::Plaintext) && payload.entry.as_deref() != Some(entry) {
            return None;
        }
        // The sealed times are the publisher's wall clock read through this process's: a reader
        // whose clock runs behind maps them late by the difference. The store's time left is
        // relative (it was the token's own lifetime when published), so where it ends sooner,
        // every time of the entry moves back by the difference: the token expires when the
        // entry does, and is renewed when the publisher's rule says, not later.
        let expires_on = clock.to_instant(payload.expires_on, now);
        let end = left
            .and_then(|left| now.checked_add(left))
            .map_or(expires_on, |end| end.min(expires_on));
        let late = expires_on.saturating_duration_since(end);
        let time = |unix: u64| {
            let at = clock.to_instant(unix, now);
            at.checked_sub(late).unwrap_or(at).min(end)
        };
        let token = AccessToken::new(payload.access_token.into_owned(), end)
            .with_refresh_on(payload.refresh_on.map(time))
            .with_token_type(payload.token_type.as_ref());
        Some(Stored {
            token,
            stored_on: time(payload.stored_on).min(now),
            sealed_times: (payload.stored_on, payload.expires_on),
        })
    }
}

/// The first bytes of a SHA-256 of `name` (with a context string, so it is no plain hash of
/// the name): what a value says in clear about the key that sealed it.
fn key_id(name: &str) -> [u8; KEY_ID_LEN] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"tower-identity/sealing-key-id\0");
    context.update(name.as_bytes());
    let mut id = [0u8; KEY_ID_LEN];
    for (to, from) in id.iter_mut().zip(context.finish().as_ref()) {
        *to = *from;
    }
    id
}

/// The key's name, a zero byte, the entry's store key.
fn associated_data(key: &SealingKey, entry: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.name.len().saturating_add(entry.len()).saturating_add(1));
    aad.extend_from_slice(key.name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(entry.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext value opens only under the store key it was written under (before, any
    /// entry's value opened under any key); one written before it named its key is a miss.
    #[test]
    fn a_plaintext_value_opens_only_under_its_own_store_key() {
        let (now, clock) = (Instant::now(), WallClock::now());
        let token = AccessToken::new("t", now + std::time::Duration::from_secs(60));
        let value = Sealing::Plaintext
            .seal("p:{a}:token", &token, now, clock)
            .unwrap();
        let opened = Sealing::Plaintext.open("p:{a}:token", &value, now, clock, None);
        assert_eq!(opened.unwrap().token.secret().expose_secret(), "t");
        assert!(
            Sealing::Plaintext
                .open("p:{b}:token", &value, now, clock, None)
                .is_err(),
            "copied under another entry's key"
        );
        let unnamed = [
            PLAIN,
            br#"{"access_token":"t","token_type":"Bearer","expires_on":4102444800,"refresh_on":null,"stored_on":0}"#,
        ]
        .concat();
        assert!(
            Sealing::Plaintext
                .open("p:{a}:token", &unnamed, now, clock, None)
                .is_err()
        );
    }

    /// A value sealed under another key name is `OtherKey` (a fleet mid-rotation: a quiet
    /// miss); one that names this key but does not open stays `Unreadable` (an error).
    #[test]
    fn another_key_name_is_told_apart_from_a_value_that_does_not_open() {
        let (now, clock) = (Instant::now(), WallClock::now());
        let token = AccessToken::new("t", now + std::time::Duration::from_secs(60));
        let sealing = |name: &str, bytes: u8| {
            Sealing::Sealed(SealingKey::new(name, &[bytes; KEY_LEN]).unwrap())
        };
        let open = |sealing: &Sealing, value: &[u8]| {
            sealing
                .open("e", value, now, clock, None)
                .map(|stored| stored.token.secret().expose_secret().to_owned())
        };
        let k1 = sealing("k1", 1).seal("e", &token, now, clock).unwrap();
        assert!(k1.starts_with(SEALED));
        assert_eq!(open(&sealing("k1", 1), &k1).as_deref(), Ok("t"));
        assert_eq!(open(&sealing("k2", 2), &k1), Err(Unopened::OtherKey));
        assert_eq!(open(&sealing("k2", 1), &k1), Err(Unopened::OtherKey));
        assert_eq!(
            open(&sealing("k1", 2), &k1),
            Err(Unopened::Unreadable),
            "another key under the same name"
        );
        // The key id is not trusted: a value relabelled with this key's id still fails.
        let mut relabelled = k1.to_vec();
        relabelled.splice(SEALED.len()..SEALED.len() + KEY_ID_LEN, key_id("k2"));
        assert_eq!(
            open(&sealing("k2", 1), &relabelled),
            Err(Unopened::Unreadable)
        );
        let truncated = [SEALED, &key_id("k1")[..3]].concat();
        for value in [&truncated[..], SEALED, b"ti1s", b"", b"garbage"] {
            assert_eq!(
                open(&sealing("k1", 1), value),
                Err(Unopened::Unreadable),
                "{value:?}"
            );
        }
        let plain = Sealing::Plaintext.seal("e", &token, now, clock).unwrap();
        assert_eq!(open(&sealing("k1", 1), &plain), Err(Unopened::Unreadable));
        assert_eq!(open(&Sealing::Plaintext, &k1), Err(Unopened::Unreadable));
    }

    #[test]
    fn keys_from_the_environment_are_base64_of_32_bytes_in_either_alphabet() {
        // 32 bytes whose base64 uses `+` and `/` (standard) or `-` and `_` (URL-safe).
        let bytes: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(0xfb))
            .collect();
        use base64::Engine as _;
        let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert!(standard.contains(['+', '/']) && url_safe.contains(['-', '_']));
        let token = AccessToken::new("t", Instant::now() + std::time::Duration::from_secs(60));
        let sealed = Sealing::Sealed(SealingKey::new("VAR", &bytes).unwrap())
            .seal("k", &token, Instant::now(), WallClock::now())
            .unwrap();
        for text in [
            standard.as_str(),
            url_safe.as_str(),
            &format!(" {standard}\n"),
        ] {
            let key = SealingKey::from_base64("VAR", text).unwrap();
            let opened =
                Sealing::Sealed(key).open("k", &sealed, Instant::now(), WallClock::now(), None);
            assert_eq!(
                opened.unwrap().token.secret().expose_secret(),
                "t",
                "{text}"
            );
        }
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        let err = SealingKey::from_base64("VAR", &short).unwrap_err();
        assert!(err.message().contains("31 bytes"), "{err}");
        let err = SealingKey::from_base64("VAR", "not base64 %%%").unwrap_err();
        assert!(err.message().contains("VAR is not base64"), "{err}");
        assert!(!err.message().contains('%'), "{err}");
    }
}
