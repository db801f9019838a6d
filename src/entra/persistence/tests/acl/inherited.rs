//! The access ACL a new file inherits from its directory's default ACL: removed before the
//! mode is set, having been asked for first.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use super::super::{CacheFile, JsonDoc, file_keys, mode, require_root};
use super::{
    ACCESS_ACL, DEFAULT_ACL, acl_of, group_entry, mask_entry, other_entry, owner_entry, set_acl,
};
use crate::entra::persistence::acl::USER;

/// A directory's default ACL reaches no cache file: the new temporary file inherits an
/// access ACL from it, whose mask the mode's group bits then set, letting in the users it
/// names. A new file is 0600 without an ACL, and a file without one is replaced by one
/// without, its mode kept. Before, both had the inherited ACL, its user 1 reading the second.
#[tokio::test]
async fn a_directory_default_acl_reaches_no_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    set_acl(
        dir.path(),
        DEFAULT_ACL,
        &[
            owner_entry(7),
            (USER, 7, 1),
            group_entry(5),
            mask_entry(7),
            other_entry(5),
        ],
    );
    let new = dir.path().join("new.json");
    CacheFile::<JsonDoc>::new(new.clone(), None)
        .modify(|doc| doc.add("new"))
        .await
        .unwrap();
    assert_eq!(file_keys(&new), ["new"]);
    assert_eq!(acl_of(&new), None);
    assert_eq!(mode(&new), 0o600);

    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    assert!(acl_of(&path).is_some(), "the default ACL is inherited");
    rustix::fs::removexattr(&path, ACCESS_ACL).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    CacheFile::<JsonDoc>::new(path.clone(), None)
        .modify(|doc| doc.add("new"))
        .await
        .unwrap();
    assert_eq!(file_keys(&path), ["old", "new"]);
    assert_eq!(acl_of(&path), None);
    assert_eq!(mode(&path), 0o640);
}

/// The immutable flag of a file (`chattr +i`), set until dropped, so that the test's
/// directory can be removed whatever happens.
struct Immutable<'a>(&'a fs::File);

impl<'a> Immutable<'a> {
    fn set(file: &'a fs::File) -> Self {
        use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
        ioctl_getflags(file)
            .and_then(|flags| ioctl_setflags(file, flags | IFlags::IMMUTABLE))
            .unwrap_or_else(|e| {
                panic!("chattr +i: {e}: the test needs CAP_LINUX_IMMUTABLE, and ext4 or xfs")
            });
        Self(file)
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
        if let Ok(flags) = ioctl_getflags(self.0) {
            let _ = ioctl_setflags(self.0, flags - IFlags::IMMUTABLE);
        }
    }
}

/// The ACL a new file may inherit is asked for before it is removed: some file systems (9p,
/// FUSE) refuse a removal before they look for the attribute, which failed every write on
/// them. An immutable file stands for them: the kernel refuses to remove its attributes
/// (`EPERM`) before it looks too. Without an ACL, the file passes; with one that cannot be
/// removed, the write would fail, naming `setfacl -k` on the directory. Before, both failed.
#[test]
fn an_inherited_acl_is_asked_for_before_it_is_removed() {
    use crate::entra::persistence::acl::remove_inherited;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json.tmp");
    fs::write(&path, "{}").unwrap();
    let file = fs::File::open(&path).unwrap();
    let immutable = Immutable::set(&file);
    let removed = remove_inherited(&file, dir.path());
    drop(immutable);
    removed.unwrap();

    let inherited = [
        owner_entry(6),
        (USER, 6, 1),
        group_entry(4),
        mask_entry(6),
        other_entry(0),
    ];
    set_acl(&path, ACCESS_ACL, &inherited);
    let immutable = Immutable::set(&file);
    let removed = remove_inherited(&file, dir.path());
    drop(immutable);
    let err = removed.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(
        err.to_string(),
        format!(
            "could not remove the ACL it inherited from its directory's default ACL ({}), \
             which would let in users the token cache did not: remove the directory's default \
             ACL (setfacl -k '{}')",
            rustix::io::Errno::PERM,
            dir.path().display()
        )
    );
    assert_eq!(acl_of(&path).as_deref(), Some(&inherited[..]));
}
