//! The `portcullis` binary: the command line is in [`portcullis::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: at 100,000 policies a reload spent a third of its time in
/// glibc's allocator and left hundreds of megabytes of freed memory in its per-thread
/// heaps; mimalloc returns freed pages to the system on its own (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
