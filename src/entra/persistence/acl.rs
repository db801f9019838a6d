//! The token cache file's POSIX access ACL (Linux): what the file's replacement keeps of it,
//! and what it drops.
//!
//! An ACL (`setfacl`, `getfacl`) belongs to the inode, and a write replaces the file by
//! renaming a new inode over it ([`atomic_write`](super::atomic_write)), so the new file has
//! an ACL only if it is given one. A file with an ACL shows the ACL's *mask* as its group
//! permission bits (`ls -l` shows `-rw-rw----+`): copying the mode alone would give the owning
//! group what the mask allows, more than its own entry may give it, and take from the users
//! and groups the ACL names the access it gave them.
//!
//! So the new file, after its owner and group and before the tokens are written:
//!
//! * loses any access ACL it inherited from its directory's default ACL (`setfacl -d`),
//!   before its mode is set: the mode's group bits would become that ACL's mask and let in
//!   the users and groups it names, who had no access to the old file. A file that had no
//!   ACL is replaced by one that is exactly its mode, and a new file is 0600 with no ACL.
//! * gets the old mode with, as group bits, what the owning group had: its entry limited by
//!   the mask ([`AccessAcl::mode`]). That is the whole of its permissions should the ACL
//!   not be set.
//! * gets the old file's ACL, which sets the group bits to the mask again. What is dropped
//!   from it first:
//!   * entries naming a user or group this process's user namespace does not map (a
//!     rootless container): the kernel shows their id as `u32::MAX` (not the overflow id
//!     65534 that `ls` shows for such an owner) and refuses to set one (`EINVAL`), which would
//!     fail every write. They are dropped, with a warning naming the
//!     file, and those users and groups lose their access: a later write from outside the
//!     namespace does not bring them back, `setfacl -m u:UID:rw` (or `g:GID:rw`) does.
//!   * the owning group's permissions, when the new file cannot have the old one's group (a
//!     file of this process's user whose group it may not give): the new file's group is
//!     another one, which would get what the old group had. The named entries and the mask
//!     are kept.
//!
//!   An ACL that names nobody then is not set (the mode says the same). If setting it fails,
//!   a warning says so and the new file keeps the mode above: nobody gets more than the old
//!   file gave them, and those the ACL names lose their access. The write never fails for
//!   the ACL, only for an inherited ACL that cannot be removed.
//!
//! The ACL also decides whether another user's file in a directory setgid to the file's
//! group is shared by that group, which lets a member of it take the file over
//! ([`AccessAcl::shares_read_write`]): the mode's group bits are the mask, not what the group
//! may do.
//!
//! Only the access ACL is read and written: a file has no default ACL. Elsewhere than on
//! Linux no ACL is read or kept (an [`AccessAcl`] is always [`AccessAcl::Absent`]).
//!
//! The kernel's format of the `system.posix_acl_access` extended attribute, which
//! [`Acl::parse`] reads and [`Acl::to_bytes`] writes: a header, the version 2 as a 32-bit
//! integer, then one 8-byte entry each for the owner, the named users, the owning group, the
//! named groups, the mask and others, in that order: its tag (16 bits: [`USER_OBJ`],
//! [`USER`], [`GROUP_OBJ`], [`GROUP`], [`MASK`], [`OTHER`]), its permissions (16 bits: read 4,
//! write 2, execute 1) and its id (32 bits: the uid or gid of a named entry, `u32::MAX` for
//! the others), all little-endian. Named entries are the kernel's order; this module keeps
//! the entries in the order it read them.

use std::fs::File;
use std::io;
use std::path::Path;

/// The replaced file's POSIX access ACL, as far as its replacement needs to know it.
#[derive(Debug)]
pub(crate) enum AccessAcl {
    /// None: not set, a file system without ACLs, a new file, or not Linux. The mode says it
    /// all.
    Absent,
    /// The ACL, as the kernel gave it.
    #[cfg(target_os = "linux")]
    Present(Acl),
    /// One that could not be read, or not understood (a warning said so): the new file gets
    /// no group permission bits, and the file's group is not taken to share it.
    #[cfg(target_os = "linux")]
    Unknown,
}

