//! `Dir`: a directory's entries, with readdir offsets that stay valid while it changes.
//!
//! Each entry gets a cookie from a counter that only grows; readdir offsets are cookies. A
//! listing resumed from an offset therefore never repeats or skips an entry that stayed in the
//! directory, whatever was added or removed meanwhile (entries added during a listing may or
//! may not appear, as POSIX allows).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// First cookie handed to an entry; 1 and 2 are "." and "..".
const FIRST_COOKIE: u64 = 3;

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
        self.next_cookie += 1;
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
        assert_eq!(rest, vec![OsString::from("d"), OsString::from("e")]);
    }
}
