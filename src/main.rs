//! The `portcullis` binary: the command line is in [`portcullis::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
