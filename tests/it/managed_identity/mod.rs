//! `ManagedIdentityCredential` against the loopback emulators (`support::mi_emulator`): every
//! source gets a token, the fault switches have their documented outcomes, and azure-identity
//! sends the same requests (`wire`). Nothing here can reach 169.254.169.254: every credential
//! is built from the emulator's environment (`Emulator::env`), which always redirects it.

mod chain;
mod faults;
mod sources;
mod wire;

use serde_json::Value;
use tower_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialBuilder, ManagedIdentitySource,
};

use crate::support::mi_emulator::{ARC_KEY, Emulator, Flavour, IDENTITY_HEADER, MSI_SECRET};
use crate::support::python;

/// The scope every test asks for, and the resource it maps to.
pub const SCOPE: &str = "https://resource.test/.default";
pub const RESOURCE: &str = "https://resource.test";

pub const CLIENT_ID: &str = "6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5f6";
pub const OBJECT_ID: &str = "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b";
pub const RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-test";

/// Which identity a credential asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    System,
    ClientId,
    ObjectId,
    ResourceId,
}

impl Identity {
    pub const ALL: [Identity; 4] = [
        Identity::System,
        Identity::ClientId,
        Identity::ObjectId,
        Identity::ResourceId,
    ];

    /// The id's value (`None`: system-assigned).
    pub fn value(self) -> Option<&'static str> {
        match self {
            Identity::System => None,
            Identity::ClientId => Some(CLIENT_ID),
            Identity::ObjectId => Some(OBJECT_ID),
            Identity::ResourceId => Some(RESOURCE_ID),
        }
    }

    /// The query parameter `flavour` takes this id as (production-credentials.md §1, MSAL's
    /// `_adjust_param`); `None` for system-assigned and where the source does not take this
    /// kind of user-assigned id (Azure ML takes a client id only, as in azidentity).
    pub fn param(self, flavour: Flavour) -> Option<&'static str> {
        let names = match flavour {
            Flavour::Imds | Flavour::AzureArc => {
                [Some("client_id"), Some("object_id"), Some("msi_res_id")]
            }
            Flavour::AppService => [Some("client_id"), Some("object_id"), Some("mi_res_id")],
            Flavour::AzureMl => [Some("clientid"), None, None],
            Flavour::CloudShell | Flavour::ServiceFabric => return None,
        };
        match self {
            Identity::System => None,
            Identity::ClientId => names[0],
            Identity::ObjectId => names[1],
            Identity::ResourceId => names[2],
        }
    }

    /// Whether `flavour` can be asked for this identity at all.
    pub fn supported_by(self, flavour: Flavour) -> bool {
        self == Identity::System || self.param(flavour).is_some()
    }

    /// Selects this identity on a builder.
    pub fn select(
        self,
        builder: ManagedIdentityCredentialBuilder,
    ) -> ManagedIdentityCredentialBuilder {
        match self {
            Identity::System => builder,
            Identity::ClientId => builder.client_id(CLIENT_ID),
            Identity::ObjectId => builder.object_id(OBJECT_ID),
            Identity::ResourceId => builder.resource_id(RESOURCE_ID),
        }
    }

    /// `peer.py mi-token` arguments selecting this identity.
    fn peer_args(self) -> Vec<String> {
        let (flag, value) = match self {
            Identity::System => return Vec::new(),
            Identity::ClientId => ("--client-id", CLIENT_ID),
            Identity::ObjectId => ("--object-id", OBJECT_ID),
            Identity::ResourceId => ("--resource-id", RESOURCE_ID),
        };
        vec![flag.to_owned(), value.to_owned()]
    }
}

/// azure-identity's `ManagedIdentityCredential(...).get_token(SCOPE)` with the emulator's
/// environment; its JSON answer, success or not.
pub async fn python_token(em: &Emulator, id: Identity) -> Value {
    let mut args = vec![
        "mi-token".to_owned(),
        "--scope".to_owned(),
        SCOPE.to_owned(),
    ];
    args.extend(id.peer_args());
    python::run_with_env(&args, &em.env()).await
}

/// A builder reading only the emulator's environment (never the process's), with Arc's key
/// directory set to the emulator's.
pub fn builder(em: &Emulator) -> ManagedIdentityCredentialBuilder {
    let builder = ManagedIdentityCredential::builder().vars(em.env());
    if em.flavour() == Flavour::AzureArc {
        builder.azure_arc_key_directory(em.arc_key_dir())
    } else {
        builder
    }
}

/// A credential for `id` pointed at `em`.
pub fn credential(em: &Emulator, id: Identity) -> ManagedIdentityCredential {
    id.select(builder(em))
        .build()
        .unwrap_or_else(|e| panic!("{:?} {id:?}: {e}", em.flavour()))
}

/// The source a flavour's environment selects.
pub fn source_of(flavour: Flavour) -> ManagedIdentitySource {
    match flavour {
        Flavour::Imds => ManagedIdentitySource::Imds,
        Flavour::AppService => ManagedIdentitySource::AppService,
        Flavour::AzureArc => ManagedIdentitySource::AzureArc,
        Flavour::CloudShell => ManagedIdentitySource::CloudShell,
        Flavour::AzureMl => ManagedIdentitySource::AzureMl,
        Flavour::ServiceFabric => ManagedIdentitySource::ServiceFabric,
    }
}

/// The identity headers our credential sends on a token request (the last one, for Arc).
pub fn expected_identity_headers(flavour: Flavour) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = match flavour {
        Flavour::Imds | Flavour::CloudShell => vec![("metadata", "true".into())],
        Flavour::AppService => vec![
            ("metadata", "true".into()),
            ("x-identity-header", IDENTITY_HEADER.into()),
        ],
        Flavour::AzureArc => vec![
            ("metadata", "true".into()),
            ("authorization", format!("Basic {ARC_KEY}")),
        ],
        Flavour::AzureMl => vec![("secret", MSI_SECRET.into())],
        Flavour::ServiceFabric => vec![("secret", IDENTITY_HEADER.into())],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The secret values a flavour's configuration holds (none must ever be printed).
pub fn secrets_of(flavour: Flavour) -> Vec<&'static str> {
    match flavour {
        Flavour::AppService | Flavour::ServiceFabric => vec![IDENTITY_HEADER],
        Flavour::AzureMl => vec![MSI_SECRET],
        Flavour::AzureArc => vec![ARC_KEY],
        Flavour::Imds | Flavour::CloudShell => vec![],
    }
}

/// Query (or, for Cloud Shell, form) pairs sorted by name then value.
pub fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

/// The parameters our credential and azure-identity send for `id` to `flavour`, sorted.
pub fn expected_params(flavour: Flavour, id: Identity) -> Vec<(String, String)> {
    let mut pairs = vec![("resource".to_owned(), RESOURCE.to_owned())];
    if let Some(version) = flavour.api_version() {
        pairs.push(("api-version".to_owned(), version.to_owned()));
    }
    if let (Some(name), Some(value)) = (id.param(flavour), id.value()) {
        pairs.push((name.to_owned(), value.to_owned()));
    }
    sorted(pairs)
}
