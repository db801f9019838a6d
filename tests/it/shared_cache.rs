//! SharedTokenCacheCredential with real peers: Python msal signs users in against the node
//! oidc-provider and writes the MSAL cache; we select accounts, return cached tokens, redeem
//! family refresh tokens at the real server and write back; msal and azure-identity read what
//! we wrote.

use std::path::{Path, PathBuf};

use tower_identity::{
    ChainedTokenCredential, CredentialExt, SharedTokenCacheCredential,
    TokenCachePersistenceOptions, TokenRequest,
};

use crate::support::authority::{Authority, Fault, error_body};
use crate::support::creds::{self, Logs};
use crate::support::oidc::{
    CONTOSO_TID, FABRIKAM_TID, FOCI_CLIENT_ID, PUBLIC_CLIENT_ID, Peer, jwt_claims, peer, peer_443,
};
use crate::support::python::{ok, run};

const RESOURCE: &str = "https://resource.test/.default";
const OTHER: &str = "https://other.test/.default";

/// A home directory with `.IdentityService/` and the cache file path in it.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".IdentityService")).unwrap();
        Self { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join(".IdentityService/msal.cache.nocae")
    }

    fn cache_str(&self) -> String {
        self.cache().display().to_string()
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.cache()).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text()).expect("the cache file is valid JSON")
    }
}

/// Python msal signs `username` in at `tenant` as `client_id` and writes the cache.
async fn msal_signin(
    peer: &Peer,
    home: &Home,
    tenant: &str,
    client_id: &str,
    username: &str,
) -> serde_json::Value {
    ok(run(
        peer,
        &[
            "msal-signin",
            "--tenant",
            tenant,
            "--client-id",
            client_id,
            "--username",
            username,
            "--scopes",
            RESOURCE,
            "--cache",
            &home.cache_str(),
        ],
    )
    .await)
}

fn credential(
    peer: &Peer,
    home: &Home,
) -> tower_identity::credential::SharedTokenCacheCredentialBuilder {
    SharedTokenCacheCredential::builder()
        .authority_host(&peer.base)
        .http_client(peer.http())
        .cache_options(cache_in(home.dir.path()))
}

fn cache_in(home: &Path) -> TokenCachePersistenceOptions {
    TokenCachePersistenceOptions::new()
        .directory(home.join(".IdentityService"))
        .allow_unencrypted_storage(true)
}

async fn token_posts(peer: &Peer) -> usize {
    peer.token_log().await.len()
}

#[tokio::test]
async fn msal_signed_in_user_gets_the_cached_token_then_a_refreshed_one_for_another_resource() {
    let (peer, home) = (peer(), Home::new());
    let signed_in = msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "alice@contoso.com").await;
    let credential = credential(peer, &home).build().unwrap();

    // The access token msal cached is returned as is: no request to the server. (Compared
    // with the file's, not by counting the shared peer's token requests, which other tests
    // make meanwhile.)
    let in_file = home.json()["AccessToken"]
        .as_object()
        .unwrap()
        .values()
        .map(|at| at["secret"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let cached = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(
        jwt_claims(cached.secret().expose_secret())["aud"],
        "https://resource.test"
    );
    assert_eq!(
        in_file,
        [cached.secret().expose_secret()],
        "served from the file"
    );

    // Another resource: the family refresh token is redeemed at /organizations as Azure CLI.
    let refresh_token = first_refresh_token(&home);
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    let log = peer.token_log().await;
    let redeem = log
        .iter()
        .rev()
        .find(|e| e["form"]["refresh_token"] == refresh_token.as_str())
        .expect("our redemption is logged");
    assert_eq!(redeem["tenant"], "organizations");
    assert_eq!(redeem["grant_type"], "refresh_token");
    assert_eq!(redeem["form"]["client_id"], FOCI_CLIENT_ID);
    assert_eq!(redeem["form"]["client_info"], "1");
    assert_eq!(redeem["form"]["scope"], OTHER);

    // Written back: the new access token is in the file, the account and its tokens intact.
    let doc = home.json();
    let home_id = signed_in["home_account_id"].as_str().unwrap();
    let ours: Vec<_> = doc["AccessToken"]
        .as_object()
        .unwrap()
        .values()
        .filter(|e| {
            e["target"] == OTHER && e["home_account_id"] == home_id && e["realm"] == "organizations"
        })
        .collect();
    assert_eq!(ours.len(), 1, "{doc:#}");
    assert_eq!(ours[0]["client_id"], FOCI_CLIENT_ID);
    assert_eq!(
        doc["Account"].as_object().unwrap().len(),
        1,
        "no username-less account added"
    );
    assert_eq!(file_mode(&home.cache()), 0o600);

    // msal reads what we wrote: its silent call for the other resource finds our token.
    let silent = ok(run(
        peer,
        &[
            "msal-silent",
            "--tenant",
            "organizations",
            "--client-id",
            FOCI_CLIENT_ID,
            "--cache",
            &home.cache_str(),
            "--scopes",
            OTHER,
        ],
    )
    .await);
    assert_eq!(silent["source"], "cache", "{silent}");
    assert_eq!(silent["access_token_aud"], "https://other.test");
}

/// msal deletes the expired access tokens its search finds: the one that sent us to the token
/// endpoint is gone from the file once the new one is written.
#[tokio::test]
async fn the_expired_access_token_found_is_deleted_when_the_new_one_is_written() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "alice@contoso.com").await;
    let mut doc = home.json();
    let tokens = doc["AccessToken"].as_object_mut().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    let (expired_key, expired) = tokens.iter_mut().next().unwrap();
    let expired_key = expired_key.clone();
    expired["expires_on"] = "1".into();
    expired["extended_expires_on"] = "1".into();
    std::fs::write(home.cache(), serde_json::to_string_pretty(&doc).unwrap()).unwrap();

    let credential = credential(peer, &home).build().unwrap();
    let token = credential.get_token([RESOURCE]).await.unwrap();
    let doc = home.json();
    let tokens = doc["AccessToken"].as_object().unwrap();
    assert!(!tokens.contains_key(&expired_key), "{doc:#}");
    assert_eq!(tokens.len(), 1, "{doc:#}");
    let written = tokens.values().next().unwrap();
    assert_eq!(written["secret"], token.secret().expose_secret());
}

