//! Whether a group shares another user's file that has an ACL, in a directory setgid to
//! that group, so that a member may take it over: decided by the ACL, not the mode, never
//! locking the owner out, and by nobody for an ACL not known.

use std::fs;
use std::path::Path;

use super::super::{
    OTHER_OWNER, SHARED, WRITER, home_with_cache, mode, names_in, owner, refusal, require_root,
    write_as,
};
use super::{
    ACCESS_ACL, Entry, acl_of, group_entry, mask_entry, other_entry, owner_entry, set_acl,
};
use crate::entra::persistence::acl::USER;

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
    use crate::entra::persistence::acl::AccessAcl;
    use crate::entra::persistence::atomic_write::{create_new_private, give_owner_unless_unmapped};
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
