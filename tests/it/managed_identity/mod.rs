//! `ManagedIdentityCredential` against the loopback emulators (`support::mi_emulator`): every
//! source gets a token, the fault switches have their documented outcomes, and azure-identity
//! sends the same requests (`wire`). Nothing here can reach 169.254.169.254: every credential
//! is built from the emulator's environment (`Emulator::env`), which always redirects it.

mod wire;

use serde_json::Value;

use crate::support::mi_emulator::Emulator;
use crate::support::python;

/// The scope every test asks for, and the resource it maps to.
pub const SCOPE: &str = "https://resource.test/.default";
pub const RESOURCE: &str = "https://resource.test";

pub const CLIENT_ID: &str = "6e0c1a3f-2b4d-4c5e-8f90-a1b2c3d4e5f6";
pub const OBJECT_ID: &str = "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b";
pub const RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-test";

/// Which identity a credential asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    System,
    ClientId,
    ObjectId,
    ResourceId,
}

impl Id {
    pub const ALL: [Id; 4] = [Id::System, Id::ClientId, Id::ObjectId, Id::ResourceId];

    /// `peer.py mi-token` arguments selecting this identity.
    fn peer_args(self) -> Vec<String> {
        let (flag, value) = match self {
            Id::System => return Vec::new(),
            Id::ClientId => ("--client-id", CLIENT_ID),
            Id::ObjectId => ("--object-id", OBJECT_ID),
            Id::ResourceId => ("--resource-id", RESOURCE_ID),
        };
        vec![flag.to_owned(), value.to_owned()]
    }
}

/// azure-identity's `ManagedIdentityCredential(...).get_token(SCOPE)` with the emulator's
/// environment; its JSON answer, success or not.
pub async fn python_token(em: &Emulator, id: Id) -> Value {
    let mut args = vec!["mi-token".to_owned(), "--scope".to_owned(), SCOPE.to_owned()];
    args.extend(id.peer_args());
    python::run_with_env(&args, &em.env()).await
}
