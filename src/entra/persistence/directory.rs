//! The directory of a cache file, resolved: the key of its steps ([`Steps::of_directory`]),
//! and with the file's name, of the registry ([`CacheFile::shared`](super::CacheFile::shared)).
//!
//! Resolving it is file I/O, done when a credential is built (`build()` is synchronous): it
//! runs on a thread of its own, waited for [`READ_TIMEOUT`] at most by the builder; past that
//! the directory as named (made absolute) stands for it, with a warning, and the resolution
//! goes on on its thread. The process keeps, by the directory as named, the steps its key was
//! given to while they are held (by a file's object, or a step that has not returned), and its
//! resolution while that has not returned: meanwhile a file named in that directory gets those
//! steps at once, or that resolution's key (waiting for it until its bound), and the directory
//! is not resolved again. So a credential built again while a step there hangs is refused as
//! the others are, instead of blocking in `build()` on the mount that does not answer, and a
//! resolution that hangs holds up one build, not each. Once nothing of it is held, the next
//! build resolves it again rather than keeping it for the process's life: a symlink changed
//! since is followed then (while files of the directory are in use, the key stays the one they
//! have, the directory the symlink named before: it only says which objects are shared; each
//! does its I/O by the path it was given), and memory holds only directories in use.
//!
//! A directory that does not exist yet (the first lock step creates it) is resolved as it will
//! be once created: its nearest existing ancestor resolved, the rest of its path appended, a
//! `..` there taken lexically (the component it follows will be a directory created by then,
//! not a symlink). Otherwise (the rest unreadable, say: an error other than "not found") the
//! rest is appended as it is, `..` kept: two spellings of one directory may then be two keys,
//! but two directories are never one.

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
    /// When those waiting stop waiting: [`READ_TIMEOUT`] after it started.
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
    let steps = Steps::of_directory(key.clone());
    let mut known = known();
    if let Some(entry) = known.get_mut(directory) {
        // Unless another resolution was started since, or another file was given the key.
        let given = entry.given.as_ref().is_some_and(|(_, s)| s.is_held());
        if Arc::ptr_eq(&entry.resolution, &resolution) && !given {
            entry.given = Some((key.clone(), steps.downgrade()));
        }
    }
    (key, steps)
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
                let returned = Returned(resolution);
                let key = resolve(&name);
                lock(&returned.0.outcome).key.get_or_insert(key);
            });
        if let Err(error) = started {
            let mut outcome = lock(&self.outcome);
            outcome.returned = true;
            if outcome.key.is_none() {
                tracing::warn!(
                    directory = %directory.display(),
                    %error,
                    "token cache: no thread to resolve its directory: using it as named"
                );
                outcome.key = Some(directory.to_path_buf());
            }
        }
    }

    /// Its key, once its thread has returned or its deadline has passed: then the directory
    /// as `named`, if not settled before, with a warning (see the module docs).
    fn key(&self, named: &Path) -> PathBuf {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(key) = &outcome.key {
                return key.clone();
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if outcome.returned {
                tracing::warn!(
                    directory = %named.display(),
                    "token cache: resolving its directory panicked: using it as named"
                );
            } else if left.is_zero() {
                tracing::warn!(
                    directory = %named.display(),
                    timeout = %super::error::seconds(READ_TIMEOUT),
                    "token cache: its directory was not resolved within the timeout (a file \
                     system that does not answer?): using it as named; its resolution goes on \
                     on a thread of its own"
                );
            } else {
                outcome = self
                    .returned
                    .wait_timeout(outcome, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            outcome.key = Some(named.to_path_buf());
            return named.to_path_buf();
        }
    }
}

/// A resolution's thread: marks it returned and wakes those waiting when dropped.
struct Returned(Arc<Resolution>);

impl Drop for Returned {
    fn drop(&mut self) {
        lock(&self.0.outcome).returned = true;
        self.0.returned.notify_all();
    }
}

/// `directory` (absolute) resolved as it is, or will be once created (see the module docs).
pub(super) fn resolve(directory: &Path) -> PathBuf {
    // The components not resolved, last first, and whether the first of them was not found.
    let mut rest = Vec::new();
    let mut missing = false;
    let mut ancestor = directory;
    loop {
        match fs::canonicalize(ancestor) {
            Ok(mut resolved) => {
                for component in rest.into_iter().rev() {
                    match component {
                        // Only after a component that does not exist (nor anything below it).
                        Component::ParentDir if missing => {
                            resolved.pop();
                        }
                        component => resolved.push(component),
                    }
                }
                return resolved;
            }
            Err(error) => {
                let (Some(parent), Some(last)) =
                    (ancestor.parent(), ancestor.components().next_back())
                else {
                    return directory.to_path_buf();
                };
                rest.push(last);
                // Not a symlink whose target is missing: nothing there (the parent is looked
                // at next; if it resolves, this says what its last component is).
                missing = error.kind() == io::ErrorKind::NotFound
                    && fs::symlink_metadata(ancestor)
                        .is_err_and(|error| error.kind() == io::ErrorKind::NotFound);
                ancestor = parent;
            }
        }
    }
}

/// Whether a resolution of the directory named `directory` has not returned.
#[cfg(test)]
pub(super) fn resolving(directory: &Path) -> bool {
    known()
        .get(directory)
        .is_some_and(|entry| !lock(&entry.resolution.outcome).returned)
}
