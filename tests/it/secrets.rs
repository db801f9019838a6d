//! No secret — client secret, access token, refresh token — in any error, `Debug` output or
//! trace, including when the provider echoes them back.

use tower_identity::{
    AzureCliCredential, ChainedTokenCredential, ClientSecretCredential, CredentialError,
    CredentialExt, EnvironmentCredential, HttpClient, TokenRequest,
};

use crate::support::authority::{Authority, Fault};
use crate::support::creds::{
    CLIENT_ID, CLIENT_SECRET, Logs, SCOPE, TENANT, client_secret, http_builder,
};

const AUTH_CODE: &str = "auth-code-value-that-must-not-leak";

fn auth_code_builder() -> tower_identity::credential::AuthorizationCodeCredentialBuilder {
    tower_identity::AuthorizationCodeCredential::builder(
        TENANT,
        CLIENT_ID,
        AUTH_CODE,
        "http://localhost/cb",
    )
    .client_secret(CLIENT_SECRET)
}

/// Every rendering of an error: Display, Debug, pretty Debug, and its whole source chain.
fn renderings(err: &CredentialError) -> Vec<String> {
    let mut out = vec![err.to_string(), format!("{err:?}"), format!("{err:#?}")];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        out.push(s.to_string());
        out.push(format!("{s:?}"));
        source = s.source();
    }
    for attempt in err.attempts() {
        out.extend(renderings(attempt));
    }
    out
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} leaks {secret:?}:\n{text}");
    }
}

#[tokio::test]
async fn no_secret_in_errors_debug_output_or_traces() {
    let (logs, _guard) = Logs::capture();
    let authority = Authority::start().await;
    let leaked_rt = "echoed-refresh-token-value";
    let leaked_jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let mut errors = Vec::new();

    // A successful acquisition: its token must not be traced.
    let credential = client_secret(&authority);
    let token = credential.get_token([SCOPE]).await.unwrap();
    let issued = token.secret().expose_secret().to_owned();

    // A provider that echoes the secret and tokens in a JSON error …
    authority.push_fault(Fault::Respond {
        status: 400,
        body: format!(
            r#"{{"error":"invalid_request","error_description":"AADSTS900144: got client_secret={CLIENT_SECRET} and {leaked_jwt} refresh_token={leaked_rt}","error_codes":[900144]}}"#
        ),
        headers: vec![],
    });
    errors.push(
        credential
            .get_token(["https://echo.test/.default"])
            .await
            .unwrap_err(),
    );
    // … in a non-JSON error body …
    authority.push_fault(Fault::Respond {
        status: 400,
        body: format!("bad request: {CLIENT_SECRET} {leaked_jwt} \"access_token\":\"{leaked_rt}\""),
        headers: vec![],
    });
    errors.push(
        credential
            .get_token(["https://echo2.test/.default"])
            .await
            .unwrap_err(),
    );
    // … and a 200 answer that is unusable.
    authority.push_fault(Fault::Body(format!(
        r#"{{"access_token":"{leaked_jwt}","refresh_token":"{leaked_rt}"}}"#
    )));
    errors.push(
        credential
            .get_token(["https://echo3.test/.default"])
            .await
            .unwrap_err(),
    );
    // A TLS failure and a chain around a failure.
    let untrusted = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority.url())
        .http_client(HttpClient::builder().timeout(None).build().unwrap())
        .build()
        .unwrap();
    errors.push(untrusted.get_token([SCOPE]).await.unwrap_err());
    let env = EnvironmentCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", "bad tenant"),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ])
        .build();
    errors.push(env.get_token([SCOPE]).await.unwrap_err());
    let chain = ChainedTokenCredential::new([
        env.clone().boxed_credential(),
        untrusted.clone().boxed_credential(),
    ])
    .unwrap();
    errors.push(chain.get_token([SCOPE]).await.unwrap_err());
    errors.push(
        credential
            .get_token_with(TokenRequest::new([SCOPE]).with_claims("not json"))
            .await
            .unwrap_err(),
    );

    let secrets = [
        CLIENT_SECRET,
        leaked_rt,
        leaked_jwt,
        issued.as_str(),
        "eyJ",
        AUTH_CODE,
    ];
    for err in &errors {
        for text in renderings(err) {
            assert_clean("an error", &text, &secrets);
        }
    }
    let env_ok = EnvironmentCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", TENANT.to_owned()),
            ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("AZURE_AUTHORITY_HOST", authority.url()),
        ])
        .http_client(http_builder(&authority).build().unwrap())
        .build();
    let debug_outputs = [
        format!("{credential:?}"),
        format!("{credential:#?}"),
        format!("{env:?}"),
        format!("{env_ok:?}"),
        format!(
            "{:?}",
            EnvironmentCredential::builder().vars([("AZURE_CLIENT_SECRET", CLIENT_SECRET)])
        ),
        format!(
            "{:?}",
            ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        ),
        format!("{chain:?}"),
        format!("{:?}", AzureCliCredential::new()),
        format!("{:?}", auth_code_builder()),
        format!("{:?}", auth_code_builder().build().unwrap()),
        format!(
            "{:?}",
            tower_identity::SharedTokenCacheCredential::builder()
        ),
        format!("{token:?}"),
        format!("{:?}", token.secret()),
    ];
    for text in &debug_outputs {
        assert_clean("a Debug output", text, &secrets);
    }
    env_ok
        .get_token(["https://env.test/.default"])
        .await
        .unwrap();
    assert_clean("the traces", &logs.text(), &secrets[..4]);
    assert!(
        logs.text().contains("token request"),
        "traces were captured"
    );
}

