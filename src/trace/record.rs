//! `Record`: an event as the recorder keeps it between the request and a read.
//!
//! [`Event`] has a field for everything any operation reports, most of them empty for any one
//! request: over 500 bytes. Every event crosses from the request's thread to the collector and
//! then sits in the buffer, so its size is what the trace costs in memory traffic and in
//! memory. A `Record` keeps the fields most requests have inline, the numeric fields that are
//! present packed into a few words, and the command name and a short path inside itself (so
//! that no memory passes from the request's thread to the collector's allocator): 200
//! bytes. A request with a rarer field (a second path, an xattr name or symlink target,
//! setattr fields, a fault) keeps its whole event in a box instead.

use super::event::{Event, Op};
use crate::Errno;
use crate::text::{Comm, PathText};

/// Numeric fields kept inline; an event with more is kept whole.
const INLINE: usize = 8;

/// A numeric event field, packed into a u64 and back without loss.
trait Packed: Copy {
    fn pack(self) -> u64;
    fn unpack(v: u64) -> Self;
}

impl Packed for u64 {
    fn pack(self) -> u64 {
        self
    }
    fn unpack(v: u64) -> Self {
        v
    }
}

impl Packed for i64 {
    fn pack(self) -> u64 {
        self as u64
    }
    fn unpack(v: u64) -> Self {
        v as i64
    }
}

impl Packed for u32 {
    fn pack(self) -> u64 {
        self as u64
    }
    fn unpack(v: u64) -> Self {
        v as u32
    }
}

impl Packed for i32 {
    fn pack(self) -> u64 {
        self as u32 as u64
    }
    fn unpack(v: u64) -> Self {
        v as u32 as i32
    }
}

/// The fields common to every event, and the optional numeric fields packed.
#[derive(Debug)]
pub struct Compact {
    seq: u64,
    ts_ns: u64,
    dur_ns: u64,
    tid: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    comm: Comm,
    path: Option<PathText>,
    /// Values of the numeric fields present, in declaration order; bit i of `present` says
    /// whether the i-th numeric field is.
    nums: [u64; INLINE],
    present: u32,
    /// Raw errno value; 0 when the request succeeded.
    errno: i32,
    op: Op,
    short: bool,
}

/// An event as the recorder keeps it.
#[derive(Debug)]
pub enum Record {
    /// The common case.
    Compact(Compact),
    /// An event with a rarer field, whole.
    Whole(Box<Event>),
}

/// Applies `$m` to the list of optional numeric fields of `Event`, in a fixed order.
macro_rules! numeric_fields {
    ($m:ident) => {
        $m!(
            ino, ino2, node, fh, fh2, flags, mode, rdev, offset, offset2, size, returned,
            file_size, out_ino, out_fh, out_offset, rule
        )
    };
}

impl Record {
    /// Keeps `e`, which failed with `errno` if that is set (`e.errno` is then ignored).
    pub fn new(e: Event, errno: Option<Errno>) -> Record {
        let rare = e.path2.is_some()
            || e.name.is_some()
            || e.set.is_some()
            || e.fault.is_some()
            || e.flags_str.is_some()
            || (errno.is_none() && e.errno.is_some());
        macro_rules! count {
            ($($f:ident),*) => { 0 $(+ e.$f.is_some() as usize)* };
        }
        if rare || numeric_fields!(count) > INLINE {
            let mut e = e;
            if let Some(errno) = errno {
                e.errno = Some(errno.to_string());
            }
            return Record::Whole(Box::new(e));
        }
        let mut nums = [0u64; INLINE];
        let (mut present, mut n) = (0u32, 0usize);
        let mut bit = 0u32;
        macro_rules! pack {
            ($($f:ident),*) => {$(
                if let Some(v) = e.$f {
                    nums[n] = Packed::pack(v);
                    n += 1;
                    present |= 1 << bit;
                }
                bit += 1;
            )*};
        }
        numeric_fields!(pack);
        // The counters' last increments.
        let _ = (n, bit);
        Record::Compact(Compact {
            seq: e.seq,
            ts_ns: e.ts_ns,
            dur_ns: e.dur_ns,
            tid: e.tid,
            pid: e.pid,
            uid: e.uid,
            gid: e.gid,
            comm: e.comm,
            path: e.path,
            nums,
            present,
            errno: errno.map_or(0, Errno::code),
            op: e.op,
            short: e.short,
        })
    }

