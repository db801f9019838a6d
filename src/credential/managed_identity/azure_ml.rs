//! Azure Machine Learning compute: `GET $MSI_ENDPOINT?api-version=2017-09-01&resource=…` with
//! `secret: $MSI_SECRET`.

use http::HeaderName;

use super::secret_get::Profile;
use super::{DEFAULT_IDENTITY_CLIENT_ID, IdParams, UserAssignedId};

pub(super) static PROFILE: Profile = Profile {
    source: super::ManagedIdentitySource::AzureMl,
    api_version: "2017-09-01",
    header: HeaderName::from_static("secret"),
    // `clientid` is the endpoint's own name. The object and resource ids are never sent:
    // `identity` refuses them, as azidentity does (MSAL sends `object_id` and `msi_res_id`,
    // which the endpoint does not know).
    params: Some(IdParams {
        client_id: "clientid",
        object_id: "object_id",
        resource_id: "msi_res_id",
    }),
    metadata: false,
};

/// The identity to ask for: the user-assigned one given, which must be a client id, else the
/// compute's own identity by `DEFAULT_IDENTITY_CLIENT_ID` when that is a GUID. Asked without a
/// client id the endpoint answers with a token for a *user's* identity (azure-sdk-for-python
/// #36047), so the default is sent as azidentity and MSAL .NET and JS send it. Azure ML sets
/// the variable to the placeholder `clientid` when the compute has no identity enabled: a
/// value that is no GUID is no identity (as azure-identity for Python reads it) and, like no
/// variable at all, leaves the request without an id.
///
/// The id picked here is what is *sent*: the default alone never shares tokens; under a
/// `system_assigned_identity_label` the cache key adds the GUID sent (see `build_lenient`).
pub(super) fn identity(
    id: Option<UserAssignedId>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<UserAssignedId>, String> {
    match id {
        Some(UserAssignedId::ClientId(_)) => Ok(id),
        Some(other) => Err(format!(
            "Azure Machine Learning selects a user-assigned identity by client id only, but a \
             user-assigned {other} was given; give the identity's client id instead"
        )),
        None => Ok(get(DEFAULT_IDENTITY_CLIENT_ID)
            .filter(|value| is_guid(value))
            .map(UserAssignedId::ClientId)),
    }
}

/// Whether `value` is a GUID in its usual 8-4-4-4-12 hex form (the only one 36 characters
/// long that the parser takes).
fn is_guid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

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
        let uri = make(Some(UserAssignedId::ClientId("c".into())))
            .request("r")
            .unwrap()
            .uri()
            .to_string();
        assert!(uri.ends_with("&clientid=c"), "{uri}");
    }

    #[test]
    fn identity_by_client_id_only_defaulting_to_the_compute_identity() {
        const GUID: &str = "6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5f6";
        let default = |value: &'static str| {
            move |name: &str| (name == DEFAULT_IDENTITY_CLIENT_ID).then(|| value.to_owned())
        };
        let set = default(GUID);
        let unset = |_: &str| None;
        let client = UserAssignedId::ClientId("c".into());
        assert_eq!(identity(None, &unset), Ok(None));
        assert_eq!(
            identity(None, &set),
            Ok(Some(UserAssignedId::ClientId(GUID.into())))
        );
        // Azure ML's placeholder when no identity is enabled, and other non-GUIDs, are no
        // identity: nothing is sent, as without the variable.
        for not_a_guid in [
            "clientid",
            "",
            "6e0c1a3f2b4d4c5e8f90a1b2c3d4e5f6",
            "{6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5f6}",
            "6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5fg",
        ] {
            assert_eq!(
                identity(None, &default(not_a_guid)),
                Ok(None),
                "{not_a_guid}"
            );
        }
        assert_eq!(identity(Some(client.clone()), &set), Ok(Some(client)));
        for other in [
            UserAssignedId::ObjectId("o".into()),
            UserAssignedId::ResourceId("/x".into()),
        ] {
            let err = identity(Some(other), &set).unwrap_err();
            assert!(err.contains("by client id only"), "{err}");
        }
    }
}
