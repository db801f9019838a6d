//! Sealing entries at rest: AES-256-GCM under the user's key, bound to the entry's key.
//!
//! A sealed value is `SEALED` ‖ the key id ‖ 96-bit random nonce ‖ ciphertext and tag. The key
//! id (the first 8 bytes of a SHA-256 of the key's name) is in clear so that a reader tells an
//! entry sealed under another key name, which a fleet rotating its key writes for a while, from
//! one that does not open: the first is a quiet miss ([`Unopened::OtherKey`]), the second an
//! error. The associated data is the key's name, a zero byte, and the store key of the entry,
//! so a value copied under another entry's key, or whose key id was edited, does not open. The
//! plaintext is the JSON [`Payload`]. Every buffer here that holds the token is zeroized when
//! dropped: the JSON is written into a buffer of its exact length, measured first (a buffer
//! that grew would leave copies behind), and read back with the token's JSON string taken as
//! it stands ([`ReadPayload`]) and unescaped by [`json_string`] into a buffer sized up front,
//! never through serde_json's scratch buffer (which it fills with any string that has an
//! escape, and does not zeroize). So is the value the cache read from the store. The store's
//! own buffers are not: with the plaintext opt-out they hold the token in clear (with
//! `RedisTokenCache`, the `redis` crate's command and read buffers), where a sealed value
//! leaves only ciphertext.
//!
//! The plaintext opt-out stores `PLAIN` ‖ JSON: a cache opens only values of its own kind.
//! With no associated data to bind it, a plaintext payload names its store key (`entry`) and
//! opens only under that key, so a value copied under another entry's key does not open
//! there. (Values written before payloads named their key are under keys of an older
//! `KEY_VERSION`, which this version never reads.)

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
/// What the marks' key is derived from the sealing key with.
const MARK_KEY_LABEL: &[u8] = b"tower-identity/mark-mac-key";
/// What separates a sealed mark's body from its MAC: the last one in the value.
const MARK_TAG_SEPARATOR: u8 = b':';

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
    /// Authenticates the cache's marks (HMAC-SHA256; see [`Sealing::mark`]): derived from
    /// the key, never the key itself, so a MAC says nothing of it.
    marks: Arc<hmac::Key>,
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
        // HMAC as a key derivation function, with a label of its own: the marks' key.
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), MARK_KEY_LABEL);
        Ok(Self {
            id: key_id(&name),
            name: name.into(),
            key: Arc::new(LessSafeKey::new(unbound)),
            marks: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())),
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
#[derive(Serialize)]
struct Payload<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_on: u64,
    refresh_on: Option<u64>,
    stored_on: u64,
    /// Plaintext only: the store key the value was written under (a sealed value's is bound
    /// in its associated data instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<&'a str>,
}