/// With a configured tenant, a token cached for another tenant (a guest one) is not returned:
/// the refresh token is redeemed at the configured one instead.
#[tokio::test]
async fn a_configured_tenant_ignores_access_tokens_cached_for_another_tenant() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "alice@contoso.com").await;
    let mut doc = home.json();
    let tokens = doc["AccessToken"].as_object_mut().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    let guest = tokens.values_mut().next().unwrap();
    guest["realm"] = FABRIKAM_TID.into();
    let guest_secret = guest["secret"].as_str().unwrap().to_owned();
    std::fs::write(home.cache(), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let refresh_token = first_refresh_token(&home);

    let credential = credential(peer, &home)
        .tenant_id(CONTOSO_TID)
        .build()
        .unwrap();
    let token = credential.get_token([RESOURCE]).await.unwrap();
    assert!(
        token.secret().expose_secret() != guest_secret,
        "the guest tenant's token was returned"
    );
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["tid"],
        CONTOSO_TID
    );
    let log = peer.token_log().await;
    let redeem = log
        .iter()
        .rev()
        .find(|e| e["form"]["refresh_token"] == refresh_token.as_str())
        .expect("the refresh token was redeemed");
    assert_eq!(redeem["tenant"], CONTOSO_TID);
}

/// The secret of the first refresh token in the cache file.
fn first_refresh_token(home: &Home) -> String {
    home.json()["RefreshToken"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[cfg(unix)]
fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn account_selection_follows_the_reference_rules_and_messages() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "alice@contoso.com").await;
    msal_signin(peer, &home, "fabrikam", FOCI_CLIENT_ID, "bob@fabrikam.com").await;

    let err = credential(peer, &home)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message()
            .contains("Multiple accounts were found in the cache"),
        "{err}"
    );
    assert!(
        err.message().contains("alice@contoso.com") && err.message().contains("bob@fabrikam.com"),
        "{err}"
    );

    let alice = credential(peer, &home)
        .username("alice@contoso.com")
        .build()
        .unwrap();
    let token = alice.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["tid"],
        CONTOSO_TID
    );

    let bob = credential(peer, &home)
        .tenant_id(FABRIKAM_TID)
        .build()
        .unwrap();
    let token = bob.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["tid"],
        FABRIKAM_TID
    );

    let nobody = credential(peer, &home)
        .username("carol@contoso.com")
        .build()
        .unwrap();
    let err = nobody.get_token([OTHER]).await.unwrap_err();
    assert!(err.is_unavailable());
    assert!(
        err.message().contains(
            "No account matching the specified username: carol@contoso.com was found in the cache."
        ),
        "{err}"
    );

    let both = credential(peer, &home)
        .username("alice@contoso.com")
        .tenant_id(FABRIKAM_TID)
        .build()
        .unwrap();
    let err = both.get_token([OTHER]).await.unwrap_err();
    assert!(
        err.message().contains(&format!(
            "username: alice@contoso.com tenant: {FABRIKAM_TID}"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn several_accounts_matching_the_filter_are_named_in_the_error() {
    let (peer, home) = (peer(), Home::new());
    // Two people of one home tenant: a tenant filter matches both.
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "pat@contoso.com").await;
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "quinn@contoso.com").await;
    let err = credential(peer, &home)
        .tenant_id(CONTOSO_TID)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    let message = err.message();
    assert!(
        message.contains(&format!(
            "Multiple accounts matching the specified tenant: {CONTOSO_TID} were found in the cache"
        )),
        "{err}"
    );
    assert!(
        message.contains("pat@contoso.com") && message.contains("quinn@contoso.com"),
        "{err}"
    );
    let one = credential(peer, &home)
        .username("quinn@contoso.com")
        .tenant_id(CONTOSO_TID)
        .build()
        .unwrap();
    assert!(one.get_token([OTHER]).await.is_ok());
}

#[tokio::test]
async fn only_family_refresh_tokens_make_an_account_a_candidate() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", PUBLIC_CLIENT_ID, "dave@contoso.com").await;
    let err = credential(peer, &home)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert!(
        err.message()
            .contains("No accounts were found in the cache."),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_or_malformed_cache_is_unavailable_and_never_overwritten() {
    let (peer, home) = (peer(), Home::new());
    let err = credential(peer, &home)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert!(
        err.message().contains("Shared token cache unavailable"),
        "{err}"
    );
    // Azure CLI 2.30 and later keeps its own cache: `az login` does not create this file,
    // AzureCliCredential uses it.
    assert!(
        err.message()
            .contains("Visual Studio and applications with a persistent MSAL token cache write it"),
        "{err}"
    );
    assert!(
        err.message()
            .contains("Azure CLI does not (after 'az login', AzureCliCredential gets its tokens)"),
        "{err}"
    );
    assert!(!home.cache().exists(), "nothing was created");

    std::fs::write(home.cache(), b"{\"AccessToken\": {\"x\": ").unwrap();
    let err = credential(peer, &home)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message().contains(&home.cache_str()),
        "names the file: {err}"
    );
    assert_eq!(
        std::fs::read(home.cache()).unwrap(),
        b"{\"AccessToken\": {\"x\": "
    );
}

#[tokio::test]
async fn a_revoked_refresh_token_is_an_authentication_failure_and_stays_in_the_cache() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "erin@contoso.com").await;
    let refresh_token = first_refresh_token(&home);
    peer.revoke_refresh_token(&refresh_token).await;
    let err = credential(peer, &home)
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    // Visual Studio's or another application's sign-in is theirs to replace, as msal leaves it.
    let kept: Vec<&str> = home.json()["RefreshToken"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|rt| rt["secret"].as_str())
        .map(|secret| {
            if secret == refresh_token {
                "kept"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(kept, ["kept"], "the rejected token is still in the file");
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert_eq!(err.error_codes(), [50173]);
    assert!(
        err.message()
            .contains("Visual Studio: re-enter the account under Azure Service Authentication"),
        "{err}"
    );
    assert!(!err.message().contains("az login"), "{err}");
    assert!(!err.to_string().contains(&refresh_token));
}

/// A cache as msal wrote it: alice and bob signed in with Azure CLI at `127.0.0.1`, each with a
/// family refresh token and an access token for `RESOURCE`.
const TWO_ACCOUNTS: &[u8] = include_bytes!("../data/msal-two-accounts.json");

#[tokio::test(start_paused = true)]
async fn an_mfa_refusal_leaves_the_family_refresh_token_in_the_file_and_says_to_sign_in_again() {
    let authority = Authority::start().await;
    let home = Home::new();
    std::fs::write(home.cache(), TWO_ACCOUNTS).unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .username("alice@contoso.com")
        .build()
        .unwrap();
    let mfa = error_body(
        "invalid_grant",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a \
         new location, you must use multi-factor authentication to access 'other.test'.",
    );
    for attempt in 1..=2 {
        authority.push_fault(Fault::Respond {
            status: 400,
            body: mfa.clone(),
            headers: vec![],
        });
        let err = credential.get_token([OTHER]).await.unwrap_err();
        // Nothing written: the file is byte for byte what msal wrote, family token included.
        assert!(
            std::fs::read(home.cache()).unwrap() == TWO_ACCOUNTS,
            "attempt {attempt}: the file was rewritten"
        );
        assert!(err.is_authentication_failed(), "{err}");
        assert_eq!(err.error_code(), Some("invalid_grant"));
        assert_eq!(err.error_codes(), [50076]);
        assert!(err.message().contains("AADSTS50076"), "{err}");
        assert!(
            err.message().contains(
                "To fix, sign in again with the application that wrote the token cache \
                 (Visual Studio: "
            ),
            "{err}"
        );
        assert!(
            err.message()
                .contains("The refresh token was left in the cache"),
            "{err}"
        );
        // The token is still there to try, as msal would: each call asks again, once the
        // refusal is 30 s old (until then the same request gets it without a request).
        assert_eq!(authority.token_posts(), attempt);
        let again = credential.get_token([OTHER]).await.unwrap_err();
        assert_eq!(again.error_codes(), [50076], "{again}");
        assert_eq!(authority.token_posts(), attempt, "sent again at once");
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
    }
    let [first, second] = authority.requests().try_into().unwrap();
    assert_eq!(first.field("grant_type"), Some("refresh_token"));
    assert_eq!(
        first.field("refresh_token"),
        second.field("refresh_token"),
        "the same family token both times"
    );
    let alice = "a8ff77e5-b945-5754-a190-f18b6df68148.72f988bf-86f1-41af-91ab-2d7cd011db47";
    let file = home.json();
    let kept = file["RefreshToken"]
        .as_object()
        .unwrap()
        .values()
        .find(|rt| rt["home_account_id"] == alice)
        .expect("alice's refresh token");
    assert_eq!(kept["family_id"], "1");
    assert_eq!(
        Some(kept["secret"].as_str().unwrap()),
        first.field("refresh_token")
    );
}

#[tokio::test]
async fn unknown_sections_and_fields_survive_our_write_back_byte_for_byte() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "frank@contoso.com").await;
    msal_signin(
        peer,
        &home,
        "fabrikam",
        FOCI_CLIENT_ID,
        "grace@fabrikam.com",
    )
    .await;
    // Another tool's section and field, in msal's layout.
    let text = home.text();
    let unknown_section = "    \"ToolSection\": {\n        \"k\": {\n            \"n\": 1.0e3,\n            \"s\": \"caf\\u00e9\"\n        }\n    }";
    let with_extra = format!(
        "{},\n{unknown_section}\n}}",
        text.trim_end().trim_end_matches('}').trim_end()
    );
    std::fs::write(home.cache(), &with_extra).unwrap();
    let grace_entries: Vec<String> = entries_of(&with_extra, "grace");

    let frank = credential(peer, &home)
        .username("frank@contoso.com")
        .build()
        .unwrap();
    frank.get_token([OTHER]).await.unwrap();

    let after = home.text();
    assert!(
        after.contains(unknown_section),
        "unknown section kept verbatim:\n{after}"
    );
    for entry in grace_entries {
        assert!(
            after.contains(&entry),
            "the other account's entry is unchanged:\n{entry}"
        );
    }
    // And msal still reads the whole file.
    let accounts = run(peer, &["msal-accounts", "--cache", &home.cache_str()]).await;
    assert_eq!(
        accounts["accounts"].as_array().unwrap().len(),
        2,
        "{accounts}"
    );
}

