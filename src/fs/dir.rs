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
use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// Lowest cookie an entry may have; 1 and 2 are "." and "..".
const MIN_COOKIE: u64 = 3;
/// First cookie handed to an entry; each next one is one less. 2^62 entries added to one
/// directory would take centuries at any rate rawfs can create them.
const FIRST_COOKIE: u64 = 1 << 62;

/// A directory's entries.
///
/// A name is found by hash, not by string comparisons down a tree of a million names, and
/// listed by cookie; its text is allocated once and shared by both. Each hash slot keeps its
/// name's hash, so that growing the table never reads a name: at a million entries it is a
/// copy of the slots, not a million cache misses.
#[derive(Clone, Debug)]
pub struct Dir {
    /// Parent directory inode (itself for the root).
    pub parent: u64,
    /// Set by rmdir: nothing may be created in a removed directory.
    pub removed: bool,
    by_name: HashTable<Slot>,
    /// Cookie -> (name, inode), in listing order.
    by_cookie: BTreeMap<u64, (Arc<OsStr>, u64)>,
    next_cookie: u64,
}

#[derive(Clone, Debug)]
struct Slot {
    hash: u64,
    name: Arc<OsStr>,
    ino: u64,
    cookie: u64,
}

fn hash(name: &OsStr) -> u64 {
    FxBuildHasher.hash_one(name.as_bytes())
}

impl Dir {
    /// An empty directory under `parent`.
    pub fn new(parent: u64) -> Dir {
        Dir {
            parent,
            removed: false,
            by_name: HashTable::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }

    fn slot(&self, name: &OsStr) -> Option<&Slot> {
        let h = hash(name);
        self.by_name.find(h, |s| s.hash == h && *s.name == *name)
    }

    /// The inode a name points to.
    pub fn get(&self, name: &OsStr) -> Option<u64> {
        self.slot(name).map(|s| s.ino)
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
        let h = hash(name);
        if let Some(s) = self
            .by_name
            .find_mut(h, |s| s.hash == h && *s.name == *name)
        {
            s.ino = ino;
            if let Some(listed) = self.by_cookie.get_mut(&s.cookie) {
                listed.1 = ino;
            }
            return;
        }
        let cookie = self.next_cookie;
        assert!(
            cookie >= MIN_COOKIE,
            "readdir cookies of a directory exhausted"
        );
        self.next_cookie -= 1;
        let name: Arc<OsStr> = Arc::from(name);
        self.by_cookie.insert(cookie, (Arc::clone(&name), ino));
        let slot = Slot {
            hash: h,
            name,
            ino,
            cookie,
        };
        self.by_name.insert_unique(h, slot, |s| s.hash);
    }

    /// Removes `name`, returning the inode it pointed to.
    pub fn remove(&mut self, name: &OsStr) -> Option<u64> {
        let h = hash(name);
        let entry = self
            .by_name
            .find_entry(h, |s| s.hash == h && *s.name == *name)
            .ok()?;
        let (slot, _) = entry.remove();
        self.by_cookie.remove(&slot.cookie);
        // An emptied directory gives its table back (after an rm -rf of a million names).
        if self.by_name.is_empty() {
            self.by_name = HashTable::new();
        }
        Some(slot.ino)
    }

    /// The entries whose cookie is greater than `after`, in listing order, as
    /// (cookie, name, inode).
    pub fn entries_after(&self, after: u64) -> impl Iterator<Item = (u64, &OsStr, u64)> {
        self.by_cookie
            .range(after.saturating_add(1)..)
            .map(|(&cookie, (name, ino))| (cookie, &**name, *ino))
    }

    /// Every (name, inode) pair, in name order (a sort: for whole-tree walks, not requests).
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, u64)> {
        let mut all: Vec<(&OsStr, u64)> = self.by_name.iter().map(|s| (&*s.name, s.ino)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// Up to `max` entries after `after`, owned.
    fn list(d: &Dir, after: u64, max: usize) -> Vec<(u64, OsString, u64)> {
        d.entries_after(after)
            .take(max)
            .map(|(c, n, i)| (c, n.to_owned(), i))
            .collect()
    }

    #[test]
    fn a_resumed_listing_shows_no_name_twice_and_nothing_added_after_it_began() {
        let mut d = Dir::new(1);
        for n in ["a", "b", "c"] {
            d.insert(OsStr::new(n), 10);
        }
        let first = list(&d, 2, 1);
        let listed = first[0].1.clone();
        // The listed name goes and comes back; another name comes and another is replaced.
        d.remove(&listed);
        d.insert(&listed, 12);
        d.insert(OsStr::new("new"), 13);
        let rest: Vec<OsString> = list(&d, first[0].0, 10).into_iter().map(|e| e.1).collect();
        assert!(!rest.contains(&listed), "{listed:?} listed twice: {rest:?}");
        assert!(!rest.contains(&OsString::from("new")), "{rest:?}");
        assert_eq!(rest.len(), 2, "the two names that stayed: {rest:?}");
        // A new listing shows everything once.
        assert_eq!(list(&d, 2, 10).len(), 4);
    }

    #[test]
    fn offsets_survive_removal_and_insertion() {
        let mut d = Dir::new(1);
        for n in ["a", "b", "c", "d"] {
            d.insert(OsStr::new(n), 10);
        }
        let first = list(&d, 0, 2);
        assert_eq!(first.len(), 2);
        d.remove(OsStr::new("a"));
        d.remove(OsStr::new("c"));
        d.insert(OsStr::new("e"), 11);
        let rest: Vec<_> = list(&d, first[1].0, 10).into_iter().map(|e| e.1).collect();
        // Newest first: the first two were "d" and "c"; of the rest, "a" went, and "e" came
        // after the listing began.
        assert_eq!(first[1].1, OsString::from("c"));
        assert_eq!(rest, vec![OsString::from("b")]);
    }

    #[test]
    fn a_replaced_name_lists_its_new_inode_in_its_place() {
        let mut d = Dir::new(1);
        for (n, ino) in [("b", 10), ("a", 11), ("c", 12)] {
            d.insert(OsStr::new(n), ino);
        }
        d.insert(OsStr::new("a"), 20);
        let listed: Vec<(OsString, u64)> =
            list(&d, 0, 10).into_iter().map(|e| (e.1, e.2)).collect();
        let owned = |v: &[(&str, u64)]| -> Vec<(OsString, u64)> {
            v.iter().map(|&(n, i)| (n.into(), i)).collect()
        };
        assert_eq!(listed, owned(&[("c", 12), ("a", 20), ("b", 10)]));
        let by_name: Vec<(OsString, u64)> = d.iter().map(|(n, i)| (n.to_owned(), i)).collect();
        assert_eq!(by_name, owned(&[("a", 20), ("b", 10), ("c", 12)]));
    }
}
