//! Each fault switch with its documented outcome, on tokio's paused clock (the emulators
//! sleep and count time on it, so minutes of backoff take no time). Plus Arc's key-file checks.
//!
//! The credentials use their built-in HTTP clients: the IMDS retry schedule under test is
//! theirs. Their timers (connect, per attempt, total) are armed while loopback I/O is in
//! flight; loopback answers are ready at the next poll, before the paused clock would jump.

use std::time::Duration;

use tokio::time::Instant;
use tower_identity::{CredentialExt, ManagedIdentityCredential};

use super::{Identity, SCOPE, credential};
use crate::support::mi_emulator::{ARC_KEY, Emulator, Fault, Flavour, closed_base_url};

/// The arrival times of the emulator's requests, in milliseconds (tokio clock).
fn arrivals_ms(em: &Emulator) -> Vec<u128> {
    em.requests().iter().map(|r| r.at.as_millis()).collect()
}

fn statuses(em: &Emulator) -> Vec<Option<u16>> {
    em.requests().iter().map(|r| r.status).collect()
}

#[tokio::test(start_paused = true)]
async fn imds_answering_410_for_70_seconds_is_waited_out() {
    // IMDS answers 410 while it is being updated, for up to 70 s; after a 410 the waits are
    // 0, 5, 10, 20 and 40 s (azure-identity's factor 2.5), so the sixth attempt at 75 s wins.
    let em = Emulator::start(Flavour::Imds).await;
    em.gone_for(Duration::from_secs(70));
    let started = Instant::now();
    let token = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    assert_eq!(
        statuses(&em),
        [410, 410, 410, 410, 410, 200].map(Some),
        "{:?}",
        arrivals_ms(&em)
    );
    assert_eq!(arrivals_ms(&em), [0, 0, 5_000, 15_000, 35_000, 75_000]);
    assert_eq!(started.elapsed().as_secs(), 75);
}

#[tokio::test(start_paused = true)]
async fn imds_still_gone_after_the_retries_fails_with_the_status() {
    let em = Emulator::start(Flavour::Imds).await;
    em.gone_for(Duration::from_secs(600));
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(em.request_count(), 6, "one attempt and five retries");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(410), "{err}");
    assert!(
        !err.is_unavailable(),
        "IMDS answered: a failure, not an absence: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    for flavour in [Flavour::Imds, Flavour::AppService] {
        let em = Emulator::start(flavour).await;
        em.push_fault(Fault::TooManyRequests {
            retry_after: "7".to_owned(),
        });
        credential(&em, Identity::System)
            .get_token([SCOPE])
            .await
            .unwrap();
        assert_eq!(statuses(&em), [Some(429), Some(200)], "{flavour:?}");
        assert_eq!(arrivals_ms(&em), [0, 7_000], "{flavour:?}");
    }
}

/// Requests one token takes: Arc's challenge, then the request with the key.
fn per_token(flavour: Flavour) -> usize {
    if flavour == Flavour::AzureArc { 2 } else { 1 }
}

/// Every source, and Arc's challenge too: before, a 429 answering Arc's challenge was an error
/// neither throttled nor remembered.
#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_remembered_for_every_resource() {
    for flavour in Flavour::ALL {
        let em = Emulator::start(flavour).await;
        // Longer than the retries wait within one request: the answer comes back at once.
        em.push_fault(Fault::TooManyRequests {
            retry_after: "120".to_owned(),
        });
        let mi = credential(&em, Identity::System);
        let err = mi.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_throttled(), "{flavour:?}: {err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
        assert_eq!(em.request_count(), 1);
        // Another resource, 100 s later: refused at once, nothing sent.
        tokio::time::advance(Duration::from_secs(100)).await;
        let err = mi
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_err();
        assert!(err.is_throttled(), "{flavour:?}: {err}");
        assert!(err.message().contains("no token request is sent"), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
        assert_eq!(
            em.request_count(),
            1,
            "{flavour:?}: nothing sent while throttled"
        );
        // Once the wait has passed, the endpoint is asked again.
        tokio::time::advance(Duration::from_secs(20)).await;
        mi.get_token(["https://other.test/.default"]).await.unwrap();
        assert_eq!(em.request_count(), 1 + per_token(flavour), "{flavour:?}");
    }
}

