//! The Lua scripts the store runs, and how their answers read.

use std::time::Duration;

use redis::Value;

use crate::distributed::store::{
    LeaseTtl, StoreError, ValueWithLease, ValueWithMark, ValueWithThrottle, ValueWithTtl,
};

/// Gives a lease back only to the holder that took it: a lease that expired and was taken by
/// another process meanwhile must survive the old holder's release.
pub(super) const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Gives the lease `KEYS[1]` back as [`RELEASE`] does (only to holder `ARGV[1]`) and, only
/// then, stores the mark `ARGV[2]` under `KEYS[2]` for `ARGV[3]` ms, in one atomic step: no
/// waiter sees the lease free without the mark, or the mark with the lease still held (the
/// keys share a hash tag), and a caller that does not hold the lease (it never took it, or it
/// ran out and went to another process) leaves no mark to send that holder's waiters to the
/// identity provider. The release comes first: a script that has written may write on under
/// `maxmemory`, where a `SET` first would be refused and release nothing. Answers an integer
/// (1 when released), alike over RESP2 and RESP3.
pub(super) const RELEASE_WITH_MARK: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Extends a lease only for the holder that holds it, GET and PEXPIRE in one atomic step: a
/// lease that expired (and perhaps went to another process) is neither extended nor created.
/// Answers 1 when extended.
pub(super) const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Reads a value and the milliseconds it has left (`PTTL`: -1 when it has no expiry) in one
/// atomic step; `{}` when there is no value. A value that cannot be an entry, of another type
/// (`GET` would fail with WRONGTYPE) or longer than `ARGV[1]` bytes, is answered as an empty
/// string, without its bytes: the cache takes it for an unreadable entry (a miss), and its
/// next publish (`SET`, which replaces a key of any type) replaces it.
///
/// "None" is an empty collection, not `false`: Redis 7 answers a script's `false` as a nil
/// over RESP3 too (the script itself speaks RESP2 unless it calls `redis.setresp(3)`), but its
/// documentation promises a RESP3 Boolean there; a collection reads alike whatever the server
/// does. An answer of nil or `false` is still taken for none.
pub(super) const GET_WITH_TTL: &str = r"local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return {}
end
local left = redis.call('PTTL', KEYS[1])
if kind ~= 'string' or redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
  return {'', left}
end
return {redis.call('GET', KEYS[1]), left}";

/// [`GET_WITH_MARK`]'s text, for [`GET_WITH_LEASE`] too.
macro_rules! get_with_mark_body {
    () => {
        r"local entry = {}
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' then
  local left = redis.call('PTTL', KEYS[1])
  if kind ~= 'string' or redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
    entry = {'', left}
  else
    entry = {redis.call('GET', KEYS[1]), left}
  end
end
local mark = {}
if redis.call('TYPE', KEYS[2])['ok'] == 'string'
  and redis.call('STRLEN', KEYS[2]) <= tonumber(ARGV[2]) then
  mark = {redis.call('GET', KEYS[2])}
end
return {entry, mark}"
    };
}

/// Reads an entry as [`GET_WITH_TTL`] does, and the mark under `KEYS[2]`, in one atomic step
/// (the keys share a hash tag): `{entry, mark}`, where `entry` is `{}` when there is none, else
/// `{value, ms left}` as above, and `mark` is `{}` when there is none, else `{value}`. A mark of
/// another type or longer than `ARGV[2]` bytes is no mark: it was not written by a cache.
/// Empty collections, never `false`, say "none": the answer reads alike over RESP2 and RESP3.
pub(super) const GET_WITH_MARK: &str = get_with_mark_body!();

