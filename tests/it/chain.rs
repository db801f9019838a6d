//! Chains with real credentials: unavailable passes on, failure stops, errors list every
//! attempt in order, chains nest, and the answering credential is named in a trace.

use tower_identity::{
    AzureCliCredential, ChainedTokenCredential, CredentialError, CredentialExt,
    EnvironmentCredential, TokenRequest,
};

use crate::support::authority::{Authority, Fault, error_body};
use crate::support::creds::{Logs, SCOPE, client_secret};

/// An EnvironmentCredential that finds nothing.
fn empty_env() -> EnvironmentCredential {
    EnvironmentCredential::builder()
        .vars(Vec::<(String, String)>::new())
        .build()
}

/// An AzureCliCredential whose `az` does not exist.
fn no_cli() -> AzureCliCredential {
    AzureCliCredential::builder()
        .program("/nonexistent/az")
        .build()
        .unwrap()
}

fn invalid_client(authority: &Authority) {
    authority.push_fault(Fault::Respond {
        status: 401,
        body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
        headers: vec![],
    });
}

#[tokio::test]
async fn unavailable_credentials_pass_the_request_on() {
    let authority = Authority::start().await;
    let chain = ChainedTokenCredential::new([
        empty_env().boxed_credential(),
        no_cli().boxed_credential(),
        client_secret(&authority).boxed_credential(),
    ])
    .unwrap();
    let token = chain.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
}

#[tokio::test]
async fn a_credential_that_tried_and_failed_stops_the_chain() {
    let failing = Authority::start().await;
    invalid_client(&failing);
    let never = Authority::start().await;
    let chain = ChainedTokenCredential::new([
        empty_env().boxed_credential(),
        client_secret(&failing).boxed_credential(),
        client_secret(&never).boxed_credential(),
    ])
    .unwrap();
    let err = chain.get_token([SCOPE]).await.unwrap_err();
    assert_eq!(never.token_posts(), 0, "the chain stopped before the third");
    assert!(err.is_authentication_failed());
    assert_eq!(err.credential(), "ChainedTokenCredential");
    // The provider's details come through the chain.
    assert_eq!(err.error_codes(), [7000215]);
    let names: Vec<_> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(names, ["EnvironmentCredential", "ClientSecretCredential"]);
    let text = err.to_string();
    assert!(
        text.contains(
            "ClientSecretCredential failed (authentication failed), so the chain stopped"
        ),
        "{text}"
    );
    assert!(
        text.contains("1. EnvironmentCredential (unavailable)"),
        "{text}"
    );
    assert!(text.contains("2. ClientSecretCredential (authentication failed): Microsoft Entra ID error '(invalid_client)"), "{text}");
}

#[tokio::test]
async fn an_invalid_request_stops_the_chain() {
    let authority = Authority::start().await;
    let other = Authority::start().await;
    let chain = ChainedTokenCredential::new([
        client_secret(&authority).boxed_credential(),
        client_secret(&other).boxed_credential(),
    ])
    .unwrap();
    let err = chain
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("not-allowed"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_request());
    assert_eq!(authority.token_posts() + other.token_posts(), 0);
}

#[tokio::test]
async fn when_all_are_unavailable_one_error_lists_every_attempt_in_order() {
    let chain =
        ChainedTokenCredential::new([empty_env().boxed_credential(), no_cli().boxed_credential()])
            .unwrap();
    let err = chain.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_unavailable());
    let text = err.to_string();
    let env_at = text
        .find("1. EnvironmentCredential (unavailable): ")
        .expect(&text);
    let cli_at = text
        .find("2. AzureCliCredential (unavailable): ")
        .expect(&text);
    assert!(env_at < cli_at);
    assert!(
        text.contains("missing AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET"),
        "{text}"
    );
    assert!(text.contains("az login"), "{text}");
}

#[tokio::test]
async fn chains_nest_and_the_outer_error_lists_the_inner_attempts() {
    let inner =
        ChainedTokenCredential::new([empty_env().boxed_credential(), no_cli().boxed_credential()])
            .unwrap();
    let custom = tower::service_fn(|_req: TokenRequest| async {
        Err::<tower_identity::AccessToken, _>(CredentialError::unavailable(
            "MyCredential",
            "not here",
        ))
    });
    let outer =
        ChainedTokenCredential::new([inner.clone().boxed_credential(), custom.boxed_named()])
            .unwrap();
    let err = outer.get_token([SCOPE]).await.unwrap_err();
    let names: Vec<_> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(
        names,
        [
            "EnvironmentCredential",
            "AzureCliCredential",
            "MyCredential"
        ]
    );

    let authority = Authority::start().await;
    let working = ChainedTokenCredential::new([
        inner.boxed_credential(),
        client_secret(&authority).boxed_credential(),
    ])
    .unwrap();
    assert!(working.get_token([SCOPE]).await.is_ok());
}

/// `boxed()` names a closure-based credential after its closure type; name it instead.
trait BoxedNamed {
    fn boxed_named(self) -> tower_identity::BoxCredential;
}

impl<C: tower_identity::TokenCredential> BoxedNamed for C {
    fn boxed_named(self) -> tower_identity::BoxCredential {
        tower_identity::BoxCredential::named("MyCredential", self)
    }
}

