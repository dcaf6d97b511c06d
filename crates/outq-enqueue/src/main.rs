/*!
`outq-enqueue`: the set-group-ID helper that commits one message to the spool.

This binary is outq's whole privileged surface. It is installed
`root:outqdrop 2755`; its only privilege is the `outqdrop` group, which lets
it create files in the spool's `tmp/` and `new/` directories and nothing
else. Read in this order:

- [`args`]: the command line, parsed without side effects;
- [`startup`]: hardening against the caller, in the order SECURITY.md lists;
- [`spool`]: finding and verifying the spool through descriptors;
- [`policy`]: who may submit, and the envelope;
- [`share`]: the account's share of the spool (`submit_share`);
- [`write`]: creating, streaming and committing the entry;
- [`failure`]: the one error type and how it is shown.
*/
#![forbid(unsafe_code)]

mod args;
mod failure;
mod policy;
mod share;
mod spool;
mod startup;
mod write;

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = match run() {
        Ok(()) => outq_spool::exit::Code::Ok,
        Err(f) => f.report(),
    };
    ExitCode::from(code as u8)
}

/// The whole helper, from start-up to the printed queue ID.
fn run() -> Result<(), failure::Failure> {
    // Parsing touches nothing; its result is acted on once the process is safe.
    let parsed = args::parse(std::env::args_os().skip(1));
    let env = startup::harden()?;
    let args = parsed?;
    if args.help {
        return args::print_help();
    }
    let args = args.check_overrides(env.secure)?;
    let cfg = spool::load_config(&args, &env)?;
    let dirs = spool::open(&args, &cfg, &env)?;
    let caller = policy::authorize(&cfg, &env, args.sender.is_none())?;
    let envelope = policy::envelope(&args, &cfg, &caller)?;
    let fs_size = spool::check_free_space(&dirs, &cfg)?;
    let ledger = share::check(&dirs, &cfg, &env, fs_size)?;
    let (id, size) = write::submit(&dirs, &cfg, &env, &caller, &envelope, ledger)?;
    write::announce(&id, size, &caller, &envelope, &env);
    Ok(())
}
