//! DefaultAzureCredential: which credential answers in each configuration, what
//! `AZURE_TOKEN_CREDENTIALS` selects, stickiness, and failing fast when nothing is configured.
//!
//! Every member is kept on the machine: the environment is passed with `vars` (the process
//! environment is never read), IMDS points at a loopback port, the shared token cache at a
//! temp dir, and `az`/`azd` at stand-in scripts or at nothing.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_identity::{
    AzureCliCredential, AzureDeveloperCliCredential, CredentialExt, DefaultAzureCredential,
    DefaultAzureCredentialBuilder, Fallback, SharedTokenCacheCredential,
    TokenCachePersistenceOptions, TokenRequest,
};

use crate::support::authority::Authority;
use crate::support::creds::{self, CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT};
use crate::support::programs::{fake_tool, lines};

const ALL: [&str; 6] = [
    "EnvironmentCredential",
    "WorkloadIdentityCredential",
    "ManagedIdentityCredential",
    "SharedTokenCacheCredential",
    "AzureCliCredential",
    "AzureDeveloperCliCredential",
];

/// A port on 127.0.0.1 that refuses connections: bound, noted, closed.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A machine with nothing configured: IMDS at `imds`, an empty shared cache directory,
/// `az` and `azd` where nothing is installed, plus `vars`.
fn nothing_configured(
    dir: &Path,
    imds: &str,
    vars: &[(&str, &str)],
) -> DefaultAzureCredentialBuilder {
    let mut all = vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        imds.to_owned(),
    )];
    all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    DefaultAzureCredential::builder()
        .vars(all)
        .shared_token_cache_credential(
            SharedTokenCacheCredential::builder()
                .cache_options(
                    TokenCachePersistenceOptions::new()
                        .directory(dir)
                        .allow_unencrypted_storage(true),
                )
                .build()
                .unwrap(),
        )
        .azure_cli_credential(
            AzureCliCredential::builder()
                .program(dir.join("no-az"))
                .build()
                .unwrap(),
        )
        .azure_developer_cli_credential(
            AzureDeveloperCliCredential::builder()
                .program(dir.join("no-azd"))
                .build()
                .unwrap(),
        )
}

/// Nothing configured but IMDS at `imds`, and a signed-in Azure CLI.
fn with_signed_in_az(dir: &Path, imds: &str) -> DefaultAzureCredential {
    nothing_configured(dir, imds, &[])
        .azure_cli_credential(
            AzureCliCredential::builder()
                .program(signed_in(dir, "az"))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// A stand-in `az` or `azd` answering with a token named after it.
pub(crate) fn signed_in(dir: &Path, name: &str) -> std::path::PathBuf {
    let body = match name {
        "az" => {
            r#"now=$(date +%s); printf '{"accessToken":"az-token","expires_on":%s,"tokenType":"Bearer"}\n' $((now + 3600))"#
        }
        _ => {
            r#"exp=$(date -u -d "@$(( $(date +%s) + 3600 ))" +%Y-%m-%dT%H:%M:%SZ); printf '{"token":"azd-token","expiresOn":"%s"}\n' "$exp""#
        }
    };
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    fake_tool(&sub, name, body)
}

#[tokio::test(start_paused = true)]
async fn with_nothing_configured_the_chain_fails_fast_naming_every_credential() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let dac = nothing_configured(dir.path(), &imds, &[]).build().unwrap();
    assert_eq!(dac.credentials().collect::<Vec<_>>(), ALL);
    let started = Instant::now();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    // Paused clock: any retry backoff or timeout waited out would show here.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(err.credential(), "DefaultAzureCredential");
    let text = err.to_string();
    let mut last = 0;
    for (i, name) in (1..).zip(ALL) {
        let at = text
            .find(&format!("{i}. {name} (unavailable)"))
            .unwrap_or_else(|| panic!("{name} not listed in order:\n{text}"));
        assert!(at >= last, "{text}");
        last = at;
    }
    for what_to_do in [
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "az login",
        "azd auth login",
    ] {
        assert!(text.contains(what_to_do), "{what_to_do} missing:\n{text}");
    }
    assert_eq!(err.attempts().len(), 6);
    assert!(dac.answered().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_imds_that_accepts_and_never_answers_costs_about_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds = format!("http://{}", silent.local_addr().unwrap());
    let dac = nothing_configured(dir.path(), &imds, &[]).build().unwrap();
    let started = Instant::now();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let mi = &err.attempts()[2];
    assert_eq!(mi.credential(), "ManagedIdentityCredential");
    assert!(mi.is_unavailable(), "{mi}");
    drop(silent);
}

#[tokio::test]
async fn the_environment_answers_first_when_it_is_configured() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let dac = nothing_configured(
        dir.path(),
        &imds,
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", &authority.url()),
        ],
    )
    .azure_cli_credential(
        AzureCliCredential::builder()
            .program(signed_in(dir.path(), "az"))
            .build()
            .unwrap(),
    )
    .http_client(creds::http(&authority))
    .build()
    .unwrap();
    dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(dac.answered(), Some("EnvironmentCredential"));
    assert_eq!(authority.token_posts(), 1);
    assert!(
        lines(dir.path().join("az/calls")).is_empty(),
        "az was not run"
    );
}

