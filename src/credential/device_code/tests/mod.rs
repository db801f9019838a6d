//! Unit tests of the device code credential: its answers read, its builder checked, and
//! the races between a sign-in landing and the account being forgotten ([`races`]).

use super::*;
use serde_json::json;

mod races;

fn parse(value: Value) -> Result<DeviceCode, String> {
    match value {
        Value::Object(map) => DeviceCode::parse(&map, Instant::now()),
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn device_code_answers_are_read_with_clamped_numbers() {
    let code = parse(json!({"device_code": "dc-secret", "user_code": "ABCD-EFGH",
        "verification_uri": "https://microsoft.com/devicelogin", "expires_in": "900",
        "interval": 5, "message": "Go to the page"}))
    .unwrap();
    assert_eq!(code.interval, Duration::from_secs(5));
    assert_eq!(code.expires_at, Instant::now() + Duration::from_secs(900));
    assert_eq!(code.info.user_code, "ABCD-EFGH");
    assert_eq!(code.info.message, "Go to the page");
    let debug = format!("{:?}", code.info);
    assert!(!debug.contains("dc-secret"), "{debug}");

    let absurd = parse(json!({"device_code": "d", "user_code": "u",
        "verification_url": "https://v", "expires_in": 1e30, "interval": 18446744073709551615u64}))
    .unwrap();
    // Never shortened (RFC 8628 §3.5: at least the interval given); the poll's deadline
    // bounds the wait.
    assert_eq!(absurd.interval, Duration::from_secs(u64::MAX));
    let slow = parse(json!({"device_code": "d", "user_code": "u",
        "verification_uri": "https://v", "expires_in": 900, "interval": 120}))
    .unwrap();
    assert_eq!(slow.interval, Duration::from_secs(120));
    assert_eq!(absurd.info.expires_in, MAX_CODE_LIFETIME);
    assert!(absurd.info.message.contains("https://v") && absurd.info.message.contains(" u "));
    let eager = parse(json!({"device_code": "d", "user_code": "u",
        "verification_uri": "https://v", "expires_in": 900, "interval": 0}))
    .unwrap();
    assert_eq!(eager.interval, MIN_INTERVAL);
    let default = parse(json!({"device_code": "d", "user_code": "u",
        "verification_uri": "https://v", "expires_in": 900}))
    .unwrap();
    assert_eq!(default.interval, DEFAULT_INTERVAL);
}

#[tokio::test(start_paused = true)]
async fn incomplete_device_code_answers_name_what_is_missing() {
    for (body, missing) in [
        (
            json!({"user_code": "u", "verification_uri": "v", "expires_in": 9}),
            "device_code",
        ),
        (
            json!({"device_code": "d", "verification_uri": "v", "expires_in": 9}),
            "user_code",
        ),
        (
            json!({"device_code": "d", "user_code": "u", "expires_in": 9}),
            "verification_uri",
        ),
        (
            json!({"device_code": "d", "user_code": "u", "verification_uri": "v"}),
            "expires_in",
        ),
        (
            json!({"device_code": "d", "user_code": "u", "verification_uri": "v", "expires_in": -1}),
            "expires_in",
        ),
        (
            json!({"device_code": "d", "user_code": "u", "verification_uri": "v", "expires_in": 0}),
            "expired",
        ),
    ] {
        let error = parse(body).err().expect("an error");
        assert!(error.contains(missing), "{error}");
    }
}

#[test]
fn builder_defaults_and_bad_settings() {
    let credential = DeviceCodeCredential::builder().build().unwrap();
    let debug = format!("{credential:?}");
    assert!(
        debug.contains(AZURE_CLI_CLIENT_ID) && debug.contains("organizations"),
        "{debug}"
    );
    let error = DeviceCodeCredential::builder()
        .timeout(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(error.message().contains("timeout is zero"), "{error}");
    let error = DeviceCodeCredential::builder()
        .client_id(" ")
        .build()
        .unwrap_err();
    assert!(error.message().contains("client id is empty"), "{error}");
    let error = DeviceCodeCredential::builder()
        .tenant_id("bad/tenant")
        .build()
        .unwrap_err();
    assert!(error.message().contains("tenant"), "{error}");
}
