//! A fleet of real OS processes sharing tokens through a real Redis: the
//! `distributed_cache` example, started 64 times at once as a deployment starts it, against
//! the loopback authority and API and a `redis-server` of its own. Real time, kept to
//! seconds: tokens carry a `refresh_in` of 2 s so the refresh window opens mid-run.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use tokio::process::Child;

use crate::examples::example;
use crate::support::authority::{Authority, Fault, TokenShape};
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, TENANT};
use crate::support::redis::RedisServer;
use crate::support::resource::Resource;

/// A fleet the size the issue names.
const PROCESSES: usize = 64;
/// The scope the example asks for.
const API_SCOPE: &str = "https://fleet-api.test/.default";
/// The fleet's namespace in Redis.
const PREFIX: &str = "fleet-test";
/// Every process is done well within this, or the test fails instead of hanging.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// `TOKEN_CACHE_BUDGET_MS`. The default (50 ms) is sized for a Redis next to the service;
/// here 64 processes start at once on a machine of two shared cores, where a Redis answer can
/// wait that long for a core. A user on a loaded host sets it the same way. The tests also
/// tell "a request waited a budget for Redis" by a request's time, so the budget sits well
/// above what scheduling alone costs a request here: alone the slowest measured 190–245 ms,
/// and while a fresh clone's suite ran beside it (Python peers compiling) 551 and 562 ms
/// (2026-11-30), which a budget of 500 ms took for a wait.
const BUDGET_MS: u64 = 1000;
/// How long the test waits for a condition the fleet should reach within seconds.
const CONDITION_LIMIT: Duration = Duration::from_secs(30);

/// The first token: renewed from 2 s (plus the layer's jitter, under 1 s at this lifetime),
/// valid for 10 s, so the window opens while the processes run and no token expires in a run.
fn renewed_mid_run() -> TokenShape {
    TokenShape {
        expires_in: 10,
        refresh_in: Some(2),
        ..TokenShape::default()
    }
}

/// A token that needs nothing more during a run.
fn long_lived() -> TokenShape {
    TokenShape::default()
}

/// One fleet at a time: two tests' fleets on the same two cores would measure each other.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The loopback authority and API, a Redis, and the environment the example reads.
struct Fleet {
    /// Held for the test's life.
    _turn: tokio::sync::MutexGuard<'static, ()>,
    authority: Authority,
    api: Resource,
    redis: RedisServer,
    ca_file: tempfile::NamedTempFile,
    /// `TOKEN_CACHE_KEY`: base64 of 32 bytes, as a user generates it.
    key: String,
}