/// The text of each entry (key line to closing brace) whose key mentions `needle`.
fn entries_of(text: &str, needle: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut out = Vec::new();
    for (_, section) in doc.as_object().unwrap() {
        let Some(section) = section.as_object() else {
            continue;
        };
        for (key, entry) in section {
            if entry.to_string().contains(needle) || key.contains(needle) {
                let start = text.find(&format!("\"{key}\"")).unwrap();
                let end = start + text[start..].find("\n        }").unwrap() + 10;
                out.push(text[start..end].to_owned());
            }
        }
    }
    assert!(!out.is_empty());
    out
}

#[tokio::test]
async fn azure_identity_reads_the_tokens_we_wrote() {
    // azure-identity only finds accounts when the server listens on the default port.
    let peer = peer_443();
    let home = Home::new();
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "heidi@contoso.com").await;
    let ours = credential(peer, &home).build().unwrap();
    let token = ours.get_token([OTHER]).await.unwrap();
    let before = token_posts(peer).await;
    let answer = ok(run(
        peer,
        &[
            "azid-shared-cache",
            "--home",
            &home.dir.path().display().to_string(),
            "--scopes",
            OTHER,
        ],
    )
    .await);
    assert_eq!(answer["access_token_aud"], "https://other.test");
    assert_eq!(
        token_posts(peer).await,
        before,
        "azure-identity used the token we wrote, without a request"
    );
    // The same token: its expiry, as azure-identity read it from our entry.
    let theirs = answer["expires_on"].as_u64().unwrap() as i64;
    assert!(
        (theirs - token.expires_on_unix() as i64).abs() <= 5,
        "{theirs} vs {}",
        token.expires_on_unix()
    );
}