/// A `Retry-After` the transport waits out before retrying holds back requests for other
/// resources meanwhile: answered throttled at once, nothing sent. Every source's requests
/// report to the credential (Arc's both: the challenge's, and the one with the key).
#[tokio::test(start_paused = true)]
async fn while_a_retry_waits_out_a_retry_after_other_resources_are_throttled_at_once() {
    // The flavour, and how many requests are answered as usual before the 429.
    let cases = Flavour::ALL
        .map(|flavour| (flavour, 0))
        .into_iter()
        .chain([(Flavour::AzureArc, 1)]);
    for (flavour, before) in cases {
        let em = Emulator::start(flavour).await;
        for _ in 0..before {
            em.push_fault(Fault::Delay(Duration::ZERO));
        }
        em.push_fault(Fault::TooManyRequests {
            retry_after: "7".to_owned(),
        });
        let mi = credential(&em, Identity::System);
        let first = tokio::spawn({
            let mi = mi.clone();
            async move { mi.get_token([SCOPE]).await }
        });
        // The 429 has come back; the retry loop waits out its 7 s.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(em.request_count(), before + 1, "{flavour:?}");
        assert_eq!(em.requests()[before].status, Some(429), "{flavour:?}");

        let asked = Instant::now();
        let err = mi
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_err();
        assert_eq!(asked.elapsed(), Duration::ZERO, "{flavour:?}: at once");
        assert!(err.is_throttled(), "{flavour:?}: {err}");
        assert!(err.message().contains("no token request is sent"), "{err}");
        assert_eq!(
            em.request_count(),
            before + 1,
            "{flavour:?}: nothing sent while throttled"
        );

        first.await.unwrap().unwrap();
        let mut arrivals = vec![0; before + 1];
        arrivals.resize(per_token(flavour) + 1, 7_000);
        assert_eq!(arrivals_ms(&em), arrivals, "{flavour:?} {before}");
        mi.get_token(["https://other.test/.default"]).await.unwrap();
        assert_eq!(
            em.request_count(),
            2 * per_token(flavour) + 1,
            "{flavour:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried() {
    // IMDS: no wait, then 1.6 and 3.2 s (factor 0.8, no jitter).
    let em = Emulator::start(Flavour::Imds).await;
    em.push_faults(Fault::ServerError(500), 3);
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(statuses(&em), [500, 500, 500, 200].map(Some));
    assert_eq!(arrivals_ms(&em), [0, 0, 1_600, 4_800]);

    // IMDS also retries 404 (a newly assigned identity is not ready yet) and any 5xx.
    let em = Emulator::start(Flavour::Imds).await;
    let not_found = Fault::Respond {
        status: 404,
        body: r#"{"error":"not_found"}"#.to_owned(),
        headers: vec![],
    };
    em.push_fault(not_found);
    em.push_fault(Fault::ServerError(507));
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(statuses(&em), [404, 507, 200].map(Some));

    // The other sources: the crate's default retries (three, jittered backoff).
    let em = Emulator::start(Flavour::AppService).await;
    em.push_faults(Fault::ServerError(500), 3);
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(statuses(&em), [500, 500, 500, 200].map(Some));

    let em = Emulator::start(Flavour::AzureMl).await;
    em.push_faults(Fault::ServerError(500), 10);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(em.request_count(), 4, "one attempt and three retries");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500), "{err}");
    assert!(err.is_authentication_failed(), "{err}");
}

