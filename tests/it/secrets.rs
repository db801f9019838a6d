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
            .get_token_with(TokenRequest::new([SCOPE]).claims("not json"))
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
        format!("{}", token.secret()),
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