/// Every way a secret can come back from a provider or a proxy that echoes what it was sent.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    let lower_hex = {
        // %7E → %7e, leaving the rest as it is.
        let mut out = String::new();
        let mut chars = form.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                for _ in 0..2 {
                    if let Some(h) = chars.next() {
                        out.push(h.to_ascii_lowercase());
                    }
                }
            }
        }
        out
    };
    vec![
        secret.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        lower_hex,
        json.clone(),
        json.replace('/', "\\/"),
        serde_json::to_string(&form).unwrap(),
    ]
}

/// A provider (or a proxy in front of it) that echoes the form it received — percent-encoded,
/// `+` for spaces, inside JSON — gets none of the client secret, the authorization code or any
/// refresh token the credential ever sent (rotated-out ones included) into an error, a
/// `Debug` output or a trace at TRACE level from any crate.
#[tokio::test]
async fn echoed_secrets_in_any_encoding_are_scrubbed_everywhere() {
    use base64::Engine;
    let (logs, _guard) = Logs::capture();
    let authority = Authority::start().await;
    let secret = "Lk8Q~sec ret+/&=\"é-value";
    let code = "code~with spaces&=+/-0123456789";
    let rt_one = "0.AXo~refresh one+/é-111";
    let rt_two = "0.AXo~refresh two+/é-222";
    let rt_family = "1.family~fam rt+/é-333";
    let mut errors = Vec::new();
    let echo = |status: u16, body: String| Fault::Respond {
        status,
        body,
        headers: vec![],
    };
    // What the echoing proxy sends back: the form as sent, in a JSON description and raw.
    let echo_form = |form: &str| {
        serde_json::json!({
            "error": "invalid_request",
            "error_description": format!("AADSTS900144: bad request body: {form}"),
            "error_codes": [900144],
        })
        .to_string()
    };

    // The client secret, echoed as the form carried it, in JSON and in plain text.
    let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, secret)
        .authority_host(authority.url())
        .http_client(http_builder(&authority).build().unwrap())
        .build()
        .unwrap();
    for encoded in encodings(secret) {
        let form = format!("client_id={CLIENT_ID}&client_secret={encoded}&scope=x");
        authority.push_fault(echo(400, echo_form(&form)));
        errors.push(credential.get_token([SCOPE]).await.unwrap_err());
        authority.push_fault(echo(400, format!("Bad Request: {form}")));
        errors.push(credential.get_token([SCOPE]).await.unwrap_err());
    }

    // The authorization code, then two refresh tokens: the first rotated out by the second.
    let client_info =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"uid":"u1","utid":"t1"}"#);
    let tokens = |at: &str, rt: &str| {
        serde_json::json!({
            "token_type": "Bearer", "expires_in": 3600, "access_token": at,
            "refresh_token": rt, "client_info": client_info,
        })
        .to_string()
    };
    let user = tower_identity::AuthorizationCodeCredential::builder(
        TENANT,
        CLIENT_ID,
        code,
        "http://localhost/cb",
    )
    .client_secret(secret)
    .authority_host(authority.url())
    .http_client(http_builder(&authority).build().unwrap())
    .build()
    .unwrap();
    // A failed redemption that echoes the code: the code is kept for the next try.
    for encoded in encodings(code) {
        authority.push_fault(echo(400, echo_form(&format!("code={encoded}"))));
        errors.push(user.get_token([SCOPE]).await.unwrap_err());
    }
    authority.push_fault(Fault::Body(tokens("user-at-1", rt_one)));
    user.get_token([SCOPE]).await.unwrap();
    authority.push_fault(Fault::Body(tokens("user-at-2", rt_two)));
    user.get_token(["https://b.test/.default"]).await.unwrap();
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some(rt_one)
    );
    // Now rt_two is in use; a proxy echoes the rotated-out rt_one and the current one.
    for (old, new) in encodings(rt_one).into_iter().zip(encodings(rt_two)) {
        let form = format!("refresh_token={new}&previous={old}&code={old}");
        authority.push_fault(echo(400, echo_form(&form)));
        errors.push(
            user.get_token(["https://c.test/.default"])
                .await
                .unwrap_err(),
        );
        authority.push_fault(echo(400, form));
        errors.push(
            user.get_token(["https://c.test/.default"])
                .await
                .unwrap_err(),
        );
    }

    // The shared token cache: a family refresh token another tool left in the file.
    let dir = tempfile::tempdir().unwrap();
    let files = || {
        tower_identity::TokenCachePersistenceOptions::new()
            .directory(dir.path())
            .allow_unencrypted_storage(true)
    };
    let writer = tower_identity::AuthorizationCodeCredential::builder(
        TENANT,
        CLIENT_ID,
        "another-code-0000",
        "http://localhost/cb",
    )
    .authority_host(authority.url())
    .http_client(http_builder(&authority).build().unwrap())
    .cache_options(files())
    .build()
    .unwrap();
    let mut family =
        serde_json::from_str::<serde_json::Value>(&tokens("fam-at", rt_family)).unwrap();
    family["foci"] = "1".into();
    authority.push_fault(Fault::Body(family.to_string()));
    writer.get_token([SCOPE]).await.unwrap();
    let shared = tower_identity::SharedTokenCacheCredential::builder()
        .authority_host(authority.url())
        .http_client(http_builder(&authority).build().unwrap())
        .cache_options(files())
        .build()
        .unwrap();
    for encoded in encodings(rt_family) {
        authority.push_fault(echo(400, echo_form(&format!("refresh_token={encoded}"))));
        errors.push(
            shared
                .get_token(["https://d.test/.default"])
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some(rt_family)
    );

    let mut forbidden: Vec<String> = Vec::new();
    for s in [secret, code, rt_one, rt_two, rt_family] {
        forbidden.extend(encodings(s));
    }
    // Fragments long enough to be telling, short enough to survive a partial scrub.
    forbidden.extend(
        [
            "sec ret",
            "refresh one",
            "refresh two",
            "fam rt",
            "with spaces",
        ]
        .map(String::from),
    );
    let forbidden: Vec<&str> = forbidden.iter().map(String::as_str).collect();
    assert!(errors.len() > 30, "{}", errors.len());
    for err in &errors {
        for text in renderings(err) {
            assert_clean("an error", &text, &forbidden);
        }
    }
    for text in [
        format!("{credential:?}"),
        format!("{credential:#?}"),
        format!("{user:?}"),
        format!("{user:#?}"),
        format!("{shared:?}"),
    ] {
        assert_clean("a Debug output", &text, &forbidden);
    }
    let traces = logs.text();
    assert!(traces.contains("token request"), "traces were captured");
    assert_clean("the traces", &traces, &forbidden);
}