/// A [`Payload`] as read: the token is its JSON string as it stands in the buffer read
/// (quotes and escapes), for [`json_string`] to unescape. Read as a string, serde_json would
/// copy one with an escape into its scratch buffer, which is not zeroized.
#[derive(Deserialize)]
struct ReadPayload<'a> {
    #[serde(borrow)]
    access_token: &'a RawValue,
    #[serde(borrow)]
    token_type: Cow<'a, str>,
    expires_on: u64,
    refresh_on: Option<u64>,
    stored_on: u64,
    #[serde(borrow, default)]
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
    /// The value to store for the mark `body` (a failure or throttle mark) under the store
    /// key `mark_key`. Sealed: `body:MAC`, the MAC (HMAC-SHA256 under a key derived from the
    /// sealing key, over the store key and the body; URL-safe base64) last, so that a cache
    /// tells its fleet's marks from ones written by anything else with access to the store
    /// (a throttle mark set by hand would otherwise stop the fleet's token requests for an
    /// hour). Plaintext: `body` as it is (nothing to authenticate with).
    pub(super) fn mark(&self, mark_key: &str, body: &[u8]) -> Vec<u8> {
        match self {
            Sealing::Plaintext => body.to_vec(),
            Sealing::Sealed(key) => {
                let tag = hmac::sign(&key.marks, &mark_input(mark_key, body));
                let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
                let mut value =
                    Vec::with_capacity(body.len().saturating_add(1).saturating_add(tag.len()));
                value.extend_from_slice(body);
                value.push(MARK_TAG_SEPARATOR);
                value.extend_from_slice(tag.as_bytes());
                value
            }
        }
    }

    /// The body of the mark `value` read under `mark_key`, as [`mark`](Self::mark) wrote it;
    /// `None` when it is sealed and does not verify (written without this key: by a process
    /// of another key name or an older release, or by anything else with access to the
    /// store). Plaintext: `value` as it is.
    pub(super) fn verified_mark(&self, mark_key: &str, mut value: Vec<u8>) -> Option<Vec<u8>> {
        let Sealing::Sealed(key) = self else {
            return Some(value);
        };
        let at = value.iter().rposition(|&b| b == MARK_TAG_SEPARATOR)?;
        let (body, tag) = value.split_at(at);
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag.get(1..)?)
            .ok()?;
        hmac::verify(&key.marks, &mark_input(mark_key, body), &tag).ok()?;
        value.truncate(at);
        Some(value)
    }

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
            access_token: token.secret().expose_secret(),
            token_type: token.token_type(),
            expires_on: clock.to_unix(token.expires_on()),
            refresh_on: token.refresh_on().map(|at| clock.to_unix(at)),
            stored_on: clock.to_unix(now),
            entry: matches!(self, Sealing::Plaintext).then_some(entry),
        };
        // Measured, then written into a buffer of exactly that length, which cannot grow: a
        // growing buffer would leave copies of the token behind. (An estimate would not do:
        // the token type's length, and escapes, which make a character six bytes.)
        let mut measured = Measured(0);
        serde_json::to_writer(&mut measured, &payload).ok()?;
        let mut json = Zeroizing::new(vec![0u8; measured.0]);
        let mut unwritten: &mut [u8] = &mut json;
        serde_json::to_writer(&mut unwritten, &payload).ok()?;
        if !unwritten.is_empty() {
            return None;
        }
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
        // The opened plaintext, zeroized when dropped (a plaintext value is read in place).
        let opened: Zeroizing<Vec<u8>>;
        let json: &[u8] = match self {
            Sealing::Plaintext => value.strip_prefix(PLAIN)?,
            Sealing::Sealed(key) => {
                let rest = value.strip_prefix(SEALED)?.get(KEY_ID_LEN..)?;
                let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut buffer = Zeroizing::new(sealed.to_vec());
                let aad = associated_data(key, entry);
                let len = key
                    .key
                    .open_in_place(nonce, Aad::from(&aad), &mut buffer)
                    .ok()?
                    .len();
                buffer.truncate(len);
                opened = buffer;
                &opened
            }
        };
        let payload: ReadPayload<'_> = serde_json::from_slice(json).ok()?;
        let mut secret = json_string(payload.access_token.get())?;
        if secret.is_empty() {
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
        // Moved, not copied, into the token's zeroized secret.
        let token = AccessToken::new(std::mem::take(&mut *secret), end)
            .with_refresh_on(payload.refresh_on.map(time))
            .with_token_type(payload.token_type.as_ref());
        Some(Stored {
            token,
            stored_on: time(payload.stored_on).min(now),
            sealed_times: (payload.stored_on, payload.expires_on),
        })
    }
}

/// A writer that keeps nothing, only counts the bytes written: the length of the JSON to
/// write, for a buffer of that size.
struct Measured(usize);

impl io::Write for Measured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The text of the JSON string `raw` (with its quotes and escapes, as serde_json validated
/// it) in a buffer zeroized when dropped, allocated once: unescaping never lengthens a
/// string (`\"` is two bytes for one, `\uXXXX` six for at most three, a surrogate pair
/// twelve for four), so the buffer never grows and leaves no copy behind. `None` if `raw`
/// is not a JSON string, or has an escape JSON does not define (a lone surrogate among them).
fn json_string(raw: &str) -> Option<Zeroizing<String>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut text = Zeroizing::new(String::with_capacity(inner.len()));
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        let unescaped = match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let mut rest = chars.as_str();
                let unit = hex4(&mut rest)?;
                // A high surrogate is followed by a low one (`\uXXXX` too): a pair. A lone
                // one decodes to an error: `None`.
                let decoded = if (0xD800..0xDC00).contains(&unit) {
                    rest = rest.strip_prefix("\\u")?;
                    let low = hex4(&mut rest)?;
                    char::decode_utf16([unit, low]).next()
                } else {
                    char::decode_utf16([unit]).next()
                };
                chars = rest.chars();
                decoded?.ok()?
            }
            _ => return None,
        };
        text.push(unescaped);
    }
    Some(text)
}

