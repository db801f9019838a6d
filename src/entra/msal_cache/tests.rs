use super::*;
use crate::token::Secret;
use serde_json::Value;

use super::raw::*;
use super::update::*;
use super::views::*;
use super::writer::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const SAMPLE: &[u8] = include_bytes!("../../../tests/data/msal-cache-sample.json");
const TWO_ACCOUNTS: &[u8] = include_bytes!("../../../tests/data/msal-two-accounts.json");
const APP_ONLY: &[u8] = include_bytes!("../../../tests/data/msal-app-only.json");
const AZID_AFTER_REFRESH: &[u8] = include_bytes!("../../../tests/data/azid-after-refresh.json");

const CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
const ALICE_UID: &str = "a8ff77e5-b945-5754-a190-f18b6df68148";
const ALICE_UTID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ALICE: &str = "a8ff77e5-b945-5754-a190-f18b6df68148.72f988bf-86f1-41af-91ab-2d7cd011db47";
const BOB_UID: &str = "61ace6e2-511c-512d-9718-ced2ee5434fb";
const BOB_UTID: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
const PUBLIC: &[&str] = &[
    "login.microsoftonline.com",
    "login.windows.net",
    "login.microsoft.com",
    "sts.windows.net",
];

fn text(doc: &CacheDocument) -> String {
    String::from_utf8(doc.to_vec()).expect("utf-8")
}

fn parse(s: &str) -> CacheDocument {
    CacheDocument::parse(s.as_bytes()).expect("parses")
}

fn client_info(uid: &str, utid: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(r#"{{"uid":"{uid}","utid":"{utid}"}}"#))
}

fn jwt(claims: &Value) -> Secret {
    Secret::new(format!(
        "eyJhbGciOiJub25lIn0.{}.sig",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    ))
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// Owns what a `NewTokens` borrows.
struct Answer {
    client_id: String,
    environment: String,
    realm: String,
    scopes: Vec<String>,
    access_token: Secret,
    token_type: String,
    cached_at: u64,
    lifetime: u64,
    refresh_on: Option<u64>,
    refresh_token: Option<Secret>,
    id_token: Option<Secret>,
    client_info: Option<String>,
    foci: Option<String>,
    replaces: Option<String>,
    user_grant: bool,
}

impl Answer {
    fn app(client_id: &str, environment: &str, realm: &str, scope: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            environment: environment.to_owned(),
            realm: realm.to_owned(),
            scopes: scopes(scope),
            access_token: Secret::new("SECRET-app-access-token"),
            token_type: "Bearer".to_owned(),
            cached_at: 1_795_324_128,
            lifetime: 3600,
            refresh_on: None,
            refresh_token: None,
            id_token: None,
            client_info: None,
            foci: None,
            replaces: None,
            user_grant: false,
        }
    }

    fn user(
        (uid, utid): (&str, &str),
        username: &str,
        environment: &str,
        realm: &str,
        scope: &[&str],
    ) -> Self {
        let mut a = Self::app(CLI, environment, realm, scope);
        a.access_token = Secret::new("SECRET-user-access-token");
        a.refresh_token = Some(Secret::new("SECRET-user-refresh-token"));
        a.id_token = Some(jwt(&serde_json::json!({
            "sub": uid, "oid": uid, "tid": utid, "preferred_username": username,
        })));
        a.client_info = Some(client_info(uid, utid));
        a.foci = Some("1".to_owned());
        a.user_grant = true;
        a
    }

    fn tokens(&self) -> NewTokens<'_> {
        NewTokens {
            client_id: &self.client_id,
            environment: &self.environment,
            realm: &self.realm,
            scopes: &self.scopes,
            access_token: &self.access_token,
            token_type: &self.token_type,
            cached_at: self.cached_at,
            expires_on: self.cached_at + self.lifetime,
            extended_expires_on: self.cached_at + self.lifetime,
            refresh_on: self.refresh_on,
            refresh_token: self.refresh_token.as_ref(),
            id_token: self.id_token.as_ref(),
            client_info: self.client_info.as_deref(),
            foci: self.foci.as_deref(),
            replaces: self.replaces.as_deref(),
            replaces_read_here: true,
            user_grant: self.user_grant,
        }
    }
}

fn at_by_key(doc: &CacheDocument, key: &str) -> CachedAccessToken {
    doc.access_tokens()
        .into_iter()
        .zip(doc.raw_entries(ACCESS_TOKEN))
        .find(|(_, raw)| raw.key == key)
        .expect("access token")
        .0
}

fn rt_by_key(doc: &CacheDocument, key: &str) -> RefreshToken {
    doc.refresh_tokens()
        .into_iter()
        .find(|t| t.key == key)
        .expect("refresh token")
}

/// The text of the entry `key` (its key line to its closing brace) as it appears in `doc`.
fn entry_text<'a>(doc: &'a str, key: &str) -> &'a str {
    let start = doc.find(&format!("        \"{key}\": {{")).expect("entry");
    let end = start + doc[start..].find("\n        }").expect("end of entry") + 10;
    &doc[start..end]
}

// ---- round trips ------------------------------------------------------------------------

#[test]
fn round_trip_of_the_design_sample_is_byte_for_byte() {
    assert_eq!(CacheDocument::parse(SAMPLE).unwrap().to_vec(), SAMPLE);
}

#[test]
fn round_trip_of_msal_two_accounts_is_byte_for_byte() {
    assert_eq!(
        CacheDocument::parse(TWO_ACCOUNTS).unwrap().to_vec(),
        TWO_ACCOUNTS
    );
}

#[test]
fn round_trip_of_msal_app_only_is_byte_for_byte() {
    assert_eq!(CacheDocument::parse(APP_ONLY).unwrap().to_vec(), APP_ONLY);
}

#[test]
fn round_trip_of_azure_identity_after_refresh_is_byte_for_byte() {
    let doc = CacheDocument::parse(AZID_AFTER_REFRESH).unwrap();
    assert_eq!(doc.to_vec(), AZID_AFTER_REFRESH);
    assert!(doc.skipped().is_empty(), "{:?}", doc.skipped());
}

#[test]
fn empty_and_whitespace_input_is_an_empty_document_written_as_braces() {
    for input in [&b""[..], b"  \n\t ", b"{}", b"\xEF\xBB\xBF{}"] {
        let doc = CacheDocument::parse(input).unwrap();
        assert!(doc.is_empty());
        assert_eq!(doc.to_vec(), b"{}");
    }
    assert_eq!(CacheDocument::empty().to_vec(), b"{}");
    let doc = parse("{\n    \"AccessToken\": {},\n    \"Other\": {}\n}");
    assert!(!doc.is_empty(), "an unknown section is content");
    assert_eq!(
        text(&doc),
        "{\n    \"AccessToken\": {},\n    \"Other\": {}\n}"
    );
}

#[test]
fn keys_keep_their_escapes_and_known_sections_their_position() {
    let src = "{\n    \"Extra\\u00e9\": 1,\n    \"AppMetadata\": {\n        \"appmetadata-h\\/x-c\": {\n            \"client_id\": \"c\",\n            \"environment\": \"h\\/x\",\n            \"n\": -0\n        }\n    },\n    \"zz\": [\n        1\n    ]\n}";
    let doc = parse(src);
    assert_eq!(text(&doc), src);
    let md = doc.app_metadata();
    assert_eq!(md.len(), 1);
    assert_eq!(md[0].key, "appmetadata-h/x-c");
    assert_eq!(md[0].environment, "h/x");
}

#[test]
fn compact_documents_are_rewritten_in_msal_layout() {
    let doc = parse(
        r#"{"AppMetadata":{"appmetadata-e-c":{"client_id":"c","environment":"e","x":{"a":[1,2]}}},"Other":{"k":true}}"#,
    );
    assert_eq!(
        text(&doc),
        "{\n    \"AppMetadata\": {\n        \"appmetadata-e-c\": {\n            \"client_id\": \"c\",\n            \"environment\": \"e\",\n            \"x\": {\"a\":[1,2]}\n        }\n    },\n    \"Other\": {\"k\":true}\n}"
    );
}

#[test]
fn duplicate_keys_resolve_like_python_last_value_first_position() {
    let doc = parse(
        r#"{"AppMetadata": {"k": {"client_id": "a", "environment": "e"}, "j": {"client_id": "j", "environment": "e"}, "k": {"client_id": "b", "environment": "e"}}}"#,
    );
    let md = doc.app_metadata();
    assert_eq!(md.len(), 2);
    assert_eq!((md[0].key.as_str(), md[0].client_id.as_str()), ("k", "b"));
    assert_eq!(md[1].key, "j");
}

// ---- exact preservation across a change ------------------------------------------------

const WITH_UNKNOWNS: &str = r#"{
    "AccessToken": {
        "k1": {
            "credential_type": "AccessToken",
            "secret": "SECRET-k1",
            "home_account_id": null,
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "target": "https://x/.default",
            "realm": "contoso",
            "token_type": "Bearer",
            "cached_at": "100",
            "x_ext": {
                "note": "caf\u00e9 \ud83d\ude00 café 😀 \/",
                "numbers": [1.0e3, -0, 123456789012345678901234567890, 1E-7, -0.0],
                "deep": {"compact":true,"nested":[{}, [ ]]},
                "empty": {}
            },
            "expires_on": 9999999999,
            "extended_expires_on": "9999999999"
        }
    },
    "Extra": {
        "ext-entry": {
            "b": [
                1,
                2.50
            ],
            "t": "\u00fc\/ü"
        }
    },
    "AppMetadata": {}
}"#;

