//! Atomic writes: a temporary file beside the cache file (`tempfile`'s exclusive, randomly
//! named creation; mode 0600 from creation on unix, then the owner and mode the replaced file
//! had and, on Linux, its POSIX access ACL), written, fsynced, renamed over the cache file,
//! and marked modified after the rename.
//!
//! The ACL is the replaced file's, less what the new file may not be given; an ACL the new
//! file inherited from its directory's default ACL is removed (see [`acl`]).
//!
//! A rename cannot keep a file's other hard links, and a process may not be allowed to give
//! the new file the old one's owner: the file is then left as it is and the write fails,
//! saying why, unless the file is this process's user's (the new file then keeps its own
//! group, without group permissions) or shared by a group it is in, through a directory
//! setgid to that group (see [`write_document`]).
//!
//! A temporary file holds the tokens in plaintext, so one left behind by a writer killed
//! between creating and renaming it is removed by the next write (see [`remove_leftovers`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[cfg(unix)]
use std::os::unix::fs::MetadataExt;

use tempfile::TempPath;

use super::acl::{self, AccessAcl};
use super::error::PersistenceError;
use super::reader::{Stamp, age, is_missing};

/// The directory holding `path` (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The file a write replaces: `path`, or the target of `path` if it is a symlink (a dangling
/// one included), so that the link survives.
pub(super) fn write_target(path: &Path) -> Result<PathBuf, PersistenceError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(target) => Ok(target),
            Err(e) if is_missing(&e) => {
                let link = fs::read_link(path)
                    .map_err(|e| PersistenceError::io("follow the symlink", path, e))?;
                Ok(parent_dir(path).join(link))
            }
            Err(e) => Err(PersistenceError::io("follow the symlink", path, e)),
        },
        _ => Ok(path.to_path_buf()),
    }
}

/// Creates `dir` and its missing ancestors, mode 0700.
pub(super) fn create_dir(dir: &Path) -> Result<(), PersistenceError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| PersistenceError::io("create the token cache directory", dir, e))
}

/// Opens a new file exclusively, mode 0600 from creation on unix.
pub(super) fn create_new_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Operation name of errors that leave the cache file as it was.
const REPLACE: &str = "replace the token cache";

/// The file a write replaces, if there is one. A missing file is created; other errors show
/// up when the file is replaced.
fn replaced_file(target: &Path) -> Option<fs::Metadata> {
    fs::metadata(target).ok()
}

/// Refuses to replace a file the rename would not treat as its owner expects (unix):
///
/// * without its owner's write permission: the user froze it. The rename needs only the
///   directory's permission and would replace it anyway. Decided by the mode bits, not by
///   trying, so that root, whom permissions do not stop, honours it too.
/// * with other hard links (`msal.cache.nocae` linked to `msal.cache`, say): the rename would
///   give this name a file of its own and leave the other names with the old content, which
///   the tools reading them would then use for good. Writing in place instead (as
///   `msal-extensions` does) would keep the links, but lock-free readers would then see a
///   partial file and a crash would leave a truncated cache; a symbolic link does what the
///   hard link was for and is written through.
#[cfg(unix)]
fn refuse_to_replace(target: &Path, replaced: &fs::Metadata) -> Result<(), PersistenceError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = replaced.permissions().mode();
    let why = if mode & 0o200 == 0 {
        format!(
            "it is read-only (mode {:04o}), so it was left as it is: to let the token cache \
             be updated, make it writable (chmod u+w)",
            mode & 0o7777
        )
    } else if replaced.is_file() && replaced.nlink() > 1 {
        format!(
            "it has {} hard links (other names of the same file), which replacing it would \
             separate, so it was left as it is: make the other names symbolic links to it \
             (ln -sf), or remove them; to find them, run `find {dir_arg} -xdev -samefile \
             {path_arg}` (with the file system's mount point for {dir} to search all of it)",
            replaced.nlink(),
            dir = parent_dir(target).display(),
            dir_arg = shell_word(parent_dir(target)),
            path_arg = shell_word(target),
        )
    } else {
        return Ok(());
    };
    Err(PersistenceError::io(REPLACE, target, io::Error::other(why)))
}

