//! A managed identity in a chain of the user's own (`a.or(b)`, `ChainedTokenCredential`)
//! probes IMDS first, as in azure-identity's chains: a host without IMDS costs the chain about a
//! second, not IMDS's retry schedule, and a host with IMDS still gets its token.

use std::time::Duration;

use tokio::time::Instant;
use tower_identity::{
    AccessToken, BoxCredential, ChainedTokenCredential, CredentialError, CredentialExt,
    EnvironmentCredential, ManagedIdentityCredential, TokenRequest,
};

use super::{Identity, SCOPE, credential};
use crate::support::mi_emulator::{Emulator, Fault, Flavour};

/// A credential after the managed identity that always answers.
fn second() -> BoxCredential {
    BoxCredential::named(
        "SecondCredential",
        tower::service_fn(|_: TokenRequest| async {
            Ok::<_, CredentialError>(AccessToken::new(
                "second-token",
                Instant::now() + Duration::from_secs(3600),
            ))
        }),
    )
}

/// The three shapes of chain: typed, dynamic, and the managed identity as the second member
/// of a nested `or`.
async fn ask_chains(mi: impl Fn() -> ManagedIdentityCredential) -> Vec<AccessToken> {
    let nothing = EnvironmentCredential::builder()
        .vars(Vec::<(String, String)>::new())
        .build();
    let chained = ChainedTokenCredential::new([mi().boxed_credential(), second()]).unwrap();
    vec![
        mi().or(second()).get_token([SCOPE]).await.unwrap(),
        chained.get_token([SCOPE]).await.unwrap(),
        nothing
            .or(mi())
            .or(second())
            .get_token([SCOPE])
            .await
            .unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn in_a_chain_an_imds_that_never_answers_is_passed_after_a_one_second_probe() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 60);
    let started = Instant::now();
    let tokens = ask_chains(|| credential(&em, Identity::System)).await;
    let took = started.elapsed();
    for token in &tokens {
        assert_eq!(token.secret().expose_secret(), "second-token");
    }
    // Three chains, one probe of 1 s each; before, each waited out the 90 s deadline.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let requests = em.requests();
    assert_eq!(requests.len(), 3, "only the probes: {requests:?}");
    for probe in &requests {
        assert_eq!(probe.identity_header("metadata"), None, "{probe:?}");
        assert_eq!(probe.param("resource"), Some(super::RESOURCE));
    }
}

/// A proxy or firewall answering for the IMDS address with something that is not JSON: the
/// chain moves on (the probe got an HTTP answer, the token request no JSON).
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_non_json_answer_at_the_imds_address_is_passed() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_faults(Fault::Body("<html>proxy says hello</html>".into()), 6);
    let tokens = ask_chains(|| credential(&em, Identity::System)).await;
    for token in &tokens {
        assert_eq!(token.secret().expose_secret(), "second-token");
    }
    let requests = em.requests();
    assert_eq!(
        requests.len(),
        6,
        "a probe and a token request each: {requests:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_a_chain_a_working_imds_gives_the_managed_identity_token_after_one_probe() {
    let em = Emulator::start(Flavour::Imds).await;
    let tokens = ask_chains(|| credential(&em, Identity::System)).await;
    for token in &tokens {
        assert!(
            token.secret().expose_secret().starts_with("mi-imds-"),
            "{token:?}"
        );
        assert_eq!(token.credential(), Some("ManagedIdentityCredential"));
    }
    let metadata: Vec<_> = em
        .requests()
        .iter()
        .map(|r| r.identity_header("metadata").map(str::to_owned))
        .collect();
    let (probe, real) = (None, Some("true".to_owned()));
    assert_eq!(
        metadata,
        [&probe, &real, &probe, &real, &probe, &real].map(Clone::clone),
        "a probe, then the token request, per credential"
    );

    // Once IMDS has issued a token, no more probes; and asked on its own, never.
    em.clear();
    let mi = credential(&em, Identity::System);
    mi.clone().or(second()).get_token([SCOPE]).await.unwrap();
    mi.or(second())
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap();
    let metadata: Vec<_> = em
        .requests()
        .iter()
        .map(|r| r.identity_header("metadata").map(str::to_owned))
        .collect();
    assert_eq!(metadata, [&probe, &real, &real, &real].map(Clone::clone));
}