#[test]
fn unknown_sections_fields_and_entries_survive_add_token_response_byte_for_byte() {
    let mut doc = parse(WITH_UNKNOWNS);
    assert_eq!(text(&doc), WITH_UNKNOWNS, "round trip first");
    let answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "login.microsoftonline.com",
        "contoso",
        &["https://y/.default"],
    );
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some(ALICE)
    );
    let out = text(&doc);

    // the untouched entry (with its nested unknown field) and the unknown section,
    // byte for byte
    assert!(out.contains(entry_text(WITH_UNKNOWNS, "k1")));
    let extra_start = WITH_UNKNOWNS.find("    \"Extra\": {").unwrap();
    let extra_end = WITH_UNKNOWNS.find("    \"AppMetadata\"").unwrap();
    let extra = &WITH_UNKNOWNS[extra_start..extra_end];
    assert!(out.contains(extra), "{out}");
    // the unknown field is still readable by the views and the entry still typed
    assert_eq!(at_by_key(&doc, "k1").expires_on, 9_999_999_999);

    // section order: existing ones in place, new ones appended as msal does
    let order: Vec<usize> = [
        "\"AccessToken\"",
        "\"Extra\"",
        "\"AppMetadata\"",
        "\"Account\"",
        "\"IdToken\"",
        "\"RefreshToken\"",
    ]
    .iter()
    .map(|s| out.find(&format!("\n    {s}: ")).expect(s))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");

    // the result reads back to the same bytes
    assert_eq!(text(&parse(&out)), out);
}

#[test]
fn removing_an_entry_keeps_its_neighbours_byte_for_byte() {
    let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap();
    let mut doc = parse(src);
    let bob_at = doc.raw_entries(ACCESS_TOKEN)[1].key.to_owned();
    let alice_at = doc.raw_entries(ACCESS_TOKEN)[0].key.to_owned();
    assert!(doc.remove_access_token(&bob_at));
    assert!(!doc.remove_access_token(&bob_at));
    let out = text(&doc);
    let expected = src.replacen(&format!(",\n{}", entry_text(src, &bob_at)), "", 1);
    assert_eq!(out, expected);
    assert!(out.contains(entry_text(src, &alice_at)));
}

// ---- malformed documents ---------------------------------------------------------------

fn parse_error(input: &[u8]) -> String {
    CacheDocument::parse(input)
        .expect_err("must not parse")
        .to_string()
}

#[test]
fn malformed_documents_give_errors_that_name_the_problem_without_secrets() {
    let not_json = parse_error(b"{\"AccessToken\": SECRET-bare}");
    assert!(
        not_json.starts_with("the token cache is not valid JSON: "),
        "{not_json}"
    );
    assert!(not_json.contains("line 1 column"), "{not_json}");

    let array = parse_error(b"[{\"secret\": \"SECRET-in-array\"}]");
    assert_eq!(array, "the top level is not a JSON object");
    assert_eq!(
        parse_error(b"\"SECRET-top\""),
        "the top level is not a JSON object"
    );

    let string = parse_error(b"{\n    \"AccessToken\": \"SECRET-string\"\n}");
    assert_eq!(
        string,
        "section \"AccessToken\" is not a JSON object of entries (line 2 column 20)"
    );
    let null = parse_error(b"{\"RefreshToken\": null}");
    assert!(
        null.starts_with("section \"RefreshToken\" is not a JSON object"),
        "{null}"
    );

    let number = parse_error(b"{\"IdToken\": {\"k-1\": 42, \"k-2\": \"SECRET-x\"}}");
    assert_eq!(
        number,
        "section \"IdToken\" entry \"k-1\": not a JSON object (line 1 column 21)"
    );

    let truncated = parse_error(&SAMPLE[..SAMPLE.len() / 2]);
    assert!(truncated.contains("EOF while parsing"), "{truncated}");
    assert!(truncated.contains("line "), "{truncated}");

    let not_utf8 = parse_error(b"{\"a\": \"\xff\"}");
    assert_eq!(
        not_utf8,
        "the token cache is not UTF-8 text (invalid byte at offset 7)"
    );

    for message in [&not_json, &array, &string, &null, &number, &truncated] {
        assert!(!message.contains("SECRET"), "{message}");
        assert!(!message.contains("fake-"), "{message}");
    }
}

#[test]
fn parse_never_panics_on_truncated_or_mutated_documents() {
    for end in 0..=SAMPLE.len() {
        let _ = CacheDocument::parse(&SAMPLE[..end]);
    }
    const SMALL: &[u8] = br#"{"AccessToken": {"k": {"secret": "s", "home_account_id": null, "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "1", "expires_on": 2}}, "X": [{"y": "\u00e9"}], "Account": {"a": {"home_account_id": "h", "environment": "e", "realm": "r"}}, "IdToken": {}, "RefreshToken": {"r": {"secret": "s", "home_account_id": "h", "environment": "e", "client_id": "c", "family_id": "1"}}, "AppMetadata": {"m": {"client_id": "c", "environment": "e"}}}"#;
    assert_eq!(CacheDocument::parse(SMALL).unwrap().skipped(), []);
    for i in 0..SMALL.len() {
        for b in [
            b'{', b'}', b'[', b'"', b'\\', b',', b':', b'1', b' ', 0xff, 0,
        ] {
            let mut bytes = SMALL.to_vec();
            bytes[i] = b;
            if let Ok(doc) = CacheDocument::parse(&bytes) {
                let out = doc.to_vec();
                let again = CacheDocument::parse(&out).expect("our output parses");
                assert_eq!(again.to_vec(), out);
                let _ = (doc.accounts(), doc.access_tokens(), doc.refresh_tokens());
                let _ = (doc.id_tokens(), doc.app_metadata(), doc.skipped());
            }
        }
    }
}

// ---- views -------------------------------------------------------------------------------

#[test]
fn views_read_the_real_files() {
    let doc = CacheDocument::parse(AZID_AFTER_REFRESH).unwrap();
    let accounts = doc.accounts();
    assert_eq!(accounts.len(), 3);
    assert_eq!(accounts[0].username, "alice@contoso.com");
    let raw_accounts = doc.raw_entries(ACCOUNT);
    assert_eq!(
        raw_accounts[0].str("local_account_id").as_deref(),
        Some(ALICE_UID)
    );
    assert_eq!(
        raw_accounts[2].str("realm").as_deref(),
        Some("organizations")
    );
    assert_eq!(accounts[2].username, "");
    assert_eq!(raw_accounts[2].str("local_account_id"), None);
    let rts = doc.refresh_tokens();
    assert_eq!(rts.len(), 2);
    assert_eq!(rts[0].family_id.as_deref(), Some("1"));
    let raw_rt = doc.raw_entries(REFRESH_TOKEN)[0];
    assert_eq!(raw_rt.time("last_modification_time"), Some(1_795_324_146));
    assert_eq!(
        raw_rt.str("target").as_deref(),
        Some("https://resource.test/.default")
    );
    assert_eq!(doc.access_tokens().len(), 3);
    let ids = doc.id_tokens();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        (ids[1].environment.as_str(), ids[1].realm.as_str()),
        ("127.0.0.1", "fabrikam")
    );
    assert_eq!(ids[1].client_id, CLI);
    assert_eq!(doc.app_metadata()[0].family_id.as_deref(), Some("1"));

    let app = CacheDocument::parse(APP_ONLY).unwrap();
    let at = &app.access_tokens()[0];
    assert_eq!(at.home_account_id, None);
    assert_eq!(at.expires_on, 1_795_327_728);
    let raw_at = app.raw_entries(ACCESS_TOKEN)[0];
    assert_eq!(raw_at.time("extended_expires_on"), Some(1_795_327_728));
    assert_eq!(at.refresh_on, None);
    assert_eq!(app.app_metadata()[0].family_id, None);
}

