//! Unit tests of the cache file: reading, writing, locking, sharing and errors.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::atomic_write::shell_word;
use super::error::{Kind, PersistenceError, seconds};
use super::lock_file::{
    DEAD_HOLDER_GRACE, LOCK_RETRY_INTERVAL, LockObservation, Moment, STALE_LOCK_AGE, Writer,
    attempt_once, attempt_with, break_without_flock, lock_content, lock_path_of, observe,
};
use super::reader::{PARSE_RETRIES, RECENT_AHEAD, Stamp};
use super::{CacheFile, Document, LegacyWrites};

#[cfg(target_os = "linux")]
mod acl;
mod directory;
mod hung;
#[cfg(target_os = "linux")]
mod takeover;

// Callers only display the error; the tests also ask which kind it is.
impl PersistenceError {
    /// Whether the file exists but does not parse (it was left unchanged).
    fn is_malformed(&self) -> bool {
        matches!(self.kind, Kind::Malformed { .. })
    }

    /// Whether another process held the lock file for the whole timeout.
    fn is_lock_timeout(&self) -> bool {
        matches!(self.kind, Kind::LockTimeout { .. })
    }
}

/// A JSON object, as the real cache document is.
#[derive(Debug, Default)]
struct JsonDoc(Map<String, Value>);

impl Document for JsonDoc {
    type Error = String;

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.0).expect("a JSON map serializes")
    }

    fn empty() -> Self {
        Self::default()
    }
}

impl JsonDoc {
    /// Adds `AccessToken[key]`, where `msal-ext-writer` puts its entries.
    fn add(&mut self, key: &str) {
        let section = self.0.entry("AccessToken").or_insert_with(|| json!({}));
        if let Value::Object(section) = section {
            section.insert(key.to_owned(), json!({ "secret": "x" }));
        }
    }

    fn keys(&self) -> Vec<String> {
        match self.0.get("AccessToken") {
            Some(Value::Object(section)) => section.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

/// Parses counted per `N`, one `N` per test.
static PARSES: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// A [`JsonDoc`] whose parses are counted in `PARSES[N]`.
#[derive(Debug)]
struct Counted<const N: usize>(JsonDoc);

impl<const N: usize> Document for Counted<N> {
    type Error = String;
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        PARSES[N].fetch_add(1, Ordering::SeqCst);
        JsonDoc::parse(bytes).map(Self)
    }
    fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }
    fn empty() -> Self {
        Self(JsonDoc::empty())
    }
}

fn parses<const N: usize>() -> usize {
    PARSES[N].load(Ordering::SeqCst)
}

/// The other side of [`Finishing`]: the file an in-place writer is writing, and what it
/// holds once the writer is done; one per `N`, one `N` per test.
static IN_PLACE_WRITE: [Mutex<Option<(PathBuf, &'static str)>>; 2] =
    [const { Mutex::new(None) }; 2];

/// A [`JsonDoc`] read while an in-place writer is busy: when a read finds the file unfinished
/// (empty, or not JSON yet), the writer finishes it before the next read. Deterministic,
/// where a writer task and a timer would race the retry interval.
struct Finishing<const N: usize>(JsonDoc);

impl<const N: usize> Document for Finishing<N> {
    type Error = String;
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let parsed = JsonDoc::parse(bytes);
        if parsed.is_err() || bytes.is_empty() {
            let pending = IN_PLACE_WRITE[N].lock().unwrap().take();
            if let Some((path, content)) = pending {
                fs::write(path, content).unwrap();
            }
        }
        parsed.map(Self)
    }
    fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }
    fn empty() -> Self {
        Self(JsonDoc::empty())
    }
}

/// The in-place writer will have written `content` to `path` by the read after the next
/// one that finds the file unfinished.
fn writer_finishing<const N: usize>(path: &Path, content: &'static str) {
    *IN_PLACE_WRITE[N].lock().unwrap() = Some((path.to_path_buf(), content));
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Sets `path`'s modification time to `age` ago.
fn set_mtime(path: &Path, age: Duration) {
    set_modified(path, SystemTime::now() - age);
}

/// Sets `path`'s modification time.
fn set_modified(path: &Path, mtime: SystemTime) {
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
}

/// Sets `path`'s modification time to `ahead` after now.
fn set_ahead(path: &Path, ahead: Duration) {
    set_modified(path, SystemTime::now() + ahead);
}

/// Stamps `path` as modified just now, half a minute ahead of the clock (as a host's whose
/// clock runs ahead): it counts as recent for that long, however the test's steps are timed.
fn set_recent(path: &Path) {
    set_ahead(path, RECENT_AHEAD / 2);
}

fn file_keys(path: &Path) -> Vec<String> {
    JsonDoc::parse(&fs::read(path).unwrap()).unwrap().keys()
}

/// Content of a lock file for `pid`, modified `age` ago.
fn plant_lock(path: &Path, pid: u32, program: &str, age: Duration) -> PathBuf {
    let lock = lock_path_of(path);
    fs::write(&lock, format!("{pid} {program}")).unwrap();
    set_mtime(&lock, age);
    lock
}

#[tokio::test]
async fn missing_file_or_directory_reads_as_empty_document() {
    let dir = tempfile::tempdir().unwrap();
    for path in [
        dir.path().join("cache.json"),
        dir.path().join("no/such/dir/cache.json"),
    ] {
        let file = CacheFile::<JsonDoc>::new(path.clone(), None);
        assert!(file.read().await.unwrap().0.is_empty());
        assert!(file.read().await.unwrap().0.is_empty());
        assert!(!path.exists(), "reading creates nothing");
    }
}

#[tokio::test]
async fn created_file_is_0600_in_new_0700_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/msal.cache.nocae");
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    file.modify(|doc| doc.add("k")).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(file_keys(&path), ["k"]);
    assert!(!lock_path_of(&path).exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary or lock file left: {leftovers:?}"
    );
}

#[tokio::test]
async fn existing_file_keeps_its_mode_after_modify() {
    let dir = tempfile::tempdir().unwrap();
    for existing in [0o640, 0o600] {
        let path = dir.path().join(format!("cache-{existing:o}"));
        fs::write(&path, r#"{"AccessToken": {"old": {}}}"#).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(existing)).unwrap();
        let file = CacheFile::<JsonDoc>::new(path.clone(), None);
        file.modify(|doc| doc.add("new")).await.unwrap();
        assert_eq!(mode(&path), existing);
        assert_eq!(file_keys(&path), ["old", "new"]);
    }
}

#[tokio::test]
async fn read_reloads_only_when_mtime_length_or_inode_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let an_hour = Duration::from_secs(3600);
    fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
    set_mtime(&path, an_hour);
    let file = CacheFile::<Counted<0>>::new(path.clone(), None);

    assert_eq!(file.read().await.unwrap().0.keys(), ["a"]);
    assert_eq!(file.read().await.unwrap().0.keys(), ["a"]);
    assert_eq!(parses::<0>(), 1, "unchanged file is not parsed again");

    // Same mtime and inode, other length.
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, r#"{"AccessToken": {"bb": {}}}"#).unwrap();
    set_modified(&path, mtime);
    assert_eq!(file.read().await.unwrap().0.keys(), ["bb"]);
    assert_eq!(parses::<0>(), 2);

    // Same length and inode, other mtime.
    fs::write(&path, r#"{"AccessToken": {"cc": {}}}"#).unwrap();
    set_mtime(&path, an_hour / 2);
    assert_eq!(file.read().await.unwrap().0.keys(), ["cc"]);
    assert_eq!(parses::<0>(), 3);

    // Same length and mtime, other inode (renamed over).
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let other = dir.path().join("other.json");
    fs::write(&other, r#"{"AccessToken": {"dd": {}}}"#).unwrap();
    set_modified(&other, mtime);
    fs::rename(&other, &path).unwrap();
    assert_eq!(file.read().await.unwrap().0.keys(), ["dd"]);
    assert_eq!(file.read().await.unwrap().0.keys(), ["dd"]);
    assert_eq!(parses::<0>(), 4);
}

#[tokio::test]
async fn recently_modified_file_is_read_again_until_its_mtime_is_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
    set_recent(&path);
    let file = CacheFile::<Counted<1>>::new(path.clone(), None);
    file.read().await.unwrap();
    // An in-place write in the same mtime tick with the same length looks unchanged...
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, r#"{"AccessToken": {"b": {}}}"#).unwrap();
    set_modified(&path, mtime);
    // ...but a recent file is not trusted to be unchanged.
    assert_eq!(file.read().await.unwrap().0.keys(), ["b"]);
    assert_eq!(parses::<1>(), 2);
    set_mtime(&path, Duration::from_secs(60));
    file.read().await.unwrap();
    file.read().await.unwrap();
    assert_eq!(parses::<1>(), 3, "cached again once the file is old enough");
}

/// A file dated [`RECENT_AHEAD`] or more ahead of the clock (the clock stepped back since it
/// was written) is as far from "just modified" as one dated as far behind, and its stamp is
/// trusted. Before, it counted as recent until the clock caught up, and every read parsed it
/// again. (A file dated less far ahead, another host's whose clock runs ahead, is recent:
/// [`set_recent`] relies on that.)
#[tokio::test]
async fn a_cache_file_dated_far_ahead_of_the_clock_is_not_read_again_and_again() {
    let far_ahead = RECENT_AHEAD + Duration::from_secs(3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
    set_ahead(&path, far_ahead);
    let file = CacheFile::<Counted<3>>::new(path.clone(), None);
    for _ in 0..3 {
        assert_eq!(file.read().await.unwrap().0.keys(), ["a"]);
    }
    assert_eq!(parses::<3>(), 1);
    // A change is still seen.
    fs::write(&path, r#"{"AccessToken": {"b": {}}}"#).unwrap();
    set_ahead(&path, far_ahead);
    assert_eq!(file.read().await.unwrap().0.keys(), ["b"]);
    assert_eq!(parses::<3>(), 2);
}

#[tokio::test]
async fn modify_reads_the_file_again_so_other_writers_changes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"a1": {}}}"#).unwrap();
    set_mtime(&path, Duration::from_secs(3600));
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    assert_eq!(file.read().await.unwrap().keys(), ["a1"]);
    // Another writer's change that even the stamp does not show.
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, r#"{"AccessToken": {"b2": {}}}"#).unwrap();
    set_modified(&path, mtime);

    let seen = file.modify(|doc| {
        let seen = doc.keys();
        doc.add("c3");
        seen
    });
    assert_eq!(seen.await.unwrap(), ["b2"]);
    assert_eq!(file_keys(&path), ["b2", "c3"]);
    assert_eq!(file.read().await.unwrap().keys(), ["b2", "c3"]);
}

#[tokio::test]
async fn modify_without_change_leaves_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    file.modify(|doc| doc.add("a")).await.unwrap();
    let before = fs::metadata(&path).unwrap();
    file.modify(|_| ()).await.unwrap();
    let after = fs::metadata(&path).unwrap();
    assert_eq!(Stamp::of(&before), Stamp::of(&after));
    assert!(!lock_path_of(&path).exists());
}

