//! Every source gets a token from its emulator, for every identity form it takes, with the
//! parameter names and headers it requires; expiry in each format; the cache; the scope
//! rules; Service Fabric's certificate pinning; and secrets kept out of everything printed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Method;
use tower_identity::distributed::{DistributedCache, SealingKey, StoreError, TokenStore};
use tower_identity::{
    CredentialExt, ManagedIdentityCredential, ManagedIdentityCredentialBuilder,
    ManagedIdentitySource,
};

use super::{
    Identity, RESOURCE, SCOPE, builder, credential, expected_identity_headers, expected_params,
    secrets_of, sorted, source_of,
};
use crate::support::mi_emulator::{Emulator, ExpiresOn, Fault, Flavour};

/// Seconds from now until a token's expiry, as its holder sees it.
fn remaining(token: &tower_identity::AccessToken) -> u64 {
    token.expires_in().as_secs()
}

#[tokio::test]
async fn every_source_gets_a_token_for_each_identity_form_it_takes() {
    for flavour in Flavour::ALL {
        for id in Identity::ALL {
            let em = Emulator::start(flavour).await;
            let what = format!("{flavour:?} {id:?}");
            if !id.supported_by(flavour) {
                // Cloud Shell and Service Fabric take no user-assigned id, Azure ML a client id
                // only: refused when built, with what to do, and nothing is sent.
                let err = id.select(builder(&em)).build().unwrap_err();
                let why = if flavour == Flavour::AzureMl {
                    "selects a user-assigned identity by client id only"
                } else {
                    "supports only the system-assigned identity"
                };
                assert!(err.to_string().contains(why), "{what}: {err}");
                assert_eq!(em.request_count(), 0, "{what}");
                continue;
            }
            let credential = credential(&em, id);
            assert_eq!(credential.source(), source_of(flavour), "{what}");
            let token = credential
                .get_token([SCOPE])
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                token.secret().expose_secret().starts_with("mi-"),
                "{what}: a token from the emulator"
            );
            let left = remaining(&token);
            assert!((3500..=3600).contains(&left), "{what}: {left} s left");

            let log = em.requests();
            let expected_count = if flavour == Flavour::AzureArc { 2 } else { 1 };
            assert_eq!(log.len(), expected_count, "{what}: {log:#?}");
            let last = log.last().unwrap();
            assert_eq!(last.status, Some(200), "{what}");
            assert_eq!(
                last.identity_headers,
                expected_identity_headers(flavour),
                "{what}"
            );
            if flavour == Flavour::CloudShell {
                assert_eq!(last.method, Method::POST);
                assert!(last.query.is_empty(), "{what}: {:?}", last.query);
                assert_eq!(sorted(last.form()), expected_params(flavour, id), "{what}");
            } else {
                assert_eq!(last.method, Method::GET);
                assert!(last.body.is_empty(), "{what}");
                assert_eq!(
                    sorted(last.query.clone()),
                    expected_params(flavour, id),
                    "{what}"
                );
            }
            if flavour == Flavour::AzureArc {
                // The challenge first: the same request without the key, answered 401.
                let first = &log[0];
                assert_eq!(first.status, Some(401));
                assert_eq!(first.query, last.query);
                assert_eq!(
                    first.identity_headers,
                    [("metadata".to_owned(), "true".to_owned())]
                );
            }
        }
    }
}

