//! The request forms, one per grant, and the `claims` field.

use bytes::Bytes;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::token::Secret;

/// The claims fragment that announces the CAE capability.
const CAE_CAPABILITY: &str = "CP1";

/// A form field value; secrets stay wrapped until encoded.
enum FormValue {
    Plain(String),
    Secret(Secret),
}

impl FormValue {
    fn as_str(&self) -> &str {
        match self {
            Self::Plain(v) => v.as_str(),
            Self::Secret(s) => s.expose_secret(),
        }
    }
}

/// An ordered `application/x-www-form-urlencoded` form.
#[derive(Default)]
pub(crate) struct Form {
    fields: Vec<(&'static str, FormValue)>,
    /// The grant is consumed by use: see [`SingleUse`](crate::transport::SingleUse).
    single_use: bool,
}

impl Form {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn field(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, FormValue::Plain(value.into())));
        self
    }

    pub(super) fn secret(mut self, name: &'static str, value: &Secret) -> Self {
        self.fields.push((name, FormValue::Secret(value.clone())));
        self
    }

    pub(super) fn optional(self, name: &'static str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    /// Marks the form's grant as consumed by use (not to be sent twice).
    fn single_use(mut self) -> Self {
        self.single_use = true;
        self
    }

    /// Whether the grant is consumed by use.
    pub(super) fn is_single_use(&self) -> bool {
        self.single_use
    }

    /// The secret values, to scrub from any text the provider sends back.
    pub(super) fn secret_values(&self) -> impl Iterator<Item = &Secret> {
        self.fields.iter().filter_map(|(_, v)| match v {
            FormValue::Secret(s) => Some(s),
            FormValue::Plain(_) => None,
        })
    }

    /// The encoded body, in a buffer that is zeroed when the request is dropped.
    pub(super) fn encode(&self) -> Bytes {
        Bytes::from_owner(self.encoded())
    }

    /// The encoded body in one buffer allocated up front for the longest encoding (see
    /// [`max_encoded_len`](Self::max_encoded_len)): a buffer that grew would leave copies of
    /// the secrets in the memory it freed, which nothing zeroes.
    fn encoded(&self) -> Zeroizing<Vec<u8>> {
        let buffer = String::with_capacity(self.max_encoded_len());
        let mut serializer = url::form_urlencoded::Serializer::new(buffer);
        for (name, value) in &self.fields {
            serializer.append_pair(name, value.as_str());
        }
        Zeroizing::new(serializer.finish().into_bytes())
    }

    /// The longest the encoded form can be: every byte of a name or value percent-encoded
    /// (`%XX`, 3 bytes), plus `=` and `&` per field.
    fn max_encoded_len(&self) -> usize {
        self.fields.iter().fold(0usize, |total, (name, value)| {
            let bytes = name.len().saturating_add(value.as_str().len());
            total
                .saturating_add(bytes.saturating_mul(3))
                .saturating_add(2)
        })
    }

    #[cfg(test)]
    pub(super) fn names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|(n, _)| *n).collect()
    }
}

/// The client-credentials grant (a service principal with a secret).
pub(crate) fn client_credentials_form(
    client_id: &str,
    secret: &Secret,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    client_credentials(client_id, scopes, claims, |form| {
        form.secret("client_secret", secret)
    })
}

/// The client-credentials grant with a signed JWT standing for the secret (RFC 7523 §2.2):
/// a federated token, such as a workload identity's service-account token.
pub(crate) fn client_assertion_form(
    client_id: &str,
    assertion: &Secret,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    client_credentials(client_id, scopes, claims, |form| {
        form.field("client_assertion_type", JWT_BEARER_ASSERTION_TYPE)
            .secret("client_assertion", assertion)
    })
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §8.1).
const JWT_BEARER_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client-credentials form around the fields that authenticate the client.
fn client_credentials(
    client_id: &str,
    scopes: &[String],
    claims: Option<String>,
    authenticate: impl FnOnce(Form) -> Form,
) -> Form {
    authenticate(Form::new().field("client_id", client_id))
        .field("grant_type", "client_credentials")
        .field("scope", scope_field(scopes))
        .optional("claims", claims)
}

/// The authorization-code grant (a code redeemed once: single use, RFC 6749 §4.1.2). Client
/// credentials may be sent again, and so may a refresh token, which stays valid after use
/// (Entra rotates it but does not revoke the old). A device-code poll is single use too: see
/// [`device_code_form`].
///
/// With the PKCE `code_verifier` (RFC 7636 §4.5) of the sign-in that issued a code bound to a
/// challenge: a secret, like the code, scrubbed from what the provider answers.
pub(crate) fn authorization_code_form(
    client_id: &str,
    code: &Secret,
    code_verifier: Option<&Secret>,
    redirect_uri: &str,
    scopes: &[String],
    claims: Option<String>,
    client_secret: Option<&Secret>,
) -> Form {
    let form = Form::new()
        .single_use()
        .field("client_id", client_id)
        .secret("code", code);
    let form = match code_verifier {
        Some(verifier) => form.secret("code_verifier", verifier),
        None => form,
    };
    let form = form
        .field("grant_type", "authorization_code")
        .field("redirect_uri", redirect_uri)
        .field("scope", scope_field(scopes))
        .field("client_info", "1")
        .optional("claims", claims);
    match client_secret {
        Some(secret) => form.secret("client_secret", secret),
        None => form,
    }
}