/// Reads what [`GET_WITH_MARK`] reads and the `PTTL` of the lease `KEYS[3]` (ms left; -1: no
/// expiry; -2: no lease), in one atomic step (the three keys share a hash tag):
/// `{entry, mark, lease ms}`. The two scripts share their text: this one is the other with
/// the `PTTL` added.
pub(super) const GET_WITH_LEASE: &str = concat!(
    r"local found = (function()
",
    get_with_mark_body!(),
    r"
end)()
found[3] = redis.call('PTTL', KEYS[3])
return found"
);

/// Reads what [`GET_WITH_LEASE`] reads and the throttle mark under `KEYS[4]` with its `PTTL`,
/// in one atomic step (the four keys share a hash tag): `{entry, mark, lease ms, throttle}`,
/// where `throttle` is `{}` when there is none, else `{value, ms left}` (-1: no expiry, read as
/// none: a cache's mark always expires). A throttle mark of another type or longer than
/// `ARGV[2]` bytes is none, as a mark is.
pub(super) const GET_WITH_THROTTLE: &str = concat!(
    r"local found = (function()
",
    get_with_mark_body!(),
    r"
end)()
found[3] = redis.call('PTTL', KEYS[3])
found[4] = {}
if redis.call('TYPE', KEYS[4])['ok'] == 'string'
  and redis.call('STRLEN', KEYS[4]) <= tonumber(ARGV[2]) then
  found[4] = {redis.call('GET', KEYS[4]), redis.call('PTTL', KEYS[4])}
end
return found"
);

/// Stores `ARGV[1]` under the key to expire after `ARGV[2]` ms, or at the Unix time `ARGV[3]`
/// (ms, by Redis's clock) if that comes first, and answers 1; stores nothing when that time
/// has passed, and answers the ms left (0 or less: how long ago it passed, by Redis's clock).
/// `ARGV[3]` is when the put was called plus its TTL: a put that Redis applies late (a call
/// given up on, sent on while Redis was stopped, applied once it resumes) then expires when
/// the token does, not that much later. Neither bound lengthens the other: a Redis clock
/// behind the caller's changes nothing; one ahead by `S` shortens the entry by `S`, and
/// stores nothing when `S` reaches the TTL (the caller tells that from a late apply: see
/// [`RedisTokenCache::put_from`](super::RedisTokenCache::put_from)).
/// A second key, when given, is deleted once the value is stored: the entry's throttle mark,
/// which a usable token ends (the keys share a hash tag).
/// Effects replication (`TIME` before a write) is the default from Redis 5; asked for on
/// older servers, where it exists.
pub(super) const PUT: &str = r"if redis.replicate_commands then
  redis.replicate_commands()
end
local now = redis.call('TIME')
local left = tonumber(ARGV[3]) - (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local px = math.min(tonumber(ARGV[2]), left)
if px < 1 then
  return math.min(left, 0)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
if KEYS[2] then
  redis.call('DEL', KEYS[2])
end
return 1";

/// A store error for an answer of the wrong kind; names the kind, never the value.
pub(super) fn unexpected(op: &str, value: &Value) -> StoreError {
    let kind = match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::SimpleString(_) | Value::Okay => "a status",
        Value::Array(_) | Value::Set(_) | Value::Map(_) => "a collection",
        _ => "an unexpected type",
    };
    StoreError::msg(format!("redis {op} answered {kind}, which it never should"))
}

/// This host's wall clock in Unix ms; `None` before 1970.
pub(super) fn unix_millis() -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
}

/// [`GET_WITH_TTL`]'s answer: `{}` for none (nil or `false` too), else `{value, ms left}`.
pub(super) fn entry_answer(answer: Value) -> Result<Option<ValueWithTtl>, StoreError> {
    match answer {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::Array(answer) => entry(answer),
        other => Err(unexpected("GET", &other)),
    }
}