#[tokio::test]
async fn malformed_file_is_reported_never_overwritten_and_the_lock_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msal.cache.nocae");
    let bytes = br#"{"AccessToken": {"k": {"secret": "hunter2"} oops"#;
    fs::write(&path, bytes).unwrap();
    let file = CacheFile::<Counted<2>>::new(path.clone(), None);

    let err = file.read().await.unwrap_err();
    assert!(err.is_malformed() && !err.is_lock_timeout(), "{err}");
    let attempts = usize::try_from(PARSE_RETRIES).unwrap() + 1;
    assert_eq!(parses::<2>(), attempts, "read again before it is reported");

    let called = Arc::new(AtomicUsize::new(0));
    let counter = called.clone();
    let err = file
        .modify(move |doc| {
            counter.fetch_add(1, Ordering::SeqCst);
            doc.0.add("x")
        })
        .await
        .unwrap_err();
    assert!(err.is_malformed(), "{err}");
    assert_eq!(called.load(Ordering::SeqCst), 0, "change not applied");
    assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
    assert!(!lock_path_of(&path).exists(), "lock released");

    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "token cache {} is not a valid token cache (",
            path.display()
        )),
        "{message}"
    );
    assert!(
        message.ends_with("): fix or delete the file; it was not changed"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn read_waits_out_an_in_place_write_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let file = CacheFile::<Finishing<0>>::new(path.clone(), None);

    // Half written: read again until the writer is done.
    fs::write(&path, r#"{"AccessToken": {"#).unwrap();
    writer_finishing::<0>(&path, r#"{"AccessToken": {"done": {}}}"#);
    assert_eq!(file.read().await.unwrap().0.keys(), ["done"]);

    // The same for an empty file just truncated by an in-place writer.
    fs::write(&path, "").unwrap();
    set_recent(&path);
    writer_finishing::<0>(&path, r#"{"AccessToken": {"again": {}}}"#);
    assert_eq!(file.read().await.unwrap().0.keys(), ["again"]);

    // An empty file that stays empty is an empty document.
    fs::write(&path, "").unwrap();
    assert!(file.read().await.unwrap().0.0.is_empty());
    assert!(IN_PLACE_WRITE[0].lock().unwrap().is_none());
}

#[tokio::test]
async fn lock_file_holds_pid_and_program_like_msal_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = lock_path_of(&path);
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let content = file
        .modify(move |_| fs::read_to_string(&lock).unwrap())
        .await
        .unwrap();
    assert_eq!(content, lock_content());
    assert!(
        content.starts_with(&format!("{} ", std::process::id())),
        "{content}"
    );
    assert!(!lock_path_of(&path).exists());
}

// The lock is polled with tokio's timers, so the paused clock measures the wait exactly.
#[tokio::test(start_paused = true)]
async fn lock_held_by_a_live_process_times_out_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msal.cache.nocae");
    let pid = std::process::id();
    let lock = plant_lock(&path, pid, "python3", Duration::ZERO);
    let timeout = Duration::from_millis(300);
    let file = CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, timeout);

    let started = Instant::now();
    let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_lock_timeout() && !err.is_malformed(), "{err}");
    assert!(
        waited >= timeout && waited < timeout + LOCK_RETRY_INTERVAL,
        "waited the timeout, polling: {waited:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "timed out after 300 ms waiting for {} held by pid {pid} (python3): \
             if that process is gone, delete the lock file",
            lock.display()
        )
    );
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        format!("{pid} python3"),
        "live lock left alone"
    );
    assert!(!path.exists());
    // Reads take no lock.
    assert!(file.read().await.unwrap().0.is_empty());
}

/// Linux alone tells a process that no longer exists (`/proc`); elsewhere such a lock waits
/// for [`STALE_LOCK_AGE`].
#[cfg(target_os = "linux")]
#[tokio::test(start_paused = true)]
async fn lock_of_a_dead_process_is_removed_once_past_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();

    // Fresh: it may be a live holder in another pid namespace; respected for now.
    let lock = plant_lock(&path, dead, "gone", Duration::ZERO);
    let file =
        CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, Duration::from_millis(300));
    let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("held by pid {dead} (gone)")),
        "{err}"
    );

    // Past the grace period: removed at once, without a pause to poll it again.
    set_mtime(&lock, DEAD_HOLDER_GRACE + Duration::from_secs(1));
    let started = Instant::now();
    file.modify(|doc| doc.add("x")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "no retry pause");
    assert_eq!(file_keys(&path), ["x"]);
    assert!(!lock.exists());
}

#[tokio::test]
async fn old_lock_is_removed_even_if_its_process_lives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = plant_lock(
        &path,
        std::process::id(),
        "old",
        STALE_LOCK_AGE + Duration::from_secs(5),
    );
    let file =
        CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, Duration::from_millis(300));
    file.modify(|doc| doc.add("x")).await.unwrap();
    assert_eq!(file_keys(&path), ["x"]);
    assert!(!lock.exists());
}

/// A lock dated [`STALE_LOCK_AGE`] or more ahead of the clock (its holder crashed, then the
/// clock was stepped back at boot) is as old as one dated as far behind: stale. Before, it
/// counted as 0 s old until the clock caught up, and every write timed out meanwhile.
///
/// A lock dated less far ahead is another host's, sharing the directory with a clock that
/// runs ahead: fresh, whatever its pid means here. Before, its distance from now counted as
/// its age, and once that passed [`DEAD_HOLDER_GRACE`] a pid that does not exist here broke
/// the other host's live lock.
#[tokio::test(start_paused = true)]
async fn a_lock_dated_ahead_of_the_clock_is_fresh_within_a_minute_and_stale_beyond() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let file =
        CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, Duration::from_millis(300));

    // Further ahead than a lock may live: stale whoever holds it.
    let lock = plant_lock(&path, std::process::id(), "ahead", Duration::ZERO);
    set_ahead(&lock, STALE_LOCK_AGE + Duration::from_secs(3600));
    file.modify(|doc| doc.add("stale")).await.unwrap();
    assert!(!lock.exists());

    // Ahead by less than a minute, naming a pid that does not exist here: another host's.
    let lock = plant_lock(&path, dead, "elsewhere", Duration::ZERO);
    set_ahead(&lock, STALE_LOCK_AGE / 2);
    let err = file.modify(|doc| doc.add("elsewhere")).await.unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(lock.exists());
    assert_eq!(file_keys(&path), ["stale"]);
}

/// The boundaries of [`LockObservation::stale_reason`] and [`Stamp::is_recent`] for times
/// ahead of the clock, both from [`RECENT_AHEAD`] (the same minute as [`STALE_LOCK_AGE`]):
/// just within it, a lock naming a pid that does not exist is fresh and a file recent; just
/// beyond it, the lock is stale and the file not recent.
#[test]
fn ahead_of_the_clock_counts_as_just_now_within_the_minute_and_as_old_beyond() {
    assert_eq!(RECENT_AHEAD, STALE_LOCK_AGE);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let second = Duration::from_secs(1);
    let lock = |ahead: Duration| LockObservation {
        content: format!("{dead} elsewhere"),
        modified: Some(SystemTime::now() + ahead),
        inode: 1,
    };
    let stamp = |ahead: Duration| Stamp {
        modified: Some(SystemTime::now() + ahead),
        len: 1,
        inode: 1,
    };
    for ahead in [second, DEAD_HOLDER_GRACE + second, RECENT_AHEAD - second] {
        assert_eq!(lock(ahead).stale_reason(), None, "{ahead:?} ahead");
        assert!(stamp(ahead).is_recent(), "{ahead:?} ahead");
    }
    let beyond = RECENT_AHEAD + second;
    let reason = lock(beyond).stale_reason().unwrap();
    assert!(reason.ends_with("s ahead of the clock"), "{reason}");
    assert!(!stamp(beyond).is_recent());
    // Behind the clock, the pid rule applies past the grace period, as before (Linux alone
    // tells a process that no longer exists).
    let behind = LockObservation {
        modified: Some(SystemTime::now() - DEAD_HOLDER_GRACE - second),
        ..lock(Duration::ZERO)
    };
    let gone = cfg!(target_os = "linux").then(|| format!("process {dead} no longer exists"));
    assert_eq!(behind.stale_reason(), gone);
}