impl Fleet {
    async fn start() -> Fleet {
        let turn = ONE_FLEET.lock().await;
        let authority = Authority::start().await;
        let api = Resource::start().await;
        let redis = RedisServer::start();
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), authority.ca_pem()).unwrap();
        let key = STANDARD.encode(std::array::from_fn::<u8, 32, _>(|_| fastrand::u8(..)));
        Fleet {
            _turn: turn,
            authority,
            api,
            redis,
            ca_file,
            key,
        }
    }

    /// One process of the example: `requests` requests, one every `interval_ms`, with only
    /// the variables a user sets (nothing inherited: no proxy, no other roots).
    fn command(&self, requests: u32, interval_ms: u64) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(example("distributed_cache"));
        command
            .env_clear()
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_CLIENT_ID", CLIENT_ID)
            .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
            .env("AZURE_AUTHORITY_HOST", self.authority.url())
            .env("SSL_CERT_FILE", self.ca_file.path())
            .env("REDIS_URL", self.redis.url())
            .env("TOKEN_CACHE_KEY", &self.key)
            .env("TOKEN_CACHE_PREFIX", PREFIX)
            .env("TOKEN_CACHE_BUDGET_MS", BUDGET_MS.to_string())
            .env("API_URL", format!("{}/items", self.api.url()))
            .env("API_SCOPE", API_SCOPE)
            .env("REQUESTS", requests.to_string())
            .env("INTERVAL_MS", interval_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// `n` processes, started together.
    fn spawn(&self, n: usize, requests: u32, interval_ms: u64) -> Vec<Child> {
        (0..n)
            .map(|_| self.command(requests, interval_ms).spawn().unwrap())
            .collect()
    }

    /// [`PROCESSES`] processes making `requests` requests 100 ms apart on a cold cache, once
    /// every one of them has called the API: on one token, whose refresh window opens soon.
    async fn cold_start(&self, requests: u32) -> Vec<Child> {
        self.authority.set_response(renewed_mid_run());
        let children = self.spawn(PROCESSES, requests, 100);
        self.until("every process called the API", |f| {
            f.api.count() >= PROCESSES
        })
        .await;
        let posts = self.authority.token_posts();
        if posts != 1 {
            let summaries = finish(self, children).await;
            panic!(
                "a cold fleet made {posts} token requests, not 1: {}",
                totals(&summaries)
            );
        }
        children
    }

    /// Waits (bounded) until `done` holds, polling the loopback servers' counters.
    async fn until(&self, what: &str, done: impl Fn(&Fleet) -> bool) {
        let deadline = tokio::time::Instant::now() + CONDITION_LIMIT;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {CONDITION_LIMIT:?} ({} token requests, {} API requests)",
                self.authority.token_posts(),
                self.api.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The access tokens the authority issued so far (`at-<n>-<tenant>`).
    fn issued_tokens(&self) -> Vec<String> {
        (1..=self.authority.token_posts())
            .map(|n| format!("at-{n}-{TENANT}"))
            .collect()
    }

    /// The distinct tokens the API was called with.
    fn tokens_seen_by_api(&self) -> BTreeSet<String> {
        self.api
            .requests()
            .iter()
            .filter_map(|seen| seen.bearer().map(str::to_owned))
            .collect()
    }
}

/// One process's summary line, `key=value` pairs.
struct Summary(HashMap<String, u64>);

impl Summary {
    fn parse(line: &str) -> Summary {
        Summary(
            line.split_whitespace()
                .map(|pair| {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("not key=value: {pair:?} in {line:?}"));
                    (key.to_owned(), value.parse().unwrap())
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.0))
    }
}

/// Waits for every process; each must exit 0 having printed its summary and no secret.
async fn finish(fleet: &Fleet, children: Vec<Child>) -> Vec<Summary> {
    let outputs = tokio::time::timeout(
        RUN_LIMIT,
        futures_util::future::join_all(children.into_iter().map(Child::wait_with_output)),
    )
    .await
    .unwrap_or_else(|_| panic!("the fleet still runs after {RUN_LIMIT:?}"));
    let secrets: Vec<String> = fleet
        .issued_tokens()
        .into_iter()
        .chain([CLIENT_SECRET.to_owned()])
        .collect();
    outputs
        .into_iter()
        .map(|output| {
            let output = output.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "a process failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
                output.status
            );
            for secret in &secrets {
                assert!(
                    !stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()),
                    "a process printed {secret:?}"
                );
            }
            Summary::parse(stdout.trim_end())
        })
        .collect()
}

fn total(summaries: &[Summary], key: &str) -> u64 {
    summaries.iter().map(|s| s.get(key)).sum()
}

/// The fleet's figures added up, for failure messages.
fn totals(summaries: &[Summary]) -> String {
    [
        "shared_hits",
        "leases_won",
        "leases_lost",
        "idp_calls",
        "store_errors",
    ]
    .map(|key| format!("{key}={}", total(summaries, key)))
    .join(" ")
}