#[tokio::test]
async fn typed_or_follows_the_same_rules() {
    let authority = Authority::start().await;
    let typed = empty_env().or(no_cli()).or(client_secret(&authority));
    assert!(typed.get_token([SCOPE]).await.is_ok());

    let failing = Authority::start().await;
    invalid_client(&failing);
    let stops = client_secret(&failing).or(client_secret(&authority));
    let err = stops.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed());
    assert_eq!(err.attempts().len(), 1);
    // Named after what the user wrote, not after a type they never built.
    assert_eq!(err.credential(), "Fallback (a.or(b))");
    let text = err.to_string();
    assert!(text.starts_with("Fallback (a.or(b)): "), "{text}");
    assert_eq!(
        authority.token_posts(),
        1,
        "only the first typed chain's call"
    );

    let err = empty_env()
        .or(no_cli())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(err.credential(), "Fallback (a.or(b))");
    let names: Vec<_> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(names, ["EnvironmentCredential", "AzureCliCredential"]);
}

/// Members boxed under names of the program's own are listed under them, with the credential
/// that raised the error, as the traces name them: `primary (EnvironmentCredential)`. Before,
/// the error named only the credential's type, so two members of one type looked alike. Each
/// attempt's `credential()` stays the name of the credential that raised it, as documented (a
/// program matching on it is not broken by a box's name).
#[tokio::test]
async fn named_members_are_listed_under_their_names() {
    use tower_identity::BoxCredential;
    let failing = Authority::start().await;
    invalid_client(&failing);
    let chain = ChainedTokenCredential::new([
        BoxCredential::named("primary", empty_env()),
        BoxCredential::named("backup", client_secret(&failing)),
    ])
    .unwrap();
    let err = chain.get_token([SCOPE]).await.unwrap_err();
    // `credential()` is still the name of the credential that raised each error, as
    // documented; the member's given name is only in the chain's message.
    let names: Vec<_> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(names, ["EnvironmentCredential", "ClientSecretCredential"]);
    assert!(
        !err.attempts()[1].to_string().contains("backup"),
        "{}",
        err.attempts()[1]
    );
    let text = err.to_string();
    assert!(
        text.contains(
            "backup (ClientSecretCredential) failed (authentication failed), so the chain stopped"
        ),
        "{text}"
    );
    assert!(
        text.contains("1. primary (EnvironmentCredential) (unavailable): "),
        "{text}"
    );
    // `or` alike, and a member whose name is its credential's keeps the one name.
    let err = BoxCredential::named("primary", empty_env())
        .or(no_cli())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    let names: Vec<_> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(names, ["EnvironmentCredential", "AzureCliCredential"]);
    let text = err.to_string();
    assert!(
        text.contains("1. primary (EnvironmentCredential) (unavailable): "),
        "{text}"
    );
    assert!(
        text.contains("2. AzureCliCredential (unavailable): "),
        "{text}"
    );
}

#[test]
fn an_empty_chain_is_a_construction_error() {
    let err = ChainedTokenCredential::new([]).unwrap_err();
    assert!(err.to_string().contains("at least one credential"), "{err}");
}

#[tokio::test]
async fn traces_name_the_credential_that_answered_and_why_others_passed() {
    let authority = Authority::start().await;
    let (logs, _guard) = Logs::capture();
    let chain = ChainedTokenCredential::new([
        empty_env().boxed_credential(),
        client_secret(&authority).boxed_credential(),
    ])
    .unwrap();
    chain.get_token([SCOPE]).await.unwrap();
    let text = logs.text();
    assert!(
        text.contains("credential answered credential=\"ClientSecretCredential\""),
        "{text}"
    );
    assert!(
        text.contains(
            "credential unavailable, trying the next credential=\"EnvironmentCredential\""
        ),
        "{text}"
    );

    let (logs, _guard) = Logs::capture();
    empty_env()
        .or(client_secret(&authority))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(
        logs.text()
            .contains("credential answered credential=\"ClientSecretCredential\""),
        "{}",
        logs.text()
    );
}

/// A member wrapped in middleware is boxed: `or` names it by the box's name (the credential's
/// type), not "BoxCredential".
#[tokio::test]
async fn traces_of_or_name_a_member_wrapped_in_middleware_after_its_credential() {
    use std::time::Duration;
    use tower::ServiceBuilder;
    let authority = Authority::start().await;
    let wrapped = || ServiceBuilder::new().timeout(Duration::from_secs(10));
    let (logs, _guard) = Logs::capture();
    empty_env()
        .with_middleware(wrapped())
        .or(client_secret(&authority).with_middleware(wrapped()))
        .get_token([SCOPE])
        .await
        .unwrap();
    let text = logs.text();
    assert!(
        text.contains(
            "credential unavailable, trying the next credential=\"EnvironmentCredential\""
        ),
        "{text}"
    );
    assert!(
        text.contains("credential answered credential=\"ClientSecretCredential\""),
        "{text}"
    );
    assert!(
        text.contains("credential_attempt{credential=\"EnvironmentCredential\""),
        "{text}"
    );
    assert!(!text.contains("BoxCredential"), "{text}");
}