#[test]
fn views_skip_odd_entries_and_report_why() {
    let doc = parse(
        r#"{
    "AccessToken": {
        "good-number-times": {"secret": "SECRET-1", "home_account_id": "", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": 10, "expires_on": 20.0, "refresh_on": "soon"},
        "no-expiry": {"secret": "SECRET-2", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10"},
        "word-expiry": {"secret": "SECRET-3", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10", "expires_on": "SECRET-soon"},
        "negative": {"secret": "SECRET-4", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10", "expires_on": -5}
    },
    "RefreshToken": {
        "numeric-secret": {"secret": 12345, "home_account_id": "h", "environment": "e", "client_id": "c"},
        "minimal": {"secret": "SECRET-5", "home_account_id": null, "environment": "e", "client_id": "c", "family_id": 1, "last_modification_time": "x"}
    },
    "Account": {
        "no-hid": {"environment": "e", "realm": "r", "username": "u"},
        "ok": {"home_account_id": "h", "environment": "e", "realm": "r"}
    },
    "IdToken": {"array": {"secret": ["SECRET-6"], "environment": "e", "realm": "r", "client_id": "c"}},
    "AppMetadata": {"ok": {"client_id": "c", "environment": "e", "family_id": null}}
}"#,
    );
    let ats = doc.access_tokens();
    assert_eq!(ats.len(), 1);
    let raw_at = doc.raw_entries(ACCESS_TOKEN)[0];
    assert_eq!(raw_at.key, "good-number-times");
    assert_eq!(
        (raw_at.time("cached_at"), ats[0].expires_on),
        (Some(10), 20)
    );
    assert_eq!(ats[0].home_account_id, None, "empty id = app-only");
    assert_eq!(ats[0].token_type, "Bearer");
    assert_eq!(
        ats[0].refresh_on, None,
        "a malformed optional time is ignored"
    );

    let rts = doc.refresh_tokens();
    assert_eq!(rts.len(), 1);
    assert_eq!(rts[0].home_account_id, "");
    let raw_rt = doc.raw_entries(REFRESH_TOKEN)[0];
    assert_eq!(
        (
            rts[0].family_id.clone(),
            raw_rt.time("last_modification_time")
        ),
        (None, None)
    );
    // Read without a target (it is informational).
    assert_eq!(raw_rt.str("target"), None);

    let accounts = doc.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(
        (
            accounts[0].username.as_str(),
            doc.raw_entries(ACCOUNT)[0].str("local_account_id")
        ),
        ("", None)
    );
    assert!(doc.id_tokens().is_empty());
    assert_eq!(doc.app_metadata().len(), 1);

    let skipped: Vec<String> = doc.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "section \"AccessToken\" entry \"no-expiry\": field \"expires_on\" is missing",
            "section \"AccessToken\" entry \"word-expiry\": field \"expires_on\" is not a decimal string",
            "section \"AccessToken\" entry \"negative\": field \"expires_on\" is out of range",
            "section \"RefreshToken\" entry \"numeric-secret\": field \"secret\" is not a string",
            "section \"Account\" entry \"no-hid\": field \"home_account_id\" is missing",
            "section \"IdToken\" entry \"array\": field \"secret\" is not a string",
        ]
    );
    assert!(skipped.iter().all(|s| !s.contains("SECRET")));
}

#[test]
fn debug_of_every_view_and_of_the_document_contains_no_secret() {
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let answer = Answer::app("app", "login.microsoftonline.com", "t", &["s"]);
    doc.add_token_response(&answer.tokens());
    let debug = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        doc,
        doc.accounts(),
        doc.refresh_tokens(),
        doc.access_tokens(),
        doc.id_tokens(),
        doc.app_metadata(),
        answer.tokens(),
    );
    assert!(debug.contains("Secret(***)"));
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(!debug.contains("eyJ"), "{debug}");
    assert!(
        !debug.contains("_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv"),
        "{debug}"
    );
}

// ---- searches ----------------------------------------------------------------------------

fn search_fixture() -> CacheDocument {
    let mut doc = CacheDocument::empty();
    let alice = (ALICE_UID, ALICE_UTID);
    for answer in [
        Answer::user(
            alice,
            "alice@contoso.com",
            "login.microsoftonline.com",
            "contoso",
            &[
                "https://graph.microsoft.com/User.Read",
                "https://graph.microsoft.com/Mail.Read",
            ],
        ),
        Answer::app(
            "app-1",
            "login.windows.net",
            "contoso",
            &["https://graph.microsoft.com/.default"],
        ),
        Answer::app(
            "app-1",
            "login.windows.net",
            "contoso",
            &["https://graph.microsoft.com/User.Read"],
        ),
        Answer::user(
            alice,
            "alice@contoso.com",
            "login.chinacloudapi.cn",
            "contoso",
            &["https://graph.microsoft.com/User.Read"],
        ),
        {
            let mut pop = Answer::app(
                "app-1",
                "login.windows.net",
                "contoso",
                &["https://pop/.default"],
            );
            pop.token_type = "pop".to_owned();
            pop
        },
    ] {
        doc.add_token_response(&answer.tokens());
    }
    assert_eq!(doc.access_tokens().len(), 5);
    doc
}

/// What `find_access_tokens` finds, as `environment|client_id|target`; checks on the way that
/// `find_access_token_keys` names the same entries in the same order.
fn find(doc: &CacheDocument, q: &AccessTokenQuery<'_>) -> Vec<String> {
    let found = doc.find_access_tokens(q);
    let keys = doc.find_access_token_keys(q);
    assert_eq!(keys.len(), found.len());
    for (key, t) in keys.iter().zip(&found) {
        assert_eq!(
            at_by_key(doc, key).secret.expose_secret(),
            t.secret.expose_secret()
        );
    }
    found
        .into_iter()
        .map(|t| format!("{}|{}|{}", t.environment, t.client_id, t.target))
        .collect()
}

#[test]
fn find_access_tokens_matches_requested_scopes_as_a_case_insensitive_subset() {
    let doc = search_fixture();
    let mut q = AccessTokenQuery {
        home_account_id: Some(Some(ALICE)),
        environments: PUBLIC,
        client_id: Some(CLI),
        realm: Some("CONTOSO"),
        scopes: &scopes(&["https://graph.microsoft.com/user.read"]),
    };
    let both = "login.microsoftonline.com|04b07795-8ddb-461a-bbee-02f9e1bf7b46|https://graph.microsoft.com/Mail.Read https://graph.microsoft.com/User.Read";
    assert_eq!(find(&doc, &q), [both]);
    let s = scopes(&[
        "HTTPS://GRAPH.MICROSOFT.COM/MAIL.READ",
        "https://graph.microsoft.com/User.Read",
    ]);
    q.scopes = &s;
    assert_eq!(find(&doc, &q), [both]);
    let s = scopes(&[
        "https://graph.microsoft.com/User.Read",
        "https://graph.microsoft.com/Files.Read",
    ]);
    q.scopes = &s;
    assert!(find(&doc, &q).is_empty());
    let s = scopes(&["https://graph.microsoft.com/User"]);
    q.scopes = &s;
    assert!(find(&doc, &q).is_empty(), "whole scopes only, no prefixes");
    q.scopes = &[];
    assert_eq!(find(&doc, &q), [both], "no scopes: any target");
}

#[test]
fn find_access_tokens_separates_app_only_and_account_tokens() {
    let doc = search_fixture();
    let s = scopes(&["https://graph.microsoft.com/User.Read"]);
    let mut q = AccessTokenQuery {
        home_account_id: Some(None),
        environments: PUBLIC,
        client_id: None,
        realm: None,
        scopes: &s,
    };
    assert_eq!(
        find(&doc, &q),
        ["login.windows.net|app-1|https://graph.microsoft.com/User.Read"]
    );
    q.home_account_id = Some(Some(ALICE));
    assert_eq!(find(&doc, &q).len(), 1);
    assert!(find(&doc, &q)[0].starts_with("login.microsoftonline.com|04b07795"));
    q.home_account_id = Some(Some("someone.else"));
    assert!(find(&doc, &q).is_empty());
    q.home_account_id = None;
    assert_eq!(find(&doc, &q).len(), 2);
    q.client_id = Some("app-1");
    assert_eq!(find(&doc, &q).len(), 1);
    q.realm = Some("fabrikam");
    assert!(find(&doc, &q).is_empty());
}

#[test]
fn find_access_tokens_accepts_host_aliases_and_skips_non_bearer_tokens() {
    let doc = search_fixture();
    let mut q = AccessTokenQuery {
        home_account_id: None,
        environments: &["LOGIN.WINDOWS.NET"],
        client_id: Some("app-1"),
        realm: Some("contoso"),
        scopes: &[],
    };
    assert_eq!(find(&doc, &q).len(), 2, "pop token excluded");
    q.environments = &["login.chinacloudapi.cn", "login.partner.microsoftonline.cn"];
    q.client_id = None;
    assert_eq!(
        find(&doc, &q),
        [
            "login.chinacloudapi.cn|04b07795-8ddb-461a-bbee-02f9e1bf7b46|https://graph.microsoft.com/User.Read"
        ]
    );
    q.environments = &[];
    assert!(find(&doc, &q).is_empty(), "no accepted host, no match");
    assert_eq!(
        doc.access_tokens()
            .iter()
            .filter(|t| t.token_type == "pop")
            .count(),
        1,
        "the view still shows it"
    );
}

// msal 1.39 keeps tokens asked for with extra body parameters (an FMI path) apart, under an
// `ext_cache_key`, and finds them only for queries with the same key.
#[test]
fn access_tokens_kept_under_an_ext_cache_key_are_not_found() {
    let doc = parse(
        r#"{
    "AccessToken": {
        "-login.microsoftonline.com-atext-app-1-contoso-api://x/.default-abc": {
            "credential_type": "AccessToken", "secret": "FMI-TOKEN", "home_account_id": null,
            "environment": "login.microsoftonline.com", "client_id": "app-1", "realm": "contoso",
            "target": "api://x/.default", "token_type": "Bearer", "cached_at": "1795324123",
            "expires_on": "4102444800", "ext_cache_key": "abc"
        }
    }
}"#,
    );
    let q = AccessTokenQuery {
        home_account_id: Some(None),
        environments: PUBLIC,
        client_id: Some("app-1"),
        realm: Some("contoso"),
        scopes: &scopes(&["api://x/.default"]),
    };
    assert!(find(&doc, &q).is_empty());
}

