//! Sealing entries at rest: AES-256-GCM under the user's key, bound to the entry's key.
//!
//! A sealed value is `SEALED` ‖ 96-bit random nonce ‖ ciphertext and tag; its associated data
//! is the key's name, a zero byte, and the store key of the entry, so a value copied under
//! another entry's key, or sealed under another key name, does not open. The plaintext is the
//! JSON [`Payload`]; every buffer that holds it is zeroized when dropped. The plaintext
//! opt-out stores `PLAIN` ‖ JSON: a cache opens only values of its own kind. With no
//! associated data to bind it, a plaintext payload names its store key (`entry`) and opens
//! only under that key, so a value copied under another entry's key is a miss there too; a
//! plaintext value written before it named its key is a miss (it is replaced), not an error.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::clock::WallClock;
use crate::error::ConfigError;
use crate::token::AccessToken;

/// The version prefix of a sealed value.
const SEALED: &[u8] = b"ti1s";
/// The version prefix of a plaintext value (the opt-out).
const PLAIN: &[u8] = b"ti1p";
/// AES-256: the key is 32 bytes.
const KEY_LEN: usize = 32;

/// A 256-bit key that seals the distributed cache's entries (AES-256-GCM), with a name bound
/// into every entry, so that rotating to a key under a new name makes old entries misses
/// rather than errors.
///
/// Its `Debug` shows the name only.
#[derive(Clone)]
pub struct SealingKey {
    name: Arc<str>,
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
            name: name.into(),
            key: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// The key in the environment variable `var`: base64 (standard or URL-safe alphabet,
    /// padded or not) of 32 bytes. The key's name is `var`.
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

/// A token read from the store, with when it was published.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) token: AccessToken,
    pub(super) stored_on: Instant,
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
                        .saturating_add(NONCE_LEN)
                        .saturating_add(json.len())
                        .saturating_add(tag.as_ref().len()),
                );
                value.extend_from_slice(SEALED);
                value.extend_from_slice(&nonce);
                value.extend_from_slice(&json);
                value.extend_from_slice(tag.as_ref());
                Some(Zeroizing::new(value))
            }
        }
    }

    /// The token in `value`, stored under the store key `entry`; `None` for anything that
    /// does not open: another kind (sealed / plaintext), another key or key name, another
    /// entry's value, or bytes that are no entry at all. `left` is the time the store said the
    /// entry has left, if it said.
    pub(super) fn open(
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
                let rest = value.strip_prefix(SEALED)?;
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
        })
    }
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
                .is_none(),
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
                .is_none()
        );
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
