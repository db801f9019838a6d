//! Credentials inside tower middleware (timeout, buffer, rate limit, retry) against the
//! loopback authority, each used in a chain, with `.or()` and in the bearer layer; which
//! credential answered, on the token; and what the library logs.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::BearerTokenLayer;
use tower_identity::{
    AccessToken, AzureCliCredential, BoxCredential, ChainedTokenCredential, CredentialError,
    CredentialExt, DefaultAzureCredential, EnvironmentCredential, TokenRequest,
};

use crate::support::authority::{Authority, Fault};
use crate::support::client::hyper_client;
use crate::support::creds::{
    CLIENT_ID, CLIENT_SECRET, Logs, SCOPE, TENANT, client_secret, client_secret_with, http_builder,
    secs,
};
use crate::support::resource::Resource;

/// An EnvironmentCredential that finds nothing: unavailable.
fn empty_env() -> EnvironmentCredential {
    EnvironmentCredential::builder()
        .vars(Vec::<(String, String)>::new())
        .build()
}

/// One request through the bearer layer over `credential`: the resource's status and the
/// `Authorization` it saw.
async fn through_layer(credential: BoxCredential) -> (StatusCode, Option<String>) {
    let resource = Resource::start().await;
    let service = ServiceBuilder::new()
        .layer(BearerTokenLayer::new(credential, [SCOPE]))
        .service(hyper_client::<Full<Bytes>>());
    let request = Request::get(format!("{}/a", resource.url()))
        .body(Full::default())
        .unwrap();
    let status = match service.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            response.into_body().collect().await.unwrap();
            status
        }
        Err(_) => StatusCode::UNAUTHORIZED,
    };
    let authorization = resource
        .requests()
        .first()
        .and_then(|r| r.authorization.clone());
    (status, authorization)
}

// ---------------------------------------------------------------------------------------------
// timeout

#[tokio::test(start_paused = true)]
async fn a_timeout_is_a_timeout_error_that_stops_the_chain_and_reaches_the_layer() {
    let slow = Authority::start().await;
    let never = Authority::start().await;
    let timed = || client_secret(&slow).with_middleware(ServiceBuilder::new().timeout(secs(5)));

    slow.push_fault(Fault::Hang);
    let started = Instant::now();
    let err = timed().get_token([SCOPE]).await.unwrap_err();
    assert!(started.elapsed() >= secs(5), "{:?}", started.elapsed());
    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(
        err.is_authentication_failed(),
        "a timeout is not unavailable"
    );
    assert_eq!(err.credential(), "ClientSecretCredential");
    assert!(err.to_string().contains("timeout"), "{err}");

    // In a chain and with `.or()`: tried and failed, so the next credential is never asked.
    slow.push_fault(Fault::Hang);
    let chain =
        ChainedTokenCredential::new([timed(), client_secret(&never).boxed_credential()]).unwrap();
    let err = chain.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.attempts().len(), 1);
    slow.push_fault(Fault::Hang);
    let err = timed()
        .or(client_secret(&never))
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(never.token_posts(), 0);

    // The bearer layer hands the caller no request without a token.
    slow.push_fault(Fault::Hang);
    let (_, authorization) = through_layer(timed()).await;
    assert_eq!(authorization, None);

    // Without a hang the wrapped credential answers, in every position.
    let token = timed().get_token([SCOPE]).await.unwrap();
    assert_eq!(token.credential(), Some("ClientSecretCredential"));
    let (status, authorization) = through_layer(timed()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(authorization.unwrap().starts_with("Bearer at-"));
}

// ---------------------------------------------------------------------------------------------
// buffer

#[tokio::test]
async fn a_buffer_shares_one_credential_across_tasks() {
    let authority = Authority::start().await;
    let buffered = BoxCredential::from_service(
        "Buffered",
        ServiceBuilder::new()
            .buffer(4)
            .service(client_secret(&authority)),
    );
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let credential = buffered.clone();
            tokio::spawn(async move { credential.get_token([SCOPE]).await })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert_eq!(token.secret().expose_secret(), "at-1-contoso");
        assert_eq!(token.credential(), Some("ClientSecretCredential"));
    }
    assert_eq!(authority.token_posts(), 1);

    // Behind an unavailable credential, in a chain and with `.or()`, and in the layer.
    let chain =
        ChainedTokenCredential::new([empty_env().boxed_credential(), buffered.clone()]).unwrap();
    assert_eq!(
        chain.get_token([SCOPE]).await.unwrap().credential(),
        Some("ClientSecretCredential")
    );
    empty_env()
        .or(buffered.clone())
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(through_layer(buffered).await.0, StatusCode::OK);
    assert_eq!(
        authority.token_posts(),
        1,
        "every path used the one cached token"
    );
}

