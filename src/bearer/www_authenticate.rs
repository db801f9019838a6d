//! `WWW-Authenticate` challenges (RFC 9110 §11): the general parser, with no knowledge of
//! what a client does with a challenge (the CAE decision is in [`cae`](super::cae)).
//!
//! [`parse_challenges`] reads every `WWW-Authenticate` line of a response into [`Challenge`]s
//! (RFC 9110 §11.6.1):
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! Challenges and their parameters share the comma separator, so each list element is
//! classified on its own: `token =` is a parameter of the current challenge, any other token
//! starts a new challenge (its scheme). The parser is lenient where real servers are sloppy:
//! challenges separated by whitespace only (`Bearer a="x" Bearer a="x"`), empty list elements
//! and trailing commas, whitespace around `=`, and unquoted values containing `/` or `=`
//! (such as unquoted base64). It never panics: a challenge that cannot be parsed ends that
//! header line, keeping the challenges before it. Bytes outside ASCII (obs-text, such as a
//! `realm` in UTF-8 or Latin-1) are read as UTF-8, invalid sequences replaced: every delimiter
//! is ASCII, so they can only be part of a value, and the rest of the line is still read.
//!
//! Crate-private: the layer needs only the CAE decision, which is public as
//! [`claims_challenge`](super::claims_challenge); a general header parser would be a promise
//! this crate does not want to keep.

/// One challenge of a `WWW-Authenticate` header.
///
/// A challenge has a scheme and either a `token68` or a list of parameters (or neither).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
    token68: Option<String>,
}

impl Challenge {
    /// The authentication scheme as written, e.g. `"Bearer"`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether this challenge's scheme is `scheme`, compared ASCII case-insensitively.
    pub(crate) fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The value of the parameter `name` (compared ASCII case-insensitively), unquoted and
    /// unescaped. When a name occurs more than once, the first occurrence wins.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All parameters in order, names as written and values unquoted and unescaped.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The `token68` that follows the scheme, e.g. `dXNlcjpwYXNz` in `Basic dXNlcjpwYXNz`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }
}