/// `path` as one word of a POSIX shell command the user may paste: single-quoted, a `'` in it
/// written `'\''`, and `./` before a relative path starting with `-`, which the command would
/// take for an option. A byte that is not UTF-8 is written by `printf` (`'"$(printf '\377')"'`):
/// shown as text, it would name another file.
#[cfg(unix)]
pub(super) fn shell_word(path: &Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let mut word = String::from(if bytes.first() == Some(&b'-') {
        "'./"
    } else {
        "'"
    });
    for chunk in bytes.utf8_chunks() {
        word.push_str(&chunk.valid().replace('\'', r"'\''"));
        for byte in chunk.invalid() {
            // Never a newline, which the command substitution would drop.
            let _ = write!(word, r#"'"$(printf '\{byte:03o}')"'"#);
        }
    }
    word.push('\'');
    word
}

#[cfg(not(unix))]
fn refuse_to_replace(_target: &Path, _replaced: &fs::Metadata) -> Result<(), PersistenceError> {
    Ok(())
}

/// Writes `bytes` to a temporary file beside the cache file and renames it over the cache file
/// (blocking). Returns the new file's stamp. The temporary file is removed if anything fails.
///
/// The new file gets the old one's permission bits, on Linux its POSIX access ACL (see
/// [`acl`]: without it, the mode alone would give the owning group the ACL's mask, and the
/// users the ACL names would lose access), and, on unix, its owner and group: a process
/// running as root on the user's home (a dev container, `sudo -E`) leaves the user's file
/// theirs. Where this process may not give it that owner and group (or cannot name them, in
/// a user namespace that does not map them), the new file of a file of this process's user
/// keeps the group it was created with and loses the group permission bits (and its ACL's
/// owning-group permissions), and another user's file in a directory setgid to the file's
/// group, which may read and write it (by its ACL if it has one), and which its owner is
/// in (when the user database knows that owner), its owner's bits giving read and write,
/// becomes this process's user's, its mode and ACL kept; its former owner keeps access as
/// a member of that group, or by its own named entry, so that it may take the file back
/// (see [`give_owner`]). Any other file of another user, one whose ACL could not be read
/// or understood (or is an NFSv4 ACL), one without its owner's write bit, or one with other
/// hard links is left as it is, and the write fails saying so. The ACL fails a write in one
/// more case: the new file inherited an ACL from its directory's default ACL and it could
/// not be removed (`setfacl -k` on the directory removes the default ACL; see
/// [`acl::remove_inherited`]). An ACL that cannot be set on the new file does not: a warning
/// says so, and the new file has the mode alone (see [`acl`]).
pub(super) fn write_document(path: &Path, bytes: &[u8]) -> Result<Stamp, PersistenceError> {
    let target = write_target(path)?;
    let replaced = replaced_file(&target);
    if let Some(replaced) = &replaced {
        refuse_to_replace(&target, replaced)?;
    }
    remove_leftovers(&target);
    let temp = written_beside(&target, replaced.as_ref(), bytes)?;
    install(temp, &target)
}

/// How old a temporary file beside the cache must be before it is taken for a dead writer's.
/// A write takes milliseconds, and writers hold the lock file while they write; the margin
/// covers a writer whose lock was broken as too old (60 s, see `lock_file.rs`) while it
/// still ran.
const LEFTOVER_AGE: Duration = Duration::from_secs(10 * 60);

/// Removes the temporary files of `target` ([`written_beside`]'s `<cache>.tmp.*`) that are
/// regular files whose modification time's [`age`] is [`LEFTOVER_AGE`] or more (for one
/// dated ahead of the clock: zero within [`RECENT_AHEAD`](super::reader::RECENT_AHEAD), else
/// its distance from now): left by a writer that died before renaming one, with the tokens in
/// it.
/// Called under the lock file. Best effort: a failure is logged, and the write goes on.
fn remove_leftovers(target: &Path) {
    let Some(name) = target.file_name() else {
        return;
    };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp.");
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(prefix) {
            continue;
        }
        // `DirEntry::metadata` does not follow a symbolic link: only regular files go.
        let old = entry.metadata().is_ok_and(|meta| {
            meta.is_file() && meta.modified().is_ok_and(|at| age(at) >= LEFTOVER_AGE)
        });
        if !old {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(
                path = %path.display(),
                "removed a temporary token cache file a writer left behind"
            ),
            Err(error) if is_missing(&error) => {}
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "could not remove a temporary token cache file a writer left behind"
            ),
        }
    }
}

