use super::builder::select;
use super::*;
use crate::CredentialExt;

const EP: &str = "http://127.0.0.1:41000/token";
const SF_EP: &str = "https://127.0.0.1:2377/metadata/identity/oauth2/token";
const THUMB: &str = "0123456789abcdef0123456789abcdef01234567";

fn builder(vars: &[(&str, &str)]) -> ManagedIdentityCredentialBuilder {
    ManagedIdentityCredential::builder()
        .vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        // Arc needs a key directory on every system the tests run on.
        .azure_arc_key_directory(std::env::temp_dir())
}

fn source_of(vars: &[(&str, &str)]) -> ManagedIdentitySource {
    builder(vars).build().unwrap().source()
}

#[test]
fn sources_in_azure_identity_order() {
    use ManagedIdentitySource::*;
    let cases: &[(&[(&str, &str)], ManagedIdentitySource)] = &[
        (&[], Imds),
        (
            &[(AZURE_POD_IDENTITY_AUTHORITY_HOST, "http://127.0.0.1:1")],
            Imds,
        ),
        (
            &[
                (IDENTITY_ENDPOINT, SF_EP),
                (IDENTITY_HEADER, "h"),
                (IDENTITY_SERVER_THUMBPRINT, THUMB),
            ],
            ServiceFabric,
        ),
        // Service Fabric wins over everything else that is set.
        (
            &[
                (IDENTITY_ENDPOINT, SF_EP),
                (IDENTITY_HEADER, "h"),
                (IDENTITY_SERVER_THUMBPRINT, THUMB),
                (IMDS_ENDPOINT, EP),
                (MSI_ENDPOINT, EP),
                (MSI_SECRET, "s"),
            ],
            ServiceFabric,
        ),
        (
            &[(IDENTITY_ENDPOINT, EP), (IDENTITY_HEADER, "h")],
            AppService,
        ),
        (
            &[
                (IDENTITY_ENDPOINT, EP),
                (IDENTITY_HEADER, "h"),
                (IMDS_ENDPOINT, EP),
                (MSI_ENDPOINT, EP),
                (MSI_SECRET, "s"),
            ],
            AppService,
        ),
        // An empty thumbprint is unset: App Service.
        (
            &[
                (IDENTITY_ENDPOINT, EP),
                (IDENTITY_HEADER, "h"),
                (IDENTITY_SERVER_THUMBPRINT, " "),
            ],
            AppService,
        ),
        (&[(IDENTITY_ENDPOINT, EP), (IMDS_ENDPOINT, EP)], AzureArc),
        (
            &[
                (IDENTITY_ENDPOINT, EP),
                (IMDS_ENDPOINT, EP),
                (IDENTITY_SERVER_THUMBPRINT, THUMB),
                (MSI_ENDPOINT, EP),
            ],
            AzureArc,
        ),
        (&[(MSI_ENDPOINT, EP), (MSI_SECRET, "s")], AzureMl),
        (
            &[
                (MSI_ENDPOINT, EP),
                (MSI_SECRET, "s"),
                (AZURE_POD_IDENTITY_AUTHORITY_HOST, EP),
            ],
            AzureMl,
        ),
        (&[(MSI_ENDPOINT, EP)], CloudShell),
        (&[(MSI_ENDPOINT, EP), (MSI_SECRET, "")], CloudShell),
        // Variables of no source: IMDS.
        (
            &[
                (IDENTITY_HEADER, "h"),
                (MSI_SECRET, "s"),
                (IMDS_ENDPOINT, EP),
            ],
            Imds,
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(source_of(vars), *want, "{vars:?}");
    }
}

#[test]
fn identity_endpoint_alone_is_an_error_naming_what_to_set() {
    for vars in [
        &[(IDENTITY_ENDPOINT, EP)][..],
        &[(IDENTITY_ENDPOINT, EP), (IDENTITY_SERVER_THUMBPRINT, THUMB)],
        // MSI_ENDPOINT does not rescue it: IDENTITY_ENDPOINT decides first (as in azure-identity).
        &[(IDENTITY_ENDPOINT, EP), (MSI_ENDPOINT, EP)],
    ] {
        let err = builder(vars).build().unwrap_err();
        let msg = err.message();
        assert!(msg.starts_with(NAME), "{msg}");
        for name in [IDENTITY_HEADER, IMDS_ENDPOINT, IDENTITY_SERVER_THUMBPRINT] {
            assert!(msg.contains(name), "{msg}");
        }
    }
}

#[test]
fn endpoints_must_be_http_urls_and_are_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[(IDENTITY_ENDPOINT, "ftp://x/"), (IDENTITY_HEADER, "h")],
            "IDENTITY_ENDPOINT must be an http or https URL",
        ),
        (
            &[(IDENTITY_ENDPOINT, "not a url"), (IDENTITY_HEADER, "h")],
            "IDENTITY_ENDPOINT is not a URL",
        ),
        (
            &[(MSI_ENDPOINT, "file:///etc/passwd")],
            "MSI_ENDPOINT must be",
        ),
        (
            &[(AZURE_POD_IDENTITY_AUTHORITY_HOST, "169.254.169.254")],
            "AZURE_POD_IDENTITY_AUTHORITY_HOST is not a URL",
        ),
        (
            &[
                (IDENTITY_ENDPOINT, EP),
                (IDENTITY_HEADER, "h"),
                (IDENTITY_SERVER_THUMBPRINT, THUMB),
            ],
            "IDENTITY_ENDPOINT must be an https URL, not http",
        ),
        (
            &[
                (IDENTITY_ENDPOINT, SF_EP),
                (IDENTITY_HEADER, "h"),
                (IDENTITY_SERVER_THUMBPRINT, "abc"),
            ],
            "IDENTITY_SERVER_THUMBPRINT must be the 40 hexadecimal digits",
        ),
        (
            &[
                (MSI_ENDPOINT, "http://user:pa55word@127.0.0.1/"),
                (MSI_SECRET, "s"),
            ],
            "MSI_ENDPOINT holds user information",
        ),
        (
            &[
                (IDENTITY_ENDPOINT, EP),
                (IDENTITY_HEADER, "bad\u{7f}header-secret"),
            ],
            "IDENTITY_HEADER holds characters",
        ),
    ];
    for (vars, want) in cases {
        let err = builder(vars).build().unwrap_err();
        assert!(err.message().contains(want), "{vars:?}: {err}");
        assert!(!err.message().contains("pa55word"), "{err}");
        assert!(!err.message().contains("header-secret"), "{err}");
    }
}

