//! The request head kept for the one re-send after a claims challenge (CAE).
//!
//! Kept on every CAE request, so it costs one allocation at most: the header fields are
//! copied, name and value bytes, into one buffer. Cloning the `HeaderMap` instead costs two
//! allocations for the map, and one more per value made from a `&str` (a `Bytes` copied from
//! a slice allocates again when first cloned). The method, URI and extensions are cloned
//! (a standard method and an empty `Extensions` do not allocate; a URI clone shares its
//! bytes). The `Authorization` field is left out: the re-send carries a new token.

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri, Version};

use super::replay::NotReplayable;

/// What a re-send needs besides the body.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    extensions: Extensions,
    headers: HeaderCopy,
}

impl Head {
    pub(crate) fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            extensions: parts.extensions.clone(),
            headers: HeaderCopy::of(&parts.headers),
        }
    }

    /// The request again, with this body and `Authorization` value.
    pub(crate) fn into_request<B>(
        self,
        body: B,
        authorization: HeaderValue,
    ) -> Result<Request<B>, NotReplayable> {
        let mut headers = self.headers.into_map()?;
        headers.insert(AUTHORIZATION, authorization);
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Ok(request)
    }
}

/// Header fields as records in one buffer: name length (u16, little-endian), value length
/// (u32), a sensitive flag (one byte), then the name and value bytes. A field too long for
/// its length (a value over 4 GiB cannot occur in practice) makes the copy unusable, and the
/// request is then not re-sent.
struct HeaderCopy {
    bytes: Vec<u8>,
    complete: bool,
}

/// Bytes before a record's name and value.
const RECORD_HEAD: usize = 2 + 4 + 1;

impl HeaderCopy {
    fn of(headers: &HeaderMap) -> Self {
        let fields = || headers.iter().filter(|(name, _)| **name != AUTHORIZATION);
        let size = fields().fold(0usize, |size, (name, value)| {
            size.saturating_add(RECORD_HEAD)
                .saturating_add(name.as_str().len())
                .saturating_add(value.len())
        });
        let mut bytes = Vec::with_capacity(size);
        let mut complete = true;
        for (name, value) in fields() {
            let (Ok(name_len), Ok(value_len)) = (
                u16::try_from(name.as_str().len()),
                u32::try_from(value.len()),
            ) else {
                complete = false;
                break;
            };
            bytes.extend_from_slice(&name_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.push(u8::from(value.is_sensitive()));
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(value.as_bytes());
        }
        Self { bytes, complete }
    }

    fn into_map(self) -> Result<HeaderMap, NotReplayable> {
        let unusable = || NotReplayable::head();
        if !self.complete {
            return Err(unusable());
        }
        let mut map = HeaderMap::new();
        let mut rest = self.bytes.as_slice();
        while !rest.is_empty() {
            let (head, tail) = rest.split_at_checked(RECORD_HEAD).ok_or_else(unusable)?;
            let [n0, n1, v0, v1, v2, v3, sensitive] = *head else {
                return Err(unusable());
            };
            let name_len = usize::from(u16::from_le_bytes([n0, n1]));
            let value_len =
                usize::try_from(u32::from_le_bytes([v0, v1, v2, v3])).map_err(|_| unusable())?;
            let (name, tail) = tail.split_at_checked(name_len).ok_or_else(unusable)?;
            let (value, tail) = tail.split_at_checked(value_len).ok_or_else(unusable)?;
            let name = HeaderName::from_bytes(name).map_err(|_| unusable())?;
            let mut value = HeaderValue::from_bytes(value).map_err(|_| unusable())?;
            value.set_sensitive(sensitive != 0);
            map.append(name, value);
            rest = tail;
        }
        Ok(map)
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
    fn a_request_with_no_other_field_keeps_an_empty_buffer() {
        let head = Head::of(&parts(&[("authorization", "Bearer old")]));
        assert!(head.headers.bytes.is_empty());
        assert_eq!(head.headers.bytes.capacity(), 0, "no allocation");
    }

    #[test]
    fn a_damaged_buffer_is_not_replayable_and_does_not_panic() {
        let head = Head::of(&parts(&[("accept", "application/json")]));
        let full = head.headers.bytes;
        for cut in 0..full.len() {
            let copy = HeaderCopy {
                bytes: full[..cut].to_vec(),
                complete: true,
            };
            assert_eq!(copy.into_map().is_err(), cut != 0, "cut at {cut}");
        }
    }
}
