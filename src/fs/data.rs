//! `FileData`: a regular file's bytes as sparse, copy-on-write pages.
//!
//! A file is a size plus a map from page index to page. Holes are absent pages and read as
//! zeros, so sparse and huge files cost only what was written, and truncate or append never
//! copies the file. Pages sit behind an `Arc`: cloning a `FileData` (to keep the last fsynced
//! version, say) copies page pointers, and a later write copies only the page it touches.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Page size, also the unit of space accounting and of `st_blocks` (as on tmpfs).
pub const PAGE: u64 = 4096;

type Page = [u8; PAGE as usize];

/// A regular file's contents.
#[derive(Clone, Debug, Default)]
pub struct FileData {
    size: u64,
    pages: BTreeMap<u64, Arc<Page>>,
}

/// Counts pages as they are allocated and freed, against a limit.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    /// Pages in use.
    pub used: u64,
    /// Most pages that may be in use.
    pub limit: u64,
    /// Pages given back since the tree was made: only grows, so that a watcher polling it
    /// sees every free, however briefly the pages were in use.
    pub given_back: u64,
}

impl Space {
    /// A budget of `limit` pages, none used.
    pub fn with_limit(limit: u64) -> Space {
        Space {
            used: 0,
            limit,
            given_back: 0,
        }
    }

    /// A budget that never runs out.
    pub fn unlimited() -> Space {
        Space::with_limit(u64::MAX)
    }

    /// Pages still free.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    fn take(&mut self, n: u64) -> bool {
        if n > self.available() {
            return false;
        }
        self.used += n;
        true
    }

    fn give_back(&mut self, n: u64) {
        self.given_back += n.min(self.used);
        self.used = self.used.saturating_sub(n);
    }
}

/// A range of a file's bytes as a write left them, kept by sharing the file's pages.
#[derive(Clone, Debug)]
pub struct Extent {
    /// Where the range starts in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    pages: Vec<(u64, Arc<Page>)>,
}

impl Extent {
    /// The first `n` bytes of the range (holes read as zeros).
    pub fn bytes(&self, n: u64) -> Vec<u8> {
        let n = n.min(self.len);
        let mut out = vec![0u8; n as usize];
        let end = self.offset + n;
        for (idx, page) in &self.pages {
            let page_start = idx * PAGE;
            let from = self.offset.max(page_start);
            let to = end.min(page_start + PAGE);
            if from < to {
                out[(from - self.offset) as usize..(to - self.offset) as usize].copy_from_slice(
                    &page[(from - page_start) as usize..(to - page_start) as usize],
                );
            }
        }
        out
    }
}

impl FileData {
    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of allocated pages.
    pub fn pages(&self) -> u64 {
        self.pages.len() as u64
    }