#[test]
fn exactly_one_user_assigned_id() {
    let err = builder(&[])
        .client_id("c")
        .object_id("o")
        .build()
        .unwrap_err();
    assert!(err.message().contains("exactly one"), "{err}");
    let err = builder(&[])
        .user_assigned_id(UserAssignedId::ResourceId("r".into()))
        .resource_id("r")
        .build()
        .unwrap_err();
    assert!(err.message().contains("exactly one"), "{err}");
    let err = builder(&[]).object_id(" ").build().unwrap_err();
    assert!(
        err.message().contains("user-assigned object id is empty"),
        "{err}"
    );
    for b in [
        builder(&[]).client_id("c"),
        builder(&[]).object_id("o"),
        builder(&[]).resource_id("r"),
    ] {
        assert!(b.build().is_ok());
    }
}

#[test]
fn cloud_shell_and_service_fabric_take_no_user_assigned_id() {
    let sf: &[(&str, &str)] = &[
        (IDENTITY_ENDPOINT, SF_EP),
        (IDENTITY_HEADER, "h"),
        (IDENTITY_SERVER_THUMBPRINT, THUMB),
    ];
    for (vars, source) in [
        (sf, "Service Fabric"),
        (&[(MSI_ENDPOINT, EP)][..], "Cloud Shell"),
    ] {
        let err = builder(vars).client_id("c").build().unwrap_err();
        assert!(
            err.message()
                .contains(&format!("{source} supports only the system-assigned")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_build_error_is_reported_by_get_token_as_invalid_request() {
    let c = builder(&[(IDENTITY_ENDPOINT, EP)]).build_lenient();
    assert_eq!(c.source(), ManagedIdentitySource::AppService);
    let err = c
        .get_token(["https://vault.azure.net/.default"])
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(err.message().contains(IDENTITY_HEADER), "{err}");
}

#[tokio::test]
async fn exactly_one_scope_is_required() {
    let c = builder(&[(MSI_ENDPOINT, EP)]).build().unwrap();
    for scopes in [vec![], vec!["a/.default", "b/.default"], vec![" "]] {
        let err = c.get_token(scopes.clone()).await.unwrap_err();
        assert!(err.is_invalid_request(), "{scopes:?}: {err}");
    }
    let err = c.get_token(["a", "b"]).await.unwrap_err();
    assert!(err.message().contains("exactly one resource"), "{err}");
    for scope in ["/.default", " /.default "] {
        let err = resource_of(&TokenRequest::new([scope])).unwrap_err();
        assert!(err.is_invalid_request(), "{scope}: {err}");
        assert!(err.message().contains("names no resource"), "{err}");
    }
}

#[test]
fn scopes_map_to_resources() {
    for (scope, resource) in [
        (
            "https://vault.azure.net/.default",
            "https://vault.azure.net",
        ),
        (
            "https://management.core.windows.net//.default",
            "https://management.core.windows.net/",
        ),
        ("https://storage.azure.com", "https://storage.azure.com"),
        ("api://x/.default/.default", "api://x/.default"),
    ] {
        assert_eq!(
            resource_of(&TokenRequest::new([scope])).unwrap(),
            resource,
            "{scope}"
        );
    }
}

#[test]
fn debug_shows_source_endpoint_and_identity_but_no_secret() {
    let vars: &[&[(&str, &str)]] = &[
        &[(IDENTITY_ENDPOINT, EP), (IDENTITY_HEADER, "hdr-s3cret")],
        &[(MSI_ENDPOINT, EP), (MSI_SECRET, "msi-s3cret")],
        &[
            (IDENTITY_ENDPOINT, SF_EP),
            (IDENTITY_HEADER, "hdr-s3cret"),
            (IDENTITY_SERVER_THUMBPRINT, THUMB),
        ],
    ];
    for vars in vars {
        let b = builder(vars);
        let text = format!("{b:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("IDENTITY_ENDPOINT") || text.contains("MSI_ENDPOINT"));
        let c = b.build().unwrap();
        for text in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("127.0.0.1"), "{text}");
        }
    }
    let c = builder(&[]).client_id("cid-1").build().unwrap();
    let text = format!("{c:?}");
    assert!(
        text.contains("Imds") && text.contains("169.254.169.254"),
        "{text}"
    );
    assert!(text.contains("ClientId(\"cid-1\")"), "{text}");
}

#[test]
fn imds_base_url_override() {
    let c = builder(&[(AZURE_POD_IDENTITY_AUTHORITY_HOST, "http://127.0.0.1:9/")])
        .build()
        .unwrap();
    let text = format!("{c:?}");
    assert!(
        text.contains("http://127.0.0.1:9/metadata/identity/oauth2/token"),
        "{text}"
    );
}

#[test]
fn arc_without_a_known_key_directory_is_a_build_error_elsewhere() {
    let vars = [(IDENTITY_ENDPOINT, EP), (IMDS_ENDPOINT, EP)];
    let result = ManagedIdentityCredential::builder().vars(vars).build();
    if cfg!(any(target_os = "linux", windows)) {
        assert!(result.is_ok());
    } else {
        let err = result.unwrap_err();
        assert!(err.message().contains("azure_arc_key_directory"), "{err}");
    }
}

#[test]
fn secrets_are_trimmed_once_so_the_value_sent_is_the_value_scrubbed() {
    let (_, secret) = select(
        &crate::credential::env::Vars::from_pairs([
            (IDENTITY_ENDPOINT, EP),
            (IDENTITY_HEADER, " padded-s3cret \n"),
        ]),
        true,
    )
    .secret
    .unwrap();
    assert_eq!(secret.expose_secret(), "padded-s3cret");
    // A trailing newline (a file read into the variable) is not a header error.
    assert!(
        builder(&[(MSI_ENDPOINT, EP), (MSI_SECRET, "ml-s3cret\n")])
            .build()
            .is_ok()
    );
}

/// azure-identity's workload identity source: after every endpoint source, before IMDS, when
/// the AKS webhook's three variables are set.
#[test]
fn workload_identity_variables_select_the_workload_identity_before_imds() {
    use ManagedIdentitySource::*;
    const WI: [(&str, &str); 4] = [
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ("AZURE_TENANT_ID", "tenant"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_CLIENT_ID", "cid"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut vars = WI.to_vec();
        vars.extend_from_slice(extra);
        vars
    };
    assert_eq!(source_of(&WI), WorkloadIdentity);
    assert_eq!(
        source_of(&with(&[(AZURE_POD_IDENTITY_AUTHORITY_HOST, EP)])),
        WorkloadIdentity
    );
    assert_eq!(source_of(&with(&[(MSI_ENDPOINT, EP)])), CloudShell);
    assert_eq!(
        source_of(&with(&[(IDENTITY_ENDPOINT, EP), (IDENTITY_HEADER, "h")])),
        AppService
    );
    // Any of the three missing (or blank): IMDS.
    for skip in 0..3 {
        let mut vars = WI.to_vec();
        vars.remove(skip);
        assert_eq!(source_of(&vars), Imds, "{vars:?}");
        let mut vars = WI.to_vec();
        vars[skip].1 = " ";
        assert_eq!(source_of(&vars), Imds, "{vars:?}");
    }
    // Left out (DefaultAzureCredential's member): IMDS.
    let c = builder(&WI)
        .exclude_workload_identity(true)
        .build()
        .unwrap();
    assert_eq!(c.source(), Imds);

    // The client id: the builder's, else AZURE_CLIENT_ID; none, or another kind of id, is a
    // configuration error.
    let c = builder(&WI).client_id("given").build().unwrap();
    let text = format!("{c:?}");
    assert!(
        text.contains("WorkloadIdentityCredential") && text.contains("given"),
        "{text}"
    );
    assert!(!text.contains("\"cid\""), "{text}");
    let err = builder(&WI[..3]).build().unwrap_err();
    assert!(
        err.message()
            .contains("set AZURE_CLIENT_ID or give client_id"),
        "{err}"
    );
    let err = builder(&WI).object_id("oid").build().unwrap_err();
    assert!(err.message().contains("give the client id"), "{err}");
    // DefaultAzureCredential's users set the exclusion on it, under another name.
    for err in [
        builder(&WI).object_id("oid").build().unwrap_err(),
        builder(&WI).resource_id("/r").build().unwrap_err(),
    ] {
        assert!(
            err.message()
                .contains("exclude_workload_identity_credential(true)"),
            "{err}"
        );
    }
}

/// A token file path or authority host that is not Unicode is set: the workload identity is
/// selected (not IMDS, which in an AKS pod answers as the node's identity), the path kept as
/// set, and the authority host is that source's error naming it.
#[tokio::test]
async fn workload_identity_variables_that_are_not_unicode_select_it() {
    use crate::credential::env::{Vars, not_unicode};
    use std::ffi::OsString;

    let odd_path = not_unicode("/var/run/secrets/azure/tokens/t\u{f6}ken-");
    let with = |authority: OsString, file: OsString| {
        ManagedIdentityCredential::builder().vars_as_set(Vars::from_os_pairs([
            ("AZURE_AUTHORITY_HOST", authority),
            ("AZURE_TENANT_ID", "tenant".into()),
            ("AZURE_FEDERATED_TOKEN_FILE", file),
            ("AZURE_CLIENT_ID", "cid".into()),
        ]))
    };
    let c = with(
        "https://login.microsoftonline.com/".into(),
        odd_path.clone(),
    )
    .build()
    .unwrap();
    assert_eq!(c.source(), ManagedIdentitySource::WorkloadIdentity);
    let text = format!("{c:?}");
    let shown = format!("{:?}", std::path::Path::new(&odd_path));
    assert!(text.contains(&shown), "{text} lacks {shown}");

    let c = with(
        not_unicode("https://login.microsoftonline.us/"),
        "/var/run/secrets/azure/tokens/azure-identity-token".into(),
    )
    .build()
    .unwrap();
    assert_eq!(c.source(), ManagedIdentitySource::WorkloadIdentity);
    let err = c.get_token(["https://r.test/.default"]).await.unwrap_err();
    assert!(
        err.message()
            .contains("AZURE_AUTHORITY_HOST is set to a value that is not valid Unicode"),
        "{err}"
    );
}

/// The endpoint sources' variables select by presence, as the workload identity's do: a value
/// that is not Unicode selects its source and is a configuration error naming it, rather
/// than falling through to another source (IMDS for an unreadable `IDENTITY_ENDPOINT`, Cloud
/// Shell for `MSI_SECRET`, App Service for `IDENTITY_SERVER_THUMBPRINT`, the default IMDS
/// address for `AZURE_POD_IDENTITY_AUTHORITY_HOST`).
#[test]
fn endpoint_variables_that_are_not_unicode_select_their_source_and_are_named() {
    use crate::credential::env::{Vars, not_unicode};
    use ManagedIdentitySource::*;
    use std::ffi::OsString;

    let odd = || not_unicode("x");
    // The variables, the source they select, and the variable the error names.
    type Case = (
        Vec<(&'static str, OsString)>,
        ManagedIdentitySource,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            vec![(IDENTITY_ENDPOINT, odd()), (IDENTITY_HEADER, "h".into())],
            AppService,
            IDENTITY_ENDPOINT,
        ),
        (
            vec![(IDENTITY_ENDPOINT, EP.into()), (IDENTITY_HEADER, odd())],
            AppService,
            IDENTITY_HEADER,
        ),
        (
            vec![
                (IDENTITY_ENDPOINT, SF_EP.into()),
                (IDENTITY_HEADER, "h".into()),
                (IDENTITY_SERVER_THUMBPRINT, odd()),
            ],
            ServiceFabric,
            IDENTITY_SERVER_THUMBPRINT,
        ),
        (
            vec![(IDENTITY_ENDPOINT, odd()), (IMDS_ENDPOINT, EP.into())],
            AzureArc,
            IDENTITY_ENDPOINT,
        ),
        (
            vec![(MSI_ENDPOINT, EP.into()), (MSI_SECRET, odd())],
            AzureMl,
            MSI_SECRET,
        ),
        (vec![(MSI_ENDPOINT, odd())], CloudShell, MSI_ENDPOINT),
        (
            vec![(AZURE_POD_IDENTITY_AUTHORITY_HOST, odd())],
            Imds,
            AZURE_POD_IDENTITY_AUTHORITY_HOST,
        ),
    ];
    for (vars, want, named) in cases {
        let shown: Vec<&str> = vars.iter().map(|(name, _)| *name).collect();
        let credential = ManagedIdentityCredential::builder()
            .vars_as_set(Vars::from_os_pairs(vars))
            .azure_arc_key_directory(std::env::temp_dir())
            .build_lenient();
        assert_eq!(credential.source(), want, "{shown:?}");
        let Err(message) = &credential.inner.state else {
            panic!("{shown:?}: built");
        };
        assert_eq!(
            message,
            &format!("{named} is set to a value that is not valid Unicode"),
            "{shown:?}"
        );
    }
    // IMDS_ENDPOINT's value is not used: set, whatever it holds, it selects Azure Arc.
    let arc = ManagedIdentityCredential::builder()
        .vars_as_set(Vars::from_os_pairs([
            (IDENTITY_ENDPOINT, OsString::from(EP)),
            (IMDS_ENDPOINT, odd()),
        ]))
        .azure_arc_key_directory(std::env::temp_dir())
        .build()
        .unwrap();
    assert_eq!(arc.source(), AzureArc);
}

/// The Azure Arc agent serves on loopback, and its key is sent to `IDENTITY_ENDPOINT` in plain
/// http: an endpoint off this host is a build error, so no key is ever read or sent for it.
#[test]
fn an_arc_endpoint_off_this_host_is_refused() {
    for endpoint in [
        "http://localhost:40342/metadata/identity/oauth2/token",
        "http://LOCALHOST:40342/metadata/identity/oauth2/token",
        "http://127.0.0.1:40342/metadata/identity/oauth2/token",
        "http://127.1.2.3:40342/",
        "http://[::1]:40342/metadata/identity/oauth2/token",
    ] {
        let vars = [(IDENTITY_ENDPOINT, endpoint), (IMDS_ENDPOINT, EP)];
        assert_eq!(
            source_of(&vars),
            ManagedIdentitySource::AzureArc,
            "{endpoint}"
        );
    }
    for endpoint in [
        "http://10.0.0.4:40342/metadata/identity/oauth2/token?api-version=x",
        "http://169.254.169.254/metadata/identity/oauth2/token",
        "http://arc.example.test:40342/metadata/identity/oauth2/token",
        "http://localhost.example.test/",
        "http://127.0.0.1.nip.io/",
        "http://[::2]:40342/",
        "http://[::ffff:10.0.0.4]:40342/",
        "https://0.0.0.0:40342/",
    ] {
        let vars = [(IDENTITY_ENDPOINT, endpoint), (IMDS_ENDPOINT, EP)];
        let err = builder(&vars).build().unwrap_err();
        let msg = err.message();
        assert!(
            msg.contains("IDENTITY_ENDPOINT") && msg.contains("is not on this host"),
            "{endpoint}: {msg}"
        );
        assert!(!msg.contains("api-version"), "{endpoint}: {msg}");
    }
}

/// A client built by `HttpClient::builder()` sends https only: given for a plain-http
/// endpoint, it is refused when the credential is built, saying what to do, rather than
/// failing every request (and, for IMDS, looking like a host without IMDS). A client of the
/// caller's own (`from_service`) is taken as it is, and gets its tokens over plain http.
#[tokio::test]
async fn an_https_only_client_for_a_plain_http_endpoint_is_a_build_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // The endpoint: one JSON token answer per connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let body = r#"{"access_token":"plain-http-token","expires_in":"3600"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let endpoint = format!("{base}/token");

    let https_only = [
        crate::HttpClient::new(),
        crate::HttpClient::new().layer(tower::limit::ConcurrencyLimitLayer::new(2)),
    ];
    for (vars, source) in [
        (
            &[(AZURE_POD_IDENTITY_AUTHORITY_HOST, base.as_str())][..],
            "IMDS",
        ),
        (
            &[
                (IDENTITY_ENDPOINT, endpoint.as_str()),
                (IDENTITY_HEADER, "s"),
            ][..],
            "App Service",
        ),
    ] {
        for client in https_only.clone() {
            let err = builder(vars).http_client(client).build().unwrap_err();
            assert!(err.message().contains("sends https only"), "{err}");
            assert!(err.message().contains(source), "{err}");
            assert!(err.message().contains("HttpClient::from_service"), "{err}");
        }
        // Wrapped again, a built client still sends https only.
        let wrapped = crate::HttpClient::from_service(crate::HttpClient::new());
        assert!(builder(vars).http_client(wrapped).build().is_err());
        let mi = builder(vars)
            .http_client(plain_http_client())
            .build()
            .unwrap();
        let token = mi.get_token(["https://resource.test/.default"]).await;
        assert_eq!(
            token.unwrap().secret().expose_secret(),
            "plain-http-token",
            "{source}"
        );
    }
    server.abort();
}

/// A client of the caller's own that sends plain http, as a user would write one: hyper's
/// client over a plain TCP connector, its answer read whole.
fn plain_http_client() -> crate::HttpClient {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    crate::HttpClient::from_service(tower::service_fn(
        move |request: crate::transport::HttpRequest| {
            let client = client.clone();
            async move {
                let (parts, body) = client.request(request).await?.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, crate::error::BoxError>(http::Response::from_parts(parts, body))
            }
        },
    ))
}

/// The workload identity source's errors are this credential's; the way out to IMDS is
/// offered only when the source could not be used at all, not for a refusal.
#[test]
fn only_an_unusable_workload_identity_source_suggests_imds() {
    let unusable = from_workload_identity(CredentialError::unavailable(
        "WorkloadIdentityCredential",
        "the token file is missing",
    ));
    assert_eq!(unusable.credential(), NAME);
    assert!(unusable.is_unavailable());
    assert!(
        unusable
            .message()
            .contains("exclude_workload_identity_credential(true)"),
        "{unusable}"
    );
    let refused = from_workload_identity(CredentialError::authentication_failed(
        "WorkloadIdentityCredential",
        "AADSTS700213: no matching federated identity record",
    ));
    assert_eq!(refused.credential(), NAME);
    assert!(refused.is_authentication_failed());
    assert!(
        refused.message().contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{refused}"
    );
    assert!(
        !refused.message().contains("exclude_workload_identity"),
        "{refused}"
    );
}

/// In a chain, before IMDS has answered with JSON (a page answered the probe), the token
/// request goes within the probe's budget through the probe's client: the caller's, with its
/// own retries, when one was given. A JSON answer inside those retries is IMDS answering, as
/// one that ends them is: when the request then runs out of budget, the chain stops on a
/// failure of this host's IMDS, as its other requests meanwhile are refused throttled (which
/// stops it too) by the wait that answer asked for. Before, the request ended *unavailable*
/// and the chain ran on as another identity, on the same evidence.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_json_answer_inside_the_probe_clients_retries_is_imds_answering() {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // One scripted answer per connection, in order; past the script, none.
    let answer = |status: &str, headers: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let script = Arc::new(Mutex::new(VecDeque::from([
        answer(
            "404 Not Found",
            "content-type: text/html\r\n",
            "<html>no</html>",
        ),
        answer(
            "503 Service Unavailable",
            "content-type: application/json\r\nretry-after: 5\r\n",
            r#"{"error":"service_unavailable","error_description":"busy"}"#,
        ),
    ])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn({
        let script = Arc::clone(&script);
        async move {
            let mut unanswered = Vec::new();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let next = script.lock().unwrap().pop_front();
                match next {
                    Some(answer) => drop(socket.write_all(answer.as_bytes()).await),
                    // Kept open, unanswered, until the test ends.
                    None => unanswered.push(socket),
                }
            }
        }
    });
    let client = crate::HttpClient::builder()
        .allow_http()
        .no_proxy()
        .retry(crate::RetryOptions::default().initial_backoff(Duration::from_millis(50)))
        .build()
        .unwrap();
    let mi = builder(&[(AZURE_POD_IDENTITY_AUTHORITY_HOST, base.as_str())])
        .http_client(client)
        .build()
        .unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let next = || {
        let asked = Arc::clone(&asked);
        crate::BoxCredential::named(
            "Next",
            tower::service_fn(move |_: TokenRequest| {
                asked.fetch_add(1, Ordering::SeqCst);
                async {
                    Ok::<_, CredentialError>(AccessToken::new(
                        "next-token",
                        tokio::time::Instant::now() + Duration::from_secs(3600),
                    ))
                }
            }),
        )
    };

    let err = mi
        .clone()
        .or(next())
        .get_token(["https://resource.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed() && err.is_timeout(), "{err}");
    assert!(
        err.to_string()
            .contains("IMDS answered this credential before"),
        "{err}"
    );
    assert!(script.lock().unwrap().is_empty(), "the probe and the 503");
    let err = mi
        .or(next())
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    server.abort();
}