/// A credential after the managed identity that counts how often it is asked.
fn counted_second(asked: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> BoxCredential {
    let asked = std::sync::Arc::clone(asked);
    BoxCredential::named(
        "SecondCredential",
        tower::service_fn(move |_: TokenRequest| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                Ok::<_, CredentialError>(AccessToken::new(
                    "second-token",
                    Instant::now() + Duration::from_secs(3600),
                ))
            }
        }),
    )
}

/// An IMDS that issued a token and then stops answering is this host's IMDS failing, not a
/// host without one: the chain stops on *authentication failed* (a timeout) rather than run on
/// as another identity.
#[tokio::test(start_paused = true)]
async fn in_a_chain_an_imds_that_answered_before_and_then_hangs_is_a_failure() {
    let em = Emulator::start(Flavour::Imds).await;
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = mi
        .clone()
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 60);
    let err = mi
        .or(counted_second(&asked))
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.is_timeout(), "{err}");
    assert!(!err.to_string().contains("not an Azure host"), "{err}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The probe got IMDS's quick 400, so IMDS is there; a token request that then gets no
/// answer is a failure, not a host without IMDS.
#[tokio::test(start_paused = true)]
async fn in_a_chain_an_imds_that_answered_the_probe_and_then_hangs_is_a_failure() {
    let em = Emulator::start(Flavour::Imds).await;
    // The probe is answered as usual (400, no Metadata header); every token request hangs.
    em.push_fault(Fault::Delay(Duration::ZERO));
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 60);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let err = credential(&em, Identity::System)
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    let requests = em.requests();
    assert_eq!(requests.first().and_then(|r| r.status), Some(400));
    assert_eq!(requests.first().unwrap().identity_header("metadata"), None);
}

/// A captive portal answering for the IMDS address with a web page, probe and token request
/// alike, is not IMDS: the first request passes to the next credential, and so does a later
/// one on a network where nothing answers (after a 1 s probe). Before, its page counted as
/// IMDS having answered: the later request skipped the probe, waited out IMDS's retries, and
/// stopped the chain with "IMDS answered this credential before".
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_web_page_at_the_imds_address_is_not_imds_answering() {
    let em = Emulator::start(Flavour::Imds).await;
    let page = || Fault::Respond {
        status: 200,
        body: "<html><body>Sign in to the hotel Wi-Fi</body></html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    };
    em.push_faults(page(), 2);
    let mi = credential(&em, Identity::System);
    let token = mi.clone().or(second()).get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "second-token");
    assert_eq!(em.request_count(), 2, "the probe and the token request");

    // Another network: the address accepts connections and never answers.
    em.push_faults(Fault::Delay(Duration::from_secs(3600)), 60);
    let started = Instant::now();
    let token = mi.or(second()).get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "second-token");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let requests = em.requests();
    assert_eq!(requests.len(), 3, "one more probe: {requests:?}");
    assert_eq!(requests[2].identity_header("metadata"), None);
}

/// IMDS's 400 for the system-assigned identity of a VM that has none but several user-assigned
/// identities: the host has no identity to use without an id, so a chain moves on (as in
/// azure-identity and azidentity), and the error says which id to give.
#[tokio::test(start_paused = true)]
async fn in_a_chain_several_user_assigned_identities_and_no_id_let_the_next_answer() {
    let em = Emulator::start(Flavour::Imds).await;
    let several = || {
        Fault::Respond {
        status: 400,
        body: r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#.into(),
        headers: vec![("content-type".into(), "application/json".into())],
    }
    };
    // The probe is answered as usual, the token request with the 400.
    em.push_fault(Fault::Delay(Duration::ZERO));
    em.push_fault(several());
    let token = credential(&em, Identity::System)
        .or(second())
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "second-token");

    // Asked on its own: the same error, with what to do.
    em.push_fault(several());
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(err.error_code(), Some("invalid_request"));
    assert!(
        err.message()
            .contains("Multiple user assigned identities exist")
            && err.message().contains("client id of one of them")
            && err.message().contains("AZURE_CLIENT_ID"),
        "{err}"
    );
}