#[tokio::test]
async fn in_a_chain_a_missing_shared_cache_passes_to_the_next_credential_with_its_reason_traced() {
    let peer = peer();
    let empty = Home::new();
    let (logs, _guard) = Logs::capture();
    let service_principal = tower_identity::ClientSecretCredential::builder(
        "contoso",
        crate::support::oidc::CLIENT_ID,
        crate::support::oidc::CLIENT_SECRET,
    )
    .authority_host(&peer.base)
    .http_client(peer.http())
    .build()
    .unwrap();
    let chain = ChainedTokenCredential::new([
        credential(peer, &empty).build().unwrap().boxed_credential(),
        service_principal.boxed_credential(),
    ])
    .unwrap();
    let token = chain
        .get_token_with(TokenRequest::new([RESOURCE]))
        .await
        .unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["aud"],
        "https://resource.test"
    );
    let traces = logs.text();
    assert!(
        traces.contains("credential=\"SharedTokenCacheCredential\""),
        "{traces}"
    );
    assert!(
        traces.contains("Shared token cache unavailable"),
        "{traces}"
    );
    assert!(
        traces.contains("credential answered credential=\"ClientSecretCredential\""),
        "{traces}"
    );
}

/// In `DefaultAzureCredential`, as in azure-identity's, `AZURE_USERNAME` picks the cached
/// account: run as a user runs it (the `get_token` example, configured by the environment),
/// a cache holding two accounts gives the named one's token instead of "multiple accounts".
#[tokio::test]
async fn default_azure_credential_picks_the_cached_account_azure_username_names() {
    let (peer, home) = (peer(), Home::new());
    msal_signin(peer, &home, "contoso", FOCI_CLIENT_ID, "alice@contoso.com").await;
    msal_signin(peer, &home, "fabrikam", FOCI_CLIENT_ID, "bob@fabrikam.com").await;
    // IMDS at a closed loopback port, no az or azd on PATH.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = tokio::process::Command::new(crate::examples::example("get_token"))
        .args(["--scope", RESOURCE, "--show-token"])
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", home.dir.path())
        .env("SSL_CERT_FILE", &peer.ca_path)
        .env("AZURE_AUTHORITY_HOST", &peer.base)
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)
        .env("AZURE_USERNAME", "bob@fabrikam.com")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("answered by: SharedTokenCacheCredential"),
        "{stdout}"
    );
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token:"))
        .expect("the token is shown")
        .trim();
    assert_eq!(jwt_claims(token)["tid"], FABRIKAM_TID, "bob's token");
}

