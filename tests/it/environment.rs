//! EnvironmentCredential's variables: which one a mistake is blamed on, and the tenants a
//! request may name.

use tower_identity::{CredentialExt, EnvironmentCredential, TokenRequest};

use crate::support::authority::Authority;
use crate::support::certs;
use crate::support::creds::{self, CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT};

/// A certificate that loads is not blamed for a tenant or authority mistake, and those cheap
/// checks come before the certificate is read: a file that cannot be loaded is not reported
/// while the authority is wrong too.
#[tokio::test]
async fn a_tenant_or_authority_mistake_is_not_blamed_on_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("cert.pem");
    std::fs::write(&pem, certs::self_signed(2048).one_file()).unwrap();
    let pem = pem.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases = [
        (
            "contoso",
            pem.as_str(),
            "http://login.insecure.test",
            "AZURE_AUTHORITY_HOST",
        ),
        (
            "not a tenant",
            pem.as_str(),
            "https://login.test",
            "AZURE_TENANT_ID",
        ),
        (
            "contoso",
            missing.as_str(),
            "http://login.insecure.test",
            "AZURE_AUTHORITY_HOST",
        ),
    ];
    for (tenant, path, authority, want) in cases {
        let err = EnvironmentCredential::builder()
            .vars([
                ("AZURE_TENANT_ID", tenant),
                ("AZURE_CLIENT_ID", "client"),
                ("AZURE_CLIENT_CERTIFICATE_PATH", path),
                ("AZURE_AUTHORITY_HOST", authority),
            ])
            .build()
            .get_token(["https://resource.test/.default"])
            .await
            .unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.message().contains(want), "{want}: {err}");
        assert!(!err.message().contains("cannot be used"), "{want}: {err}");
    }
}

/// `AZURE_ADDITIONALLY_ALLOWED_TENANTS`, as the .NET, Go, JS and Java SDKs read it: tenants
/// separated by `;`, `*` for any, added to those given in code.
#[tokio::test]
async fn additionally_allowed_tenants_are_read_from_the_environment() {
    let authority = Authority::start().await;
    let url = authority.url();
    let env = |allowed: Option<&str>, in_code: &[&str]| {
        let mut vars = vec![
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_AUTHORITY_HOST", url.as_str()),
        ];
        vars.extend(allowed.map(|a| ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", a)));
        EnvironmentCredential::builder()
            .vars(vars)
            .http_client(creds::http(&authority))
            .additionally_allowed_tenants(in_code.iter().copied())
            .build()
    };
    let fabrikam = || TokenRequest::new([SCOPE]).with_tenant_id("fabrikam");
    for (allowed, in_code) in [
        (None, &[][..]),
        (Some("other;another"), &[]),
        (Some(" ; "), &[]),
        (None, &["other"]),
    ] {
        let err = env(allowed, in_code)
            .get_token_with(fabrikam())
            .await
            .unwrap_err();
        assert!(err.is_invalid_request(), "{allowed:?}: {err}");
        assert!(
            err.message().contains("tenant fabrikam"),
            "{allowed:?}: {err}"
        );
    }
    // A mistake in the variable names it, and stops a chain as any invalid variable.
    let err = env(Some("other;no/pe"), &[])
        .get_token_with(fabrikam())
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(
        err.message().contains("AZURE_ADDITIONALLY_ALLOWED_TENANTS")
            && err.message().contains("'/'"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 0);

    for (allowed, in_code) in [
        (Some("*"), &[][..]),
        (Some("other; fabrikam ;"), &[]),
        (Some("other"), &["fabrikam"]),
        (Some("fabrikam"), &["other"]),
    ] {
        authority.clear();
        let token = env(allowed, in_code)
            .get_token_with(fabrikam())
            .await
            .unwrap_or_else(|e| panic!("{allowed:?} {in_code:?}: {e}"));
        assert!(token.secret().expose_secret().ends_with("-fabrikam"));
        assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
    }
}

/// The variable is read only for the credential the others configure: alone, or wrong while
/// the credential is not configured, it changes nothing (a chain moves on).
#[tokio::test]
async fn additionally_allowed_tenants_alone_leave_the_credential_unavailable() {
    for allowed in ["*", "no/pe"] {
        let err = EnvironmentCredential::builder()
            .vars([
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", allowed),
            ])
            .build()
            .get_token([SCOPE])
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{allowed}: {err}");
    }
}