#[tokio::test]
async fn an_unavailable_credential_stays_unavailable_through_a_buffer() {
    let authority = Authority::start().await;
    let buffered = BoxCredential::from_service(
        "Buffered",
        ServiceBuilder::new().buffer(4).service(empty_env()),
    );
    let err = buffered.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.credential(), "EnvironmentCredential");
    let token = buffered
        .or(client_secret(&authority))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(token.credential(), Some("ClientSecretCredential"));
}

// ---------------------------------------------------------------------------------------------
// rate limit

#[tokio::test(start_paused = true)]
async fn a_rate_limit_spaces_the_calls() {
    let authority = Authority::start().await;
    // `RateLimit` is not `Clone`: a buffer in front makes it one shared service.
    let limited = BoxCredential::from_service(
        "Limited",
        ServiceBuilder::new()
            .buffer(8)
            .rate_limit(1, secs(10))
            .service(client_secret(&authority)),
    );
    let started = Instant::now();
    let mut at = Vec::new();
    for _ in 0..3 {
        limited.get_token([SCOPE]).await.unwrap();
        at.push(started.elapsed());
    }
    assert!(at[0] < secs(1), "{at:?}");
    assert!(at[1] >= secs(10) && at[2] >= secs(20), "{at:?}");

    let chain = ChainedTokenCredential::new([limited.clone()]).unwrap();
    chain.get_token([SCOPE]).await.unwrap();
    empty_env()
        .or(limited.clone())
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(through_layer(limited).await.0, StatusCode::OK);
    assert_eq!(authority.token_posts(), 1);
}

// ---------------------------------------------------------------------------------------------
// retry

/// Retries transient failures, up to `left` more times.
#[derive(Clone)]
struct RetryTransient {
    left: usize,
}

impl Policy<TokenRequest, AccessToken, CredentialError> for RetryTransient {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut TokenRequest,
        result: &mut Result<AccessToken, CredentialError>,
    ) -> Option<Self::Future> {
        match result {
            Err(error) if error.is_transient() && self.left > 0 => {
                self.left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &TokenRequest) -> Option<TokenRequest> {
        Some(request.clone())
    }
}

#[tokio::test]
async fn a_retry_layer_retries_a_failing_credential() {
    let authority = Authority::start().await;
    // No built-in retries, so every 503 reaches the retry layer.
    let http = http_builder(&authority).no_retry().build().unwrap();
    let credential = client_secret_with(&authority, http);
    let retried = || {
        BoxCredential::from_service(
            "Retried",
            ServiceBuilder::new()
                .retry(RetryTransient { left: 2 })
                .service(credential.clone()),
        )
    };

    authority.push_fault(Fault::ServerError(503));
    authority.push_fault(Fault::ServerError(503));
    let token = retried().get_token([SCOPE]).await.unwrap();
    assert_eq!(authority.token_posts(), 3);
    assert_eq!(token.credential(), Some("ClientSecretCredential"));

    // Out of retries: the credential's own error, unchanged.
    authority.clear();
    for _ in 0..3 {
        authority.push_fault(Fault::ServerError(503));
    }
    let err = retried()
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(authority.token_posts(), 3);
    assert_eq!(err.credential(), "ClientSecretCredential");
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));

    // In a chain, with `.or()` and in the layer (fresh scopes and layer: a new acquisition).
    authority.clear();
    authority.push_fault(Fault::ServerError(503));
    let chain = ChainedTokenCredential::new([empty_env().boxed_credential(), retried()]).unwrap();
    chain
        .get_token(["https://chain.test/.default"])
        .await
        .unwrap();
    authority.push_fault(Fault::ServerError(503));
    empty_env()
        .or(retried())
        .get_token(["https://or.test/.default"])
        .await
        .unwrap();
    authority.push_fault(Fault::ServerError(503));
    let (status, _) = through_layer(BoxCredential::from_service(
        "Retried",
        ServiceBuilder::new()
            .retry(RetryTransient { left: 2 })
            .service(client_secret_with(
                &authority,
                http_builder(&authority).no_retry().build().unwrap(),
            )),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(authority.token_posts(), 6);
}

// ---------------------------------------------------------------------------------------------
// which credential answered

#[tokio::test]
async fn a_chains_token_names_the_credential_that_answered() {
    let authority = Authority::start().await;
    let chain = ChainedTokenCredential::new([
        empty_env().boxed_credential(),
        client_secret(&authority).boxed_credential(),
    ])
    .unwrap();
    let token = chain.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.credential(), Some("ClientSecretCredential"));
    assert!(
        format!("{token:?}").contains("ClientSecretCredential"),
        "{token:?}"
    );
    // From the cache too.
    assert_eq!(
        chain.get_token([SCOPE]).await.unwrap().credential(),
        Some("ClientSecretCredential")
    );

    // A credential of your own: no name on its tokens, the box's name once boxed, the type's
    // with `.or()`. The name is not part of equality.
    let expires_on = Instant::now() + secs(60);
    let own = tower::service_fn(move |_: TokenRequest| async move {
        Ok::<_, CredentialError>(AccessToken::new("own", expires_on))
    });
    let bare = own.get_token([SCOPE]).await.unwrap();
    assert_eq!(bare.credential(), None);
    let boxed = BoxCredential::named("Mine", own)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(boxed.credential(), Some("Mine"));
    assert_eq!(boxed, bare);
    let fallback = empty_env().or(own).get_token([SCOPE]).await.unwrap();
    assert_eq!(fallback.credential(), Some("ServiceFn"));
}