/// A client that sends https only, wrapped where the credential cannot see it, fails every
/// request to IMDS's plain-http address before sending it: that is a mistake to report (invalid
/// request, saying what to do), not a host without IMDS that would let the chain run on as
/// another identity.
#[tokio::test(start_paused = true)]
async fn in_a_chain_an_https_only_client_for_imds_is_an_invalid_request() {
    use tower::ServiceBuilder;
    use tower_identity::HttpClient;

    let em = Emulator::start(Flavour::Imds).await;
    let wrapped = || {
        HttpClient::from_service(
            ServiceBuilder::new()
                .concurrency_limit(4)
                .service(HttpClient::new()),
        )
    };
    for probe in [true, false] {
        let mi = super::builder(&em).http_client(wrapped()).build().unwrap();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chain = mi.clone().or(counted_second(&asked));
        let err = if probe {
            chain.get_token([SCOPE]).await.unwrap_err()
        } else {
            // Asked on its own: no probe, the token request fails the same way.
            mi.get_token([SCOPE]).await.unwrap_err()
        };
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.to_string().contains("sends https only"), "{err}");
        assert!(!err.to_string().contains("not an Azure host"), "{err}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    assert_eq!(em.request_count(), 0);
}

/// Something answered the probe with a web page (not IMDS's JSON), then closes every
/// connection of the token request: before IMDS has answered with JSON, a chain takes that as
/// no IMDS and moves on, as azure-identity's does.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_page_then_closed_connections_are_no_imds() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::Respond {
        status: 200,
        body: "<html><body>Sign in to the hotel Wi-Fi</body></html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    });
    em.push_faults(Fault::Close, 60);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = credential(&em, Identity::System)
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "second-token");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(em.request_count() >= 2, "{:?}", em.requests());
}