/// A temporary file beside `target`, holding `bytes`, flushed to disk, with the mode, owner and
/// (Linux) access ACL of the file it replaces (`replaced`, `None` if there is none: mode 0600,
/// no ACL).
pub(super) fn written_beside(
    target: &Path,
    replaced: Option<&fs::Metadata>,
    bytes: &[u8],
) -> Result<TempPath, PersistenceError> {
    const WRITE: &str = "write the temporary token cache file";
    // `<cache>.tmp.<pid>.<random>`: a leftover after a crash says whose it was.
    let mut prefix = target.file_name().unwrap_or_default().to_os_string();
    prefix.push(format!(".tmp.{}.", std::process::id()));
    // The name tried last, for the error when no file could be created.
    let mut tried = PathBuf::new();
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .make_in(parent_dir(target), |candidate| {
            candidate.clone_into(&mut tried);
            create_new_private(candidate)
        })
        .map_err(|e| PersistenceError::io(WRITE, &tried, e))?;
    let acl = match replaced {
        Some(_) => AccessAcl::read(target),
        None => AccessAcl::Absent,
    };
    let filled = give_owner(temp.as_file(), target, replaced, &acl).and_then(|withheld| {
        fill(temp.as_file(), target, replaced, &acl, withheld, bytes)
            .map_err(|e| PersistenceError::io(WRITE, temp.path(), e))
    });
    if let Err(error) = filled {
        discard(temp.into_temp_path());
        return Err(error);
    }
    // Closed here: an open file cannot be renamed on every platform.
    Ok(temp.into_temp_path())
}

/// Renames `temp` over `target`, then marks it modified now. Returns its stamp.
///
/// Lock-free readers see the old file or the new one, never a partial one. The new
/// modification time matters to msal-extensions: a reader notes the time it read at, and
/// reloads only a file modified after that. A rename keeps the time the temporary file was
/// written, so a reader of the old file between that write and the rename would never
/// reload the new one, and its next write would put its stale copy back.
pub(super) fn install(temp: TempPath, target: &Path) -> Result<Stamp, PersistenceError> {
    temp.persist(target).map_err(|e| {
        discard(e.path);
        PersistenceError::io(REPLACE, target, e.error)
    })?;
    let touched = OpenOptions::new()
        .write(true)
        .open(target)
        .and_then(|file| {
            file.set_modified(SystemTime::now())?;
            file.metadata()
        });
    let meta =
        touched.map_err(|e| PersistenceError::io("mark the token cache modified", target, e))?;
    Ok(Stamp::of(&meta))
}

/// Gives the new temporary file the owner and group of the file it replaces, if they differ
/// (a writer running as another user, root say). Returns the permission bits the new file
/// must not take from the replaced one.
///
/// When this process may not give it that owner and group (`EPERM`, or `EINVAL` for an id
/// its user namespace does not map), or the file's owner or group is one it cannot name
/// (shown as the overflow id: see [`unmapped_ids`]):
///
/// * the file is this process's user's, with a group it cannot give (one it is not in, or
///   one it cannot name): the new file keeps the group it was created with and gets no group
///   permission (nor its ACL's owning-group entry), so that no group gains access the file
///   did not give it (the returned bits);
/// * the file is another user's, in a directory setgid to the file's group, which the new
///   file was created with, which this process is in (its effective group or a
///   supplementary one; a setgid directory gives its group to anyone's new file there), and
///   which may read and write the file: decided by the mode's group bits without an ACL, by
///   the ACL `acl` with one ([`AccessAcl::shares_read_write`]: the kernel must let this
///   process read and write it, and both users must by their named entries, or the owning
///   group's entry for one the ACL does not name, within the mask; not by the mode's group
///   bits, which are the mask). The former owner must be in the group too, as the user
///   database says (its next login's groups, [`user_groups`]; an owner it does not know, or
///   whose groups could not be looked up, is taken to be, as it is on AIX, Solaris, illumos,
///   Apple's systems, Redox and Emscripten, where they are not looked up), and the owner's
///   bits must give read and write, which the new owner gets.
///   The group's members share the cache, so the new file is
///   this process's user's, with the same mode and ACL, and its former owner keeps access
///   as a member of the group or by its named entry, which lets it take the file back. The
///   setgid bit gives every member's new file that group, so each may update the file in
///   turn. Without it the new file has
///   its writer's primary group on Linux (unless the file system is mounted `grpid`; BSD and
///   macOS give the directory's group, so the setgid bit is asked there too, though not
///   needed), and a file whose group is one member's primary group would
///   pass to that member, then be refused to its former owner, whose new file has another
///   group: it locks the former owner out of their own cache.
/// * otherwise it is refused, naming both owners and what to do (for a file with an ACL,
///   `setfacl` rather than `chmod` to let the group write it, and to give the two users'
///   named entries read and write; for one whose ACL could not be read or understood, why;
///   for an owner not in the group, to add it):
///   taking the file over would lock its owner out of their tokens.
#[cfg(unix)]
fn give_owner(
    file: &File,
    target: &Path,
    replaced: Option<&fs::Metadata>,
    acl: &AccessAcl,
) -> Result<u32, PersistenceError> {
    let Some(replaced) = replaced else {
        return Ok(0);
    };
    let unmapped = unmapped_ids(target, replaced.uid(), replaced.gid());
    give_owner_unless_unmapped(file, target, replaced, acl, unmapped)
}

