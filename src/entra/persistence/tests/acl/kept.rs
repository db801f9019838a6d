//! What the new file keeps of the old one's ACL: all of it, or without the entries naming
//! ids this process's user namespace does not map, or without the owning group's
//! permissions; nothing but the mode if the kernel refuses it; and which ACLs are read at all
//! (the kernel's format).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use super::super::{
    CacheFile, JsonDoc, OTHER_OWNER, WRITER, file_keys, home_with_cache, mode, names_in, owner,
    require_root, write_as, write_in_user_namespace,
};
use super::{
    ACCESS_ACL, acl_of, encoded, group_entry, mask_entry, other_entry, owner_entry, set_acl,
};
use crate::entra::persistence::acl::{GROUP, USER};
use crate::test_support::Logs;

/// A cache file with an ACL keeps it: its group bits are the ACL's mask, so the mode alone
/// gave the owning group what the mask allows (here read and write, where its entry allows
/// reading), and the user and group the ACL names lost access. Before, the ACL was dropped.
#[tokio::test]
async fn a_cache_file_keeps_its_acl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, r#"{"AccessToken": {"old": {}}}"#).unwrap();
    let acl = [
        owner_entry(6),
        (USER, 6, 1),
        group_entry(4),
        (GROUP, 4, 2),
        mask_entry(6),
        other_entry(0),
    ];
    set_acl(&path, ACCESS_ACL, &acl);
    assert_eq!(mode(&path), 0o660, "the mask shows as the group bits");
    CacheFile::<JsonDoc>::new(path.clone(), None)
        .modify(|doc| doc.add("new"))
        .await
        .unwrap();
    assert_eq!(file_keys(&path), ["old", "new"]);
    assert_eq!(acl_of(&path).as_deref(), Some(&acl[..]));
    assert_eq!(mode(&path), 0o660);
}

/// In a user namespace that does not map an id the ACL names, the kernel shows that id as
/// `u32::MAX` and refuses to set it (`EINVAL`): the new file gets the ACL without those
/// entries, a warning naming the file, and the write goes on. An ACL naming nobody then is
/// not set, and the group bits are what the owning group had (read), not the mask (read and
/// write). Before, the ACL was dropped whole, the group given read and write.
#[test]
fn acl_entries_a_user_namespace_does_not_map_are_dropped_and_the_write_goes_on() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    // Root's file: `unshare --map-root-user` maps root alone, so user 1 and group 2 are not.
    let (_, path) = home_with_cache(top.path(), (0, 0), 0o755, (0, 0), 0o640, content);
    set_acl(
        &path,
        ACCESS_ACL,
        &[
            owner_entry(6),
            (USER, 4, 0),
            (USER, 6, 1),
            group_entry(4),
            (GROUP, 4, 2),
            mask_entry(6),
            other_entry(0),
        ],
    );
    let stdout = write_in_user_namespace(&path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert!(
        stdout.contains("names users or groups this process's user namespace does not map")
            && stdout.contains(&format!("path={}", path.display()))
            && stdout.contains("entries=2"),
        "{stdout}"
    );
    assert_eq!(file_keys(&path), ["old", "theirs"]);
    assert_eq!(
        acl_of(&path),
        Some(vec![
            owner_entry(6),
            (USER, 4, 0),
            group_entry(4),
            mask_entry(6),
            other_entry(0)
        ])
    );
    assert_eq!(mode(&path), 0o660);

    // Without the entry the first write added, so that the writer has something to write.
    fs::write(&path, content).unwrap();
    set_acl(
        &path,
        ACCESS_ACL,
        &[
            owner_entry(6),
            (USER, 6, 1),
            group_entry(4),
            mask_entry(6),
            other_entry(0),
        ],
    );
    let stdout = write_in_user_namespace(&path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(acl_of(&path), None);
    assert_eq!(mode(&path), 0o640, "the owning group's entry, not the mask");
}

/// A user's own file whose group they may not give keeps its ACL with the owning group's
/// entry emptied: the new file's group is another, which must not get what the old group
/// had, while the user the ACL names keeps reading it. Before, the ACL was dropped.
#[test]
fn an_own_file_of_a_group_this_process_may_not_give_keeps_its_acl_but_the_groups_entry() {
    require_root();
    let top = tempfile::tempdir().unwrap();
    let (dir, path) = home_with_cache(
        top.path(),
        (WRITER, WRITER),
        0o700,
        (WRITER, OTHER_OWNER.1),
        0o660,
        r#"{"AccessToken": {"old": {}}}"#,
    );
    set_acl(
        &path,
        ACCESS_ACL,
        &[
            owner_entry(6),
            (USER, 4, 1),
            group_entry(6),
            mask_entry(6),
            other_entry(0),
        ],
    );
    let stdout = write_as(WRITER, WRITER, &[], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(file_keys(&path), ["old", "theirs"]);
    assert_eq!(owner(&path), (WRITER, WRITER));
    assert_eq!(
        acl_of(&path),
        Some(vec![
            owner_entry(6),
            (USER, 4, 1),
            group_entry(0),
            mask_entry(6),
            other_entry(0)
        ])
    );
    assert_eq!(names_in(&dir), ["cache.json"]);
}

/// An ACL the kernel refuses to set leaves the new file with a warning naming the file, no
/// ACL and the old mode, its group bits what the owning group had (its entry within the mask:
/// read), not the mask (read and write); the tokens are written all the same. The kernel
/// refuses entries out of its order, which the parser refuses to read, so the ACL is made
/// here.
#[test]
fn an_acl_the_kernel_refuses_leaves_the_new_file_its_mode_and_a_warning() {
    use crate::entra::persistence::acl::{AccessAcl, Acl, Entry};
    use crate::entra::persistence::atomic_write::{create_new_private, fill};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::write(&path, "{}").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    let replaced = fs::metadata(&path).unwrap();
    let out_of_order = [
        owner_entry(6),
        group_entry(4),
        (USER, 6, 1),
        mask_entry(6),
        other_entry(0),
    ];
    let entries = out_of_order.map(|(tag, perm, id)| Entry { tag, perm, id });
    let acl = AccessAcl::Present(Acl::from_entries(entries.to_vec()));
    let temp = dir.path().join("cache.json.tmp");
    let file = create_new_private(&temp).unwrap();
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        fill(&file, &path, Some(&replaced), &acl, 0, b"tokens")
    })
    .unwrap();
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("WARN")
            && logs.contains("could not give the new token cache file the old one's ACL")
            && logs.contains(&format!("path={}", path.display()))
            && logs.contains(&format!("error={}", rustix::io::Errno::INVAL)),
        "{logs}"
    );
    assert_eq!(fs::read(&temp).unwrap(), b"tokens");
    assert_eq!(acl_of(&temp), None);
    assert_eq!(mode(&temp), 0o640);
}

