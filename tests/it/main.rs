//! Integration tests: one binary, one module per area. Mounted tests each use their own
//! temporary mount point (see `common`), so they run in parallel.

mod common;

mod check;
mod concurrency;
mod crash;
mod differential;
mod docs;
mod explore;
mod faults;
mod hardening;
mod library;
mod lifecycle;
mod model;
mod permissions;
mod posix;
mod trace;
mod trace_cli;
