//! rawfs: a FUSE file system that serves an in-memory tree, for seeing and testing exactly
//! what a program asks of a file system.
//!
//! The crate is layered so that each part can be tested alone: [`fs`] is the tree and its
//! POSIX rules, [`fuse`] turns kernel requests into calls on it, [`mount`] mounts and
//! unmounts safely, [`harness`] gives test suites a mount that cleans up after itself, and
//! `cli` is the command line (feature `cli`, on by default; a crate that only mounts rawfs in
//! its tests can leave it out with `default-features = false`).
#![warn(missing_docs, unreachable_pub)]

pub mod check;
#[cfg(feature = "cli")]
pub mod cli;
pub mod control;
pub mod errno;
pub mod explore;
pub mod fault;
pub mod fs;
pub mod fuse;
pub mod harness;
pub mod mount;
pub mod query;
pub mod registry;
pub mod text;
pub mod trace;
pub mod units;

pub use check::{Check, Finding, Severity};
pub use errno::Errno;
pub use fault::Rule;
pub use fs::durable::{CrashOptions, Keep, Losses, Model};
pub use harness::{FaultGuard, TempMount};
pub use mount::{MountConfig, Mounted};
pub use query::{OFlag, Query, QueryError, Request};
pub use trace::{Event, Op};

/// The examples of docs/library.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryGuide;

/// The Rust example of docs/crash.md, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/crash.md")]
pub struct CrashGuide;
