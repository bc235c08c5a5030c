//! Permission checks, made as Linux makes them for tmpfs: mode bits by owner, group and
//! others (`generic_permission`), the capabilities that override them, sticky directories,
//! and who may chown, chmod, set times or hard-link a file.
//!
//! A request carries the caller's file system uid and gid and its thread id, not its
//! supplementary groups or capabilities. Those are read from `/proc/TID/status` only when
//! they decide the answer: when the caller is neither the owner nor in the node's primary
//! group and the group bits differ from the others' bits, or when the mode bits deny and only
//! a capability could allow. A process can change its groups at any moment, so nothing read is
//! kept beyond the request that read it. Where `/proc` cannot tell (the thread is gone, or
//! lives in another pid namespace and the request says pid 0), uid 0 counts as privileged and
//! anyone else as having no supplementary group.

use std::cell::OnceCell;

use super::Caller;
use crate::errno::Errno;

/// Read permission (a mask bit for [`Asker::may`]).
pub const MAY_READ: u32 = 4;
/// Write permission.
pub const MAY_WRITE: u32 = 2;
/// Execute permission; search on a directory.
pub const MAY_EXEC: u32 = 1;

/// The capabilities that bear on file permissions (their bit numbers in `CapEff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// `CAP_CHOWN`: change a file's owner and group at will.
    Chown = 0,
    /// `CAP_DAC_OVERRIDE`: pass read, write and search checks.
    DacOverride = 1,
    /// `CAP_DAC_READ_SEARCH`: pass read checks, and search on directories.
    DacReadSearch = 2,
    /// `CAP_FOWNER`: act as the owner (chmod, times, sticky directories, hard links).
    Fowner = 3,
    /// `CAP_FSETID`: keep the setgid bit without being in the file's group.
    Fsetid = 4,
}

/// What a caller's `/proc/TID/status` says beyond the ids a request carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Supplementary groups (`Groups:`).
    pub groups: Vec<u32>,
    /// Effective capabilities (`CapEff:`).
    pub cap_effective: u64,
    /// Permitted capabilities (`CapPrm:`): access(2) checks with these when its real uid is 0.
    pub cap_permitted: u64,
}

/// Where the tree gets a caller's [`Credentials`] from, by thread id.
pub type CredentialSource = fn(u32) -> Option<Credentials>;

/// Reads a thread's credentials from `/proc/TID/status`; `None` for pid 0 or a thread that
/// is gone.
pub fn from_proc(pid: u32) -> Option<Credentials> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status(&text))
}

/// The groups and capability sets of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Credentials {
    let mut c = Credentials::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Groups" => {
                c.groups = value
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            }
            "CapEff" => c.cap_effective = u64::from_str_radix(value, 16).unwrap_or(0),
            "CapPrm" => c.cap_permitted = u64::from_str_radix(value, 16).unwrap_or(0),
            _ => {}
        }
    }
    c
}

/// The owner, group and mode of a node, as a check sees them.
#[derive(Clone, Copy, Debug)]
pub struct Owned {
    /// Permission bits, setuid, setgid and sticky included.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// True for a directory (whose checks capabilities override more freely).
    pub dir: bool,
}

/// The caller of one request, with its credentials read at most once, when first needed.
pub struct Asker<'a> {
    caller: &'a Caller,
    source: CredentialSource,
    creds: OnceCell<Option<Credentials>>,
    /// access(2): the kernel checks with the real uid and gid, and with the permitted
    /// capabilities if the real uid is 0, none otherwise.
    access: bool,
}

