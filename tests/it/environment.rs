//! EnvironmentCredential's variables: which one a mistake is blamed on, and the tenants a
//! request may name.

use tower_identity::{CredentialExt, EnvironmentCredential};

use crate::support::certs;

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