/// The permission bits a group or user needs to share the file: read and write.
#[cfg(target_os = "linux")]
const RW: u16 = 0o6;

impl AccessAcl {
    /// The access ACL of the file `target` (which exists) on Linux; [`AccessAcl::Absent`]
    /// elsewhere. A failure to read it, or an ACL in no format this module reads, is logged
    /// and gives [`AccessAcl::Unknown`].
    #[cfg(target_os = "linux")]
    pub(crate) fn read(target: &Path) -> Self {
        use rustix::io::Errno;
        /// The largest value of an extended attribute (Linux's `XATTR_SIZE_MAX`).
        const LARGEST: usize = 64 * 1024;
        let mut value = Vec::with_capacity(LARGEST);
        let read = rustix::fs::getxattr(
            target,
            ACCESS_ACL,
            rustix::buffer::spare_capacity(&mut value),
        );
        match read {
            Ok(_) => match Acl::parse(&value) {
                Ok(acl) => Self::Present(acl),
                Err(why) => {
                    tracing::warn!(
                        path = %target.display(),
                        "the token cache file's ACL is not in the kernel's format as this \
                         crate reads it ({why}): the new file gets no group permission and \
                         not the ACL"
                    );
                    Self::Unknown
                }
            },
            // No ACL, or a file system (or kernel) without them.
            Err(Errno::NODATA | Errno::NOTSUP | Errno::NOSYS) => Self::Absent,
            Err(error) => {
                tracing::warn!(
                    path = %target.display(),
                    %error,
                    "could not read the token cache file's ACL: the new file gets no group \
                     permission and no ACL"
                );
                Self::Unknown
            }
        }
    }

    /// Elsewhere no ACL is read.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn read(_target: &Path) -> Self {
        Self::Absent
    }

    /// The permission bits (`0o777` at most) to give the new file of a file with permission
    /// bits `mode` and this ACL, before the ACL: the group bits are what the owning group
    /// may do (its entry limited by the mask), not the mask the mode shows; none for an ACL
    /// not known.
    #[cfg(unix)]
    pub(crate) fn mode(&self, mode: u32) -> u32 {
        match self {
            Self::Absent => mode & 0o777,
            #[cfg(target_os = "linux")]
            Self::Present(acl) => (mode & 0o707) | (u32::from(acl.owning_group()) << 3),
            #[cfg(target_os = "linux")]
            Self::Unknown => mode & 0o707,
        }
    }

    /// Whether a file with permission bits `mode` and this ACL gives read and write access to
    /// its group, or to its owner `owner` by a named entry, were the owner not to own it any
    /// more (`None`: an owner this process cannot name). Without an ACL, the mode's group bits
    /// decide; with one, the owning group's entry limited by the mask, or the owner's named
    /// entry limited by the mask: the mode's group bits are the mask, which may give the
    /// group more than its entry does.
    #[cfg(unix)]
    pub(crate) fn shares_read_write(&self, mode: u32, owner: Option<u32>) -> bool {
        #[cfg(not(target_os = "linux"))]
        let _ = owner;
        match self {
            Self::Absent => mode & 0o060 == 0o060,
            #[cfg(target_os = "linux")]
            Self::Present(acl) => {
                acl.owning_group() & RW == RW
                    || owner.is_some_and(|uid| acl.named_user(uid) & RW == RW)
            }
            #[cfg(target_os = "linux")]
            Self::Unknown => false,
        }
    }

    /// Whether the file has an ACL (known or not): `chmod g+rw` would then set its mask,
    /// not the group's entry.
    #[cfg(unix)]
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self, Self::Absent)
    }

    /// Gives the new file `file` of the file `target` this ACL (after its mode: see the
    /// module docs), without the entries its user namespace does not map, and without the
    /// owning group's permissions when `withheld` holds group bits (the new file's group is
    /// another). Never fails: what it cannot do, it logs, and the file keeps its mode.
    #[cfg(target_os = "linux")]
    pub(crate) fn apply(&self, file: &File, target: &Path, withheld: u32) {
        let Self::Present(acl) = self else {
            return;
        };
        let (acl, unmapped) = acl.without_unmapped();
        if unmapped > 0 {
            tracing::warn!(
                path = %target.display(),
                entries = unmapped,
                "the token cache file's ACL names users or groups this process's user \
                 namespace does not map, which the kernel refuses to set: the new file has the \
                 ACL without them, and they lose their access to it"
            );
        }
        let acl = if withheld & 0o070 != 0 {
            acl.owning_group_emptied()
        } else {
            acl
        };
        if !acl.names_anyone() {
            return;
        }
        let set = rustix::fs::fsetxattr(
            file,
            ACCESS_ACL,
            &acl.to_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        if let Err(error) = set {
            tracing::warn!(
                path = %target.display(),
                %error,
                "could not give the new token cache file the old one's ACL: it keeps the old \
                 mode, its group bits giving the owning group no more than the ACL did, and \
                 the users and groups the ACL names lose their access to it"
            );
        }
    }

    /// Elsewhere no ACL is kept.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn apply(&self, _file: &File, _target: &Path, _withheld: u32) {}
}