// msal tries refresh tokens newest first: one that failed stays in a shared file, and an old
// one first in the file would cost a failed request on every renewal.
#[test]
fn refresh_tokens_are_found_newest_first() {
    let doc = parse(
        r#"{
    "RefreshToken": {
        "old": {"secret": "OLD", "home_account_id": "h", "environment": "login.microsoftonline.com", "client_id": "a", "family_id": "1", "last_modification_time": "1600000000"},
        "undated": {"secret": "UNDATED", "home_account_id": "h", "environment": "login.microsoftonline.com", "client_id": "b", "family_id": "1"},
        "new": {"secret": "NEW", "home_account_id": "h", "environment": "login.microsoftonline.com", "client_id": "c", "family_id": "1", "last_modification_time": 1795324146},
        "mid": {"secret": "MID", "home_account_id": "h", "environment": "login.microsoftonline.com", "client_id": "d", "family_id": "1", "last_modification_time": "1700000000"}
    }
}"#,
    );
    let q = RefreshTokenQuery {
        home_account_id: "h",
        environments: PUBLIC,
        client_id: None,
        family_only: true,
    };
    let order: Vec<String> = doc
        .find_refresh_tokens(&q)
        .into_iter()
        .map(|t| t.secret.expose_secret().to_owned())
        .collect();
    assert_eq!(order, ["NEW", "MID", "OLD", "UNDATED"]);
}

#[test]
fn find_refresh_tokens_filters_family_tokens_clients_and_hosts_but_not_targets() {
    let mut doc = CacheDocument::empty();
    let alice = (ALICE_UID, ALICE_UTID);
    let foci = Answer::user(
        alice,
        "a@c",
        "login.microsoftonline.com",
        "contoso",
        &["https://a/.default"],
    );
    let mut own = Answer::user(
        alice,
        "a@c",
        "login.windows.net",
        "contoso",
        &["https://b/.default"],
    );
    own.client_id = "own-app".to_owned();
    own.foci = None;
    let mut bob = Answer::user(
        (BOB_UID, BOB_UTID),
        "b@f",
        "login.microsoftonline.com",
        "fabrikam",
        &["https://a/.default"],
    );
    bob.client_id = "own-app".to_owned();
    for a in [&foci, &own, &bob] {
        doc.add_token_response(&a.tokens());
    }
    let mut q = RefreshTokenQuery {
        home_account_id: ALICE,
        environments: PUBLIC,
        client_id: None,
        family_only: false,
    };
    let clients = |doc: &CacheDocument, q: &RefreshTokenQuery<'_>| -> Vec<String> {
        doc.find_refresh_tokens(q)
            .into_iter()
            .map(|t| t.client_id)
            .collect()
    };
    assert_eq!(clients(&doc, &q), [CLI, "own-app"]);
    q.family_only = true;
    assert_eq!(clients(&doc, &q), [CLI]);
    q.family_only = false;
    q.client_id = Some("own-app");
    assert_eq!(clients(&doc, &q), ["own-app"]);
    q.environments = &["login.microsoftonline.com"];
    assert!(clients(&doc, &q).is_empty());
    q.home_account_id = "nobody";
    q.client_id = None;
    assert!(clients(&doc, &q).is_empty());
}

// ---- recording answers -----------------------------------------------------------------

/// The secrets of an msal file, so that our writer can be compared with msal's.
fn secrets_of(doc: &CacheDocument, hid: &str) -> (Secret, Secret, Secret) {
    let at = doc
        .access_tokens()
        .into_iter()
        .find(|t| t.home_account_id.as_deref() == Some(hid))
        .unwrap();
    let rt = doc
        .refresh_tokens()
        .into_iter()
        .find(|t| t.home_account_id == hid)
        .unwrap();
    let idt = doc
        .id_tokens()
        .into_iter()
        .find(|t| t.home_account_id == hid)
        .unwrap();
    (at.secret, rt.secret, idt.secret)
}

#[test]
fn a_user_grant_writes_what_msal_writes_apart_from_account_source() {
    let msal = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let mut doc = CacheDocument::empty();
    for ((uid, utid), realm, cached_at) in [
        ((ALICE_UID, ALICE_UTID), "contoso", 1_795_324_123),
        ((BOB_UID, BOB_UTID), "fabrikam", 1_795_324_124),
    ] {
        let hid = format!("{uid}.{utid}");
        let (at, rt, idt) = secrets_of(&msal, &hid);
        let mut answer = Answer::user(
            (uid, utid),
            "unused",
            "127.0.0.1",
            realm,
            &["https://resource.test/.default"],
        );
        answer.access_token = at;
        answer.refresh_token = Some(rt);
        answer.id_token = Some(idt);
        answer.cached_at = cached_at;
        assert_eq!(doc.add_token_response(&answer.tokens()), Some(hid));
    }
    let expected = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replace(
        ",\n            \"account_source\": \"authorization_code\"",
        "",
    );
    assert_eq!(text(&doc), expected);
}

#[test]
fn an_app_only_grant_writes_exactly_what_msal_writes() {
    let msal = CacheDocument::parse(APP_ONLY).unwrap();
    let mut answer = Answer::app(
        "11111111-1111-1111-1111-111111111111",
        "127.0.0.1",
        "contoso",
        &["https://resource.test/.default"],
    );
    answer.access_token = msal.access_tokens()[0].secret.clone();
    let mut doc = CacheDocument::empty();
    assert_eq!(doc.add_token_response(&answer.tokens()), None);
    assert_eq!(doc.to_vec(), APP_ONLY);
}

#[test]
fn a_refresh_without_id_token_updates_the_redeemed_token_in_place_and_adds_no_empty_account() {
    // What azure-identity did to msal-two-accounts.json (see azid-after-refresh.json),
    // minus its empty-username Account.
    let before = std::str::from_utf8(TWO_ACCOUNTS).unwrap();
    let azid = std::str::from_utf8(AZID_AFTER_REFRESH).unwrap();
    let azid_doc = parse(azid);
    let org_at_key =
        format!("{ALICE}-127.0.0.1-accesstoken-{CLI}-organizations-https://other.test/.default");
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");

    let mut doc = parse(before);
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "",
        "127.0.0.1",
        "organizations",
        &["https://other.test/.default"],
    );
    answer.access_token = at_by_key(&azid_doc, &org_at_key).secret;
    answer.refresh_token = Some(rt_by_key(&azid_doc, &rt_key).secret);
    answer.id_token = None;
    answer.cached_at = 1_795_324_146;
    answer.replaces = Some(rt_key.clone());
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some(ALICE)
    );

    let bob_at_key = doc.raw_entries(ACCESS_TOKEN)[1].key.to_owned();
    let bob_at = entry_text(before, &bob_at_key);
    let old_rt = rt_by_key(&parse(before), &rt_key);
    let expected = before
        .replacen(
            bob_at,
            &format!("{bob_at},\n{}", entry_text(azid, &org_at_key)),
            1,
        )
        .replacen(
            old_rt.secret.expose_secret(),
            rt_by_key(&azid_doc, &rt_key).secret.expose_secret(),
            1,
        )
        .replacen(
            "\"last_modification_time\": \"1795324123\"",
            "\"last_modification_time\": \"1795324146\"",
            1,
        );
    assert_eq!(text(&doc), expected);
    assert_eq!(doc.accounts().len(), 2);
    assert_eq!(doc.refresh_tokens().len(), 2);
}

#[test]
fn rotation_with_the_same_key_updates_in_place_keeping_target_and_unknown_fields() {
    let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replacen(
        "\"target\": \"https://resource.test/.default\",\n            \"last_modification_time\": \"1795324123\"",
        "\"target\": \"https://Resource.test/.default\",\n            \"x_custom\": [1, 2],\n            \"last_modification_time\": \"1795324123\"",
        1,
    );
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let mut doc = parse(&src);
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://resource.test/.default"],
    );
    answer.refresh_token = Some(Secret::new("SECRET-rotated"));
    answer.replaces = Some(rt_key.clone());
    answer.cached_at = 1_795_330_000;
    doc.add_token_response(&answer.tokens());
    let out = text(&doc);
    let entry = entry_text(&out, &rt_key);
    assert!(entry.contains("\"target\": \"https://Resource.test/.default\",\n            \"x_custom\": [1, 2],\n            \"last_modification_time\": \"1795330000\""), "{entry}");
    assert!(entry.contains("\"secret\": \"SECRET-rotated\""));
    assert_eq!(doc.refresh_tokens().len(), 2);
    assert_eq!(doc.refresh_tokens()[0].key, rt_key, "same position");
}

/// A refresh grant answered without client_info or an id token (ADFS; providers without
/// MSAL's client_info) still belongs to the account whose refresh token it redeemed: the
/// refresh token is rotated and the access token is that account's, not an app-only one.
#[test]
fn a_refresh_answer_naming_no_account_rotates_the_redeemed_refresh_token() {
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let accounts = doc.accounts().len();
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://other.test/.default"],
    );
    answer.client_info = None;
    answer.id_token = None;
    answer.refresh_token = Some(Secret::new("SECRET-rotated"));
    answer.replaces = Some(rt_key.clone());
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some(ALICE)
    );
    let rt = rt_by_key(&doc, &rt_key);
    assert_eq!(rt.secret.expose_secret(), "SECRET-rotated");
    let at_key = format!("{ALICE}-127.0.0.1-accesstoken-{CLI}-contoso-https://other.test/.default");
    assert_eq!(
        at_by_key(&doc, &at_key).home_account_id.as_deref(),
        Some(ALICE)
    );
    assert_eq!(doc.accounts().len(), accounts, "no account written");

    // Without a refresh token to go by, no account is known. This was once written as an
    // app-only token; but it is the user's token (a user's grant), and an application
    // credential with the same client id would take it as its own: nothing is written.
    let mut unknown = answer;
    unknown.replaces = None;
    unknown.access_token = Secret::new("SECRET-whose");
    assert_eq!(doc.add_token_response(&unknown.tokens()), None);
    assert!(
        doc.access_tokens()
            .iter()
            .all(|t| t.secret.expose_secret() != "SECRET-whose")
    );
}