/// Parses every challenge of every `WWW-Authenticate` header line in `headers`, in order.
///
/// Malformed input never panics: a challenge that cannot be parsed ends parsing of that header
/// line (challenges parsed before it are kept). Bytes outside ASCII are read as UTF-8 (invalid
/// sequences replaced), not a reason to skip the line: a CAE challenge beside a non-ASCII
/// `realm` must still be found, as azure-core finds it.
pub(crate) fn parse_challenges(headers: &http::HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        // Borrowed, no copy, for a line in UTF-8 (ASCII included).
        .flat_map(|value| parse_challenge_value(&String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

/// Parses one header value.
///
/// A challenge that cannot be parsed ends parsing (challenges parsed before it are kept).
pub(crate) fn parse_challenge_value(value: &str) -> Vec<Challenge> {
    let mut scanner = Scanner::new(value);
    let mut done = Vec::new();
    let mut current: Option<Challenge> = None;

    loop {
        scanner.skip_list_separators();
        if scanner.at_end() {
            break;
        }
        let Some(name) = scanner.token() else {
            // Something that cannot start a scheme or a parameter name: the challenge being
            // parsed is dropped, and so is the rest of the line.
            return done;
        };

        if scanner.eat_equals() {
            // `token =`: a parameter of the current challenge, which must take parameters.
            // A challenge has a token68 or parameters, not both.
            let Some(challenge) = current.as_mut().filter(|c| c.token68.is_none()) else {
                return done;
            };
            match scanner.param_value() {
                Some(value) if scanner.at_boundary() => {
                    challenge.params.push((name.to_owned(), value));
                }
                _ => return done,
            }
        } else {
            // Any other token starts a new challenge: `scheme`, `scheme,` or `scheme 1*SP ...`.
            done.extend(current.take());
            if !scanner.at_boundary() {
                return done;
            }
            let token68 = if scanner.skip_ows() {
                scanner.token68().map(str::to_owned)
            } else {
                None
            };
            current = Some(Challenge {
                scheme: name.to_owned(),
                params: Vec::new(),
                token68,
            });
        }
    }

    done.extend(current);
    done
}

/// A cursor over one header value. Every delimiter of the grammar is ASCII, so byte positions
/// found by looking at ASCII bytes are always `char` boundaries.
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner { input, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    /// Consumes bytes while `pred` holds; returns what was consumed.
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos = self.pos.saturating_add(1);
        }
        // `pred` only accepts ASCII bytes, so both ends are char boundaries.
        self.input.get(start..self.pos).unwrap_or_default()
    }

    /// OWS: skips spaces and tabs; returns whether there were any.
    fn skip_ows(&mut self) -> bool {
        !self.take_while(is_ows).is_empty()
    }

    /// Skips OWS and commas: the separators and empty elements of a `#` list.
    fn skip_list_separators(&mut self) {
        self.take_while(|b| is_ows(b) || b == b',');
    }

    /// Whether an element may end here: end of input, whitespace or a comma.
    fn at_boundary(&self) -> bool {
        self.peek().is_none_or(|b| is_ows(b) || b == b',')
    }

    /// `token = 1*tchar`.
    fn token(&mut self) -> Option<&'a str> {
        Some(self.take_while(is_tchar)).filter(|t| !t.is_empty())
    }

    /// Consumes `BWS "=" BWS` if it comes next.
    fn eat_equals(&mut self) -> bool {
        let start = self.pos;
        self.skip_ows();
        if self.peek() == Some(b'=') {
            self.pos = self.pos.saturating_add(1);
            self.skip_ows();
            true
        } else {
            self.pos = start;
            false
        }
    }

    /// A parameter value: a quoted-string, or an unquoted value. The grammar says `token`;
    /// this also accepts `/`, `=` and other visible characters except `"`, `\` and `,`, so
    /// that unquoted base64 (`claims=eyJ...==`) is read whole. It may not start with `=`
    /// (`abc==` after a scheme is a token68, not `abc` = `=`).
    fn param_value(&mut self) -> Option<String> {
        match self.peek() {
            Some(b'"') => self.quoted_string(),
            Some(b) if starts_value(b) => Some(self.take_while(is_unquoted_value_char).to_owned()),
            _ => None,
        }
    }

    /// `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE`, unescaped. `None` when the
    /// string is not terminated.
    fn quoted_string(&mut self) -> Option<String> {
        let rest = self.input.get(self.pos..)?.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    // The opening quote, the value, the closing quote.
                    self.pos = self.pos.saturating_add(i).saturating_add(2);
                    return Some(value);
                }
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
        None
    }

    /// A token68 that is a whole element (followed by end, whitespace or a comma), if one comes
    /// next and it cannot be read as a parameter (`name = value`). Consumes nothing otherwise.
    fn token68(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.token().is_some() && self.eat_equals() && self.peek().is_some_and(starts_value) {
            self.pos = start;
            return None;
        }
        self.pos = start;
        let body = self.take_while(is_token68_char);
        self.take_while(|b| b == b'=');
        if body.is_empty() || !self.at_boundary() {
            self.pos = start;
            return None;
        }
        self.input.get(start..self.pos)
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// A character of an unquoted parameter value (lenient: more than `tchar`).
fn is_unquoted_value_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b',')
}