#[tokio::test]
async fn an_arc_agent_that_ignores_the_user_assigned_id_is_not_believed() {
    // Older agents answer for the system-assigned identity whatever was asked; a token that
    // does not name the identity asked for must not pass for it (MSAL 1.39 and azure-identity
    // check the same).
    for id in [Identity::ClientId, Identity::ObjectId, Identity::ResourceId] {
        let em = Emulator::start(Flavour::AzureArc).await;
        em.set_echo_identity(false);
        let err = credential(&em, id).get_token([SCOPE]).await.unwrap_err();
        assert!(!err.is_unavailable(), "{id:?}: {err}");
        assert_eq!(em.request_count(), 2, "{id:?}");
    }
    let em = Emulator::start(Flavour::AzureArc).await;
    em.set_echo_identity(false);
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_token_is_cached_per_resource_and_default_is_stripped() {
    for flavour in Flavour::ALL {
        let em = Emulator::start(flavour).await;
        let credential = credential(&em, Identity::System);
        let first = credential.get_token([SCOPE]).await.unwrap();
        let sent = em.request_count();
        // The same resource, with and without `/.default`, comes from memory.
        let again = credential.get_token([SCOPE]).await.unwrap();
        let bare = credential.get_token([RESOURCE]).await.unwrap();
        assert_eq!(em.request_count(), sent, "{flavour:?}: served from memory");
        assert_eq!(
            first.secret().expose_secret(),
            again.secret().expose_secret()
        );
        assert_eq!(
            first.secret().expose_secret(),
            bare.secret().expose_secret()
        );
        // Another resource is another request (and another token).
        let other = credential
            .get_token(["https://other.test/.default"])
            .await
            .unwrap();
        assert!(em.request_count() > sent, "{flavour:?}");
        assert_ne!(
            first.secret().expose_secret(),
            other.secret().expose_secret()
        );
        let last = em.requests().pop().unwrap();
        let resource = if flavour == Flavour::CloudShell {
            last.form()
                .into_iter()
                .find(|(k, _)| k == "resource")
                .map(|(_, v)| v)
        } else {
            last.param("resource").map(str::to_owned)
        };
        assert_eq!(
            resource.as_deref(),
            Some("https://other.test"),
            "{flavour:?}"
        );
    }
}

#[tokio::test]
async fn two_scopes_are_an_invalid_request_and_nothing_is_sent() {
    let em = Emulator::start(Flavour::Imds).await;
    let credential = credential(&em, Identity::System);
    let err = credential
        .get_token([SCOPE, "https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(err.to_string().contains("exactly one"), "{err}");
    assert_eq!(em.request_count(), 0);
}

#[tokio::test]
async fn expiry_is_read_in_every_format_the_sources_send() {
    let cases = [
        (Flavour::AppService, ExpiresOn::EpochString),
        (Flavour::AppService, ExpiresOn::EpochNumber),
        (Flavour::ServiceFabric, ExpiresOn::EpochNumber),
        (Flavour::ServiceFabric, ExpiresOn::EpochString),
        (Flavour::AzureMl, ExpiresOn::EpochString),
        (Flavour::AzureMl, ExpiresOn::Date),
        (Flavour::AzureMl, ExpiresOn::DateAmPm),
        (Flavour::Imds, ExpiresOn::EpochNumber),
    ];
    for (flavour, format) in cases {
        let em = Emulator::start(flavour).await;
        em.set_expires_on(format);
        let token = credential(&em, Identity::System)
            .get_token([SCOPE])
            .await
            .unwrap();
        let left = remaining(&token);
        assert!(
            (3500..=3600).contains(&left),
            "{flavour:?} {format:?}: {left} s left"
        );
    }
}

#[tokio::test]
async fn long_lived_tokens_are_renewed_at_half_life() {
    // Managed identity tokens usually live 24 h; MSAL renews them after 12.
    let em = Emulator::start(Flavour::AppService).await;
    em.set_lifetime(24 * 3600);
    let token = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    let refresh_on = token.refresh_on().expect("a refresh time");
    let until_refresh = refresh_on.saturating_duration_since(tokio::time::Instant::now());
    let half = Duration::from_secs(12 * 3600);
    assert!(
        until_refresh <= half && until_refresh >= half - Duration::from_secs(60),
        "{until_refresh:?}"
    );
}

#[tokio::test]
async fn service_fabric_accepts_only_the_pinned_certificate() {
    let em = Emulator::start(Flavour::ServiceFabric).await;
    // Windows shows thumbprints in upper case; lower case with colons is the same one.
    let colons: String = em
        .thumbprint()
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    for thumbprint in [em.thumbprint().to_owned(), colons] {
        let mut env = em.env();
        env.retain(|(k, _)| k != "IDENTITY_SERVER_THUMBPRINT");
        env.push(("IDENTITY_SERVER_THUMBPRINT".to_owned(), thumbprint.clone()));
        let credential = ManagedIdentityCredential::builder()
            .vars(env)
            .build()
            .unwrap();
        credential
            .get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{thumbprint}: {e}"));
    }
    assert_eq!(em.request_count(), 2);

    // Another certificate's thumbprint: the TLS handshake fails, so the secret header is
    // never sent.
    let mut wrong = em.thumbprint().to_owned();
    let flipped = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(39.., flipped);
    let mut env = em.env();
    env.retain(|(k, _)| k != "IDENTITY_SERVER_THUMBPRINT");
    env.push(("IDENTITY_SERVER_THUMBPRINT".to_owned(), wrong));
    let credential = ManagedIdentityCredential::builder()
        .vars(env)
        .build()
        .unwrap();
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
    let transport = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tower_identity::transport::TransportError>())
        .expect("a TransportError source");
    assert!(transport.is_tls(), "{err}");
    assert!(
        !err.is_transient(),
        "a wrong certificate is not retried: {err}"
    );
    assert_eq!(em.request_count(), 2, "no request reached the server");
}

#[tokio::test]
async fn the_default_imds_address_is_the_link_local_one() {
    // Compared as a string only: nothing is sent (no variables at all selects IMDS at its
    // real address, which this test never asks for a token).
    let credential = ManagedIdentityCredential::builder()
        .vars(Vec::<(String, String)>::new())
        .build()
        .unwrap();
    assert_eq!(credential.source(), ManagedIdentitySource::Imds);
    let debug = format!("{credential:?}");
    assert!(
        debug.contains("\"http://169.254.169.254/metadata/identity/oauth2/token\""),
        "{debug}"
    );
}

#[tokio::test]
async fn secrets_never_show_in_errors_or_debug_output() {
    for flavour in [
        Flavour::AppService,
        Flavour::AzureMl,
        Flavour::ServiceFabric,
        Flavour::AzureArc,
    ] {
        let em = Emulator::start(flavour).await;
        let secrets = secrets_of(flavour);
        // An endpoint that quotes the secret back in its error body.
        let echo = format!(
            r#"{{"error":"invalid_request","error_description":"bad secret {}","message":"bad secret {}"}}"#,
            secrets.join(" "),
            secrets.join(" ")
        );
        let faults = if flavour == Flavour::AzureArc {
            // Let the challenge through, then refuse the request carrying the key.
            vec![None, Some(403)]
        } else {
            vec![Some(403)]
        };
        for fault in faults {
            match fault {
                None => em.push_fault(Fault::Delay(Duration::ZERO)),
                Some(status) => em.push_fault(Fault::Respond {
                    status,
                    body: echo.clone(),
                    headers: vec![],
                }),
            }
        }
        let builder = builder(&em);
        let builder_debug = format!("{builder:?}");
        let credential = builder.build().unwrap();
        let err = credential.get_token([SCOPE]).await.unwrap_err();
        let printed = [
            format!("{err}"),
            format!("{err:?}"),
            format!("{err:#?}"),
            format!("{credential:?}"),
            builder_debug,
        ];
        for text in &printed {
            for secret in &secrets {
                assert!(!text.contains(secret), "{flavour:?}: {secret} in {text}");
            }
        }
        // The request did carry it, so the check above is not vacuous.
        let carried = em.requests().iter().any(|r| {
            r.identity_headers
                .iter()
                .any(|(_, v)| secrets.iter().any(|s| v.contains(s)))
        });
        assert!(carried, "{flavour:?}");
    }
}

/// azure-identity's workload identity source: in an AKS pod set up for workload identity
/// (`AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`), the managed
/// identity authenticates as `WorkloadIdentityCredential` does, for the client id given or
/// `AZURE_CLIENT_ID`; IMDS is not asked. `DefaultAzureCredential`'s managed identity leaves
/// it out only without the chain's own workload identity member (here: named alone).
#[tokio::test]
async fn in_an_aks_pod_the_managed_identity_is_the_workload_identity() {
    use crate::support::oidc::{WORKLOAD_CLIENT_ID, peer};
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let (assertion, _) = peer.service_account_token(serde_json::json!({})).await;
    let file = dir.path().join("token");
    std::fs::write(&file, assertion).unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    let pod = |client_id: &str| {
        let mut vars = imds.env();
        vars.extend(
            [
                ("AZURE_AUTHORITY_HOST", peer.base.clone()),
                ("AZURE_TENANT_ID", "contoso".to_owned()),
                ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
                ("AZURE_CLIENT_ID", client_id.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        vars
    };
    for (env_client_id, given) in [
        (WORKLOAD_CLIENT_ID, None),
        ("another-app", Some(WORKLOAD_CLIENT_ID)),
    ] {
        let mut builder = ManagedIdentityCredential::builder()
            .vars(pod(env_client_id))
            .http_client(peer.http());
        if let Some(id) = given {
            builder = builder.client_id(id);
        }
        let mi = builder.build().unwrap();
        assert_eq!(mi.source(), ManagedIdentitySource::WorkloadIdentity);
        mi.get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    }
    let log = peer.token_log().await;
    let last = log.last().expect("the peer was asked");
    assert_eq!(last["form"]["client_id"].as_str(), Some(WORKLOAD_CLIENT_ID));
    assert_eq!(imds.request_count(), 0, "IMDS was asked");

    // DefaultAzureCredential's managed identity, named alone: IMDS, not the workload identity.
    let mut vars = pod(WORKLOAD_CLIENT_ID);
    vars.push((
        "AZURE_TOKEN_CREDENTIALS".to_owned(),
        "ManagedIdentityCredential".to_owned(),
    ));
    let dac = tower_identity::DefaultAzureCredential::builder()
        .vars(vars)
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert!(
        token.secret().expose_secret().starts_with("mi-imds-"),
        "{token:?}"
    );
}

/// In a pod set up for workload identity, `exclude_workload_identity(true)` reaches IMDS: the
/// node's user-assigned identities by any id, which the workload identity source cannot take
/// (an object or resource id is a build error naming this setting), and a client id that
/// would otherwise select the workload identity for that app.
#[tokio::test]
async fn in_an_aks_pod_exclude_workload_identity_reaches_imds() {
    use super::{CLIENT_ID, OBJECT_ID};
    let imds = Emulator::start(Flavour::Imds).await;
    let mut vars = imds.env();
    vars.extend(
        [
            ("AZURE_AUTHORITY_HOST", "https://login.pod.test"),
            ("AZURE_TENANT_ID", "contoso"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/t",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let pod = || ManagedIdentityCredential::builder().vars(vars.clone());

    let err = pod().object_id(OBJECT_ID).build().unwrap_err();
    assert!(
        err.message().contains("exclude_workload_identity(true)"),
        "{err}"
    );
    let err = pod().build().unwrap_err();
    assert!(
        err.message().contains("exclude_workload_identity(true)"),
        "{err}"
    );
    // A client id alone selects the workload identity for that app.
    let mi = pod().client_id(CLIENT_ID).build().unwrap();
    assert_eq!(mi.source(), ManagedIdentitySource::WorkloadIdentity);

    for (mi, param, value) in [
        (pod().object_id(OBJECT_ID), "object_id", OBJECT_ID),
        (pod().client_id(CLIENT_ID), "client_id", CLIENT_ID),
    ] {
        imds.clear();
        let mi = mi.exclude_workload_identity(true).build().unwrap();
        assert_eq!(mi.source(), ManagedIdentitySource::Imds);
        let token = mi.get_token([SCOPE]).await.unwrap();
        assert!(token.secret().expose_secret().starts_with("mi-imds-"));
        let requests = imds.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0].param(param), Some(value));
    }
}

/// Azure ML's endpoint asked without a client id answers as a user's identity: the
/// system-assigned identity is asked for by `DEFAULT_IDENTITY_CLIENT_ID` when it is a GUID, and
/// a client id given wins over it. The placeholder Azure ML sets when no identity is enabled
/// (`clientid`), or any other non-GUID, is no identity: no `clientid` is sent.
#[tokio::test]
async fn azure_ml_asks_for_default_identity_client_id() {
    use super::{CLIENT_ID, OBJECT_ID};
    for (default, given, want) in [
        (OBJECT_ID, None, Some(OBJECT_ID)),
        (OBJECT_ID, Some(CLIENT_ID), Some(CLIENT_ID)),
        ("clientid", None, None),
        ("clientid", Some(CLIENT_ID), Some(CLIENT_ID)),
        ("not-a-guid", None, None),
    ] {
        let em = Emulator::start(Flavour::AzureMl).await;
        let mut vars = em.env();
        vars.push(("DEFAULT_IDENTITY_CLIENT_ID".to_owned(), default.to_owned()));
        let mut b = ManagedIdentityCredential::builder().vars(vars);
        if let Some(id) = given {
            b = b.client_id(id);
        }
        b.build().unwrap().get_token([SCOPE]).await.unwrap();
        let requests = em.requests();
        let what = format!("{default} {given:?}");
        assert_eq!(requests.len(), 1, "{what}: {requests:?}");
        assert_eq!(requests[0].param("clientid"), want, "{what}");
        let params = if want.is_some() { 3 } else { 2 };
        assert_eq!(
            requests[0].param_names().len(),
            params,
            "{what}: {requests:?}"
        );
    }
}

/// Two Azure ML computes sharing a distributed cache, each with `DEFAULT_IDENTITY_CLIENT_ID`
/// set by the platform and no label: the variable is no identity the user named (the
/// placeholder `clientid` when none is enabled, the endpoint then answering for a *user*), so
/// each keeps its own token, as an unlabelled system-assigned identity does. (Before, both
/// were keyed `client_id=<variable>` and the second compute was served the first one's
/// token.) A client id given shares; the same label shares when the variable is a GUID.
#[tokio::test]
async fn azure_ml_default_identity_is_not_shared_without_a_label() {
    use super::{CLIENT_ID, OBJECT_ID};
    let compute = |em: &Emulator, store: &MemoryStore, default: &str| {
        let mut vars = em.env();
        vars.push(("DEFAULT_IDENTITY_CLIENT_ID".to_owned(), default.to_owned()));
        ManagedIdentityCredential::builder()
            .vars(vars)
            .distributed_cache(store.cache())
    };
    for default in ["clientid", OBJECT_ID] {
        let store = MemoryStore::default();
        let (a, b) = (
            Emulator::start(Flavour::AzureMl).await,
            Emulator::start(Flavour::AzureMl).await,
        );
        for em in [&a, &b] {
            let token = compute(em, &store, default)
                .build()
                .unwrap()
                .get_token([SCOPE])
                .await
                .unwrap();
            assert_eq!(token.secret().expose_secret(), "mi-azureml-1", "{default}");
            assert_eq!(
                em.request_count(),
                1,
                "{default}: each compute asks its own"
            );
        }
        assert!(
            store.is_empty(),
            "{default}: nothing is written to the store"
        );

        // Labelled, or by a client id given, the second compute uses the first one's token;
        // labelled without an identity enabled (the placeholder: a user's token), it does not.
        for configure in [
            (|b: ManagedIdentityCredentialBuilder| b.system_assigned_identity_label("ml"))
                as fn(ManagedIdentityCredentialBuilder) -> ManagedIdentityCredentialBuilder,
            |b| b.client_id(CLIENT_ID),
        ] {
            for em in [&a, &b] {
                configure(compute(em, &store, default))
                    .build()
                    .unwrap()
                    .get_token([SCOPE])
                    .await
                    .unwrap();
            }
        }
        assert_eq!(a.request_count(), 3, "{default}");
        let own_requests = if default == "clientid" { 2 } else { 1 };
        assert_eq!(
            b.request_count(),
            own_requests,
            "{default}: shared when configured, under a label only with an identity enabled"
        );
    }
}

/// Azure ML computes under one label share a token only when their `DEFAULT_IDENTITY_CLIENT_ID`
/// names the same GUID: one with a GUID default (its identity) and one with the placeholder
/// `clientid` (no identity: the endpoint answers for a *user*) each get their own, and two
/// with the placeholder (two users, maybe) share nothing either. (Before, both were keyed
/// `system=ml` and the second was served the first one's token; then two placeholders shared
/// `default=none`, one user's token served to another's compute.)
#[tokio::test]
async fn azure_ml_computes_under_one_label_share_only_with_the_same_default() {
    use super::OBJECT_ID;
    let store = MemoryStore::default();
    let labelled = |em: &Emulator, default: &str| {
        let mut vars = em.env();
        vars.push(("DEFAULT_IDENTITY_CLIENT_ID".to_owned(), default.to_owned()));
        ManagedIdentityCredential::builder()
            .vars(vars)
            .distributed_cache(store.cache())
            .system_assigned_identity_label("ml")
            .build()
            .unwrap()
    };
    let (a, b, c, d) = (
        Emulator::start(Flavour::AzureMl).await,
        Emulator::start(Flavour::AzureMl).await,
        Emulator::start(Flavour::AzureMl).await,
        Emulator::start(Flavour::AzureMl).await,
    );
    for (em, default) in [
        (&a, OBJECT_ID),
        (&b, "clientid"),
        (&c, OBJECT_ID),
        (&d, "clientid"),
    ] {
        let token = labelled(em, default).get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "mi-azureml-1", "{default}");
    }
    assert_eq!(a.request_count(), 1);
    assert_eq!(b.request_count(), 1, "no default: its own token");
    assert_eq!(c.request_count(), 0, "the same default: shared");
    // Without a default each compute answers with its user's token: one user's compute must
    // not be given another's, so none is shared, even under one label.
    assert_eq!(d.request_count(), 1, "no default: never shared");
}

/// A user-assigned id given in code is trimmed as one read from a variable is: `"…\n"` (read
/// from a file) names the identity, not an identity no host has.
#[tokio::test]
async fn user_assigned_ids_given_in_code_are_trimmed() {
    use super::{CLIENT_ID, OBJECT_ID, RESOURCE_ID};
    let em = Emulator::start(Flavour::Imds).await;
    let padded = |id: &str| format!(" {id}\n");
    let cases = [
        (
            builder(&em).client_id(padded(CLIENT_ID)),
            "client_id",
            CLIENT_ID,
        ),
        (
            builder(&em).object_id(padded(OBJECT_ID)),
            "object_id",
            OBJECT_ID,
        ),
        (
            builder(&em).user_assigned_id(tower_identity::UserAssignedId::ResourceId(padded(
                RESOURCE_ID,
            ))),
            "msi_res_id",
            RESOURCE_ID,
        ),
    ];
    for (configured, param, want) in cases {
        em.clear();
        configured
            .build()
            .unwrap()
            .get_token([SCOPE])
            .await
            .unwrap();
        let log = em.requests();
        assert_eq!(log.last().unwrap().param(param), Some(want), "{param}");
    }
}

/// Cloud Shell answers with its signed-in user's token, never a host identity's: two people's
/// Cloud Shells given one label and one store each keep their own token, and nothing is
/// written to the store. (Before, both were keyed `system=<label>` and the second was served
/// the first one's user's token.)
#[tokio::test]
async fn cloud_shell_tokens_are_never_shared_label_or_not() {
    let store = MemoryStore::default();
    let (a, b) = (
        Emulator::start(Flavour::CloudShell).await,
        Emulator::start(Flavour::CloudShell).await,
    );
    for em in [&a, &b] {
        let token = ManagedIdentityCredential::builder()
            .vars(em.env())
            .distributed_cache(store.cache())
            .system_assigned_identity_label("shell")
            .build()
            .unwrap()
            .get_token([SCOPE])
            .await
            .unwrap();
        assert_eq!(token.secret().expose_secret(), "mi-cloudshell-1");
        assert_eq!(em.request_count(), 1, "each Cloud Shell asks its own");
    }
    assert!(store.is_empty(), "nothing is written to the store");
}

/// A store in this process's memory, shared by the credentials given its cache as the
/// processes of a fleet share Redis.
#[derive(Clone, Debug, Default)]
struct MemoryStore(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl MemoryStore {
    fn cache(&self) -> DistributedCache {
        DistributedCache::builder(self.clone())
            .sealing_key(SealingKey::new("one", &[7; 32]).unwrap())
            .build()
            .unwrap()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

impl TokenStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let value = self.0.lock().unwrap().get(key).cloned();
        Box::pin(async move { Ok(value) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_vec());
        Box::pin(async { Ok(()) })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut map = self.0.lock().unwrap();
        let taken = !map.contains_key(key);
        if taken {
            map.insert(key.to_owned(), holder.as_bytes().to_vec());
        }
        Box::pin(async move { Ok(taken) })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut map = self.0.lock().unwrap();
        if map.get(key).is_some_and(|h| h == holder.as_bytes()) {
            map.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

/// An object or resource id is refused for Azure ML, which selects by client id only.
#[tokio::test]
async fn azure_ml_refuses_object_and_resource_ids() {
    use super::{OBJECT_ID, RESOURCE_ID};
    let em = Emulator::start(Flavour::AzureMl).await;
    for b in [
        builder(&em).object_id(OBJECT_ID),
        builder(&em).resource_id(RESOURCE_ID),
    ] {
        let err = b.build().unwrap_err();
        assert!(
            err.message().contains(
                "Azure Machine Learning selects a user-assigned identity by client id only"
            ),
            "{err}"
        );
    }
    assert_eq!(em.request_count(), 0);
}

/// A scope that is `/.default` alone names no resource: an invalid request, sent nowhere
/// (IMDS would answer 400, which reads as a host without an identity).
#[tokio::test]
async fn a_scope_naming_no_resource_is_an_invalid_request() {
    let em = Emulator::start(Flavour::Imds).await;
    let err = credential(&em, Identity::System)
        .get_token(["/.default"])
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(err.message().contains("names no resource"), "{err}");
    assert_eq!(em.request_count(), 0);
}
