//! Reading a large shared MSAL token cache: parsing, writing back, and the queries the
//! credentials make, on a realistic document of 10 000 entries (1 000 people signed in, each
//! with an account, an id token, a family refresh token and seven access tokens, as msal
//! writes them), at 5 000 and 20 000 entries to show how the cost grows, and on hostile shapes
//! (many sections, many fields in one entry, duplicate keys). Wall-clock figures, best and
//! median of a few runs; the target is a parse of 10 000 entries under 100 ms.
//!
//! ```text
//! cargo bench --bench msal_cache --features fuzzing
//! ```

// The document model is crate-private: the bench reaches it through the hidden `fuzzing`
// module, so it measures exactly the code the credentials run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tower_identity::{
    CredentialExt, Secret, SharedTokenCacheCredential, TokenCachePersistenceOptions,
};

use tower_identity::fuzzing::msal::{
    AccessTokenQuery, CacheDocument, NewTokens, RefreshTokenQuery,
};

/// Azure CLI's client id: its refresh tokens are family tokens.
const CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
const HOST: &str = "login.microsoftonline.com";
/// Access tokens per person (plus account, id token and refresh token: 10 entries).
const RESOURCES: usize = 7;
/// The person whose tokens the queries look for (in the middle of the document).
const TARGET_PERSON: usize = 500;

fn main() {
    println!("{:<58} {:>10} {:>10}", "msal cache", "best", "median");
    for people in [500, 1_000, 2_000] {
        let bytes = realistic(people);
        let label = format!(
            "parse, {} entries ({:.1} MB)",
            people * (RESOURCES + 3) + 1,
            bytes.len() as f64 / 1e6
        );
        report(&label, || {
            CacheDocument::parse(&bytes).expect("parses");
        });
    }

    let bytes = realistic(1_000);
    let doc = CacheDocument::parse(&bytes).expect("parses");
    assert_eq!(doc.to_vec(), bytes, "byte-for-byte round trip");
    report("to_vec, 10 001 entries", || {
        std::hint::black_box(doc.to_vec());
    });
    report("round trip (to_vec + parse), 10 001 entries", || {
        CacheDocument::parse(&doc.to_vec()).expect("parses");
    });
    report("views: accounts + refresh_tokens + access_tokens", || {
        std::hint::black_box((doc.accounts(), doc.refresh_tokens(), doc.access_tokens()));
    });

    let hid = home_account_id(TARGET_PERSON);
    let environments = [HOST, "login.windows.net"];
    let scopes = vec![resource(3)];
    report("find_access_tokens (one account, one scope)", || {
        let found = doc.find_access_tokens(&AccessTokenQuery {
            home_account_id: Some(Some(&hid)),
            environments: &environments,
            client_id: None,
            realm: None,
            scopes: &scopes,
        });
        assert_eq!(found.len(), 1);
    });
    report("find_refresh_tokens (one account, family)", || {
        let found = doc.find_refresh_tokens(&RefreshTokenQuery {
            home_account_id: &hid,
            environments: &environments,
            client_id: None,
            family_only: true,
        });
        assert_eq!(found.len(), 1);
    });

    shared_token_cache_credential(&bytes);
    hostile();
}

/// The credential end to end: a fresh `SharedTokenCacheCredential` (nothing in memory) reads
/// the file, selects the account among 1 000 and returns its cached access token (no request).
fn shared_token_cache_credential(bytes: &[u8]) {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = home.path().join(".IdentityService");
    std::fs::create_dir_all(&dir).expect("cache dir");
    std::fs::write(dir.join("msal.cache.nocae"), bytes).expect("cache file");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let username = format!("user{TARGET_PERSON}@contoso.com");
    report(
        "SharedTokenCacheCredential::get_token from the file (cold)",
        || {
            let credential = SharedTokenCacheCredential::builder()
                .authority_host(format!("https://{HOST}"))
                .username(&username)
                .cache_options(
                    TokenCachePersistenceOptions::new()
                        .directory(&dir)
                        .allow_unencrypted_storage(true),
                )
                .build()
                .expect("settings");
            runtime
                .block_on(credential.get_token([resource(3).as_str()]))
                .expect("the cached token");
        },
    );
}

