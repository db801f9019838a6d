//! The sources asked with one `GET {endpoint}?api-version=…&resource=…[&<id>=…]` that carries
//! the source's secret in a header: App Service, Azure Machine Learning and Service Fabric.
//! Each of their files gives its [`Profile`]; the request and its answer are the same.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::request;
use super::{IdParams, ManagedIdentitySource, UserAssignedId};
use crate::error::CredentialError;
use crate::token::{AccessToken, Secret};
use crate::transport::{BeforeRetry, HttpClient, HttpRequest};

/// What sets one such source apart.
pub(super) struct Profile {
    pub(super) source: ManagedIdentitySource,
    pub(super) api_version: &'static str,
    /// The header carrying the secret.
    pub(super) header: HeaderName,
    /// The query names of a user-assigned id; `None` when the source takes none (the
    /// credential refuses one when it is built).
    pub(super) params: Option<IdParams>,
    /// Also send `Metadata: true`.
    pub(super) metadata: bool,
}

/// One configured source of that shape.
pub(super) struct SecretGet {
    profile: &'static Profile,
    pub(super) url: Url,
    pub(super) id: Option<UserAssignedId>,
    secret: Secret,
    header: HeaderValue,
    http: HttpClient,
}

impl SecretGet {
    /// `secret` is the variable it came from and its value (named in an error when it cannot
    /// be a header).
    pub(super) fn new(
        profile: &'static Profile,
        url: Url,
        (variable, secret): (&'static str, Secret),
        id: Option<UserAssignedId>,
        http: HttpClient,
    ) -> Result<Self, String> {
        Ok(Self {
            profile,
            url,
            id,
            header: request::secret_header(variable, &secret)?,
            secret,
            http,
        })
    }

    pub(super) fn request(&self, resource: &str) -> Result<HttpRequest, CredentialError> {
        let mut pairs = vec![
            ("api-version", self.profile.api_version),
            ("resource", resource),
        ];
        if let (Some(params), Some(id)) = (self.profile.params, &self.id) {
            pairs.push(params.pair(id));
        }
        let url = request::with_query(&self.url, &pairs);
        let mut headers = Vec::with_capacity(2);
        if self.profile.metadata {
            headers.push((
                HeaderName::from_static("metadata"),
                HeaderValue::from_static("true"),
            ));
        }
        headers.push((self.profile.header.clone(), self.header.clone()));
        request::build(Method::GET, &url, &headers, Bytes::new())
    }

    pub(super) async fn acquire(
        &self,
        resource: &str,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        let secrets = [self.secret.expose_secret()];
        request::fetch(
            &self.http,
            self.profile.source,
            request::reporting(self.request(resource)?, before_retry),
            &secrets,
        )
        .await
    }
}
