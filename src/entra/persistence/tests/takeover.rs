//! What a takeover of another user's file shared through a group asks of its former owner
//! and of the owner's permission bits (Linux), and of a file system whose ACLs are not
//! POSIX ACLs.

use std::fs;
use std::path::Path;

use super::super::acl::USER;
use super::acl::{
    ACCESS_ACL, Entry, acl_of, group_entry, mask_entry, other_entry, owner_entry, set_acl,
};
use super::{
    SHARED, WRITER, home_with_cache, mode, names_in, owner, refusal, require_root, write_as,
};

/// A user of every Debian system whose groups are known: `daemon`, uid 1, in its primary
/// group 1 alone (`id daemon`). It owns no file here but the tests'.
const DAEMON: (u32, u32) = (1, 1);

/// Fails the test, saying why, unless uid 1 is `daemon` in its primary group 1 alone, as
/// [`DAEMON`] has it: the tests that use it would otherwise fail for a reason of this
/// system's user database, not of the code.
fn require_daemon() {
    use nix::unistd::{Uid, User, getgrouplist};
    let user = User::from_uid(Uid::from_raw(DAEMON.0)).ok().flatten();
    let groups = user.as_ref().and_then(|user| {
        let name = std::ffi::CString::new(user.name.as_bytes()).ok()?;
        getgrouplist(&name, user.gid).ok()
    });
    let groups: Option<Vec<u32>> =
        groups.map(|groups| groups.into_iter().map(|gid| gid.as_raw()).collect());
    let name = user.as_ref().map(|user| user.name.as_str());
    assert!(
        name == Some("daemon") && groups.as_deref() == Some(&[DAEMON.1][..]),
        "these tests need uid 1 to be the user \"daemon\" in group 1 alone (a Debian \
         system's), but the user database gives uid 1 the name {name:?} and the groups \
         {groups:?}"
    );
}

/// The refusal [`super::write_as_another_user`] prints for a file of `daemon` ([`DAEMON`])
/// of the group `gid` shared through its directory, which `daemon` is not in, ending with
/// `also` (what the file needs besides).
fn outside_refusal(path: &Path, gid: u32, also: &str) -> String {
    format!(
        "error: could not replace the token cache {path}: it belongs to uid 1 gid {gid}, and \
         this process (uid {WRITER} gid {gid}) may not give the new file that owner, so it was \
         left as it is rather than taken from its owner: update the token cache as uid 1, or \
         add that user (\"daemon\") to the file's group, gid {gid}, through which its \
         directory shares it (for a local user: usermod -aG {gid} daemon, which its next \
         login sees): the user is not in that group, so it could not write the file again \
         once it were this process's user's{also}\n",
        path = path.display(),
    )
}

