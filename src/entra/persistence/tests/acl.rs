//! The cache file's POSIX access ACL across a write (Linux), and the helpers its tests share
//! (with [`takeover`](super::takeover)): what the new file keeps of the old one's ACL
//! ([`kept`]), what it inherits from its directory's ([`inherited`]), and whether a group
//! shares another user's file with an ACL ([`shared`]). The tests set and read ACLs through
//! the extended attribute the kernel keeps them in, encoded here by hand, so they need no
//! `setfacl` and do not trust the module's own encoder. The named ids are mapped in the
//! test's user namespace (a container's too): only the writer run in a new namespace
//! ([`write_in_user_namespace`](super::write_in_user_namespace)) lacks them.

use std::path::Path;

use crate::entra::persistence::acl::{GROUP_OBJ, MASK, OTHER, UNMAPPED, USER_OBJ};

mod inherited;
mod kept;
mod shared;

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