/// A JSON answer IMDS gives inside a request's retries is IMDS answering, as one that ends
/// them is: when the retries then get no answer in time, the error is a failure of this host's
/// IMDS, not "not an Azure host" (*unavailable*), which the wait that answer may ask for
/// (refusing the credential's other requests throttled meanwhile) would contradict. Before,
/// such an answer was not seen.
#[tokio::test(start_paused = true)]
async fn a_json_answer_inside_the_retries_is_imds_answering() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::ServerError(503));
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 20);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout() && err.is_authentication_failed(), "{err}");
    assert!(
        err.to_string()
            .contains("IMDS answered this credential before"),
        "{err}"
    );
    assert_eq!(em.requests()[0].status, Some(503));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_slower_than_the_deadline_times_out() {
    // App Service: the default 30 s deadline over every attempt.
    let em = Emulator::start(Flavour::AppService).await;
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 20);
    let started = Instant::now();
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() <= Duration::from_secs(31),
        "{:?}",
        started.elapsed()
    );

    // IMDS: 90 s in all (room for the 410 schedule); no answer means no IMDS: unavailable.
    let em = Emulator::start(Flavour::Imds).await;
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 20);
    let started = Instant::now();
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.is_unavailable(), "{err}");
    assert!(
        started.elapsed() <= Duration::from_secs(91),
        "{:?}",
        started.elapsed()
    );

    // Slow but within the deadline is fine.
    let em = Emulator::start(Flavour::AppService).await;
    em.push_fault(Fault::Delay(Duration::from_secs(5)));
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(em.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn malformed_json_is_a_clear_error() {
    for flavour in Flavour::ALL {
        let em = Emulator::start(flavour).await;
        if flavour == Flavour::AzureArc {
            em.push_fault(Fault::Delay(Duration::ZERO)); // the challenge, as usual
        }
        em.push_fault(Fault::Body(r#"{"access_token": "mi-half"#.to_owned()));
        let result = credential(&em, Identity::System).get_token([SCOPE]).await;
        let Err(err) = result else {
            panic!("{flavour:?}: a token from {:#?}", em.requests());
        };
        assert!(err.is_authentication_failed(), "{flavour:?}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("JSON") || text.contains("json"),
            "{flavour:?}: {text}"
        );
        assert!(
            !text.contains("mi-half"),
            "{flavour:?}: token text quoted: {text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn identity_not_found_makes_imds_unavailable_for_the_system_assigned_identity_only() {
    // The host has no system-assigned identity: a chain moves on.
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::IdentityNotFound);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message().contains("no system-assigned identity"),
        "{err}"
    );
    assert_eq!(em.request_count(), 1, "400 is not retried");
    // A user-assigned id that is not on this host is a mistake to report, not an absence.
    for id in [Identity::ClientId, Identity::ObjectId, Identity::ResourceId] {
        let em = Emulator::start(Flavour::Imds).await;
        em.push_fault(Fault::IdentityNotFound);
        let err = credential(&em, id).get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{id:?}: {err}");
        assert!(
            err.message().contains("is not assigned to this host"),
            "{id:?}: {err}"
        );
        assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
        assert_eq!(err.error_code(), Some("invalid_request"), "{err}");
        assert_eq!(em.request_count(), 1, "{id:?}: 400 is not retried");
    }
    // Elsewhere a 400 is a failure to report, not an absence.
    let em = Emulator::start(Flavour::AppService).await;
    em.push_fault(Fault::IdentityNotFound);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
}

/// IMDS relays Entra ID's 400 for a resource it does not know (a mistyped scope): that is the
/// caller's mistake, whatever the identity, and not a host without one.
#[tokio::test(start_paused = true)]
async fn an_unknown_resource_at_imds_is_a_failure_not_an_absence() {
    let invalid_resource = Fault::Respond {
        status: 400,
        body: r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://resource.test was not found in the tenant named t."}"#.to_owned(),
        headers: vec![],
    };
    for id in [Identity::System, Identity::ClientId] {
        let em = Emulator::start(Flavour::Imds).await;
        em.push_fault(invalid_resource.clone());
        let err = credential(&em, id).get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{id:?}: {err}");
        assert!(!err.message().contains("enable it"), "{id:?}: {err}");
        assert!(err.message().contains("AADSTS500011"), "{id:?}: {err}");
        assert!(err.message().contains("check the scope"), "{id:?}: {err}");
        assert_eq!(err.error_code(), Some("invalid_resource"), "{err}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    }
}

/// In a chain, neither a user-assigned id missing from the host nor an unknown resource
/// passes the request on to the next credential (it would authenticate as someone else).
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_400_about_the_request_stops_the_chain() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_identity::{AccessToken, BoxCredential, CredentialError, TokenRequest};

    let asked = Arc::new(AtomicUsize::new(0));
    let second = || {
        let asked = Arc::clone(&asked);
        BoxCredential::named(
            "SecondCredential",
            tower::service_fn(move |_: TokenRequest| {
                asked.fetch_add(1, Ordering::SeqCst);
                async {
                    Ok::<_, CredentialError>(AccessToken::new(
                        "second-token",
                        Instant::now() + Duration::from_secs(3600),
                    ))
                }
            }),
        )
    };
    let invalid_resource = Fault::Respond {
        status: 400,
        body: r#"{"error":"invalid_resource","error_description":"AADSTS500011: not found"}"#
            .to_owned(),
        headers: vec![],
    };
    for (id, fault) in [
        (Identity::ClientId, Fault::IdentityNotFound),
        (Identity::System, invalid_resource),
    ] {
        let em = Emulator::start(Flavour::Imds).await;
        em.push_fault(Fault::Delay(Duration::ZERO)); // the probe, answered as usual
        em.push_fault(fault);
        let err = credential(&em, id)
            .or(second())
            .get_token([SCOPE])
            .await
            .unwrap_err();
        assert!(err.is_authentication_failed(), "{id:?}: {err}");
        assert_eq!(asked.load(Ordering::SeqCst), 0, "{id:?}: {err}");
    }
    // The system-assigned identity missing: the chain moves on, as before.
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::Delay(Duration::ZERO));
    em.push_fault(Fault::IdentityNotFound);
    let token = credential(&em, Identity::System)
        .or(second())
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "second-token");
}

#[tokio::test(start_paused = true)]
async fn a_closed_imds_port_is_unavailable() {
    let base = closed_base_url();
    let credential = ManagedIdentityCredential::builder()
        .vars([("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.as_str())])
        .build()
        .unwrap();
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.is_connect(), "{err}");
    assert!(
        err.to_string().contains(&base),
        "names where it looked: {err}"
    );
    // Asked alone, a refused connection keeps the transport's transient mark, as the README
    // and `is_transient()` say of any credential (so a bearer layer does not keep it for 30 s).
    // Before, only a timeout was transient here: the chain probe's rule leaked into this path.
    assert!(err.is_transient(), "{err:?}");
}

/// One Azure Arc acquisition has one 30 s deadline, its challenge, key read and request with
/// the key together: an agent that makes each request wait out a 20 s `Retry-After` (each
/// within its own request's 30 s) fails the acquisition at 30 s as a transient timeout, saying
/// where the time ran out. (Before, each request had its own 30 s, so one acquisition could
/// take some 70 s with the key read's 10 s, and this one took 40 s.)
#[tokio::test(start_paused = true)]
async fn an_arc_acquisition_has_one_deadline_across_its_requests() {
    let em = Emulator::start(Flavour::AzureArc).await;
    let wait = || Fault::TooManyRequests {
        retry_after: "20".to_owned(),
    };
    // The challenge: a 429, then the 401 after 20 s; the request with the key: a 429.
    em.push_faults(wait(), 1);
    em.push_fault(Fault::Delay(Duration::ZERO));
    em.push_fault(wait());
    let started = Instant::now();
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(30), "{err}");
    assert!(err.is_transient() && err.is_timeout(), "{err}");
    assert!(
        err.message().contains("no token within 30s")
            && err.message().contains("request with the key"),
        "{err}"
    );
    assert_eq!(statuses(&em), [Some(429), Some(401), Some(429)]);
    assert_eq!(arrivals_ms(&em), [0, 20_000, 20_000]);
}

/// Arc: the agent names a key file the credential must refuse, before sending anything.
async fn arc_refuses(em: &Emulator, realm: &std::path::Path, what: &str) -> String {
    em.clear();
    em.set_arc_realm(realm);
    // A fresh credential each time: nothing cached.
    let err = credential(em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{what}: {err}");
    assert_eq!(
        em.request_count(),
        1,
        "{what}: only the challenge, the key never sent"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(ARC_KEY), "{what}: {text}");
    text
}

#[tokio::test]
async fn arc_key_files_are_checked_before_they_are_read() {
    let em = Emulator::start(Flavour::AzureArc).await;
    let dir = em.arc_key_dir().to_owned();
    let elsewhere = tempfile::tempdir().unwrap();

    // Outside the key directory, even with the right name and contents.
    let outside = elsewhere.path().join("agent.key");
    std::fs::write(&outside, ARC_KEY).unwrap();
    arc_refuses(&em, &outside, "outside the directory").await;
    // `..` out of the directory.
    let dotdot = dir
        .join("..")
        .join(elsewhere.path().file_name().unwrap())
        .join("agent.key");
    arc_refuses(&em, &dotdot, "dot-dot").await;
    // A symlink in the directory pointing outside it.
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    arc_refuses(&em, &link, "symlink out").await;
    // Not `.key`.
    let txt = dir.join("agent.txt");
    std::fs::write(&txt, ARC_KEY).unwrap();
    arc_refuses(&em, &txt, "extension").await;
    // Larger than 4096 bytes.
    let big = dir.join("big.key");
    std::fs::write(&big, "k".repeat(4097)).unwrap();
    arc_refuses(&em, &big, "4097 bytes").await;
    // A directory named like a key.
    let sub = dir.join("sub.key");
    std::fs::create_dir(&sub).unwrap();
    arc_refuses(&em, &sub, "directory").await;

    // Exactly 4096 bytes in the directory is a key.
    let max = dir.join("max.key");
    std::fs::write(&max, "m".repeat(4096)).unwrap();
    em.clear();
    em.set_arc_realm(&max);
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    let sent = em.requests().pop().unwrap();
    assert_eq!(
        sent.identity_header("authorization"),
        Some(format!("Basic {}", "m".repeat(4096)).as_str())
    );
}

/// The realm's file name picks the key in the key directory; where the realm says it is does
/// not matter, and nothing there is opened.
#[tokio::test]
async fn an_arc_realm_elsewhere_names_a_key_in_the_key_directory_by_file_name() {
    let em = Emulator::start(Flavour::AzureArc).await;
    let key_file = em.arc_key_file();
    let name = key_file.file_name().unwrap();
    // The agent's usual path, which does not exist here, and a decoy that does.
    let elsewhere = tempfile::tempdir().unwrap();
    let decoy = elsewhere.path().join(name);
    std::fs::write(&decoy, "decoy-key-contents").unwrap();
    for realm in [
        std::path::Path::new("/var/opt/azcmagent/tokens").join(name),
        decoy,
    ] {
        em.clear();
        em.set_arc_realm_and_key_file(&realm, key_file.clone());
        let token = credential(&em, Identity::System)
            .get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", realm.display()));
        assert!(token.secret().expose_secret().starts_with("mi-arc-"));
        let sent = em.requests().pop().unwrap();
        assert_eq!(
            sent.identity_header("authorization"),
            Some(format!("Basic {ARC_KEY}").as_str())
        );
    }
}

/// Linux's `O_NONBLOCK`: opening a FIFO for writing without blocking fails (`ENXIO`) unless a
/// reader has it open.
const O_NONBLOCK: i32 = 0o4000;

#[tokio::test]
async fn an_arc_key_that_is_a_fifo_is_refused_without_being_opened() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // Opening a FIFO for reading blocks until a writer comes, so a credential that opens the
    // named file before looking at what it is hangs there (on the runtime's thread). A
    // watchdog thread plays the writer as soon as a reader appears, so such a credential is
    // released (and this test fails) instead of hanging.
    let em = Emulator::start(Flavour::AzureArc).await;
    let fifo = em.arc_key_dir().join("pipe.key");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo (coreutils)");
    assert!(made.success());
    let done = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (fifo, done, opened) = (fifo.clone(), Arc::clone(&done), Arc::clone(&opened));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let writer = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(O_NONBLOCK)
                    .open(&fifo);
                if writer.is_ok() {
                    opened.store(true, Ordering::SeqCst);
                    return; // dropping the writer gives the reader EOF
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    em.set_arc_realm(&fifo);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    assert!(!opened.load(Ordering::SeqCst), "the FIFO was opened: {err}");
    assert!(!err.is_unavailable(), "{err}");
    assert_eq!(em.request_count(), 1, "only the challenge");
}
