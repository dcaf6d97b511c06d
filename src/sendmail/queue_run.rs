/*!
`sendmail -q` (and `-qINTERVAL`, `-qRSITE`, `-qIID`): what `outq flush`
does, once, with no daemon: deferred mail is made due now and the runner is
woken. Only the queue owner and root may do that; for anyone else `-q`
succeeds doing nothing, silently, because cron jobs and package scripts
run `sendmail -q` as any user and must not fail or mail errors for it.
An interval is not a daemon here: `-q30m` is one queue run, as `-q`.
`-qRSITE` flushes everything (a null client has one relay).
*/
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use outq_spool::exit::Code;

/// Run `-q`; the exit status.
pub fn run(config: Option<PathBuf>, id: Option<String>) -> ExitCode {
    let flushed = crate::ops::open(&crate::ops::Where { spool: None, config })
        .and_then(|opened| crate::ops::control::flush(&opened.store, &id.into_iter().collect::<Vec<_>>()));
    match flushed {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.code == Code::NoPerm as u8 => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "outq-sendmail: -q: {e}");
            ExitCode::from(e.code)
        }
    }
}