/// A 400 web page at the IMDS address (a hotel portal's) is not IMDS's refusal: the error says
/// the answer was not JSON, not that this host has no system-assigned identity to enable.
#[tokio::test(start_paused = true)]
async fn a_web_page_400_at_the_imds_address_is_not_advice_about_the_identity() {
    let em = Emulator::start(Flavour::Imds).await;
    let page = || Fault::Respond {
        status: 400,
        body: "<html><body>Sign in to the hotel Wi-Fi</body></html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    };
    let nothing = || {
        EnvironmentCredential::builder()
            .vars(Vec::<(String, String)>::new())
            .build()
    };
    em.push_faults(page(), 2);
    let err = credential(&em, Identity::System)
        .or(nothing())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let mi = &err.attempts()[0];
    assert!(mi.message().contains("not with JSON"), "{mi}");
    assert!(!mi.message().contains("enable it"), "{mi}");

    // Asked on its own: the page is a failure, with no advice about the identity either.
    em.push_faults(page(), 1);
    let err = credential(&em, Identity::System)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(!err.message().contains("enable it"), "{err}");
    assert!(err.message().contains("hotel Wi-Fi"), "{err}");
}

/// IMDS answers with a JSON object, always: a bare JSON value at its address (`"OK"`, `0`,
/// `null`, a health check's) is not IMDS answering, so a token request that then gets no
/// answer is still a host without IMDS and the chain moves on.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_json_value_that_is_not_an_object_is_not_imds_answering() {
    for body in [r#""OK""#, "0", "null"] {
        let em = Emulator::start(Flavour::Imds).await;
        em.push_fault(Fault::Body(body.into()));
        em.push_faults(Fault::Delay(Duration::from_secs(3600)), 60);
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let token = credential(&em, Identity::System)
            .or(counted_second(&asked))
            .get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(token.secret().expose_secret(), "second-token", "{body}");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// Until IMDS has issued a chain a token, an answer that is not JSON may be something else's
/// at its address (a proxy's, a captive portal's): the wait it asks for is waited out by its
/// own request's retries, but not remembered while they wait, where it would answer the
/// chain's other requests with a throttled error, which stops a chain instead of moving on.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_wait_a_non_json_answer_asks_for_holds_back_no_other_resource() {
    let em = Emulator::start(Flavour::Imds).await;
    // The probe: IMDS's JSON 400 for the missing `Metadata` header.
    em.push_fault(Fault::Respond {
        status: 400,
        body: r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
            .to_owned(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
    });
    // The token request: a 503 page asking for 5 s, which the retries wait out.
    em.push_fault(Fault::Respond {
        status: 503,
        body: "<html>busy</html>".to_owned(),
        headers: vec![("retry-after".to_owned(), "5".to_owned())],
    });
    let chain = credential(&em, Identity::System).or(second());
    let first = tokio::spawn({
        let chain = chain.clone();
        async move { chain.get_token([SCOPE]).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(em.request_count(), 2, "the probe and the token request");

    let other = chain
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert!(other.secret().expose_secret().starts_with("mi-imds-"));
    let first = first.await.unwrap().unwrap();
    assert!(first.secret().expose_secret().starts_with("mi-imds-"));
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 503, 200, 200].map(Some));
}

/// The waits a chain's IMDS asks for while a request's retries wait them out are remembered,
/// so the chain's other requests meanwhile are refused throttled rather than sent into the
/// throttle: before IMDS has issued a token, a JSON answer's (IMDS busy); once it has, any
/// answer's (a page then is IMDS failing, not something else at its address).
#[tokio::test(start_paused = true)]
async fn in_a_chain_imds_waits_are_remembered_while_the_retries_wait_them_out() {
    let busy = |body: &str| Fault::Respond {
        status: 503,
        body: body.to_owned(),
        headers: vec![("retry-after".to_owned(), "5".to_owned())],
    };
    let em = Emulator::start(Flavour::Imds).await;
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let chain = || mi.clone().or(counted_second(&asked));
    em.push_fault(Fault::Delay(Duration::ZERO)); // the probe, answered as usual (JSON 400)
    let waits = [
        (busy(r#"{"error":"busy"}"#), "before the first token"),
        (busy("<html>busy</html>"), "after it"),
    ];
    for (n, (fault, when)) in waits.into_iter().enumerate() {
        em.push_fault(fault);
        let first = tokio::spawn({
            let chain = chain();
            let scope = format!("https://first{n}.test/.default");
            async move { chain.get_token([scope]).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = em.request_count();
        assert_eq!(em.requests()[sent - 1].status, Some(503), "{when}");

        let err = chain()
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_err();
        assert!(err.is_throttled(), "{when}: {err}");
        assert_eq!(
            em.request_count(),
            sent,
            "{when}: nothing sent while throttled"
        );

        let token = first.await.unwrap().unwrap();
        assert!(
            token.secret().expose_secret().starts_with("mi-imds-"),
            "{when}"
        );
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 503, 200, 503, 200].map(Some));
}

/// Once IMDS has issued the system-assigned identity a token, a 400 for it is a failure of
/// that identity (disabled since, IMDS refusing it), not a host without one: the chain stops
/// rather than answer as the next credential. Before, every system-assigned JSON 400 was
/// *unavailable*, token issued or not.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_400_after_imds_issued_a_token_stops_the_chain() {
    let em = Emulator::start(Flavour::Imds).await;
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = mi
        .clone()
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    em.push_fault(Fault::IdentityNotFound);
    let err = mi
        .or(counted_second(&asked))
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    assert!(err.to_string().contains("Identity not found"), "{err}");
    assert!(
        err.to_string()
            .contains("issued this credential tokens before"),
        "{err}"
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Something that is not IMDS answering at its address with an HTTP error page (AWS's IMDSv1
/// 404, a firewall's 502 or 503, a 410): the probe's answer is not IMDS's JSON, so the token
/// request goes with the probe's client and budget, not IMDS's retry schedule, and the chain
/// moves on at once. Before, it waited out that schedule (some 24 s of retries for a 404, 75 s
/// for a 410) on every call.
#[tokio::test(start_paused = true)]
async fn in_a_chain_an_error_page_at_the_imds_address_is_passed_without_retries() {
    for status in [404, 410, 502, 503] {
        let em = Emulator::start(Flavour::Imds).await;
        let page = Fault::Respond {
            status,
            body: format!("<html><body><h1>{status}</h1></body></html>"),
            headers: vec![("content-type".into(), "text/html".into())],
        };
        em.push_faults(page, 60);
        let mi = credential(&em, Identity::System);
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for call in 1..=2 {
            let started = Instant::now();
            let token = mi
                .clone()
                .or(counted_second(&asked))
                .get_token([SCOPE])
                .await
                .unwrap_or_else(|e| panic!("{status}: {e}"));
            assert_eq!(token.secret().expose_secret(), "second-token", "{status}");
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "{status}: {:?}",
                started.elapsed()
            );
            let requests = em.requests();
            assert_eq!(
                requests.len(),
                2 * call,
                "{status}: a probe and one token request per call: {requests:?}"
            );
            let last = &requests[2 * call - 1];
            assert_eq!(last.identity_header("metadata"), Some("true"), "{status}");
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

/// The token request sent within the probe's budget gets IMDS's own JSON, busy (a 410 while it
/// is updated): it is IMDS after all, so the request is sent again with the whole retry
/// schedule, and the 410s are waited out as anywhere else.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_busy_imds_behind_a_page_gets_its_retry_schedule() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::Respond {
        status: 404,
        body: "<html>not found</html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    });
    em.push_faults(Fault::ServerError(503), 3);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token = credential(&em, Identity::System)
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(404), Some(503), Some(503), Some(503), Some(200)],
        "the probe, the quick request, then the retried one"
    );
}

/// The probe's answer at the IMDS address (a page, so the token request goes within its
/// second, not on IMDS's schedule) and IMDS's own JSON 429 asking to wait `retry_after`.
fn a_page_then_imds_asking_to_wait(em: &Emulator, retry_after: &str) {
    em.push_fault(Fault::Respond {
        status: 404,
        body: "<html>not found</html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    });
    em.push_fault(Fault::TooManyRequests {
        retry_after: retry_after.into(),
    });
}

/// The quick request (the probe got a page) finds IMDS after all, asking to wait (a JSON 429
/// with `Retry-After: 5`): the wait is remembered at once, so that the chain's other requests
/// meanwhile are refused throttled without reaching IMDS, and the request goes again on IMDS's
/// schedule only once the wait has passed, as any answer its retry loop waits out. Before, it
/// went again at once, into the throttle, and the wait was forgotten.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_wait_imds_asks_of_the_quick_request_is_remembered_and_waited_out() {
    let em = Emulator::start(Flavour::Imds).await;
    a_page_then_imds_asking_to_wait(&em, "5");
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let first = tokio::spawn({
        let chain = mi.clone().or(counted_second(&asked));
        async move { chain.get_token([SCOPE]).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;

    let err = mi
        .clone()
        .or(counted_second(&asked))
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(404), Some(429)],
        "the probe and the quick request; nothing sent while throttled"
    );

    let token = first.await.unwrap().unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let requests = em.requests();
    let statuses: Vec<_> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(404), Some(429), Some(200)]);
    let waited = requests[2].at - requests[1].at;
    assert!(
        waited >= Duration::from_secs(5),
        "sent again after {waited:?}"
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A wait longer than the retries may wait (`max_retry_after`, 60 s) asked of the quick request
/// is not waited out, nor sent into: the request ends at once with IMDS's throttled answer,
/// which holds back the credential's next request too. Before, it went again at once.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_long_wait_imds_asks_of_the_quick_request_ends_it_throttled() {
    let em = Emulator::start(Flavour::Imds).await;
    a_page_then_imds_asking_to_wait(&em, "120");
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let err = mi
        .clone()
        .or(counted_second(&asked))
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(err.is_throttled(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err}");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429), "{err}");

    tokio::time::advance(Duration::from_secs(60)).await;
    let err = mi
        .clone()
        .or(counted_second(&asked))
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)), "{err}");
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(404), Some(429)], "nothing sent again");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// IMDS answering the probe itself busy, asking to wait (a JSON 429 with `Retry-After: 5`):
/// IMDS is there, and its retry schedule starts from that answer, so the wait is remembered
/// (the chain's other requests meanwhile are refused throttled without reaching IMDS) and the
/// token request goes only once it has passed. Before, the token request went at once, into
/// the throttle, and the wait was forgotten.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_wait_imds_asks_of_the_probe_is_remembered_and_waited_out() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::TooManyRequests {
        retry_after: "5".into(),
    });
    let mi = credential(&em, Identity::System);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let first = tokio::spawn({
        let chain = mi.clone().or(counted_second(&asked));
        async move { chain.get_token([SCOPE]).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;

    let err = mi
        .clone()
        .or(counted_second(&asked))
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(429)],
        "the probe; nothing sent while throttled"
    );

    let token = first.await.unwrap().unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let requests = em.requests();
    let statuses: Vec<_> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(200)]);
    assert_eq!(requests[1].identity_header("metadata"), Some("true"));
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(5), "sent after {waited:?}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Once IMDS has answered with JSON, the token request keeps IMDS's retry schedule in a chain
/// too: the probe's 400 is IMDS's, so 404s after it (IMDS not ready yet) are retried.
#[tokio::test(start_paused = true)]
async fn in_a_chain_imds_that_answered_with_json_keeps_its_retry_schedule() {
    let em = Emulator::start(Flavour::Imds).await;
    em.push_fault(Fault::Delay(Duration::ZERO)); // the probe, answered as usual (JSON 400)
    em.push_faults(
        Fault::Respond {
            status: 404,
            body: "<html>not found</html>".into(),
            headers: vec![("content-type".into(), "text/html".into())],
        },
        2,
    );
    let token = credential(&em, Identity::System)
        .or(second())
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    let statuses: Vec<_> = em.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(400), Some(404), Some(404), Some(200)]);
}

/// A plain-text answer at the IMDS address with a status IMDS's schedule retries (404, 503
/// with `Retry-After`), as aad-pod-identity's NMI sends while it assigns the pod's identity,
/// gets no retries on the quick path: the managed identity is *unavailable* within the
/// second, but transient, since a real, busy IMDS stand-in may answer later (so that
/// `DefaultAzureCredential` chooses what answers after it only for a while). A status IMDS
/// does not retry (403) is something else answering: not transient. Before, neither was.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_busy_stand_ins_plain_text_answer_is_a_transient_unavailable() {
    for (status, transient) in [(404, true), (503, true), (403, false)] {
        let em = Emulator::start(Flavour::Imds).await;
        let mut headers = vec![("content-type".to_owned(), "text/plain".to_owned())];
        if status == 503 {
            headers.push(("retry-after".to_owned(), "5".to_owned()));
        }
        let answer = Fault::Respond {
            status,
            body: "no identity assigned yet".into(),
            headers,
        };
        em.push_faults(answer, 2);
        let nothing = EnvironmentCredential::builder()
            .vars(Vec::<(String, String)>::new())
            .build();
        let started = Instant::now();
        let err = credential(&em, Identity::System)
            .or(nothing)
            .get_token([SCOPE])
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{status}");
        assert!(err.is_unavailable(), "{status}: {err}");
        let mi = &err.attempts()[0];
        assert_eq!(mi.credential(), "ManagedIdentityCredential");
        assert!(mi.is_unavailable(), "{status}: {mi}");
        assert_eq!(mi.is_transient(), transient, "{status}: {mi:?}");
        assert_eq!(
            mi.message().contains("may pass"),
            transient,
            "{status}: {mi}"
        );
        assert_eq!(em.request_count(), 2, "{status}: the probe and one request");
    }
}