/// Shapes a hostile file may take; each has 10 000 members where a real file has a few.
fn hostile() {
    let n = 10_000;
    let sections: Vec<String> = (0..n).map(|i| format!("\"S{i}\": {{}}")).collect();
    let many_sections = format!("{{{}}}", sections.join(", "));
    report("hostile: 10 000 unknown sections", || {
        CacheDocument::parse(many_sections.as_bytes()).expect("parses");
    });

    let fields: Vec<String> = (0..n).map(|i| format!("\"f{i}\": {i}")).collect();
    let many_fields = format!("{{\"AccessToken\": {{\"k\": {{{}}}}}}}", fields.join(", "));
    report("hostile: one entry with 10 000 fields", || {
        let doc = CacheDocument::parse(many_fields.as_bytes()).expect("parses");
        std::hint::black_box(doc.access_tokens());
    });

    let duplicates: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "\"k{}\": {{\"client_id\": \"c\", \"environment\": \"e\"}}",
                i % 100
            )
        })
        .collect();
    let duplicate_entries = format!("{{\"AppMetadata\": {{{}}}}}", duplicates.join(", "));
    report("hostile: 10 000 entries, 100 distinct keys", || {
        let doc = CacheDocument::parse(duplicate_entries.as_bytes()).expect("parses");
        assert_eq!(doc.app_metadata().len(), 100);
    });

    let repeated: Vec<&str> = (0..n).map(|_| "\"AccessToken\": {}").collect();
    let repeated_section = format!("{{{}}}", repeated.join(",\n"));
    report("hostile: the AccessToken section 10 000 times", || {
        CacheDocument::parse(repeated_section.as_bytes()).expect("parses");
    });
}

/// Runs `f` a few times (more when it is fast) and prints the best and median times.
fn report(label: &str, mut f: impl FnMut()) {
    f(); // warm-up
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 5 || (times.len() < 50 && started.elapsed() < Duration::from_secs(2)) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    times.sort();
    println!(
        "{label:<58} {:>10} {:>10}",
        millis(times[0]),
        millis(times[times.len() / 2])
    );
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn resource(i: usize) -> String {
    format!("https://resource{i}.test/.default")
}

fn uid(person: usize) -> String {
    format!("{person:08x}-0000-4000-8000-000000000000")
}

const UTID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn home_account_id(person: usize) -> String {
    format!("{}.{UTID}", uid(person))
}

/// The cache msal would have written after `people` sign-ins with Azure CLI, each followed by
/// silent requests for six more resources (the refresh token rotated in place each time).
fn realistic(people: usize) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut doc = CacheDocument::empty();
    for person in 0..people {
        let uid = uid(person);
        let client_info = URL_SAFE_NO_PAD.encode(format!(r#"{{"uid":"{uid}","utid":"{UTID}"}}"#));
        let claims = format!(
            r#"{{"aud":"{CLI}","iss":"https://{HOST}/{UTID}/v2.0","oid":"{uid}","sub":"sub-{uid}","tid":"{UTID}","preferred_username":"user{person}@contoso.com","name":"User {person}"}}"#
        );
        let id_token = Secret::new(format!(
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims)
        ));
        let mut rt_key = None;
        for r in 0..RESOURCES {
            let scopes = vec![resource(r)];
            let access_token = Secret::new(format!(
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-{person}-{r}.{}",
                "s".repeat(900)
            ));
            let refresh_token =
                Secret::new(format!("1.AQ-refresh-{person}-{r}-{}", "r".repeat(800)));
            let added = doc.add_token_response(&NewTokens {
                client_id: CLI,
                environment: HOST,
                realm: "organizations",
                scopes: &scopes,
                access_token: &access_token,
                token_type: "Bearer",
                cached_at: now,
                expires_on: now + 86_400,
                extended_expires_on: now + 86_400,
                refresh_on: None,
                refresh_token: Some(&refresh_token),
                id_token: (r == 0).then_some(&id_token),
                client_info: Some(&client_info),
                foci: Some("1"),
                replaces: rt_key.as_deref(),
                replaces_read_here: true,
                user_grant: true,
            });
            assert_eq!(added.as_deref(), Some(home_account_id(person).as_str()));
            rt_key = Some(format!(
                "{}-{HOST}-refreshtoken-{CLI}--{}",
                home_account_id(person),
                resource(0)
            ));
        }
    }
    doc.to_vec()
}