/// Whether `b` can start a parameter value: `"`, or an unquoted value character other than `=`.
fn starts_value(b: u8) -> bool {
    b == b'"' || (is_unquoted_value_char(b) && b != b'=')
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, header::WWW_AUTHENTICATE};

    /// A CAE claims value (base64url of `CAE_CLAIMS_JSON` in the CAE tests).
    pub(in crate::bearer) const CAE_CLAIMS_B64: &str = "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzI2MDc3NTk1In0sInhtc19jYWVlcnJvciI6eyJ2YWx1ZSI6IjEwMDEyIn19fQ==";

    /// The nine reference vectors of `tests/data/challenge_vectors.rs` (each names its source:
    /// azure-core and .NET Azure.Core parser tests, Entra's claims-challenge docs): a header
    /// value and the decoded claims a re-send carries, or `None` when the 401 is returned.
    /// Shared with the layer's integration tests.
    pub(in crate::bearer) const VECTORS: &[(&str, Option<&str>)] =
        include!("../../tests/data/challenge_vectors.rs");

    pub(in crate::bearer) fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(WWW_AUTHENTICATE, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn params_of(challenge: &Challenge) -> Vec<(&str, &str)> {
        challenge.params().collect()
    }

    /// The example the module docs showed while the parser was public.
    #[test]
    fn every_line_is_read_in_order_and_names_compare_case_insensitively() {
        let challenges = parse_challenges(&headers(&[
            r#"Basic realm="files""#,
            r#"Bearer error="invalid_token""#,
        ]));
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].param("REALM"), Some("files"));
        assert!(challenges[1].is_scheme("bearer"));
    }

    #[test]
    fn challenges_separated_only_by_whitespace_are_two_challenges() {
        let parsed = parse_challenge_value(VECTORS[3].0);
        assert_eq!(parsed.len(), 2);
        for challenge in &parsed {
            assert_eq!(challenge.scheme(), "Bearer");
            assert_eq!(
                params_of(challenge),
                [
                    (
                        "authorization_uri",
                        "https://login.microsoftonline.com/tenant-id"
                    ),
                    ("resource", "https://vault.azure.net"),
                ]
            );
        }
        let parsed = parse_challenge_value(r#"Bearer a="x", b="y" Bearer a="x", b="y""#);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], parsed[1]);
    }

    #[test]
    fn params_separated_only_by_whitespace_stay_in_the_challenge() {
        let parsed = parse_challenge_value(r#"Bearer a="x" b=y  c = "z""#);
        assert_eq!(parsed.len(), 1);
        assert_eq!(params_of(&parsed[0]), [("a", "x"), ("b", "y"), ("c", "z")]);
    }

    #[test]
    fn digest_quoted_param_with_commas_stays_one_value() {
        let parsed = parse_challenge_value(VECTORS[4].0);
        assert_eq!(parsed.len(), 2);
        assert!(parsed[0].is_scheme("digest"));
        assert_eq!(parsed[0].param("qop"), Some("auth,auth-int"));
        assert_eq!(parsed[0].param("opaque"), Some("123456"));
        assert_eq!(parsed[0].params().count(), 4);
        assert!(parsed[1].is_scheme("Bearer"));
        assert_eq!(parsed[1].param("claims"), Some(CAE_CLAIMS_B64));
    }

    #[test]
    fn rfc_9110_example_is_two_challenges() {
        let parsed = parse_challenge_value(
            r#"Basic realm="simple", Newauth realm="apps", type=1, title="Login to \"apps\"""#,
        );
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].scheme(), "Basic");
        assert_eq!(params_of(&parsed[0]), [("realm", "simple")]);
        assert_eq!(parsed[1].scheme(), "Newauth");
        assert_eq!(
            params_of(&parsed[1]),
            [
                ("realm", "apps"),
                ("type", "1"),
                ("title", r#"Login to "apps""#)
            ]
        );
    }

    #[test]
    fn scheme_without_params_is_a_challenge() {
        let parsed = parse_challenge_value("Negotiate");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].scheme(), "Negotiate");
        assert_eq!(parsed[0].params().count(), 0);
        assert_eq!(parsed[0].token68(), None);

        let parsed = parse_challenge_value(r#"Negotiate, NTLM , Basic realm="x""#);
        let schemes: Vec<_> = parsed.iter().map(Challenge::scheme).collect();
        assert_eq!(schemes, ["Negotiate", "NTLM", "Basic"]);
        assert_eq!(parsed[2].param("realm"), Some("x"));
    }

    #[test]
    fn trailing_leading_and_empty_list_elements_are_ignored() {
        let parsed = parse_challenge_value(r#" , ,Bearer ,, a="x" ,, b=y,, , "#);
        assert_eq!(parsed.len(), 1);
        assert_eq!(params_of(&parsed[0]), [("a", "x"), ("b", "y")]);
    }

    #[test]
    fn whitespace_around_equals_is_allowed() {
        let parsed = parse_challenge_value("Bearer realm = \"x\" , error\t=\tinvalid_token");
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            params_of(&parsed[0]),
            [("realm", "x"), ("error", "invalid_token")]
        );
    }

    #[test]
    fn scheme_and_param_names_are_case_insensitive_and_kept_as_written() {
        let parsed = parse_challenge_value(r#"bEaReR ReAlM="x""#);
        assert!(parsed[0].is_scheme("Bearer"));
        assert!(parsed[0].is_scheme("BEARER"));
        assert!(!parsed[0].is_scheme("Basic"));
        assert_eq!(parsed[0].scheme(), "bEaReR");
        assert_eq!(parsed[0].param("realm"), Some("x"));
        assert_eq!(params_of(&parsed[0]), [("ReAlM", "x")]);
    }

    #[test]
    fn first_occurrence_of_a_param_wins() {
        let parsed = parse_challenge_value(r#"Bearer error="first", ERROR="second""#);
        assert_eq!(parsed[0].param("error"), Some("first"));
        assert_eq!(parsed[0].params().count(), 2);
    }

    #[test]
    fn quoted_pairs_are_unescaped() {
        let parsed = parse_challenge_value(r#"Bearer a="say \"hi\"", b="back\\slash", c="\x\,""#);
        assert_eq!(parsed[0].param("a"), Some(r#"say "hi""#));
        assert_eq!(parsed[0].param("b"), Some(r"back\slash"));
        assert_eq!(parsed[0].param("c"), Some("x,"));
    }

    #[test]
    fn quoted_empty_value_is_empty() {
        let parsed = parse_challenge_value(r#"Bearer realm="", x=y"#);
        assert_eq!(params_of(&parsed[0]), [("realm", ""), ("x", "y")]);
    }

    #[test]
    fn unquoted_token_values_are_read() {
        let parsed = parse_challenge_value("Bearer error=insufficient_claims, scope=a.b");
        assert_eq!(parsed[0].param("error"), Some("insufficient_claims"));
        assert_eq!(parsed[0].param("scope"), Some("a.b"));
    }

    #[test]
    fn unquoted_base64_with_padding_is_read_whole() {
        let parsed = parse_challenge_value(&format!("Bearer claims={CAE_CLAIMS_B64}, x=1"));
        assert_eq!(parsed[0].param("claims"), Some(CAE_CLAIMS_B64));
        assert_eq!(parsed[0].param("x"), Some("1"));
    }

    #[test]
    fn token68_after_scheme_is_read() {
        let parsed = parse_challenge_value("Basic dXNlcjpwYXNz");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].token68(), Some("dXNlcjpwYXNz"));
        assert_eq!(parsed[0].params().count(), 0);

        let parsed = parse_challenge_value(r#"Negotiate abc==, Basic realm="x""#);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].token68(), Some("abc=="));
        assert_eq!(parsed[1].param("realm"), Some("x"));

        let parsed = parse_challenge_value("Negotiate a+b/c= NTLM");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].token68(), Some("a+b/c="));
        assert_eq!(parsed[1].scheme(), "NTLM");
    }

    #[test]
    fn param_after_scheme_is_not_a_token68() {
        let parsed = parse_challenge_value("Bearer abc=def");
        assert_eq!(parsed[0].token68(), None);
        assert_eq!(parsed[0].param("abc"), Some("def"));
    }

    #[test]
    fn param_after_token68_is_malformed_and_ends_the_line() {
        let parsed = parse_challenge_value(
            r#"Basic realm="y", Negotiate abc==, realm="x", Digest realm="z""#,
        );
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].scheme(), "Basic");
    }

    #[test]
    fn malformed_challenge_ends_the_line_but_not_other_lines() {
        let map = headers(&[r#"Basic realm="x", Digest a=b "oops", Bearer"#, "Negotiate"]);
        let parsed = parse_challenges(&map);
        let schemes: Vec<_> = parsed.iter().map(Challenge::scheme).collect();
        assert_eq!(schemes, ["Basic", "Negotiate"]);
    }

    #[test]
    fn several_header_lines_are_parsed_in_order() {
        let map = headers(&[
            r#"Basic realm="a""#,
            r#"Digest realm="b", Bearer realm="c""#,
        ]);
        let parsed = parse_challenges(&map);
        let realms: Vec<_> = parsed.iter().filter_map(|c| c.param("realm")).collect();
        assert_eq!(realms, ["a", "b", "c"]);
    }

    fn quote(value: &str) -> String {
        let mut quoted = String::from("\"");
        for c in value.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }

    #[test]
    fn quoted_string_round_trips_values_with_special_characters() {
        let values = [
            "",
            "plain",
            "\"",
            "\\",
            ",",
            "=",
            " ",
            "a \"quoted\" word",
            "back\\slash\\",
            "\\\"",
            "\"\\\"\\",
            "a, b, c",
            "x=y, z=\"w\"",
            "  leading and trailing  ",
            "= , \" \\ =",
            "Bearer a=\"x\"",
            "tab\there",
        ];
        for value in values {
            let line = format!(
                "Digest first={}, second = {} , last=1, Bearer only={}",
                quote(value),
                quote(value),
                quote(value)
            );
            let parsed = parse_challenge_value(&line);
            assert_eq!(parsed.len(), 2, "{line}");
            assert_eq!(
                params_of(&parsed[0]),
                [("first", value), ("second", value), ("last", "1")],
                "{line}"
            );
            assert_eq!(parsed[1].param("only"), Some(value), "{line}");
        }
    }
}