/// Removes the access ACL the new file `file` may have inherited from its directory's default
/// ACL (Linux), before its mode is set: see the module docs. A file system without ACLs has
/// none to remove.
#[cfg(target_os = "linux")]
pub(crate) fn remove_inherited(file: &File) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fremovexattr(file, ACCESS_ACL) {
        Ok(()) | Err(Errno::NODATA | Errno::NOTSUP | Errno::NOSYS) => Ok(()),
        Err(error) => Err(io::Error::new(
            io::Error::from(error).kind(),
            format!(
                "could not remove the ACL it inherited from its directory's default ACL, \
                 which would let in users the token cache did not ({error}): remove the \
                 directory's default ACL (setfacl -k on it)"
            ),
        )),
    }
}

/// Elsewhere no ACL is inherited.
#[cfg(not(target_os = "linux"))]
pub(crate) fn remove_inherited(_file: &File) -> io::Result<()> {
    Ok(())
}

/// The extended attribute holding a file's POSIX access ACL.
#[cfg(target_os = "linux")]
const ACCESS_ACL: &str = "system.posix_acl_access";

/// The version in the header of the kernel's format.
#[cfg(target_os = "linux")]
const VERSION: u32 = 2;

/// The tag of the owner's entry.
#[cfg(target_os = "linux")]
pub(crate) const USER_OBJ: u16 = 0x01;
/// The tag of a named user's entry.
#[cfg(target_os = "linux")]
pub(crate) const USER: u16 = 0x02;
/// The tag of the owning group's entry.
#[cfg(target_os = "linux")]
pub(crate) const GROUP_OBJ: u16 = 0x04;
/// The tag of a named group's entry.
#[cfg(target_os = "linux")]
pub(crate) const GROUP: u16 = 0x08;
/// The tag of the mask: the most a named entry or the owning group may be given.
#[cfg(target_os = "linux")]
pub(crate) const MASK: u16 = 0x10;
/// The tag of the others' entry.
#[cfg(target_os = "linux")]
pub(crate) const OTHER: u16 = 0x20;

/// The id of a named entry whose user or group this process's user namespace does not map, as
/// the kernel shows it (`(uid_t)-1`, not the overflow id `stat` shows); also the id of the
/// entries that name nobody.
#[cfg(target_os = "linux")]
pub(crate) const UNMAPPED: u32 = u32::MAX;

/// One entry of an ACL.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// [`USER_OBJ`], [`USER`], [`GROUP_OBJ`], [`GROUP`], [`MASK`] or [`OTHER`].
    pub(crate) tag: u16,
    /// Read 4, write 2, execute 1.
    pub(crate) perm: u16,
    /// The uid or gid of a named entry ([`USER`], [`GROUP`]).
    pub(crate) id: u32,
}

/// A POSIX access ACL in the kernel's format, its entries in the kernel's order.
///
/// One that [`Acl::parse`] returns has one owner's, owning group's and others' entry each, at
/// most one mask, a mask if it has named entries, and permissions of 7 at most.
#[cfg(target_os = "linux")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Acl {
    entries: Vec<Entry>,
}