/// An entry as the scripts answer it: `{}` for none, else `{value, ms left}`.
pub(super) fn entry(answer: Vec<Value>) -> Result<Option<ValueWithTtl>, StoreError> {
    match <[Value; 2]>::try_from(answer) {
        Ok([Value::BulkString(value), Value::Int(left)]) => {
            // -1: no expiry. -2 (gone) cannot follow a GET in one script; were it to, nothing
            // is left.
            let left = match u64::try_from(left) {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) if left == -1 => None,
                Err(_) => Some(Duration::ZERO),
            };
            Ok(Some((value, left)))
        }
        Err(none) if none.is_empty() => Ok(None),
        Ok(_) | Err(_) => Err(wrong_shape()),
    }
}

/// [`GET_WITH_MARK`]'s answer: `{entry, mark}`.
pub(super) fn entry_and_mark(answer: Value) -> Result<ValueWithMark, StoreError> {
    let Value::Array(answer) = answer else {
        return Err(unexpected("GET", &answer));
    };
    match <[Value; 2]>::try_from(answer) {
        Ok([found, mark]) => found_and_mark(found, mark),
        Err(_) => Err(wrong_shape()),
    }
}

/// [`GET_WITH_LEASE`]'s answer: `{entry, mark, lease ms}`.
pub(super) fn entry_mark_and_lease(answer: Value) -> Result<ValueWithLease, StoreError> {
    let Value::Array(answer) = answer else {
        return Err(unexpected("GET", &answer));
    };
    match <[Value; 3]>::try_from(answer) {
        Ok([found, mark, Value::Int(lease)]) => {
            // -1: no expiry; -2: no lease.
            let lease = match u64::try_from(lease) {
                Ok(ms) => LeaseTtl::Left(Duration::from_millis(ms)),
                Err(_) if lease == -1 => LeaseTtl::NoExpiry,
                Err(_) => LeaseTtl::Unknown,
            };
            Ok((found_and_mark(found, mark)?, lease))
        }
        Ok(_) | Err(_) => Err(wrong_shape()),
    }
}

/// [`GET_WITH_THROTTLE`]'s answer: `{entry, mark, lease ms, throttle}`.
pub(super) fn entry_mark_lease_and_throttle(
    answer: Value,
) -> Result<ValueWithThrottle, StoreError> {
    let Value::Array(mut answer) = answer else {
        return Err(unexpected("GET", &answer));
    };
    let Some(Value::Array(throttle)) = answer.pop() else {
        return Err(wrong_shape());
    };
    // A throttle mark with no expiry (`PTTL` -1) is no cache's, which always sets one: none,
    // rather than one read for the end its value may carry.
    let throttle = entry(throttle)?.filter(|(_, left)| left.is_some());
    Ok((entry_mark_and_lease(Value::Array(answer))?, throttle))
}

/// An entry and a mark as the scripts answer them: `{}` for none, else `{value, ms left}` and
/// `{value}`.
fn found_and_mark(found: Value, mark: Value) -> Result<ValueWithMark, StoreError> {
    let (Value::Array(found), Value::Array(mark)) = (found, mark) else {
        return Err(wrong_shape());
    };
    let mark = match <[Value; 1]>::try_from(mark) {
        Ok([Value::BulkString(mark)]) => Some(mark),
        Err(none) if none.is_empty() => None,
        Ok(_) | Err(_) => return Err(wrong_shape()),
    };
    Ok((entry(found)?, mark))
}

pub(super) fn wrong_shape() -> StoreError {
    StoreError::msg("redis GET answered a collection of the wrong shape, which it never should")
}

/// The longest TTL a key is given: 100 years (365.25-day years), in milliseconds. Redis
/// refuses a `PX` whose sum with its own clock overflows a signed 64-bit integer ("invalid
/// expire time"), so a longer setting (a `lease(Duration::MAX)`) is capped here rather than
/// make every call fail; nothing in the cache lives that long.
pub(super) const MAX_PX: u64 = 3_155_760_000_000;

/// `ttl` in whole milliseconds for `PX`: at least 1 (`PX 0` is an error), at most [`MAX_PX`].
pub(super) fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_PX)
}