/// An outage is not waited out once per refresh token: with three family refresh tokens for
/// the account and an authority answering 503, one token's attempts are made (the first and
/// its retries) and the error returned, as msal does. Before, each token was tried in turn
/// with its retries: 12 requests, and about three times the wait.
#[tokio::test(start_paused = true)]
async fn an_outage_is_not_retried_once_per_refresh_token() {
    let authority = Authority::start().await;
    let home = Home::new();
    let mut doc: serde_json::Value = serde_json::from_slice(TWO_ACCOUNTS).unwrap();
    let alice = "a8ff77e5-b945-5754-a190-f18b6df68148.72f988bf-86f1-41af-91ab-2d7cd011db47";
    let tokens = doc["RefreshToken"].as_object_mut().unwrap();
    let (key, entry) = tokens
        .iter()
        .find(|(_, rt)| rt["home_account_id"] == alice)
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    for n in 2..=3 {
        let mut more = entry.clone();
        more["secret"] = format!("alice-family-{n}").into();
        tokens.insert(format!("{key}-{n}"), more);
    }
    std::fs::write(home.cache(), serde_json::to_vec(&doc).unwrap()).unwrap();
    for _ in 0..12 {
        authority.push_fault(Fault::ServerError(503));
    }
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .username("alice@contoso.com")
        .build()
        .unwrap();
    let err = credential.get_token([OTHER]).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503), "{err}");
    assert!(err.is_transient(), "{err}");
    assert_eq!(authority.token_posts(), 4, "one token: 1 + 3 retries");
}