/// Opens the lock file and `flock`s it, as a live holder does (ours, or `msal-extensions` with
/// `portalocker`); the lock is released when the file is dropped.
fn flock_held(lock: &Path) -> File {
    let file = File::open(lock).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    file
}

// A holder in another pid namespace (a container sharing the home directory) names a pid that
// does not exist here, and a clock far off on a network file system makes a fresh lock look
// old: neither breaks a lock whose holder has it flocked.
#[tokio::test(start_paused = true)]
async fn a_flocked_lock_is_never_broken_however_old_or_whoever_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let lock = plant_lock(&path, dead, "elsewhere", STALE_LOCK_AGE * 2);
    let holder = flock_held(&lock);
    let file =
        CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, Duration::from_millis(300));

    let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("held by pid {dead} (elsewhere)")),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        format!("{dead} elsewhere")
    );

    // Its holder gone, the kernel releases the flock: now the age rules.
    drop(holder);
    file.modify(|doc| doc.add("x")).await.unwrap();
    assert_eq!(file_keys(&path), ["x"]);
    assert!(!lock.exists());
}

// The race the flock closes: a breaker that judged a lock stale used to rename away whatever
// held the name by then, a live writer's lock included.
#[tokio::test]
async fn a_held_lock_that_looks_stale_is_left_to_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = lock_path_of(&path);
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let seen = file
        .modify(move |doc| {
            let before = fs::read_to_string(&lock).unwrap();
            // As old as a stale lock, and naming this live process: only the flock saves it.
            set_mtime(&lock, STALE_LOCK_AGE * 2);
            let seen = attempt_once(&lock).unwrap();
            assert_eq!(fs::read_to_string(&lock).unwrap(), before, "still ours");
            doc.add("x");
            seen
        })
        .await
        .unwrap();
    assert_eq!(seen, "busy");
    assert_eq!(file_keys(&path), ["x"]);
    assert!(!lock_path_of(&path).exists(), "released");
}

/// MSAL.NET opens the lock file without `O_EXCL` and `flock`s it (as does `msal-extensions`
/// with `portalocker` once it has waited 5 s for the name): here, right after our writer
/// created it and before the writer's own `flock`. It holds the lock then, and removes the
/// name when done: the writer leaves the name to it and finds the lock busy until then.
/// Before, the writer removed the name, and took the lock with a new file 100 ms later
/// while the other held the first: two writers at once.
#[test]
fn a_lock_file_another_holder_flocked_first_is_left_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_path_of(&dir.path().join("cache.json"));
    let mut holder = None;
    let seen = attempt_with(&lock, |moment, lock| {
        assert_eq!(moment, Moment::Created);
        holder = Some(flock_held(lock));
    })
    .unwrap();
    assert_eq!(seen, "contended");
    assert!(lock.exists(), "the name is left to its holder");
    assert_eq!(attempt_once(&lock).unwrap(), "busy");
    // However old it looks, a flocked lock is its holder's.
    set_mtime(&lock, STALE_LOCK_AGE * 2);
    assert_eq!(attempt_once(&lock).unwrap(), "busy");
    assert!(lock.exists());

    // Done, the holder removes the name (`DeleteOnClose`) and closes the file.
    fs::remove_file(&lock).unwrap();
    drop(holder);
    assert_eq!(attempt_once(&lock).unwrap(), "acquired");
}

/// A breaker of an older release `flock`ed every lock it judged (as one of ours does where a
/// network file system's server dates the file 2 s behind): here, the file our writer has
/// just created, before the writer's own `flock`. It finds it empty, not stale, and leaves
/// it, name and all. The writer, which kept its file, takes it at its next attempt. Before,
/// the writer closed it, and the empty file, held by no one, held every writer off until it
/// was [`STALE_LOCK_AGE`] old.
#[test]
fn a_lock_file_a_breaker_flocked_first_is_taken_at_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_path_of(&dir.path().join("cache.json"));
    let mut writer = Writer::default();
    let mut breaker = None;
    let (seen, _) = writer
        .attempt_with(&lock, &mut |moment, lock| {
            assert_eq!(moment, Moment::Created);
            breaker = Some(flock_held(lock));
        })
        .unwrap();
    assert_eq!(seen, "contended");
    // Still judging it.
    assert_ne!(writer.attempt(&lock).unwrap().0, "acquired");
    assert_eq!(fs::read_to_string(&lock).unwrap(), "");

    // Judged not stale, and closed.
    drop(breaker);
    let (seen, guard) = writer.attempt(&lock).unwrap();
    assert_eq!(seen, "acquired");
    assert_eq!(fs::read_to_string(&lock).unwrap(), lock_content());
    let guard = guard.unwrap();
    guard.check_held().unwrap();
    drop(guard);
    assert!(!lock.exists(), "released");
}

/// An acquisition that ends (its timeout, a cancellation) while it keeps a file a breaker
/// flocked and has since let go removes that empty file, which would otherwise hold every
/// writer off until it is stale; one the breaker still holds, or a holder wrote in, is left.
#[test]
fn an_abandoned_contended_lock_file_is_removed_only_when_free_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_path_of(&dir.path().join("cache.json"));
    for (released, written, removed) in [
        (true, false, true),
        (false, false, false),
        (true, true, false),
    ] {
        let mut writer = Writer::default();
        let mut breaker = None;
        let (seen, _) = writer
            .attempt_with(&lock, &mut |_, lock| breaker = Some(flock_held(lock)))
            .unwrap();
        assert_eq!(seen, "contended");
        if written {
            fs::write(&lock, "4242 python3").unwrap();
        }
        if released {
            drop(breaker.take());
        }
        writer.give_up(&lock);
        assert_eq!(
            !lock.exists(),
            removed,
            "released {released}, written {written}"
        );
        drop(breaker);
        let _ = fs::remove_file(&lock);
    }
}

/// A holder that `flock`ed the file our writer created removes its name when done, then
/// closes it (MSAL.NET's `DeleteOnClose`): the writer does not take the removed file, whose
/// `flock` is free now, but tries the name afresh.
#[test]
fn a_contended_lock_file_its_holder_removed_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_path_of(&dir.path().join("cache.json"));
    let mut writer = Writer::default();
    let mut holder = None;
    let (seen, _) = writer
        .attempt_with(&lock, &mut |_, lock| holder = Some(flock_held(lock)))
        .unwrap();
    assert_eq!(seen, "contended");
    // The removed file, as the test still sees it.
    let removed = File::open(&lock).unwrap();

    fs::remove_file(&lock).unwrap();
    drop(holder);
    let (seen, guard) = writer.attempt(&lock).unwrap();
    assert_eq!(seen, "vanished");
    assert!(guard.is_none());
    assert!(!lock.exists(), "no name given back to the removed file");
    assert_eq!(
        removed.metadata().unwrap().len(),
        0,
        "nothing written in it"
    );
    // A file of its own, then.
    let (seen, guard) = writer.attempt(&lock).unwrap();
    assert_eq!(seen, "acquired");
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&lock).unwrap()),
        std::os::unix::fs::MetadataExt::ino(&removed.metadata().unwrap())
    );
    drop(guard);
}

/// A holder that wrote in the file our writer created may be between releasing its `flock`
/// and removing the name (`portalocker` releases first): the writer leaves it to that holder,
/// and to the stale rules, even once its `flock` is free.
#[test]
fn a_contended_lock_file_its_holder_wrote_in_is_left_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let lock = lock_path_of(&dir.path().join("cache.json"));
    let mut writer = Writer::default();
    let mut holder = None;
    let (seen, _) = writer
        .attempt_with(&lock, &mut |_, lock| holder = Some(flock_held(lock)))
        .unwrap();
    assert_eq!(seen, "contended");
    fs::write(&lock, "4242 python3").unwrap();

    drop(holder);
    for _ in 0..2 {
        assert_ne!(writer.attempt(&lock).unwrap().0, "acquired");
        assert_eq!(fs::read_to_string(&lock).unwrap(), "4242 python3");
    }
}