/// The allowed list given to the chain reaches its environment credential; a mistake in it
/// fails the build, as any value given in code for a selected member.
#[tokio::test]
async fn additionally_allowed_tenants_reach_the_environment_credential() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let url = authority.url();
    let dac = || {
        nothing_configured(
            dir.path(),
            &imds,
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
                ("AZURE_AUTHORITY_HOST", &url),
            ],
        )
        .http_client(creds::http(&authority))
    };
    let err = dac()
        .additionally_allowed_tenants(["no/pe"])
        .build()
        .unwrap_err();
    assert!(
        err.message().contains("additionally_allowed_tenants"),
        "{err}"
    );
    let dac = dac().additionally_allowed_tenants(["*"]).build().unwrap();
    let token = dac
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(dac.answered(), Some("EnvironmentCredential"));
    assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
}

/// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` in the chain's variables reaches its environment
/// credential.
#[tokio::test]
async fn additionally_allowed_tenants_from_the_environment_reach_the_environment_credential() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let url = authority.url();
    let dac = nothing_configured(
        dir.path(),
        &imds,
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", &url),
            ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", "other;fabrikam"),
        ],
    )
    .http_client(creds::http(&authority))
    .build()
    .unwrap();
    let token = dac
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(dac.answered(), Some("EnvironmentCredential"));
    assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
}

/// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` in the chain's variables reaches its workload identity
/// member too, added to the builder's list, as the .NET SDK gives it to every member; a
/// malformed entry is an invalid request naming the variable, not a build error.
#[tokio::test]
async fn additionally_allowed_tenants_from_the_environment_reach_the_workload_identity() {
    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let file = dir.path().join("token");
    std::fs::write(&file, "projected-service-account-token").unwrap();
    let (url, file) = (authority.url(), file.display().to_string());
    let pod = |allowed: &str| {
        nothing_configured(
            dir.path(),
            &imds,
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_FEDERATED_TOKEN_FILE", &file),
                ("AZURE_AUTHORITY_HOST", &url),
                ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", allowed),
            ],
        )
        .http_client(creds::http(&authority))
    };
    let for_tenant = |tenant: &str| TokenRequest::new([SCOPE]).with_tenant_id(tenant);
    let dac = pod("other; fabrikam")
        .additionally_allowed_tenants(["northwind"])
        .build()
        .unwrap();
    let token = dac.get_token_with(for_tenant("fabrikam")).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(dac.answered(), Some("WorkloadIdentityCredential"));
    assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
    assert_eq!(
        authority.requests()[0].field("client_assertion"),
        Some("projected-service-account-token")
    );
    let token = dac.get_token_with(for_tenant("northwind")).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-2-northwind");
    let err = dac
        .get_token_with(for_tenant("tailspin"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(
        err.message().contains("AZURE_ADDITIONALLY_ALLOWED_TENANTS"),
        "{err}"
    );
    assert_eq!(authority.requests().len(), 2);

    let dac = pod("fabrikam;no/pe").build().unwrap();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert_eq!(err.attempts()[1].credential(), "WorkloadIdentityCredential");
    assert!(
        err.message().contains("AZURE_ADDITIONALLY_ALLOWED_TENANTS"),
        "{err}"
    );
    assert_eq!(authority.requests().len(), 2);
}

#[tokio::test]
async fn azure_cli_answers_on_a_developer_machine_and_the_chain_sticks_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let az = signed_in(dir.path(), "az");
    let azd = signed_in(dir.path(), "azd");
    let dac = nothing_configured(dir.path(), &imds, &[])
        .azure_cli_credential(AzureCliCredential::builder().program(&az).build().unwrap())
        .azure_developer_cli_credential(
            AzureDeveloperCliCredential::builder()
                .program(&azd)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    // Azure CLI now fails: the chain sticks to it (its error, not azd's token), also for a
    // scope it has not seen, and for clones.
    fake_tool(
        &dir.path().join("az"),
        "az",
        "echo 'ERROR: AADSTS50076: MFA required' >&2; exit 1",
    );
    let err = dac
        .clone()
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(err.credential(), "AzureCliCredential", "{err}");
    assert!(err.message().contains("AADSTS50076"), "{err}");
    assert!(
        lines(dir.path().join("azd/calls")).is_empty(),
        "azd was never run"
    );
}

/// A DefaultAzureCredential that has chosen Azure CLI (its `az` in `dir`), and the same with
/// a fallback after it: another `az` (in `other`, whose `calls` show whether it was asked).
async fn azure_cli_chosen_before_a_fallback() -> (
    tempfile::TempDir,
    tempfile::TempDir,
    DefaultAzureCredential,
    Fallback<DefaultAzureCredential, AzureCliCredential>,
) {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let az = signed_in(dir.path(), "az");
    let other = tempfile::tempdir().unwrap();
    let service_principal = fake_tool(
        other.path(),
        "az",
        r#"now=$(date +%s); printf '{"accessToken":"other-token","expires_on":%s,"tokenType":"Bearer"}\n' $((now + 3600))"#,
    );
    let dac = nothing_configured(dir.path(), &imds, &[])
        .azure_cli_credential(AzureCliCredential::builder().program(&az).build().unwrap())
        .build()
        .unwrap();
    let with_fallback = dac.clone().or(AzureCliCredential::builder()
        .program(&service_principal)
        .build()
        .unwrap());
    let token = with_fallback.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    (dir, other, dac, with_fallback)
}

/// Once Azure CLI has answered, the chain asks it alone and its failures are its own, as in
/// azure-identity (the chosen credential is asked outside `within_dac`): an AADSTS refusal
/// is *authentication failed*, not *unavailable*, so a fallback after the chain does not
/// silently answer as another identity.
#[tokio::test]
async fn a_chosen_azure_cli_that_fails_stops_a_fallback_after_the_chain() {
    let (dir, other, dac, with_fallback) = azure_cli_chosen_before_a_fallback().await;
    fake_tool(
        &dir.path().join("az"),
        "az",
        "echo 'ERROR: AADSTS70043: The refresh token has expired due to inactivity.' >&2; exit 1",
    );
    let err = dac
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.credential(), "AzureCliCredential", "{err}");
    assert!(err.message().contains("AADSTS70043"), "{err}");
    let err = with_fallback
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("AADSTS70043"), "{err}");
    assert!(
        lines(other.path().join("calls")).is_empty(),
        "the fallback was never asked"
    );
}

