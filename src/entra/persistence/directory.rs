//! The directory of a cache file, resolved: the key of its steps ([`Steps::of_directory`]),
//! and with the file's name, of the registry ([`CacheFile::shared`](super::CacheFile::shared)).
//! The key is a directory's, not a mount's: the files of one directory share their steps
//! (one hung step refuses them all), those of another directory on the same mount do not.
//!
//! Resolving it is file I/O, done when a credential is built (`build()` is synchronous): it
//! runs on a thread of its own, waited for [`READ_TIMEOUT`] at most by the builder; past that
//! the directory as named (made absolute) is its key, with a warning, and the resolution goes
//! on on its thread (another name of that directory, resolved in time, has another key). The
//! process keeps, by the directory as named, the steps its key was given to while they are
//! held (by a file's object, or a step that has not returned), and its resolution while that
//! has not returned: meanwhile a file named in that directory gets those steps at once, or
//! that resolution's key (waiting for it until its bound), and the directory is not resolved
//! again. So a credential built again while a step there hangs is refused as the others are,
//! instead of blocking in `build()` on the mount that does not answer, and a resolution that
//! hangs holds up one build by that name, not each. Once nothing of it is held, the next build
//! resolves it again rather than keeping it for the process's life: a symlink changed since is
//! followed then (while files of the directory are in use, the key stays the one they have,
//! the directory the symlink named before: it only says which objects are shared; each does
//! its I/O by the path it was given), and memory holds only directories in use.
//!
//! A directory that does not exist yet (the first lock step creates it, as `create_dir_all`)
//! is resolved as the kernel will resolve it once created: its nearest ancestor that resolves,
//! then the rest of its path component by component. A name in a directory that exists is
//! looked up (a symlink followed); below a name that is not there, nothing is, and names are
//! appended as they are; a `..` is the parent of the path so far, which names no symlink (out of a
//! directory to be created, it is back in one that exists, where the next name is looked up
//! again: `new/../link/..` is the parent of `link`'s target, not the directory `new` is in).
//! Where a name cannot be looked up (a symlink to nothing, not a directory, no permission: an
//! error other than "not found") the rest is appended as it is, `..` kept: two spellings of
//! one directory may then be two keys, but two directories are never one.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::blocking_read::{READ_TIMEOUT, Steps, THREAD_NAME, WeakSteps};

/// The registry key of the file at `path` (its directory's key and its name) and its
/// directory's steps. Blocking, for [`READ_TIMEOUT`] at most (see the module docs).
pub(super) fn of_file(path: &Path) -> (PathBuf, Steps) {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => {
            let (directory, steps) = steps_of(parent, resolve, READ_TIMEOUT);
            (directory.join(name), steps)
        }
        // No file name (a root, or a path ending in `..`): not a file its I/O can use; keyed
        // by itself.
        _ => steps_of(&absolute, resolve, READ_TIMEOUT),
    }
}

/// What the process knows of a directory, by its name.
struct Known {
    /// Its last resolution, which may not have returned.
    resolution: Arc<Resolution>,
    /// Its key and the steps it was given to, once a file was.
    given: Option<(PathBuf, WeakSteps)>,
}

impl Known {
    /// Whether it is still used: its steps held, or its resolution running.
    fn in_use(&self) -> bool {
        self.given
            .as_ref()
            .is_some_and(|(_, steps)| steps.is_held())
            || !lock(&self.resolution.outcome).returned
    }
}

/// A resolution of a directory on a thread of its own, waited for by every file named there
/// meanwhile.
struct Resolution {
    outcome: Mutex<Outcome>,
    /// Notified when its thread has returned.
    returned: Condvar,
    /// How long those waiting wait for it: [`READ_TIMEOUT`] but in tests.
    timeout: Duration,
    /// When those waiting stop waiting: `timeout` after it started.
    deadline: Instant,
}

#[derive(Default)]
struct Outcome {
    /// The directory's key, once settled: the first of the resolved directory and, when the
    /// deadline passed first, the directory as named. Kept: every file given it has the same.
    key: Option<PathBuf>,
    /// Whether its thread has returned (or none could be started).
    returned: bool,
}

