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
//!   ACL is replaced by one that is exactly its mode, and a new file is 0600 with no ACL
//!   (where the file system has POSIX ACLs or none: see the end of these docs for NFSv4 and
//!   SMB).
//!   If it cannot be removed, the write fails, the error naming `setfacl -k` on the
//!   directory, which removes its default ACL ([`remove_inherited`]): the one way the new
//!   file's ACL fails a write (the file's own ACL may also refuse a takeover: see below).
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
//!   file gave them, and those the ACL names lose their access; the write goes on.
//!
//! The ACL also decides whether another user's file in a directory setgid to the file's
//! group is shared by that group, which lets a member of it take the file over
//! ([`AccessAcl::shares_read_write`]): the mode's group bits are the mask, not what the group
//! may do, and a user the ACL names is judged by that entry, not by the group. An ACL that
//! could not be read or understood shares the file with nobody.
//!
//! Only the access ACL is read and written: a file has no default ACL. Elsewhere than on
//! Linux no ACL is read or kept (an [`AccessAcl`] is always [`AccessAcl::Absent`]).
//!
//! What is said here holds on file systems with POSIX ACLs (ext4, xfs, btrfs, tmpfs) and on
//! those without ACLs. NFSv4 and SMB (CIFS) mounts refuse the POSIX ACL attribute
//! (`EOPNOTSUPP`) though their server may apply ACLs of its own, which this module neither
//! sees nor keeps: the server's rules decide the new file's ACL (one a server-side default
//! ACL gives a new file included, which is not removed), and the old file's is not copied.
//! A file of such a mount counts as one without an ACL, but for a takeover: where the NFS
//! client shows an NFSv4 ACL (`system.nfs4_acl`), which it does for every file when the
//! server supports ACLs, the file is shared with nobody ([`AccessAcl::Unseen`]), since that
//! ACL may not let the group in; one that could not be looked for shares it with nobody
//! either ([`AccessAcl::Unknown`]). An SMB server's ACL is not looked for.
//!
//! The kernel's format of the `system.posix_acl_access` extended attribute, which
//! [`Acl::parse`] reads and [`Acl::to_bytes`] writes: a header, the version 2 as a 32-bit
//! integer, then one 8-byte entry each for the owner, the named users, the owning group, the
//! named groups, the mask and others, in that order: its tag (16 bits: [`USER_OBJ`],
//! [`USER`], [`GROUP_OBJ`], [`GROUP`], [`MASK`], [`OTHER`]), its permissions (16 bits: read 4,
//! write 2, execute 1) and its id (32 bits: the uid or gid of a named entry, `u32::MAX` for
//! the others), all little-endian. The kernel refuses to set entries in another order, or
//! named entries without a mask, and [`Acl::parse`] refuses to read them. It does not sort
//! the named entries by id, nor refuse two naming the same id (`setfacl` sorts and merges
//! them; a write of the attribute itself need not), and checks the first entry naming a
//! user: this module keeps the entries in the order it read them.

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(target_os = "linux")]
use super::atomic_write::shell_word;

/// The replaced file's POSIX access ACL, as far as its replacement needs to know it.
#[derive(Debug)]
pub(crate) enum AccessAcl {
    /// None: not set, a file system without ACLs, a new file, or not Linux. The mode says it
    /// all.
    Absent,
    /// The ACL, as the kernel gave it.
    #[cfg(target_os = "linux")]
    Present(Acl),
    /// One that could not be read, or not understood (a warning said so), and why: the new
    /// file gets no group permission bits, and the file's group is not taken to share it.
    #[cfg(target_os = "linux")]
    Unknown(String),
    /// No POSIX ACL, on a file system that keeps ACLs of another kind (NFSv4's, which the
    /// server applies and this module neither reads nor sets), and why: the new file gets the
    /// mode as it is (the server's ACL rules give it whatever ACL they give a new file), and
    /// the file's group is not taken to share it, since that ACL may not let it.
    #[cfg(target_os = "linux")]
    Unseen(String),
}

/// The permission bits a group or user needs to share the file: read and write.
#[cfg(target_os = "linux")]
const RW: u16 = 0o6;

