//! The output of `az` and `azd`.

use std::time::Duration;

use serde_json::Value;

use crate::credential::azure_cli::parse_output;
use crate::token::MAX_TOKEN_LIFETIME;

use super::{assert_no_leak, renderings};

/// The output of `az account get-access-token --output json` and of
/// `azd auth token --output json`: `data` is stdout, read by both parsers.
///
/// Also `data` as azd's error output.
///
/// Checks: a token's lifetime is at most the crate's maximum; an error shows no token value
/// (`accessToken` for az, `token` for azd) of 8 characters or more (unless it shows it with
/// the token replaced, i.e. the value is the crate's own text).
pub fn az_output(data: &[u8]) {
    tool_output(data, "Azure CLI", "accessToken", parse_output);
    tool_output(
        data,
        "Azure Developer CLI",
        "token",
        crate::credential::azure_developer_cli::parse_output,
    );
    // The same bytes as azd's error output (JSON lines or text): no panic, one line quoted.
    let error = crate::credential::azure_developer_cli::classify_failure(data, data);
    assert!(!error.to_string().contains('\n'), "{error}");
}

fn tool_output(
    data: &[u8],
    tool: &str,
    field: &str,
    parse_output: fn(&[u8]) -> Result<crate::AccessToken, crate::CredentialError>,
) {
    match parse_output(data) {
        Ok(token) => {
            assert!(
                token.expires_in() <= MAX_TOKEN_LIFETIME + Duration::from_secs(1),
                "lifetime {:?} beyond the maximum",
                token.expires_in()
            );
            let _ = format!("{token:?}");
        }
        Err(error) => {
            let Ok(mut json) = serde_json::from_slice::<Value>(data) else {
                return;
            };
            let Some(Value::String(secret)) = json.get(field).cloned() else {
                return;
            };
            if secret.chars().count() < 8 {
                return;
            }
            if let Some(object) = json.as_object_mut() {
                object.insert(
                    field.to_owned(),
                    Value::String("\u{1}".repeat(secret.chars().count())),
                );
            }
            let control = serde_json::to_vec(&json)
                .ok()
                .and_then(|bytes| parse_output(&bytes).err())
                .map(|e| renderings(&e).to_vec())
                .unwrap_or_default();
            assert_no_leak(
                &format!("a {tool} output error"),
                &secret,
                &renderings(&error),
                &control,
            );
        }
    }
}
