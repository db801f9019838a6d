//! The token cache file's POSIX access ACL, in the kernel's format (Linux).

#[cfg(target_os = "linux")]
use crate::entra::persistence::acl::{
    AccessAcl, Acl, GROUP, GROUP_OBJ, MASK, OTHER, UNMAPPED, USER, USER_OBJ,
};

/// The group of the file whose ACL is fuzzed: the fuzzer names it in a named group's entry
/// now and then (`fuzz/dict/posix_acl.dict`).
#[cfg(target_os = "linux")]
const FILE_GID: u32 = 100;

/// At most this many of the ids an ACL names are tried as users and groups, so that an ACL of
/// many entries is not tried against every one of them.
#[cfg(target_os = "linux")]
const IDS: usize = 4;

/// One entry: tag, permissions, id.
#[cfg(target_os = "linux")]
type Entry = (u16, u16, u32);

/// The value of a file's `system.posix_acl_access` attribute: `data` is the whole value.
///
/// Checks, for what parses (`Acl::parse`): the bytes written back (`Acl::to_bytes`) are
/// `data`, and parse into the same ACL; the owning group's and named users' permissions are
/// their entries within the mask; `permits` decides as the kernel's rule does, told another
/// way (for the ids the ACL names, one it does not, and groups of none, the file's, the named
/// ones); the new file's mode keeps the owner's and others' bits, its group bits what the
/// owning group had; what `to_set` sets (after `without_unmapped`, `owning_group_emptied`)
/// parses, names someone and no unmapped id; a file `shares_read_write` lets a writer take
/// over, the former owner may take back with the ACL the takeover set; and the
/// `sharing_entries` of any ACL, set as `setfacl -m` would, make the file shared. Elsewhere
/// than on Linux, where no ACL is read, it does nothing.
pub fn posix_acl(data: &[u8]) {
    #[cfg(target_os = "linux")]
    if let Ok(acl) = Acl::parse(data) {
        check(&acl, data);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

#[cfg(target_os = "linux")]
fn check(acl: &Acl, data: &[u8]) {
    let bytes = acl.to_bytes();
    assert_eq!(bytes, data, "{acl:?} written back");
    assert_eq!(Acl::parse(&bytes).as_ref(), Ok(acl), "{acl:?} parsed again");
    let entries = entries_of(&bytes);
    let mask = perm_of(&entries, MASK).unwrap_or(0o7);
    let group = perm_of(&entries, GROUP_OBJ).unwrap_or_else(|| panic!("{acl:?}: no group"));
    assert_eq!(acl.owning_group(), group & mask, "{acl:?}");
    assert_eq!(
        acl.names_anyone(),
        entries.iter().any(|e| matches!(e.0, USER | GROUP)),
        "{acl:?}"
    );

    let users = named(&entries, USER);
    let groups = named(&entries, GROUP);
    let fresh = fresh_ids(&entries);
    for &uid in users.iter().chain(&fresh) {
        let first = entries.iter().find(|e| e.0 == USER && e.2 == uid);
        assert_eq!(acl.named_user(uid), first.map(|e| e.1 & mask), "{acl:?}");
    }
    let group_sets = [
        Vec::new(),
        vec![FILE_GID],
        groups.clone(),
        [&[FILE_GID][..], &groups].concat(),
    ];
    for &uid in users.iter().chain(&fresh) {
        for member_of in &group_sets {
            for want in 0..=0o7 {
                assert_eq!(
                    acl.permits(uid, FILE_GID, member_of, want),
                    kernel_permits(&entries, uid, member_of, want),
                    "{acl:?}: uid {uid} in {member_of:?} wants {want:o}"
                );
            }
        }
    }

    let present = AccessAcl::Present(acl.clone());
    let mode = mode_of(&entries);
    for old in [mode, 0o777, 0o7777, 0] {
        let new = present.mode(old);
        assert_eq!(
            new & !0o070,
            old & 0o707,
            "{acl:?}: mode {old:o} gave {new:o}"
        );
        assert_eq!(new & 0o070, u32::from(acl.owning_group()) << 3, "{acl:?}");
    }

    let (trimmed, unmapped) = acl.without_unmapped();
    assert_eq!(Acl::parse(&trimmed.to_bytes()).as_ref(), Ok(&trimmed));
    let is_unmapped = |e: &Entry| matches!(e.0, USER | GROUP) && e.2 == UNMAPPED;
    assert_eq!(unmapped, entries.iter().filter(|e| is_unmapped(e)).count());
    let emptied = acl.owning_group_emptied();
    assert_eq!(Acl::parse(&emptied.to_bytes()).as_ref(), Ok(&emptied));
    assert_eq!(emptied.owning_group(), 0);
    for withheld in [0, 0o070] {
        let (set, dropped) = present.to_set(withheld);
        assert_eq!(dropped, unmapped);
        let Some(set) = set else {
            assert!(!trimmed.names_anyone(), "{acl:?}: nothing set");
            continue;
        };
        let set_entries = entries_of(&set.to_bytes());
        assert_eq!(Acl::parse(&set.to_bytes()).as_ref(), Ok(&set));
        assert!(set.names_anyone(), "{set:?} set though it names nobody");
        assert!(!set_entries.iter().any(is_unmapped), "{set:?}");
        if withheld != 0 {
            assert_eq!(set.owning_group(), 0, "{set:?} gives the new group");
        }
    }

    takeovers(acl, &present, mode, &users, &groups, fresh);
}

/// `shares_read_write` for writers and owners among the named users and two ids the ACL does
/// not name (an owner not named: `None`), in the file's group or not, with the named groups
/// or without: a writer it lets take over leaves the former owner a way back, and the
/// entries `sharing_entries` gives share the file.
#[cfg(target_os = "linux")]
fn takeovers(
    acl: &Acl,
    present: &AccessAcl,
    mode: u32,
    users: &[u32],
    groups: &[u32],
    [fresh_writer, fresh_owner]: [u32; 2],
) {
    let writers: Vec<u32> = users.iter().copied().chain([fresh_writer]).collect();
    let owners: Vec<Option<u32>> = [None, Some(fresh_owner)]
        .into_iter()
        .chain(users.iter().copied().map(Some))
        .collect();
    let with_groups = [&[FILE_GID][..], groups].concat();
    let writer_groups = [Vec::new(), vec![FILE_GID], with_groups.clone()];
    let owner_groups = [
        None,
        Some(Vec::new()),
        Some(vec![FILE_GID]),
        Some(with_groups),
    ];
    for &writer in &writers {
        for &owner in owners.iter().filter(|&&owner| owner != Some(writer)) {
            for writer_groups in &writer_groups {
                for owner_groups in &owner_groups {
                    let shared = present.shares_read_write(
                        mode,
                        FILE_GID,
                        owner,
                        owner_groups.as_deref(),
                        writer,
                        writer_groups,
                    );
                    let back_groups = owner_groups.clone().unwrap_or_else(|| vec![FILE_GID]);
                    let what = format!(
                        "{acl:?} mode {mode:o}: writer {writer} in {writer_groups:?}, owner \
                         {owner:?} in {owner_groups:?}"
                    );
                    if !writer_groups.contains(&FILE_GID) || !back_groups.contains(&FILE_GID) {
                        assert!(!shared, "{what}: shared beyond the file's group");
                    }
                    if shared {
                        assert!(
                            acl.permits(writer, FILE_GID, writer_groups, 0o6),
                            "{what}: the kernel would not let the writer in"
                        );
                        // An owner not named has its entries dropped: any id the ACL does not
                        // name stands for it.
                        let owner = owner.unwrap_or(fresh_owner);
                        way_back(present, mode, writer, writer_groups, owner, &back_groups)
                            .unwrap_or_else(|after| panic!("{what}: no way back from {after}"));
                    }
                }
            }
            sharing_entries_share(acl, present, owner, writer);
        }
    }
}

/// Whether the former owner `owner` in the groups `owner_groups` may take the file back from
/// `writer` once the writer took it over, with the ACL (or the mode) the takeover gave it:
/// `Err` saying what the file then is otherwise.
#[cfg(target_os = "linux")]
fn way_back(
    present: &AccessAcl,
    mode: u32,
    writer: u32,
    writer_groups: &[u32],
    owner: u32,
    owner_groups: &[u32],
) -> Result<(), String> {
    let (set, _) = present.to_set(0);
    let (after, mode) = match set {
        Some(set) => {
            let mode = mode_of(&entries_of(&set.to_bytes()));
            (AccessAcl::Present(set), mode)
        }
        None => (AccessAcl::Absent, present.mode(mode)),
    };
    let back = after.shares_read_write(
        mode,
        FILE_GID,
        Some(writer),
        Some(writer_groups),
        owner,
        owner_groups,
    );
    back.then_some(())
        .ok_or_else(|| format!("{after:?} mode {mode:o}"))
}

/// The entries `sharing_entries` names for `owner` and `writer`, set on the ACL as
/// `setfacl -m` would, let the writer (not named: any id but the owner's) in the file's group
/// take the file over from its owner in that group.
#[cfg(target_os = "linux")]
fn sharing_entries_share(acl: &Acl, present: &AccessAcl, owner: Option<u32>, writer: u32) {
    let entries = present
        .sharing_entries(owner, writer)
        .unwrap_or_else(|| panic!("{acl:?}: no entries to share it"));
    let mut set = entries_of(&acl.to_bytes());
    for item in entries.split(',') {
        let mut parts = item.split(':');
        let (Some(kind), Some(id), Some("rw"), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("{acl:?}: {item:?} of {entries:?} is not a setfacl entry giving rw");
        };
        let tag = match (kind, id) {
            ("u", "") => USER_OBJ,
            ("g", "") => GROUP_OBJ,
            ("m", "") => MASK,
            ("u", id) => {
                let uid = id.parse().unwrap_or_else(|_| panic!("{entries:?}"));
                assert!(
                    Some(uid) == owner || uid == writer,
                    "{acl:?}: {entries:?} names {uid}, neither owner nor writer"
                );
                assert!(set.iter().any(|e| e.0 == USER && e.2 == uid), "{entries:?}");
                for entry in set.iter_mut().filter(|e| e.0 == USER && e.2 == uid) {
                    entry.1 = 0o6;
                }
                continue;
            }
            _ => panic!("{acl:?}: {item:?} of {entries:?} is not an entry it gives"),
        };
        match set.iter_mut().find(|e| e.0 == tag) {
            Some(entry) => entry.1 = 0o6,
            // A mask where there was none: before others', the last entry.
            None => set.insert(set.len().saturating_sub(1), (tag, 0o6, UNMAPPED)),
        }
    }
    let shared = Acl::parse(&encoded(&set))
        .unwrap_or_else(|why| panic!("{acl:?} with {entries:?} does not parse: {why}"));
    let mode = mode_of(&set);
    let shares = AccessAcl::Present(shared).shares_read_write(
        mode,
        FILE_GID,
        owner,
        Some(&[FILE_GID]),
        writer,
        &[FILE_GID],
    );
    assert!(shares, "{acl:?} with {entries:?} is not shared: {set:?}");
}

/// How the kernel decides (`posix_acl_permission`) whether a user who does not own the file
/// may do `want`, put by classes rather than entry by entry: a user named is judged by the
/// first entry naming it, within the mask; else a member of the owning group or a named
/// group, by whether the mask and one of those groups' entries allow it; else by others'.
#[cfg(target_os = "linux")]
fn kernel_permits(entries: &[Entry], uid: u32, member_of: &[u32], want: u16) -> bool {
    let mask = perm_of(entries, MASK).unwrap_or(0o7);
    if let Some(&(_, perm, _)) = entries.iter().find(|e| e.0 == USER && e.2 == uid) {
        return perm & mask & want == want;
    }
    let group_class: Vec<u16> = entries
        .iter()
        .filter(|&&(tag, _, id)| match tag {
            GROUP_OBJ => member_of.contains(&FILE_GID),
            GROUP => member_of.contains(&id),
            _ => false,
        })
        .map(|e| e.1)
        .collect();
    if !group_class.is_empty() {
        return mask & want == want && group_class.iter().any(|perm| perm & want == want);
    }
    perm_of(entries, OTHER).is_some_and(|perm| perm & want == want)
}

/// The entries of an ACL in the kernel's format (whole entries after the header).
#[cfg(target_os = "linux")]
fn entries_of(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

/// `entries` in the kernel's format.
#[cfg(target_os = "linux")]
fn encoded(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(perm.to_le_bytes());
        bytes.extend(id.to_le_bytes());
    }
    bytes
}

/// The permissions of the first entry tagged `tag`.
#[cfg(target_os = "linux")]
fn perm_of(entries: &[Entry], tag: u16) -> Option<u16> {
    entries.iter().find(|e| e.0 == tag).map(|e| e.1)
}

/// The first [`IDS`] distinct ids the entries tagged `tag` name, but the unmapped one.
#[cfg(target_os = "linux")]
fn named(entries: &[Entry], tag: u16) -> Vec<u32> {
    let mut ids = Vec::new();
    for &(_, _, id) in entries.iter().filter(|e| e.0 == tag && e.2 != UNMAPPED) {
        if ids.len() == IDS {
            break;
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Two ids no entry names (nor [`FILE_GID`]): a user the ACL does not know.
#[cfg(target_os = "linux")]
fn fresh_ids(entries: &[Entry]) -> [u32; 2] {
    let taken = |id: &u32| *id == FILE_GID || entries.iter().any(|e| e.2 == *id);
    let mut ids = (1000..).filter(|id| !taken(id));
    let mut next = || ids.next().unwrap_or_default();
    [next(), next()]
}

/// The mode a file with this ACL shows: the owner's entry, the mask as the group bits (the
/// owning group's entry without one), others' entry.
#[cfg(target_os = "linux")]
fn mode_of(entries: &[Entry]) -> u32 {
    let perm = |tag| u32::from(perm_of(entries, tag).unwrap_or(0));
    let group = perm_of(entries, MASK).map_or_else(|| perm(GROUP_OBJ), u32::from);
    (perm(USER_OBJ) << 6) | (group << 3) | perm(OTHER)
}
