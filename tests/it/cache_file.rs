//! The shared cache file under concurrent writers: our process and Python msal-extensions
//! writers updating the same file at the same time lose no entry; the file stays valid JSON
//! with mode 0600. And ClientSecretCredential's opt-in persistence.

use std::collections::BTreeSet;

use tower_identity::{
    ClientSecretCredential, CredentialExt, TokenCachePersistenceOptions, TokenRequest,
};

use crate::support::authority::Authority;
use crate::support::creds;
use crate::support::oidc::{CLIENT_ID, CLIENT_SECRET, peer};
use crate::support::python::{ok, run, run_raw};

/// A credential persisting to `dir`, in `tenant` (one per test: the peer's request log is
/// shared by the tests running at the same time).
fn persistent(dir: &std::path::Path, tenant: &str) -> ClientSecretCredential {
    let peer = peer();
    ClientSecretCredential::builder(tenant, CLIENT_ID, CLIENT_SECRET)
        .authority_host(&peer.base)
        .http_client(peer.http())
        .cache_options(
            TokenCachePersistenceOptions::new()
                .directory(dir)
                .allow_unencrypted_storage(true),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_second_credential_finds_the_first_ones_token_in_the_file() {
    let tenant = "persist-reuse";
    let posts = || async {
        peer()
            .token_log()
            .await
            .iter()
            .filter(|e| e["tenant"] == tenant)
            .count()
    };
    let dir = tempfile::tempdir().unwrap();
    let first = persistent(dir.path(), tenant)
        .get_token(["https://resource.test/.default"])
        .await
        .unwrap();
    assert_eq!(posts().await, 1);
    // A new credential (another process of the same app) reads the file.
    let second = persistent(dir.path(), tenant)
        .get_token(["https://resource.test/.default"])
        .await
        .unwrap();
    assert_eq!(second.secret(), first.secret());
    assert_eq!(posts().await, 1, "no request: the file had it");
}

/// A CAE request announces the CAE capability in `claims` but carries no challenge: like a
/// plain one, it is answered from the (CAE) file when another credential put a token there. A
/// request with a claims challenge still asks Microsoft Entra ID.
#[tokio::test]
async fn cae_requests_without_a_challenge_find_the_token_in_the_file() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let persistent = || {
        ClientSecretCredential::builder(creds::TENANT, creds::CLIENT_ID, creds::CLIENT_SECRET)
            .authority_host(authority.url())
            .http_client(creds::http(&authority))
            .cache_options(
                TokenCachePersistenceOptions::new()
                    .directory(dir.path())
                    .allow_unencrypted_storage(true),
            )
            .build()
            .unwrap()
    };
    let cae = || TokenRequest::new([creds::SCOPE]).with_cae(true);
    let first = persistent().get_token_with(cae()).await.unwrap();
    assert_eq!(authority.token_posts(), 1);
    // Another process of the same app: the CAE file has the token.
    let second = persistent().get_token_with(cae()).await.unwrap();
    assert_eq!(second.secret(), first.secret());
    assert_eq!(authority.token_posts(), 1, "no request: the file had it");
    // A claims challenge asks for a new token, whatever the file holds.
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    let answered = persistent()
        .get_token_with(cae().with_claims(challenge))
        .await
        .unwrap();
    assert_eq!(authority.token_posts(), 2);
    assert_ne!(answered.secret(), first.secret());
}

#[tokio::test]
async fn app_only_tokens_flow_between_python_msal_and_us_both_ways() {
    let peer = peer();
    let tenant = "persist-app-only";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msal.cache.nocae").display().to_string();
    let msal = |scope: &'static str| {
        let file = file.clone();
        async move {
            ok(run(
                peer,
                &[
                    "msal-app-only",
                    "--tenant",
                    tenant,
                    "--client-id",
                    CLIENT_ID,
                    "--client-secret",
                    CLIENT_SECRET,
                    "--scopes",
                    scope,
                    "--cache",
                    &file,
                ],
            )
            .await)
        }
    };
    // msal writes an app-only cache; our credential finds its token (no request).
    let written = msal("https://resource.test/.default").await;
    assert_eq!(written["source"], "identity_provider");
    let posts = || async {
        peer.token_log()
            .await
            .iter()
            .filter(|e| e["tenant"] == tenant)
            .count()
    };
    assert_eq!(posts().await, 1);
    let ours = persistent(dir.path(), tenant);
    ours.get_token(["https://resource.test/.default"])
        .await
        .unwrap();
    assert_eq!(posts().await, 1, "we used msal's token");
    // We write a token for another resource; msal finds ours (no request).
    ours.get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(posts().await, 2);
    let read = msal("https://other.test/.default").await;
    assert_eq!(read["source"], "cache", "{read}");
    assert_eq!(posts().await, 2, "msal used our token");
}

