//! rawfs: a FUSE file system that serves an in-memory tree, for seeing and testing exactly
//! what a program asks of a file system.
//!
//! The crate is layered so that each part can be tested alone: [`fs`] is the tree and its
//! POSIX rules, [`fuse`] turns kernel requests into calls on it, [`mount`] mounts and
//! unmounts safely, [`harness`] gives test suites a mount that cleans up after itself, and
//! [`cli`] is the command line.
#![warn(missing_docs, unreachable_pub)]

pub mod check;
pub mod cli;
pub mod control;
pub mod errno;
pub mod explore;
pub mod fault;
pub mod fs;
pub mod fuse;
pub mod harness;
pub mod mount;
pub mod registry;
pub mod text;
pub mod trace;
pub mod units;

pub use errno::Errno;
pub use fs::durable::{CrashOptions, Keep, Losses, Model};
pub use harness::TempMount;
pub use mount::{MountConfig, Mounted};

/// The examples of docs/library.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryGuide;

/// The Rust example of docs/crash.md, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/crash.md")]
pub struct CrashGuide;
