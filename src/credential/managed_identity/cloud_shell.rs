//! Azure Cloud Shell: `POST $MSI_ENDPOINT` with the form `resource=…` and `Metadata: true`
//! (azure-identity's `cloud_shell.py`). Only the signed-in user's identity: no user-assigned id.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::ManagedIdentitySource;
use super::request;
use crate::error::CredentialError;
use crate::token::AccessToken;
use crate::transport::{BeforeRetry, HttpClient, HttpRequest};

const SOURCE: ManagedIdentitySource = ManagedIdentitySource::CloudShell;

pub(super) struct CloudShell {
    pub(super) url: Url,
    http: HttpClient,
}

impl CloudShell {
    pub(super) fn new(url: Url, custom: Option<HttpClient>) -> Result<Self, String> {
        Ok(Self {
            url,
            http: custom.map_or_else(request::default_http, Ok)?,
        })
    }

    fn request(&self, resource: &str) -> Result<HttpRequest, CredentialError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("resource", resource)
            .finish();
        request::build(
            Method::POST,
            &self.url,
            &[
                (
                    HeaderName::from_static("metadata"),
                    HeaderValue::from_static("true"),
                ),
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                ),
            ],
            Bytes::from(form),
        )
    }

    pub(super) async fn acquire(
        &self,
        resource: &str,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        let request = request::reporting(self.request(resource)?, before_retry);
        request::fetch(&self.http, SOURCE, request, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn posts_the_resource_as_a_form() {
        use http_body_util::BodyExt;
        let c = CloudShell::new(
            Url::parse("http://localhost:50342/oauth2/token").unwrap(),
            None,
        )
        .unwrap();
        let r = c.request("https://management.core.windows.net/").unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "http://localhost:50342/oauth2/token");
        assert_eq!(r.headers()["metadata"], "true");
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            &r.into_body().collect().await.unwrap().to_bytes()[..],
            b"resource=https%3A%2F%2Fmanagement.core.windows.net%2F"
        );
    }
}