/// A file whose owner is not in the group its directory shares it through is not taken
/// over, with or without an ACL naming both users: once the file were the writer's, the
/// owner's next write would be refused (it is no member), and without an ACL the owner
/// would have the others' bits alone. The refusal names the owner and `usermod -aG`, and
/// for a file the group may not read and write either, what it needs besides. The owner's
/// groups are the user database's: a file of the group that is `daemon`'s primary one is
/// taken over, and back. Before, all were taken over, then the refusal left out what the
/// file needs besides.
#[test]
fn a_file_whose_owner_is_not_in_its_group_is_not_taken_over() {
    require_root();
    require_daemon();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let named = [
        owner_entry(6),
        (USER, 6, DAEMON.0),
        (USER, 6, WRITER),
        group_entry(0),
        mask_entry(6),
        other_entry(0),
    ];
    let unshared = [
        owner_entry(6),
        (USER, 4, WRITER),
        group_entry(6),
        mask_entry(6),
        other_entry(0),
    ];
    for (file_mode, acl) in [
        (0o660, None),
        (0o660, Some(&named[..])),
        (0o640, None),
        (0o660, Some(&unshared[..])),
    ] {
        let top = tempfile::tempdir().unwrap();
        let file_owner = (DAEMON.0, SHARED);
        let (dir, path) = home_with_cache(
            top.path(),
            (0, SHARED),
            0o2770,
            file_owner,
            file_mode,
            content,
        );
        if let Some(acl) = acl {
            set_acl(&path, ACCESS_ACL, acl);
        }
        let file = path.display();
        let also = match (file_mode, acl) {
            (0o640, _) => {
                format!("; the group must also read and write the file: chmod g+rw '{file}'")
            }
            (_, Some(acl)) if acl == unshared => format!(
                "; the group must also read and write the file: setfacl -m g::rw,m::rw,u:{WRITER}:rw \
                 '{file}': it has an ACL, whose mask `chmod g+rw` would set rather than the \
                 group's own entry"
            ),
            _ => String::new(),
        };
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        assert!(
            stdout.contains(&outside_refusal(&path, SHARED, &also)),
            "{file_mode:o} {acl:?}: {stdout}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
        assert_eq!(owner(&path), file_owner);
        assert_eq!(acl_of(&path).as_deref(), acl);
        assert_eq!(names_in(&dir), ["cache.json"]);
    }

    let top = tempfile::tempdir().unwrap();
    let (_, path) = home_with_cache(top.path(), (0, DAEMON.1), 0o2770, DAEMON, 0o660, content);
    let stdout = write_as(WRITER, WRITER, &[DAEMON.1], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(owner(&path), (WRITER, DAEMON.1));
    fs::write(&path, content).unwrap();
    let stdout = write_as(DAEMON.0, DAEMON.1, &[], &path);
    assert!(stdout.contains("written\n"), "{stdout}");
    assert_eq!(owner(&path), DAEMON);
}

/// A file whose owner's bits do not give read and write is not taken over though its group
/// may read and write it: the writer would become its owner, whom the kernel judges by
/// those bits alone, and could not read the tokens it wrote. The refusal asks for the
/// owner's read too: `chmod ug+rw`, or `u::rw` in the `setfacl` of a file with an ACL. So
/// set, the file is taken over. Before, both were taken over.
#[test]
fn a_file_whose_owners_bits_lack_read_is_not_taken_over() {
    require_root();
    const OWNER: (u32, u32) = (super::OTHER_OWNER.0, SHARED);
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let acl = |owner: u16| {
        [
            owner_entry(owner),
            (USER, 6, WRITER),
            group_entry(6),
            mask_entry(6),
            other_entry(0),
        ]
    };
    let with_acl: [Entry; 5] = acl(2);
    for refused in [None, Some(&with_acl[..])] {
        let top = tempfile::tempdir().unwrap();
        let (dir, path) = home_with_cache(top.path(), (0, SHARED), 0o2770, OWNER, 0o260, content);
        let file = path.display();
        let expected = match refused {
            None => {
                refusal(&path, OWNER, (WRITER, SHARED)).replace("chmod g+rw '", "chmod ug+rw '")
            }
            Some(refused) => {
                set_acl(&path, ACCESS_ACL, refused);
                refusal(&path, OWNER, (WRITER, SHARED)).replace(
                    &format!("chmod g+rw '{file}')"),
                    &format!(
                        "setfacl -m u::rw,g::rw,m::rw '{file}': it has an ACL, whose mask \
                         `chmod g+rw` would set rather than the group's own entry)"
                    ),
                )
            }
        };
        assert_eq!(mode(&path), 0o260);
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        assert!(stdout.contains(&expected), "{refused:?}: {stdout}");
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
        assert_eq!(owner(&path), OWNER);
        assert_eq!(names_in(&dir), ["cache.json"]);

        // As the refusal says.
        match refused {
            None => fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
                .unwrap(),
            Some(_) => set_acl(&path, ACCESS_ACL, &acl(6)),
        }
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        assert!(stdout.contains("written\n"), "{refused:?}: {stdout}");
        assert_eq!(owner(&path), (WRITER, SHARED));
        assert_eq!(mode(&path), 0o660);
    }
}

/// A file system without POSIX ACLs that shows an NFSv4 ACL (`system.nfs4_acl`, as Linux's
/// NFS client does) shares no file for a takeover: that ACL, which the server applies, may
/// not let the group in, and this crate does not read it. The refusal says so. The new
/// file keeps the mode as it is, group bits included: the server's ACL is not this crate's
/// to replace. Without an NFSv4 ACL, the file has no ACL and is shared by its mode. No NFS
/// server here: the answers of the two attributes are given. Before, an NFSv4 file counted
/// as one without an ACL, and was taken over.
#[test]
fn a_file_with_an_nfs4_acl_is_not_taken_over() {
    use super::super::acl::AccessAcl;
    use super::super::atomic_write::{create_new_private, give_owner_unless_unmapped};
    require_root();
    let top = tempfile::tempdir().unwrap();
    // As in `a_file_whose_acl_is_not_known_is_not_taken_over_and_the_refusal_says_why`:
    // root's group is shared, and the owner taken for one root cannot name.
    let (dir, path) = home_with_cache(
        top.path(),
        (0, 0),
        0o2770,
        (super::OTHER_OWNER.0, 0),
        0o660,
        "{}",
    );
    let replaced = fs::metadata(&path).unwrap();
    let temp = |name: &str| create_new_private(&dir.join(name)).unwrap();
    let nfs4 = AccessAcl::without_posix_acls(Ok(()));
    assert_eq!(nfs4.mode(0o660), 0o660);
    let err = give_owner_unless_unmapped(&temp("nfs4"), &path, &replaced, &nfs4, (true, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "update the token cache as its owner, outside this user namespace: the file \
             system applies NFSv4 ACLs (it shows system.nfs4_acl), which this crate does not \
             read, so another user's file there is not taken over"
        ),
        "{err}"
    );
    let none = AccessAcl::without_posix_acls(Err(rustix::io::Errno::NODATA));
    assert!(matches!(none, AccessAcl::Absent));
    let given = give_owner_unless_unmapped(&temp("none"), &path, &replaced, &none, (true, false));
    assert_eq!(given.unwrap(), 0, "shared by its mode");
}

/// What the probe for an NFSv4 ACL on a file system without POSIX ACLs says: the attribute
/// shown is an ACL not read; its absence (`ENODATA`) or that of the attribute itself
/// (`EOPNOTSUPP`, `ENOSYS`) is no ACL; any other failure leaves the ACL unknown, which
/// shares the file with nobody, and says what failed. Before, any failure was no ACL: a
/// file whose NFSv4 ACL could not be read was shared by its mode.
#[test]
fn a_failed_probe_for_an_nfs4_acl_leaves_the_acl_unknown() {
    use super::super::acl::AccessAcl;
    use rustix::io::Errno;
    assert!(matches!(
        AccessAcl::without_posix_acls(Ok(())),
        AccessAcl::Unseen(_)
    ));
    for absent in [Errno::NODATA, Errno::NOTSUP, Errno::NOSYS] {
        let acl = AccessAcl::without_posix_acls(Err(absent));
        assert!(matches!(acl, AccessAcl::Absent), "{absent:?}: {acl:?}");
    }
    for failed in [Errno::ACCESS, Errno::IO, Errno::RANGE, Errno::NOMEM] {
        let acl = AccessAcl::without_posix_acls(Err(failed));
        match &acl {
            AccessAcl::Unknown(why) => {
                assert_eq!(*why, format!("reading its NFSv4 ACL failed: {failed}"));
            }
            _ => panic!("{failed:?}: {acl:?}"),
        }
        assert!(
            !acl.shares_read_write(0o660, 0, None, None, 1, &[0]),
            "{failed:?}"
        );
    }
}

/// Only a name of letters, digits, `.`, `_` and `-` not leading is pasted into the
/// `usermod` hint: no shell word of it could be an option or need quoting.
#[test]
fn only_plain_user_names_are_pasted_into_a_command() {
    use super::super::atomic_write::is_plain_name;
    for plain in ["daemon", "alice", "a.b_c-d", "user1", "x"] {
        assert!(is_plain_name(plain), "{plain:?}");
    }
    for not_plain in [
        "", "-daemon", "-", "user$", "$USER", "a@b", "a b", "a'b", "a\"b", "a;b", "é", "a\n",
    ] {
        assert!(!is_plain_name(not_plain), "{not_plain:?}");
    }
}

/// A user name that held bytes not UTF-8 (which `nix` shows as U+FFFD) is not looked up:
/// the user database does not know it by that name, so its groups would be the primary one
/// alone and the takeover refused for it. It counts as a lookup that failed (the owner
/// taken to be in the group). A name of UTF-8 is looked up as it is.
#[test]
fn a_user_name_not_utf8_is_not_looked_up() {
    use super::super::atomic_write::lookup_name;
    let lossy = String::from_utf8_lossy(b"us\xffer").into_owned();
    assert_eq!(lookup_name(&lossy), None);
    assert_eq!(lookup_name("a\0b"), None);
    assert_eq!(lookup_name("daemon").as_deref(), Some(c"daemon"),);
}