/// With multitenant authentication disabled (`AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`, or the
/// builder), a request naming another tenant stays on `organizations`, as azure-identity
/// resolves it; otherwise it goes to the tenant named. Before, the setting was ignored.
#[tokio::test]
async fn disabling_multitenant_auth_keeps_requests_on_the_configured_tenant() {
    for (disabled, expected) in [(true, "organizations"), (false, "fabrikam")] {
        let authority = Authority::start().await;
        let home = Home::new();
        std::fs::write(home.cache(), TWO_ACCOUNTS).unwrap();
        let credential = SharedTokenCacheCredential::builder()
            .authority_host(authority.url())
            .http_client(creds::http(&authority))
            .cache_options(cache_in(home.dir.path()))
            .username("alice@contoso.com")
            .disable_multitenant_auth(disabled)
            .build()
            .unwrap();
        credential
            .get_token_with(TokenRequest::new([OTHER]).with_tenant_id("fabrikam"))
            .await
            .unwrap();
        let tenants: Vec<String> = authority.requests().into_iter().map(|r| r.tenant).collect();
        assert_eq!(tenants, [expected], "disabled: {disabled}");
    }
}

/// A refused refresh token's error says one thing to do, and the right one for this
/// credential: sign in again with the application that wrote the cache. Before, a generic "Sign in again to get
/// a new authorization code or refresh token" came first, wrong for a shared cache.
#[tokio::test]
async fn a_refused_refresh_token_says_one_thing_to_do() {
    let authority = Authority::start().await;
    let home = Home::new();
    std::fs::write(home.cache(), TWO_ACCOUNTS).unwrap();
    authority.push_fault(Fault::Respond {
        status: 400,
        body: error_body(
            "invalid_grant",
            70043,
            "The refresh token has expired or is invalid due to sign-in frequency checks.",
        ),
        headers: vec![],
    });
    let err = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .username("alice@contoso.com")
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap_err();
    let message = err.message().to_lowercase();
    assert_eq!(message.matches("again").count(), 1, "{err}");
    assert!(
        message.contains("to fix, sign in again with the application that wrote the token cache"),
        "{err}"
    );
    assert!(!message.contains("authorization code"), "{err}");
}

/// [`TWO_ACCOUNTS`] with only the account whose `home_account_id` starts with `uid`.
fn only_account(uid: &str) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(TWO_ACCOUNTS).unwrap();
    for section in ["AccessToken", "Account", "IdToken", "RefreshToken"] {
        doc[section]
            .as_object_mut()
            .unwrap()
            .retain(|_, entry| entry["home_account_id"].as_str().unwrap().starts_with(uid));
    }
    serde_json::to_vec(&doc).unwrap()
}

/// The developer signs in as someone else (the file's one account is now bob, not alice):
/// once an acquisition has selected bob, no token cached in memory for alice is served, for
/// any scope. Before, a scope cached for alice was served as alice until its renewal.
#[tokio::test]
async fn once_another_account_is_selected_no_token_of_the_previous_one_is_served() {
    const ALICE_RT: &str = "_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv";
    const BOB_RT: &str = "54jIA7RpNt1dJSwem9WmQN79Ntca4E0C5PjnM_EdNiL";
    let authority = Authority::start().await;
    let home = Home::new();
    std::fs::write(home.cache(), only_account("a8ff77e5")).unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .build()
        .unwrap();
    let alices = credential.get_token([OTHER]).await.unwrap();
    credential
        .get_token(["https://third.test/.default"])
        .await
        .unwrap();
    std::fs::write(home.cache(), only_account("61ace6e2")).unwrap();
    credential
        .get_token(["https://fourth.test/.default"])
        .await
        .unwrap();
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_ne!(other.secret(), alices.secret(), "alice's token was served");
    let sent: Vec<Option<String>> = authority
        .requests()
        .iter()
        .map(|r| r.field("refresh_token").map(str::to_owned))
        .collect();
    let [a, b, c, d] = sent.as_slice() else {
        panic!("{sent:?}");
    };
    assert_eq!([a, b], [&Some(ALICE_RT.to_owned()); 2]);
    assert_eq!([c, d], [&Some(BOB_RT.to_owned()); 2]);
}