    /// Reads up to `len` bytes at `offset`, clipped at end of file; holes read as zeros.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_into(offset, len, &mut out);
        out
    }

    /// [`FileData::read`] appended to `out`, so that a caller can reuse one buffer: each byte
    /// is written once (copied from its page, or zeroed in a hole), never zeroed first.
    /// Returns the number of bytes appended.
    pub fn read_into(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> usize {
        if offset >= self.size {
            return 0;
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let n = (end - offset) as usize;
        out.reserve(n);
        // Invariant: `pos` is the file offset of the next byte to append.
        let mut pos = offset;
        for (&idx, page) in self.pages.range(offset / PAGE..end.div_ceil(PAGE)) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            out.resize(out.len() + (from - pos) as usize, 0);
            out.extend_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
            pos = to;
        }
        out.resize(out.len() + (end - pos) as usize, 0);
        n
    }

    /// Writes `data` at `offset`, growing the file as needed. Returns how many bytes were
    /// written: fewer than asked only when the budget ran out of pages part way.
    pub fn write(&mut self, offset: u64, data: &[u8], budget: &mut Space) -> usize {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let page = match self.pages.get_mut(&idx) {
                Some(p) => p,
                None => {
                    if !budget.take(1) {
                        break;
                    }
                    self.pages
                        .entry(idx)
                        .or_insert_with(|| Arc::new([0; PAGE as usize]))
                }
            };
            Arc::make_mut(page)[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        // Nothing written (an empty write, or no space for the first page): no growth either.
        if done > 0 {
            self.size = self.size.max(offset + done as u64);
        }
        done
    }

    /// Sets the size: shrinking frees whole pages past the end and zeroes the tail of the
    /// last one (so a later extension reads zeros); growing adds a hole. Keeping the size also
    /// frees pages past the end (preallocated with `FALLOC_FL_KEEP_SIZE`), as tmpfs and ext4 do.
    pub fn truncate(&mut self, size: u64, budget: &mut Space) {
        if size <= self.size {
            let freed = self.pages.split_off(&size.div_ceil(PAGE));
            budget.give_back(freed.len() as u64);
            self.zero_within_page(size, PAGE - size % PAGE);
        }
        self.size = size;
    }

    /// Deallocates `[offset, offset+len)`: whole pages are freed, partial ones zeroed. The
    /// size never changes (PUNCH_HOLE always comes with KEEP_SIZE).
    pub fn punch_hole(&mut self, offset: u64, len: u64, budget: &mut Space) {
        let end = offset.saturating_add(len);
        if end <= offset {
            return;
        }
        let first_full = offset.div_ceil(PAGE);
        let last_full = end / PAGE;
        if first_full < last_full {
            let keys: Vec<u64> = self
                .pages
                .range(first_full..last_full)
                .map(|(k, _)| *k)
                .collect();
            for k in &keys {
                self.pages.remove(k);
            }
            budget.give_back(keys.len() as u64);
        }
        if offset % PAGE != 0 {
            let page_end = (offset / PAGE + 1) * PAGE;
            self.zero_within_page(offset, page_end.min(end) - offset);
        }
        if end % PAGE != 0 && end / PAGE >= first_full {
            self.zero_within_page(end / PAGE * PAGE, end % PAGE);
        }
    }

    /// Allocates pages for `[offset, offset+len)` (reading as zeros where new) and, unless
    /// `keep_size`, extends the size to cover the range. All or nothing: if the budget cannot
    /// cover every missing page, nothing changes and the result is false.
    pub fn allocate(&mut self, offset: u64, len: u64, keep_size: bool, budget: &mut Space) -> bool {
        let end = offset.saturating_add(len);
        let (first, last) = (offset / PAGE, end.div_ceil(PAGE));
        let present = self.pages.range(first..last).count() as u64;
        if !budget.take((last - first) - present) {
            return false;
        }
        for i in first..last {
            self.pages
                .entry(i)
                .or_insert_with(|| Arc::new([0; PAGE as usize]));
        }
        if !keep_size {
            self.size = self.size.max(end);
        }
        true
    }

    /// `lseek(SEEK_DATA)`: the first offset at or after `offset` inside an allocated page.
    pub fn seek_data(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let (&idx, _) = self.pages.range(offset / PAGE..).next()?;
        let pos = offset.max(idx * PAGE);
        (pos < self.size).then_some(pos)
    }

    /// `lseek(SEEK_HOLE)`: the first offset at or after `offset` in a hole, or end of file.
    pub fn seek_hole(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let mut idx = offset / PAGE;
        while self.pages.contains_key(&idx) {
            idx += 1;
        }
        Some(offset.max(idx * PAGE).min(self.size))
    }

    /// Hashes what reading the file returns: its size and the bytes of its pages that are not
    /// all zeros (a hole and a page of zeros read the same).
    pub fn hash_contents(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.size.hash(h);
        for (idx, page) in &self.pages {
            if page.iter().any(|&b| b != 0) {
                idx.hash(h);
                page[..].hash(h);
            }
        }
    }

    /// Releases every page (the file is gone).
    pub fn clear(&mut self, budget: &mut Space) {
        budget.give_back(self.pages.len() as u64);
        self.pages.clear();
        self.size = 0;
    }

    /// The bytes of `[offset, offset+len)` as they are now, sharing the pages instead of
    /// copying them (a later write to the file copies the page it touches).
    pub fn extent(&self, offset: u64, len: u64) -> Extent {
        let end = offset.saturating_add(len);
        let pages = self
            .pages
            .range(offset / PAGE..end.div_ceil(PAGE))
            .map(|(&i, p)| (i, p.clone()))
            .collect();
        Extent { offset, len, pages }
    }

    /// Writes the first `keep` bytes of `e` where they were taken from.
    pub fn apply(&mut self, e: &Extent, keep: u64, budget: &mut Space) {
        let keep = keep.min(e.len);
        if keep > 0 {
            self.write(e.offset, &e.bytes(keep), budget);
        }
    }

    fn zero_within_page(&mut self, pos: u64, len: u64) {
        let idx = pos / PAGE;
        let start = (pos % PAGE) as usize;
        let end = (start + len as usize).min(PAGE as usize);
        if start < end {
            if let Some(page) = self.pages.get_mut(&idx) {
                Arc::make_mut(page)[start..end].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_write_reads_zero_holes() {
        let mut f = FileData::default();
        assert_eq!(f.write(10 * PAGE + 5, b"abc", &mut Space::unlimited()), 3);
        assert_eq!(f.size(), 10 * PAGE + 8);
        assert_eq!(f.pages(), 1);
        let all = f.read(0, usize::MAX);
        assert_eq!(all.len() as u64, f.size());
        assert!(all[..(10 * PAGE + 5) as usize].iter().all(|&b| b == 0));
        assert_eq!(&all[(10 * PAGE + 5) as usize..], b"abc");
    }

    #[test]
    fn truncate_zeroes_tail_then_extends_with_zeros() {
        let mut f = FileData::default();
        f.write(0, &[7u8; 10000], &mut Space::unlimited());
        f.truncate(5000, &mut Space::unlimited());
        assert_eq!(f.pages(), 2);
        f.truncate(9000, &mut Space::unlimited());
        let d = f.read(0, 9000);
        assert!(d[..5000].iter().all(|&b| b == 7));
        assert!(d[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn clones_share_pages_until_written() {
        let mut f = FileData::default();
        f.write(0, &[1u8; 3 * PAGE as usize], &mut Space::unlimited());
        let snapshot = f.clone();
        f.write(PAGE, b"xyz", &mut Space::unlimited());
        assert_eq!(snapshot.read(PAGE, 3), vec![1, 1, 1]);
        assert_eq!(f.read(PAGE, 3), b"xyz");
        assert!(Arc::ptr_eq(&f.pages[&0], &snapshot.pages[&0]));
        assert!(!Arc::ptr_eq(&f.pages[&1], &snapshot.pages[&1]));
    }

    #[test]
    fn punch_hole_frees_whole_pages_and_zeroes_edges() {
        let mut f = FileData::default();
        f.write(0, &[9u8; 4 * PAGE as usize], &mut Space::unlimited());
        f.punch_hole(100, 2 * PAGE, &mut Space::unlimited());
        assert_eq!(f.size(), 4 * PAGE);
        assert_eq!(f.pages(), 3);
        let d = f.read(0, usize::MAX);
        assert!(d[..100].iter().all(|&b| b == 9));
        assert!(d[100..(2 * PAGE + 100) as usize].iter().all(|&b| b == 0));
        assert!(d[(2 * PAGE + 100) as usize..].iter().all(|&b| b == 9));
        assert_eq!(f.seek_hole(0), Some(PAGE));
        assert_eq!(f.seek_data(PAGE), Some(2 * PAGE));
    }

    /// Reading into a dirty, reused buffer gives what `read` gives: holes as zeros (never the
    /// buffer's old bytes), a partial last page, nothing past end of file.
    #[test]
    fn read_into_appends_what_read_returns() {
        let mut f = FileData::default();
        let mut all = Space::unlimited();
        f.write(PAGE + 10, &[5u8; 100], &mut all);
        f.write(3 * PAGE, &[6u8; PAGE as usize], &mut all);
        f.write(5 * PAGE, b"tail", &mut all);
        let size = 5 * PAGE + 4;
        assert_eq!(f.size(), size);
        let mut buf = vec![0xAAu8; 3 * PAGE as usize];
        let cases: &[(u64, usize)] = &[
            (0, 10),                            // hole only, before any page
            (PAGE, 200),                        // hole then data inside one page
            (PAGE + 50, 3 * PAGE as usize),     // data, hole (page 2), full page, hole
            (2 * PAGE, PAGE as usize),          // exactly one hole page
            (3 * PAGE + 4000, 200),             // spans the end of a page into a hole
            (5 * PAGE, 4096),                   // partial page at end of file
            (4 * PAGE + 7, 10 * PAGE as usize), // hole then the partial last page
            (size - 1, 100),                    // last byte
            (size, 100),                        // at end of file
            (size + PAGE, 100),                 // past end of file
            (0, usize::MAX),                    // the whole file
        ];
        for &(offset, len) in cases {
            let want = f.read(offset, len);
            let expect_len = size.saturating_sub(offset).min(len as u64) as usize;
            assert_eq!(want.len(), expect_len, "read({offset}, {len})");
            buf.clear();
            buf.extend_from_slice(&[0xAA; 64]);
            assert_eq!(f.read_into(offset, len, &mut buf), want.len());
            assert_eq!(
                &buf[..64],
                &[0xAA; 64][..],
                "read_into keeps what was there"
            );
            assert_eq!(&buf[64..], &want[..], "read_into({offset}, {len})");
        }
        // Spot checks of `read` itself against the writes above.
        let d = f.read(PAGE, 200);
        assert!(d[..10].iter().all(|&b| b == 0) && d[10..110].iter().all(|&b| b == 5));
        assert!(d[110..].iter().all(|&b| b == 0));
        assert_eq!(f.read(5 * PAGE - 2, 100), [0, 0, b't', b'a', b'i', b'l']);
    }

    #[test]
    fn write_stops_short_when_budget_runs_out() {
        let mut f = FileData::default();
        let mut b = Space::with_limit(2);
        assert_eq!(
            f.write(100, &[1u8; 3 * PAGE as usize], &mut b),
            (2 * PAGE - 100) as usize
        );
        assert!(!f.allocate(0, 3 * PAGE, false, &mut b));
        f.truncate(0, &mut b);
        assert_eq!(b.used, 0);
    }
}