impl<'a> Asker<'a> {
    /// The caller of a request, credentials read through `source` if needed.
    pub fn new(caller: &'a Caller, source: CredentialSource) -> Asker<'a> {
        Asker {
            caller,
            source,
            creds: OnceCell::new(),
            access: false,
        }
    }

    /// The caller of an access(2) request (see `Asker::access`'s field).
    pub fn for_access(caller: &'a Caller, source: CredentialSource) -> Asker<'a> {
        Asker {
            access: true,
            ..Asker::new(caller, source)
        }
    }

    /// The caller's file system uid.
    pub fn uid(&self) -> u32 {
        self.caller.uid
    }

    fn creds(&self) -> Option<&Credentials> {
        self.creds
            .get_or_init(|| (self.source)(self.caller.pid))
            .as_ref()
    }

    /// True if `gid` is the caller's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        gid == self.caller.gid || self.creds().is_some_and(|c| c.groups.contains(&gid))
    }

    /// True if the caller holds `cap`.
    pub fn capable(&self, cap: Cap) -> bool {
        let root = self.caller.uid == 0;
        match self.creds() {
            Some(c) => {
                let set = if !self.access {
                    c.cap_effective
                } else if root {
                    c.cap_permitted
                } else {
                    0
                };
                set & (1 << cap as u32) != 0
            }
            None => root,
        }
    }

    /// True if the caller owns `n` or may act as its owner (`inode_owner_or_capable`).
    pub fn owns(&self, n: &Owned) -> bool {
        self.caller.uid == n.uid || self.capable(Cap::Fowner)
    }

    /// `generic_permission`: EACCES unless the caller may read, write or execute (the bits
    /// of `mask`) `n`.
    pub fn may(&self, n: &Owned, mask: u32) -> Result<(), Errno> {
        let mask = mask & 7;
        if mask == 0 || self.by_mode(n, mask) {
            return Ok(());
        }
        let allowed = if n.dir {
            (mask & MAY_WRITE == 0 && self.capable(Cap::DacReadSearch))
                || self.capable(Cap::DacOverride)
        } else {
            (mask == MAY_READ && self.capable(Cap::DacReadSearch))
                || ((mask & MAY_EXEC == 0 || n.perm & 0o111 != 0) && self.capable(Cap::DacOverride))
        };
        if allowed { Ok(()) } else { Err(Errno::EACCES) }
    }

    /// The mode bits alone (`acl_permission_check`): the owner's bits for the owner; else the
    /// group's for a member, the others' for anyone else. Membership is looked up only when
    /// the group's and the others' bits differ on what is asked.
    fn by_mode(&self, n: &Owned, mask: u32) -> bool {
        let mode = u32::from(n.perm);
        let bits = if self.caller.uid == n.uid {
            mode >> 6
        } else if mask & (mode ^ (mode >> 3)) != 0 && self.in_group(n.gid) {
            mode >> 3
        } else {
            mode
        };
        mask & !bits & 7 == 0
    }

    /// The sticky-directory rule (`check_sticky`): in a sticky directory only the owner of
    /// a name's node, the directory's owner or a caller with `CAP_FOWNER` may remove or
    /// replace it.
    pub fn sticky_denies(&self, dir: &Owned, victim: &Owned) -> bool {
        dir.perm & libc::S_ISVTX as u16 != 0
            && self.caller.uid != victim.uid
            && self.caller.uid != dir.uid
            && !self.capable(Cap::Fowner)
    }

    /// Removing a name from `dir` (unlink, rmdir, the source and target of a rename):
    /// write and search on the directory (EACCES), then the sticky rule (EPERM).
    pub fn may_delete(&self, dir: &Owned, victim: &Owned) -> Result<(), Errno> {
        self.may(dir, MAY_WRITE | MAY_EXEC)?;
        if self.sticky_denies(dir, victim) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// `fs.protected_hardlinks` (`may_linkat`): a caller who is not the owner may link only
    /// a regular file it can read and write that is neither setuid nor setgid-executable.
    pub fn may_link(&self, n: &Owned, regular: bool) -> Result<(), Errno> {
        if self.owns(n) || !protected_hardlinks() {
            return Ok(());
        }
        let perm = u32::from(n.perm);
        let safe = regular
            && perm & libc::S_ISUID == 0
            && perm & (libc::S_ISGID | libc::S_IXGRP) != (libc::S_ISGID | libc::S_IXGRP)
            && self.may(n, MAY_READ | MAY_WRITE).is_ok();
        if safe { Ok(()) } else { Err(Errno::EPERM) }
    }
}

/// A [`CredentialSource`] that knows nothing beyond the ids in a request: no supplementary
/// groups; uid 0 privileged.
pub fn ids_only(_pid: u32) -> Option<Credentials> {
    None
}

/// The `fs.protected_hardlinks` sysctl (on unless it reads 0).
fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
        .map(|s| s.trim() != "0")
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CAPS: u64 = 0x1ff_ffff_ffff;

    fn none(_: u32) -> Option<Credentials> {
        None
    }

    fn groups_7_8(_: u32) -> Option<Credentials> {
        Some(Credentials {
            groups: vec![7, 8],
            ..Credentials::default()
        })
    }

    fn root_without_caps(_: u32) -> Option<Credentials> {
        Some(Credentials::default())
    }

    fn full_root(_: u32) -> Option<Credentials> {
        Some(Credentials {
            groups: vec![],
            cap_effective: ALL_CAPS,
            cap_permitted: ALL_CAPS,
        })
    }

    fn file(perm: u16, uid: u32, gid: u32) -> Owned {
        Owned {
            perm,
            uid,
            gid,
            dir: false,
        }
    }

    fn dir(perm: u16, uid: u32, gid: u32) -> Owned {
        Owned {
            dir: true,
            ..file(perm, uid, gid)
        }
    }

    fn who(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, pid: 42 }
    }