/// Once chosen, Azure CLI that reports itself *unavailable* (`az account clear` was run, the
/// session is gone) is *authentication failed* saying why: an outer fallback does not answer
/// as another identity. Before, the chain passed its *unavailable* on, and the fallback's
/// service principal answered in its place.
#[tokio::test]
async fn a_chosen_azure_cli_that_is_no_longer_signed_in_stops_a_fallback_after_the_chain() {
    let (dir, other, dac, with_fallback) = azure_cli_chosen_before_a_fallback().await;
    fake_tool(
        &dir.path().join("az"),
        "az",
        "echo \"ERROR: Please run 'az login' to setup account.\" >&2; exit 1",
    );
    let err = with_fallback
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    let text = err.to_string();
    assert!(text.contains("Run 'az login'"), "{text}");
    assert!(
        text.contains("DefaultAzureCredential chose this credential"),
        "{text}"
    );
    assert!(
        text.contains("build a new DefaultAzureCredential"),
        "{text}"
    );
    assert!(
        lines(other.path().join("calls")).is_empty(),
        "the fallback was never asked"
    );
    // Asked directly, the same.
    let err = dac
        .get_token(["https://third.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.credential(), "AzureCliCredential", "{err}");
}

/// Moves tokio's clock forward by `by` while the test runs on real time (`az` runs as a
/// process, which a paused clock would time out): the re-check interval passes at once.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A laptop whose network swallows connections to the IMDS address (the emulator never
/// answers): the first request waits the probe's second and gets Azure CLI's token, chosen for
/// now; the next ones go straight to Azure CLI, no probe; after the re-check interval one
/// request runs the chain again, meets the same timeout, and Azure CLI is chosen for good: no
/// probe ever after. Before, every request ran the chain and waited the probe's second.
#[tokio::test]
async fn a_black_holed_imds_is_probed_once_more_after_the_recheck_interval_then_never() {
    use crate::support::mi_emulator::{Emulator, Fault, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    imds.push_faults(Fault::Delay(Duration::from_secs(24 * 3600)), 10);
    let dac = with_signed_in_az(dir.path(), &imds.base_url());
    let started = Instant::now();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the probe's second"
    );
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    assert_eq!(imds.request_count(), 1, "the probe");
    for scope in [
        SCOPE,
        "https://other.test/.default",
        "https://third.test/.default",
    ] {
        let token = dac.get_token([scope]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "az-token");
    }
    assert_eq!(imds.request_count(), 1, "no probe while chosen for now");
    // Not yet: a minute before the re-check.
    jump(Duration::from_secs(4 * 60)).await;
    dac.get_token(["https://fourth.test/.default"])
        .await
        .unwrap();
    assert_eq!(imds.request_count(), 1);
    jump(Duration::from_secs(60)).await;
    let started = Instant::now();
    let token = dac
        .get_token(["https://fifth.test/.default"])
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the re-check's probe"
    );
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(imds.request_count(), 2, "one more probe");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    // Final: however long it runs, no probe again.
    for _ in 0..3 {
        jump(Duration::from_secs(3600)).await;
        dac.get_token(["https://sixth.test/.default"])
            .await
            .unwrap();
    }
    assert_eq!(imds.request_count(), 2, "chosen for good");
}

/// IMDS slow to answer the first probe (a VM starting, a one-off stall): Azure CLI answers and
/// is chosen for now, without probes; at the re-check IMDS answers, and the managed identity is
/// chosen for good. Before d53f584 the chain chose Azure CLI for good on that first request.
#[tokio::test]
async fn an_imds_slow_only_at_first_gets_the_managed_identity_at_the_recheck() {
    use crate::support::mi_emulator::{Emulator, Fault, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    imds.push_fault(Fault::Delay(Duration::from_secs(3600)));
    let dac = with_signed_in_az(dir.path(), &imds.base_url());
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    let token = dac
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(imds.request_count(), 1, "no probe while chosen for now");
    jump(Duration::from_secs(5 * 60)).await;
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert!(
        token.secret().expose_secret().starts_with("mi-imds-"),
        "{token:?}"
    );
    assert_eq!(dac.answered(), Some("ManagedIdentityCredential"));
    let requests = imds.requests();
    assert_eq!(
        requests.len(),
        3,
        "two probes, one token request: {requests:?}"
    );
    // For good: Azure CLI is not run again, whatever the time.
    jump(Duration::from_secs(3600)).await;
    let token = dac
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert!(token.secret().expose_secret().starts_with("mi-imds-"));
    assert_eq!(dac.answered(), Some("ManagedIdentityCredential"));
    assert_eq!(lines(dir.path().join("az/calls")).len(), 2, "az ran twice");
}

/// Two concurrent first requests: A's `az` answers and is chosen; B's fails for its scope,
/// which the chain makes *unavailable*, so B's run of the chain finds nothing. B then asks the
/// chosen `az` alone and returns its failure, instead of the chain's *unavailable*, which let
/// an outer fallback answer as another identity. Both runs of the chain are under way before
/// either `az` answers (each waits for a gate file the test creates).
#[tokio::test]
async fn a_concurrent_first_request_that_finds_nothing_asks_the_chosen_credential() {
    use crate::support::programs::Procs;
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let az_dir = dir.path().join("az");
    std::fs::create_dir_all(&az_dir).unwrap();
    let procs = Procs::new(&az_dir);
    let gates = az_dir.display().to_string();
    let az = fake_tool(
        &az_dir,
        "az",
        &format!(
            r#"case "$*" in *other.test*) gate=go-b ;; *) gate=go-a ;; esac
while [ ! -e '{gates}'/$gate ]; do sleep 0.01; done
case "$*" in *other.test*) echo 'ERROR: AADSTS50076: MFA required' >&2; exit 1 ;; esac
now=$(date +%s); printf '{{"accessToken":"az-token","expires_on":%s,"tokenType":"Bearer"}}
' $((now + 3600))"#
        ),
    );
    let other = tempfile::tempdir().unwrap();
    let service_principal = fake_tool(
        other.path(),
        "az",
        r#"now=$(date +%s); printf '{"accessToken":"other-token","expires_on":%s,"tokenType":"Bearer"}
' $((now + 3600))"#,
    );
    let dac = nothing_configured(dir.path(), &imds, &[])
        .azure_cli_credential(AzureCliCredential::builder().program(&az).build().unwrap())
        .build()
        .unwrap();
    let with_fallback = dac.clone().or(AzureCliCredential::builder()
        .program(&service_principal)
        .build()
        .unwrap());
    let b = tokio::spawn({
        let with_fallback = with_fallback.clone();
        async move {
            with_fallback
                .get_token(["https://other.test/.default"])
                .await
        }
    });
    let a = tokio::spawn({
        let dac = dac.clone();
        async move { dac.get_token([SCOPE]).await }
    });
    procs
        .wait_until("both runs of the chain reached az", |dir| {
            lines(dir.join("calls")).len() >= 2
        })
        .await;
    std::fs::write(az_dir.join("go-a"), "").unwrap();
    let token = a.await.unwrap().unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
    std::fs::write(az_dir.join("go-b"), "").unwrap();
    let err = b.await.unwrap().unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.to_string().contains("AADSTS50076"), "{err}");
    assert!(
        lines(other.path().join("calls")).is_empty(),
        "the fallback was never asked"
    );
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
}

