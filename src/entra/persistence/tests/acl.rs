//! The cache file's POSIX access ACL across a write (Linux): kept, trimmed, or removed. The
//! tests set and read ACLs through the extended attribute the kernel keeps them in, encoded
//! here by hand, so they need no `setfacl` and do not trust the module's own encoder. The
//! named ids are mapped in the test's user namespace (a container's too): only the writer
//! run in a new namespace ([`write_in_user_namespace`]) lacks them.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::super::acl::{GROUP, GROUP_OBJ, MASK, OTHER, UNMAPPED, USER, USER_OBJ};
use super::{
    CacheFile, JsonDoc, OTHER_OWNER, SHARED, WRITER, file_keys, home_with_cache, mode, names_in,
    owner, refusal, require_root, write_as, write_in_user_namespace,
};

/// The extended attribute holding a file's access ACL.
const ACCESS_ACL: &str = "system.posix_acl_access";
/// The extended attribute holding a directory's default ACL.
const DEFAULT_ACL: &str = "system.posix_acl_default";

/// One ACL entry: tag, permissions, id ([`UNMAPPED`] for the entries that name nobody).
type Entry = (u16, u16, u32);

/// The owner's, owning group's, mask's and others' entries with these permissions.
const fn owner_entry(perm: u16) -> Entry {
    (USER_OBJ, perm, UNMAPPED)
}
const fn group_entry(perm: u16) -> Entry {
    (GROUP_OBJ, perm, UNMAPPED)
}
const fn mask_entry(perm: u16) -> Entry {
    (MASK, perm, UNMAPPED)
}
const fn other_entry(perm: u16) -> Entry {
    (OTHER, perm, UNMAPPED)
}

/// `entries` in the kernel's format: version 2, then tag, permissions and id, little-endian.
fn encoded(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(perm.to_le_bytes());
        bytes.extend(id.to_le_bytes());
    }
    bytes
}

/// Sets the ACL `name` (access or default) of `path` to `entries`.
fn set_acl(path: &Path, name: &str, entries: &[Entry]) {
    rustix::fs::setxattr(
        path,
        name,
        &encoded(entries),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the tests need a file system with POSIX ACLs (ext4, xfs, btrfs, tmpfs do)",
            path.display()
        )
    });
}

/// The access ACL of `path`, if it has one.
fn acl_of(path: &Path) -> Option<Vec<Entry>> {
    let mut value = vec![0; 64 * 1024];
    let len = match rustix::fs::getxattr(path, ACCESS_ACL, &mut value[..]) {
        Ok(len) => len,
        Err(rustix::io::Errno::NODATA) => return None,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let (header, entries) = value[..len].split_at(4);
    assert_eq!(header, 2u32.to_le_bytes(), "version 2");
    let entries = entries
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    Some(entries)
}

/// [`refusal`] for a file with an ACL: its hint for the file's group is `setfacl`'s, which
/// sets the group's own entry, where `chmod g+rw` would set the mask.
fn refusal_with_acl(path: &Path, owner: (u32, u32), ours: (u32, u32)) -> String {
    let file = path.display();
    let chmod = format!("chmod g+rw '{file}')");
    let text = refusal(path, owner, ours);
    assert!(text.contains(&chmod), "{text}");
    text.replace(
        &chmod,
        &format!(
            "setfacl -m g::rw,m::rw '{file}': it has an ACL, whose mask `chmod g+rw` would set \
             rather than the group's own entry)"
        ),
    )
}

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

/// Whether a group shares another user's file, in a directory setgid to that group, is
/// decided by the file's ACL: an ACL whose mask allows reading and writing (the mode shows
/// `rw` group bits) but whose owning-group entry allows reading does not share it, and the
/// refusal names `setfacl`, which `chmod g+rw` would not do; with the group's entry
/// allowing it, a member takes the file over, its ACL kept; so does an ACL that names the
/// former owner, who keeps reading and writing by that entry. Before, the mode decided and
/// the ACL was dropped: the first was taken over, its owner locked out.
#[test]
fn a_group_shares_a_file_with_an_acl_only_if_the_acl_lets_it_read_and_write() {
    require_root();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let file_owner = (OTHER_OWNER.0, SHARED);
    let top = tempfile::tempdir().unwrap();
    let (dir, path) = home_with_cache(top.path(), (0, SHARED), 0o2770, file_owner, 0o660, content);
    let reading = [
        owner_entry(6),
        (USER, 6, 1),
        group_entry(4),
        mask_entry(6),
        other_entry(0),
    ];
    set_acl(&path, ACCESS_ACL, &reading);
    assert_eq!(mode(&path), 0o660);
    let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
    assert!(
        stdout.contains(&refusal_with_acl(&path, file_owner, (WRITER, SHARED))),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), content);
    assert_eq!(owner(&path), file_owner);
    assert_eq!(names_in(&dir), ["cache.json"]);

    // As the refusal says: setfacl -m g::rw,m::rw.
    let writing = [
        owner_entry(6),
        (USER, 6, 1),
        group_entry(6),
        mask_entry(6),
        other_entry(0),
    ];
    set_acl(&path, ACCESS_ACL, &writing);
    let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(owner(&path), (WRITER, SHARED));
    assert_eq!(acl_of(&path).as_deref(), Some(&writing[..]));

    // Shared by name, the group given nothing: the former owner keeps their access, and
    // takes the file back the same way.
    let other = tempfile::tempdir().unwrap();
    let (_, path) = home_with_cache(
        other.path(),
        (0, SHARED),
        0o2770,
        file_owner,
        0o660,
        content,
    );
    let named = [
        owner_entry(6),
        (USER, 6, OTHER_OWNER.0),
        (USER, 6, WRITER),
        group_entry(0),
        mask_entry(6),
        other_entry(0),
    ];
    set_acl(&path, ACCESS_ACL, &named);
    let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(owner(&path), (WRITER, SHARED));
    assert_eq!(acl_of(&path).as_deref(), Some(&named[..]));
    assert_eq!(mode(&path), 0o660);
    fs::write(&path, content).unwrap();
    let stdout = write_as(OTHER_OWNER.0, OTHER_OWNER.1, &[SHARED], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(owner(&path), file_owner);
    assert_eq!(acl_of(&path).as_deref(), Some(&named[..]));
}

/// What the kernel's format must hold to be read: anything else is an ACL not understood,
/// which gives the new file no group permission rather than a guess.
#[test]
fn an_acl_is_read_only_in_the_kernels_format() {
    use super::super::acl::Acl;
    let minimal = [owner_entry(6), group_entry(4), other_entry(0)];
    assert!(Acl::parse(&encoded(&minimal)).is_ok());
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
    ] {
        assert_eq!(Acl::parse(&bytes), Err(why), "{bytes:?}");
    }
}