    #[test]
    fn the_owner_gets_the_owner_bits_only_even_where_the_group_bits_allow_more() {
        let c = who(1000, 100);
        let a = Asker::new(&c, none);
        assert_eq!(a.may(&file(0o070, 1000, 100), MAY_READ), Err(Errno::EACCES));
        assert_eq!(a.may(&file(0o400, 1000, 100), MAY_READ), Ok(()));
        assert_eq!(
            a.may(&file(0o400, 1000, 100), MAY_WRITE),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn supplementary_groups_are_read_only_when_they_decide() {
        thread_local!(static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        fn counting(pid: u32) -> Option<Credentials> {
            READS.with(|r| r.set(r.get() + 1));
            groups_7_8(pid)
        }
        let c = who(1000, 100);
        let a = Asker::new(&c, counting);
        // Group and others agree: no lookup.
        assert_eq!(a.may(&file(0o644, 0, 7), MAY_READ), Ok(()));
        assert_eq!(a.may(&file(0o640, 0, 100), MAY_READ), Ok(()));
        assert_eq!(READS.with(|r| r.get()), 0);
        // Group 8 may write, others may not: the lookup says 1000 is in 8, once per request.
        assert_eq!(a.may(&file(0o664, 0, 8), MAY_WRITE), Ok(()));
        assert_eq!(a.may(&file(0o664, 0, 8), MAY_WRITE), Ok(()));
        assert_eq!(READS.with(|r| r.get()), 1);
        assert_eq!(a.may(&file(0o664, 0, 9), MAY_WRITE), Err(Errno::EACCES));
        // A member of the group gets the group's bits even where the others' allow more.
        assert_eq!(a.may(&file(0o604, 0, 7), MAY_READ), Err(Errno::EACCES));
    }

    #[test]
    fn capabilities_override_as_generic_permission_says() {
        let c = who(0, 0);
        let root = Asker::new(&c, full_root);
        assert_eq!(root.may(&file(0o000, 5, 5), MAY_READ | MAY_WRITE), Ok(()));
        // Execute needs one execute bit somewhere, even for root; search on a directory not.
        assert_eq!(root.may(&file(0o644, 5, 5), MAY_EXEC), Err(Errno::EACCES));
        assert_eq!(root.may(&file(0o010, 5, 5), MAY_EXEC), Ok(()));
        assert_eq!(root.may(&dir(0o000, 5, 5), MAY_EXEC | MAY_WRITE), Ok(()));
        // uid 0 whose capabilities were dropped is an ordinary caller.
        let weak = Asker::new(&c, root_without_caps);
        assert_eq!(weak.may(&file(0o600, 5, 5), MAY_READ), Err(Errno::EACCES));
        // Nothing to read from /proc: uid 0 counts as privileged, anyone else not.
        assert_eq!(
            Asker::new(&c, none).may(&file(0o000, 5, 5), MAY_READ),
            Ok(())
        );
        let u = who(6, 6);
        assert!(!Asker::new(&u, none).capable(Cap::DacOverride));
    }

    #[test]
    fn access_checks_with_the_permitted_set_of_a_real_root_and_nothing_otherwise() {
        fn setuid_program(_: u32) -> Option<Credentials> {
            Some(Credentials {
                groups: vec![],
                cap_effective: ALL_CAPS,
                cap_permitted: ALL_CAPS,
            })
        }
        // A setuid-root program's access(2) runs with the real uid 1000: no capabilities.
        let c = who(1000, 1000);
        let a = Asker::for_access(&c, setuid_program);
        assert_eq!(a.may(&file(0o600, 0, 0), MAY_READ), Err(Errno::EACCES));
        let r = who(0, 0);
        let a = Asker::for_access(&r, setuid_program);
        assert_eq!(a.may(&file(0o600, 5, 5), MAY_READ), Ok(()));
    }

    #[test]
    fn sticky_directories_protect_other_users_names() {
        let c = who(1000, 1000);
        let a = Asker::new(&c, none);
        let tmp = dir(0o1777, 0, 0);
        assert_eq!(a.may_delete(&tmp, &file(0o644, 1000, 1000)), Ok(()));
        assert_eq!(a.may_delete(&tmp, &file(0o644, 2000, 0)), Err(Errno::EPERM));
        assert_eq!(
            a.may_delete(&dir(0o1777, 1000, 0), &file(0o644, 2000, 0)),
            Ok(())
        );
        assert_eq!(
            a.may_delete(&dir(0o777, 0, 0), &file(0o644, 2000, 0)),
            Ok(())
        );
        assert_eq!(
            a.may_delete(&dir(0o1755, 0, 0), &file(0o644, 1000, 0)),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn proc_status_text_gives_groups_and_capabilities() {
        let text = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 \n\
                    CapInh:\t0000000000000000\nCapPrm:\t00000000000000ff\n\
                    CapEff:\t0000000000000002\n";
        let c = parse_status(text);
        assert_eq!(c.groups, vec![4, 24, 27]);
        assert_eq!(c.cap_permitted, 0xff);
        assert_eq!(c.cap_effective, 2);
        let own = from_proc(std::process::id()).expect("this process's status");
        // SAFETY: getgroups with a zero size only counts.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(own.groups.len(), n as usize);
        assert_eq!(from_proc(0), None);
    }
}