/// A breaker `flock`s no lock younger than [`DEAD_HOLDER_GRACE`] (never stale): its maker may
/// be a writer between its creation and its `flock`, which would take the breaker for a
/// holder. Before, every lock looked at was `flock`ed.
#[test]
fn a_breaker_flocks_no_lock_younger_than_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = plant_lock(&path, std::process::id(), "young", Duration::ZERO);
    // Just now, however the test's steps are timed.
    set_recent(&lock);
    let mut judged = Vec::new();
    let mut attempt = |lock: &Path| attempt_with(lock, |moment, _| judged.push(moment)).unwrap();
    assert_eq!(attempt(&lock), "busy");
    // Old enough to judge: flocked, and kept (its process lives).
    set_mtime(&lock, DEAD_HOLDER_GRACE + Duration::from_secs(1));
    assert_eq!(attempt(&lock), "busy");
    assert_eq!(judged, [Moment::Judging], "only the older lock was flocked");
    assert!(lock.exists());
}

#[test]
fn an_unflocked_stale_lock_is_removed_and_a_fresh_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    // `msal-extensions` without `portalocker` takes no flock: its fresh lock is respected...
    let lock = plant_lock(&path, std::process::id(), "python3", Duration::ZERO);
    assert_eq!(attempt_once(&lock).unwrap(), "busy");
    assert!(lock.exists());
    // ...and once stale, removed, leaving nothing beside it.
    set_mtime(&lock, STALE_LOCK_AGE * 2);
    assert_eq!(attempt_once(&lock).unwrap(), "broke stale");
    assert_eq!(attempt_once(&lock).unwrap(), "acquired");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left");
}

// Where flock does not work, a breaker renames the lock aside and checks it is the one it
// judged: another breaker may have removed that one, and a writer taken the name, meanwhile.
#[test]
fn without_flock_a_stale_lock_replaced_by_a_live_one_is_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = plant_lock(&path, std::process::id(), "old", STALE_LOCK_AGE * 2);
    let observed = observe(&lock);
    assert!(observed.stale_reason().is_some());
    fs::remove_file(&lock).unwrap();
    fs::write(&lock, "4242 live").unwrap();
    assert!(!break_without_flock(&lock, &observed).unwrap());
    assert_eq!(fs::read_to_string(&lock).unwrap(), "4242 live");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [lock.file_name().unwrap()], "nothing left aside");
    // The one judged stale is removed.
    let observed = observe(&lock);
    assert!(break_without_flock(&lock, &observed).unwrap());
    assert!(!lock.exists());
}

// `msal-extensions` with `portalocker` removes the lock file's name when it is done, even when
// the file it locked was ours: another writer may then hold the name while we still write.
#[tokio::test]
async fn a_writer_whose_lock_was_taken_from_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
    let lock = lock_path_of(&path);
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let err = file
        .modify(move |doc| {
            fs::remove_file(&lock).unwrap();
            fs::write(&lock, "4242 other").unwrap();
            doc.add("b");
        })
        .await
        .unwrap_err();
    assert!(!err.is_lock_timeout() && !err.is_malformed(), "{err}");
    assert!(
        err.to_string()
            .contains("another process removed or replaced it"),
        "{err}"
    );
    assert_eq!(file_keys(&path), ["a"], "not written");
    assert_eq!(
        fs::read_to_string(lock_path_of(&path)).unwrap(),
        "4242 other",
        "the other writer's lock is left alone"
    );
}

#[tokio::test]
async fn a_lock_path_that_is_not_a_file_is_an_error_not_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = lock_path_of(&path);
    let file =
        CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, Duration::from_secs(3600));
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(&lock)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(mkfifo.success());
    for what in ["a FIFO", "a directory", "a dangling symbolic link"] {
        if what == "a directory" {
            fs::remove_file(&lock).unwrap();
            fs::create_dir(&lock).unwrap();
        }
        if what == "a dangling symbolic link" {
            fs::remove_dir(&lock).unwrap();
            std::os::unix::fs::symlink(dir.path().join("nowhere"), &lock).unwrap();
        }
        let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
        assert!(!err.is_lock_timeout(), "{what}: {err}");
        assert!(
            err.to_string().contains("not a regular file; remove it"),
            "{what}: {err}"
        );
    }
    assert!(!path.exists());
}

#[test]
fn lock_holder_is_described_from_the_lock_file_without_control_characters() {
    let look = |content: &str| LockObservation {
        content: content.to_owned(),
        modified: Some(SystemTime::now()),
        inode: 1,
    };
    assert_eq!(look("16131 peer.py").holder(), "pid 16131 (peer.py)");
    assert_eq!(look("77").holder(), "pid 77");
    assert_eq!(look("").holder(), "an unknown process (empty lock file)");
    assert_eq!(
        look("x\ny").holder(),
        r#"an unknown process (lock file says "x y")"#
    );
    assert_eq!(look("").stale_reason(), None);
}

#[tokio::test]
async fn lock_is_released_when_change_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let task = {
        let file = file.clone();
        tokio::spawn(async move { file.modify(|_| -> () { panic!("change failed") }).await })
    };
    assert!(
        task.await.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    assert!(!lock_path_of(&path).exists());
    assert!(!path.exists(), "nothing written");
    file.modify(|doc| doc.add("after")).await.unwrap();
    assert_eq!(file_keys(&path), ["after"]);
}

#[tokio::test]
async fn lock_is_released_when_the_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    // A symlink into a directory that does not exist: reads as missing, cannot be written.
    std::os::unix::fs::symlink(dir.path().join("gone/cache.json"), &path).unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
    assert!(!err.is_malformed() && !err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string()
            .starts_with("could not write the temporary token cache file "),
        "{err}"
    );
    assert!(err.to_string().contains("gone/cache.json.tmp."), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(!lock_path_of(&path).exists());
}

#[tokio::test]
async fn symlinked_cache_file_is_written_through_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real/cache.json");
    fs::create_dir(dir.path().join("real")).unwrap();
    fs::write(&real, r#"{"AccessToken": {"a": {}}}"#).unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let file = CacheFile::<JsonDoc>::new(link.clone(), None);
    file.modify(|doc| doc.add("b")).await.unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(file_keys(&real), ["a", "b"]);
    assert_eq!(mode(&real), 0o644, "the target's mode is kept");
}

