//! The cache document as one item in the freedesktop Secret Service (gnome-keyring, KWallet,
//! KeePassXC), stored the way libsecret's `secret_password_store` stores it for Python
//! msal-extensions' `LibsecretPersistence` (as azure-identity configures it), so that each
//! reads the other's entry:
//!
//! * the item is in the collection behind the `default` alias (libsecret's `collection=None`);
//! * its attributes are `MsalClientID = Microsoft.Developer.IdentityService` and libsecret's
//!   `xdg:schema = <cache file name>` (`msal.cache.nocae`, `msal.cache.cae`, …): the schema
//!   name azure-identity passes is the cache file's name;
//! * its label is `MSALCache` and its `Type` property the schema name (libsecret sets both;
//!   observed with libsecret 0.20 against gnome-keyring 42). `Type` is gnome-keyring's, not
//!   the specification's: a service that refuses it still gets the item;
//! * the secret is the document's UTF-8 JSON with content type `text/plain`;
//! * a store replaces the item with the same attributes (`CreateItem(replace = true)`); a
//!   lookup searches every collection for those attributes and takes an unlocked match.
//!
//! The D-Bus session is encrypted (`dh-ietf1024-sha256-aes128-cbc-pkcs7`); its keys stay
//! inside the `secret-service` crate. Errors name the bus, the service and what to do, never
//! a secret.

use std::collections::HashMap;
use std::time::Duration;

use secret_service::{EncryptionType, Error as SsError, SecretService};
pub(super) use zbus::zvariant::OwnedObjectPath;

use super::error::{Kind, PersistenceError};

/// The attribute azure-identity passes, and its value.
const CLIENT_ID_ATTRIBUTE: (&str, &str) = ("MsalClientID", "Microsoft.Developer.IdentityService");
/// libsecret's attribute holding the schema name.
const SCHEMA_ATTRIBUTE: &str = "xdg:schema";
/// The label azure-identity passes (its `account_name`).
const LABEL: &str = "MSALCache";
/// libsecret's content type for passwords.
const CONTENT_TYPE: &str = "text/plain";
/// The interface of the item property `Type`, which libsecret sets to the schema name.
const ITEM_INTERFACE: &str = "org.freedesktop.Secret.Item";
/// Longest wait for one exchange with the Secret Service: a service that shows a prompt (which
/// a headless process can never answer) would otherwise hang the credential.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// What else can be done when the keyring cannot be used, appended to such errors unless the
/// plaintext file is allowed already (see [`remedy`]).
const REMEDY: &str = "or call TokenCachePersistenceOptions::allow_unencrypted_storage(true) to \
                      fall back to a plaintext file readable only by you (mode 0600)";

/// [`REMEDY`] after `separator`, or nothing when the plaintext file is allowed: that
/// advice would change nothing (the fallback is taken on first use, and once the keyring is
/// in use it stays the storage).
fn remedy(fallback_allowed: bool, separator: &str) -> String {
    if fallback_allowed {
        String::new()
    } else {
        format!("{separator}{REMEDY}")
    }
}

/// A connection to the Secret Service with an encrypted session, for one schema.
pub(super) struct Keyring {
    service: SecretService<'static>,
    /// The bus connection the service uses (a handle: clones share it).
    connection: zbus::Connection,
    /// The schema name: the cache file's name.
    schema: String,
    /// Whether the options allow the plaintext file (for the advice in errors).
    fallback_allowed: bool,
}

impl Keyring {
    /// Connects to the session bus at `bus` (else `DBUS_SESSION_BUS_ADDRESS`), opens an
    /// encrypted session with the Secret Service and checks that its default collection exists
    /// and is unlocked, since a headless process cannot answer an unlock prompt.
    /// `fallback_allowed`: whether the options allow the plaintext file.
    pub(super) async fn connect(
        bus: Option<&str>,
        schema: &str,
        fallback_allowed: bool,
    ) -> Result<Self, PersistenceError> {
        let or_fallback = |separator| remedy(fallback_allowed, separator);
        let bus_name = bus.unwrap_or("the session bus (DBUS_SESSION_BUS_ADDRESS)");
        let connection = with_timeout(async {
            match bus {
                Some(address) => zbus::connection::Builder::address(address)?.build().await,
                None => zbus::Connection::session().await,
            }
        })
        .await
        .map_err(|e| {
            failure(format!(
                "no D-Bus session bus: could not connect to {bus_name} ({e}); run inside a \
                 desktop session or start one (dbus-run-session){}",
                or_fallback(", ")
            ))
        })?;
        let service = with_timeout(async {
            SecretService::connect_with_existing(EncryptionType::Dh, connection.clone()).await
        })
        .await
        .map_err(|e| match e {
            TimedOut::Elapsed => failure(format!(
                "the Secret Service on {bus_name} did not answer within {} s{}",
                CALL_TIMEOUT.as_secs(),
                or_fallback("; ")
            )),
            TimedOut::Failed(e) if is_missing_service(&e) => failure(format!(
                "no Secret Service on {bus_name} ({e}): install and start a keyring \
                 (gnome-keyring, KeePassXC or KWallet with its Secret Service){}",
                or_fallback(", ")
            )),
            TimedOut::Failed(e) => failure(format!(
                "could not open a session with the Secret Service on {bus_name} ({e}){}",
                or_fallback("; ")
            )),
        })?;
        let keyring = Self {
            service,
            connection,
            schema: schema.to_owned(),
            fallback_allowed,
        };
        let locked = with_timeout(async {
            let collection = keyring.service.get_default_collection().await?;
            collection.is_locked().await
        })
        .await
        .map_err(|e| keyring.error("open the default collection", &e))?;
        if locked {
            return Err(failure(format!(
                "the default collection of the Secret Service on {bus_name} is locked: unlock \
                 it (log in to the desktop session, or run `gnome-keyring-daemon --unlock` with \
                 the keyring's password on stdin){}",
                or_fallback(", ")
            )));
        }
        Ok(keyring)
    }