/// The directories known, by their names (absolute): an entry is dropped, when another is
/// added, once it is no longer in use. Locked only to look up, add or change an entry; never
/// across I/O or a wait, and it may take a [`Resolution`]'s lock, never the other way round.
fn known() -> MutexGuard<'static, HashMap<PathBuf, Known>> {
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, Known>>> = OnceLock::new();
    // Whole entries are added, changed and removed: a panic cannot leave one half made.
    KNOWN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn lock(outcome: &Mutex<Outcome>) -> MutexGuard<'_, Outcome> {
    // Its fields are assigned whole.
    outcome.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key of the directory named `directory` (absolute) and its steps: those given to a
/// file named there while they are held; else the key of its resolution still running
/// (waited for until its deadline), or of one started now with `resolve` and waited for
/// `timeout` at most (see the module docs).
pub(super) fn steps_of<R>(directory: &Path, resolve: R, timeout: Duration) -> (PathBuf, Steps)
where
    R: FnOnce(&Path) -> PathBuf + Send + 'static,
{
    let (resolution, start) = {
        let mut known = known();
        let entry = known.get(directory);
        if let Some((key, steps)) = entry.and_then(|entry| entry.given.as_ref()) {
            if let Some(steps) = steps.upgrade() {
                return (key.clone(), steps);
            }
        }
        match entry {
            Some(entry) if !lock(&entry.resolution.outcome).returned => {
                (Arc::clone(&entry.resolution), false)
            }
            _ => {
                known.retain(|_, entry| entry.in_use());
                let resolution = Arc::new(Resolution {
                    outcome: Mutex::default(),
                    returned: Condvar::new(),
                    timeout,
                    deadline: Instant::now()
                        .checked_add(timeout)
                        .unwrap_or_else(Instant::now),
                });
                let entry = Known {
                    resolution: Arc::clone(&resolution),
                    given: None,
                };
                known.insert(directory.to_path_buf(), entry);
                (resolution, true)
            }
        }
    };
    if start {
        // Started with the map's lock released.
        resolution.start(directory, resolve);
    }
    let key = resolution.key(directory);
    #[cfg(test)]
    if let Some(between) = BEFORE_RECORDED.take() {
        between();
    }
    let steps = Steps::of_directory(key.clone());
    let mut known = known();
    match known.get_mut(directory) {
        Some(entry) => {
            // Another file was given a key meanwhile (this resolution's, or a later one's if
            // its entry was let go and made again): that key stays while its steps are held.
            if let Some((key, steps)) = entry
                .given
                .as_ref()
                .and_then(|(key, steps)| steps.upgrade().map(|steps| (key, steps)))
            {
                return (key.clone(), steps);
            }
            // Its resolution, if another, is kept: it is not started again while it runs.
            entry.given = Some((key.clone(), steps.downgrade()));
        }
        // Dropped by another directory's build (`retain`) once this resolution returned, before
        // the key was given: recorded again, or the next build would resolve the directory
        // again while these steps are held, and might get another key.
        None => {
            let entry = Known {
                resolution,
                given: Some((key.clone(), steps.downgrade())),
            };
            known.insert(directory.to_path_buf(), entry);
        }
    }
    (key, steps)
}

#[cfg(test)]
thread_local! {
    /// Run once on this thread between a resolution's key and its being recorded: a test's
    /// way into that gap.
    pub(super) static BEFORE_RECORDED: std::cell::Cell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::Cell::new(None) };
}