/// Nested in a chain of the program's own, the chain's advice about its members ("Set up one of
/// them…") stays in the outer error, which lists the same members. Before, the flattening of
/// the attempts dropped it.
#[tokio::test(start_paused = true)]
async fn nested_in_another_chain_the_error_keeps_the_advice() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let nothing = || {
        tower_identity::EnvironmentCredential::builder()
            .vars(Vec::<(String, String)>::new())
            .build()
    };
    let dac = nothing_configured(dir.path(), &imds, &[]).build().unwrap();
    let err = dac
        .clone()
        .or(nothing())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(err.attempts().len(), 7, "{err}");
    let text = err.to_string();
    assert_eq!(
        text.matches("Set up one of them as its line says").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("struct.DefaultAzureCredential.html"),
        "{text}"
    );
    let nested = tower_identity::ChainedTokenCredential::new([
        nothing().boxed_credential(),
        dac.or(nothing()).boxed_credential(),
    ])
    .unwrap();
    let text = nested.get_token([SCOPE]).await.unwrap_err().to_string();
    assert_eq!(
        text.matches("Set up one of them as its line says").count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_azure_cli_lets_azure_developer_cli_answer() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    std::fs::create_dir_all(dir.path().join("az")).unwrap();
    let az = fake_tool(
        &dir.path().join("az"),
        "az",
        "echo 'ERROR: something broke' >&2; exit 1",
    );
    let azd = signed_in(dir.path(), "azd");
    let dac = nothing_configured(dir.path(), &imds, &[])
        .azure_cli_credential(AzureCliCredential::builder().program(&az).build().unwrap())
        .azure_developer_cli_credential(
            AzureDeveloperCliCredential::builder()
                .program(&azd)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "azd-token");
    assert_eq!(dac.answered(), Some("AzureDeveloperCliCredential"));
}

