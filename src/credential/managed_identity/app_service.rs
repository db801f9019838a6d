//! App Service and Azure Functions: `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…`
//! with `X-IDENTITY-HEADER: $IDENTITY_HEADER`.

use http::HeaderName;

use super::IdParams;
use super::secret_get::Profile;

pub(super) static PROFILE: Profile = Profile {
    source: super::ManagedIdentitySource::AppService,
    api_version: "2019-08-01",
    header: HeaderName::from_static("x-identity-header"),
    // User-assigned ids in the query (MSAL's `_adjust_param`).
    params: Some(IdParams {
        client_id: "client_id",
        object_id: "object_id",
        resource_id: "mi_res_id",
    }),
    // As msal sends it: App Service ignores it, and Azure Automation, which sets the same
    // variables, requires it.
    metadata: true,
};

#[cfg(test)]
mod tests {
    use http::Method;
    use url::Url;

    use super::super::request::default_http;
    use super::super::secret_get::SecretGet;
    use super::*;
    use crate::credential::UserAssignedId;
    use crate::token::Secret;

    #[test]
    fn query_and_header() {
        let make = |id| {
            SecretGet::new(
                &PROFILE,
                Url::parse("http://127.0.0.1:1/msi/token").unwrap(),
                ("IDENTITY_HEADER", Secret::new("hdr-secret")),
                id,
                default_http().unwrap(),
            )
            .unwrap()
        };
        let r = make(None).request("https://vault.azure.net").unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(
            r.uri().to_string(),
            "http://127.0.0.1:1/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
        );
        assert_eq!(r.headers()["x-identity-header"], "hdr-secret");
        assert_eq!(r.headers()["metadata"], "true");
        assert!(r.headers()["x-identity-header"].is_sensitive());
        for (id, want) in [
            (UserAssignedId::ClientId("c".into()), "&client_id=c"),
            (UserAssignedId::ObjectId("o".into()), "&object_id=o"),
            (UserAssignedId::ResourceId("/x".into()), "&mi_res_id=%2Fx"),
        ] {
            let uri = make(Some(id)).request("r").unwrap().uri().to_string();
            assert!(uri.ends_with(want), "{uri}");
        }
    }
}
