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
pub(super) const ACCESS_ACL: &str = "system.posix_acl_access";
/// The extended attribute holding a directory's default ACL.
const DEFAULT_ACL: &str = "system.posix_acl_default";

/// One ACL entry: tag, permissions, id ([`UNMAPPED`] for the entries that name nobody).
pub(super) type Entry = (u16, u16, u32);

/// The owner's, owning group's, mask's and others' entries with these permissions.
pub(super) const fn owner_entry(perm: u16) -> Entry {
    (USER_OBJ, perm, UNMAPPED)
}
pub(super) const fn group_entry(perm: u16) -> Entry {
    (GROUP_OBJ, perm, UNMAPPED)
}
pub(super) const fn mask_entry(perm: u16) -> Entry {
    (MASK, perm, UNMAPPED)
}
pub(super) const fn other_entry(perm: u16) -> Entry {
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
pub(super) fn set_acl(path: &Path, name: &str, entries: &[Entry]) {
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
pub(super) fn acl_of(path: &Path) -> Option<Vec<Entry>> {
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

/// [`refusal`] for a file with an ACL: its hint for the file is `setfacl -m` with `entries`
/// (`g::rw,m::rw`, and the two users' named entries that lack read or write), which sets the
/// group's own entry, where `chmod g+rw` would set the mask.
fn refusal_with_acl(path: &Path, owner: (u32, u32), ours: (u32, u32), entries: &str) -> String {
    let file = path.display();
    let chmod = format!("chmod g+rw '{file}')");
    let text = refusal(path, owner, ours);
    assert!(text.contains(&chmod), "{text}");
    text.replace(
        &chmod,
        &format!(
            "setfacl -m {entries} '{file}': it has an ACL, whose mask `chmod g+rw` would set \
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
        stdout.contains(&refusal_with_acl(
            &path,
            file_owner,
            (WRITER, SHARED),
            "g::rw,m::rw"
        )),
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

/// A takeover leaves its former owner a way back, and lets in no user the ACL lets read
/// alone, the kernel checking a user's named entry before any group's. A member of the
/// file's group is refused a file (in a directory setgid to that group):
/// * shared by an entry naming its owner, not the writer, the group let read: the file would
///   become the writer's, whom the owner's next write would not find in the ACL, and so be
///   refused for good;
/// * whose ACL lets the writer read alone by name, the group read and write;
/// * whose ACL lets its owner read alone by name, the group read and write: once the file is
///   the writer's, the kernel judges the former owner by that entry.
///
/// The refusal's `setfacl` gives the group, and the two users named with less, read and
/// write; so set, the file is taken over and back. Before, all three were taken over: the
/// first and last locking the owner out, the second letting in a user it let read alone.
#[test]
fn a_takeover_neither_locks_the_owner_out_nor_lets_in_a_user_the_acl_lets_read_alone() {
    require_root();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let file_owner = (OTHER_OWNER.0, SHARED);
    let acl = |named: Entry, group: u16| {
        [
            owner_entry(6),
            named,
            group_entry(group),
            mask_entry(6),
            other_entry(0),
        ]
    };
    let them = OTHER_OWNER.0;
    for (refused, entries, shared) in [
        (
            acl((USER, 6, them), 4),
            "g::rw,m::rw".to_owned(),
            acl((USER, 6, them), 6),
        ),
        (
            acl((USER, 4, WRITER), 6),
            format!("g::rw,m::rw,u:{WRITER}:rw"),
            acl((USER, 6, WRITER), 6),
        ),
        (
            acl((USER, 4, them), 6),
            format!("g::rw,m::rw,u:{them}:rw"),
            acl((USER, 6, them), 6),
        ),
    ] {
        let top = tempfile::tempdir().unwrap();
        let (dir, path) =
            home_with_cache(top.path(), (0, SHARED), 0o2770, file_owner, 0o660, content);
        set_acl(&path, ACCESS_ACL, &refused);
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        let expected = refusal_with_acl(&path, file_owner, (WRITER, SHARED), &entries);
        assert!(stdout.contains(&expected), "{refused:?}: {stdout}");
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
        assert_eq!(owner(&path), file_owner);
        assert_eq!(acl_of(&path).as_deref(), Some(&refused[..]));
        assert_eq!(names_in(&dir), ["cache.json"]);

        // As the refusal says.
        set_acl(&path, ACCESS_ACL, &shared);
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        assert!(stdout.contains("written\n"), "{shared:?}: {stdout}");
        assert_eq!(owner(&path), (WRITER, SHARED));
        fs::write(&path, content).unwrap();
        let stdout = write_as(file_owner.0, file_owner.0, &[SHARED], &path);
        assert!(stdout.contains("written\n"), "{shared:?}: {stdout}");
        assert_eq!(owner(&path), file_owner);
        assert_eq!(acl_of(&path).as_deref(), Some(&shared[..]));
    }
}

/// An ACL that could not be read or understood shares the file with nobody, and the refusal
/// says so and why, rather than give a `setfacl` command that may not be the matter. The
/// kernel gives ext4's ACLs whole and in its format, so the ACL not known is made here, for
/// a file shared in every other way (without an ACL, it is taken over). Before, the refusal
/// asked for `setfacl -m g::rw,m::rw`, whatever the ACL was.
#[test]
fn a_file_whose_acl_is_not_known_is_not_taken_over_and_the_refusal_says_why() {
    use super::super::acl::AccessAcl;
    use super::super::atomic_write::{create_new_private, give_owner_unless_unmapped};
    require_root();
    let top = tempfile::tempdir().unwrap();
    // Root's group is the file's and its setgid directory's. Root may give any owner, but
    // not one it takes for one outside its user namespace (as a rootless container's root).
    let (dir, path) = home_with_cache(top.path(), (0, 0), 0o2770, (OTHER_OWNER.0, 0), 0o660, "{}");
    let replaced = fs::metadata(&path).unwrap();
    let temp = |name: &str| create_new_private(&dir.join(name)).unwrap();
    let why = "reading it failed: Input/output error (os error 5)";
    let unknown = AccessAcl::Unknown(why.to_owned());
    let err =
        give_owner_unless_unmapped(&temp("unknown"), &path, &replaced, &unknown, (true, false))
            .unwrap_err()
            .to_string();
    assert_eq!(
        err,
        format!(
            "could not replace the token cache {}: it belongs to uid {} gid 0 (an overflow id, \
             which stands for any id this user namespace does not map), and this process (uid \
             0 gid 0) may not give the new file that owner, so it was left as it is rather \
             than taken from its owner: update the token cache as its owner, outside this user \
             namespace: whether a group shares the file is decided by its POSIX ACL, which \
             could not be read or understood ({why})",
            path.display(),
            OTHER_OWNER.0,
        )
    );
    let absent = AccessAcl::Absent;
    let given =
        give_owner_unless_unmapped(&temp("absent"), &path, &replaced, &absent, (true, false));
    assert_eq!(given.unwrap(), 0, "shared without an ACL");
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
    use super::super::acl::remove_inherited;
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

/// The tracing output of a test, shared with the subscriber that writes it.
use crate::test_support::Logs;

/// An ACL the kernel refuses to set leaves the new file with a warning naming the file, no
/// ACL and the old mode, its group bits what the owning group had (its entry within the mask:
/// read), not the mask (read and write); the tokens are written all the same. The kernel
/// refuses entries out of its order, which the parser refuses to read, so the ACL is made
/// here.
#[test]
fn an_acl_the_kernel_refuses_leaves_the_new_file_its_mode_and_a_warning() {
    use super::super::acl::{AccessAcl, Acl, Entry};
    use super::super::atomic_write::{create_new_private, fill};
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
    use super::super::acl::Acl;
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
