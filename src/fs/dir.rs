//! `Dir`: a directory's entries, with readdir offsets that stay valid while it changes.
//!
//! Each entry gets a cookie from a counter that only goes down; readdir offsets are cookies,
//! and a listing goes up from the last cookie it was given. A listing resumed from an offset
//! therefore never repeats or skips an entry that stayed in the directory, whatever was added
//! or removed meanwhile, and never shows an entry added after it started: such an entry's
//! cookie is below every cookie the listing has yet to reach. That holds for a name removed
//! and added again (unlink and create, rename away and back, rename over it): a listing that
//! showed it before does not show it again, so one scan lists each name at most once.
//!
//! This is what tmpfs does: it links a new dentry at the head of its directory's list, behind
//! every readdir cursor already in it. (A counter that grew instead put a re-added name ahead
//! of the listing, which then showed it twice: `find`, `ls` and `rsync` see duplicates.)

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// Lowest cookie an entry may have; 1 and 2 are "." and "..".
const MIN_COOKIE: u64 = 3;
/// First cookie handed to an entry; each next one is one less. 2^62 entries added to one
/// directory would take centuries at any rate rawfs can create them.
const FIRST_COOKIE: u64 = 1 << 62;

/// A directory's entries.
#[derive(Clone, Debug)]
pub struct Dir {
    /// Parent directory inode (itself for the root).
    pub parent: u64,
    /// Set by rmdir: nothing may be created in a removed directory.
    pub removed: bool,
    by_name: BTreeMap<OsString, (u64, u64)>,
    by_cookie: BTreeMap<u64, OsString>,
    next_cookie: u64,
}

impl Dir {
    /// An empty directory under `parent`.
    pub fn new(parent: u64) -> Dir {
        Dir {
            parent,
            removed: false,
            by_name: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }

    /// The inode a name points to.
    pub fn get(&self, name: &OsStr) -> Option<u64> {
        self.by_name.get(name).map(|&(ino, _)| ino)
    }

    /// Number of entries, "." and ".." not counted.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True if only "." and ".." remain.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Adds or replaces `name`; a replaced name keeps its place in the listing order.
    pub fn insert(&mut self, name: &OsStr, ino: u64) {
        if let Some(entry) = self.by_name.get_mut(name) {
            entry.0 = ino;
            return;
        }
        let cookie = self.next_cookie;
        assert!(
            cookie >= MIN_COOKIE,
            "readdir cookies of a directory exhausted"
        );
        self.next_cookie -= 1;
        self.by_name.insert(name.to_owned(), (ino, cookie));
        self.by_cookie.insert(cookie, name.to_owned());
    }

    /// Removes `name`, returning the inode it pointed to.
    pub fn remove(&mut self, name: &OsStr) -> Option<u64> {
        let (ino, cookie) = self.by_name.remove(name)?;
        self.by_cookie.remove(&cookie);
        Some(ino)
    }

    /// Up to `max` entries whose cookie is greater than `after`, as (cookie, name, inode).
    pub fn entries_after(&self, after: u64, max: usize) -> Vec<(u64, OsString, u64)> {
        self.by_cookie
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(&cookie, name)| (cookie, name.clone(), self.by_name[name].0))
            .collect()
    }

    /// Every (name, inode) pair, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, u64)> {
        self.by_name
            .iter()
            .map(|(n, &(ino, _))| (n.as_os_str(), ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_listing_shows_no_name_twice_and_nothing_added_after_it_began() {
        let mut d = Dir::new(1);
        for n in ["a", "b", "c"] {
            d.insert(OsStr::new(n), 10);
        }
        let first = d.entries_after(2, 1);
        let listed = first[0].1.clone();
        // The listed name goes and comes back; another name comes and another is replaced.
        d.remove(&listed);
        d.insert(&listed, 12);
        d.insert(OsStr::new("new"), 13);
        let rest: Vec<OsString> = d
            .entries_after(first[0].0, 10)
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert!(!rest.contains(&listed), "{listed:?} listed twice: {rest:?}");
        assert!(!rest.contains(&OsString::from("new")), "{rest:?}");
        assert_eq!(rest.len(), 2, "the two names that stayed: {rest:?}");
        // A new listing shows everything once.
        assert_eq!(d.entries_after(2, 10).len(), 4);
    }

    #[test]
    fn offsets_survive_removal_and_insertion() {
        let mut d = Dir::new(1);
        for n in ["a", "b", "c", "d"] {
            d.insert(OsStr::new(n), 10);
        }
        let first = d.entries_after(0, 2);
        assert_eq!(first.len(), 2);
        d.remove(OsStr::new("a"));
        d.remove(OsStr::new("c"));
        d.insert(OsStr::new("e"), 11);
        let rest: Vec<_> = d
            .entries_after(first[1].0, 10)
            .into_iter()
            .map(|e| e.1)
            .collect();
        // Newest first: the first two were "d" and "c"; of the rest, "a" went, and "e" came
        // after the listing began.
        assert_eq!(first[1].1, OsString::from("c"));
        assert_eq!(rest, vec![OsString::from("b")]);
    }
}