#[tokio::test]
async fn default_azure_credential_tokens_name_the_member_that_answered() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        DefaultAzureCredential::builder()
            .exclude_managed_identity_credential(true)
            .exclude_shared_token_cache_credential(true)
            .exclude_azure_developer_cli_credential(true)
            .http_client(crate::support::creds::http(&authority))
    };

    // Environment configured: EnvironmentCredential, under its own name.
    let dac = base()
        .vars([
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", &authority.url()),
        ])
        .exclude_azure_cli_credential(true)
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.credential(), Some("EnvironmentCredential"));
    assert_eq!(token.credential(), dac.answered());

    // Nothing in the environment: environment and workload identity are unavailable, Azure
    // CLI answers.
    let program = crate::default_credential::signed_in(dir.path(), "az");
    let dac = base()
        .vars(Vec::<(String, String)>::new())
        .azure_cli_credential(
            AzureCliCredential::builder()
                .program(program)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(token.credential(), Some("AzureCliCredential"));
}

// ---------------------------------------------------------------------------------------------
// tracing

#[tokio::test]
async fn successful_calls_log_nothing_at_info_and_acquisitions_run_in_spans() {
    let authority = Authority::start().await;
    let (logs, _guard) = Logs::capture();
    let chain = ChainedTokenCredential::new([
        empty_env().boxed_credential(),
        client_secret(&authority).boxed_credential(),
    ])
    .unwrap();
    for _ in 0..3 {
        chain.get_token([SCOPE]).await.unwrap();
    }
    let text = logs.text();
    let loud: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.contains("tower_identity")
                && [" INFO ", " WARN ", " ERROR "]
                    .iter()
                    .any(|l| line.contains(l))
        })
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    // The answer is a DEBUG event inside the attempt's span, naming the member and attempt.
    assert!(
        text.lines().any(|line| line.contains(" DEBUG ")
            && line.contains("credential_attempt{credential=\"ClientSecretCredential\" attempt=2")
            && line.contains("credential answered")),
        "{text}"
    );
    // The acquisition's span (entered by its task) carries the credential and the request.
    assert!(
        text.contains("token_acquisition{credential=\"ClientSecretCredential\" attempt=1")
            && text.contains(&format!(
                "token_request{{tenant={TENANT} scopes=[\"{SCOPE}\"]"
            )),
        "{text}"
    );
    assert!(
        !text.contains(CLIENT_SECRET) && !text.contains("at-1-contoso"),
        "{text}"
    );
}
