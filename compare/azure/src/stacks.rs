//! The two stacks under test, each as an application builds it, behind one trait so that the
//! scenarios are written once (generic, so no boxing is added to either side's request path).
//!
//! * ours: `BearerTokenLayer` over a `ClientSecretCredential`, in front of a hyper-util client
//!   with hyper-rustls;
//! * azure_core: a `Pipeline` (its default per-call and retry policies) with a
//!   `BearerTokenAuthorizationPolicy` over azure_identity's `ClientSecretCredential`, on a
//!   reqwest transport (the client azure_core builds by default, here given the test CA).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::Secret;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    AsyncRawResponse, ClientOptions, Context, HttpClient, Method, Pipeline, Transport, Url,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_identity::{BearerTokenLayer, BoxError, ClientSecretCredential};

use crate::server::{CLIENT_ID, CLIENT_SECRET, SCOPE, Server, TENANT};

/// One authenticated GET of the resource; its status (a 401 the stack hands back is a status,
/// not an error).
pub trait Stack: Clone + Send + Sync + 'static {
    fn get(&self) -> impl Future<Output = Result<u16, String>> + Send;
}

/// Which stack; the scenarios build a fresh one per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Azure,
}

/// How a stack is built for a scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// At most this many requests on the wire to the resource at once (the transport waits
    /// for a permit), for the cold start: without it 10 000 requests open 10 000 connections.
    pub gate: Option<usize>,
    /// tower-identity only: answer CAE claims challenges (azure_core 1.1 has no API for it).
    pub cae: bool,
}

fn client_tls(server: &Server) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca_der.clone()).expect("test CA");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

// ---- tower-identity ----

pub type Hyper = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Clone)]
pub struct Ours<S> {
    service: S,
    uri: http::Uri,
}

impl<S> Stack for Ours<S>
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<Incoming>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn get(&self) -> Result<u16, String> {
        let request = http::Request::get(self.uri.clone())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .service
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| e.into().to_string())?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn hyper_client(server: &Server) -> Hyper {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(server))
        .https_only()
        .enable_http1()
        .build();
    HyperClient::builder(TokioExecutor::new()).build(https)
}

fn our_layer(server: &Server, cae: bool) -> BearerTokenLayer {
    let http = tower_identity::HttpClient::builder()
        .add_root_certificates_pem(&server.ca_pem)
        .build()
        .expect("token HTTP client");
    let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(server.authority_host())
        .http_client(http)
        .build()
        .expect("credential");
    // No jitter: the renewal scenarios need it to start when the token says (`refresh_in`
    // 1 s), as azure_core's does (it has no jitter). Everything else is the default.
    BearerTokenLayer::builder(credential, [SCOPE])
        .refresh_jitter(Duration::ZERO)
        .enable_cae(cae)
        .build()
}

/// The bare hyper-util client, no authentication: the floor for allocations.
pub fn bare(server: &Server) -> Ours<Hyper> {
    Ours {
        service: hyper_client(server),
        uri: server.resource_url().parse().expect("resource URI"),
    }
}

// ---- azure_core ----

#[derive(Clone)]
pub struct Azure {
    pipeline: Pipeline,
    url: Url,
}

impl Stack for Azure {
    async fn get(&self) -> Result<u16, String> {
        let mut request = azure_core::http::Request::new(self.url.clone(), Method::Get);
        match self
            .pipeline
            .send(&Context::new(), &mut request, None)
            .await
        {
            Ok(response) => Ok(u16::from(response.status())),
            // The pipeline turns a non-2xx answer into an error carrying its status.
            Err(error) => match error.http_status() {
                Some(status) => Ok(u16::from(status)),
                None => Err(error.to_string()),
            },
        }
    }
}

/// azure_core's transport with the same gate as ours.
#[derive(Debug)]
struct GatedReqwest {
    client: reqwest::Client,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl HttpClient for GatedReqwest {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<AsyncRawResponse> {
        let _permit = self.gate.acquire().await;
        self.client.execute_request(request).await
    }
}

fn azure(server: &Server, gate: Option<usize>) -> Azure {
    // The settings azure_core's own reqwest client has (timeouts, no redirects), on ring with
    // the test CA instead of its reqwest_rustls feature (which brings aws-lc-rs).
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(client_tls(server))
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client");
    let transport: Arc<dyn HttpClient> = match gate {
        Some(permits) => Arc::new(GatedReqwest {
            client,
            gate: Arc::new(Semaphore::new(permits)),
        }),
        None => Arc::new(client),
    };
    let options = || {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = server.authority_host();
        ClientOptions {
            transport: Some(Transport::new(Arc::clone(&transport))),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..ClientOptions::default()
        }
    };
    let credential = azure_identity::ClientSecretCredential::new(
        TENANT,
        CLIENT_ID.to_owned(),
        Secret::new(CLIENT_SECRET),
        Some(azure_identity::ClientSecretCredentialOptions {
            client_options: options(),
        }),
    )
    .expect("azure credential");
    let policy = BearerTokenAuthorizationPolicy::new(credential, [SCOPE]);
    let pipeline = Pipeline::new(
        Some("compare-azure"),
        Some("0.0.0"),
        options(),
        Vec::new(),
        vec![Arc::new(policy)],
        None,
    );
    Azure {
        pipeline,
        url: Url::parse(&server.resource_url()).expect("resource URL"),
    }
}

/// Runs `f` with a freshly built stack of `side`. Generic over the stack type, so the
/// scenario is monomorphised per stack (and per gated / ungated variant).
pub async fn with_stack<F, R>(side: Side, server: &Server, options: Options, f: F) -> R
where
    F: StackFn<R>,
{
    match side {
        Side::Azure => f.run(azure(server, options.gate)).await,
        Side::Ours => {
            let layer = our_layer(server, options.cae);
            let client = hyper_client(server);
            let uri: http::Uri = server.resource_url().parse().expect("resource URI");
            match options.gate {
                None => {
                    let service = ServiceBuilder::new().layer(layer).service(client);
                    f.run(Ours { service, uri }).await
                }
                Some(permits) => {
                    let gate = Arc::new(Semaphore::new(permits));
                    let gated = tower::service_fn(move |request| {
                        let (client, gate) = (client.clone(), Arc::clone(&gate));
                        async move {
                            let _permit = gate.acquire().await;
                            client.request(request).await
                        }
                    });
                    let service = ServiceBuilder::new().layer(layer).service(gated);
                    f.run(Ours { service, uri }).await
                }
            }
        }
    }
}

/// A scenario body, generic over the stack (closures cannot be).
pub trait StackFn<R> {
    fn run<S: Stack>(self, stack: S) -> impl Future<Output = R>;
}
