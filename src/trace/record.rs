//! Records: events encoded as bytes, as the recorder keeps them between a request and a read.
//!
//! [`Event`] has a field for everything any operation reports, most of them empty for any one
//! request: over 500 bytes in memory. Every event crosses from the request's thread to the
//! collector and then sits in the buffer, so its size is what the trace costs in memory
//! traffic and in memory. A record is the event's fields that are present, written once by
//! the request's thread: numbers as variable-length integers, text as its bytes. A typical
//! record is 50 to 90 bytes, and it is decoded only when someone reads the trace.
//!
//! Layout: the record's length (u32, little endian, the whole record), its sequence number
//! (u64, little endian; the collector merges by it without decoding the rest), then the body
//! (see [`encode`]).

use super::event::{Event, Op, SetattrFields, TimeSpec};
use crate::Errno;
use crate::text::Text;

/// Bytes before the body: the length and the sequence number.
const HEADER: usize = 12;

/// Applies `$m` to the list of optional numeric fields of `Event`, in a fixed order: a
/// record says which are present in one bit each.
macro_rules! numeric_fields {
    ($m:ident) => {
        $m!(
            ino, ino2, node, fh, fh2, flags, mode, rdev, offset, offset2, size, returned,
            file_size, out_ino, out_fh, out_offset, rule
        )
    };
}

/// A numeric event field, packed into a u64 and back without loss; small magnitudes pack
/// into small numbers, which encode short.
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

impl Packed for u32 {
    fn pack(self) -> u64 {
        self.into()
    }
    fn unpack(v: u64) -> Self {
        v as u32
    }
}

/// Flag words: their bits, not their sign, matter.
impl Packed for i32 {
    fn pack(self) -> u64 {
        (self as u32).into()
    }
    fn unpack(v: u64) -> Self {
        v as u32 as i32
    }
}

/// Offsets: zigzag, so that -1 stays short.
impl Packed for i64 {
    fn pack(self) -> u64 {
        ((self << 1) ^ (self >> 63)) as u64
    }
    fn unpack(v: u64) -> Self {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }
}

// Bits of the body's `has` word: which of the rarer parts follow.
const SHORT: u32 = 1;
const PATH: u32 = 1 << 1;
const ERRNO: u32 = 1 << 2;
const ERRNO_TEXT: u32 = 1 << 3;
const PATH2: u32 = 1 << 4;
const NAME: u32 = 1 << 5;
const FAULT: u32 = 1 << 6;
const FLAGS_STR: u32 = 1 << 7;
const SET: u32 = 1 << 8;

/// The fixed part of a record and its numbers, written on the stack and then appended in one
/// copy: the longest is the header, 6 + 17 numbers of up to 10 bytes, 2 bit words and the op.
struct Head<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

const HEAD_MAX: usize = HEADER + 23 * VARINT_MAX + 2 * 5 + 1;

/// Bytes of the longest varint, a u64's.
const VARINT_MAX: usize = 10;

impl<const N: usize> Head<N> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes[self.len] = v as u8 | 0x80;
            self.len += 1;
            v >>= 7;
        }
        self.bytes[self.len] = v as u8;
        self.len += 1;
    }
}

/// Appends `v` as a varint: 7 bits a byte, low bits first, the high bit set on all but the
/// last byte.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut h = Head {
        bytes: [0; VARINT_MAX],
        len: 0,
    };
    h.varint(v);
    out.extend_from_slice(&h.bytes[..h.len]);
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

fn put_time(out: &mut Vec<u8>, t: &Option<TimeSpec>) {
    match t {
        None => out.push(0),
        Some(TimeSpec::Now) => out.push(1),
        Some(TimeSpec::Ns(ns)) => {
            out.push(2);
            out.extend_from_slice(&ns.to_le_bytes());
        }
    }
}

