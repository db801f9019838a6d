use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::form::{
    Form, claims_field, client_assertion_form, client_credentials_form, scope_field,
};
use super::response::{TokenResponse, parse_response};
use crate::error::CredentialError;
use crate::token::Secret;

fn parse(status: u16, body: &str) -> Result<TokenResponse, CredentialError> {
    parse_response(
        "TestCredential",
        StatusCode::from_u16(status).unwrap(),
        body.as_bytes(),
        &["the-client-secret"],
        Instant::now(),
        1_700_000_000,
    )
}

#[tokio::test(start_paused = true)]
async fn numbers_may_be_json_numbers_or_numeric_strings() {
    for body in [
        r#"{"access_token":"a","expires_in":3599,"ext_expires_in":3599,"refresh_in":1800,"token_type":"Bearer"}"#,
        r#"{"access_token":"a","expires_in":"3599","ext_expires_in":"3599","refresh_in":"1800"}"#,
        r#"{"access_token":"a","expires_in":3599.0,"refresh_in":" 1800 "}"#,
    ] {
        let r = parse(200, body).unwrap();
        assert_eq!(r.token.expires_in(), Duration::from_secs(3599), "{body}");
        assert_eq!(
            r.token.refresh_on(),
            Some(Instant::now() + Duration::from_secs(1800)),
            "{body}"
        );
        assert_eq!(r.expires_on, 1_700_003_599);
        assert_eq!(r.refresh_on, Some(1_700_001_800));
        assert_eq!(r.token.token_type(), "Bearer");
    }
    let err = parse(200, r#"{"access_token":"a","expires_in":"soon"}"#).unwrap_err();
    assert!(
        err.message()
            .contains("expires_in is not a non-negative number"),
        "{err}"
    );
}

/// A hint that cannot be read (`refresh_in`, `ext_expires_in`), or an `expires_on` beside a
/// readable `expires_in`, does not cost the token that arrived: it is ignored.
#[tokio::test(start_paused = true)]
async fn unreadable_hints_are_ignored_and_the_token_kept() {
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":7200,"refresh_in":"soon"}"#,
    )
    .unwrap();
    // As without refresh_in: half the lifetime of a long-lived token.
    assert_eq!(r.refresh_on, Some(1_700_003_600));
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":3600,"ext_expires_in":"x"}"#,
    )
    .unwrap();
    assert_eq!(r.extended_expires_on, 1_700_003_600);
    for expires_on in ["\"\"", "\"soon\"", "-1", "true", "[1]"] {
        let body = format!(r#"{{"access_token":"a","expires_in":3600,"expires_on":{expires_on}}}"#);
        let r = parse(200, &body).unwrap();
        assert_eq!(r.expires_on, 1_700_003_600, "{body}");
        assert_eq!(r.token.expires_in(), Duration::from_secs(3600), "{body}");
    }
    // Without a readable expires_in, an unreadable expires_on leaves no lifetime.
    for body in [
        r#"{"access_token":"a","expires_on":""}"#,
        r#"{"access_token":"a","expires_on":"","expires_in":null}"#,
    ] {
        let err = parse(200, body).unwrap_err();
        assert!(
            err.message()
                .contains("expires_on is not a non-negative number"),
            "{err}"
        );
    }
    let err = parse(
        200,
        r#"{"access_token":"a","expires_on":"","expires_in":"x"}"#,
    )
    .unwrap_err();
    assert!(
        err.message()
            .contains("expires_in is not a non-negative number"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_on_follows_refresh_in_then_half_life_for_long_tokens() {
    let r = parse(200, r#"{"access_token":"a","expires_in":7200}"#).unwrap();
    assert_eq!(
        r.token.refresh_on(),
        Some(Instant::now() + Duration::from_secs(3600))
    );
    let r = parse(200, r#"{"access_token":"a","expires_in":7199}"#).unwrap();
    assert_eq!(r.token.refresh_on(), None);
    assert_eq!(r.refresh_on, None);
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":86400,"refresh_in":600}"#,
    )
    .unwrap();
    assert_eq!(
        r.token.refresh_on(),
        Some(Instant::now() + Duration::from_secs(600))
    );
}

#[tokio::test(start_paused = true)]
async fn absurd_numbers_are_clamped_not_a_panic() {
    let week = crate::token::MAX_TOKEN_LIFETIME;
    for body in [
        r#"{"access_token":"a","expires_in":1e20}"#,
        r#"{"access_token":"a","expires_in":18446744073709551615}"#,
        r#"{"access_token":"a","expires_in":"1e300"}"#,
        r#"{"access_token":"a","expires_on":99999999999999999999}"#,
        r#"{"access_token":"a","expires_on":"18446744073709551615"}"#,
        r#"{"access_token":"a","expires_in":1e20,"expires_on":1e20}"#,
    ] {
        let r = parse(200, body).unwrap();
        assert_eq!(r.token.expires_in(), week, "{body}");
        assert_eq!(r.expires_on, 1_700_000_000 + week.as_secs(), "{body}");
    }
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_in":1e20,"ext_expires_in":18446744073709551615}"#,
    )
    .unwrap();
    // refresh_in past expiry means expiry; ext_expires_in is clamped like a lifetime.
    assert_eq!(r.token.refresh_on(), Some(r.token.expires_on()));
    assert_eq!(r.refresh_on, Some(1_700_003_600));
    assert_eq!(r.extended_expires_on, 1_700_000_000 + week.as_secs());
}

/// The relative `expires_in` wins over an absolute `expires_on`, which is read against this
/// host's clock: a clock ahead by more than the lifetime made a fresh token "already expired"
/// (the second body), one behind made it live too long. `expires_on` counts only without a
/// readable `expires_in`. The managed identity parser reads answers by the same rule.
#[tokio::test(start_paused = true)]
async fn expires_in_wins_over_an_absolute_expires_on() {
    // parse() sends at Unix time 1_700_000_000.
    for body in [
        r#"{"access_token":"a","expires_in":3600,"expires_on":"1700001000"}"#,
        r#"{"access_token":"a","expires_in":3600,"expires_on":1699999000}"#,
        r#"{"access_token":"a","expires_in":"3600","expires_on":1800000000}"#,
    ] {
        let r = parse(200, body).unwrap();
        assert_eq!(r.token.expires_in(), Duration::from_secs(3600), "{body}");
        assert_eq!(r.expires_on, 1_700_003_600, "{body}");
    }
    for body in [
        r#"{"access_token":"a","expires_on":"1700001000"}"#,
        r#"{"access_token":"a","expires_in":null,"expires_on":1700001000}"#,
        r#"{"access_token":"a","expires_in":"soon","expires_on":1700001000}"#,
    ] {
        let r = parse(200, body).unwrap();
        assert_eq!(r.token.expires_in(), Duration::from_secs(1000), "{body}");
        assert_eq!(r.expires_on, 1_700_001_000, "{body}");
    }
}

#[tokio::test(start_paused = true)]
async fn missing_expiry_or_token_is_an_unexpected_response_without_echo() {
    let err = parse(
        200,
        r#"{"access_token":"eyJhbGciOi.payload.sig","token_type":"Bearer"}"#,
    )
    .unwrap_err();
    assert!(err.is_authentication_failed());
    assert!(
        err.message()
            .starts_with("Unexpected response from Microsoft Entra ID"),
        "{err}"
    );
    assert!(
        err.message().contains("neither expires_in nor expires_on"),
        "{err}"
    );
    assert!(!err.to_string().contains("payload"), "{err}");
    let err = parse(200, r#"{"expires_in":3600}"#).unwrap_err();
    assert!(err.message().contains("no access_token"), "{err}");
    let err = parse(200, r#"{"access_token":"a","expires_in":0}"#).unwrap_err();
    assert!(err.message().contains("already expired"), "{err}");
}

/// An empty `refresh_token` in a refresh grant's answer would be stored in place of the
/// redeemed one, and the next renewal would fail: empty values are no values, as for msal.
#[tokio::test(start_paused = true)]
async fn empty_refresh_token_id_token_client_info_and_foci_are_absent() {
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_token":""}"#,
    )
    .unwrap();
    assert!(r.refresh_token.is_none());
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_token":"","id_token":"","client_info":"","foci":""}"#,
    )
    .unwrap();
    assert!(r.refresh_token.is_none() && r.id_token.is_none());
    assert_eq!((r.client_info, r.foci), (None, None));
    let r = parse(
        200,
        r#"{"access_token":"a","expires_in":3600,"refresh_token":"r","foci":"1"}"#,
    )
    .unwrap();
    assert_eq!(r.refresh_token.unwrap().expose_secret(), "r");
    assert_eq!(r.foci.as_deref(), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn entra_error_body_becomes_a_detailed_error() {
    let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: t-1\r\nCorrelation ID: c-1\r\nTimestamp: 2024-05-01 00:00:00Z","error_codes":[7000215],"timestamp":"2024-05-01 00:00:00Z","trace_id":"t-1","correlation_id":"c-1"}"#;
    let err = parse(401, body).unwrap_err();
    assert!(err.is_authentication_failed());
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert_eq!(err.error_codes(), [7000215]);
    assert_eq!(err.correlation_id(), Some("c-1"));
    let msg = err.message();
    assert!(msg.starts_with("Microsoft Entra ID error '(invalid_client) AADSTS7000215: Invalid client secret provided."), "{msg}");
    assert!(msg.contains("Trace ID: t-1 Correlation ID: c-1"), "{msg}");
    assert!(msg.contains("Check that the client secret"), "{msg}");
}

/// Every quoted field of an error answer is one line, without characters that forge log
/// lines or reorder text, and bounded: an `error` code of several lines went into the
/// message and `error_code()` as it was (a fuzz input: a JSON `\t` before the secret then read
/// as the secret in `Debug`).
#[tokio::test(start_paused = true)]
async fn an_error_answers_fields_are_one_line_and_bounded() {
    let long = "x".repeat(10_000);
    let body = format!(
        r#"{{"error":"bad\r\nforged: line\u202e","error_description":"{long}","correlation_id":"c\n1"}}"#
    );
    let err = parse(400, &body).unwrap_err();
    for text in [
        err.message(),
        err.error_code().unwrap(),
        err.correlation_id().unwrap(),
    ] {
        assert!(!text.contains(['\r', '\n', '\u{202e}']), "{text:?}");
    }
    assert_eq!(err.error_code(), Some("bad forged: line"));
    assert!(
        err.message().chars().count() < 2_200,
        "{}",
        err.message().len()
    );
}

/// An assertion out of its time range: the hint says where its times came from. A certificate
/// credential dates its own by this host's clock; a workload identity's token is dated by the
/// Kubernetes API server (a stale token file, not this host's clock); a callback's by the
/// callback, whose hint names the clock of whatever signs it. (Before, every credential was told to check this host's clock first.)
#[tokio::test(start_paused = true)]
async fn an_assertion_out_of_its_time_range_points_at_whoever_dated_it() {
    let body = r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range.","error_codes":[700024]}"#;
    let message = |credential: &'static str| {
        parse_response(
            credential,
            StatusCode::UNAUTHORIZED,
            body.as_bytes(),
            &[],
            Instant::now(),
            1_700_000_000,
        )
        .unwrap_err()
        .message()
        .to_owned()
    };
    let certificate = message("ClientCertificateCredential");
    assert!(
        certificate.contains("check this host's clock"),
        "{certificate}"
    );
    assert!(!certificate.contains("kubelet"), "{certificate}");
    let workload = message("WorkloadIdentityCredential");
    assert!(
        workload.contains("token the kubelet keeps renewing")
            && workload.contains("not this host's"),
        "{workload}"
    );
    assert!(!workload.contains("check this host's clock"), "{workload}");
    let assertion = message("ClientAssertionCredential");
    assert!(
        assertion.contains("must return a current one"),
        "{assertion}"
    );
    assert!(
        assertion.contains("the clock of whatever signs it")
            && !assertion.contains("this host's clock")
            && !assertion.contains("kubelet"),
        "{assertion}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_field_means_failure_even_with_200() {
    let err = parse(200, r#"{"error":"invalid_grant","error_description":"AADSTS54005: code redeemed","error_codes":["54005"]}"#).unwrap_err();
    assert_eq!(err.error_codes(), [54005]);
}

#[tokio::test(start_paused = true)]
async fn suberror_is_kept_only_when_it_is_a_short_identifier() {
    let err = parse(
        400,
        r#"{"error":"invalid_grant","error_codes":[70043],"suberror":"bad_token"}"#,
    )
    .unwrap_err();
    assert_eq!(err.suberror(), Some("bad_token"));
    let long = format!("\"{}\"", "a".repeat(65));
    for odd in [
        "\"\"",
        &long,
        "\"bad token\\n\"",
        "7",
        "null",
        "[\"bad_token\"]",
    ] {
        let body = format!(r#"{{"error":"invalid_grant","suberror":{odd}}}"#);
        let err = parse(400, &body).unwrap_err();
        assert_eq!(err.suberror(), None, "{body}");
    }
}

#[tokio::test(start_paused = true)]
async fn unreadable_bodies_are_quoted_scrubbed_and_short() {
    let html = format!(
        "<html>proxy says the-client-secret eyJa.b.c {}</html>",
        "x".repeat(500)
    );
    let err = parse(502, &html).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("HTTP 502"), "{msg}");
    assert!(msg.contains("<html>proxy says *** ***"), "{msg}");
    assert!(
        !msg.contains("the-client-secret") && !msg.contains("eyJa"),
        "{msg}"
    );
    assert!(msg.len() < 400, "{}", msg.len());
    let err = parse(200, "not json").unwrap_err();
    assert!(err.message().contains("not a JSON object"), "{err}");
}

#[test]
fn cae_capability_is_merged_into_claims() {
    assert_eq!(claims_field(None, false).unwrap(), None);
    assert_eq!(
        claims_field(None, true).unwrap().unwrap(),
        r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#
    );
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    assert_eq!(
        claims_field(Some(challenge), false).unwrap().unwrap(),
        challenge
    );
    assert_eq!(
        claims_field(Some(challenge), true).unwrap().unwrap(),
        r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_cc":{"values":["CP1"]}}}"#
    );
    let has_cp1 = r#"{"access_token":{"xms_cc":{"values":["CP1","X"]}},"id_token":{}}"#;
    assert_eq!(claims_field(Some(has_cp1), true).unwrap().unwrap(), has_cp1);
    assert!(claims_field(Some("[1]"), false).is_err());
    assert!(claims_field(Some(r#"{"access_token":1}"#), true).is_err());
    // An `xms_cc` of another shape is replaced, as msal replaces it.
    for odd in [
        r#"{"access_token":{"xms_cc":[]}}"#,
        r#"{"access_token":{"xms_cc":{"values":"CP1"}}}"#,
        r#"{"access_token":{"xms_cc":{"other":1}}}"#,
    ] {
        assert_eq!(
            claims_field(Some(odd), true).unwrap().unwrap(),
            r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#,
            "{odd}"
        );
    }
}

#[test]
fn client_credentials_forms_differ_only_in_how_the_client_proves_itself() {
    let scopes = ["https://x.test/.default".to_owned()];
    let secret = client_credentials_form("id", &Secret::new("s3cret"), &scopes, None);
    assert_eq!(
        secret.names(),
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    let assertion =
        client_assertion_form("id", &Secret::new("eyJ.a.b"), &scopes, Some("{}".into()));
    assert_eq!(
        assertion.names(),
        [
            "client_id",
            "client_assertion_type",
            "client_assertion",
            "grant_type",
            "scope",
            "claims"
        ]
    );
    assert_eq!(
        &assertion.encode()[..],
        b"client_id=id&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
          &client_assertion=eyJ.a.b&grant_type=client_credentials&scope=https%3A%2F%2Fx.test%2F.default&claims=%7B%7D"
    );
    let secrets: Vec<&str> = assertion
        .secret_values()
        .map(Secret::expose_secret)
        .collect();
    assert_eq!(secrets, ["eyJ.a.b"]);
}

#[test]
fn form_encodes_in_order_and_lists_secrets() {
    let secret = Secret::new("s p&c=");
    let form = Form::new()
        .field("client_id", "id")
        .secret("client_secret", &secret)
        .field("scope", scope_field(&["a".into(), "b c".into()]))
        .optional("claims", None::<String>);
    assert_eq!(form.names(), ["client_id", "client_secret", "scope"]);
    assert_eq!(
        &form.encode()[..],
        b"client_id=id&client_secret=s+p%26c%3D&scope=a+b+c"
    );
    let secrets: Vec<&str> = form.secret_values().map(Secret::expose_secret).collect();
    assert_eq!(secrets, ["s p&c="]);
}
