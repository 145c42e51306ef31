//! `ctwatch completions` and `ctwatch man`: generated from the command's own definition.

use std::io::{self, Write};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "ctwatch", &mut out);
    out.flush().context("cannot write the completion script")
}

/// Prints the man page (roff).
pub fn man_page() -> Result<()> {
    let mut out = io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out).context("cannot write the man page")?;
    out.flush().context("cannot write the man page")
}