#[tokio::test]
async fn workload_and_managed_identity_secrets_echoed_in_any_encoding_are_scrubbed() {
    use crate::support::mi_emulator::{Emulator, Fault as MiFault, Flavour};
    let (logs, _guard) = Logs::capture();
    let authority = Authority::start().await;
    let assertion = "eyJhbGciOiJSUzI1NiJ9.assert~ion+/é pay&load=.sig-444";
    let header = "Id~header+/é &=\"value-555";
    let mut errors = Vec::new();
    let echo_form = |form: &str| {
        serde_json::json!({
            "error": "invalid_client",
            "error_description": format!(
                "AADSTS700213: No matching federated identity record found for presented \
                 assertion: {form}"
            ),
            // Not a stale-assertion code: each request is answered by exactly one fault.
            "error_codes": [700213],
        })
        .to_string()
    };

    // Workload identity: the projected token file's contents are the client assertion.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, assertion).unwrap();
    let workload = tower_identity::WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT_ID)
        .token_file_path(&file)
        .authority_host(authority.url())
        .http_client(http_builder(&authority).build().unwrap())
        .build()
        .unwrap();
    for encoded in encodings(assertion) {
        let form = format!("client_assertion={encoded}&client_id={CLIENT_ID}");
        authority.push_fault(Fault::Respond {
            status: 401,
            body: echo_form(&form),
            headers: vec![],
        });
        errors.push(workload.get_token([SCOPE]).await.unwrap_err());
        authority.push_fault(Fault::Respond {
            status: 400,
            body: format!("Bad Request: {form}"),
            headers: vec![],
        });
        errors.push(workload.get_token([SCOPE]).await.unwrap_err());
    }
    assert_eq!(
        authority
            .requests()
            .last()
            .unwrap()
            .field("client_assertion"),
        Some(assertion)
    );

    // Managed identity (App Service): IDENTITY_HEADER, echoed by the endpoint.
    let endpoint = Emulator::start(Flavour::AppService).await;
    let mut vars = endpoint.env();
    vars.retain(|(name, _)| name != "IDENTITY_HEADER");
    vars.push(("IDENTITY_HEADER".into(), header.into()));
    let managed = tower_identity::ManagedIdentityCredential::builder()
        .vars(vars)
        .build()
        .unwrap();
    for encoded in encodings(header) {
        endpoint.push_fault(MiFault::Respond {
            status: 400,
            body: serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("bad X-IDENTITY-HEADER {encoded}"),
            })
            .to_string(),
            headers: vec![],
        });
        errors.push(managed.get_token([SCOPE]).await.unwrap_err());
    }
    assert!(
        endpoint
            .requests()
            .iter()
            .any(|r| r.identity_header("x-identity-header") == Some(header)),
        "the header was sent"
    );

    let mut forbidden: Vec<String> = Vec::new();
    for s in [assertion, header] {
        forbidden.extend(encodings(s));
    }
    forbidden.extend(["assert~ion", "pay&load", "Id~header"].map(String::from));
    let forbidden: Vec<&str> = forbidden.iter().map(String::as_str).collect();
    for err in &errors {
        for text in renderings(err) {
            assert_clean("an error", &text, &forbidden);
        }
    }
    for text in [
        format!("{workload:?}"),
        format!("{workload:#?}"),
        format!("{managed:?}"),
        format!("{managed:#?}"),
    ] {
        assert_clean("a Debug output", &text, &forbidden);
    }
    let traces = logs.text();
    assert!(traces.contains("token request"), "traces were captured");
    assert_clean("the traces", &traces, &forbidden);
}