#[tokio::test(start_paused = true)]
async fn azure_token_credentials_selects_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let cases: [(&str, &[&str]); 9] = [
        ("prod", &ALL[..3]),
        (" DEV ", &ALL[3..]),
        ("EnvironmentCredential", &ALL[..1]),
        ("workloadidentitycredential", &ALL[1..2]),
        ("ManagedIdentityCredential", &ALL[2..3]),
        ("AzureCliCredential", &ALL[4..5]),
        ("AzureDeveloperCliCredential", &ALL[5..]),
        ("", &ALL),
        ("  ", &ALL),
    ];
    for (value, want) in cases {
        let dac = nothing_configured(dir.path(), &imds, &[("AZURE_TOKEN_CREDENTIALS", value)])
            .build()
            .unwrap();
        assert_eq!(dac.credentials().collect::<Vec<_>>(), want, "{value:?}");
        let err = dac.get_token([SCOPE]).await.unwrap_err();
        let tried: Vec<&str> = err.attempts().iter().map(|a| a.credential()).collect();
        assert_eq!(tried, want, "{value:?}: {err}");
    }
    for bad in [
        "production",
        "SharedTokenCacheCredential",
        "AzurePowerShellCredential",
    ] {
        let err = nothing_configured(dir.path(), &imds, &[("AZURE_TOKEN_CREDENTIALS", bad)])
            .build()
            .unwrap_err();
        assert!(err.message().contains("AZURE_TOKEN_CREDENTIALS"), "{err}");
        assert!(err.message().contains(bad), "{err}");
    }
    // The builder's exclusions apply on top, and excluding everything is an error.
    let dac = nothing_configured(dir.path(), &imds, &[("AZURE_TOKEN_CREDENTIALS", "prod")])
        .exclude_managed_identity_credential(true)
        .build()
        .unwrap();
    assert_eq!(dac.credentials().collect::<Vec<_>>(), &ALL[..2]);
    let err = nothing_configured(
        dir.path(),
        &imds,
        &[("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")],
    )
    .exclude_azure_cli_credential(true)
    .build()
    .unwrap_err();
    assert!(
        err.message().contains("every credential is excluded"),
        "{err}"
    );
}

/// The builder's `exclude_*` values win over `AZURE_TOKEN_CREDENTIALS` both ways, as
/// azure-identity's keyword arguments do: `false` keeps in a member the variable leaves out,
/// `true` leaves out one it selects, and the last value given for a member counts.
#[tokio::test]
async fn explicit_exclusions_win_over_azure_token_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let chain =
        |value: &str, build: fn(DefaultAzureCredentialBuilder) -> DefaultAzureCredentialBuilder| {
            let b = nothing_configured(dir.path(), &imds, &[("AZURE_TOKEN_CREDENTIALS", value)]);
            let dac = build(b).build().unwrap();
            dac.credentials().map(str::to_owned).collect::<Vec<_>>()
        };
    assert_eq!(
        chain("prod", |b| b.exclude_azure_cli_credential(false)),
        [ALL[0], ALL[1], ALL[2], ALL[4]]
    );
    assert_eq!(
        chain("AzureCliCredential", |b| b
            .exclude_environment_credential(false)
            .exclude_shared_token_cache_credential(false)),
        [ALL[0], ALL[3], ALL[4]]
    );
    assert_eq!(
        chain("dev", |b| b.exclude_azure_cli_credential(true)),
        [ALL[3], ALL[5]]
    );
    assert_eq!(
        chain("prod", |b| b
            .exclude_azure_cli_credential(false)
            .exclude_azure_cli_credential(true)),
        &ALL[..3]
    );
    assert_eq!(
        chain("", |b| b
            .exclude_azure_cli_credential(true)
            .exclude_azure_cli_credential(false)),
        ALL
    );
    // Put back, the member answers.
    let dac = nothing_configured(dir.path(), &imds, &[("AZURE_TOKEN_CREDENTIALS", "prod")])
        .azure_cli_credential(
            AzureCliCredential::builder()
                .program(signed_in(dir.path(), "az"))
                .build()
                .unwrap(),
        )
        .exclude_azure_cli_credential(false)
        .build()
        .unwrap();
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(dac.answered(), Some("AzureCliCredential"));
}

#[tokio::test]
async fn on_an_azure_vm_the_managed_identity_answers_after_one_probe_and_stays() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    // AZURE_CLIENT_ID alone: not a service principal or workload identity, but the
    // user-assigned managed identity to use (as in azure-identity).
    let dac = nothing_configured(
        dir.path(),
        &imds.base_url(),
        &[("AZURE_CLIENT_ID", "mi-client-id")],
    )
    .build()
    .unwrap();
    dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(dac.answered(), Some("ManagedIdentityCredential"));
    let requests = imds.requests();
    assert_eq!(
        requests.len(),
        2,
        "a probe, then the token request: {requests:?}"
    );
    let (probe, real) = (&requests[0], &requests[1]);
    assert_eq!(
        probe.identity_header("metadata"),
        None,
        "the probe has no Metadata header"
    );
    assert_eq!(real.identity_header("metadata"), Some("true"));
    for request in [probe, real] {
        assert_eq!(request.param("resource"), Some("https://resource.test"));
        assert_eq!(request.param("client_id"), Some("mi-client-id"));
    }
    // Sticky, and no probe once IMDS has answered.
    dac.get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(imds.request_count(), 3);
    assert_eq!(imds.requests()[2].identity_header("metadata"), Some("true"));
}