/// A write through a symbolic link replaces its target, which a tool given the target's own
/// name writes under `<target>.lockfile` (`msal-extensions` names the lock after the path it
/// is given): the write takes that lock too, after the link's, and waits for it like any
/// lock, up to the lock timeout. Before, it took only `<link>.lockfile`, and wrote while the
/// other tool held the target's lock.
#[tokio::test(start_paused = true)]
async fn a_symlinked_cache_file_is_written_under_its_targets_lock_too() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    let target = dir.path().join("real/msal.cache");
    fs::write(&target, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let link = dir.path().join("msal.cache.nocae");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let target_lock = lock_path_of(&fs::canonicalize(&target).unwrap());
    fs::write(&target_lock, format!("{} python3", std::process::id())).unwrap();
    let timeout = Duration::from_millis(300);
    let file = CacheFile::<JsonDoc>::with_lock_timeout(link.clone(), None, timeout);

    let started = Instant::now();
    let err = file.modify(|doc| doc.add("mine")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string().contains(&target_lock.display().to_string()),
        "{err}"
    );
    assert!(
        waited >= timeout && waited < timeout + LOCK_RETRY_INTERVAL,
        "waited the timeout, polling: {waited:?}"
    );
    assert_eq!(file_keys(&target), ["old"], "not written");
    assert!(!lock_path_of(&link).exists(), "the link's lock is released");

    fs::remove_file(&target_lock).unwrap();
    file.modify(|doc| doc.add("mine")).await.unwrap();
    let mut keys = file_keys(&target);
    keys.sort();
    assert_eq!(keys, ["mine", "old"], "written through the link");
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(!target_lock.exists() && !lock_path_of(&link).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_modifies_in_this_process_keep_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let file = CacheFile::<JsonDoc>::shared(path.clone(), None);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let file = file.clone();
        tasks.spawn(async move { file.modify(move |doc| doc.add(&format!("e{i}"))).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let mut keys = file_keys(&path);
    keys.sort();
    let mut wanted: Vec<_> = (0..20).map(|i| format!("e{i}")).collect();
    wanted.sort();
    assert_eq!(keys, wanted);
    assert_eq!(file.read().await.unwrap().keys().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_objects_for_one_path_are_ordered_by_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let mut tasks = tokio::task::JoinSet::new();
    for object in 0..2 {
        let file = CacheFile::<JsonDoc>::new(path.clone(), None);
        tasks.spawn(async move {
            for i in 0..10 {
                file.modify(move |doc| doc.add(&format!("o{object}-{i}")))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(file_keys(&path).len(), 20);
}

#[test]
fn shared_returns_one_object_per_path_and_holds_it_weakly() {
    let dir = tempfile::tempdir().unwrap();
    let a = CacheFile::<JsonDoc>::shared(dir.path().join("cache.json"), None);
    let b = CacheFile::<JsonDoc>::shared(dir.path().join(".").join("cache.json"), None);
    let other = CacheFile::<JsonDoc>::shared(dir.path().join("other.json"), None);
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &other));
    assert_eq!(
        Arc::strong_count(&a),
        2,
        "the registry holds no strong reference"
    );
    assert_eq!(a.path(), dir.path().join("cache.json"));
}

/// One object per file whatever legacy file its callers name (a Secret Service credential
/// without a plaintext fallback names none; one with it names `msal.cache`): one writer queue
/// and one snapshot. The legacy file named later is read. Before, two objects.
#[tokio::test]
async fn shared_returns_one_object_per_path_whatever_legacy_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    fs::write(&legacy, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let without = CacheFile::<JsonDoc>::shared(path.clone(), None);
    assert!(without.read().await.unwrap().keys().is_empty());
    let with = CacheFile::<JsonDoc>::shared(path.clone(), Some(legacy.clone()));
    assert!(Arc::ptr_eq(&without, &with));
    assert_eq!(with.read().await.unwrap().keys(), ["old"]);
    let again = CacheFile::<JsonDoc>::shared(path.clone(), None);
    assert!(Arc::ptr_eq(&with, &again));
    assert_eq!(again.files(), [path, legacy]);
}

#[test]
fn durations_are_written_for_humans() {
    assert_eq!(seconds(Duration::from_secs(10)), "10 s");
    assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
    assert_eq!(seconds(Duration::from_millis(300)), "300 ms");
}

/// msal-extensions reloads only a file modified after it last read: a write must carry the
/// time it became visible (the rename), not the time its bytes were written.
#[test]
fn a_write_is_marked_modified_after_its_rename() {
    use super::atomic_write::{install, written_beside};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msal.cache");
    fs::write(&path, "{}").unwrap();
    let temp = written_beside(&path, fs::metadata(&path).ok().as_ref(), b"{\"new\":1}").unwrap();
    // As if the rename came long after the write.
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    File::options()
        .write(true)
        .open(&*temp)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let before_rename = SystemTime::now();
    let stamp = install(temp, &path).unwrap();
    let modified = fs::metadata(&path).unwrap().modified().unwrap();
    // Two seconds of slack for file systems with coarse timestamps.
    assert!(
        modified + Duration::from_secs(2) >= before_rename,
        "{modified:?} is before the rename at {before_rename:?}"
    );
    assert_eq!(stamp.modified, Some(modified));
    assert_eq!(fs::read(&path).unwrap(), b"{\"new\":1}");
}

/// A FIFO, a directory or a huge file at the cache's path is an error at once: no read that
/// blocks with the lock held, no unbounded allocation.
#[tokio::test]
async fn what_is_not_a_cache_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.cache");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) is needed for this test");
    assert!(made.success());
    let directory = dir.path().join("dir.cache");
    fs::create_dir(&directory).unwrap();
    let huge = dir.path().join("huge.cache");
    File::create(&huge)
        .unwrap()
        .set_len(super::reader::MAX_FILE_BYTES + 1)
        .unwrap();
    for (path, said) in [
        (&fifo, "not a regular file"),
        (&directory, "not a regular file"),
        (&huge, "larger than 64 MiB"),
    ] {
        let Err(err) = super::reader::load::<JsonDoc>(path, false) else {
            panic!("{} was read", path.display());
        };
        assert!(err.to_string().contains(said), "{}: {err}", path.display());
    }
}

/// With another process holding the lock, writers queued in this process each give up when
/// the timeout has passed since their call, not one timeout after the writer ahead of them.
#[tokio::test(start_paused = true)]
async fn queued_writers_time_out_together_not_one_after_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let lock = plant_lock(&path, std::process::id(), "python3", Duration::ZERO);
    let _holder = flock_held(&lock);
    let timeout = Duration::from_millis(300);
    let file = CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), None, timeout);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3 {
        let file = file.clone();
        tasks.spawn(async move {
            let result = file.modify(move |doc| doc.add(&format!("w{i}"))).await;
            (result, started.elapsed())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (result, waited) = done.unwrap();
        let err = result.unwrap_err();
        assert!(err.is_lock_timeout(), "{err}");
        assert!(
            waited >= timeout && waited < timeout + LOCK_RETRY_INTERVAL,
            "waited {waited:?}: {err}"
        );
    }
    assert!(!path.exists());
}

/// The message of a writer whose time ran out behind this process's other writers.
#[test]
fn a_timeout_in_the_queue_says_so() {
    let err = PersistenceError {
        kind: Kind::LockTimeout {
            lock_path: PathBuf::from("/c/cache.json.lockfile"),
            timeout: Duration::from_secs(10),
            holder: None,
            queued: true,
        },
    };
    assert_eq!(
        err.to_string(),
        "timed out after 10 s waiting for /c/cache.json.lockfile: this process's other writers \
         of the token cache were still waiting for it or writing; if another process holds it \
         and is gone, delete the lock file"
    );
}

/// A cache file its owner made read-only is not replaced behind their back (the rename needs
/// only the directory's permission). By its mode bits, so that this holds under root too.
#[tokio::test]
async fn a_read_only_cache_file_is_left_unchanged_and_the_error_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let content = r#"{"AccessToken": {"frozen": {}}}"#;
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), None);
    let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "could not replace the token cache {}: it is read-only (mode 0400), so it was left \
             as it is: to let the token cache be updated, make it writable (chmod u+w)",
            path.display()
        )
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    assert_eq!(mode(&path), 0o400);
    assert!(!lock_path_of(&path).exists(), "the lock is released");
    let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
}

/// Fails the test unless this process runs as root, which the ownership tests need to make a
/// file another user's (CI runs the tests as root, as it binds port 443 for the oidc peer).
fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test gives files another owner, which needs root: run the tests as root \
         (tests/run.sh in CI is), or in a container as its root"
    );
}

/// The owner and group of `path`.
fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// A user and group that own nothing here.
const OTHER_OWNER: (u32, u32) = (12345, 12346);

/// A process running as root on the user's home (a dev container, `sudo -E`) leaves the user's
/// cache file the user's: before, the renamed replacement was root's, mode 0600, and the
/// user's own tools could no longer read it.
#[tokio::test]
async fn a_write_keeps_the_owner_and_group_of_the_file_it_replaces() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(OTHER_OWNER.0), Some(OTHER_OWNER.1)).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    CacheFile::<JsonDoc>::new(path.clone(), None)
        .modify(|doc| doc.add("new"))
        .await
        .unwrap();
    assert_eq!(file_keys(&path), ["old", "new"]);
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()),
        inode,
        "replaced by a rename"
    );
    assert_eq!(owner(&path), OTHER_OWNER);
    assert_eq!(mode(&path), 0o640);
}

/// Environment variable naming the cache file [`write_as_another_user`] writes.
#[cfg(target_os = "linux")]
const OTHER_USER_CACHE: &str = "TOWER_IDENTITY_TEST_OTHER_USER_CACHE";
/// Environment variable holding the ids [`write_as_another_user`] runs as: `uid gid groups…`.
#[cfg(target_os = "linux")]
const OTHER_USER_IDS: &str = "TOWER_IDENTITY_TEST_OTHER_USER_IDS";

/// The other side of the tests that run a writer as another user ([`write_as`]): started as
/// root, takes the ids in [`OTHER_USER_IDS`], writes to the file named in [`OTHER_USER_CACHE`]
/// and prints `written`, or the error.
#[cfg(target_os = "linux")]
#[test]
#[ignore = "run as another user by the ownership tests (write_as)"]
fn write_as_another_user() {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_gid, set_thread_groups, set_thread_uid};
    // Run by itself (`--ignored`), it has nothing to do.
    let Some(path) = std::env::var_os(OTHER_USER_CACHE).map(PathBuf::from) else {
        return;
    };
    let ids: Vec<u32> = std::env::var(OTHER_USER_IDS)
        .unwrap()
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    // No ids: run as started (in a user namespace, see `write_in_user_namespace`).
    if !ids.is_empty() {
        let [uid, gid, groups @ ..] = ids.as_slice() else {
            panic!("{OTHER_USER_IDS} holds no uid and gid: {ids:?}");
        };
        // Groups first, while root may still set them. rustix changes this thread's ids alone;
        // the runtime's threads, started from it below, inherit them.
        let groups: Vec<Gid> = groups.iter().map(|&id| Gid::from_raw(id)).collect();
        set_thread_groups(&groups).unwrap();
        set_thread_gid(Gid::from_raw(*gid)).unwrap();
        set_thread_uid(Uid::from_raw(*uid)).unwrap();
    }
    // Its warnings (about the file's ACL, say) go where it prints, for the tests to read; the
    // write runs on a blocking thread, so the subscriber is the process's.
    let stdout = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .finish();
    tracing::subscriber::set_global_default(stdout).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let written =
        runtime.block_on(CacheFile::<JsonDoc>::new(path, None).modify(|doc| doc.add("theirs")));
    match written {
        Ok(_) => println!("written"),
        Err(err) => println!("error: {err}"),
    }
}

/// The user (and group) the writers of the ownership tests run as: not the overflow id
/// (65534), which a user namespace that does not map every id shows for owners outside it,
/// so that the writer's own files are its own there too.
#[cfg(target_os = "linux")]
const WRITER: u32 = 34567;

/// Runs [`write_as_another_user`] on `path` as user `uid`, group `gid`, with the supplementary
/// `groups`, and returns what it printed.
#[cfg(target_os = "linux")]
fn write_as(uid: u32, gid: u32, groups: &[u32], path: &Path) -> String {
    let ids: Vec<String> = [uid, gid]
        .iter()
        .chain(groups)
        .map(u32::to_string)
        .collect();
    let exe = std::env::current_exe().unwrap();
    run_writer(std::process::Command::new(exe), &ids.join(" "), path)
}