/// A user's grant answered without client_info or an id token (a sign-in without `openid`
/// or `profile`; AD FS), not a refresh: its access token is the user's, yet it names no
/// account. Filed as app-only, a client-credentials credential with the same client id and
/// tenant would find it and act as the user; it is not written (the caller still gets it).
#[test]
fn a_user_grant_naming_no_account_is_not_written_as_an_app_only_token() {
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "login.microsoftonline.com",
        "contoso",
        &["https://resource.test/.default"],
    );
    answer.client_info = None;
    answer.id_token = None;
    answer.replaces = None;
    assert_eq!(doc.add_token_response(&answer.tokens()), None);
    let app_only = doc.find_access_tokens(&AccessTokenQuery {
        home_account_id: Some(None),
        environments: PUBLIC,
        client_id: Some(CLI),
        realm: Some("contoso"),
        scopes: &scopes(&["https://resource.test/.default"]),
    });
    assert!(app_only.is_empty(), "{} app-only token(s)", app_only.len());
    assert!(doc.access_tokens().is_empty());
    assert!(doc.refresh_tokens().is_empty());
    assert!(doc.accounts().is_empty());
    assert_eq!(doc.app_metadata().len(), 1);

    // The same answer to the application's own grant is app-only, as msal writes it.
    answer.user_grant = false;
    answer.refresh_token = None;
    assert_eq!(doc.add_token_response(&answer.tokens()), None);
    assert_eq!(doc.access_tokens().len(), 1);
}

#[test]
fn rotation_with_a_different_key_leaves_a_single_refresh_token_holding_the_new_secret() {
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let old_secret = rt_by_key(&doc, &rt_key).secret;
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://other.test/.default"],
    );
    answer.refresh_token = Some(Secret::new("SECRET-rotated"));
    answer.replaces = Some(rt_key.clone());
    doc.add_token_response(&answer.tokens());
    let alice_rts = doc.find_refresh_tokens(&RefreshTokenQuery {
        home_account_id: ALICE,
        environments: &["127.0.0.1"],
        client_id: None,
        family_only: false,
    });
    assert_eq!(alice_rts.len(), 1);
    assert_eq!(alice_rts[0].secret.expose_secret(), "SECRET-rotated");
    assert_eq!(alice_rts[0].key, rt_key, "updated in place, as msal does");
    let raw_rt = doc.raw_entries(REFRESH_TOKEN);
    let raw_rt = raw_rt.iter().find(|e| e.key == rt_key).unwrap();
    assert_eq!(
        raw_rt.str("target").as_deref(),
        Some("https://resource.test/.default")
    );
    assert!(!text(&doc).contains(old_secret.expose_secret()));
}

/// What msal's `remove_account` does: every Account, refresh, access and id token of the
/// account removed.
fn sign_out(doc: &mut CacheDocument, hid: &str) {
    for section in [ACCESS_TOKEN, REFRESH_TOKEN, ID_TOKEN, ACCOUNT] {
        let keys: Vec<String> = doc
            .raw_entries(section)
            .iter()
            .filter(|e| e.str("home_account_id").as_deref() == Some(hid))
            .map(|e| e.key.to_owned())
            .collect();
        assert!(!keys.is_empty(), "{section}");
        for key in keys {
            assert!(doc.remove_entry(section, &key));
        }
    }
}

/// Another application signed Alice out (msal's `remove_account`) while our refresh of her
/// token was in flight: the answer, recorded under the lock after the sign-out, brings back
/// neither her Account nor any of her tokens (msal honours the sign-out for the Account
/// only).
#[test]
fn a_refresh_answer_after_a_concurrent_sign_out_brings_nothing_of_the_account_back() {
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    sign_out(&mut doc, ALICE);
    let signed_out = text(&doc);
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://resource.test/.default"],
    );
    answer.refresh_token = Some(Secret::new("SECRET-rotated"));
    answer.replaces = Some(rt_key.clone());
    assert_eq!(doc.add_token_response(&answer.tokens()), None);
    let alice = Some(ALICE.to_owned());
    assert!(doc.accounts().iter().all(|a| a.home_account_id != ALICE));
    assert!(
        doc.refresh_tokens()
            .iter()
            .all(|t| t.home_account_id != ALICE)
    );
    assert!(
        doc.access_tokens()
            .iter()
            .all(|t| t.home_account_id != alice)
    );
    assert!(doc.id_tokens().iter().all(|t| t.home_account_id != ALICE));
    assert_eq!(
        text(&doc),
        signed_out,
        "Bob's entries and the AppMetadata as they were"
    );

    // With only the Account gone (the refresh token left), the refresh token rotates but
    // no Account is created: a refresh never creates one.
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let account_key = doc.raw_entries(ACCOUNT)[0].key.to_owned();
    assert!(account_key.starts_with(ALICE));
    assert!(doc.remove_entry(ACCOUNT, &account_key));
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some(ALICE)
    );
    assert_eq!(
        rt_by_key(&doc, &rt_key).secret.expose_secret(),
        "SECRET-rotated"
    );
    assert!(doc.accounts().iter().all(|a| a.home_account_id != ALICE));
    // With only the refresh token gone (Entra rejected it elsewhere), the account is still
    // signed in: a new refresh token is written.
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let stored = rt_by_key(&doc, &rt_key).secret.clone();
    assert!(doc.remove_refresh_token(&rt_key, &stored));
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some(ALICE)
    );
    assert_eq!(
        rt_by_key(&doc, &rt_key).secret.expose_secret(),
        "SECRET-rotated"
    );
    // A key read from the other document (the CAE one, say) was never in this one: no
    // sign-out, and the account is written here as for a sign-in.
    let mut doc = CacheDocument::empty();
    let mut tokens = answer.tokens();
    tokens.replaces_read_here = false;
    assert_eq!(doc.add_token_response(&tokens).as_deref(), Some(ALICE));
    assert_eq!(doc.accounts().len(), 1);
    assert_eq!(doc.refresh_tokens().len(), 1);
}

#[test]
fn rotation_writes_a_new_entry_when_the_redeemed_one_is_gone_or_of_another_account() {
    let bob_rt = format!(
        "{BOB_UID}.{BOB_UTID}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default"
    );
    let alice_rt = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let new_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://other.test/.default");

    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let secret = rt_by_key(&doc, &alice_rt).secret;
    assert!(doc.remove_refresh_token(&alice_rt, &secret));
    assert!(!doc.remove_refresh_token(&alice_rt, &secret));
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://other.test/.default"],
    );
    answer.replaces = Some(alice_rt.clone());
    doc.add_token_response(&answer.tokens());
    let keys: Vec<String> = doc.refresh_tokens().into_iter().map(|t| t.key).collect();
    assert_eq!(keys, [bob_rt.clone(), new_key.clone()]);

    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    answer.replaces = Some(bob_rt);
    doc.add_token_response(&answer.tokens());
    let keys: Vec<String> = doc.refresh_tokens().into_iter().map(|t| t.key).collect();
    assert_eq!(
        keys,
        [alice_rt, new_key],
        "another account's entry is removed, not hijacked"
    );
}

#[test]
fn a_new_sign_in_replaces_the_refresh_token_with_the_same_key_whole() {
    let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replacen(
        "\"last_modification_time\": \"1795324123\",",
        "\"last_modification_time\": \"1795324123\",\n            \"x_custom\": 1,",
        1,
    );
    let mut doc = parse(&src);
    let answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://resource.test/.default"],
    );
    doc.add_token_response(&answer.tokens());
    let out = text(&doc);
    assert!(!out.contains("x_custom"));
    assert_eq!(
        doc.refresh_tokens()[0].secret.expose_secret(),
        "SECRET-user-refresh-token"
    );
    assert_eq!(doc.refresh_tokens().len(), 2);
}

#[test]
fn foci_sets_family_id_on_the_refresh_token_and_app_metadata() {
    let alice = (ALICE_UID, ALICE_UTID);
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::user(alice, "a@c", "login.microsoftonline.com", "contoso", &["s"]);
    answer.foci = None;
    doc.add_token_response(&answer.tokens());
    assert_eq!(doc.refresh_tokens()[0].family_id, None);
    assert_eq!(doc.app_metadata()[0].family_id, None);
    assert!(!text(&doc).contains("family_id"));

    // a rotation whose answer has foci marks the redeemed entry as a family token
    answer.foci = Some("1".to_owned());
    answer.replaces = Some(doc.refresh_tokens()[0].key.clone());
    doc.add_token_response(&answer.tokens());
    assert_eq!(doc.refresh_tokens()[0].family_id.as_deref(), Some("1"));
    assert_eq!(doc.app_metadata()[0].family_id.as_deref(), Some("1"));
    assert!(text(&doc).ends_with(
        "\"environment\": \"login.microsoftonline.com\",\n            \"family_id\": \"1\"\n        }\n    }\n}"
    ));
}

