//! Azure Machine Learning compute: `GET $MSI_ENDPOINT?api-version=2017-09-01&resource=…` with
//! `secret: $MSI_SECRET`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::request;
use super::{IdParams, ManagedIdentitySource, UserAssignedId};
use crate::error::CredentialError;
use crate::token::{AccessToken, Secret};
use crate::transport::{HttpClient, HttpRequest};

const SOURCE: ManagedIdentitySource = ManagedIdentitySource::AzureMl;
const API_VERSION: &str = "2017-09-01";
const HEADER: HeaderName = HeaderName::from_static("secret");
/// User-assigned ids in the query: `clientid` is the endpoint's own name; the object and
/// resource ids are sent as MSAL sends them (azidentity refuses them instead).
const PARAMS: IdParams = IdParams {
    client_id: "clientid",
    object_id: "object_id",
    resource_id: "msi_res_id",
};

pub(super) struct AzureMl {
    pub(super) url: Url,
    pub(super) id: Option<UserAssignedId>,
    secret: Secret,
    header: HeaderValue,
    http: HttpClient,
}

impl AzureMl {
    pub(super) fn new(
        url: Url,
        (variable, secret): (&'static str, Secret),
        id: Option<UserAssignedId>,
        custom: Option<HttpClient>,
    ) -> Result<Self, String> {
        Ok(Self {
            url,
            id,
            header: request::secret_header(variable, &secret)?,
            secret,
            http: custom.map_or_else(request::default_http, Ok)?,
        })
    }

    fn request(&self, resource: &str) -> Result<HttpRequest, CredentialError> {
        let mut pairs = vec![("api-version", API_VERSION), ("resource", resource)];
        if let Some(id) = &self.id {
            pairs.push(PARAMS.pair(id));
        }
        let url = request::with_query(&self.url, &pairs);
        request::build(
            Method::GET,
            &url,
            &[(HEADER, self.header.clone())],
            Bytes::new(),
        )
    }

    pub(super) async fn acquire(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let secrets = [self.secret.expose_secret()];
        request::fetch(&self.http, SOURCE, self.request(resource)?, &secrets).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_header() {
        let make = |id| {
            AzureMl::new(
                Url::parse("http://127.0.0.1:1/token").unwrap(),
                ("MSI_SECRET", Secret::new("ml-secret")),
                id,
                None,
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
