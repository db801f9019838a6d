//! The request head kept for the one re-send after a claims challenge (CAE).
//!
//! Kept on every CAE request, so it should not allocate: the method, the URI and the header
//! fields are copied, as bytes, into one buffer, which is reused. Cloning the
//! `HeaderMap` instead costs two allocations for the map, and one more per value made from a
//! `&str` (a `Bytes` copied from a slice allocates again when first cloned); a cloned `Uri`
//! allocates the same way. The extensions are cloned (an empty `Extensions` does not
//! allocate). The `Authorization` field is left out: the re-send carries a new token.
//!
//! The buffer is the one kept in the re-send state's box (see `spare.rs`).
//!
//! What it costs (`hot_path_instructions`, a GET with one field): about 380 instructions, of
//! which five `memcpy` calls (method, authority, path, the field's name and value) are about
//! 120, and the records around them most of the rest. That alone is more than issue 12's
//! target for all of CAE (1.2× a plain request: about 266 instructions over it); without it,
//! CAE would be 1.20× plain. Per record it is about 35 instructions and a `memcpy` call per
//! piece (read instruction by instruction under callgrind). Measured and dropped: building
//! each record on the stack first (+96, more copies), reserving each record's room first
//! (+6), two-byte value lengths (−5, not worth refusing values over 64 KiB), keeping the head
//! in the request through `Request::map` instead of taking the parts out (+29: both moves of
//! the parts stayed). Kept although it costs: checking each record's room, so that the
//! buffer never grows by `Vec`'s reallocation, which would free a block holding the copy
//! unwiped (+11, 1995 to 2006 for CAE; see [`HeadBytes`]). Not copying the head of a body
//! refused as it was prepared (a `String` over the limit) costs a check of the body's handle
//! (2006 to 2016); stopping the copy once a part did not fit costs nothing on this path
//! (`record` inlined always: a call to a cold function in it had left it out of line, +54).

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::uri::Authority;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri, Version};
use zeroize::Zeroizing;

use super::origin::Origin;
use super::replay::NotReplayable;

/// What a re-send needs besides the body and the copy of the head's bytes, which is kept
/// beside it ([`Head::of`]).
pub(crate) struct Head {
    version: Version,
    extensions: Extensions,
    /// Whether every part fitted its record (see [`HeadBytes`]).
    complete: bool,
}

impl Head {
    /// Copies the head's method, URI and fields into `bytes` (empty), and keeps the rest.
    pub(crate) fn of(parts: &Parts, bytes: &mut Vec<u8>) -> Self {
        let mut copy = HeadBytes {
            bytes,
            parts,
            complete: true,
        };
        copy.write();
        Self {
            version: parts.version,
            extensions: parts.extensions.clone(),
            complete: copy.complete,
        }
    }

    /// No copy, for a request whose body cannot be re-sent (refused as it was prepared): the
    /// head would never be used, and copying it copies its `Cookie` or SAS values for nothing.
    /// Its [`refusal`](Self::refusal) is the body's to give first.
    pub(crate) fn not_kept() -> Self {
        Self {
            version: Version::default(),
            extensions: Extensions::new(),
            complete: false,
        }
    }

    /// Why the request cannot be re-sent, if the copy is already known to be unusable: a part
    /// was too long to keep (or too large to make room for).
    pub(crate) fn refusal(&self) -> Option<NotReplayable> {
        (!self.complete).then(NotReplayable::head)
    }

    /// The request again, from the bytes [`of`](Self::of) wrote, with this body and
    /// `Authorization` value.
    pub(crate) fn into_request<B>(
        self,
        bytes: &[u8],
        body: B,
        authorization: HeaderValue,
    ) -> Result<Request<B>, NotReplayable> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let (method, uri, mut headers) = read(bytes)?;
        headers.insert(AUTHORIZATION, authorization);
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Ok(request)
    }
}

/// The capacity a buffer starts with (in a new box, or one whose buffer was taken or freed):
/// room for a typical head, so that it does not grow while it is filled.
pub(crate) const FIRST_CAPACITY: usize = 512;

