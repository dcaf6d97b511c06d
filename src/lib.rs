/*!
The `outq` program: the queue owner's tools and, in later releases, the
runner that drains the spool. It runs without privilege (or as root only to
create the spool), and shares the spool format with the helper through the
`outq-spool` crate.

- [`cli`]: the command line (clap), parsed before anything is done;
- [`admin`]: `outq init` and `outq check`, the creators and auditors of an
  installation;
- [`error`]: the one error type, rendered in one place.
*/
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod date;
pub mod deliver;
pub mod duration;
pub mod error;
pub mod logging;
pub mod queue;
pub mod runner;

use std::process::ExitCode;

/// Entry point used by `src/bin/outq.rs`.
pub fn main() -> ExitCode {
    let cmd = cli::parse();
    let result = match cmd.command {
        cli::Command::Init(a) => admin::init::run(&a),
        cli::Command::Check(a) => admin::check::run(&a),
        cli::Command::Run(a) => runner::run(&runner::RunOptions {
            spool: a.spool,
            config: a.config,
            once: a.once,
            log_stderr: a.log == cli::LogSink::Stderr,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}
