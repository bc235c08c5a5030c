//! How long the kernel may keep the names and attributes it learns, and how it is told to
//! forget names when search permission goes away.
//!
//! Without names it may keep, the kernel looks up every name on a path on every walk: a
//! `stat("d/f")` is a lookup of `d`, a lookup of `f` and a getattr, though only the getattr is
//! what the program asked for. So the kernel keeps names (dentries), in both modes, and walks
//! through them without asking anyone, for an hour. The default mode keeps no attributes
//! (every stat still reaches the tree); `--cache` keeps them for a second. Lookups the
//! program causes still arrive: a name the kernel does not know (a failed lookup is never
//! kept), and an exclusive create or mkdir of a name it knows (the kernel looks it up again
//! before it answers EEXIST).
//!
//! Walking through kept names, nothing checks search permission on the way. The kernel's own
//! checks (`default_permissions`) would, but they need the directory's attributes, which the
//! kernel drops after every create and unlink in it: a getattr of the parent on every create
//! and unlink that the program never asked for. Instead, a name is handed out with a lifetime
//! only where any caller could walk to it: in a directory that everyone may search, below
//! directories everyone may search ([`Fs::searchable_by_all`]). Other names live for no time
//! and are looked up on every walk, where the tree checks the caller. When a change takes
//! search permission away from someone (a chmod of a directory that leaves an execute bit off,
//! a rename into a directory where names live for no time, a crash), the kernel is told to
//! forget every name it holds before the change's reply goes out (`FUSE_NOTIFY_INC_EPOCH`,
//! Linux 6.16): the notification takes no lock, so it cannot wait for the very request it
//! comes from, and once the syscall returns, no walk goes through a name from before it. A
//! lookup the kernel started before the notification is stale even if its answer arrives after
//! it. The same notification makes the kernel forget names when a fault rule that matches
//! lookups is added: while it is installed, the names it may fire on live for no time, so that
//! every walk meets the rule.
//!
//! A kernel older than 6.16 cannot forget names that way: there the default mode keeps no
//! names, and `--cache` keeps `default_permissions` and keeps names for a second only, so
//! that a fault rule on lookups added later meets every walk within a second
//! ([`kernel_forgets_names`] decides before the mount).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::warn;

use crate::fs::{Attr, Fs, Kind, all_may_search};

/// How long attributes live in the kernel with `--cache`, and names where the kernel cannot
/// be made to forget them (before Linux 6.16).
const CACHED_TTL: Duration = Duration::from_secs(1);
/// How long names live in the kernel where it can be made to forget them. Every change that
/// could make a name wrong or let it skip a check makes the kernel forget it, so the lifetime
/// only bounds the damage of a change that did not; a long one keeps a slow program's trace
/// free of lookups that come and go with the clock.
const KEPT_TTL: Duration = Duration::from_secs(3600);
/// The notification that makes the kernel forget every name it holds.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
/// The first protocol version with [`FUSE_NOTIFY_INC_EPOCH`] (7.44, Linux 6.16).
const EPOCH_MINOR: u32 = 44;

/// Who guards search permission on cached names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No name is cached (the default mode on a kernel before 6.16): every walk asks the tree.
    Uncached,
    /// The kernel checks with `default_permissions`; names and attributes live a second.
    Kernel,
    /// The tree: names live (an hour) only where anyone may walk to them, and the kernel
    /// forgets them all when that changes.
    Tree,
}

impl std::fmt::Display for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guard::Uncached => "no names cached",
            Guard::Kernel => "the kernel checks permissions on cached names",
            Guard::Tree => "names cached where anyone may walk",
        })
    }
}

/// The lifetimes the adapter hands out, and the means to take names back.
#[derive(Debug)]
pub struct Names {
    guard: Guard,
    /// How long names live where they may live at all.
    name: Duration,
    /// How long attributes live.
    attr: Duration,
    /// The session's /dev/fuse, duplicated so that it stays open as long as this does: a
    /// notification must never go to a descriptor number reused for something else.
    device: OnceLock<OwnedFd>,
    /// The kernel turned out not to take [`FUSE_NOTIFY_INC_EPOCH`]: no name may live.
    unguarded: AtomicBool,
}