#[tokio::test]
async fn in_an_aks_pod_the_workload_identity_answers() {
    use crate::support::oidc::{WORKLOAD_CLIENT_ID, peer};
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let (assertion, _) = peer.service_account_token(serde_json::json!({})).await;
    let file = dir.path().join("token");
    std::fs::write(&file, assertion).unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let file = file.display().to_string();
    let pod = || {
        nothing_configured(
            dir.path(),
            &imds,
            &[
                // The pod's AZURE_CLIENT_ID names another app; the builder's value wins.
                ("AZURE_CLIENT_ID", "another-app"),
                ("AZURE_FEDERATED_TOKEN_FILE", &file),
                ("AZURE_AUTHORITY_HOST", &peer.base),
            ],
        )
        .workload_identity_tenant_id("contoso")
        .http_client(peer.http())
    };
    // The workload identity's own id, or else the managed identity's client id (as
    // azure-identity's `workload_identity_client_id` defaults to `managed_identity_client_id`).
    for dac in [
        pod().workload_identity_client_id(WORKLOAD_CLIENT_ID),
        pod().managed_identity_client_id(WORKLOAD_CLIENT_ID),
    ] {
        let dac = dac.build().unwrap();
        dac.get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
        assert_eq!(dac.answered(), Some("WorkloadIdentityCredential"));
    }
}

/// An AKS pod set up for workload identity but without a client id (no `AZURE_CLIENT_ID`: the
/// service account names none). The workload identity member cannot work, and neither can the
/// managed identity's workload identity source, which azure-identity keeps while that member is
/// in the chain: the chain must not fall through to IMDS, which in a pod answers as the node's
/// kubelet identity.
#[tokio::test(start_paused = true)]
async fn a_workload_identity_pod_without_a_client_id_never_reaches_imds() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    let file = dir.path().join("token").display().to_string();
    let pod: [(&str, &str); 3] = [
        ("AZURE_AUTHORITY_HOST", "https://login.pod.test"),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_FEDERATED_TOKEN_FILE", &file),
    ];
    let err = nothing_configured(dir.path(), &imds.base_url(), &pod)
        .build()
        .unwrap()
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let mi = err
        .attempts()
        .iter()
        .find(|a| a.credential() == "ManagedIdentityCredential")
        .unwrap();
    assert!(mi.is_unavailable(), "{mi}");
    assert!(
        mi.message().contains("workload identity") && mi.message().contains("AZURE_CLIENT_ID"),
        "{mi}"
    );
    assert_eq!(imds.request_count(), 0, "{:?}", imds.requests());

    // Without the workload identity member (excluded, or the managed identity named alone,
    // as azure-identity does for both), the managed identity is IMDS's.
    let prod = [&pod[..], &[("AZURE_TOKEN_CREDENTIALS", "prod")]].concat();
    let alone = [
        &pod[..],
        &[("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")],
    ]
    .concat();
    for dac in [
        nothing_configured(dir.path(), &imds.base_url(), &prod)
            .exclude_workload_identity_credential(true),
        nothing_configured(dir.path(), &imds.base_url(), &alone),
    ] {
        imds.clear();
        let dac = dac.build().unwrap();
        dac.get_token([SCOPE]).await.unwrap();
        assert_eq!(dac.answered(), Some("ManagedIdentityCredential"));
        assert!(imds.request_count() > 0);
    }
}

/// A pod whose workload identity cannot work (its token file is missing): the managed
/// identity's workload identity source fails the same way, and its attempt is named after the
/// managed identity, saying which variables chose that source and how to leave it out.
#[tokio::test(start_paused = true)]
async fn the_managed_identitys_workload_identity_failure_is_named_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let imds = format!("http://127.0.0.1:{}", closed_port().await);
    let file = dir.path().join("missing-token").display().to_string();
    let pod: [(&str, &str); 4] = [
        ("AZURE_AUTHORITY_HOST", "https://login.pod.test"),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5f6"),
        ("AZURE_FEDERATED_TOKEN_FILE", &file),
    ];
    let err = nothing_configured(dir.path(), &imds, &pod)
        .build()
        .unwrap()
        .get_token([SCOPE])
        .await
        .unwrap_err();
    let named: Vec<&str> = err.attempts().iter().map(|a| a.credential()).collect();
    assert_eq!(
        named
            .iter()
            .filter(|n| **n == "WorkloadIdentityCredential")
            .count(),
        1,
        "{err}"
    );
    let mi = err
        .attempts()
        .iter()
        .find(|a| a.credential() == "ManagedIdentityCredential")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        mi.message().contains("AZURE_FEDERATED_TOKEN_FILE")
            && mi.message().contains("exclude_workload_identity(true)")
            && mi
                .message()
                .contains("exclude_workload_identity_credential(true)"),
        "{mi}"
    );
}