/// What another tool wrote before the writers start: it must come through all their writes.
const WRITTEN_BEFORE: &str = r#"{
    "Account": {
        "kept": {
            "home_account_id": "uid.utid",
            "environment": "login.microsoftonline.com",
            "realm": "contoso",
            "username": "alice@contoso.com"
        }
    },
    "ToolSection": {
        "setting": [1, 2, 3]
    }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_with_msal_extensions_lose_nothing() {
    // msal-extensions polls a busy lock every 250 ms: eight turns each take about 2 s.
    const WRITES_EACH: usize = 8;
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msal.cache.nocae");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut created = options.open(&file).unwrap();
        created.write_all(WRITTEN_BEFORE.as_bytes()).unwrap();
    }
    // Two msal-extensions writers, each adding an entry per turn of the lock file, a fixed
    // number of times (not for a fixed time: a loaded machine must not make them write less)...
    let writers: Vec<_> = ["py1", "py2"]
        .into_iter()
        .map(|prefix| {
            let cache = file.display().to_string();
            tokio::spawn(async move {
                run_raw(&[
                    "msal-ext-writer".into(),
                    "--cache".into(),
                    cache,
                    "--count".into(),
                    WRITES_EACH.to_string(),
                    "--prefix".into(),
                    prefix.into(),
                ])
                .await
            })
        })
        .collect();
    // ...and we, for as long as they run (and at least `WRITES_EACH` times): each new scope is
    // a lock-free read of the file, a token request and a read-modify-write under the lock.
    let credential = tower_identity::ClientSecretCredential::builder(
        creds::TENANT,
        creds::CLIENT_ID,
        creds::CLIENT_SECRET,
    )
    .authority_host(authority.url())
    .http_client(creds::http(&authority))
    .cache_options(
        TokenCachePersistenceOptions::new()
            .directory(dir.path())
            .allow_unencrypted_storage(true),
    )
    .build()
    .unwrap();
    let mut ours = BTreeSet::new();
    while ours.len() < WRITES_EACH || !writers.iter().all(|w| w.is_finished()) {
        let scope = format!("https://res{}.test/.default", ours.len());
        credential.get_token([scope.as_str()]).await.unwrap();
        ours.insert(scope);
    }
    let mut theirs = BTreeSet::new();
    for writer in writers {
        let answer = ok(writer.await.unwrap());
        for key in answer["written"].as_array().unwrap() {
            theirs.insert(key.as_str().unwrap().to_owned());
        }
    }

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("valid JSON");
    let entries = doc["AccessToken"].as_object().unwrap();
    let lost_theirs: Vec<_> = theirs
        .iter()
        .filter(|k| !entries.contains_key(*k))
        .collect();
    let targets: BTreeSet<&str> = entries
        .iter()
        .filter(|(key, _)| !theirs.contains(*key))
        .filter_map(|(_, e)| e["target"].as_str())
        .collect();
    let lost_ours: Vec<_> = ours
        .iter()
        .filter(|s| !targets.contains(s.as_str()))
        .collect();
    assert!(
        lost_theirs.is_empty() && lost_ours.is_empty(),
        "lost: msal-extensions' {lost_theirs:?}, ours {lost_ours:?}"
    );
    assert_eq!(
        entries.len(),
        ours.len() + theirs.len(),
        "one entry per write, none doubled"
    );
    let before: serde_json::Value = serde_json::from_str(WRITTEN_BEFORE).unwrap();
    assert_eq!(
        doc["Account"], before["Account"],
        "another tool's account kept"
    );
    assert_eq!(doc["ToolSection"], before["ToolSection"]);
    assert!(
        theirs.len() == 2 * WRITES_EACH && ours.len() >= WRITES_EACH,
        "both wrote repeatedly: {} msal-extensions / {} ours",
        theirs.len(),
        ours.len()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(
        !dir.path().join("msal.cache.nocae.lockfile").exists(),
        "no lock left behind"
    );
    eprintln!(
        "cross-process: {} writes of ours and {} of msal-extensions to one file, none lost",
        ours.len(),
        theirs.len()
    );
}

/// An app-only token in the file past its refresh time (msal's "aging" token) is renewed by
/// the next process, which falls back to it while the token endpoint fails. Before, it was
/// served as fresh until its last 300 s.
#[tokio::test(start_paused = true)]
async fn a_token_in_the_file_past_its_refresh_time_is_renewed_or_kept_when_that_fails() {
    use crate::support::authority::{Fault, TokenShape};
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        refresh_in: Some(0),
        ..TokenShape::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let process = || {
        ClientSecretCredential::builder(creds::TENANT, creds::CLIENT_ID, creds::CLIENT_SECRET)
            .authority_host(authority.url())
            .http_client(creds::http(&authority))
            .cache_options(
                TokenCachePersistenceOptions::new()
                    .directory(dir.path())
                    .allow_unencrypted_storage(true),
            )
            .build()
            .unwrap()
    };
    let first = process().get_token([creds::SCOPE]).await.unwrap();
    let renewed = process().get_token([creds::SCOPE]).await.unwrap();
    assert_ne!(renewed.secret(), first.secret());
    assert_eq!(authority.token_posts(), 2);
    authority.push_fault(Fault::ServerError(500));
    authority.push_fault(Fault::Close);
    authority.push_fault(Fault::ServerError(503));
    authority.push_fault(Fault::ServerError(500));
    let kept = process().get_token([creds::SCOPE]).await.unwrap();
    assert_eq!(kept.secret(), renewed.secret());
    assert_eq!(authority.token_posts(), 6, "asked, with its retries");
}