#[test]
fn an_existing_account_keeps_its_other_fields_when_signed_in_again() {
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice.new@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://resource.test/.default"],
    );
    doc.add_token_response(&answer.tokens());
    let out = text(&doc);
    assert!(out.contains("\"username\": \"alice.new@contoso.com\",\n            \"authority_type\": \"MSSTS\",\n            \"account_source\": \"authorization_code\""));
    assert_eq!(doc.accounts().len(), 2);
}

#[test]
fn an_answer_without_id_token_creates_an_account_only_when_none_exists() {
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "",
        "login.microsoftonline.com",
        "organizations",
        &["s"],
    );
    answer.id_token = None;
    doc.add_token_response(&answer.tokens());
    let accounts = doc.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].username, "");
    assert_eq!(
        doc.raw_entries(ACCOUNT)[0]
            .str("local_account_id")
            .as_deref(),
        Some(ALICE_UID)
    );
    assert!(doc.id_tokens().is_empty());
    // a second one in another realm does not add another empty account
    answer.realm = "contoso".to_owned();
    doc.add_token_response(&answer.tokens());
    assert_eq!(doc.accounts().len(), 1);
    assert_eq!(doc.access_tokens().len(), 2);
}

#[test]
fn undecodable_client_info_and_id_tokens_never_panic_and_never_pass_for_app_only() {
    for client_info in [
        "",
        "!!!",
        "bm90IGpzb24",
        "WzFd",
        "eyJ1aWQiOjF9",
        "eyJ1aWQiOiJhIn0",
    ] {
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::app(CLI, "login.microsoftonline.com", "contoso", &["s"]);
        answer.client_info = Some(client_info.to_owned());
        answer.refresh_token = Some(Secret::new("SECRET-rt"));
        assert_eq!(
            doc.add_token_response(&answer.tokens()),
            None,
            "{client_info}"
        );
        assert!(doc.access_tokens().is_empty(), "{client_info}");
        assert!(doc.refresh_tokens().is_empty());
        assert_eq!(doc.app_metadata().len(), 1);
    }
    for id_token in [
        "",
        "garbage",
        "a.b.c",
        "a.WzFd.c",
        "a.eyJzdWIiOjF9.c",
        ".....",
    ] {
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "x",
            "login.microsoftonline.com",
            "contoso",
            &["s"],
        );
        answer.id_token = Some(Secret::new(id_token));
        assert_eq!(
            doc.add_token_response(&answer.tokens()).as_deref(),
            Some(ALICE)
        );
        let accounts = doc.accounts();
        assert_eq!(
            (
                accounts[0].username.as_str(),
                doc.raw_entries(ACCOUNT)[0].str("local_account_id")
            ),
            ("", Some(ALICE_UID.to_owned()))
        );
        assert_eq!(doc.id_tokens().len(), 1);
    }
    // without client_info the id token's sub names the account (msal's ADFS rule)
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::user(
        ("sub-1", "ignored"),
        "adfs-user",
        "adfs.contoso.com",
        "adfs",
        &["s"],
    );
    answer.client_info = None;
    assert_eq!(
        doc.add_token_response(&answer.tokens()).as_deref(),
        Some("sub-1")
    );
    let raw_account = doc.raw_entries(ACCOUNT)[0];
    assert_eq!(raw_account.str("authority_type").as_deref(), Some("ADFS"));
    assert_eq!(raw_account.key, "sub-1-adfs.contoso.com-adfs");
}

#[test]
fn keys_are_lower_cased_and_targets_sorted_except_app_metadata() {
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::user(
        ("UID", "UTID"),
        "u@x",
        "Login.Microsoftonline.com",
        "Contoso",
        &["https://b/Z", "https://a/Y", "offline_access"],
    );
    answer.client_id = "App-ID".to_owned();
    answer.refresh_on = Some(1_795_326_000);
    doc.add_token_response(&answer.tokens());
    let at = &doc.access_tokens()[0];
    assert_eq!(
        doc.raw_entries(ACCESS_TOKEN)[0].key,
        "uid.utid-login.microsoftonline.com-accesstoken-app-id-contoso-https://a/y https://b/z offline_access"
    );
    assert_eq!(at.target, "https://a/Y https://b/Z offline_access");
    assert_eq!(at.refresh_on, Some(1_795_326_000));
    assert_eq!(
        doc.refresh_tokens()[0].key,
        "uid.utid-login.microsoftonline.com-refreshtoken-app-id--https://a/y https://b/z offline_access"
    );
    assert_eq!(
        doc.id_tokens()[0].key,
        "uid.utid-login.microsoftonline.com-idtoken-app-id-contoso-"
    );
    assert_eq!(
        doc.raw_entries(ACCOUNT)[0].key,
        "uid.utid-login.microsoftonline.com-contoso"
    );
    assert_eq!(
        doc.app_metadata()[0].key,
        "appmetadata-Login.Microsoftonline.com-App-ID"
    );
    assert!(text(&doc).contains(
        "\"extended_expires_on\": \"1795327728\",\n            \"refresh_on\": \"1795326000\"\n"
    ));
}

#[test]
fn non_ascii_is_written_as_python_escapes() {
    let mut doc = CacheDocument::empty();
    let answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "jürgen@例え.jp😀",
        "login.microsoftonline.com",
        "contoso",
        &["s"],
    );
    doc.add_token_response(&answer.tokens());
    let out = text(&doc);
    assert!(out.is_ascii());
    // json.dumps({"username": "jürgen@例え.jp😀"}) in Python
    assert!(
        out.contains(r#""username": "j\u00fcrgen@\u4f8b\u3048.jp\ud83d\ude00""#),
        "{out}"
    );
    assert_eq!(doc.accounts()[0].username, "jürgen@例え.jp😀");
    assert_eq!(
        py_json_string("\u{7f}\u{0}\u{1f}\u{8}\u{c}\n\r\t\"\\/<>&+"),
        r#""\u007f\u0000\u001f\b\f\n\r\t\"\\/<>&+""#
    );
    assert_eq!(text(&parse(&out)), out);
}

#[test]
fn replacing_an_access_token_with_the_same_key_replaces_the_whole_entry_in_place() {
    let src = WITH_UNKNOWNS.replace(
        "\"k1\"",
        "\"-login.microsoftonline.com-accesstoken-c-contoso-https://x/.default\"",
    );
    let mut doc = parse(&src);
    let answer = Answer::app(
        "c",
        "login.microsoftonline.com",
        "contoso",
        &["https://x/.default"],
    );
    doc.add_token_response(&answer.tokens());
    let out = text(&doc);
    assert!(!out.contains("x_ext"), "msal replaces the whole entry");
    assert!(out.contains("\"Extra\""));
    let ats = doc.access_tokens();
    assert_eq!(ats.len(), 1);
    assert_eq!(ats[0].secret.expose_secret(), "SECRET-app-access-token");
    assert!(out.find("\"AccessToken\"").unwrap() < out.find("\"Extra\"").unwrap());
}

#[test]
fn remove_expired_access_tokens_removes_only_readable_expired_entries() {
    let mut doc = CacheDocument::empty();
    for (i, lifetime) in [100u64, 200, 300].into_iter().enumerate() {
        let mut a = Answer::app("c", "e", "r", &[&format!("s{i}")]);
        a.cached_at = 0;
        a.lifetime = lifetime;
        doc.add_token_response(&a.tokens());
    }
    let out = text(&doc).replacen("\"expires_on\": \"300\"", "\"expires_on\": \"later\"", 1);
    let mut doc = parse(&out);
    assert_eq!(doc.remove_expired_access_tokens(200), 2);
    assert_eq!(doc.remove_expired_access_tokens(200), 0);
    assert_eq!(
        doc.remove_expired_access_tokens(u64::MAX),
        0,
        "the unreadable entry stays"
    );
    assert!(text(&doc).contains("\"later\""));
    assert_eq!(CacheDocument::empty().remove_expired_access_tokens(1), 0);
}

// ---- cost of a read ----------------------------------------------------------------------

/// A document of `people` accounts, each with a family refresh token and an access token,
/// in msal's entry shapes (compact).
fn many_accounts(people: usize) -> String {
    let (mut ats, mut rts, mut accounts) = (Vec::new(), Vec::new(), Vec::new());
    for p in 0..people {
        let hid = format!("uid-{p}.utid");
        ats.push(format!(
            r#""{hid}-login.microsoftonline.com-accesstoken-{CLI}-contoso-s": {{"credential_type": "AccessToken", "secret": "at-{p}", "home_account_id": "{hid}", "environment": "login.microsoftonline.com", "client_id": "{CLI}", "target": "s", "realm": "contoso", "token_type": "Bearer", "cached_at": "1", "expires_on": "2", "extended_expires_on": "2"}}"#
        ));
        rts.push(format!(
            r#""{hid}-login.microsoftonline.com-refreshtoken-{CLI}--s": {{"credential_type": "RefreshToken", "secret": "rt-{p}", "home_account_id": "{hid}", "environment": "login.microsoftonline.com", "client_id": "{CLI}", "target": "s", "last_modification_time": "1", "family_id": "1"}}"#
        ));
        accounts.push(format!(
            r#""{hid}-login.microsoftonline.com-contoso": {{"home_account_id": "{hid}", "environment": "login.microsoftonline.com", "realm": "contoso", "local_account_id": "uid-{p}", "username": "user{p}@contoso.com", "authority_type": "MSSTS"}}"#
        ));
    }
    format!(
        r#"{{"AccessToken": {{{}}}, "RefreshToken": {{{}}}, "Account": {{{}}}}}"#,
        ats.join(", "),
        rts.join(", "),
        accounts.join(", ")
    )
}