/// What the kernel's format must hold to be read: anything else is an ACL not understood,
/// which gives the new file no group permission rather than a guess.
#[test]
fn an_acl_is_read_only_in_the_kernels_format() {
    use crate::entra::persistence::acl::Acl;
    /// Entries the kernel refuses for their order.
    const ORDER: &str = "entries not in the kernel's order (the owner, named users, the \
                         owning group, named groups, the mask, others)";
    let minimal = [owner_entry(6), group_entry(4), other_entry(0)];
    assert!(Acl::parse(&encoded(&minimal)).is_ok());
    // The kernel neither sorts named entries by id nor refuses two naming the same id, and
    // gives them back as they were set; a mask needs no named entry.
    let unsorted = [
        owner_entry(6),
        (USER, 6, 5),
        (USER, 4, 1),
        (USER, 0, 5),
        group_entry(4),
        (GROUP, 4, 9),
        (GROUP, 4, 2),
        mask_entry(6),
        other_entry(0),
    ];
    assert!(Acl::parse(&encoded(&unsorted)).is_ok());
    let mask_alone = [
        owner_entry(6),
        group_entry(4),
        mask_entry(6),
        other_entry(0),
    ];
    assert!(Acl::parse(&encoded(&mask_alone)).is_ok());
    let mut version_1 = encoded(&minimal);
    version_1[0] = 1;
    let mut cut = encoded(&minimal);
    cut.pop();
    for (bytes, why) in [
        (vec![2, 0, 0], "shorter than its header"),
        (version_1, "not version 2"),
        (cut, "not a whole number of entries"),
        (
            encoded(&[owner_entry(6), (0x40, 4, 1), group_entry(4), other_entry(0)]),
            "an entry of an unknown kind",
        ),
        (
            encoded(&[owner_entry(8), group_entry(4), other_entry(0)]),
            "permissions beyond read, write and execute",
        ),
        (
            encoded(&[owner_entry(6), group_entry(4)]),
            "not one entry each for the owner, the owning group and others",
        ),
        (
            encoded(&[owner_entry(6), (USER, 4, 1), group_entry(4), other_entry(0)]),
            "named entries without a mask",
        ),
        (
            encoded(&[
                owner_entry(6),
                group_entry(4),
                mask_entry(4),
                mask_entry(6),
                other_entry(0),
            ]),
            "more than one mask",
        ),
        (
            encoded(&[
                owner_entry(6),
                group_entry(4),
                other_entry(0),
                other_entry(0),
            ]),
            ORDER,
        ),
        (
            encoded(&[
                owner_entry(6),
                group_entry(4),
                (USER, 4, 1),
                mask_entry(4),
                other_entry(0),
            ]),
            ORDER,
        ),
        (
            encoded(&[
                owner_entry(6),
                (GROUP, 4, 1),
                group_entry(4),
                mask_entry(4),
                other_entry(0),
            ]),
            ORDER,
        ),
        (
            encoded(&[
                owner_entry(6),
                group_entry(4),
                other_entry(0),
                mask_entry(4),
            ]),
            ORDER,
        ),
        (
            encoded(&[group_entry(4), owner_entry(6), other_entry(0)]),
            ORDER,
        ),
        (
            encoded(&[
                owner_entry(6),
                owner_entry(6),
                group_entry(4),
                other_entry(0),
            ]),
            ORDER,
        ),
    ] {
        assert_eq!(Acl::parse(&bytes), Err(why), "{bytes:?}");
        assert!(
            kernel_takes(&bytes).is_err(),
            "the kernel refuses {bytes:?} too"
        );
    }
    for acl in [&minimal[..], &unsorted, &mask_alone] {
        kernel_takes(&encoded(acl)).unwrap_or_else(|e| panic!("{acl:?}: {e}"));
    }
}

/// Whether the kernel sets `bytes` as a file's access ACL.
fn kernel_takes(bytes: &[u8]) -> rustix::io::Result<()> {
    let file = tempfile::NamedTempFile::new().unwrap();
    rustix::fs::fsetxattr(
        file.as_file(),
        ACCESS_ACL,
        bytes,
        rustix::fs::XattrFlags::empty(),
    )
}
