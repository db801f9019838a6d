//! The encrypted token cache in a real Secret Service (gnome-keyring on a private D-Bus bus,
//! see support/secret_service.rs): the item is stored as msal-extensions'
//! `LibsecretPersistence` stores it for azure-identity, tokens flow both ways between Python
//! and us through it, no token reaches a file, and without a usable keyring the error names
//! what is missing unless the plaintext file was allowed.

use std::collections::HashMap;
use std::sync::Arc;

use tower_identity::{
    ClientSecretCredential, CredentialExt, DeviceCodeCredential, SharedTokenCacheCredential,
    TokenCachePersistenceOptions,
};

use crate::support::authority::{Authority, Fault};
use crate::support::creds::{self, Logs};
use crate::support::oidc::{CLIENT_ID, CLIENT_SECRET, peer};
use crate::support::python::ok;
use crate::support::secret_service::SecretService;
use crate::support::wait::wait_until;

const SCOPE: &str = "https://resource.test/.default";

/// The options azure-identity uses for `name`, in the service's temporary HOME and on its bus.
fn options(service: &SecretService, name: &str) -> TokenCachePersistenceOptions {
    TokenCachePersistenceOptions::new()
        .name(name)
        .directory(service.identity_service_dir())
        .secret_service_bus(service.address.clone())
}

fn credential(tenant: &str, options: TokenCachePersistenceOptions) -> ClientSecretCredential {
    let peer = peer();
    ClientSecretCredential::builder(tenant, CLIENT_ID, CLIENT_SECRET)
        .authority_host(&peer.base)
        .http_client(peer.http())
        .cache_options(options)
        .build()
        .unwrap()
}

async fn posts(tenant: &str) -> usize {
    peer()
        .token_log()
        .await
        .iter()
        .filter(|e| e["tenant"] == tenant)
        .count()
}