/// [`give_owner`], told which of the replaced file's ids (uid, gid) this process cannot name:
/// those are never given, as if it were not allowed to.
#[cfg(unix)]
pub(super) fn give_owner_unless_unmapped(
    file: &File,
    target: &Path,
    replaced: &fs::Metadata,
    acl: &AccessAcl,
    unmapped: (bool, bool),
) -> Result<u32, PersistenceError> {
    use std::os::unix::fs::PermissionsExt;
    /// Every group permission bit.
    const GROUP_ALL: u32 = 0o070;
    /// The set-group-ID bit: a directory's new files get its group.
    const SETGID: u32 = 0o2000;
    let owner = (replaced.uid(), replaced.gid());
    let ours = file
        .metadata()
        .map_err(|e| PersistenceError::io(REPLACE, target, e))?;
    let ours = (ours.uid(), ours.gid());
    if unmapped == (false, false) {
        if ours == owner {
            return Ok(0);
        }
        let error = match std::os::unix::fs::fchown(file, Some(owner.0), Some(owner.1)) {
            Ok(()) => return Ok(0),
            Err(e) => e,
        };
        // `EPERM` and `EACCES` are `PermissionDenied`; `EINVAL` alone is `InvalidInput`.
        let not_allowed = matches!(
            error.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
        );
        if !not_allowed {
            return Err(PersistenceError::io(REPLACE, target, error));
        }
    }
    // The temporary file's uid is this process's effective uid.
    if owner.0 == ours.0 && !unmapped.0 {
        return Ok(GROUP_ALL);
    }
    let mode = replaced.permissions().mode();
    // The groups this process is in, as the kernel checks them: a setgid directory gives its
    // group to anyone's new file there, so any of them may share a file.
    let groups: Vec<u32> = std::iter::once(rustix::process::getegid())
        .chain(rustix::process::getgroups().unwrap_or_default())
        .map(|group| group.as_raw())
        .collect();
    // An owner this process cannot name has no named entry it could find, nor groups.
    let owner_uid = (!unmapped.0).then_some(owner.0);
    let through_dir = !unmapped.1
        && owner.1 == ours.1
        && fs::metadata(parent_dir(target))
            .is_ok_and(|dir| dir.mode() & SETGID != 0 && dir.gid() == owner.1)
        && groups.contains(&owner.1);
    // Looked up only for a file the directory would share.
    let former = owner_uid.filter(|_| through_dir).and_then(user_groups);
    let owner_groups = former.as_ref().map(|(_, groups)| groups.as_slice());
    if through_dir && acl.shares_read_write(mode, owner.1, owner_uid, owner_groups, ours.0, &groups)
    {
        return Ok(0);
    }
    let unnamed = if unmapped.0 || unmapped.1 {
        " (an overflow id, which stands for any id this user namespace does not map)"
    } else {
        ""
    };
    let owner_is = if unmapped.0 {
        "its owner, outside this user namespace".to_owned()
    } else {
        format!("uid {}", owner.0)
    };
    let file_arg = shell_word(target);
    let outside = former
        .as_ref()
        .filter(|(_, groups)| !groups.contains(&owner.1));
    // With an ACL, `chmod g+rw` sets the mask, not what the group may do, and a user it
    // names is judged by that entry.
    let share_file = || match acl.sharing_entries(owner_uid, ours.0) {
        Some(entries) => format!(
            "setfacl -m {entries} {file_arg}: it has an ACL, whose mask `chmod g+rw` would set \
             rather than the group's own entry"
        ),
        // The new owner is judged by the owner's bits alone.
        None if mode & 0o600 != 0o600 => format!("chmod ug+rw {file_arg}"),
        None => format!("chmod g+rw {file_arg}"),
    };
    // An ACL not known, or not read, shares the file with nobody: no command would tell it
    // otherwise.
    let share = if let Some(unknown) = acl.unknown() {
        format!(
            "update the token cache as {owner_is}: whether a group shares the file is decided \
             by its POSIX ACL, which could not be read or understood ({unknown})"
        )
    } else if let Some(unseen) = acl.unseen() {
        format!("update the token cache as {owner_is}: {unseen}")
    } else if let Some((name, _)) = outside {
        // The owner is not in the group the directory shares the file through: no command
        // on the file alone would do.
        let add = if is_plain_name(name) {
            format!(
                " (for a local user: usermod -aG {} {name}, which its next login sees)",
                owner.1
            )
        } else {
            String::new()
        };
        // Were the owner in the group, would the file be shared? If not, say that too.
        let also = if acl.shares_read_write(mode, owner.1, owner_uid, None, ours.0, &groups) {
            String::new()
        } else {
            format!(
                "; the group must also read and write the file: {}",
                share_file()
            )
        };
        format!(
            "update the token cache as {owner_is}, or add that user ({name:?}) to the file's \
             group, gid {}, through which its directory shares it{add}: the user is not in \
             that group, so it could not write the file again once it were this process's \
             user's{also}",
            owner.1
        )
    } else {
        format!(
            "update the token cache as {owner_is}, or share it through a group: make its \
             directory setgid to a group both users are in, which may write to it (chgrp \
             <group> {dir}; chmod g+rwxs {dir}), and the file that group's, which may read and \
             write it (chgrp <group> {file_arg}; {share_file})",
            dir = shell_word(parent_dir(target)),
            share_file = share_file(),
        )
    };
    let why = format!(
        "it belongs to uid {} gid {}{unnamed}, and this process (uid {} gid {}) may not give \
         the new file that owner, so it was left as it is rather than taken from its owner: \
         {share}",
        owner.0, owner.1, ours.0, ours.1,
    );
    Err(PersistenceError::io(REPLACE, target, io::Error::other(why)))
}

