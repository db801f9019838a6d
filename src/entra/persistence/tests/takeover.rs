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

/// The refusal [`super::write_as_another_user`] prints for a file of `daemon` ([`DAEMON`])
/// of the group `gid` shared through its directory, which `daemon` is not in.
fn outside_refusal(path: &Path, gid: u32) -> String {
    format!(
        "error: could not replace the token cache {path}: it belongs to uid 1 gid {gid}, and \
         this process (uid {WRITER} gid {gid}) may not give the new file that owner, so it was \
         left as it is rather than taken from its owner: update the token cache as uid 1, or \
         add that user (\"daemon\") to the file's group, gid {gid}, through which its \
         directory shares it (usermod -aG {gid} daemon, which its next login sees): the user \
         is not in that group, so it could not write the file again once it were this \
         process's user's\n",
        path = path.display(),
    )
}

/// A file whose owner is not in the group its directory shares it through is not taken
/// over, with or without an ACL naming both users: once the file were the writer's, the
/// owner's next write would be refused (it is no member), and without an ACL the owner
/// would have the others' bits alone. The refusal names the owner and `usermod -aG`. The
/// owner's groups are the user database's: a file of the group that is `daemon`'s primary
/// one is taken over, and back. Before, all were taken over.
#[test]
fn a_file_whose_owner_is_not_in_its_group_is_not_taken_over() {
    require_root();
    let content = r#"{"AccessToken": {"old": {}}}"#;
    let named = [
        owner_entry(6),
        (USER, 6, DAEMON.0),
        (USER, 6, WRITER),
        group_entry(0),
        mask_entry(6),
        other_entry(0),
    ];
    for acl in [None, Some(&named[..])] {
        let top = tempfile::tempdir().unwrap();
        let file_owner = (DAEMON.0, SHARED);
        let (dir, path) =
            home_with_cache(top.path(), (0, SHARED), 0o2770, file_owner, 0o660, content);
        if let Some(acl) = acl {
            set_acl(&path, ACCESS_ACL, acl);
        }
        let stdout = write_as(WRITER, WRITER, &[SHARED], &path);
        assert!(
            stdout.contains(&outside_refusal(&path, SHARED)),
            "{acl:?}: {stdout}"
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
    let nfs4 = AccessAcl::without_posix_acls(true);
    assert_eq!(nfs4.mode(0o660), 0o660);
    let err = give_owner_unless_unmapped(&temp("nfs4"), &path, &replaced, &nfs4, (true, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "update the token cache as its owner, outside this user namespace: whether a group \
             shares the file is decided by its POSIX ACL, which could not be read or \
             understood (the file system has no POSIX ACLs but keeps an NFSv4 ACL \
             (system.nfs4_acl), which this crate does not read)"
        ),
        "{err}"
    );
    let none = AccessAcl::without_posix_acls(false);
    assert!(matches!(none, AccessAcl::Absent));
    let given = give_owner_unless_unmapped(&temp("none"), &path, &replaced, &none, (true, false));
    assert_eq!(given.unwrap(), 0, "shared by its mode");
}
