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
    /// List queued entries, like mailq.
    List(ListArgs),
    /// Show one entry.
    Show(ShowArgs),
    /// Make deferred entries due now and wake the runner.
    Flush(IdsArgs),
    /// Hold entries (no delivery until released).
    Hold(IdsArgs),
    /// Release held entries.
    Release(IdsArgs),
    /// Delete entries (or all in a state older than a duration).
    Delete(DeleteArgs),
    /// Put failed or corrupt entries back into delivery.
    Requeue(IdsArgs),
    /// Counts, sizes and ages per state; monitoring thresholds.
    Status(StatusArgs),
    /// Guided setup: relay, TLS, credentials, mail for root, mail name.
    Setup(SetupArgs),
}

/// How the runner secures its connection to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// TLS from the first byte (smtps://, port 465).
    Smtps,
    /// STARTTLS required (port 587).
    Starttls,
    /// STARTTLS when the relay offers it (port 25).
    Opportunistic,
    /// No TLS.
    Off,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The configuration file to write.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Never ask, even on a terminal; what no flag names stays as it is.
    #[arg(long)]
    pub non_interactive: bool,
    /// The relay's host name or address.
    #[arg(long, value_name = "HOST")]
    pub relay: Option<String>,
    /// The relay's port (default: the TLS mode's standard port).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// The TLS mode.
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// The user name for SMTP AUTH ("" for none).
    #[arg(long, value_name = "USER")]
    pub auth_user: Option<String>,
    /// Read the AUTH password's first line from FILE ("-": standard input).
    #[arg(long, value_name = "FILE")]
    pub auth_password_file: Option<PathBuf>,
    /// Where mail for root and other local users goes ("" for nowhere).
    #[arg(long, value_name = "ADDRESS")]
    pub admin_address: Option<String>,
    /// The mail name, written as myhostname ("" to use /etc/mailname or the host name).
    #[arg(long, value_name = "DOMAIN")]
    pub mailname: Option<String>,
}

/// Where the spool is, for the operator commands.
#[derive(Debug, Args, Clone)]
pub struct WhereArgs {
    /// The spool directory (default: spool_directory from the configuration).
    #[arg(long, value_name = "DIR", global = true)]
    pub spool: Option<PathBuf>,
    /// The configuration file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    /// Only entries in this state: new, active, deferred, hold, failed, corrupt; or tmp (files not yet committed).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// One JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false, id = "part")]
pub struct ShowParts {
    /// Only the message's header section.
    #[arg(long, group = "part")]
    pub headers: bool,
    /// Only the message body.
    #[arg(long, group = "part")]
    pub body: bool,
    /// The message exactly as submitted.
    #[arg(long, group = "part")]
    pub raw: bool,
    /// The entry as JSON.
    #[arg(long, group = "part")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    /// The queue ID.
    pub id: String,
    #[command(flatten)]
    pub part: ShowParts,
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    /// Queue IDs.
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    /// Queue IDs.
    pub ids: Vec<String>,
    /// With --older-than: delete every entry in this state.
    #[arg(long, value_name = "STATE", requires = "older_than", conflicts_with = "ids")]
    pub state: Option<String>,
    /// With --state: only entries that arrived longer ago than this (30s, 10m, 4h, 7d).
    #[arg(long, value_name = "DURATION", requires = "state")]
    pub older_than: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub place: WhereArgs,
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
    /// Warn (exit 1) when the oldest waiting entry is older than this.
    #[arg(long, value_name = "DURATION")]
    pub warn_age: Option<String>,
    /// Critical (exit 2) when the oldest waiting entry is older than this.
    #[arg(long, value_name = "DURATION")]
    pub crit_age: Option<String>,
    /// Warn when failed/ holds at least this many entries (default 1 with any threshold or --monitor).
    #[arg(long, value_name = "COUNT")]
    pub warn_failed: Option<u64>,
    /// Critical when failed/ holds at least this many entries.
    #[arg(long, value_name = "COUNT")]
    pub crit_failed: Option<u64>,
    /// Warn when corrupt/ holds at least this many entries (default 1 with any threshold or --monitor).
    #[arg(long, value_name = "COUNT")]
    pub warn_corrupt: Option<u64>,
    /// Critical when corrupt/ holds at least this many entries.
    #[arg(long, value_name = "COUNT")]
    pub crit_corrupt: Option<u64>,
    /// The monitoring-plugin line and exit code, with the default thresholds.
    #[arg(long)]
    pub monitor: bool,
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
    /// Also connect to every relay: TLS, certificate and AUTH, without sending mail.
    #[arg(long)]
    pub relay: bool,
    /// Also queue a test message to this address.
    #[arg(long, value_name = "ADDRESS")]
    pub send: Option<String>,
}

pub fn parse() -> Cli {
    Cli::parse()
}