/// Appends the record of `e` to `out`. `errno`, if set, is the error the request failed with
/// (then `e.errno` is not looked at); otherwise `e.errno` is kept as it is.
///
/// The body: `ts_ns`, `dur_ns`, `tid`, `pid`, `uid`, `gid` as varints, the operation (one
/// byte), the `has` bits and the numeric-field bits as varints, the numeric fields present,
/// the command name, then the parts `has` announces, in the order of its bits.
pub fn encode(e: &Event, errno: Option<Errno>, out: &mut Vec<u8>) {
    // Every field by name: a field added to `Event` without a place here fails to compile.
    let Event {
        seq,
        ts_ns,
        dur_ns,
        tid,
        pid,
        comm,
        uid,
        gid,
        op,
        ino: _,
        path,
        path2,
        ino2: _,
        node: _,
        fh: _,
        fh2: _,
        flags: _,
        flags_str,
        mode: _,
        rdev: _,
        name,
        set,
        offset: _,
        offset2: _,
        size: _,
        returned: _,
        short,
        file_size: _,
        out_ino: _,
        out_fh: _,
        out_offset: _,
        errno: errno_text,
        fault,
        rule: _,
    } = e;
    let errno_text = errno_text.as_deref().filter(|_| errno.is_none());
    let start = out.len();
    let mut h = Head {
        bytes: [0; HEAD_MAX],
        len: HEADER,
    };
    h.bytes[4..HEADER].copy_from_slice(&seq.to_le_bytes());
    for v in [*ts_ns, *dur_ns] {
        h.varint(v);
    }
    for v in [*tid, *pid, *uid, *gid] {
        h.varint(v.into());
    }
    h.bytes[h.len] = *op as u8;
    h.len += 1;
    let mut has = 0;
    for (bit, on) in [
        (SHORT, *short),
        (PATH, path.is_some()),
        (ERRNO, errno.is_some()),
        (ERRNO_TEXT, errno_text.is_some()),
        (PATH2, path2.is_some()),
        (NAME, name.is_some()),
        (FAULT, fault.is_some()),
        (FLAGS_STR, flags_str.is_some()),
        (SET, set.is_some()),
    ] {
        if on {
            has |= bit;
        }
    }
    h.varint(has.into());
    let mut present = 0u32;
    let mut bit = 0;
    macro_rules! presence {
        ($($f:ident),*) => {$(
            if e.$f.is_some() {
                present |= 1 << bit;
            }
            bit += 1;
        )*};
    }
    numeric_fields!(presence);
    let _ = bit;
    h.varint(present.into());
    macro_rules! values {
        ($($f:ident),*) => {$(
            if let Some(v) = e.$f {
                h.varint(Packed::pack(v));
            }
        )*};
    }
    numeric_fields!(values);
    out.extend_from_slice(&h.bytes[..h.len]);
    put_str(out, comm.as_bytes());
    if let Some(p) = path {
        put_str(out, p.as_bytes());
    }
    if let Some(errno) = errno {
        put_varint(out, Packed::pack(errno.code()));
    }
    for s in [errno_text, path2.as_deref()].into_iter().flatten() {
        put_str(out, s.as_bytes());
    }
    for s in [name, fault, flags_str].into_iter().flatten() {
        put_str(out, s.as_bytes());
    }
    if let Some(set) = set {
        let SetattrFields {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = &**set;
        let nums = [
            mode.map(u64::from),
            uid.map(u64::from),
            gid.map(u64::from),
            *size,
        ];
        let mut which = 0u8;
        for (i, v) in nums.iter().enumerate() {
            if v.is_some() {
                which |= 1 << i;
            }
        }
        out.push(which);
        for v in nums.into_iter().flatten() {
            put_varint(out, v);
        }
        put_time(out, atime);
        put_time(out, mtime);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads a record's body; every read past the end fails the whole decode.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn str(&mut self) -> Option<String> {
        let n = usize::try_from(self.varint()?).ok()?;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn text<const N: usize>(&mut self) -> Option<Text<N>> {
        let n = usize::try_from(self.varint()?).ok()?;
        Some(Text::from(String::from_utf8_lossy(self.take(n)?).as_ref()))
    }

    fn time(&mut self) -> Option<Option<TimeSpec>> {
        Some(match self.byte()? {
            0 => None,
            1 => Some(TimeSpec::Now),
            2 => Some(TimeSpec::Ns(i128::from_le_bytes(
                self.take(16)?.try_into().ok()?,
            ))),
            _ => return None,
        })
    }
}

/// The length of the record at the start of `bytes`, if a whole one is there.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    (len >= HEADER && len <= bytes.len()).then_some(len)
}

/// The sequence number of a record.
pub fn seq(record: &[u8]) -> u64 {
    record
        .get(4..HEADER)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The records of `bytes`, one after another, each as its own slice. Stops at anything that
/// is not a whole record.
pub fn records(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = record_len(bytes)?;
        let (record, rest) = bytes.split_at(len);
        bytes = rest;
        Some(record)
    })
}

