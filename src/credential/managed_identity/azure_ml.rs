//! Azure Machine Learning compute: `GET $MSI_ENDPOINT?api-version=2017-09-01&resource=…` with
//! `secret: $MSI_SECRET`.

use http::HeaderName;

use super::IdParams;
use super::secret_get::Profile;

pub(super) static PROFILE: Profile = Profile {
    source: super::ManagedIdentitySource::AzureMl,
    api_version: "2017-09-01",
    header: HeaderName::from_static("secret"),
    // `clientid` is the endpoint's own name; the object and resource ids are sent as MSAL
    // sends them (azidentity refuses them instead).
    params: Some(IdParams {
        client_id: "clientid",
        object_id: "object_id",
        resource_id: "msi_res_id",
    }),
    metadata: false,
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
                Url::parse("http://127.0.0.1:1/token").unwrap(),
                ("MSI_SECRET", Secret::new("ml-secret")),
                id,
                default_http().unwrap(),
            )
            .unwrap()
        };
        let r = make(None).request("https://storage.azure.com").unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(
            r.uri().to_string(),
            "http://127.0.0.1:1/token?api-version=2017-09-01&resource=https%3A%2F%2Fstorage.azure.com"
        );
        assert_eq!(r.headers()["secret"], "ml-secret");
        for (id, want) in [
            (UserAssignedId::ClientId("c".into()), "&clientid=c"),
            (UserAssignedId::ObjectId("o".into()), "&object_id=o"),
            (UserAssignedId::ResourceId("/x".into()), "&msi_res_id=%2Fx"),
        ] {
            let uri = make(Some(id)).request("r").unwrap().uri().to_string();
            assert!(uri.ends_with(want), "{uri}");
        }
    }
}