/// Every request of every process succeeded.
fn assert_all_ok(summaries: &[Summary], requests: u32) {
    for summary in summaries {
        assert_eq!(summary.get("ok"), u64::from(requests), "{:?}", summary.0);
        assert_eq!(summary.get("failed"), 0, "{:?}", summary.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_processes_make_one_token_request_and_one_renewal() {
    let fleet = Fleet::start().await;
    let requests = 60;
    let children = fleet.cold_start(requests).await;

    // The renewal is slow (1.5 s): a request that waited for it would show it.
    fleet.authority.set_response(long_lived());
    let renewal = Duration::from_millis(1500);
    fleet.authority.push_fault(Fault::Delay(renewal));
    let summaries = finish(&fleet, children).await;

    assert_all_ok(&summaries, requests);
    assert_eq!(
        fleet.authority.token_posts(),
        2,
        "one token and one renewal for the fleet"
    );
    let seen = fleet.tokens_seen_by_api();
    let issued: BTreeSet<String> = fleet.issued_tokens().into_iter().collect();
    assert_eq!(
        seen, issued,
        "the API saw the first token and the renewed one"
    );
    let slowest = summaries.iter().map(|s| s.get("max_ms")).max().unwrap();
    assert!(
        u128::from(slowest) < renewal.as_millis() / 2,
        "a request waited for the renewal: {slowest} ms"
    );
    assert_eq!(
        total(&summaries, "idp_calls"),
        2,
        "the processes' own count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_killed_mid_run_fails_no_request() {
    let mut fleet = Fleet::start().await;
    let requests = 50;
    let running = fleet.cold_start(requests).await;

    // Redis stops answering before the refresh window: every renewal finds it silent.
    fleet.redis.pause();
    fleet.authority.set_response(long_lived());
    // A cold fleet started now has nobody to share with, and no Redis call may hold it up
    // beyond the budget: far below the lease wait limit, which a hung call would reach.
    let late = 16;
    let late_requests = 5;
    let cold = fleet.spawn(late, late_requests, 100);
    let most = 1 + PROCESSES + late;
    fleet
        .until("every process renewed or acquired alone", |f| {
            f.authority.token_posts() >= most
        })
        .await;
    fleet.redis.kill();

    let summaries = finish(&fleet, running).await;
    assert_all_ok(&summaries, requests);
    // The renewals ran behind the current token: no request waited a budget for Redis.
    let slowest = summaries.iter().map(|s| s.get("max_ms")).max().unwrap();
    assert!(slowest < BUDGET_MS, "a request waited: {slowest} ms");
    assert_eq!(total(&summaries, "idp_calls"), 1 + PROCESSES as u64);
    let cold = finish(&fleet, cold).await;
    assert_all_ok(&cold, late_requests);
    for summary in &cold {
        // One budget spent on Redis, then its own token request.
        let first = summary.get("first_ms");
        assert!(
            first < BUDGET_MS + 1500,
            "a cold start waited on Redis: {first} ms"
        );
        assert_eq!(summary.get("idp_calls"), 1, "{:?}", summary.0);
        assert!(summary.get("store_errors") >= 1, "{:?}", summary.0);
    }
    assert_eq!(
        fleet.authority.token_posts(),
        most,
        "at most one token request per process"
    );

    // Back: a fleet started on the restarted Redis shares one token again.
    fleet.redis.restart();
    fleet.authority.clear();
    let again = fleet.spawn(PROCESSES, 3, 100);
    let summaries = finish(&fleet, again).await;
    assert_all_ok(&summaries, 3);
    assert_eq!(
        fleet.authority.token_posts(),
        1,
        "one per fleet again: {}",
        totals(&summaries)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_readable_at_rest_after_a_fleet_run() {
    let fleet = Fleet::start().await;
    let requests = 3;
    let summaries = finish(&fleet, fleet.spawn(16, requests, 50)).await;
    assert_all_ok(&summaries, requests);
    assert_eq!(fleet.authority.token_posts(), 1);

    let entries = fleet.redis.dump();
    assert!(
        entries
            .iter()
            .any(|(key, _)| key.starts_with(&format!("{PREFIX}:{{"))),
        "the fleet's entry is in Redis: {entries:?}"
    );
    let mut secrets = fleet.issued_tokens();
    secrets.push(CLIENT_SECRET.to_owned());
    for (key, value) in &entries {
        for secret in &secrets {
            for encoded in encodings(secret.as_bytes()) {
                let found = value
                    .windows(encoded.len())
                    .any(|window| window == encoded.as_bytes());
                assert!(!found, "{key} holds {secret:?} as {encoded:?}");
                assert!(!key.contains(&encoded), "{key} names {secret:?}");
            }
        }
    }
}

/// A secret as it could sit in a value: raw, and as base64 in either alphabet at each of the
/// three alignments it can have inside a longer encoded text (the characters that depend on
/// the secret's bytes alone).
fn encodings(secret: &[u8]) -> Vec<String> {
    let mut all = vec![String::from_utf8_lossy(secret).into_owned()];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3 {
            let mut shifted = vec![0; shift];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted);
            // Characters carrying a bit of the leading filler, or of what follows, vary.
            let from = (shift * 8).div_ceil(6);
            let to = shifted.len() * 8 / 6;
            all.push(encoded[from..to].to_owned());
        }
    }
    all
}
