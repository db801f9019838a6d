//! The key of a cache file's directory: resolved as it will be once it exists, kept while its
//! steps are held, and shared by the objects made of any file in it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::CacheFile;
use super::super::directory::{BEFORE_RECORDED, resolve, steps_of};
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

/// A temporary directory, resolved, holding `real/sub/`, `link -> real` and
/// `deep -> real/sub` (whose parent is not the directory it is in).
fn with_links() -> (tempfile::TempDir, PathBuf) {
    let (dir, base) = with_a_link();
    fs::create_dir(base.join("real/sub")).unwrap();
    symlink(base.join("real/sub"), base.join("deep")).unwrap();
    (dir, base)
}

/// A directory is keyed as the kernel resolves it once it is created as the first lock step
/// creates it (`create_dir_all` of the name as given), however it is named: plain, through
/// symlinks, with `..` after components that exist, that do not, and back out of those into
/// one that is a symlink. Before, a `..` back out of a missing component was taken lexically
/// from there on: `new/../deep/..` was keyed as the directory `deep` is in, which the kernel
/// takes for `real`, so two directories were one key.
#[test]
fn a_directory_is_keyed_as_the_kernel_resolves_it_once_created() {
    for named in [
        "real",
        "real/sub/..",
        "plain/new",
        "plain/new/..",
        "plain/a/../b",
        "real/./again",
        "link/new/sub",
        "link/missing/../other",
        "link/../beside/new",
        "deep/..",
        "deep/../../x",
        "new/../deep/..",
        "new/../link/sub/..",
        "new/a/../../deep/x",
        "new/../deep/new/..",
        "new/../deep/new/../../y",
    ] {
        let (_dir, base) = with_links();
        let named = base.join(named);
        let key = resolve(&named);
        fs::create_dir_all(&named).unwrap();
        assert_eq!(key, fs::canonicalize(&named).unwrap(), "{named:?}");
        assert_eq!(resolve(&named), key, "{named:?} once created");
    }
}

/// A file named back out of a missing directory through a symlink is not the file of that name
/// in the directory the symlink is in: it is the one in its target's parent, as the kernel
/// takes the name.
#[test]
fn a_file_named_back_out_of_a_missing_directory_through_a_symlink_is_that_file() {
    let (_dir, base) = with_links();
    let named = CacheFile::<JsonDoc>::shared(base.join("new/../deep/../msal.cache.nocae"), None);
    let beside = CacheFile::<JsonDoc>::shared(base.join("msal.cache.nocae"), None);
    let real = CacheFile::<JsonDoc>::shared(base.join("real/msal.cache.nocae"), None);
    assert!(!Arc::ptr_eq(&named, &beside), "another directory's file");
    assert!(Arc::ptr_eq(&named, &real), "the file the kernel names");
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

/// A `..` after a file (or a symlink to one) is kept, as the kernel answers ENOTDIR there:
/// taken as the file's directory, a misnamed cache path would share the object, and so the
/// path, of the file in that directory.
#[test]
fn a_parent_after_a_file_is_kept() {
    let (_dir, base) = with_a_link();
    fs::write(base.join("afile"), b"").unwrap();
    symlink(base.join("afile"), base.join("flink")).unwrap();
    for named in ["afile/..", "flink/..", "new/../afile/..", "afile/../x"] {
        let named = base.join(named);
        let key = resolve(&named);
        let kept = key
            .components()
            .any(|component| component == std::path::Component::ParentDir);
        assert!(kept, "{named:?} kept as named from the file: {key:?}");
        assert_ne!(key, resolve(&base), "{named:?}");
        assert_ne!(key, resolve(&base.join("x")), "{named:?}");
    }
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

/// A directory's key is recorded for the next file named there though its entry was let go
/// between its resolution's return and the key's being given (another directory's build
/// drops entries no longer in use): the next gets the same steps and key, not resolving it
/// again. Before, the key went unrecorded and the directory was resolved again while its
/// steps were held.
#[test]
fn a_key_is_recorded_though_its_entry_was_let_go_meanwhile() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        let other = dir.path().join("other");
        BEFORE_RECORDED.set(Some(Box::new(move || {
            // Its resolution has returned, its key not given yet: not in use.
            let _ = steps_of(&other, Path::to_path_buf, READ_TIMEOUT);
        })));
        let calls = Arc::new(AtomicUsize::new(0));
        let first = dir.path().join("first");
        let (key, steps) = steps_of(&named, counted(&calls, first.clone()), READ_TIMEOUT);
        assert_eq!(key, first);
        assert!(BEFORE_RECORDED.take().is_none(), "let go meanwhile");

        let (key, again) = steps_of(&named, counted(&calls, dir.path().join("x")), READ_TIMEOUT);
        assert_eq!(key, first);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not resolved again");
        let held = steps.downgrade();
        drop(steps);
        assert!(held.is_held(), "the same steps");
        drop(again);
    });
}

/// A file named in a directory whose entry was let go and made again between its
/// resolution's return and its key's being given, and given another key meanwhile (a symlink
/// changed), gets that key and its steps: one name, one key while its steps are held. Before,
/// it kept its own: two objects of one file, with steps of their own.
#[test]
fn a_key_given_meanwhile_by_a_later_resolution_is_the_one_given() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        let second = dir.path().join("second");
        let meanwhile = Arc::new(std::sync::Mutex::new(None));
        BEFORE_RECORDED.set(Some(Box::new({
            let (named, second, meanwhile) = (named.clone(), second.clone(), meanwhile.clone());
            let other = dir.path().join("other");
            move || {
                // Its entry let go (its resolution returned, its key not given), then made
                // again by another build, which resolves it anew and is given its key.
                let _ = steps_of(&other, Path::to_path_buf, READ_TIMEOUT);
                let (key, steps) = steps_of(&named, move |_: &Path| second, READ_TIMEOUT);
                *meanwhile.lock().unwrap() = Some((key, steps));
            }
        })));
        let (key, steps) = steps_of(&named, |_: &Path| PathBuf::from("/first"), READ_TIMEOUT);
        assert!(BEFORE_RECORDED.take().is_none(), "made again meanwhile");
        let (given, held) = meanwhile.lock().unwrap().take().unwrap();
        assert_eq!((&key, &given), (&second, &second));
        let held = {
            let weak = held.downgrade();
            drop(held);
            weak
        };
        assert!(held.is_held(), "the same steps");
        drop(steps);
        assert!(!held.is_held());
    });
}