#[tokio::test]
async fn tokens_are_kept_in_the_secret_service_as_libsecret_stores_them_and_in_no_file() {
    let service = SecretService::start().await;
    let tenant = "keyring-reuse";
    let first = credential(tenant, options(&service, "keyring-reuse"))
        .get_token([SCOPE])
        .await
        .unwrap();
    let second = credential(tenant, options(&service, "keyring-reuse"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(second.secret(), first.secret());
    assert_eq!(
        posts(tenant).await,
        1,
        "the second credential read the keyring"
    );

    let items = service.items().await;
    assert_eq!(items.len(), 1, "{:?}", items);
    let item = &items[0];
    assert_eq!(item.label, "MSALCache");
    assert_eq!(item.kind, "keyring-reuse.nocae");
    let expected: HashMap<String, String> = [
        ("MsalClientID", "Microsoft.Developer.IdentityService"),
        ("xdg:schema", "keyring-reuse.nocae"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(item.attributes, expected);
    assert!(item.secret.contains(first.secret().expose_secret()));
    // The file is only the signal file: touched, empty; no token in any file of the HOME.
    let signal = service.identity_service_dir().join("keyring-reuse.nocae");
    assert_eq!(std::fs::read(&signal).unwrap(), b"");
    for entry in walk(service.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(first.secret().expose_secret()),
            "{} holds the token",
            entry.display()
        );
    }
}

#[tokio::test]
async fn python_msal_extensions_and_we_read_each_others_entries() {
    let service = SecretService::start().await;
    let peer = peer();
    let python = |tenant: &'static str, name: &'static str| {
        let service = &service;
        async move {
            ok(service
                .python(&[
                    "azid-persistent-app-only",
                    "--tenant",
                    tenant,
                    "--client-id",
                    CLIENT_ID,
                    "--client-secret",
                    CLIENT_SECRET,
                    "--scopes",
                    SCOPE,
                    "--name",
                    name,
                    "--authority-base",
                    &peer.base,
                    "--ca",
                    &peer.ca_path.display().to_string(),
                ])
                .await)
        }
    };
    // We write, Python reads.
    let tenant = "keyring-rust-first";
    credential(tenant, options(&service, "ours-first"))
        .get_token([SCOPE])
        .await
        .unwrap();
    let answer = python(tenant, "ours-first").await;
    assert_eq!(answer["persistence"], "LibsecretPersistence", "{answer}");
    assert_eq!(answer["encrypted"], true, "{answer}");
    assert_eq!(answer["source"], "cache", "{answer}");
    assert_eq!(posts(tenant).await, 1);

    // Python writes, we read.
    let tenant = "keyring-python-first";
    let answer = python(tenant, "python-first").await;
    assert_eq!(answer["source"], "identity_provider", "{answer}");
    assert_eq!(posts(tenant).await, 1);
    credential(tenant, options(&service, "python-first"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(
        posts(tenant).await,
        1,
        "we read Python's entry from the keyring"
    );
}

/// The error of a credential that reports the store's read error: the shared token cache in
/// `dir`, on the bus at `bus`, with its signal file present and the plaintext file not allowed.
async fn shared_cache_error(bus: String, dir: &std::path::Path) -> String {
    let options = TokenCachePersistenceOptions::new()
        .directory(dir)
        .secret_service_bus(bus);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("msal.cache.nocae"), b"").unwrap();
    let peer = peer();
    let credential = SharedTokenCacheCredential::builder()
        .authority_host(&peer.base)
        .http_client(peer.http())
        .cache_options(options)
        .build()
        .unwrap();
    credential.get_token([SCOPE]).await.unwrap_err().to_string()
}

#[tokio::test]
async fn without_a_secret_service_the_error_says_so_and_what_to_do() {
    let service = SecretService::bus_only().await;
    let dir = service.identity_service_dir();
    let message = shared_cache_error(service.address.clone(), &dir).await;
    assert!(message.contains("no Secret Service on"), "{message}");
    assert!(
        message.contains("allow_unencrypted_storage(true)"),
        "{message}"
    );
}

#[tokio::test]
async fn without_a_bus_the_error_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix:path={}", dir.path().join("no-bus").display());
    let message = shared_cache_error(missing, dir.path()).await;
    assert!(message.contains("no D-Bus session bus"), "{message}");
    assert!(
        message.contains("allow_unencrypted_storage(true)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_locked_keyring_is_reported_not_prompted_for() {
    let service = SecretService::start().await;
    service.lock().await;
    let dir = service.identity_service_dir();
    let message = shared_cache_error(service.address.clone(), &dir).await;
    assert!(message.contains("is locked"), "{message}");
}

#[tokio::test]
async fn the_plaintext_file_is_used_only_when_allowed_and_no_keyring_is_usable() {
    let service = SecretService::bus_only().await;
    let tenant = "keyring-fallback";
    let token = credential(
        tenant,
        options(&service, "fallback").allow_unencrypted_storage(true),
    )
    .get_token([SCOPE])
    .await
    .unwrap();
    let file = service.identity_service_dir().join("fallback.nocae");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(token.secret().expose_secret()), "{text}");

    // With a keyring, the same options store nothing in the file.
    let service = SecretService::start().await;
    let token = credential(
        "keyring-preferred",
        options(&service, "preferred").allow_unencrypted_storage(true),
    )
    .get_token([SCOPE])
    .await
    .unwrap();
    let file = service.identity_service_dir().join("preferred.nocae");
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    assert!(
        service.items().await[0]
            .secret
            .contains(token.secret().expose_secret())
    );
}

// As for the cache file (`a_writer_whose_lock_was_taken_from_it_writes_nothing`): someone who
// removes our lock file while we hold it may have let another writer in, so we store nothing.
// The writer is caught holding its lock by stopping gnome-keyring: its read of the item, which
// the test sees on the bus, waits while the test takes the lock from it.
#[tokio::test]
async fn a_writer_whose_lock_was_taken_from_it_leaves_the_item_alone() {
    let service = SecretService::start().await;
    let authority = Authority::start().await;
    let credential =
        ClientSecretCredential::builder(creds::TENANT, creds::CLIENT_ID, creds::CLIENT_SECRET)
            .authority_host(authority.url())
            .http_client(creds::http(&authority))
            .cache_options(options(&service, "lock-taken"))
            .build()
            .unwrap();
    let first = credential.get_token([SCOPE]).await.unwrap();
    let lock = service
        .identity_service_dir()
        .join("lock-taken.nocae.lockfile");
    assert!(!lock.exists(), "released after the first write");

    // The next token's answer is held until the keyring is stopped: its lookup in the cache,
    // before the request, needs the keyring.
    let (logs, _guard) = Logs::capture();
    let gate = Arc::new(tokio::sync::Notify::new());
    authority.push_fault(Fault::Hold(Arc::clone(&gate)));
    let second = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token(["https://other.test/.default"]).await }
    });
    wait_until("the token request is held", || authority.in_flight() == 1).await;
    let mut lookups = service.watch_calls("SearchItems").await;
    let paused = service.pause_keyring();
    gate.notify_one();
    // The writer reads the item again once it holds its lock file, and waits for the answer.
    lookups.next().await;
    let ours = std::fs::read_to_string(&lock).expect("the writer holds its lock file");
    assert!(
        ours.starts_with(&format!("{} ", std::process::id())),
        "{ours}"
    );
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, "4242 other").unwrap();
    drop(paused);

    let second = second
        .await
        .unwrap()
        .expect("the token is returned all the same");
    let items = service.items().await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0].secret.contains(first.secret().expose_secret()));
    assert!(
        !items[0].secret.contains(second.secret().expose_secret()),
        "the item was written without the lock"
    );
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        "4242 other",
        "the other writer's lock is left alone"
    );
    // The credential reports a failed cache write as a warning; the message says why.
    let logs = logs.text();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(
        warnings.iter().any(|w| {
            w.contains("could not be written to the token cache")
                && w.contains("another process removed or replaced it")
        }),
        "{warnings:#?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

/// Makes the bus refuse, from now on, the calls `rule` names (attributes of a `<deny>` rule of
/// dbus-daemon's configuration): a real service answers as one that refuses them would.
async fn refuse_on_bus(service: &SecretService, rule: &str) {
    let config = service.dir.path().join("bus.conf");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("</policy>", &format!("  <deny {rule}/>\n  </policy>"), 1);
    std::fs::write(&config, text).unwrap();
    let connection = service.connect().await;
    zbus::fdo::DBusProxy::new(&connection)
        .await
        .unwrap()
        .reload_config()
        .await
        .unwrap();
}

// KeePassXC answers a Set of the item's `Type` (gnome-keyring's property, not the
// specification's) with an error: the item is stored all the same, so the save succeeds and
// the signal file tells msal-extensions to reload.
#[tokio::test]
async fn a_service_that_refuses_the_item_type_still_stores_the_tokens() {
    let service = SecretService::start().await;
    refuse_on_bus(
        &service,
        r#"send_destination="org.freedesktop.secrets" send_interface="org.freedesktop.DBus.Properties" send_member="Set""#,
    )
    .await;
    let (logs, _guard) = crate::support::creds::Logs::capture();
    let tenant = "keyring-no-type";
    let token = credential(tenant, options(&service, "no-type"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(
        !logs.text().contains("could not be written"),
        "{}",
        logs.text()
    );
    // The refusal happened (the deny rule matched the Set), else this test proves nothing.
    assert!(
        logs.text()
            .contains("the Secret Service did not take the token cache item's Type"),
        "{}",
        logs.text()
    );
    let signal = service.identity_service_dir().join("no-type.nocae");
    assert_eq!(
        std::fs::read(&signal).unwrap(),
        b"",
        "the signal file is touched"
    );
    let items = service.items().await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0].secret.contains(token.secret().expose_secret()));
    credential(tenant, options(&service, "no-type"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(
        posts(tenant).await,
        1,
        "the second credential read the item"
    );
}

// The item's `Type` is cosmetic, and its call may wait up to 15 s for an answer, longer than
// other writers wait for the lock (about 5 s): it is set once the signal file is touched and
// the lock file released. gnome-keyring is stopped as soon as the call is seen on the bus, so
// whatever it would answer comes too late to make the lock file's state right.
#[tokio::test]
async fn the_item_type_is_set_after_the_lock_file_is_released() {
    let service = SecretService::start().await;
    let dir = service.identity_service_dir();
    let mut sets = service
        .watch_calls_on("org.freedesktop.DBus.Properties", "Set")
        .await;
    let credential = credential("keyring-type-late", options(&service, "type-late"));
    let get = tokio::spawn(async move { credential.get_token([SCOPE]).await });
    sets.next().await;
    let paused = service.pause_keyring();
    assert!(
        !dir.join("type-late.nocae.lockfile").exists(),
        "the lock file is held while the item's Type is set"
    );
    assert!(
        dir.join("type-late.nocae").exists(),
        "the signal file is touched first"
    );
    drop(paused);
    get.await.unwrap().unwrap();
}

// A device code sign-in stops when every caller gives up (its task is aborted), also while its
// answer is being stored: the item is stored all the same (the call was sent), so the signal
// file must be touched all the same, else msal-extensions keeps its copy and later writes it
// back over ours. gnome-keyring is stopped as soon as the store is seen on the bus, and the
// caller gives up before it answers. On the running clock (the keyring's calls cannot be held
// still): the sign-in's first poll comes after the peer's 5 s interval.
#[tokio::test]
async fn a_sign_in_given_up_while_its_answer_is_stored_still_touches_the_signal_file() {
    let service = SecretService::start().await;
    let dir = service.identity_service_dir();
    let signal = dir.join("abandoned.nocae");
    let tenant = "keyring-abandoned";
    let peer = peer();
    let (shown, mut prompts) = tokio::sync::mpsc::unbounded_channel();
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(peer.http())
        .cache_options(options(&service, "abandoned"))
        .prompt(move |info| {
            let _ = shown.send(info);
        })
        .build()
        .unwrap();
    let mut creates = service
        .watch_calls_on("org.freedesktop.Secret.Collection", "CreateItem")
        .await;
    let get = tokio::spawn(async move { credential.get_token([SCOPE]).await });
    let info = prompts.recv().await.expect("a prompt");
    peer.approve_device_code(tenant, &info.user_code, "hana@contoso.com")
        .await;
    creates.next().await;
    let paused = service.pause_keyring();
    get.abort();
    assert!(get.await.unwrap_err().is_cancelled());
    drop(paused);
    wait_until("the signal file is touched", || signal.exists()).await;
    wait_until("the lock file is released", || {
        !dir.join("abandoned.nocae.lockfile").exists()
    })
    .await;
    assert_eq!(service.items().await.len(), 1);
}

// Removing the lock file is file I/O: a failed save releases it on the blocking pool, as a
// successful one does, never on the executor thread (the test's thread here, whose logs are
// captured).
#[tokio::test]
async fn a_failed_save_releases_the_lock_file_off_the_executor() {
    let service = SecretService::start().await;
    refuse_on_bus(
        &service,
        r#"send_destination="org.freedesktop.secrets" send_interface="org.freedesktop.Secret.Collection" send_member="CreateItem""#,
    )
    .await;
    let (logs, _guard) = crate::support::creds::Logs::capture();
    credential("keyring-save-fails", options(&service, "save-fails"))
        .get_token([SCOPE])
        .await
        .unwrap();
    let text = logs.text();
    assert!(
        text.contains("could not be written to the token cache")
            && text.contains("could not store the token cache item"),
        "{text}"
    );
    assert!(
        !text.contains("released the token cache lock file"),
        "released on the executor: {text}"
    );
    let lock = service
        .identity_service_dir()
        .join("save-fails.nocae.lockfile");
    assert!(!lock.exists(), "the lock file is removed");
    assert!(service.items().await.is_empty());
}

// A FIFO at the signal file's path: opening it for writing would wait for a reader for ever,
// with the lock held. The write is refused with an error saying what to do instead.
#[tokio::test]
async fn a_fifo_at_the_signal_path_is_refused_not_waited_on() {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let service = SecretService::start().await;
    let dir = service.identity_service_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let signal = dir.join("fifo.nocae");
    let made = std::process::Command::new("mkfifo")
        .arg(&signal)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    let (logs, _guard) = crate::support::creds::Logs::capture();
    let get = credential("keyring-fifo", options(&service, "fifo")).get_token([SCOPE]);
    // A guard against the hang, not a measure of time.
    let Ok(got) = tokio::time::timeout(std::time::Duration::from_secs(30), get).await else {
        // Lets the blocked writer go, so that the runtime can shut down.
        let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap();
        let _reader = std::fs::File::options()
            .read(true)
            .custom_flags(nonblock)
            .open(&signal);
        panic!("the write hung on the FIFO");
    };
    got.unwrap();
    let text = logs.text();
    assert!(
        text.contains("could not touch the token cache's signal file")
            && text.contains("not a regular file")
            && text.contains("remove it: it is created again as an empty file"),
        "{text}"
    );
    assert!(
        std::fs::symlink_metadata(&signal)
            .unwrap()
            .file_type()
            .is_fifo(),
        "left as it is"
    );
    assert!(
        !dir.join("fifo.nocae.lockfile").exists(),
        "the lock is released"
    );
}

// The advice to allow the plaintext file is given only to those who have not: with it
// allowed, the fallback is taken on first use, and a keyring in use stays the storage.
#[tokio::test]
async fn the_plaintext_advice_is_given_only_when_the_file_is_not_allowed() {
    const ADVICE: &str = "allow_unencrypted_storage(true)";
    let service = SecretService::start().await;
    let other_scope = "https://other.resource.test/.default";
    let allowed = credential(
        "keyring-advice-allowed",
        options(&service, "advice-allowed").allow_unencrypted_storage(true),
    );
    let not_allowed = credential(
        "keyring-advice-not-allowed",
        options(&service, "advice-not-allowed"),
    );
    // The keyring is in use by both, then locked (a screen lock).
    allowed.get_token([SCOPE]).await.unwrap();
    not_allowed.get_token([SCOPE]).await.unwrap();
    service.lock().await;

    let (logs, guard) = crate::support::creds::Logs::capture();
    allowed.get_token([other_scope]).await.unwrap();
    let text = logs.text();
    assert!(text.contains("its collection is locked"), "{text}");
    assert!(!text.contains(ADVICE), "{text}");
    drop(guard);

    let (logs, guard) = crate::support::creds::Logs::capture();
    not_allowed.get_token([other_scope]).await.unwrap();
    let text = logs.text();
    assert!(text.contains("its collection is locked"), "{text}");
    assert!(text.contains(ADVICE), "{text}");
    drop(guard);

    // No Secret Service: the warning that the plaintext file is used gives no advice either.
    let service = SecretService::bus_only().await;
    let (logs, _guard) = crate::support::creds::Logs::capture();
    credential(
        "keyring-advice-fallback",
        options(&service, "advice-fallback").allow_unencrypted_storage(true),
    )
    .get_token([SCOPE])
    .await
    .unwrap();
    let text = logs.text();
    assert!(text.contains("no Secret Service on"), "{text}");
    assert!(!text.contains(ADVICE), "{text}");
}