/// Runs [`write_as_another_user`] on `path` as root of a new user namespace that maps only
/// root (`unshare --user --map-root-user`, util-linux): there every other owner shows as the
/// overflow id. Returns what it printed.
#[cfg(target_os = "linux")]
fn write_in_user_namespace(path: &Path) -> String {
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args(["--user", "--map-root-user"])
        .arg(std::env::current_exe().unwrap());
    run_writer(unshare, "", path)
}

/// Runs `command` (this test binary, or a program that runs it) on [`write_as_another_user`]
/// with `path` and `ids` (none: as it is started), and returns what it printed.
#[cfg(target_os = "linux")]
fn run_writer(mut command: std::process::Command, ids: &str, path: &Path) -> String {
    let output = command
        .args([
            "--exact",
            "entra::persistence::tests::write_as_another_user",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OTHER_USER_CACHE, path)
        .env(OTHER_USER_IDS, ids)
        .output()
        .unwrap_or_else(|e| {
            panic!("{command:?} (unshare is util-linux's: apt-get install util-linux): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// In a user namespace, a file whose owner is outside it (shown as the overflow id, which the
/// process may not open with `O_NOATIME`; readable by others, as the namespace's root is
/// one of them) is left as it is, the error saying so; a file of its
/// own whose group is outside it is replaced without group permissions.
#[cfg(target_os = "linux")]
#[test]
fn an_owner_outside_a_user_namespace_is_never_given_to_the_new_file() {
    require_root();
    const OUTSIDE: u32 = 40_001;
    let top = tempfile::tempdir().unwrap();
    let content = r#"{"AccessToken": {"theirs": {}}}"#;
    let (_, path) = home_with_cache(
        top.path(),
        (0, 0),
        0o755,
        (OUTSIDE, OUTSIDE),
        0o644,
        content,
    );
    let stdout = write_in_user_namespace(&path);
    assert!(
        stdout.contains("it belongs to uid 65534 gid 65534 (an overflow id")
            && stdout.contains("update the token cache as its owner, outside this user namespace"),
        "{stdout}"
    );
    assert_eq!(owner(&path), (OUTSIDE, OUTSIDE));
    assert_eq!(fs::read_to_string(&path).unwrap(), content);

    let other = tempfile::tempdir().unwrap();
    let (_, path) = home_with_cache(other.path(), (0, 0), 0o755, (0, OUTSIDE), 0o664, content);
    let stdout = write_in_user_namespace(&path);
    assert!(stdout.contains("written"), "{stdout}");
    assert_eq!(owner(&path), (0, 0));
    assert_eq!(
        mode(&path),
        0o604,
        "no group permission for a group it cannot name"
    );
}

/// A directory `home` in a new temporary directory others may enter, owned by `owner`, with
/// `mode`; and the path of `cache.json` in it, holding `content`, owned by `file_owner`, with
/// `file_mode`.
#[cfg(target_os = "linux")]
fn home_with_cache(
    top: &Path,
    owner: (u32, u32),
    mode: u32,
    file_owner: (u32, u32),
    file_mode: u32,
    content: &str,
) -> (PathBuf, PathBuf) {
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = top.join("home");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1)).unwrap();
    // After the owner: a change of owner clears the setgid bit.
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    let path = dir.join("cache.json");
    fs::write(&path, content).unwrap();
    std::os::unix::fs::chown(&path, Some(file_owner.0), Some(file_owner.1)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(file_mode)).unwrap();
    (dir, path)
}

/// The names in `dir`, sorted.
#[cfg(target_os = "linux")]
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The refusal [`write_as_another_user`] prints for a file owned by `owner` that a writer
/// running as `ours` (its new file's owner and group) may not give that owner. The paths in
/// its commands are quoted for the shell (temporary directories hold no `'`).
#[cfg(target_os = "linux")]
fn refusal(path: &Path, owner: (u32, u32), ours: (u32, u32)) -> String {
    let dir = path.parent().unwrap().display();
    let file = path.display();
    format!(
        "error: could not replace the token cache {path}: it belongs to uid {} gid {}, and \
         this process (uid {} gid {}) may not give the new file that owner, so it was left as \
         it is rather than taken from its owner: update the token cache as uid {}, or share it \
         through a group: make its directory setgid to a group both users are in, which may \
         write to it (chgrp <group> '{dir}'; chmod g+rwxs '{dir}'), and the file that \
         group's, which may read and write it (chgrp <group> '{file}'; chmod g+rw '{file}')\n",
        owner.0,
        owner.1,
        ours.0,
        ours.1,
        owner.0,
        path = path.display(),
    )
}

/// A process that may not give the replacement the file's owner (a user writing a file another
/// user owns in a directory of theirs, the group not shared) leaves the file as it is, rather
/// than take it over, and says whose it is and what to do.
#[cfg(target_os = "linux")]
#[test]
fn a_file_this_process_may_not_give_its_owner_is_left_as_it_is() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let (dir, path) = home_with_cache(
        top.path(),
        (WRITER, WRITER),
        0o700,
        OTHER_OWNER,
        0o666,
        content,
    );
    let stdout = write_as(WRITER, WRITER, &[], &path);
    assert!(
        stdout.contains(&refusal(&path, OTHER_OWNER, (WRITER, WRITER))),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    assert_eq!(owner(&path), OTHER_OWNER);
    assert_eq!(
        names_in(&dir),
        ["cache.json"],
        "no temporary or lock file left"
    );
}

/// A user's own cache file whose group they may not give a file (a group they are not in:
/// copied from another system, or made by root's tools) is updated, the new file keeping the
/// user's group and getting no group permission, so that no group gains access. Before, the
/// write was refused and the user could not update their own cache.
#[cfg(target_os = "linux")]
#[test]
fn an_own_file_of_a_group_this_process_may_not_give_is_replaced_without_group_access() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let (dir, path) = home_with_cache(
        top.path(),
        (WRITER, WRITER),
        0o700,
        (WRITER, OTHER_OWNER.1),
        0o664,
        r#"{"AccessToken": {"old": {}}}"#,
    );
    let stdout = write_as(WRITER, WRITER, &[], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(file_keys(&path), ["old", "theirs"]);
    assert_eq!(owner(&path), (WRITER, WRITER));
    assert_eq!(
        mode(&path),
        0o604,
        "the group's bits dropped, the rest kept"
    );
    assert_eq!(names_in(&dir), ["cache.json"]);
}

/// A group the ownership tests share files through.
#[cfg(target_os = "linux")]
const SHARED: u32 = 23456;

/// A cache shared by a group's members (a directory setgid to that group, the file the
/// group's and group-writable) is updated by a member though another member owns the file:
/// the new file is the writer's, the group and mode kept. Before, the write was refused.
/// Without the group's write permission on the file, it is still refused. The writer is in
/// the group as a supplementary group, its new file getting the group from the directory.
#[cfg(target_os = "linux")]
#[test]
fn a_file_shared_through_a_setgid_directory_is_replaced_by_a_member_of_its_group() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let file_owner = (OTHER_OWNER.0, SHARED);
    let (dir, path) = home_with_cache(top.path(), (0, SHARED), 0o2770, file_owner, 0o640, content);
    // The group may only read it: not shared for writing.
    let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
    assert!(
        stdout.contains(&refusal(&path, file_owner, (WRITER, SHARED))),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    assert_eq!(owner(&path), file_owner);
    assert_eq!(names_in(&dir), ["cache.json"]);

    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    // A writer not in the group, in a directory anyone may write (its new file has the
    // group all the same), the file readable by anyone: not a member sharing it. Before, it
    // took the file.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2777)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
    let stdout = write_as(WRITER, WRITER, &[], &path);
    assert!(
        stdout.contains(&refusal(&path, file_owner, (WRITER, SHARED))),
        "{stdout}"
    );
    assert_eq!(owner(&path), file_owner);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2770)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();

    let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(file_keys(&path), ["old", "theirs"]);
    assert_eq!(owner(&path), (WRITER, SHARED));
    assert_eq!(mode(&path), 0o660);
    assert_eq!(names_in(&dir), ["cache.json"]);
}

/// A group-writable directory that is not setgid shares no file, even with a writer whose
/// primary group is the file's: the former owner, whose primary group may be another, could
/// not update the file the writer took (its new file would have the other group), locked out
/// of their own cache. Before, the writer took the file.
#[cfg(target_os = "linux")]
#[test]
fn a_file_of_a_shared_group_in_a_directory_not_setgid_is_left_as_it_is() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let file_owner = (OTHER_OWNER.0, SHARED);
    let (dir, path) = home_with_cache(top.path(), (0, SHARED), 0o770, file_owner, 0o660, content);
    let stdout = write_as(WRITER, SHARED, &[], &path);
    assert!(
        stdout.contains(&refusal(&path, file_owner, (WRITER, SHARED))),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    assert_eq!(owner(&path), file_owner);
    assert_eq!(names_in(&dir), ["cache.json"]);

    // Setgid to another group: not shared either (the new file has the directory's group).
    let other_group = OTHER_OWNER.1;
    std::os::unix::fs::chown(&dir, None, Some(other_group)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let stdout = write_as(WRITER, SHARED, &[other_group], &path);
    assert!(
        stdout.contains(&refusal(&path, file_owner, (WRITER, other_group))),
        "{stdout}"
    );
    assert_eq!(owner(&path), file_owner);
}

/// Which ids `stat` shows for an owner outside the user namespace (the overflow id, when the
/// id map is not the identity), decided from the texts of the id map and the overflow id.
#[cfg(target_os = "linux")]
#[test]
fn the_overflow_id_of_a_user_namespace_is_taken_for_an_unmapped_owner() {
    use super::atomic_write::shows_unmapped;
    let identity = "         0          0 4294967295\n";
    // Rootless podman: root is the user, 1..=65536 subordinate ids.
    let rootless = "         0       1000          1\n         1     100000      65536\n";
    let overflow = Some("65534\n");
    assert!(!shows_unmapped(65534, Some(identity), overflow));
    assert!(
        !shows_unmapped(65534, None, overflow),
        "no /proc: no namespace"
    );
    assert!(shows_unmapped(65534, Some(rootless), overflow));
    assert!(shows_unmapped(65534, Some(rootless), None), "the default");
    assert!(
        shows_unmapped(65534, Some(""), overflow),
        "nothing mapped yet"
    );
    for id in [0, 1000, 65533, 65535] {
        assert!(!shows_unmapped(id, Some(rootless), overflow), "{id}");
    }
    assert!(shows_unmapped(4242, Some(rootless), Some("4242")));
    assert!(!shows_unmapped(65534, Some(rootless), Some("4242")));
}

/// An owner or group this process cannot name (outside its user namespace, shown as the
/// overflow id) is never given to the new file: another user's file is refused, the
/// refusal saying the owner is outside the namespace; this process's user's file keeps the new
/// file's group, without group permission. Given them, root gives both.
#[test]
fn an_owner_outside_the_user_namespace_is_never_given() {
    use super::acl::AccessAcl;
    use super::atomic_write::give_owner_unless_unmapped;
    let give_owner_unless_unmapped =
        |file: &File, path: &Path, replaced: &fs::Metadata, unmapped| {
            give_owner_unless_unmapped(file, path, replaced, &AccessAcl::Absent, unmapped)
        };
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, "{}").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    let temp = |name: &str| {
        let temp = dir.path().join(name);
        (
            super::atomic_write::create_new_private(&temp).unwrap(),
            temp,
        )
    };

    std::os::unix::fs::chown(&path, Some(OTHER_OWNER.0), Some(OTHER_OWNER.1)).unwrap();
    let replaced = fs::metadata(&path).unwrap();
    let (file, new) = temp("uid");
    let err = give_owner_unless_unmapped(&file, &path, &replaced, (true, false)).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "it belongs to uid {} gid {} (an overflow id, which stands for any id this user \
             namespace does not map), and this process (uid 0 gid 0) may not give the new \
             file that owner, so it was left as it is rather than taken from its owner: \
             update the token cache as its owner, outside this user namespace, or share",
            OTHER_OWNER.0, OTHER_OWNER.1
        )),
        "{err}"
    );
    assert_eq!(owner(&new), (0, 0));
    let (file, new) = temp("gid");
    assert!(give_owner_unless_unmapped(&file, &path, &replaced, (false, true)).is_err());
    assert_eq!(owner(&new), (0, 0));
    let (file, new) = temp("mapped");
    assert_eq!(
        give_owner_unless_unmapped(&file, &path, &replaced, (false, false)).unwrap(),
        0
    );
    assert_eq!(owner(&new), OTHER_OWNER);

    std::os::unix::fs::chown(&path, Some(0), Some(OTHER_OWNER.1)).unwrap();
    let replaced = fs::metadata(&path).unwrap();
    let (file, new) = temp("own");
    assert_eq!(
        give_owner_unless_unmapped(&file, &path, &replaced, (false, true)).unwrap(),
        0o070,
        "no group permission"
    );
    assert_eq!(owner(&new), (0, 0));
}

