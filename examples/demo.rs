//! The whole story in one run, on loopback, with nothing to configure:
//! a credential chain, token acquisition, cache hits, a proactive renewal that no request
//! waits for, and a CAE claims challenge answered with a re-send.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! It starts an Entra-shaped token endpoint and a protected API (HTTPS, with a throwaway CA)
//! from the test suite's support code. The token endpoint suggests renewing tokens after 3 s
//! (Entra's `refresh_in`), so the renewal shows up quickly.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::{BearerToken, BearerTokenLayer};
use tower_identity::{
    ChainedTokenCredential, ClientSecretCredential, CredentialExt, EnvironmentCredential,
    HttpClient,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use common::SCOPE;
use common::authority::{Authority, Fault, TokenShape};
use common::resource::{Mode, Resource};

const LIFETIME: u64 = 3600;
const REFRESH_IN: u64 = 3;

type Api = BearerToken<common::HyperClient<Full<Bytes>>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The error's Display (a chain's attempts one per line), not the Debug a `Result`
    // returned from main prints.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let chain_events = ChainEvents::install();
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        expires_in: LIFETIME,
        refresh_in: Some(REFRESH_IN),
        ..TokenShape::default()
    });
    let api = Resource::start().await;
    api.set_mode(Mode::Cae);
    println!("tower-identity demo: everything below runs on loopback");
    println!(
        "  token endpoint  {}/contoso/oauth2/v2.0/token",
        authority.url()
    );
    println!("  protected API   {}", api.url());

    // 1. A chain: the environment has nothing (we give it no variables), so the service
    //    principal answers.
    heading(1, "A credential chain");
    // Loopback only: a proxy from the environment (HTTPS_PROXY without 127.0.0.1 in NO_PROXY)
    // could not reach these servers.
    let http = HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .no_proxy()
        .build()?;
    let service_principal = ClientSecretCredential::builder(
        "contoso",
        "00000000-0000-0000-0000-0000000000de",
        "demo-secret",
    )
    .authority_host(authority.url())
    .http_client(http)
    .build()?;
    let chain = ChainedTokenCredential::new([
        EnvironmentCredential::builder()
            .vars(Vec::<(String, String)>::new())
            .build()
            .boxed_credential(),
        service_principal.boxed_credential(),
    ])?;
    let token = chain.get_token([SCOPE]).await?;
    for line in chain_events.take() {
        println!("  {line}");
    }
    println!(
        "  token expires in {} s; the endpoint suggests renewing it after {REFRESH_IN} s",
        token.expires_in().as_secs()
    );

    // 2. The layer, with CAE on and no jitter (so the demo is predictable).
    heading(2, "Requests through BearerTokenLayer");
    let layer = BearerTokenLayer::builder(chain, [SCOPE])
        .refresh_jitter(Duration::ZERO)
        .enable_cae(true)
        .build();
    let service: Api = ServiceBuilder::new()
        .layer(layer)
        .service(common::hyper_client());
    let mut stats = Stats::default();
    for i in 1..=4 {
        get(
            &service,
            &api,
            &authority,
            &mut stats,
            &format!("/items/{i}"),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 3. Renewal: after refresh_in, the request that notices starts one renewal in the
    //    background; the token endpoint takes 800 ms to answer, and nobody waits for it.
    heading(
        3,
        "Proactive renewal (the token endpoint now takes 800 ms to answer)",
    );
    authority.push_fault(Fault::Delay(Duration::from_millis(800)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Until the renewed token shows up (bounded, for slow machines).
    let before = api.accepted_tokens().last().cloned();
    for i in 5..=40 {
        get(
            &service,
            &api,
            &authority,
            &mut stats,
            &format!("/items/{i}"),
        )
        .await?;
        if i >= 9 && api.accepted_tokens().last() != before.as_ref() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let slowest_during_renewal = stats.slowest;

    // 4. CAE: the API revokes the current token; its next answer is a claims challenge, which
    //    the layer answers with a token for those claims and one re-send.
    heading(4, "A CAE claims challenge");
    let current = api.accepted_tokens().last().cloned().unwrap_or_default();
    api.revoke(&current);
    println!("  the API revokes {current}");
    get(&service, &api, &authority, &mut stats, "/items/revoked").await?;
    get(&service, &api, &authority, &mut stats, "/items/after").await?;

    heading(5, "Summary");
    let challenged = api.requests().len() - stats.requests;
    println!("  {} of {} requests answered 200", stats.ok, stats.requests);
    println!(
        "  {} token requests: 1 for the chain, then {} by the layer (first token, renewal, claims token)",
        authority.token_posts(),
        authority.token_posts() - 1
    );
    println!("  {challenged} claims challenge answered with one re-send");
    println!(
        "  slowest request up to the renewal {:.1} ms: the renewal took 800 ms and no request waited for it",
        slowest_during_renewal.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn heading(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

#[derive(Default)]
struct Stats {
    requests: usize,
    ok: usize,
    slowest: Duration,
    last_token: String,
}

/// One GET through the layer, printed with the token the API saw and what it cost.
async fn get(
    service: &Api,
    api: &Resource,
    authority: &Authority,
    stats: &mut Stats,
    path: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let posts_before = authority.token_posts();
    let seen_before = api.requests().len();
    let started = Instant::now();
    let request = http::Request::get(format!("{}{path}", api.url())).body(Full::default())?;
    let response = service.clone().oneshot(request).await?;
    let elapsed = started.elapsed();
    let status = response.status();
    response.into_body().collect().await?;
    stats.requests += 1;
    if status.is_success() {
        stats.ok += 1;
    }
    stats.slowest = stats.slowest.max(elapsed);
    let seen = api.requests();
    let token = seen
        .last()
        .and_then(|s| s.bearer())
        .unwrap_or("-")
        .to_owned();
    let posted = authority.token_posts() > posts_before;
    let renewing = authority.in_flight() > 0;
    let what = if seen.len() - seen_before > 1 {
        "401 insufficient_claims → claims token → re-sent"
    } else if posted && renewing {
        "started a renewal in the background, did not wait"
    } else if posted {
        "token acquired"
    } else if renewing {
        "cached; the renewal is still running"
    } else if !stats.last_token.is_empty() && token != stats.last_token {
        "the renewed token"
    } else {
        "cached"
    };
    stats.last_token = token.clone();
    println!(
        "  GET {path:<15} → {} in {:>6.1} ms  {token:<20} ({what})",
        status.as_u16(),
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Turns the chain's trace events into readable lines.
#[derive(Clone, Default)]
struct ChainEvents(Arc<Mutex<Vec<String>>>);

impl ChainEvents {
    fn install() -> Self {
        let events = Self::default();
        tracing_subscriber::registry().with(events.clone()).init();
        events
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ChainEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "tower_identity::credential::chain" {
            return;
        }
        #[derive(Default)]
        struct Fields {
            message: String,
            credential: String,
            reason: String,
        }
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                match field.name() {
                    "credential" => self.credential = value.to_owned(),
                    "reason" => self.reason = value.to_owned(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "reason" => self.reason = format!("{value}", value = DebugAsDisplay(value)),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = if fields.message.contains("unavailable") {
            // The first sentence says it; the rest is advice for real use.
            let reason = fields.reason.split(". ").next().unwrap_or_default();
            format!("{}: unavailable ({reason})", fields.credential)
        } else {
            format!("{}: answered", fields.credential)
        };
        self.0.lock().unwrap().push(line);
    }
}

struct DebugAsDisplay<'a>(&'a dyn std::fmt::Debug);

impl std::fmt::Display for DebugAsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