#[cfg(target_os = "linux")]
impl Acl {
    /// Reads `bytes` in the kernel's format, or says what is wrong with them. Never panics.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, &'static str> {
        let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
            return Err("shorter than its header");
        };
        if u32::from_le_bytes(*header) != VERSION {
            return Err("not version 2");
        }
        let chunks = rest.chunks_exact(8);
        if !chunks.remainder().is_empty() {
            return Err("not a whole number of entries");
        }
        let mut entries = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let Ok([t0, t1, p0, p1, i0, i1, i2, i3]) = <[u8; 8]>::try_from(chunk) else {
                return Err("not a whole number of entries");
            };
            let entry = Entry {
                tag: u16::from_le_bytes([t0, t1]),
                perm: u16::from_le_bytes([p0, p1]),
                id: u32::from_le_bytes([i0, i1, i2, i3]),
            };
            if ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&entry.tag) {
                return Err("an entry of an unknown kind");
            }
            if entry.perm > 0o7 {
                return Err("permissions beyond read, write and execute");
            }
            entries.push(entry);
        }
        let count = |tag| entries.iter().filter(|entry| entry.tag == tag).count();
        if [USER_OBJ, GROUP_OBJ, OTHER]
            .iter()
            .any(|&tag| count(tag) != 1)
        {
            return Err("not one entry each for the owner, the owning group and others");
        }
        match count(MASK) {
            0 if count(USER) > 0 || count(GROUP) > 0 => Err("named entries without a mask"),
            0 | 1 => Ok(Self { entries }),
            _ => Err("more than one mask"),
        }
    }

    /// The ACL in the kernel's format: for an ACL [`Acl::parse`] returned, the bytes it read.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len().saturating_mul(8).saturating_add(4));
        bytes.extend(VERSION.to_le_bytes());
        for entry in &self.entries {
            bytes.extend(entry.tag.to_le_bytes());
            bytes.extend(entry.perm.to_le_bytes());
            bytes.extend(entry.id.to_le_bytes());
        }
        bytes
    }

    /// The entries, in order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The permissions of the first entry tagged `tag`, if there is one.
    fn perm(&self, tag: u16) -> Option<u16> {
        self.entries
            .iter()
            .find(|entry| entry.tag == tag)
            .map(|entry| entry.perm)
    }

    /// What the mask leaves of `perm` (all of it without a mask).
    fn masked(&self, perm: u16) -> u16 {
        perm & self.perm(MASK).unwrap_or(0o7)
    }

    /// What the owning group may do: its entry limited by the mask.
    pub(crate) fn owning_group(&self) -> u16 {
        self.masked(self.perm(GROUP_OBJ).unwrap_or(0))
    }

    /// What the user `uid` may do by a named entry (the first, as the kernel checks them),
    /// limited by the mask: nothing without one.
    pub(crate) fn named_user(&self, uid: u32) -> u16 {
        let named = self
            .entries
            .iter()
            .find(|entry| entry.tag == USER && entry.id == uid);
        named.map_or(0, |entry| self.masked(entry.perm))
    }

    /// Whether it names a user or a group.
    pub(crate) fn names_anyone(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| matches!(entry.tag, USER | GROUP))
    }

    /// The ACL without the named entries whose id this process's user namespace does not map
    /// ([`UNMAPPED`]), and how many there were. The mask stays, as the kernel allows.
    pub(crate) fn without_unmapped(&self) -> (Self, usize) {
        let unmapped = |entry: &&Entry| matches!(entry.tag, USER | GROUP) && entry.id == UNMAPPED;
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|entry| !unmapped(entry))
            .copied()
            .collect();
        let dropped = self.entries.len().saturating_sub(entries.len());
        (Self { entries }, dropped)
    }

    /// The ACL with no permission for the owning group.
    pub(crate) fn owning_group_emptied(&self) -> Self {
        let entries = self
            .entries
            .iter()
            .map(|&entry| match entry.tag {
                GROUP_OBJ => Entry { perm: 0, ..entry },
                _ => entry,
            })
            .collect();
        Self { entries }
    }
}