/// The developer signs out (msal's `remove_account` leaves the file without the account and
/// its tokens): once an acquisition has found no account, no token kept in memory for the
/// signed-out account is served, for any scope; the other document's tokens, of its own
/// account, are kept. Before, a scope cached before the sign-out was served from memory
/// until its renewal (azure-identity reads the file at every request and fails at once).
#[tokio::test]
async fn once_the_account_is_signed_out_no_token_of_it_is_served_from_memory() {
    let authority = Authority::start().await;
    let home = Home::new();
    let cae_file = home.dir.path().join(".IdentityService/msal.cache.cae");
    std::fs::write(home.cache(), only_account("a8ff77e5")).unwrap();
    std::fs::write(&cae_file, only_account("61ace6e2")).unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .build()
        .unwrap();
    let cae = || TokenRequest::new([OTHER]).with_cae(true);
    credential.get_token([OTHER]).await.unwrap();
    let bobs = credential.get_token_with(cae()).await.unwrap();
    assert_eq!(authority.token_posts(), 2);

    // alice signs out of the ordinary document: no account left in it. (The CAE document as
    // before its answer was written: only memory has bob's CAE token.)
    std::fs::write(home.cache(), only_account("no-such-account")).unwrap();
    std::fs::write(&cae_file, only_account("61ace6e2")).unwrap();
    let err = credential
        .get_token(["https://third.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message()
            .contains("No accounts were found in the cache."),
        "{err}"
    );
    let err = credential.get_token([OTHER]).await.unwrap_err();
    assert!(
        err.message()
            .contains("No accounts were found in the cache."),
        "alice's token was served from memory: {err}"
    );
    // bob's CAE token, from the other document, is still served from memory.
    let again = credential.get_token_with(cae()).await.unwrap();
    assert_eq!(again.secret(), bobs.secret());
    assert_eq!(authority.token_posts(), 2, "nothing sent");
}

/// The two documents may name different accounts (bob in the ordinary one, alice left in the
/// CAE one): CAE and other requests in turn are each served from memory, as each document's
/// own account. Before, one selected account per credential saw a change at every switch
/// and dropped the in-memory tokens each time, so every request asked again.
#[tokio::test]
async fn documents_naming_different_accounts_do_not_empty_the_memory_in_turn() {
    let authority = Authority::start().await;
    let home = Home::new();
    std::fs::write(home.cache(), only_account("61ace6e2")).unwrap();
    std::fs::write(
        home.dir.path().join(".IdentityService/msal.cache.cae"),
        only_account("a8ff77e5"),
    )
    .unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .build()
        .unwrap();
    let plain = || credential.get_token_with(TokenRequest::new([OTHER]));
    let cae = || credential.get_token_with(TokenRequest::new([OTHER]).with_cae(true));
    let first_plain = plain().await.unwrap();
    let first_cae = cae().await.unwrap();
    assert_eq!(authority.token_posts(), 2);
    // The files as before the answers were written to them: only memory has the tokens.
    std::fs::write(home.cache(), only_account("61ace6e2")).unwrap();
    std::fs::write(
        home.dir.path().join(".IdentityService/msal.cache.cae"),
        only_account("a8ff77e5"),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(plain().await.unwrap().secret(), first_plain.secret());
        assert_eq!(cae().await.unwrap().secret(), first_cae.secret());
    }
    assert_eq!(authority.token_posts(), 2, "served from memory");
}

/// Sign-in names are case-insensitive, as msal compares them: `Alice@Contoso.com` selects the
/// cached `alice@contoso.com`. A username matching no account is told which accounts the
/// cache holds. Before, the match was exact, and the error named nobody.
#[tokio::test]
async fn the_username_matches_whatever_its_case_and_a_mismatch_names_the_cached_accounts() {
    let authority = Authority::start().await;
    let home = Home::new();
    std::fs::write(home.cache(), TWO_ACCOUNTS).unwrap();
    let for_user = |username: &str| {
        SharedTokenCacheCredential::builder()
            .authority_host(authority.url())
            .http_client(creds::http(&authority))
            .cache_options(cache_in(home.dir.path()))
            .username(username)
            .build()
            .unwrap()
    };
    for_user("Alice@Contoso.COM")
        .get_token([OTHER])
        .await
        .unwrap();
    const ALICE_RT: &str = "_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv";
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some(ALICE_RT)
    );

    let err = for_user("carol@contoso.com")
        .get_token([OTHER])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let message = err.message();
    assert!(
        message.contains(
            "No account matching the specified username: carol@contoso.com was found in the \
             cache. Accounts found: "
        ),
        "{err}"
    );
    assert!(
        message.contains("alice@contoso.com") && message.contains("bob@fabrikam.com"),
        "{err}"
    );
}