/// Paths in the commands of error messages are quoted for a POSIX shell: the command the
/// shell runs gets the path as it is, whatever it holds. Before, a space or a quote in it
/// split it or broke the command.
#[test]
fn paths_in_suggested_commands_are_quoted_for_the_shell() {
    for path in [
        "/tmp/plain",
        "/home/o'brien/.azure/msal cache",
        "''",
        "-starts-with-a-dash",
        "$HOME `id` \"x\" \\ \n;|&*",
    ] {
        let word = shell_word(Path::new(path));
        let output = std::process::Command::new("sh")
            .args(["-c", &format!("printf %s {word}")])
            .output()
            .unwrap();
        assert!(output.status.success(), "{word}");
        let expected = if path.starts_with('-') {
            format!("./{path}")
        } else {
            path.to_owned()
        };
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "{word}");
    }
    assert_eq!(shell_word(Path::new("/a/it's")), r"'/a/it'\''s'");
    // Bytes that are not UTF-8 stay themselves (shown lossily, they named another file).
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::OsStr::from_bytes(b"/tmp/a\xff\x80b'c\xc3");
    let word = shell_word(Path::new(path));
    let output = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s {word}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{word}");
    assert_eq!(output.stdout, path.as_bytes(), "{word}");
}

/// A cache file with another hard link (`msal.cache.nocae` linked to `msal.cache`) is not
/// replaced: a rename would give one name a file of its own and leave the other with the old
/// tokens for the tools that read it. Before, the link was silently split.
#[tokio::test]
async fn a_hard_linked_cache_file_is_left_as_it_is_and_the_error_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (path, other) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    let content = r#"{"AccessToken": {"old": {}}}"#;
    fs::write(&other, content).unwrap();
    fs::hard_link(&other, &path).unwrap();
    for file in [
        CacheFile::<JsonDoc>::new(path.clone(), None),
        CacheFile::<JsonDoc>::new(path.clone(), Some(other.clone())),
    ] {
        let err = file.modify(|doc| doc.add("new")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "could not replace the token cache {path}: it has 2 hard links (other names of \
                 the same file), which replacing it would separate, so it was left as it is: \
                 make the other names symbolic links to it (ln -sf), or remove them; to find \
                 them, run `find '{dir}' -xdev -samefile '{path}'` (with the file system's \
                 mount point for {dir} to search all of it)",
                path = path.display(),
                dir = dir.path().display(),
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
        assert_eq!(fs::read_to_string(&other).unwrap(), content);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(
            leftovers.len(),
            2,
            "no temporary or lock file left: {leftovers:?}"
        );
    }
    // Once the other name is a symbolic link, writes go through.
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&other, &path).unwrap();
    CacheFile::<JsonDoc>::new(path.clone(), None)
        .modify(|doc| doc.add("new"))
        .await
        .unwrap();
    assert_eq!(file_keys(&other), ["old", "new"]);
}

/// A signal file that is a symlink to a missing file (in a directory that exists) is touched
/// through the link, as the cache file is written: the target is created, the link kept.
#[cfg(all(feature = "keyring", target_os = "linux"))]
#[test]
fn a_dangling_symlink_at_the_signal_path_is_touched_through() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    let target = dir.path().join("real/msal.cache.nocae");
    let signal = dir.path().join("msal.cache.nocae");
    std::os::unix::fs::symlink(&target, &signal).unwrap();
    super::keyring::touch(&signal).unwrap();
    let meta = fs::symlink_metadata(&target).unwrap();
    assert!(meta.is_file(), "the target is a regular file");
    assert_eq!(meta.len(), 0, "created empty");
    assert_eq!(mode(&target), 0o600);
    assert!(
        fs::symlink_metadata(&signal).unwrap().is_symlink(),
        "the link is kept"
    );
    assert_eq!(fs::read_link(&signal).unwrap(), target);
}

/// A writer killed between creating its temporary file and renaming it leaves the tokens in
/// plaintext beside the cache: the next write removes such files once they are old enough to
/// be no live writer's, and leaves the rest alone.
#[tokio::test]
async fn temporary_files_a_dead_writer_left_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let beside = |name: &str| dir.path().join(name);
    for name in [
        "cache.json.tmp.4242.old",
        "cache.json.tmp.4243.recent",
        "other.json.tmp.4242.old",
        "cache.json.tmp.4244.ahead",
        "cache.json.tmp.4245.slightly-ahead",
    ] {
        fs::write(beside(name), "{\"secret\": \"left\"}").unwrap();
    }
    // Dated ahead of the clock, as far from now as an old one: the clock stepped back since.
    set_ahead(
        &beside("cache.json.tmp.4244.ahead"),
        Duration::from_secs(3600),
    );
    set_ahead(
        &beside("cache.json.tmp.4245.slightly-ahead"),
        Duration::from_secs(60),
    );
    set_mtime(
        &beside("cache.json.tmp.4242.old"),
        Duration::from_secs(3600),
    );
    set_mtime(
        &beside("other.json.tmp.4242.old"),
        Duration::from_secs(3600),
    );
    set_mtime(
        &beside("cache.json.tmp.4243.recent"),
        Duration::from_secs(60),
    );
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        beside("other.json.tmp.4242.old"),
        beside("cache.json.tmp.link"),
    )
    .unwrap();

    CacheFile::<JsonDoc>::new(path.clone(), None)
        .modify(|doc| doc.add("a"))
        .await
        .unwrap();

    assert!(
        !beside("cache.json.tmp.4242.old").exists(),
        "a dead writer's"
    );
    assert!(
        beside("cache.json.tmp.4243.recent").exists(),
        "perhaps a live writer's"
    );
    assert!(
        !beside("cache.json.tmp.4244.ahead").exists(),
        "a dead writer's, before the clock was stepped back"
    );
    assert!(
        beside("cache.json.tmp.4245.slightly-ahead").exists(),
        "perhaps a live writer's, on a host whose clock runs ahead"
    );
    assert!(
        beside("other.json.tmp.4242.old").exists(),
        "another cache's"
    );
    #[cfg(unix)]
    assert!(
        fs::symlink_metadata(beside("cache.json.tmp.link")).is_ok(),
        "not a regular file"
    );
    assert_eq!(file_keys(&path), ["a"]);
}