#[tokio::test]
async fn a_proxy_answering_for_imds_does_not_stop_the_chain_before_azure_cli() {
    use crate::support::mi_emulator::{Emulator, Fault, Flavour};
    let dir = tempfile::tempdir().unwrap();
    // A firewall or egress proxy that answers for the link-local address.
    let imds = Emulator::start(Flavour::Imds).await;
    let denied = || Fault::Respond {
        status: 403,
        body: "resolve_deny: denied destination".into(),
        headers: vec![],
    };
    imds.push_fault(denied());
    imds.push_fault(denied());
    let dac = with_signed_in_az(dir.path(), &imds.base_url());
    let token = dac.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "az-token");
    assert_eq!(imds.request_count(), 2, "the probe, then one token request");
    // Outside the chain the same answer is a failure to hear about.
    imds.push_fault(denied());
    let mi = tower_identity::ManagedIdentityCredential::builder()
        .vars(imds.env())
        .build()
        .unwrap();
    let err = mi.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.message().contains("403"), "{err}");
}

/// A probe that connects but gets no HTTP reply (the connection dropped at once, or bytes that
/// are not HTTP) found no IMDS: the chain moves on to Azure CLI (azure-identity's probe takes
/// any failure but an HTTP response so).
#[tokio::test]
async fn a_probe_without_an_http_reply_lets_azure_cli_answer() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    for reply in [&b""[..], b"not http at all\r\n\r\n"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let imds = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let _ = socket.write_all(reply).await;
                // Dropped: the connection closes without an HTTP reply.
            }
        });
        let dac = with_signed_in_az(dir.path(), &imds);
        let token = dac.get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "az-token");
        assert_eq!(dac.answered(), Some("AzureCliCredential"));
        server.abort();
    }
}

/// A JSON error is IMDS's own: the managed identity is there and failed, and the chain stops
/// on it rather than run as the developer signed in to Azure CLI (as azure-identity does).
#[tokio::test]
async fn a_json_error_from_imds_stops_the_chain_before_azure_cli() {
    use crate::support::mi_emulator::{Emulator, Fault, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    let dac = || with_signed_in_az(dir.path(), &imds.base_url());
    for (fault, said) in [
        (
            Fault::Respond {
                status: 403,
                body: r#"{"error":"forbidden","error_description":"denied by policy"}"#.into(),
                headers: vec![],
            },
            "denied by policy",
        ),
        // A 200 without a token is as much IMDS's answer.
        (
            Fault::Body(r#"{"token_type":"Bearer"}"#.into()),
            "access_token",
        ),
    ] {
        // The probe gets the emulator's own 400, the token request the fault.
        imds.push_fault(Fault::Respond {
            status: 400,
            body: r#"{"error":"invalid_request"}"#.into(),
            headers: vec![],
        });
        imds.push_fault(fault);
        let err = dac().get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{err}");
        let tried: Vec<&str> = err.attempts().iter().map(|a| a.credential()).collect();
        assert_eq!(tried.last(), Some(&"ManagedIdentityCredential"), "{err}");
        assert!(err.to_string().contains(said), "{err}");
    }
}

#[tokio::test]
async fn a_managed_identity_named_alone_is_not_probed() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    let dac = nothing_configured(
        dir.path(),
        &imds.base_url(),
        &[("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")],
    )
    .build()
    .unwrap();
    dac.get_token([SCOPE]).await.unwrap();
    let requests = imds.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].identity_header("metadata"), Some("true"));
    // Whether it is probed follows the variable alone, as azure-identity's
    // `_enable_imds_probe`: a member put back in code does not change it.
    let dac = nothing_configured(
        dir.path(),
        &imds.base_url(),
        &[("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")],
    )
    .exclude_azure_cli_credential(false)
    .build()
    .unwrap();
    assert_eq!(
        dac.credentials().collect::<Vec<_>>(),
        ["ManagedIdentityCredential", "AzureCliCredential"]
    );
    dac.get_token([SCOPE]).await.unwrap();
    let requests = imds.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].identity_header("metadata"), Some("true"));
    // Another credential named alone, the managed identity put back in code: it is probed
    // (its first request has no `Metadata` header), as in any chain.
    let dac = nothing_configured(
        dir.path(),
        &imds.base_url(),
        &[("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")],
    )
    .exclude_managed_identity_credential(false)
    .build()
    .unwrap();
    assert_eq!(
        dac.credentials().collect::<Vec<_>>(),
        ["ManagedIdentityCredential", "AzureCliCredential"]
    );
    dac.get_token([SCOPE]).await.unwrap();
    let requests = imds.requests();
    assert!(
        requests.len() >= 4,
        "a probe, then the request: {requests:?}"
    );
    assert_eq!(
        requests[2].identity_header("metadata"),
        None,
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_managed_identity_that_cannot_be_configured_lets_the_developer_tools_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Cloud Shell takes no user-assigned id, and AZURE_CLIENT_ID would ask for one.
    let dac = nothing_configured(
        dir.path(),
        "http://127.0.0.1:1",
        &[
            ("MSI_ENDPOINT", "http://127.0.0.1:1/token"),
            ("AZURE_CLIENT_ID", "some-app"),
        ],
    )
    .azure_cli_credential(
        AzureCliCredential::builder()
            .program(signed_in(dir.path(), "az"))
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    assert_eq!(
        dac.get_token([SCOPE])
            .await
            .unwrap()
            .secret()
            .expose_secret(),
        "az-token"
    );
    // Without az the reason is in the chain's error.
    let dac = nothing_configured(
        dir.path(),
        "http://127.0.0.1:1",
        &[
            ("MSI_ENDPOINT", "http://127.0.0.1:1/token"),
            ("AZURE_CLIENT_ID", "some-app"),
        ],
    )
    .build()
    .unwrap();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    let mi = &err.attempts()[2];
    assert!(mi.is_unavailable(), "{mi}");
    assert!(mi.message().contains("Cloud Shell"), "{mi}");
}

#[tokio::test]
async fn many_first_callers_share_one_probe_and_one_token_request() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    let dir = tempfile::tempdir().unwrap();
    let imds = Emulator::start(Flavour::Imds).await;
    let dac = nothing_configured(dir.path(), &imds.base_url(), &[])
        .build()
        .unwrap();
    let calls = (0..200).map(|_| dac.clone().get_token([SCOPE]));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(dac.answered(), Some("ManagedIdentityCredential"));
    assert_eq!(imds.request_count(), 2, "one probe and one token request");
}