/// The four hex digits that start `rest` (a `\uXXXX` escape's), as a UTF-16 unit; `rest`
/// moves past them.
fn hex4(rest: &mut &str) -> Option<u16> {
    let digits = rest
        .get(..4)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))?;
    *rest = rest.get(4..)?;
    u16::from_str_radix(digits, 16).ok()
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

/// What a mark's MAC covers: a label, the store key (its length first: no two inputs give the
/// same bytes) and the mark's body.
fn mark_input(mark_key: &str, body: &[u8]) -> Vec<u8> {
    const LABEL: &[u8] = b"tower-identity/mark\0";
    let mut input = Vec::with_capacity(
        LABEL
            .len()
            .saturating_add(8)
            .saturating_add(mark_key.len())
            .saturating_add(body.len()),
    );
    input.extend_from_slice(LABEL);
    input.extend_from_slice(&(mark_key.len() as u64).to_be_bytes());
    input.extend_from_slice(mark_key.as_bytes());
    input.extend_from_slice(body);
    input
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

    /// A token with characters JSON escapes (quotes, backslashes, control characters; a
    /// character outside the BMP, written as is) and a long token type round-trip, sealed
    /// and plaintext: the JSON is measured before it is written (before, its buffer was sized
    /// from the token's length plus 256 bytes, and grew past that, leaving copies behind), and
    /// the token read back is unescaped by `json_string`, never by serde_json into its scratch
    /// buffer.
    #[test]
    fn tokens_json_escapes_round_trip_in_either_mode() {
        let (now, clock) = (Instant::now(), WallClock::now());
        let secret = format!("a\"b\\c\u{1}\n\u{1f}é😀{}", "\"".repeat(300));
        let token = AccessToken::new(secret.clone(), now + std::time::Duration::from_secs(60))
            .with_token_type("\"".repeat(400));
        for sealing in [
            Sealing::Plaintext,
            Sealing::Sealed(SealingKey::new("k", &[1; KEY_LEN]).unwrap()),
        ] {
            let value = sealing.seal("e", &token, now, clock).unwrap();
            let opened = sealing.open("e", &value, now, clock, None).unwrap().token;
            assert_eq!(opened.secret().expose_secret(), secret);
            assert_eq!(opened.token_type(), "\"".repeat(400));
        }
    }

    /// `json_string` reads what JSON defines, refuses the rest, and never grows its buffer.
    #[test]
    fn json_strings_are_unescaped_as_json_defines() {
        let read = |raw: &str| json_string(raw).map(|text| text.as_str().to_owned());
        assert_eq!(read(r#""plain""#).as_deref(), Some("plain"));
        assert_eq!(
            read(r#""\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#).as_deref(),
            Some("\"\\/\u{8}\u{c}\n\r\té😀")
        );
        for refused in [
            "",
            "\"",
            "unquoted",
            "123",
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\u+123""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
            r#""end\""#,
        ] {
            assert_eq!(read(refused), None, "{refused}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 256,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Any string serde_json writes reads back as it was, in a buffer that kept the size
        /// it was given; any text at all reads as serde_json reads it (or not at all), never
        /// panicking.
        #[test]
        fn json_string_reads_what_serde_json_writes(text in ".*", raw in r#""[\\"a-z0-9u]{0,12}"#) {
            let written = serde_json::to_string(&text).unwrap();
            let read = json_string(&written).unwrap();
            proptest::prop_assert_eq!(read.as_str(), text.as_str());
            proptest::prop_assert_eq!(read.capacity(), written.len() - 2);
            let theirs = serde_json::from_str::<String>(&raw).ok();
            let ours = json_string(&raw).map(|read| read.as_str().to_owned());
            if theirs.is_some() {
                proptest::prop_assert_eq!(ours, theirs);
            }
        }
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
