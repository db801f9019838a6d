//! App Service and Azure Functions: `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…`
//! with `X-IDENTITY-HEADER: $IDENTITY_HEADER`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::request;
use super::{IdParams, ManagedIdentitySource, UserAssignedId};
use crate::error::CredentialError;
use crate::token::{AccessToken, Secret};
use crate::transport::{HttpClient, HttpRequest};

const SOURCE: ManagedIdentitySource = ManagedIdentitySource::AppService;
const API_VERSION: &str = "2019-08-01";
const HEADER: HeaderName = HeaderName::from_static("x-identity-header");
/// User-assigned ids in the query (MSAL's `_adjust_param`).
const PARAMS: IdParams = IdParams {
    client_id: "client_id",
    object_id: "object_id",
    resource_id: "mi_res_id",
};

pub(super) struct AppService {
    pub(super) url: Url,
    pub(super) id: Option<UserAssignedId>,
    secret: Secret,
    header: HeaderValue,
    http: HttpClient,
}

impl AppService {
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
        // `Metadata: true` as msal sends it: App Service ignores it, and Azure Automation, which
        // sets the same variables, requires it.
        request::build(
            Method::GET,
            &url,
            &[
                (
                    HeaderName::from_static("metadata"),
                    HeaderValue::from_static("true"),
                ),
                (HEADER, self.header.clone()),
            ],
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
            AppService::new(
                Url::parse("http://127.0.0.1:1/msi/token").unwrap(),
                ("IDENTITY_HEADER", Secret::new("hdr-secret")),
                id,
                None,
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