/// On the quick path (the probe answered, not with JSON), the token request gets what is left
/// of the probe's second: its timeout says how long it waited, not the whole second. Before,
/// it said "no answer within 1s" after 600 ms.
#[tokio::test(start_paused = true)]
async fn in_a_chain_the_quick_requests_timeout_says_how_long_it_waited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut read = vec![0u8; 4096];
            let n = socket.read(&mut read).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&read[..n]).to_ascii_lowercase();
            if head.contains("metadata: true") {
                // The token request: never answered.
                held.push(socket);
            } else {
                // The probe: a plain-text 404 after 400 ms.
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                    .await;
            }
        }
    });
    let nothing = EnvironmentCredential::builder()
        .vars(Vec::<(String, String)>::new())
        .build();
    let started = Instant::now();
    let err = ManagedIdentityCredential::builder()
        .vars([("AZURE_POD_IDENTITY_AUTHORITY_HOST", base.as_str())])
        .build()
        .unwrap()
        .or(nothing)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let mi = &err.attempts()[0];
    assert!(mi.is_unavailable(), "{mi}");
    assert!(mi.is_timeout() && mi.is_transient(), "{mi:?}");
    assert!(
        mi.message()
            .contains("no answer to the token request within the 600ms left of the probe's 1s"),
        "{mi}"
    );
    assert!(!mi.message().contains("no answer within 1s"), "{mi}");
    server.abort();
}