/// The event of a record; `None` if the bytes are not a record [`encode`] wrote.
pub fn decode(record: &[u8]) -> Option<Event> {
    let len = record_len(record)?;
    let mut r = Reader {
        bytes: &record[..len],
        at: HEADER,
    };
    let mut e = Event {
        seq: seq(record),
        ts_ns: r.varint()?,
        dur_ns: r.varint()?,
        tid: r.u32()?,
        pid: r.u32()?,
        uid: r.u32()?,
        gid: r.u32()?,
        op: *Op::ALL.get(usize::from(r.byte()?))?,
        ..Event::default()
    };
    let has = r.u32()?;
    let present = r.u32()?;
    let mut bit = 0;
    macro_rules! values {
        ($($f:ident),*) => {$(
            if present & (1 << bit) != 0 {
                e.$f = Some(Packed::unpack(r.varint()?));
            }
            bit += 1;
        )*};
    }
    numeric_fields!(values);
    let _ = bit;
    e.short = has & SHORT != 0;
    e.comm = r.text()?;
    if has & PATH != 0 {
        e.path = Some(r.text()?);
    }
    if has & ERRNO != 0 {
        let code: i32 = Packed::unpack(r.varint()?);
        e.errno = Some(Errno::from_raw(code).to_string());
    }
    if has & ERRNO_TEXT != 0 {
        e.errno = Some(r.str()?);
    }
    if has & PATH2 != 0 {
        e.path2 = Some(r.text()?);
    }
    for (bit, field) in [
        (NAME, &mut e.name),
        (FAULT, &mut e.fault),
        (FLAGS_STR, &mut e.flags_str),
    ] {
        if has & bit != 0 {
            *field = Some(r.str()?);
        }
    }
    if has & SET != 0 {
        let which = r.byte()?;
        let mut nums = [None; 4];
        for (i, v) in nums.iter_mut().enumerate() {
            if which & (1 << i) != 0 {
                *v = Some(r.varint()?);
            }
        }
        let small = |v: Option<u64>| v.map(|v| v as u32);
        e.set = Some(Box::new(SetattrFields {
            mode: small(nums[0]),
            uid: small(nums[1]),
            gid: small(nums[2]),
            size: nums[3],
            atime: r.time()?,
            mtime: r.time()?,
        }));
    }
    (r.at == len).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The event as it comes back, and the record's size.
    fn round_trip(e: &Event, errno: Option<Errno>) -> (Event, usize) {
        let mut bytes = vec![0xaa];
        encode(e, errno, &mut bytes);
        let record = &bytes[1..];
        assert_eq!(seq(record), e.seq);
        assert_eq!(records(record).count(), 1);
        (decode(record).expect("decodes"), record.len())
    }

    #[test]
    fn a_common_event_comes_back_the_same_from_a_short_record() {
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
        let (back, len) = round_trip(&read, None);
        assert_eq!(back, read);
        assert!(len < 64, "{len} bytes");
        let create = Event {
            op: Op::Create,
            ino: Some(1),
            flags: Some(libc::O_CREAT | libc::O_EXCL),
            mode: Some(0o644),
            rule: Some(9),
            path: Some("/run/app.pid".into()),
            ..base()
        };
        let failed = Event {
            errno: Some("EEXIST".into()),
            ..create.clone()
        };
        assert_eq!(round_trip(&create, Some(Errno::EEXIST)).0, failed);
        // An errno given only as text is kept as it is.
        let odd = Event {
            errno: Some("EWHATEVER".into()),
            ..base()
        };
        assert_eq!(round_trip(&odd, None).0, odd);
    }

    #[test]
    fn every_rare_field_comes_back_the_same() {
        let every = Event {
            seq: u64::MAX,
            ts_ns: u64::MAX,
            dur_ns: 0,
            tid: u32::MAX,
            op: *Op::ALL.last().unwrap(),
            ino: Some(0),
            ino2: Some(4),
            node: Some(5),
            fh: Some(2),
            fh2: Some(5),
            flags: Some(i32::MIN),
            mode: Some(u32::MAX),
            rdev: Some(1),
            offset: Some(i64::MIN),
            offset2: Some(i64::MAX),
            size: Some(7),
            returned: Some(8),
            file_size: Some(0),
            out_ino: Some(9),
            out_fh: Some(10),
            out_offset: Some(-1),
            rule: Some(u64::MAX),
            path: Some("/é/ü".into()),
            path2: Some(format!("/{}", "d/".repeat(400)).into()),
            name: Some("user.x".into()),
            fault: Some("delay 5ms".into()),
            flags_str: Some("O_RDONLY".into()),
            comm: "c".repeat(40).into(),
            set: Some(Box::new(SetattrFields {
                mode: Some(0o4755),
                uid: None,
                gid: Some(0),
                size: Some(u64::MAX),
                atime: Some(TimeSpec::Now),
                mtime: Some(TimeSpec::Ns(-1_500_000_000_000_000_001)),
            })),
            errno: Some("EXDEV".into()),
            ..base()
        };
        assert_eq!(round_trip(&every, Some(Errno::EXDEV)).0, every);
        assert_eq!(round_trip(&every, None).0, every);
        for op in Op::ALL {
            let e = Event { op: *op, ..base() };
            assert_eq!(round_trip(&e, None).0, e);
        }
    }

    #[test]
    fn records_follow_one_another_and_damage_is_refused_not_panicked_on() {
        let mut bytes = Vec::new();
        for seq in 1..=3 {
            let e = Event { seq, ..base() };
            encode(&e, None, &mut bytes);
        }
        let seqs: Vec<u64> = records(&bytes).map(seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let one = records(&bytes).next().unwrap();
        assert!(decode(&one[..one.len() - 1]).is_none());
        for cut in 0..one.len() {
            let mut bad = one.to_vec();
            bad[cut] ^= 0xff;
            let _ = decode(&bad);
            assert!(records(&bytes[..cut]).all(|r| r.len() >= HEADER));
        }
        assert_eq!(records(&bytes[..one.len() + 3]).count(), 1);
    }
}