/// The name of the user `uid` and the groups it is in (its primary group and those that list
/// it, as its next login would have them: `getgrouplist`), or `None` when it has no entry in
/// the user database (a container without one for the file's owner), or they cannot be
/// looked up (an error of the lookup, such as SSSD or LDAP being unreachable or a buffer
/// limit, or a name not UTF-8: [`lookup_name`]): it is then taken to be in the file's group,
/// there being no better guess.
#[cfg(all(
    unix,
    not(any(
        target_os = "aix",
        target_os = "solaris",
        target_os = "illumos",
        target_vendor = "apple",
        target_os = "redox",
        target_os = "emscripten",
    ))
))]
fn user_groups(uid: u32) -> Option<(String, Vec<u32>)> {
    use nix::unistd::{Uid, User, getgrouplist};
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten()?;
    let name = lookup_name(&user.name)?;
    let groups = getgrouplist(&name, user.gid).ok()?;
    Some((
        user.name,
        groups.into_iter().map(|gid| gid.as_raw()).collect(),
    ))
}

/// The user name `name`, as `nix` gives it, to look up its groups by: `None` for one that
/// held bytes not UTF-8 (`nix` replaces them with U+FFFD, a name the user database does not
/// know, whose groups would come back as the primary one alone) or a NUL.
#[cfg(unix)]
// Unused on the targets where `user_groups` looks nothing up.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) fn lookup_name(name: &str) -> Option<std::ffi::CString> {
    if name.contains(char::REPLACEMENT_CHARACTER) {
        return None;
    }
    std::ffi::CString::new(name).ok()
}

/// Elsewhere `getgrouplist` is not offered (or takes other types): the owner is taken to be
/// in the file's group.
#[cfg(all(
    unix,
    any(
        target_os = "aix",
        target_os = "solaris",
        target_os = "illumos",
        target_vendor = "apple",
        target_os = "redox",
        target_os = "emscripten",
    )
))]
fn user_groups(_uid: u32) -> Option<(String, Vec<u32>)> {
    None
}

/// Whether the user name `name` may be pasted in a shell command as it is.
#[cfg(unix)]
pub(super) fn is_plain_name(name: &str) -> bool {
    !name.starts_with('-')
        && !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
}

