//! The key of a cache file's directory: resolved as it will be once it exists, kept while its
//! steps are held, and shared by the objects made of any file in it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::CacheFile;
use super::super::directory::{resolve, steps_of};
use super::JsonDoc;
use crate::blocking_read::READ_TIMEOUT;
use crate::blocking_read::tests::within_a_minute;

/// A temporary directory, resolved, holding `real/` and `link -> real`.
fn with_a_link() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(base.join("real")).unwrap();
    symlink(base.join("real"), base.join("link")).unwrap();
    (dir, base)
}

/// A directory that does not exist yet is keyed as it is resolved once created, however it
/// is named: through a symlinked parent, with a `..` after a missing component (lexical, as
/// that component is created a directory) or after a symlink (physical, as the kernel takes
/// it). Before, the name as given was the key until the directory existed.
#[test]
fn a_missing_directory_is_keyed_as_it_is_resolved_once_created() {
    let (_dir, base) = with_a_link();
    for (named, created) in [
        ("link/new/sub", &["real/new/sub"][..]),
        ("link/missing/../other", &["real/missing", "real/other"]),
        ("link/../beside/new", &["beside/new"]),
        ("real/./again", &["real/again"]),
    ] {
        let named = base.join(named);
        let before = resolve(&named);
        for created in created {
            fs::create_dir_all(base.join(created)).unwrap();
        }
        assert_eq!(before, fs::canonicalize(&named).unwrap(), "{named:?}");
        assert_eq!(resolve(&named), before, "{named:?}");
    }
}

/// A `..` after a component that exists but does not resolve (a symlink to nothing) is kept:
/// lexically it would name another directory than the kernel's once the symlink's target
/// exists, and two directories would be one key.
#[test]
fn a_parent_after_a_component_that_does_not_resolve_is_kept() {
    let (_dir, base) = with_a_link();
    symlink(base.join("nowhere/deep"), base.join("dangling")).unwrap();
    let named = base.join("dangling/../cache");
    assert_eq!(resolve(&named), named);
}

/// Two names of one directory not created yet (its first lock step creates it) give one
/// object, whose steps are the directory's: a symlinked parent, a `..`.
#[test]
fn two_names_of_a_missing_directory_are_one_file() {
    let (_dir, base) = with_a_link();
    let real = CacheFile::<JsonDoc>::shared(base.join("real/new/msal.cache.nocae"), None);
    for named in [
        "link/new/msal.cache.nocae",
        "link/x/../new/msal.cache.nocae",
    ] {
        let other = CacheFile::<JsonDoc>::shared(base.join(named), None);
        assert!(Arc::ptr_eq(&real, &other), "{named}");
    }
}

/// A resolver that counts its calls and answers `key`.
fn counted(
    calls: &Arc<AtomicUsize>,
    key: PathBuf,
) -> impl FnOnce(&Path) -> PathBuf + Send + 'static {
    let calls = Arc::clone(calls);
    move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        key
    }
}

/// A directory is resolved once while its steps are held: a file named there meanwhile gets
/// them and their key without resolving it again (a mount that does not answer would hold its
/// build). Once they are let go, the next resolves it again (a symlink changed since is
/// followed).
#[test]
fn a_directory_is_not_resolved_again_while_its_steps_are_held() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        let calls = Arc::new(AtomicUsize::new(0));
        let first = dir.path().join("first");
        let (key, steps) = steps_of(&named, counted(&calls, first.clone()), READ_TIMEOUT);
        assert_eq!((key, calls.load(Ordering::SeqCst)), (first.clone(), 1));

        let (key, again) = steps_of(&named, counted(&calls, dir.path().join("x")), READ_TIMEOUT);
        assert_eq!(key, first);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not resolved again");
        let held = steps.downgrade();
        drop(steps);
        assert!(held.is_held(), "the same steps");
        drop(again);
        assert!(!held.is_held());

        let second = dir.path().join("second");
        let (key, _steps) = steps_of(&named, counted(&calls, second.clone()), READ_TIMEOUT);
        assert_eq!((key, calls.load(Ordering::SeqCst)), (second, 2));
    });
}