/// The method, the URI and the header fields in one buffer, as records. A record is the
/// name's length (u16, little-endian), the value's length (u32), a flag byte, then the name
/// and the value. The first record is the method, with the scheme in the flag (see
/// [`Scheme`]) and, for a scheme other than `http` and `https`, its text as the value; the
/// second is the authority and the path (with the query) as name and value; then one record
/// per field, flagged when its value is sensitive. A part too long for its length (an
/// authority over 64 KiB, a value over 4 GiB), or a head too large to make room for, makes
/// the copy unusable: nothing more is copied (see [`HeadBytes::give_up`]), and the request is
/// then not re-sent.
///
/// The layout keeps the copy to one piece of data per part (issue 12: the copy is made on
/// every CAE request, and each piece is a `memcpy` call).
///
/// The buffer never grows by `Vec`'s own reallocation, which frees the old block as it is:
/// that block would keep the path and query (a SAS `sig=`, say) and the field values copied
/// so far (a `Cookie`). A record that does not fit makes room for the whole head at once
/// ([`HeadBytes::make_room`]), and the old block is wiped before it is freed.
struct HeadBytes<'a> {
    bytes: &'a mut Vec<u8>,
    parts: &'a Parts,
    complete: bool,
}

/// Bytes before a record's name and value.
const RECORD_HEAD: usize = 2 + 4 + 1;

/// A URI's scheme as the first record's flag.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Scheme {
    None = 0,
    Http = 1,
    Https = 2,
    /// Its text is the first record's value.
    Other = 3,
}

impl Scheme {
    fn of(uri: &Uri) -> (Self, &str) {
        match uri.scheme_str() {
            None => (Self::None, ""),
            Some("https") => (Self::Https, ""),
            Some("http") => (Self::Http, ""),
            Some(other) => (Self::Other, other),
        }
    }

    fn from_flag(flag: u8) -> Option<Self> {
        [Self::None, Self::Http, Self::Https, Self::Other]
            .into_iter()
            .find(|s| *s as u8 == flag)
    }
}

impl HeadBytes<'_> {
    fn write(&mut self) {
        let Parts {
            method,
            uri,
            headers,
            ..
        } = self.parts;
        let (scheme, scheme_text) = Scheme::of(uri);
        self.record(method.as_str(), scheme_text.as_bytes(), scheme as u8);
        let (authority, path) = authority_and_path(uri);
        self.record(authority, path.as_bytes(), 0);
        for (name, value) in headers {
            if name != AUTHORIZATION {
                self.record(
                    name.as_str(),
                    value.as_bytes(),
                    u8::from(value.is_sensitive()),
                );
            }
        }
    }

    #[inline(always)]
    fn record(&mut self, name: &str, value: &[u8], flag: u8) {
        let (Ok(name_len), Ok(value_len)) = (u16::try_from(name.len()), u32::try_from(value.len()))
        else {
            self.give_up();
            return;
        };
        let size = record_size(name, value);
        // After `give_up` the buffer has no room: every record left comes here and stops.
        if self.bytes.spare_capacity_mut().len() < size {
            self.make_room(size);
            if !self.complete {
                return;
            }
        }
        let [n0, n1] = name_len.to_le_bytes();
        let [v0, v1, v2, v3] = value_len.to_le_bytes();
        self.bytes
            .extend_from_slice(&[n0, n1, v0, v1, v2, v3, flag]);
        self.bytes.extend_from_slice(name.as_bytes());
        if !value.is_empty() {
            self.bytes.extend_from_slice(value);
        }
    }

    /// Moves the records written so far into a buffer with room for the whole head (at least
    /// for `size` more bytes), and wipes the old block before it is freed. Once per head: the
    /// room is counted for every record, not only this one. When that room cannot be had (the
    /// allocator refuses, or the size overflows) the copy is marked incomplete instead of
    /// aborting: the request is then not re-sent.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, size: usize) {
        if !self.complete {
            return;
        }
        let Parts {
            method,
            uri,
            headers,
            ..
        } = self.parts;
        let (authority, path) = authority_and_path(uri);
        let fields = headers
            .iter()
            .filter(|(name, _)| *name != AUTHORIZATION)
            .map(|(name, value)| record_size(name.as_str(), value.as_bytes()));
        let whole = [
            record_size(method.as_str(), Scheme::of(uri).1.as_bytes()),
            record_size(authority, path.as_bytes()),
        ]
        .into_iter()
        .chain(fields)
        .fold(0usize, usize::saturating_add);
        let capacity = whole.max(self.bytes.len().saturating_add(size));
        let mut larger = Vec::new();
        if larger.try_reserve_exact(capacity).is_err() {
            self.give_up();
            return;
        }
        larger.extend_from_slice(self.bytes);
        // `Zeroizing` wipes the old block, its spare capacity too, as it is dropped.
        drop(Zeroizing::new(std::mem::replace(self.bytes, larger)));
    }

    /// The copy is unusable (a part too long for its record, or no room for the whole head):
    /// what was copied is wiped and freed, and the buffer left without room, so that each
    /// record left stops at [`make_room`](Self::make_room) and nothing more of the head is
    /// copied, with no check on the common path. (The box gets a new buffer on its next use.)
    #[cold]
    #[inline(never)]
    fn give_up(&mut self) {
        self.complete = false;
        drop(Zeroizing::new(std::mem::take(self.bytes)));
    }
}