impl Names {
    /// Lifetimes for a mount: `cached` with `--cache`; `kernel_forgets` if the kernel takes
    /// `FUSE_NOTIFY_INC_EPOCH` ([`kernel_forgets_names`]). The mount has `default_permissions`
    /// if [`Names::kernel_checks`].
    pub fn new(cached: bool, kernel_forgets: bool) -> Names {
        let guard = match (kernel_forgets, cached) {
            (true, _) => Guard::Tree,
            (false, true) => Guard::Kernel,
            (false, false) => Guard::Uncached,
        };
        Names {
            guard,
            name: if guard == Guard::Kernel {
                CACHED_TTL
            } else {
                KEPT_TTL
            },
            attr: if cached { CACHED_TTL } else { Duration::ZERO },
            device: OnceLock::new(),
            unguarded: AtomicBool::new(false),
        }
    }

    /// Who guards search permission.
    pub fn guard(&self) -> Guard {
        self.guard
    }

    /// Whether the mount needs the kernel's own permission checks (`default_permissions`).
    pub fn kernel_checks(&self) -> bool {
        self.guard == Guard::Kernel
    }

    /// Learns the session's /dev/fuse, once it is open (kept only when the tree guards).
    pub fn set_device(&self, fd: BorrowedFd<'_>) {
        if self.guard != Guard::Tree {
            return;
        }
        match fd.try_clone_to_owned() {
            Ok(owned) => {
                let _ = self.device.set(owned);
            }
            Err(e) => {
                warn!("cannot duplicate /dev/fuse ({e}): --cache names will not be cached");
                self.unguarded.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Told at INIT which protocol version the kernel speaks: without the notification to
    /// forget names, no name may live (attributes still do).
    pub fn kernel_speaks(&self, major: u32, minor: u32) {
        if self.guard == Guard::Tree && (major, minor) < (7, EPOCH_MINOR) {
            warn!(
                "the kernel speaks FUSE {major}.{minor}, without FUSE_NOTIFY_INC_EPOCH (7.44): \
                 with --cache, names are looked up on every walk"
            );
            self.unguarded.store(true, Ordering::Relaxed);
        }
    }

    /// How long the kernel may keep attributes.
    pub fn attr_ttl(&self) -> Duration {
        self.attr
    }

    /// How long the kernel may keep a name in directory `parent` of `fs`. `lookups_faulted`
    /// tells whether a fault rule may fire on a lookup of the name, so that every walk must
    /// reach the tree; it is asked only where the name could live at all.
    pub fn entry_ttl(
        &self,
        fs: &Fs,
        parent: u64,
        lookups_faulted: impl FnOnce() -> bool,
    ) -> Duration {
        let may_live = match self.guard {
            Guard::Uncached => false,
            Guard::Kernel => !lookups_faulted(),
            Guard::Tree => {
                !self.unguarded.load(Ordering::Relaxed)
                    && !lookups_faulted()
                    && fs.searchable_by_all(parent)
            }
        };
        if may_live { self.name } else { Duration::ZERO }
    }

    /// The one lifetime of a create's reply, for the new name and its attributes alike: the
    /// shorter of the two (in the default mode none, as every stat must reach the tree).
    pub fn created_ttl(
        &self,
        fs: &Fs,
        parent: u64,
        lookups_faulted: impl FnOnce() -> bool,
    ) -> Duration {
        if self.attr.is_zero() {
            return Duration::ZERO;
        }
        self.entry_ttl(fs, parent, lookups_faulted).min(self.attr)
    }

    /// Whether a name that now lives in `parent` may have been handed out with a lifetime
    /// where it no longer may: the caller then makes the kernel forget all names.
    pub fn must_forget_under(&self, fs: &Fs, parent: u64) -> bool {
        self.guard == Guard::Tree && !fs.searchable_by_all(parent)
    }

    /// Whether a chmod that left directory attributes `a` may have taken search permission
    /// from someone below it: the caller then makes the kernel forget all names.
    pub fn must_forget_after_chmod(&self, a: &Attr) -> bool {
        self.guard == Guard::Tree && a.kind == Kind::Dir && !all_may_search(a.perm)
    }

    /// Makes the kernel forget every name it holds; the next walk through each looks it up
    /// again. Takes no kernel lock: safe from a request thread before its reply. Only needed
    /// when the tree guards names; a no-op otherwise.
    pub fn forget_all(&self) {
        if self.guard != Guard::Tree || self.unguarded.load(Ordering::Relaxed) {
            return;
        }
        let Some(fd) = self.device.get() else {
            return;
        };
        // struct fuse_out_header: len, error (the notification's code), unique (0).
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&16u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        // SAFETY: writes 16 bytes from a live buffer to a descriptor this struct owns.
        let n = unsafe { libc::write(fd.as_raw_fd(), header.as_ptr().cast(), header.len()) };
        if n != header.len() as isize {
            let e = std::io::Error::last_os_error();
            // After the unmount the connection is gone and nothing is cached any more.
            if !matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOTCONN)) {
                warn!("cannot make the kernel forget cached names ({e}): none is cached from now");
                self.unguarded.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Whether the running kernel takes `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16 and later), so that
/// `--cache` can leave permission checks to the tree.
pub fn kernel_forgets_names() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, (6, 16))
}

/// Whether a kernel release string ("6.18.44-foo") is at least `want` (major, minor).
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (num(), num()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Fs {
        Fs::new(crate::fs::FsOptions {
            permissions: None,
            ..crate::fs::FsOptions::default()
        })
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v857", (6, 16)));
        assert!(release_at_least("6.16", (6, 16)));
        assert!(release_at_least("7.0.1", (6, 16)));
        assert!(!release_at_least("6.15.9-arch1", (6, 16)));
        assert!(!release_at_least("5.19.0", (6, 16)));
        assert!(!release_at_least("garbage", (6, 16)));
        assert!(!release_at_least("", (6, 16)));
    }

    #[test]
    fn before_6_16_the_default_mode_caches_nothing_and_cache_leaves_checks_to_the_kernel() {
        let fs = tree();
        let direct = Names::new(false, false);
        assert!(!direct.kernel_checks());
        assert_eq!(
            direct.entry_ttl(&fs, crate::fs::ROOT, || false),
            Duration::ZERO
        );
        assert_eq!(direct.attr_ttl(), Duration::ZERO);
        let kernel = Names::new(true, false);
        assert!(kernel.kernel_checks());
        assert_eq!(kernel.entry_ttl(&fs, crate::fs::ROOT, || false), CACHED_TTL);
        assert_eq!(
            kernel.entry_ttl(&fs, crate::fs::ROOT, || true),
            Duration::ZERO
        );
        assert!(!kernel.must_forget_under(&fs, crate::fs::ROOT));
    }

    #[test]
    fn the_tree_guard_caches_names_only_where_anyone_may_walk_in_both_modes() {
        let fs = tree();
        let root = crate::fs::Caller::default();
        let open = fs
            .mkdir(&root, crate::fs::ROOT, "open".as_ref(), 0o755)
            .unwrap()
            .ino;
        let shut = fs.mkdir(&root, open, "shut".as_ref(), 0o750).unwrap().ino;
        let below = fs.mkdir(&root, shut, "below".as_ref(), 0o777).unwrap().ino;
        for (cached, attr) in [(true, CACHED_TTL), (false, Duration::ZERO)] {
            let name = KEPT_TTL;
            let names = Names::new(cached, true);
            assert!(!names.kernel_checks());
            assert_eq!(names.attr_ttl(), attr);
            assert_eq!(names.created_ttl(&fs, open, || false), attr);
            if attr.is_zero() {
                // The rules are not asked about a name that cannot live anyway.
                let asked = || panic!("fault rules asked about a created name");
                assert_eq!(names.created_ttl(&fs, open, asked), Duration::ZERO);
            }
            assert_eq!(names.entry_ttl(&fs, crate::fs::ROOT, || false), name);
            assert_eq!(names.entry_ttl(&fs, open, || false), name);
            // A rule that matches lookups must meet every walk.
            assert_eq!(names.entry_ttl(&fs, open, || true), Duration::ZERO);
            assert_eq!(names.entry_ttl(&fs, shut, || false), Duration::ZERO);
            assert_eq!(names.entry_ttl(&fs, below, || false), Duration::ZERO);
            assert!(names.must_forget_under(&fs, below));
            assert!(!names.must_forget_under(&fs, open));
            names.kernel_speaks(7, 43);
            assert_eq!(names.entry_ttl(&fs, open, || false), Duration::ZERO);
        }
    }
}