/// Which of the ids `uid` and `gid`, as `stat` shows the owner of the file `target`, this
/// process cannot name (Linux). In a user namespace that does not map every id (a rootless
/// container), `stat` shows an owner outside it as the overflow id (65534), which may be
/// mapped as well (`nobody` inside, which this process may run as): giving the new file that
/// id would give it to whoever has it here, not to the file's owner.
///
/// The overflow id is told apart from a mapped one where it can be: the owner is mapped when
/// this process may open the file with `O_NOATIME`, which the kernel allows only to the
/// file's owner or to a holder of `CAP_FOWNER` over it (never over an id it does not map);
/// the group is mapped when it is this process's effective group. A file of an unmapped
/// group shown as this process's own group (it runs as the overflow group) is taken for its
/// own.
#[cfg(target_os = "linux")]
fn unmapped_ids(target: &Path, uid: u32, gid: u32) -> (bool, bool) {
    use rustix::fs::{Mode, OFlags};
    let read = |path: &str| fs::read_to_string(path).ok();
    let unmapped =
        |id, map, overflow| shows_unmapped(id, read(map).as_deref(), read(overflow).as_deref());
    let opens_as_owner = || {
        let flags = OFlags::RDONLY
            | OFlags::NOATIME
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        rustix::fs::open(target, flags, Mode::empty()).is_ok()
    };
    (
        unmapped(uid, "/proc/self/uid_map", "/proc/sys/kernel/overflowuid") && !opens_as_owner(),
        unmapped(gid, "/proc/self/gid_map", "/proc/sys/kernel/overflowgid")
            && gid != rustix::process::getegid().as_raw(),
    )
}

/// Elsewhere `stat` shows a file's real owner.
#[cfg(all(unix, not(target_os = "linux")))]
fn unmapped_ids(_target: &Path, _uid: u32, _gid: u32) -> (bool, bool) {
    (false, false)
}

/// Whether `id`, as `stat` shows it, may stand for an id this process's user namespace does
/// not map: it is the overflow id (`overflow`: the text of `/proc/sys/kernel/overflowuid` or
/// `overflowgid`; 65534, the kernel's default, if unreadable) and the namespace's id map
/// (`map`: the text of `/proc/self/uid_map` or `gid_map`; unreadable, no namespace) is not the
/// initial namespace's, which maps every id to itself.
#[cfg(target_os = "linux")]
pub(super) fn shows_unmapped(id: u32, map: Option<&str>, overflow: Option<&str>) -> bool {
    const IDENTITY: [&str; 3] = ["0", "0", "4294967295"];
    const DEFAULT_OVERFLOW: u32 = 65534;
    let Some(map) = map else {
        return false;
    };
    if map.split_whitespace().eq(IDENTITY) {
        return false;
    }
    let overflow = overflow
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_OVERFLOW);
    id == overflow
}

#[cfg(not(unix))]
fn give_owner(
    _file: &File,
    _target: &Path,
    _replaced: Option<&fs::Metadata>,
    _acl: &AccessAcl,
) -> Result<u32, PersistenceError> {
    Ok(0)
}

/// Removes from the new temporary file `file` of `target` the ACL it inherited from its
/// directory, if any (failing if it cannot: see [`acl::remove_inherited`]), gives it the
/// replaced file's permission bits but `withheld` (0600 for a new file), then its access ACL
/// `acl` (Linux; never failing, see [`AccessAcl::apply`]), writes `bytes` to it and flushes
/// it to disk.
pub(super) fn fill(
    mut file: &File,
    target: &Path,
    replaced: Option<&fs::Metadata>,
    acl: &AccessAcl,
    withheld: u32,
    bytes: &[u8],
) -> io::Result<()> {
    // Before the mode: an ACL inherited from the directory's default ACL would take the
    // mode's group bits as its mask, and let in the users it names.
    acl::remove_inherited(file, parent_dir(target))?;
    // Set explicitly, after the owner (a change of owner may clear bits): the creation mode
    // is subject to the umask, and an existing file's mode is kept (it is never widened: it is
    // the mode the file already had, or less). With an ACL the group bits are what the owning
    // group had, not the mask the old mode showed: all the new file has if the ACL fails.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = replaced.map_or(0o600, |meta| {
            acl.mode(meta.permissions().mode()) & !withheld
        });
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = replaced;
    // After the mode, which would set the ACL's mask; before the tokens, so that the file
    // has its final permissions once it holds them.
    acl.apply(file, target, withheld);
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes a temporary file that was not renamed into place.
fn discard(temp: TempPath) {
    let path = temp.to_path_buf();
    if let Err(error) = temp.close() {
        tracing::warn!(path = %path.display(), %error, "could not remove a temporary token cache file");
    }
}