/// The authority and the path (with the query) of the second record.
#[inline]
fn authority_and_path(uri: &Uri) -> (&str, &str) {
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    (authority, path)
}

/// The bytes the record of this name and value takes; 0 for a part too long to keep (it is
/// left out, see [`HeadBytes`]).
#[inline]
fn record_size(name: &str, value: &[u8]) -> usize {
    if u16::try_from(name.len()).is_err() || u32::try_from(value.len()).is_err() {
        return 0;
    }
    RECORD_HEAD
        .saturating_add(name.len())
        .saturating_add(value.len())
}

/// The origin of the request whose head [`Head::of`] copied into `bytes`; `None` for a head
/// not kept ([`Head::not_kept`]) or given up, whose bytes are empty. Read on a 401 only, from
/// the scheme and the authority: the path and query (a SAS, say) and any user information are
/// not copied again.
pub(crate) fn origin(bytes: &[u8]) -> Option<Origin> {
    let mut records = Records(bytes);
    let (_, scheme_text, flag) = records.next()?.ok()?;
    let (authority, _, _) = records.next()?.ok()?;
    let scheme = match Scheme::from_flag(flag)? {
        Scheme::None => return None,
        Scheme::Http => "http",
        Scheme::Https => "https",
        Scheme::Other => std::str::from_utf8(scheme_text).ok()?,
    };
    let host_and_port = authority.rsplit(|&b| b == b'@').next()?;
    let authority = Authority::try_from(host_and_port).ok()?;
    Some(Origin::new(scheme, authority.host(), authority.port_u16()))
}

/// The method, the URI and the fields back from the records [`HeadBytes`] wrote.
fn read(bytes: &[u8]) -> Result<(Method, Uri, HeaderMap), NotReplayable> {
    let unusable = NotReplayable::head;
    let mut records = Records(bytes);
    let mut next = || match records.next() {
        Some(Ok(record)) => Ok(record),
        _ => Err(unusable()),
    };
    let (method, scheme_text, flag) = next()?;
    let method = Method::from_bytes(method).map_err(|_| unusable())?;
    let (authority, path, _) = next()?;
    let mut text = Vec::with_capacity(
        scheme_text
            .len()
            .saturating_add(authority.len())
            .saturating_add(path.len())
            .saturating_add("https://".len()),
    );
    match Scheme::from_flag(flag).ok_or_else(unusable)? {
        Scheme::None => {}
        Scheme::Http => text.extend_from_slice(b"http://"),
        Scheme::Https => text.extend_from_slice(b"https://"),
        Scheme::Other => {
            text.extend_from_slice(scheme_text);
            text.extend_from_slice(b"://");
        }
    }
    text.extend_from_slice(authority);
    text.extend_from_slice(path);
    let uri = Uri::try_from(text).map_err(|_| unusable())?;
    let mut map = HeaderMap::new();
    for record in records {
        let (name, value, sensitive) = record?;
        let name = HeaderName::from_bytes(name).map_err(|_| unusable())?;
        let mut value = HeaderValue::from_bytes(value).map_err(|_| unusable())?;
        value.set_sensitive(sensitive != 0);
        map.append(name, value);
    }
    Ok((method, uri, map))
}