/// The steps (name comparisons, bytes scanned for positions) of parsing `text` and making
/// every query the credentials make.
fn read_steps(text: &str) -> u64 {
    work::take();
    let doc = parse(text);
    let _ = (doc.accounts(), doc.refresh_tokens(), doc.access_tokens());
    let _ = (doc.id_tokens(), doc.app_metadata(), doc.skipped());
    let _ = doc.find_access_tokens(&AccessTokenQuery {
        home_account_id: Some(Some("uid-7.utid")),
        environments: PUBLIC,
        client_id: None,
        realm: None,
        scopes: &scopes(&["s"]),
    });
    let _ = doc.find_refresh_tokens(&RefreshTokenQuery {
        home_account_id: "uid-7.utid",
        environments: PUBLIC,
        client_id: None,
        family_only: true,
    });
    let _ = doc.accounts_with_family_refresh_tokens(PUBLIC);
    work::take()
}

#[test]
fn reading_takes_steps_linear_in_the_size_of_the_document() {
    /// A name, and a document of that shape with `n` members.
    type Shape = (&'static str, fn(usize) -> String);
    let shapes: [Shape; 5] = [
        ("accounts with tokens", many_accounts),
        ("fields of one entry", |n| {
            let fields: Vec<String> = (0..n).map(|i| format!(r#""f{i}": {i}"#)).collect();
            format!(r#"{{"AccessToken": {{"k": {{{}}}}}}}"#, fields.join(", "))
        }),
        ("unknown sections", |n| {
            let sections: Vec<String> = (0..n).map(|i| format!(r#""S{i}": [{i}]"#)).collect();
            format!("{{{}}}", sections.join(", "))
        }),
        ("entries with 100 distinct keys", |n| {
            let entries: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        r#""k{}": {{"client_id": "c{i}", "environment": "e"}}"#,
                        i % 100
                    )
                })
                .collect();
            format!(r#"{{"AppMetadata": {{{}}}}}"#, entries.join(", "))
        }),
        ("a known section repeated", |n| {
            let sections = vec![r#""AccessToken": {}"#; n];
            format!("{{{}}}", sections.join(",\n"))
        }),
    ];
    for (shape, make) in shapes {
        let small = read_steps(&make(1_000));
        let large = read_steps(&make(4_000));
        // Four times the input: about four times the steps if linear, sixteen if not.
        assert!(
            large <= small * 5,
            "{shape}: {small} steps for 1 000, {large} for 4 000"
        );
    }
}

/// Removing the expired access tokens a query finds is one pass over the section, not one
/// per token (it runs while the cache's lock file is held).
#[test]
fn removing_expired_access_tokens_found_takes_steps_linear_in_their_number() {
    fn expired_app_tokens(n: usize) -> String {
        let ats: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#""-login.microsoftonline.com-accesstoken-c-contoso-s s{i}": {{"credential_type": "AccessToken", "secret": "at-{i}", "home_account_id": null, "environment": "login.microsoftonline.com", "client_id": "c", "target": "s s{i}", "realm": "contoso", "token_type": "Bearer", "cached_at": "1", "expires_on": "2", "extended_expires_on": "2"}}"#
                )
            })
            .collect();
        format!(r#"{{"AccessToken": {{{}}}}}"#, ats.join(", "))
    }
    let steps = |n: usize| {
        let mut doc = parse(&expired_app_tokens(n));
        work::take();
        let removed = doc.remove_expired_access_tokens_found(
            &AccessTokenQuery {
                home_account_id: Some(None),
                environments: PUBLIC,
                client_id: Some("c"),
                realm: Some("contoso"),
                scopes: &scopes(&["s"]),
            },
            100,
        );
        assert_eq!(removed, n);
        assert!(doc.access_tokens().is_empty());
        work::take()
    };
    let (small, large) = (steps(2_500), steps(10_000));
    // Four times the tokens: about four times the steps if linear, sixteen if not.
    assert!(
        large <= small * 5,
        "{small} steps for 2 500, {large} for 10 000"
    );
}

#[test]
fn accounts_with_family_refresh_tokens_are_those_the_reference_selects() {
    let doc = parse(&many_accounts(3));
    let hids: Vec<String> = doc
        .accounts_with_family_refresh_tokens(PUBLIC)
        .into_iter()
        .map(|a| a.home_account_id)
        .collect();
    assert_eq!(hids, ["uid-0.utid", "uid-1.utid", "uid-2.utid"]);
    assert!(
        doc.accounts_with_family_refresh_tokens(&["other.host"])
            .is_empty()
    );

    // a: no family id; b: its family token at another cloud; c: two accounts, the family
    // token at an alias (one row, the first); d: its account at another cloud.
    let doc = parse(
        r#"{
    "RefreshToken": {
        "rt-a": {"secret": "s", "home_account_id": "a", "environment": "login.microsoftonline.com", "client_id": "x", "family_id": ""},
        "rt-b": {"secret": "s", "home_account_id": "b", "environment": "login.chinacloudapi.cn", "client_id": "x", "family_id": "1"},
        "rt-c": {"secret": "s", "home_account_id": "c", "environment": "login.windows.net", "client_id": "x", "family_id": "1"},
        "rt-d": {"secret": "s", "home_account_id": "d", "environment": "login.microsoftonline.com", "client_id": "x", "family_id": "1"}
    },
    "Account": {
        "a": {"home_account_id": "a", "environment": "login.microsoftonline.com", "realm": "r"},
        "b": {"home_account_id": "b", "environment": "login.microsoftonline.com", "realm": "r"},
        "c-1": {"home_account_id": "c", "environment": "login.microsoftonline.com", "realm": "first"},
        "c-2": {"home_account_id": "c", "environment": "login.windows.net", "realm": "second"},
        "d": {"home_account_id": "d", "environment": "login.chinacloudapi.cn", "realm": "r"}
    }
}"#,
    );
    // "c-1", not "c-2" (the only one of "c" at login.microsoftonline.com).
    let selected: Vec<(String, String)> = doc
        .accounts_with_family_refresh_tokens(PUBLIC)
        .into_iter()
        .map(|a| (a.home_account_id, a.environment))
        .collect();
    assert_eq!(
        selected,
        [("c".to_owned(), "login.microsoftonline.com".to_owned())]
    );
    assert!(
        doc.accounts_with_family_refresh_tokens(&["login.chinacloudapi.cn"])
            .is_empty()
    );

    // azure-identity writes an account without a username after a refresh: the one with a
    // username is chosen, so that a `username` filter finds it.
    let doc = parse(
        r#"{
    "RefreshToken": {
        "rt": {"secret": "s", "home_account_id": "uid.H", "environment": "login.microsoftonline.com", "client_id": "x", "family_id": "1"}
    },
    "Account": {
        "uid.h-login.microsoftonline.com-organizations": {"home_account_id": "uid.H", "environment": "login.microsoftonline.com", "realm": "organizations", "username": ""},
        "uid.h-login.microsoftonline.com-contoso": {"home_account_id": "uid.H", "environment": "login.microsoftonline.com", "realm": "contoso", "username": "alice@contoso.com"},
        "uid.h-login.microsoftonline.com-other": {"home_account_id": "uid.H", "environment": "login.microsoftonline.com", "realm": "other", "username": "alias@contoso.com"}
    }
}"#,
    );
    let names: Vec<String> = doc
        .accounts_with_family_refresh_tokens(PUBLIC)
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(names, ["alice@contoso.com"]);
}

#[test]
fn duplicate_keys_in_large_objects_resolve_like_python() {
    // Past the scan limit duplicates are found through an index: the same rule applies,
    // and the first spelling of a key is the one written back.
    let n = SCAN_LIMIT * 3;
    let mut entries: Vec<String> = (0..n)
        .map(|i| format!(r#""k{i}": {{"client_id": "c{i}", "environment": "e"}}"#))
        .collect();
    entries.push(
        r#""k3": {"client_id": "late", "environment": "e", "client_id": "latest"}"#.to_owned(),
    );
    entries.push(r#""\u006b0": {"client_id": "escaped", "environment": "e"}"#.to_owned());
    let mut fields: Vec<String> = (0..n).map(|i| format!(r#""f{i}": {i}"#)).collect();
    fields.push(r#""f5": "last""#.to_owned());
    let mut sections: Vec<String> = (0..n).map(|i| format!(r#""S{i}": {i}"#)).collect();
    sections.push(r#""S7": "last""#.to_owned());
    let src = format!(
        r#"{{"AppMetadata": {{{}}}, "Wide": {{"k": {{{}}}}}, {}, "AppMetadata": {{{}}}}}"#,
        entries.join(", "),
        fields.join(", "),
        sections.join(", "),
        entries.join(", "),
    );
    let doc = parse(&src);
    let md = doc.app_metadata();
    assert_eq!(md.len(), n);
    assert_eq!(
        (md[0].key.as_str(), md[0].client_id.as_str()),
        ("k0", "escaped")
    );
    assert_eq!(
        (md[3].key.as_str(), md[3].client_id.as_str()),
        ("k3", "latest")
    );
    assert_eq!(md[n - 1].key, format!("k{}", n - 1));

    let out = text(&doc);
    assert!(
        out.starts_with("{\n    \"AppMetadata\": {\n        \"k0\": {"),
        "first position, first spelling"
    );
    assert!(
        out.contains("\n    \"S7\": \"last\",\n    \"S8\": 8,"),
        "last value, first position"
    );
    assert_eq!(out.matches("\"S7\"").count(), 1);
    assert_eq!(text(&parse(&out)), out);
}

#[test]
fn names_sharing_a_hash_are_still_told_apart() {
    /// Every name hashes alike: each lookup past the scan limit meets a collision.
    #[derive(Default)]
    struct Collide;
    impl std::hash::Hasher for Collide {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {}
    }
    let mut members = Members::<usize, std::hash::BuildHasherDefault<Collide>>::with_capacity(0);
    let keys: Vec<usize> = (0..SCAN_LIMIT * 3).chain([0, 5, SCAN_LIMIT * 2]).collect();
    for (i, k) in keys.iter().enumerate() {
        members.push(Name::new(format!("k{k}")), i);
    }
    let list: Vec<(String, usize)> = members
        .into_list()
        .into_iter()
        .map(|(n, v)| (n.text().to_owned(), v))
        .collect();
    let mut expected: Vec<(String, usize)> =
        (0..SCAN_LIMIT * 3).map(|k| (format!("k{k}"), k)).collect();
    expected[0].1 = SCAN_LIMIT * 3;
    expected[5].1 = SCAN_LIMIT * 3 + 1;
    expected[SCAN_LIMIT * 2].1 = SCAN_LIMIT * 3 + 2;
    assert_eq!(list, expected);
}

// ---- timestamps from the file -------------------------------------------------------------

#[test]
fn absurd_timestamps_never_panic_and_read_as_out_of_range_or_as_written() {
    let values = [
        r#""99999999999999999999""#,
        "99999999999999999999",
        r#""18446744073709551615""#,
        "18446744073709551615",
        r#""18446744073709551616""#,
        "18446744073709551616",
        "-1",
        r#""-1""#,
        "-9223372036854775809",
        "1.5",
        "-0.0",
        "1e19",
        "1.8446744073709552e19",
        "1e308",
        "-1e308",
        "1e400",
        r#""""#,
        r#"" 12 ""#,
        r#""1e9""#,
        "null",
        "true",
        "{}",
        "[]",
    ];
    for value in values {
        let src = format!(
            r#"{{
    "AccessToken": {{
        "at": {{
            "secret": "SECRET-at",
            "home_account_id": "h",
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "target": "s",
            "realm": "r",
            "cached_at": {value},
            "expires_on": {value},
            "extended_expires_on": {value},
            "refresh_on": {value}
        }}
    }},
    "RefreshToken": {{
        "rt": {{
            "secret": "SECRET-rt",
            "home_account_id": "h",
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "last_modification_time": {value}
        }}
    }}
}}"#
        );
        let mut doc = parse(&src);
        assert_eq!(text(&doc), src, "{value}: written back as it was");
        let ats = doc.access_tokens();
        let _ = (doc.skipped(), doc.refresh_tokens());
        let _ = doc.find_access_tokens(&AccessTokenQuery {
            home_account_id: None,
            environments: PUBLIC,
            client_id: None,
            realm: None,
            scopes: &[],
        });
        let at_zero = ats.iter().filter(|at| at.expires_on == 0).count();
        assert_eq!(doc.remove_expired_access_tokens(0), at_zero, "{value}");
        assert_eq!(
            doc.remove_expired_access_tokens(u64::MAX),
            ats.len() - at_zero,
            "{value}"
        );
    }

    let read = |value: &str| {
        let src = format!(
            r#"{{"AccessToken": {{"at": {{"secret": "s", "environment": "e", "client_id": "c", "target": "t", "realm": "r", "cached_at": "1", "expires_on": {value}}}}}}}"#
        );
        let doc = parse(&src);
        match doc.access_tokens().first() {
            Some(at) => Ok(at.expires_on),
            None => Err(doc.skipped()[0].to_string()),
        }
    };
    let out_of_range = Err(
        "section \"AccessToken\" entry \"at\": field \"expires_on\" is out of range".to_owned(),
    );
    let not_decimal = Err(
        "section \"AccessToken\" entry \"at\": field \"expires_on\" is not a decimal string"
            .to_owned(),
    );
    assert_eq!(read(r#""99999999999999999999""#), out_of_range);
    assert_eq!(read("99999999999999999999"), out_of_range);
    assert_eq!(read(r#""18446744073709551616""#), out_of_range);
    assert_eq!(read("-1"), out_of_range);
    assert_eq!(read("1e308"), out_of_range);
    assert_eq!(read(r#""-1""#), not_decimal);
    assert_eq!(read(r#""1e9""#), not_decimal);
    assert_eq!(read(r#""18446744073709551615""#), Ok(u64::MAX));
    assert_eq!(read("18446744073709551615"), Ok(u64::MAX));
    assert_eq!(read("1e19"), Ok(10_000_000_000_000_000_000));
    assert_eq!(read("1.5"), Ok(1));
    assert_eq!(read(r#"" 12 ""#), Ok(12));
    assert_eq!(read("1e400"), out_of_range, "beyond f64");
    assert_eq!(read("-1e400"), out_of_range);
}

#[test]
fn an_answer_with_extreme_times_is_written_and_read_back() {
    let mut doc = CacheDocument::empty();
    let mut answer = Answer::app("c", "login.microsoftonline.com", "contoso", &["s"]);
    answer.cached_at = u64::MAX;
    answer.lifetime = 0;
    answer.refresh_on = Some(u64::MAX);
    doc.add_token_response(&answer.tokens());
    let at = &doc.access_tokens()[0];
    assert_eq!(
        (
            doc.raw_entries(ACCESS_TOKEN)[0].time("cached_at"),
            at.expires_on,
            at.refresh_on
        ),
        (Some(u64::MAX), u64::MAX, Some(u64::MAX))
    );
    assert_eq!(doc.remove_expired_access_tokens(u64::MAX - 1), 0);
    assert_eq!(doc.remove_expired_access_tokens(u64::MAX), 1);
}

use crate::test_support::Logs as LogBuffer;

#[test]
fn the_queries_log_which_field_of_which_entry_they_skip_and_never_its_value() {
    let doc = parse(
        r#"{
    "AccessToken": {
        "word-expiry": {"secret": "SECRET-1", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10", "expires_on": "SECRET-soon"}
    },
    "RefreshToken": {
        "numeric-secret": {"secret": 12345, "home_account_id": "h", "environment": "e", "client_id": "c", "family_id": "1"}
    },
    "Account": {
        "no-realm": {"home_account_id": "h", "environment": "e", "username": "SECRET-user"}
    }
}"#,
    );
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let any = AccessTokenQuery {
            home_account_id: None,
            environments: &["e"],
            client_id: None,
            realm: None,
            scopes: &[],
        };
        assert!(doc.find_access_tokens(&any).is_empty());
        let rts = RefreshTokenQuery {
            home_account_id: "h",
            environments: &["e"],
            client_id: None,
            family_only: false,
        };
        assert!(doc.find_refresh_tokens(&rts).is_empty());
        assert!(doc.accounts().is_empty());
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for expected in [
        r#"section "AccessToken" entry "word-expiry": field "expires_on" is not a decimal string"#,
        r#"section "RefreshToken" entry "numeric-secret": field "secret" is not a string"#,
        r#"section "Account" entry "no-realm": field "realm" is missing"#,
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    assert_eq!(
        text.matches("token cache entry skipped").count(),
        3,
        "{text}"
    );
    assert!(
        !text.contains("SECRET") && !text.contains("12345"),
        "{text}"
    );
}

/// A rejected refresh token is removed only while its entry still holds it: a concurrent
/// redemption that rotated the entry in place (same key, new secret) keeps the fresh one.
#[test]
fn a_rejected_refresh_token_is_removed_only_while_its_entry_still_holds_it() {
    let rt_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
    let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
    let rejected = rt_by_key(&doc, &rt_key).secret;
    let mut answer = Answer::user(
        (ALICE_UID, ALICE_UTID),
        "alice@contoso.com",
        "127.0.0.1",
        "contoso",
        &["https://other.test/.default"],
    );
    answer.refresh_token = Some(Secret::new("SECRET-rotated"));
    answer.replaces = Some(rt_key.clone());
    doc.add_token_response(&answer.tokens());
    assert!(!doc.remove_refresh_token(&rt_key, &rejected));
    assert_eq!(
        rt_by_key(&doc, &rt_key).secret.expose_secret(),
        "SECRET-rotated"
    );
    assert!(doc.remove_refresh_token(&rt_key, &Secret::new("SECRET-rotated")));
    assert!(doc.refresh_tokens().iter().all(|t| t.key != rt_key));
    // No refresh token section: nothing removed, and none added.
    let mut empty = CacheDocument::empty();
    assert!(!empty.remove_refresh_token(&rt_key, &rejected));
    assert_eq!(empty.to_vec(), CacheDocument::empty().to_vec());
}