/// The extended attribute in which Linux's NFS client shows a file's NFSv4 ACL.
#[cfg(target_os = "linux")]
const NFS4_ACL: &str = "system.nfs4_acl";

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
        let why = match read {
            Ok(_) => match Acl::parse(&value) {
                Ok(acl) => return Self::Present(acl),
                Err(why) => {
                    format!("it is not in the kernel's format as this crate reads it: {why}")
                }
            },
            // No ACL, or a file system (or kernel) without them.
            Err(Errno::NODATA | Errno::NOSYS) => return Self::Absent,
            // No POSIX ACLs: an NFSv4 mount may keep ACLs of its own all the same.
            Err(Errno::NOTSUP) => {
                // A buffer of no length asks for the value's size alone.
                let nfs4 = rustix::fs::getxattr(target, NFS4_ACL, &mut [0u8; 0][..]);
                match Self::without_posix_acls(nfs4.map(drop)) {
                    Self::Unknown(why) => why,
                    known => return known,
                }
            }
            Err(error) => format!("reading it failed: {error}"),
        };
        tracing::warn!(
            path = %target.display(),
            "could not read or understand the token cache file's ACL ({why}): the new file \
             gets no group permission and no ACL"
        );
        Self::Unknown(why)
    }

    /// The ACL of a file on a file system without POSIX ACLs, given the answer `nfs4` to the
    /// question whether it shows an NFSv4 ACL (`system.nfs4_acl`) for it:
    /// [`AccessAcl::Unseen`] if it does; [`AccessAcl::Absent`] if the attribute is not set
    /// (`ENODATA`) or the file system (or kernel) has no such attribute (`EOPNOTSUPP`,
    /// `ENOSYS`); [`AccessAcl::Unknown`] for any other failure, which does not say there is
    /// none (`EACCES`, `EIO`: an NFSv4 ACL there may not let the group in).
    #[cfg(target_os = "linux")]
    pub(crate) fn without_posix_acls(nfs4: Result<(), rustix::io::Errno>) -> Self {
        use rustix::io::Errno;
        match nfs4 {
            Ok(()) => Self::Unseen(format!(
                "the file system applies NFSv4 ACLs (it shows {NFS4_ACL}), which this crate \
                 does not read, so another user's file there is not taken over"
            )),
            Err(Errno::NODATA | Errno::NOTSUP | Errno::NOSYS) => Self::Absent,
            Err(error) => Self::Unknown(format!("reading its NFSv4 ACL failed: {error}")),
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
    /// not known; the mode's for a file with an NFSv4 ACL, whose server's ACL rules, not
    /// this crate, decide what the group gets.
    #[cfg(unix)]
    pub(crate) fn mode(&self, mode: u32) -> u32 {
        match self {
            Self::Absent => mode & 0o777,
            #[cfg(target_os = "linux")]
            Self::Present(acl) => (mode & 0o707) | (u32::from(acl.owning_group()) << 3),
            #[cfg(target_os = "linux")]
            Self::Unknown(_) => mode & 0o707,
            #[cfg(target_os = "linux")]
            Self::Unseen(_) => mode & 0o777,
        }
    }

    /// Whether a file with permission bits `mode` and this ACL, of the group `file_gid`, is
    /// shared by the user `writer` (not its owner, a member of the groups `groups`) and its
    /// owner `owner` (`None`: one this process cannot name), a member of the groups
    /// `owner_groups` (`None`: not known, taken to be a member of `file_gid`), so that
    /// `writer` may take it over and `owner` take it back the same way.
    ///
    /// Both must be members of `file_gid`: the owner's way back is a takeover too, and
    /// without the group, the owner of a file without an ACL would be judged by the others'
    /// bits. The owner's permission bits (with an ACL, the owner's entry, which they are)
    /// must give read and write: the writer becomes the file's owner, whom the kernel judges
    /// by them alone. Without an ACL, the mode's group bits decide the rest. With one (the mode's group bits are then
    /// the mask, which may give the group more than its entry does), the kernel must let
    /// `writer` read and write the file, and each of the two must read and write it by what
    /// the other's write will check: its named entry if it has one (which the kernel checks
    /// before any group, so that a user the ACL lets read alone is not let in by the group),
    /// else the owning group's entry, limited by the mask. Taking over a file that names its
    /// owner but not the writer would lock the owner out: the file would then be the
    /// writer's, whom the owner's next write may not name. The named entry of an owner this
    /// process cannot name is dropped from the new file (see [`Acl::without_unmapped`]): the
    /// owning group's entry is its way back.
    #[cfg(unix)]
    pub(crate) fn shares_read_write(
        &self,
        mode: u32,
        file_gid: u32,
        owner: Option<u32>,
        owner_groups: Option<&[u32]>,
        writer: u32,
        groups: &[u32],
    ) -> bool {
        #[cfg(not(target_os = "linux"))]
        let _ = (owner, writer);
        let members = groups.contains(&file_gid)
            && owner_groups.is_none_or(|owner_groups| owner_groups.contains(&file_gid));
        if !members || mode & 0o600 != 0o600 {
            return false;
        }
        match self {
            Self::Absent => mode & 0o060 == 0o060,
            #[cfg(target_os = "linux")]
            Self::Present(acl) => {
                let by_name_or_group = |uid: Option<u32>| {
                    uid.and_then(|uid| acl.named_user(uid))
                        .unwrap_or_else(|| acl.owning_group())
                };
                acl.perm(USER_OBJ).unwrap_or(0) & RW == RW
                    && acl.permits(writer, file_gid, groups, RW)
                    && by_name_or_group(Some(writer)) & RW == RW
                    && by_name_or_group(owner) & RW == RW
            }
            #[cfg(target_os = "linux")]
            Self::Unknown(_) | Self::Unseen(_) => false,
        }
    }

    /// The `setfacl -m` entries that would let the group share the file, as
    /// [`AccessAcl::shares_read_write`] asks, for the owner `owner` and the user `writer`
    /// (the owner's if it lacks read or write, the group's and the mask's, and the named
    /// entries of those two that do not give read and write); `None` for a file without an
    /// ACL (`chmod ug+rw` does it) or one not known.
    #[cfg(unix)]
    pub(crate) fn sharing_entries(&self, owner: Option<u32>, writer: u32) -> Option<String> {
        #[cfg(not(target_os = "linux"))]
        let _ = (owner, writer);
        match self {
            Self::Absent => None,
            #[cfg(target_os = "linux")]
            Self::Present(acl) => {
                let mut entries = String::new();
                if acl.perm(USER_OBJ).unwrap_or(0) & RW != RW {
                    entries.push_str("u::rw,");
                }
                entries.push_str("g::rw,m::rw");
                for uid in owner.into_iter().chain([writer]) {
                    if acl.named_user(uid).is_some_and(|perm| perm & RW != RW) {
                        entries.push_str(&format!(",u:{uid}:rw"));
                    }
                }
                Some(entries)
            }
            #[cfg(target_os = "linux")]
            Self::Unknown(_) | Self::Unseen(_) => None,
        }
    }

    /// Why the ACL is not known, for one that could not be read or understood.
    #[cfg(unix)]
    pub(crate) fn unknown(&self) -> Option<&str> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Unknown(why) => Some(why),
            _ => None,
        }
    }

    /// Why the ACL is not read, for a file on a file system that applies NFSv4 ACLs.
    #[cfg(unix)]
    pub(crate) fn unseen(&self) -> Option<&str> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Unseen(why) => Some(why),
            _ => None,
        }
    }

    /// The ACL [`AccessAcl::apply`] sets on the new file, with `withheld` as there (`None`:
    /// none, the mode saying it all), and how many of the old ACL's entries named ids this
    /// process's user namespace does not map (dropped).
    #[cfg(target_os = "linux")]
    pub(crate) fn to_set(&self, withheld: u32) -> (Option<Acl>, usize) {
        let Self::Present(acl) = self else {
            return (None, 0);
        };
        let (acl, unmapped) = acl.without_unmapped();
        let acl = if withheld & 0o070 != 0 {
            acl.owning_group_emptied()
        } else {
            acl
        };
        (acl.names_anyone().then_some(acl), unmapped)
    }

    /// Gives the new file `file` of the file `target` this ACL (after its mode: see the
    /// module docs), without the entries its user namespace does not map, and without the
    /// owning group's permissions when `withheld` holds group bits (the new file's group is
    /// another). Never fails: what it cannot do, it logs, and the file keeps its mode.
    #[cfg(target_os = "linux")]
    pub(crate) fn apply(&self, file: &File, target: &Path, withheld: u32) {
        let (acl, unmapped) = self.to_set(withheld);
        if unmapped > 0 {
            tracing::warn!(
                path = %target.display(),
                entries = unmapped,
                "the token cache file's ACL names users or groups this process's user \
                 namespace does not map, which the kernel refuses to set: the new file has the \
                 ACL without them, and they lose their access to it"
            );
        }
        let Some(acl) = acl else {
            return;
        };
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

/// Removes the access ACL the new file `file` may have inherited from the default ACL of its
/// directory `dir` (Linux), before its mode is set: see the module docs. The ACL is asked for
/// first: some file systems (9p, FUSE) refuse a removal (`EPERM`, `EACCES`, `EIO`) before
/// looking for the attribute, which would fail every write there though nothing was
/// inherited. A file system without POSIX ACLs has none to remove (an NFSv4 or SMB server
/// may give the new file an ACL of its own, which is not seen: see the module docs). Fails only if there is one, or whether
/// there is one cannot be told, and the removal fails: the write then fails, the error
/// naming `setfacl -k` on the directory.
#[cfg(target_os = "linux")]
pub(crate) fn remove_inherited(file: &File, dir: &Path) -> io::Result<()> {
    use rustix::io::Errno;
    /// No ACL, or a file system (or kernel) without them.
    fn none(error: Errno) -> bool {
        matches!(error, Errno::NODATA | Errno::NOTSUP | Errno::NOSYS)
    }
    // A buffer of no length asks for the value's size alone.
    let asked = match rustix::fs::fgetxattr(file, ACCESS_ACL, &mut [0u8; 0][..]) {
        Ok(_) => None,
        Err(error) if none(error) => return Ok(()),
        Err(error) => Some(error),
    };
    let error = match rustix::fs::fremovexattr(file, ACCESS_ACL) {
        Ok(()) => return Ok(()),
        Err(error) if none(error) => return Ok(()),
        Err(error) => error,
    };
    let what = match asked {
        None => format!(
            "could not remove the ACL it inherited from its directory's default ACL ({error})"
        ),
        Some(asked) => format!(
            "could not tell whether it inherited an ACL from its directory's default ACL \
             ({asked}), nor remove one ({error})"
        ),
    };
    Err(io::Error::new(
        io::Error::from(error).kind(),
        format!(
            "{what}, which would let in users the token cache did not: remove the directory's \
             default ACL (setfacl -k {})",
            shell_word(dir)
        ),
    ))
}

/// Elsewhere no ACL is inherited.
#[cfg(not(target_os = "linux"))]
pub(crate) fn remove_inherited(_file: &File, _dir: &Path) -> io::Result<()> {
    Ok(())
}

/// The extended attribute holding a file's POSIX access ACL.
#[cfg(target_os = "linux")]
const ACCESS_ACL: &str = "system.posix_acl_access";

/// Why [`Acl::parse`] refuses entries the kernel would.
#[cfg(target_os = "linux")]
const OUT_OF_ORDER: &str = "entries not in the kernel's order (the owner, named users, the owning \
                            group, named groups, the mask, others)";

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
/// One that [`Acl::parse`] returns is one the kernel takes, but for ids it does not map: one
/// owner's, owning group's and others' entry each and at most one mask, in the kernel's
/// order, a mask if it has named entries, and permissions of 7 at most.
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
        // The kernel's check (`posix_acl_valid`), but for the one that named ids are mapped:
        // it shows an unmapped id as `u32::MAX` (see `without_unmapped`). `state` is the
        // entries that may come next: the owner's; named users' or the owning group's; named
        // groups', the mask or others'; others'; none (`DONE`).
        const DONE: u16 = 0;
        let mut state = USER_OBJ;
        let mut named = false;
        for entry in &entries {
            state = match (entry.tag, state) {
                (USER_OBJ, USER_OBJ) => USER,
                (USER, USER) | (GROUP, GROUP) => {
                    named = true;
                    state
                }
                (GROUP_OBJ, USER) => GROUP,
                (MASK, GROUP) => OTHER,
                (OTHER, OTHER) => DONE,
                (OTHER, GROUP) if !named => DONE,
                (OTHER, GROUP) => return Err("named entries without a mask"),
                (MASK, OTHER) => return Err("more than one mask"),
                _ => return Err(OUT_OF_ORDER),
            };
        }
        if state != DONE {
            return Err("not one entry each for the owner, the owning group and others");
        }
        Ok(Self { entries })
    }

    /// An ACL of `entries` as they are, which [`Acl::parse`] may refuse: for the tests of
    /// what the kernel refuses.
    #[cfg(test)]
    pub(crate) fn from_entries(entries: Vec<Entry>) -> Self {
        Self { entries }
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
    /// limited by the mask: `None` without one.
    pub(crate) fn named_user(&self, uid: u32) -> Option<u16> {
        let named = self
            .entries
            .iter()
            .find(|entry| entry.tag == USER && entry.id == uid);
        named.map(|entry| self.masked(entry.perm))
    }

    /// Whether the kernel lets the user `uid`, who does not own the file, in the groups
    /// `groups` (its effective group and supplementary ones), do `want` (read 4, write 2) to
    /// a file of the group `file_gid` with this ACL, as `posix_acl_permission` decides: by the
    /// first entry naming the user, if there is one; else by the owning group's entry and
    /// those naming its groups, if it is in any of them: allowed if one of them holds `want`,
    /// within the mask, refused otherwise; else by the others' entry. Each within the mask,
    /// but others'.
    pub(crate) fn permits(&self, uid: u32, file_gid: u32, groups: &[u32], want: u16) -> bool {
        let mut in_a_group = false;
        for entry in &self.entries {
            match entry.tag {
                USER if entry.id == uid => return self.masked(entry.perm) & want == want,
                GROUP_OBJ | GROUP => {
                    let gid = if entry.tag == GROUP_OBJ {
                        file_gid
                    } else {
                        entry.id
                    };
                    if groups.contains(&gid) {
                        in_a_group = true;
                        if entry.perm & want == want {
                            return self.masked(entry.perm) & want == want;
                        }
                    }
                }
                OTHER => return !in_a_group && entry.perm & want == want,
                _ => {}
            }
        }
        false
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
