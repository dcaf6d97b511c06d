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
- [`failure`]: the one error type and how it is shown;
- [`sys`]: the entry point, a C `main` without the Rust runtime's start-up.
*/
#![cfg_attr(not(test), no_main)]
// Only `sys` may use `unsafe` (one `no_mangle` attribute); every other
// module forbids it.
#![deny(unsafe_code)]

mod args;
mod failure;
mod policy;
mod share;
mod spool;
mod startup;
#[allow(unsafe_code)]
mod sys;
mod write;

/// Run the helper and return its exit status, with standard output flushed
/// (the process then ends without running destructors).
#[cfg_attr(test, allow(dead_code))]
fn run_to_exit_code() -> i32 {
    let code = match run() {
        Ok(()) => outq_spool::exit::Code::Ok,
        Err(f) => f.report(),
    };
    // A caller that closed standard output was given /dev/null; a failed
    // flush changes nothing once the outcome is logged.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code.as_i32()
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
    // The file first, then the share: the ledger's lock, which every
    // submission of the account waits for, is held only to read and append.
    let entry = write::create(&dirs, &env)?;
    if let Some(ledger) = share::check(&dirs, &cfg, &env, fs_size)? {
        // Recorded while the file exists and is locked: concurrent helpers
        // of the same account count it from now on.
        ledger.record(&entry.id);
    }
    let (id, size) = write::submit(entry, &cfg, &env, &caller, &envelope)?;
    write::announce(&id, size, &caller, &envelope, &env);
    // The process ends right after this: the kernel closes the spool's
    // descriptors and the signalfd, so they are not closed one by one.
    std::mem::forget((dirs, env));
    Ok(())
}