/// The OpenID scopes msal adds to a user sign-in: an id token, the account's profile (for
/// `client_info`) and a refresh token.
const SIGN_IN_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];

/// The device authorization request (RFC 8628 §3.1), with the scopes msal adds.
pub(crate) fn device_authorization_form(
    client_id: &str,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    let mut all = scopes.to_vec();
    for scope in SIGN_IN_SCOPES {
        if !all.iter().any(|s| s == scope) {
            all.push(scope.to_owned());
        }
    }
    Form::new()
        .field("client_id", client_id)
        .field("scope", scope_field(&all))
        .optional("claims", claims)
}

/// `grant_type` of a device code poll (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A device code poll (RFC 8628 §3.4), asking for the account's `client_info`, with the
/// `claims` (challenge and CAE capability) on every poll as msal sends them: this request is
/// the one that issues the token. Single use: the poll that issues the token redeems the
/// code, so one whose answer was lost is not sent again by the transport (the poll loop
/// decides when to poll next).
pub(crate) fn device_code_form(
    client_id: &str,
    device_code: &Secret,
    claims: Option<String>,
) -> Form {
    Form::new()
        .single_use()
        .field("grant_type", DEVICE_CODE_GRANT)
        .field("client_id", client_id)
        .secret("device_code", device_code)
        .field("client_info", "1")
        .optional("claims", claims)
}

/// The refresh-token grant.
pub(crate) fn refresh_token_form(
    client_id: &str,
    refresh_token: &Secret,
    scopes: &[String],
    claims: Option<String>,
    client_secret: Option<&Secret>,
) -> Form {
    let form = Form::new()
        .field("grant_type", "refresh_token")
        .secret("refresh_token", refresh_token)
        .field("scope", scope_field(scopes))
        .field("client_id", client_id)
        .field("client_info", "1");
    let form = match client_secret {
        Some(secret) => form.secret("client_secret", secret),
        None => form,
    };
    form.optional("claims", claims)
}

/// The scopes as the `scope` field carries them: joined with single spaces.
pub(super) fn scope_field(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// Whether a `claims` field (from [`claims_field`]) carries a challenge of its own, not only
/// the CAE capability every CAE request announces. A cached token serves a request without
/// one; an `invalid_grant` answering one refuses the refresh token for that request only.
pub(crate) fn carries_a_challenge(field: Option<&str>) -> bool {
    static CAPABILITY_ONLY: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| claims_field(None, true).ok().flatten());
    field.is_some_and(|field| Some(field) != CAPABILITY_ONLY.as_deref())
}

/// The `claims` field for a request: the caller's claims (a JSON object), with the CAE
/// capability merged in when CAE is enabled. `None` when neither applies.
pub(crate) fn claims_field(
    claims: Option<&str>,
    enable_cae: bool,
) -> Result<Option<String>, String> {
    let parsed = match claims {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(
                    "claims must be a JSON object, such as the decoded claims of a \
                            CAE challenge: {\"access_token\":{…}}"
                        .into(),
                );
            }
        },
        None => None,
    };
    if !enable_cae {
        // Sent as given: the provider compares the JSON it asked for.
        return Ok(claims.map(str::to_owned));
    }
    let mut root = parsed.unwrap_or_default();
    let access_token = root
        .entry("access_token")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(access_token) = access_token else {
        return Err("claims: \"access_token\" must be a JSON object".into());
    };
    let xms_cc = access_token
        .entry("xms_cc")
        .or_insert_with(|| serde_json::json!({ "values": [] }));
    // An `xms_cc` or `values` of another shape is replaced, as msal replaces `xms_cc` whole:
    // it says what this client can do, which is ours to say.
    if !xms_cc.get("values").is_some_and(Value::is_array) {
        *xms_cc = serde_json::json!({ "values": [] });
    }
    let Some(Value::Array(values)) = xms_cc.get_mut("values") else {
        return Err("claims: \"xms_cc.values\" could not be set".into());
    };
    if !values.iter().any(|v| v == CAE_CAPABILITY) {
        values.push(Value::String(CAE_CAPABILITY.into()));
    }
    Ok(Some(Value::Object(root).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer is allocated once: encoding a large secret, every byte of which is
    /// percent-encoded, fills it without reallocating (which would free an unzeroed copy).
    #[test]
    fn a_secret_is_encoded_into_one_buffer_that_never_grows() {
        let secret = Secret::new("\u{e9}/&=%".repeat(4096));
        let form = Form::new()
            .field("client_id", "id")
            .secret("client_secret", &secret)
            .field("scope", "https://x.test/.default");
        let reserved = form.max_encoded_len();
        let encoded = form.encoded();
        assert_eq!(encoded.capacity(), reserved, "no reallocation");
        assert!(encoded.len() <= reserved);
        assert!(encoded.starts_with(b"client_id=id&client_secret=%C3%A9%2F%26%3D%25"));
    }
}