impl Resolution {
    /// Runs `resolve` for `directory` on a thread of its own. If no thread can be started,
    /// the directory is not resolved (its name is the key, with a warning).
    fn start<R>(self: &Arc<Self>, directory: &Path, resolve: R)
    where
        R: FnOnce(&Path) -> PathBuf + Send + 'static,
    {
        let (resolution, name) = (Arc::clone(self), directory.to_path_buf());
        let started = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                // Says it returned when dropped, also if `resolve` panics: else every build
                // would wait for it until its deadline.
                let mut returned = Returned {
                    resolution,
                    key: None,
                };
                returned.key = Some(resolve(&name));
            });
        let Err(error) = started else {
            return;
        };
        let named = {
            let mut outcome = lock(&self.outcome);
            outcome.returned = true;
            outcome.key.is_none() && {
                outcome.key = Some(directory.to_path_buf());
                true
            }
        };
        // Those that found it running wait for no thread.
        self.returned.notify_all();
        // With no lock held: a subscriber may do I/O.
        if named {
            tracing::warn!(
                directory = %directory.display(),
                %error,
                "token cache: no thread to resolve its directory: using it as named"
            );
        }
    }

    /// Its key, once its thread has returned or its deadline has passed: then the directory
    /// as `named`, if not settled before, with a warning (see the module docs).
    fn key(&self, named: &Path) -> PathBuf {
        let mut outcome = lock(&self.outcome);
        let panicked = loop {
            if let Some(key) = &outcome.key {
                return key.clone();
            }
            if outcome.returned {
                break true;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            outcome = self
                .returned
                .wait_timeout(outcome, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        outcome.key = Some(named.to_path_buf());
        // With no lock held: a subscriber may do I/O.
        drop(outcome);
        if panicked {
            tracing::warn!(
                directory = %named.display(),
                "token cache: resolving its directory panicked: using it as named"
            );
        } else {
            tracing::warn!(
                directory = %named.display(),
                timeout = %super::error::seconds(self.timeout),
                "token cache: its directory was not resolved within the timeout (a file \
                 system that does not answer?): using it as named; its resolution goes on \
                 on a thread of its own"
            );
        }
        named.to_path_buf()
    }
}

/// A resolution's thread: settles its key, if it has one (none if `resolve` panicked), and
/// marks it returned in one critical section when dropped, then wakes those waiting. One: a
/// build that saw the key must not find the resolution still running and take its key again
/// rather than resolve the directory anew once nothing of it is held.
struct Returned {
    resolution: Arc<Resolution>,
    key: Option<PathBuf>,
}

impl Drop for Returned {
    fn drop(&mut self) {
        {
            let mut outcome = lock(&self.resolution.outcome);
            if let Some(key) = self.key.take() {
                outcome.key.get_or_insert(key);
            }
            outcome.returned = true;
        }
        self.resolution.returned.notify_all();
    }
}

/// `directory` (absolute) resolved as it is, or will be once created (see the module docs).
pub(super) fn resolve(directory: &Path) -> PathBuf {
    // Its nearest ancestor that resolves (itself, mostly), and the components below it, last
    // first.
    let mut rest = Vec::new();
    let mut ancestor = directory;
    let mut resolved = loop {
        match fs::canonicalize(ancestor) {
            Ok(resolved) => break resolved,
            Err(_) => {
                let (Some(parent), Some(last)) =
                    (ancestor.parent(), ancestor.components().next_back())
                else {
                    return directory.to_path_buf();
                };
                rest.push(last);
                ancestor = parent;
            }
        }
    };
    // The rest taken as the kernel will once the directory is created (`create_dir_all`),
    // from a path that names no symlink: there a `..` is the parent as named. How many of
    // its last components are not there (directories that will be created): below those,
    // nothing is; a `..` back out of them is in directories that exist, so a name there is
    // looked up (it may be a symlink, to anywhere).
    let mut created = 0_usize;
    let mut rest = rest.into_iter().rev();
    while let Some(component) = rest.next() {
        match component {
            // Back out of a directory that will be created.
            Component::ParentDir if created > 0 => {
                resolved.pop();
                created = created.saturating_sub(1);
            }
            // Back out of one that exists, if the kernel can: not out of a file (ENOTDIR) or
            // a directory it may not search (EACCES), which would key two directories as one.
            // (The root's parent is the root.)
            Component::ParentDir => match fs::canonicalize(resolved.join("..")) {
                Ok(parent) => resolved = parent,
                Err(_) => {
                    resolved.push("..");
                    resolved.extend(rest);
                    return resolved;
                }
            },
            Component::Normal(name) if created > 0 => {
                resolved.push(name);
                created = created.saturating_add(1);
            }
            Component::Normal(name) => {
                let named = resolved.join(name);
                match fs::canonicalize(&named) {
                    Ok(found) => resolved = found,
                    // Nothing there, not a symlink whose target is missing: created there.
                    Err(error)
                        if error.kind() == io::ErrorKind::NotFound
                            && fs::symlink_metadata(&named)
                                .is_err_and(|error| error.kind() == io::ErrorKind::NotFound) =>
                    {
                        resolved = named;
                        created = 1;
                    }
                    // Not known what it is (a dangling symlink, a file, no permission): the
                    // rest as it is, `..` kept.
                    Err(_) => {
                        resolved = named;
                        resolved.extend(rest);
                        return resolved;
                    }
                }
            }
            // `.` (not after the first component); a root or a prefix is the first.
            component => resolved.push(component),
        }
    }
    resolved
}

/// Whether a resolution of the directory named `directory` has not returned.
#[cfg(test)]
pub(super) fn resolving(directory: &Path) -> bool {
    known()
        .get(directory)
        .is_some_and(|entry| !lock(&entry.resolution.outcome).returned)
}