/// A shared token cache whose refresh token Entra refuses (a stale or revoked family token,
/// AADSTS70043), or that meets an outage or a dropped connection while redeeming it, lets
/// Azure CLI answer, as in azure-identity. Before, its failure stopped the chain, so a
/// developer signed in to `az` got the cache's error.
#[tokio::test]
async fn a_failing_shared_token_cache_lets_azure_cli_answer() {
    use crate::support::authority::{Fault, error_body};
    let stale = Fault::Respond {
        status: 400,
        body: error_body(
            "invalid_grant",
            70043,
            "The refresh token has expired or is invalid due to sign-in frequency checks.",
        ),
        headers: vec![],
    };
    let cases = [
        ("invalid_grant", stale),
        ("503", Fault::ServerError(503)),
        ("dropped connection", Fault::Close),
    ];
    for (case, fault) in cases {
        let authority = Authority::start().await;
        let dir = tempfile::tempdir().unwrap();
        // alice's and bob's accounts as msal wrote them, with family refresh tokens for the
        // loopback authority's host and access tokens long expired.
        std::fs::write(
            dir.path().join("msal.cache.nocae"),
            include_bytes!("../data/msal-two-accounts.json"),
        )
        .unwrap();
        for _ in 0..4 {
            authority.push_fault(fault.clone());
        }
        let http = creds::http_builder(&authority)
            .retry(
                tower_identity::RetryOptions::default()
                    .max_retries(0)
                    .total_timeout(None),
            )
            .build()
            .unwrap();
        let imds = format!("http://127.0.0.1:{}", closed_port().await);
        let dac = nothing_configured(dir.path(), &imds, &[])
            .shared_token_cache_credential(
                SharedTokenCacheCredential::builder()
                    .username("alice@contoso.com")
                    .authority_host(authority.url())
                    .http_client(http)
                    .cache_options(
                        TokenCachePersistenceOptions::new()
                            .directory(dir.path())
                            .allow_unencrypted_storage(true),
                    )
                    .build()
                    .unwrap(),
            )
            .azure_cli_credential(
                AzureCliCredential::builder()
                    .program(signed_in(dir.path(), "az"))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let token = dac
            .get_token([SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(token.secret().expose_secret(), "az-token", "{case}");
        // A refusal is final, and Azure CLI is chosen for good; after an outage or a dropped
        // connection, which may pass, for now: the chain runs again, the shared cache first,
        // after the re-check interval.
        assert_eq!(dac.answered(), Some("AzureCliCredential"), "{case}");
        assert_eq!(
            authority.token_posts(),
            1,
            "{case}: the shared cache tried alice's refresh token"
        );
    }
}

/// A managed identity that cannot be configured is named once in the chain's error: its
/// configuration error already starts with the name.
#[tokio::test]
async fn a_managed_identity_setup_error_names_the_credential_once() {
    let dac = DefaultAzureCredential::builder()
        .vars([("IDENTITY_ENDPOINT", "http://x")])
        .exclude_shared_token_cache_credential(true)
        .exclude_azure_cli_credential(true)
        .exclude_azure_developer_cli_credential(true)
        .build()
        .unwrap();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(
        text.matches("ManagedIdentityCredential").count(),
        1,
        "{text}"
    );
    let mi = &err.attempts()[2];
    assert!(mi.is_unavailable(), "{mi}");
    assert!(mi.message().contains("IDENTITY_HEADER"), "{mi}");
    let text = mi.to_string();
    assert_eq!(
        text.matches("ManagedIdentityCredential:").count(),
        1,
        "{text}"
    );
}

/// Azure ML selects a user-assigned identity by client id only: an object id given for the
/// chain's managed identity makes it unavailable there, saying so, and nothing is sent.
#[tokio::test]
async fn an_object_id_on_azure_ml_makes_the_managed_identity_unavailable() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    use tower_identity::UserAssignedId;
    let em = Emulator::start(Flavour::AzureMl).await;
    let dac = DefaultAzureCredential::builder()
        .vars(em.env())
        .managed_identity_id(UserAssignedId::ObjectId("oid".into()))
        .exclude_shared_token_cache_credential(true)
        .exclude_azure_cli_credential(true)
        .exclude_azure_developer_cli_credential(true)
        .build()
        .unwrap();
    let err = dac.get_token([SCOPE]).await.unwrap_err();
    let mi = &err.attempts()[2];
    assert!(mi.is_unavailable(), "{mi}");
    assert!(mi.message().contains("by client id only"), "{mi}");
    assert_eq!(em.request_count(), 0);
}
