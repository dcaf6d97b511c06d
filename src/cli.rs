/*!
The `outq` command line, parsed with clap before any action is taken.
*/
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// outq: privilege-separated outgoing mail queue.
#[derive(Debug, Parser)]
#[command(name = "outq", version, about, disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or repair the spool with exact owners and modes.
    Init(InitArgs),
    /// Audit an installation: spool, helper, configuration, group.
    Check(CheckArgs),
    /// Deliver queued mail (as the queue owner).
    Run(RunArgs),
}

/// Where the runner logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogSink {
    Syslog,
    Stderr,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spool directory (default: spool_directory from the configuration).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One pass (recover, pick up new/, deliver what is due), then exit.
    #[arg(long)]
    pub once: bool,
    /// Where to log.
    #[arg(long, value_enum, default_value = "syslog")]
    pub log: LogSink,
}

/// Options shared by commands that find the spool.
#[derive(Debug, Args, Clone)]
pub struct SpoolArgs {
    /// The spool directory (default: spool_directory from the configuration).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The queue owner (default: queue_user, or yourself when not root).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The helper's group (default: setgid_group, or your group when not root).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub spool: SpoolArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// The installed helper to audit.
    #[arg(long, value_name = "PATH")]
    pub helper: Option<PathBuf>,
}

pub fn parse() -> Cli {
    Cli::parse()
}