    /// Sequence number of the event.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Compact(c) => c.seq,
            Record::Whole(e) => e.seq,
        }
    }

    /// The event.
    pub fn event(&self) -> Event {
        let c = match self {
            Record::Compact(c) => c,
            Record::Whole(e) => return (**e).clone(),
        };
        let mut e = Event {
            seq: c.seq,
            ts_ns: c.ts_ns,
            dur_ns: c.dur_ns,
            tid: c.tid,
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
            comm: c.comm.clone(),
            op: c.op,
            path: c.path.clone(),
            short: c.short,
            errno: (c.errno != 0).then(|| Errno::from_raw(c.errno).to_string()),
            ..Event::default()
        };
        let (mut n, mut bit) = (0usize, 0u32);
        macro_rules! unpack {
            ($($f:ident),*) => {$(
                if c.present & (1 << bit) != 0 {
                    e.$f = Some(Packed::unpack(c.nums[n]));
                    n += 1;
                }
                bit += 1;
            )*};
        }
        numeric_fields!(unpack);
        // The counters' last increments.
        let _ = (n, bit);
        e
    }
}

/// Names every field of [`Event`], so that a field added there without a place here fails to
/// compile: a compact record would silently lose it.
#[allow(dead_code)]
fn knows_every_field(e: &Event) {
    let Event {
        seq: _,
        ts_ns: _,
        dur_ns: _,
        tid: _,
        pid: _,
        comm: _,
        uid: _,
        gid: _,
        op: _,
        path: _,
        short: _,
        errno: _,
        // Kept whole when present.
        path2: _,
        name: _,
        set: _,
        fault: _,
        flags_str: _,
        // Packed: the list in `numeric_fields!`.
        ino: _,
        ino2: _,
        node: _,
        fh: _,
        fh2: _,
        flags: _,
        mode: _,
        rdev: _,
        offset: _,
        offset2: _,
        size: _,
        returned: _,
        file_size: _,
        out_ino: _,
        out_fh: _,
        out_offset: _,
        rule: _,
    } = e;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::PATH_INLINE as SHORT_PATH;
    use crate::trace::event::SetattrFields;

    fn base() -> Event {
        Event {
            seq: 7,
            ts_ns: 1_000,
            dur_ns: 20,
            tid: 42,
            pid: 41,
            comm: "python3".into(),
            uid: 1000,
            gid: 100,
            op: Op::Read,
            ..Event::default()
        }
    }

    fn round_trip(e: Event, errno: Option<Errno>) -> (Event, bool) {
        let r = Record::new(e, errno);
        let compact = matches!(r, Record::Compact(_));
        assert_eq!(r.seq(), 7);
        (r.event(), compact)
    }

    #[test]
    fn a_common_event_is_kept_compact_and_comes_back_the_same() {
        let read = Event {
            ino: Some(u64::MAX),
            fh: Some(3),
            flags: Some(-1),
            offset: Some(-5),
            size: Some(4096),
            returned: Some(1),
            short: true,
            file_size: Some(1 << 40),
            path: Some("/a/b".into()),
            ..base()
        };
        assert!(std::mem::size_of::<Record>() <= 200);
        assert_eq!(round_trip(read.clone(), None), (read, true));
        let create = Event {
            op: Op::Create,
            ino: Some(1),
            flags: Some(libc::O_CREAT | libc::O_EXCL),
            mode: Some(0o644),
            rule: Some(9),
            ..base()
        };
        let failed = Event {
            errno: Some("EEXIST".into()),
            ..create.clone()
        };
        assert_eq!(round_trip(create, Some(Errno::EEXIST)), (failed, true));
    }

    #[test]
    fn an_event_with_a_rare_field_or_many_numbers_is_kept_whole() {
        let rename = Event {
            op: Op::Rename,
            path: Some("/a".into()),
            path2: Some("/b".into()),
            ..base()
        };
        assert_eq!(round_trip(rename.clone(), None), (rename, false));
        let setattr = Event {
            set: Some(Box::new(SetattrFields {
                size: Some(0),
                ..SetattrFields::default()
            })),
            ..base()
        };
        assert_eq!(round_trip(setattr.clone(), None), (setattr, false));
        let copy = Event {
            op: Op::CopyFileRange,
            ino: Some(1),
            fh: Some(2),
            offset: Some(3),
            ino2: Some(4),
            fh2: Some(5),
            offset2: Some(6),
            size: Some(7),
            returned: Some(8),
            flags: Some(0),
            ..base()
        };
        let (back, compact) = round_trip(copy.clone(), Some(Errno::EXDEV));
        assert!(!compact);
        assert_eq!(
            back,
            Event {
                errno: Some("EXDEV".into()),
                ..copy
            }
        );
        // Paths and names inline, at the edge, and longer than the record holds inline.
        for len in [SHORT_PATH, SHORT_PATH + 1, 81] {
            let e = Event {
                path: Some("p".repeat(len).into()),
                comm: "c".repeat(len - 30).into(),
                ..base()
            };
            assert_eq!(round_trip(e.clone(), None), (e, true));
        }
        // An errno given only as text is kept as it is.
        let odd = Event {
            errno: Some("EWHATEVER".into()),
            ..base()
        };
        assert_eq!(round_trip(odd.clone(), None), (odd, false));
    }
}