/// Usernames are compared lower-cased in full Unicode, as msal compares them: `åsa@contoso.com`
/// selects the cached `ÅSA@Contoso.com`. Before, only ASCII letters were folded, and the
/// account was not found.
#[tokio::test]
async fn the_username_matches_whatever_its_unicode_case() {
    let authority = Authority::start().await;
    let home = Home::new();
    let mut doc: serde_json::Value = serde_json::from_slice(TWO_ACCOUNTS).unwrap();
    for account in doc["Account"].as_object_mut().unwrap().values_mut() {
        if account["username"] == "alice@contoso.com" {
            account["username"] = "ÅSA@Contoso.com".into();
        }
    }
    std::fs::write(home.cache(), serde_json::to_vec(&doc).unwrap()).unwrap();
    SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .username("åsa@contoso.com")
        .build()
        .unwrap()
        .get_token([OTHER])
        .await
        .unwrap();
    const ALICE_RT: &str = "_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv";
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some(ALICE_RT)
    );
}

/// The legacy `msal.cache` is read while it is the only file, and once another tool creates
/// `msal.cache.nocae`, the next acquisition reads that. The first acquisition is served from
/// the legacy file's cached access token, writing nothing, so that the new file is the other
/// tool's, not one this credential wrote. Before, the choice was made when the credential was
/// built, and the new file was never seen.
#[tokio::test]
async fn a_nocae_file_created_after_the_build_replaces_the_legacy_file() {
    const BOB_RT: &str = "54jIA7RpNt1dJSwem9WmQN79Ntca4E0C5PjnM_EdNiL";
    let authority = Authority::start().await;
    let home = Home::new();
    let legacy = home.dir.path().join(".IdentityService/msal.cache");
    let mut alice: serde_json::Value = serde_json::from_slice(&only_account("a8ff77e5")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for token in alice["AccessToken"].as_object_mut().unwrap().values_mut() {
        token["cached_at"] = now.to_string().into();
        token["expires_on"] = (now + 3600).to_string().into();
        token["extended_expires_on"] = (now + 3600).to_string().into();
    }
    std::fs::write(&legacy, serde_json::to_vec(&alice).unwrap()).unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .build()
        .unwrap();
    let cached = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(
        cached.secret().expose_secret(),
        alice["AccessToken"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["secret"]
            .as_str()
            .unwrap(),
        "the legacy file's cached token"
    );
    assert!(authority.requests().is_empty(), "no token request");
    assert!(!home.cache().exists(), "nothing written");

    std::fs::write(home.cache(), only_account("61ace6e2")).unwrap();
    credential
        .get_token(["https://third.test/.default"])
        .await
        .unwrap();
    let sent: Vec<Option<String>> = authority
        .requests()
        .iter()
        .map(|r| r.field("refresh_token").map(str::to_owned))
        .collect();
    assert_eq!(
        sent,
        [Some(BOB_RT.to_owned())],
        "the request used the new file's account"
    );
}

/// While only the legacy `msal.cache` exists (written by a tool from before azure-identity
/// 1.16), this credential's write-back of the rotated refresh token is skipped: it reads that
/// tool's sign-in and must not create `msal.cache.nocae` from it, which would hide the tool's
/// later writes. The developer then signs in as someone else with that tool: the next scope
/// is that account's. Before, the first write created `msal.cache.nocae`, and alice's
/// refresh token (rotated, from that copy) was sent again.
#[tokio::test]
async fn a_write_back_never_creates_the_nocae_file_from_the_legacy_one() {
    const ALICE_RT: &str = "_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv";
    const BOB_RT: &str = "54jIA7RpNt1dJSwem9WmQN79Ntca4E0C5PjnM_EdNiL";
    let authority = Authority::start().await;
    let home = Home::new();
    let legacy = home.dir.path().join(".IdentityService/msal.cache");
    std::fs::write(&legacy, only_account("a8ff77e5")).unwrap();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(creds::http(&authority))
        .cache_options(cache_in(home.dir.path()))
        .build()
        .unwrap();
    let before = std::fs::read(&legacy).unwrap();
    credential.get_token([OTHER]).await.unwrap();
    assert!(!home.cache().exists(), "msal.cache.nocae was created");
    assert!(
        std::fs::read(&legacy).unwrap() == before,
        "the legacy file is never written"
    );

    std::fs::write(&legacy, only_account("61ace6e2")).unwrap();
    credential
        .get_token(["https://third.test/.default"])
        .await
        .unwrap();
    assert!(!home.cache().exists(), "msal.cache.nocae was created");
    let sent: Vec<Option<String>> = authority
        .requests()
        .iter()
        .map(|r| r.field("refresh_token").map(str::to_owned))
        .collect();
    assert_eq!(
        sent,
        [Some(ALICE_RT.to_owned()), Some(BOB_RT.to_owned())],
        "the second request used the legacy file's new account"
    );
}