    /// The attributes of the item, libsecret's `xdg:schema` included.
    fn attributes(&self) -> HashMap<&str, &str> {
        HashMap::from([
            CLIENT_ID_ATTRIBUTE,
            (SCHEMA_ATTRIBUTE, self.schema.as_str()),
        ])
    }

    /// The stored document's bytes, `None` when there is no item.
    pub(super) async fn load(&self) -> Result<Option<Vec<u8>>, PersistenceError> {
        with_timeout(async {
            let found = self.service.search_items(self.attributes()).await?;
            match found.unlocked.first() {
                Some(item) => item.get_secret().await.map(Some),
                None if found.locked.is_empty() => Ok(None),
                None => Err(SsError::Locked),
            }
        })
        .await
        .map_err(|e| self.error("read the token cache item", &e))
    }

    /// Stores `bytes` as the item, replacing the one with the same attributes. Returns the
    /// item's path, for [`set_type`](Self::set_type).
    pub(super) async fn save(&self, bytes: &[u8]) -> Result<OwnedObjectPath, PersistenceError> {
        with_timeout(async {
            let collection = self.service.get_default_collection().await?;
            let item = collection
                .create_item(LABEL, self.attributes(), bytes, true, CONTENT_TYPE)
                .await?;
            Ok::<_, SsError>(item.item_path.clone())
        })
        .await
        .map_err(|e| self.error("store the token cache item", &e))
    }

    /// Records the schema name as the item's `Type`, as libsecret does (seahorse shows it).
    /// Best effort: the property is gnome-keyring's, not the Secret Service specification's,
    /// and a service that refuses it (KeePassXC) has stored the item all the same. The
    /// `secret-service` crate cannot pass it inside `CreateItem`, hence a call of its own.
    pub(super) async fn set_type(&self, item: OwnedObjectPath) {
        let set = with_timeout(async {
            let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
                .destination("org.freedesktop.secrets")?
                .path(item)?
                .build()
                .await?;
            let interface =
                zbus::names::InterfaceName::try_from(ITEM_INTERFACE).map_err(zbus::Error::from)?;
            properties
                .set(
                    interface,
                    "Type",
                    zbus::zvariant::Value::from(self.schema.as_str()),
                )
                .await?;
            Ok::<(), SsError>(())
        })
        .await;
        if let Err(error) = set {
            tracing::debug!(schema = %self.schema, %error, "the Secret Service did not take the token cache item's Type; the item is stored");
        }
    }

    /// An error while using the service: `operation` is a verb phrase.
    fn error(&self, operation: &str, error: &TimedOut) -> PersistenceError {
        let schema = &self.schema;
        match error {
            TimedOut::Elapsed => failure(format!(
                "could not {operation} ({schema}): the Secret Service did not answer within {} s \
                 (is it waiting on a prompt?){}",
                CALL_TIMEOUT.as_secs(),
                remedy(self.fallback_allowed, "; ")
            )),
            TimedOut::Failed(SsError::Locked) => failure(format!(
                "could not {operation} ({schema}): its collection is locked; unlock the \
                 keyring{}",
                remedy(self.fallback_allowed, ", ")
            )),
            TimedOut::Failed(e) => failure(format!("could not {operation} ({schema}): {e}")),
        }
    }
}

/// Whether the bus has no Secret Service (nothing owns `org.freedesktop.secrets` and nothing
/// can be activated).
fn is_missing_service(error: &SsError) -> bool {
    match error {
        SsError::Unavailable => true,
        SsError::Zbus(zbus::Error::MethodError(name, _, _)) => {
            name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"
        }
        SsError::ZbusFdo(zbus::fdo::Error::ServiceUnknown(_)) => true,
        _ => false,
    }
}

/// A Secret Service error, or no answer in time.
enum TimedOut {
    Elapsed,
    Failed(SsError),
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimedOut::Elapsed => write!(f, "no answer within {} s", CALL_TIMEOUT.as_secs()),
            TimedOut::Failed(e) => e.fmt(f),
        }
    }
}

async fn with_timeout<T, E: Into<SsError>>(
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, TimedOut> {
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(TimedOut::Failed(e.into())),
        Err(_) => Err(TimedOut::Elapsed),
    }
}

fn failure(detail: String) -> PersistenceError {
    PersistenceError {
        kind: Kind::SecretService { detail },
    }
}