/// The records of a [`HeadBytes`], as (name, value, flag); a damaged one ends them with an
/// error.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a [u8], &'a [u8], u8), NotReplayable>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = self
            .0
            .split_at_checked(RECORD_HEAD)
            .and_then(|(head, tail)| {
                let [n0, n1, v0, v1, v2, v3, flag] = *head else {
                    return None;
                };
                let name_len = usize::from(u16::from_le_bytes([n0, n1]));
                let value_len = usize::try_from(u32::from_le_bytes([v0, v1, v2, v3])).ok()?;
                let (name, tail) = tail.split_at_checked(name_len)?;
                let (value, tail) = tail.split_at_checked(value_len)?;
                Some((name, value, flag, tail))
            });
        match record {
            Some((name, value, flag, tail)) => {
                self.0 = tail;
                Some(Ok((name, value, flag)))
            }
            None => {
                self.0 = &[];
                Some(Err(NotReplayable::head()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::post("https://api.example.test/x?y=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// The origin a 401 is compared with: read from the kept head's scheme and authority,
    /// none from a head not kept.
    #[test]
    fn the_origin_is_read_from_the_kept_head() {
        let origin = |uri: &str| {
            let original = Request::get(uri).body(()).unwrap().into_parts().0;
            let mut bytes = Vec::new();
            Head::of(&original, &mut bytes);
            origin(&bytes)
        };
        let expected = Origin::of(&"https://api.example.test/".parse().unwrap());
        assert!(expected.is_some());
        assert_eq!(origin("https://api.example.test/x?sig=s"), expected);
        assert_eq!(origin("https://u:p@API.example.test:443/"), expected);
        assert_ne!(origin("https://api.example.test:8443/"), expected);
        assert_ne!(origin("http://api.example.test/"), expected);
        assert!(origin("/relative").is_none());
        assert!(super::origin(&[]).is_none(), "a head not kept");
    }

    #[test]
    fn the_re_sent_request_has_every_field_in_order_and_the_new_token() {
        let mut original = parts(&[
            ("accept", "application/json"),
            ("x-ms-client-request-id", "abc"),
            ("accept", "text/plain"),
            ("authorization", "Bearer old"),
            ("x-custom-Name", ""),
        ]);
        let mut secret = HeaderValue::from_static("s3cr3t");
        secret.set_sensitive(true);
        original.headers.append("x-api-key", secret);
        original.extensions.insert(7u32);
        let mut bytes = Vec::new();
        let head = Head::of(&original, &mut bytes);
        let request = head
            .into_request(&bytes, (), HeaderValue::from_static("Bearer new"))
            .unwrap();
        assert_eq!(request.method(), original.method);
        assert_eq!(request.uri(), &original.uri);
        assert_eq!(request.extensions().get::<u32>(), Some(&7));
        let mut expected = original.headers.clone();
        expected.insert(AUTHORIZATION, HeaderValue::from_static("Bearer new"));
        assert_eq!(request.headers(), &expected);
        // The order of values under one name is kept; across names it carries no meaning
        // (RFC 9110, section 5.3), and `Authorization` goes last.
        let order = |map: &HeaderMap| {
            map.iter()
                .filter(|(n, _)| **n != AUTHORIZATION)
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(request.headers()), order(&expected));
    }

    #[test]
    fn the_token_is_not_copied_and_a_head_larger_than_the_buffer_fits() {
        let mut bytes = Vec::new();
        Head::of(&parts(&[("authorization", "Bearer old")]), &mut bytes);
        assert!(!bytes.contains(&b'B'), "no Authorization kept");

        let long = "v".repeat(4 * FIRST_CAPACITY);
        let mut bytes = Vec::with_capacity(FIRST_CAPACITY);
        let large = Head::of(&parts(&[("x-long", long.as_str())]), &mut bytes);
        let again = large
            .into_request(&bytes, (), HeaderValue::from_static("Bearer new"))
            .unwrap();
        assert_eq!(again.headers()["x-long"], long.as_str());
    }

    /// A head past the buffer's capacity: `Vec`'s own growth (512, 1024, then 2048 bytes here)
    /// would free each old block unwiped, with the path and query and the fields copied so
    /// far. The buffer grows once, by hand, to the whole head's size: its capacity is exactly
    /// the records' length. (Only that growth path wipes the block it leaves; a test cannot
    /// read freed memory without `unsafe`, which this crate forbids, so it checks the growth
    /// went that way.)
    #[test]
    fn a_head_past_the_buffer_grows_once_to_its_whole_size() {
        let value = "v".repeat(100);
        let names: Vec<String> = (0..12).map(|i| format!("x-field-{i}")).collect();
        let fields: Vec<(&str, &str)> = names
            .iter()
            .map(|name| (name.as_str(), value.as_str()))
            .collect();
        let mut original = parts(&fields);
        original.uri = "https://api.example.test/blob?sv=2024&sig=c2VjcmV0"
            .parse()
            .unwrap();
        for start in [FIRST_CAPACITY, 0] {
            let mut bytes = Vec::with_capacity(start);
            let head = Head::of(&original, &mut bytes);
            assert!(bytes.len() > 2 * FIRST_CAPACITY, "{}", bytes.len());
            assert_eq!(
                bytes.capacity(),
                bytes.len(),
                "one growth, to the whole head"
            );
            let again = head
                .into_request(&bytes, (), HeaderValue::from_static("Bearer new"))
                .unwrap();
            assert_eq!(again.uri(), &original.uri);
            assert_eq!(again.headers().len(), fields.len() + 1);
        }
        // Room enough: no growth.
        let mut bytes = Vec::with_capacity(4 * FIRST_CAPACITY);
        Head::of(&original, &mut bytes);
        assert_eq!(bytes.capacity(), 4 * FIRST_CAPACITY);
    }

    /// A part too long for its record makes the copy unusable, and nothing after it is
    /// copied (the path and query, a `Cookie`: they would be kept for nothing).
    #[test]
    fn a_part_too_long_stops_the_copy() {
        let mut original = parts(&[("cookie", "session=s3cr3t")]);
        original.method = Method::from_bytes("M".repeat(usize::from(u16::MAX) + 1).as_bytes())
            .expect("a long extension method");
        let mut bytes = Vec::new();
        let head = Head::of(&original, &mut bytes);
        assert!(head.refusal().is_some_and(|r| r.is_over_limit()));
        assert!(bytes.is_empty(), "{} bytes copied", bytes.len());
    }

    #[test]
    fn every_form_of_uri_and_scheme_comes_back_the_same() {
        for uri in [
            "/only/a/path?q=1",
            "example.test:443",
            "*",
            "http://example.test/a",
            "HTTPS://Example.test",
            "ftp+x://example.test/b?c",
        ] {
            let mut parts = parts(&[]);
            parts.uri = uri.parse().unwrap();
            let mut bytes = Vec::new();
            let again = Head::of(&parts, &mut bytes)
                .into_request(&bytes, (), HeaderValue::from_static("Bearer new"))
                .unwrap();
            assert_eq!(again.uri(), &parts.uri, "{uri}");
        }
    }

    #[test]
    fn a_damaged_buffer_is_not_replayable_and_does_not_panic() {
        let mut full = Vec::new();
        Head::of(&parts(&[("accept", "application/json")]), &mut full);
        for cut in 0..full.len() {
            // Cut after the URI's record, the copy is whole but for its one field.
            let field = RECORD_HEAD + "accept".len() + "application/json".len();
            match read(&full[..cut]) {
                Ok((_, _, headers)) => assert!(cut == full.len() - field && headers.is_empty()),
                Err(e) => assert!(e.is_over_limit(), "cut at {cut}"),
            }
        }
        // A scheme flag no writer makes.
        let mut bad = full;
        bad[RECORD_HEAD - 1] = 9;
        assert!(read(&bad).is_err());
    }
}
