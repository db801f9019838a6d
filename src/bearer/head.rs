//! The request head kept for the one re-send after a claims challenge (CAE).
//!
//! Kept on every CAE request, so it costs one allocation at most: the method, the URI and the
//! header fields are copied, as bytes, into one buffer. Cloning the `HeaderMap` instead costs
//! two allocations for the map, and one more per value made from a `&str` (a `Bytes` copied
//! from a slice allocates again when first cloned). The buffer also keeps the response future
//! small — it is moved on every request, with CAE or without — where a cloned `Uri` and
//! `Method` would add 112 bytes to it. The extensions are cloned (an empty `Extensions` does
//! not allocate). The `Authorization` field is left out: the re-send carries a new token.

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri, Version};

use super::replay::NotReplayable;

/// What a re-send needs besides the body.
pub(crate) struct Head {
    version: Version,
    extensions: Extensions,
    copy: HeadBytes,
}

impl Head {
    pub(crate) fn of(parts: &Parts) -> Self {
        Self {
            version: parts.version,
            extensions: parts.extensions.clone(),
            copy: HeadBytes::of(&parts.method, &parts.uri, &parts.headers),
        }
    }

    /// The request again, with this body and `Authorization` value.
    pub(crate) fn into_request<B>(
        self,
        body: B,
        authorization: HeaderValue,
    ) -> Result<Request<B>, NotReplayable> {
        let (method, uri, mut headers) = self.copy.read()?;
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

/// The method, the URI and the header fields in one buffer, as records: the method and the
/// URI as a name with an empty value, then one record per field. A record is the name's length
/// (u16, little-endian), the value's length (u32), a sensitive flag (one byte), then the name
/// and the value. A part too long for its length (a URI over 64 KiB, a value over 4 GiB)
/// makes the copy unusable: the request is then not re-sent.
struct HeadBytes {
    bytes: Vec<u8>,
    complete: bool,
}

/// Bytes before a record's name and value.
const RECORD_HEAD: usize = 2 + 4 + 1;

impl HeadBytes {
    fn of(method: &Method, uri: &Uri, headers: &HeaderMap) -> Self {
        let fields = || headers.iter().filter(|(name, _)| **name != AUTHORIZATION);
        let uri = uri_parts(uri);
        let size = fields().fold(
            (2 * RECORD_HEAD)
                .saturating_add(method.as_str().len())
                .saturating_add(total_len(&uri)),
            |size, (name, value)| {
                size.saturating_add(RECORD_HEAD)
                    .saturating_add(name.as_str().len())
                    .saturating_add(value.len())
            },
        );
        let mut copy = Self {
            bytes: Vec::with_capacity(size),
            complete: true,
        };
        copy.record(&[method.as_str().as_bytes()], b"", false);
        copy.record(&uri, b"", false);
        for (name, value) in fields() {
            copy.record(
                &[name.as_str().as_bytes()],
                value.as_bytes(),
                value.is_sensitive(),
            );
        }
        copy
    }

    /// Appends a record whose name is the concatenation of `name`'s pieces.
    fn record(&mut self, name: &[&[u8]], value: &[u8], sensitive: bool) {
        let (Ok(name_len), Ok(value_len)) =
            (u16::try_from(total_len(name)), u32::try_from(value.len()))
        else {
            self.complete = false;
            return;
        };
        let [n0, n1] = name_len.to_le_bytes();
        let [v0, v1, v2, v3] = value_len.to_le_bytes();
        self.bytes
            .extend_from_slice(&[n0, n1, v0, v1, v2, v3, u8::from(sensitive)]);
        for piece in name {
            self.bytes.extend_from_slice(piece);
        }
        self.bytes.extend_from_slice(value);
    }

    fn read(self) -> Result<(Method, Uri, HeaderMap), NotReplayable> {
        let unusable = NotReplayable::head;
        if !self.complete {
            return Err(unusable());
        }
        let mut records = Records(self.bytes.as_slice());
        let mut next_name = || match records.next() {
            Some(Ok((name, _, _))) => Ok(name),
            _ => Err(unusable()),
        };
        let method = Method::from_bytes(next_name()?).map_err(|_| unusable())?;
        let uri = Uri::try_from(next_name()?).map_err(|_| unusable())?;
        let mut map = HeaderMap::new();
        for record in records {
            let (name, value, sensitive) = record?;
            let name = HeaderName::from_bytes(name).map_err(|_| unusable())?;
            let mut value = HeaderValue::from_bytes(value).map_err(|_| unusable())?;
            value.set_sensitive(sensitive);
            map.append(name, value);
        }
        Ok((method, uri, map))
    }
}

fn total_len(pieces: &[&[u8]]) -> usize {
    pieces.iter().fold(0usize, |n, p| n.saturating_add(p.len()))
}

/// A URI's text in pieces: `scheme://authority/path?query`, or what of it there is.
fn uri_parts(uri: &Uri) -> [&[u8]; 4] {
    let scheme = uri.scheme_str().unwrap_or_default().as_bytes();
    let separator: &[u8] = if scheme.is_empty() { b"" } else { b"://" };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
    [scheme, separator, authority.as_bytes(), path.as_bytes()]
}

/// The records of a [`HeadBytes`], as (name, value, sensitive); a damaged one ends them with an
/// error.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a [u8], &'a [u8], bool), NotReplayable>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = self
            .0
            .split_at_checked(RECORD_HEAD)
            .and_then(|(head, tail)| {
                let [n0, n1, v0, v1, v2, v3, sensitive] = *head else {
                    return None;
                };
                let name_len = usize::from(u16::from_le_bytes([n0, n1]));
                let value_len = usize::try_from(u32::from_le_bytes([v0, v1, v2, v3])).ok()?;
                let (name, tail) = tail.split_at_checked(name_len)?;
                let (value, tail) = tail.split_at_checked(value_len)?;
                Some((name, value, sensitive != 0, tail))
            });
        match record {
            Some((name, value, sensitive, tail)) => {
                self.0 = tail;
                Some(Ok((name, value, sensitive)))
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
        let head = Head::of(&original);
        let request = head
            .into_request((), HeaderValue::from_static("Bearer new"))
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
    fn the_buffer_is_allocated_once_at_its_final_size() {
        let head = Head::of(&parts(&[
            ("accept", "application/json"),
            ("authorization", "x"),
        ]));
        assert_eq!(head.copy.bytes.len(), head.copy.bytes.capacity());
    }

    #[test]
    fn relative_and_authority_form_uris_come_back_the_same() {
        for uri in ["/only/a/path?q=1", "example.test:443", "*"] {
            let mut parts = parts(&[]);
            parts.uri = uri.parse().unwrap();
            let again = Head::of(&parts)
                .into_request((), HeaderValue::from_static("Bearer new"))
                .unwrap();
            assert_eq!(again.uri(), &parts.uri, "{uri}");
        }
    }

    #[test]
    fn a_damaged_buffer_is_not_replayable_and_does_not_panic() {
        let head = Head::of(&parts(&[("accept", "application/json")]));
        let full = head.copy.bytes;
        for cut in 0..full.len() {
            let copy = HeadBytes {
                bytes: full[..cut].to_vec(),
                complete: true,
            };
            // Cut after the URI's record, the copy is whole but for its one field.
            let field = RECORD_HEAD + "accept".len() + "application/json".len();
            match copy.read() {
                Ok((_, _, headers)) => assert!(cut == full.len() - field && headers.is_empty()),
                Err(e) => assert!(e.is_over_limit(), "cut at {cut}"),
            }
        }
    }
}
