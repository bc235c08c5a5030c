//! The trace: one [`Event`] per request the kernel sends, recorded cheaply on the request path
//! ([`recorder`]), kept in a bounded buffer, optionally streamed to a file, and printed as
//! JSON Lines, strace-like text or Chrome trace-event JSON ([`mod@format`]).

pub mod clock;
pub mod event;
pub mod exec_watch;
pub mod filter;
pub mod flags;
pub mod format;
pub mod record;
pub mod recorder;
pub mod who;

pub use event::{Event, FORMAT_VERSION, Gap, Header, Op};

/// Fills the fields derived from others (`flags_str`). Runs off the request path, when an
/// event is stored.
pub fn decorate(e: &mut Event) {
    let Some(f) = e.flags else { return };
    e.flags_str = Some(match e.op {
        Op::Rename => flags::rename_flags(f as u32),
        Op::Setxattr => flags::xattr_flags(f),
        Op::Fallocate => flags::fallocate_mode(f),
        Op::Access => flags::access_mask(f),
        Op::Fsync | Op::Fsyncdir => if f != 0 { "datasync" } else { "0" }.into(),
        Op::Ioctl => format!("{:#x}", f as u32),
        Op::Lseek => match f {
            libc::SEEK_DATA => "SEEK_DATA".into(),
            libc::SEEK_HOLE => "SEEK_HOLE".into(),
            other => other.to_string(),
        },
        _ => flags::open_flags(f),
    });
}