/// The legacy file is read while the file does not exist, and only ever read: the first write
/// that changes the document creates the file from the legacy file's content. A write that
/// changes nothing creates nothing.
#[tokio::test]
async fn the_legacy_file_is_read_in_the_files_place_and_copied_into_it_by_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    fs::write(&legacy, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let before = fs::read(&legacy).unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
    assert_eq!(file.files(), [path.clone(), legacy.clone()]);
    assert_eq!(file.read().await.unwrap().keys(), ["old"]);
    file.modify(|_| ()).await.unwrap();
    assert!(!path.exists(), "nothing changed, nothing written");

    file.modify(|doc| doc.add("new")).await.unwrap();
    let mut keys = file_keys(&path);
    keys.sort();
    assert_eq!(keys, ["new", "old"]);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read(&legacy).unwrap(), before, "never written");
    let mut read = file.read().await.unwrap().keys();
    read.sort();
    assert_eq!(read, ["new", "old"]);

    // An older tool writes the legacy file again: it is no longer read.
    fs::write(&legacy, r#"{"AccessToken": {"older": {}}}"#).unwrap();
    let mut read = file.read().await.unwrap().keys();
    read.sort();
    assert_eq!(read, ["new", "old"]);
}

/// A file another writer creates after the legacy file was read is read at once, and is the
/// one changed: whether it exists is decided again under its lock.
#[tokio::test]
async fn a_file_created_after_the_legacy_one_was_read_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    fs::write(&legacy, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
    assert_eq!(file.read().await.unwrap().keys(), ["old"]);

    fs::write(&path, r#"{"AccessToken": {"theirs": {}}}"#).unwrap();
    assert_eq!(file.read().await.unwrap().keys(), ["theirs"]);
    file.modify(|doc| doc.add("mine")).await.unwrap();
    let mut keys = file_keys(&path);
    keys.sort();
    assert_eq!(keys, ["mine", "theirs"]);
    assert_eq!(file_keys(&legacy), ["old"]);
}

/// What is at the legacy path is ignored unless it is a regular file (a directory there is no
/// cache), and a legacy file that does not parse is reported, never replaced by a new file.
#[tokio::test]
async fn a_legacy_path_that_is_no_file_is_ignored_and_a_malformed_one_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    fs::create_dir(&legacy).unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
    let first = file.read().await.unwrap();
    assert!(first.keys().is_empty());
    // Nothing changed: the copy read is kept (before, a directory there reloaded every read).
    assert!(Arc::ptr_eq(&first, &file.read().await.unwrap()));
    fs::remove_dir(&legacy).unwrap();

    fs::write(&legacy, "{not json").unwrap();
    let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
    assert!(file.read().await.unwrap_err().is_malformed());
    let err = file.modify(|doc| doc.add("k")).await.unwrap_err();
    assert!(err.is_malformed(), "{err}");
    // The legacy file's full path, not the file's (whose name starts the same).
    let message = err.to_string();
    assert!(
        message.contains(&format!("token cache {} is not", legacy.display())),
        "{err}"
    );
    assert!(!message.contains(".nocae"), "{err}");
    assert!(!path.exists());
}

/// The first write copies the legacy file whole. Its writers (azure-identity before 1.16,
/// MSAL.NET) take only `msal.cache.lockfile` and write in place, truncating first: the copy
/// waits for that lock, and an empty legacy file written just now is read again. Before, the
/// copy took an empty legacy file for an empty cache and created the file without the
/// legacy accounts, hiding them for good.
#[tokio::test]
async fn the_first_write_copies_the_legacy_file_under_its_lock_and_waits_out_an_in_place_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    const OLD: &str = r#"{"AccessToken": {"old": {}}}"#;

    // An older tool holds the legacy file's lock, its write truncated and not yet done.
    fs::write(&legacy, "").unwrap();
    let lock = plant_lock(&legacy, std::process::id(), "python3", Duration::ZERO);
    let file = CacheFile::<JsonDoc>::with_lock_timeout(
        path.clone(),
        Some(legacy.clone()),
        Duration::from_millis(300),
    );
    let err = file.modify(|doc| doc.add("mine")).await.unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string().contains(&lock.display().to_string()),
        "{err}"
    );
    assert!(!path.exists(), "no copy of the half-written legacy file");
    assert!(
        !lock_path_of(&path).exists(),
        "the file's lock is released too"
    );
    fs::write(&legacy, OLD).unwrap();
    fs::remove_file(&lock).unwrap();
    file.modify(|doc| doc.add("mine")).await.unwrap();
    let mut keys = file_keys(&path);
    keys.sort();
    assert_eq!(keys, ["mine", "old"]);
    assert!(!lock.exists(), "the legacy file's lock is released");

    // A writer that takes no lock: the legacy file is read while it is being written.
    fs::remove_file(&path).unwrap();
    fs::write(&legacy, "").unwrap();
    set_recent(&legacy);
    writer_finishing::<1>(&legacy, OLD);
    let file = CacheFile::<Finishing<1>>::new(path.clone(), Some(legacy.clone()));
    file.modify(|doc| doc.0.add("mine")).await.unwrap();
    assert!(IN_PLACE_WRITE[1].lock().unwrap().is_none());
    let mut keys = file_keys(&path);
    keys.sort();
    assert_eq!(keys, ["mine", "old"]);
}

/// [`LegacyWrites::Skip`]: while only the legacy file exists, a change is not made (nor
/// asked for), no file is created and no lock is left; once the file exists, or when neither
/// does, the change is written as usual.
#[tokio::test]
async fn a_skipping_writer_never_creates_the_file_from_the_legacy_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
    file.modify_with(LegacyWrites::Skip, |doc| doc.add("none"))
        .await
        .unwrap();
    assert_eq!(file_keys(&path), ["none"], "no legacy file: written");
    fs::remove_file(&path).unwrap();

    fs::write(&legacy, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let err = file
        .modify_with(LegacyWrites::Skip, |_| panic!("not asked for"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the token cache was not written: only the legacy {} exists, which the \
             application that signed in writes; a credential that reads its sign-in does not \
             create {} from it, which would hide that application's later changes",
            legacy.display(),
            path.display()
        )
    );
    assert!(!path.exists());
    assert!(!lock_path_of(&path).exists() && !lock_path_of(&legacy).exists());
    assert_eq!(file.read().await.unwrap().keys(), ["old"]);

    fs::write(&path, r#"{"AccessToken": {"theirs": {}}}"#).unwrap();
    file.modify_with(LegacyWrites::Skip, |doc| doc.add("mine"))
        .await
        .unwrap();
    let mut keys = file_keys(&path);
    keys.sort();
    assert_eq!(keys, ["mine", "theirs"]);
    assert_eq!(file_keys(&legacy), ["old"]);
}

/// `msal.cache.nocae` a symlink to the legacy `msal.cache` (a workaround used after
/// azure-identity 1.16): a write replaces the legacy file, which the older tools write under
/// `msal.cache.lockfile` only, so it takes that lock too. Before, it took only
/// `msal.cache.nocae.lockfile` and wrote while an older tool held the legacy lock.
#[tokio::test]
async fn a_file_linked_to_the_legacy_one_is_written_under_both_locks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, legacy) = (
        dir.path().join("msal.cache.nocae"),
        dir.path().join("msal.cache"),
    );
    fs::write(&legacy, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    std::os::unix::fs::symlink(&legacy, &path).unwrap();
    let lock = plant_lock(&legacy, std::process::id(), "python3", Duration::ZERO);
    let file = CacheFile::<JsonDoc>::with_lock_timeout(
        path.clone(),
        Some(legacy.clone()),
        Duration::from_millis(300),
    );
    let err = file.modify(|doc| doc.add("mine")).await.unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(
        err.to_string().contains(&lock.display().to_string()),
        "{err}"
    );
    assert_eq!(file_keys(&legacy), ["old"]);
    assert!(!lock_path_of(&path).exists(), "the file's lock is released");

    fs::remove_file(&lock).unwrap();
    file.modify(|doc| doc.add("mine")).await.unwrap();
    let mut keys = file_keys(&legacy);
    keys.sort();
    assert_eq!(keys, ["mine", "old"], "written through the link");
    assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
    assert!(!lock.exists() && !lock_path_of(&path).exists());
}
