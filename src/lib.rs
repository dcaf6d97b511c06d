/*!
The `outq` program: the queue owner's tools and, in later releases, the
runner that drains the spool. It runs without privilege (or as root only to
create the spool), and shares the spool format with the helper through the
`outq-spool` crate.

- [`cli`]: the command line (clap), parsed before anything is done;
- [`admin`]: `outq init`, `outq check` and `outq setup`, the creators,
  auditors and guided editor of an installation;
- [`aliases`]: the aliases file and the `admin_address` catch-all, applied
  by the runner;
- [`error`]: the one error type, rendered in one place.
*/
#![forbid(unsafe_code)]

pub mod admin;
pub mod aliases;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod date;
pub mod deliver;
pub mod duration;
pub mod error;
pub mod logging;
pub mod ops;
pub mod queue;
pub mod runner;
pub mod sendmail;

use std::process::ExitCode;

/// Entry point used by `src/bin/outq.rs`.
pub fn main() -> ExitCode {
    let cmd = cli::parse();
    let result = match cmd.command {
        cli::Command::Init(a) => admin::init::run(&a),
        cli::Command::Check(a) => admin::check::run(&a),
        cli::Command::Setup(a) => admin::setup::run(&a),
        cli::Command::Run(a) => runner::run(&runner::RunOptions {
            spool: a.spool,
            config: a.config,
            once: a.once,
            log_stderr: a.log == cli::LogSink::Stderr,
        }),
        other => operate(other),
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

fn place(w: &cli::WhereArgs) -> ops::Where {
    ops::Where { spool: w.spool.clone(), config: w.config.clone() }
}

fn state_arg(s: &str) -> Result<queue::store::Queue, error::Error> {
    ops::inventory::parse_state(s).ok_or_else(|| {
        error::Error::usage(
            format!("unknown state {s:?}"),
            "use new, active, deferred, hold, failed, corrupt (or tmp with list)",
        )
    })
}

fn duration_arg(s: &str) -> Result<std::time::Duration, error::Error> {
    duration::parse(s).map_err(|e| error::Error::usage(e, "write durations like 30s, 10m, 4h, 7d"))
}

/// Apply one control action to each ID; exit 1 if any failed.
fn control(w: &cli::IdsArgs, action: ops::control::Action) -> Result<ExitCode, error::Error> {
    if w.ids.is_empty() {
        return Err(error::Error::usage("no queue ID given", "name the entries, see 'outq list'"));
    }
    let o = ops::open(&place(&w.place))?;
    let limits = outq_spool::entry::Limits { max_recipients: o.cfg.max_recipients, max_size: o.cfg.message_size_limit };
    let mut code = ExitCode::SUCCESS;
    for id in &w.ids {
        match ops::control::apply(&o.store, &limits, id, action) {
            Ok(line) => println!("outq: {line}"),
            Err(e) => {
                eprintln!("outq: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

fn operate(cmd: cli::Command) -> Result<ExitCode, error::Error> {
    use ops::control::Action;
    match cmd {
        cli::Command::List(a) if a.state.as_deref() == Some("tmp") => {
            let o = ops::open(&place(&a.place))?;
            ops::leftovers::run(&o, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::List(a) => {
            let state = a.state.as_deref().map(state_arg).transpose()?;
            let o = ops::open(&place(&a.place))?;
            ops::list::run(&o, state, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Show(a) => {
            let p = &a.part;
            let part = match (p.headers, p.body, p.raw, p.json) {
                (true, ..) => ops::show::Part::Headers,
                (_, true, ..) => ops::show::Part::Body,
                (_, _, true, _) => ops::show::Part::Raw,
                (.., true) => ops::show::Part::Json,
                _ => ops::show::Part::Summary,
            };
            let o = ops::open(&place(&a.place))?;
            ops::show::run(&o, &a.id, part)?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Flush(a) => {
            let o = ops::open(&place(&a.place))?;
            let n = ops::control::flush(&o.store, &a.ids)?;
            println!("outq: {n} deferred entr{} made due now", if n == 1 { "y" } else { "ies" });
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Hold(a) => control(&a, Action::Hold),
        cli::Command::Release(a) => control(&a, Action::Release),
        cli::Command::Requeue(a) => control(&a, Action::Requeue),
        cli::Command::Delete(a) => match (&a.state, &a.older_than) {
            (Some(s), Some(d)) => {
                let (q, d) = (state_arg(s)?, duration_arg(d)?);
                let o = ops::open(&place(&a.place))?;
                let done = ops::control::delete_older(&o.store, q, d)?;
                println!(
                    "outq: deleted {} entr{} from {}/",
                    done.len(),
                    if done.len() == 1 { "y" } else { "ies" },
                    q.name()
                );
                Ok(ExitCode::SUCCESS)
            }
            _ => control(&cli::IdsArgs { place: a.place.clone(), ids: a.ids.clone() }, Action::Delete),
        },
        cli::Command::Status(a) => {
            let limits = ops::status::Thresholds::from_args(
                a.monitor,
                a.warn_age.as_deref().map(duration_arg).transpose()?,
                a.crit_age.as_deref().map(duration_arg).transpose()?,
                (a.warn_failed, a.crit_failed),
                (a.warn_corrupt, a.crit_corrupt),
            );
            let result = ops::open(&place(&a.place)).and_then(|o| ops::status::run(&o, a.json, limits.as_ref()));
            match (result, &limits) {
                // A monitoring system reads the first line and the exit
                // code: a spool it cannot read is UNKNOWN (3). A caller
                // who may not look is refused like any other (77).
                (Err(e), Some(_)) if !a.json && e.code != 77 => {
                    println!("OUTQ UNKNOWN - {e}");
                    Ok(ExitCode::from(3))
                }
                (r, _) => r,
            }
        }
        _ => Err(error::Error::new("not an operator command", "see 'outq --help'")),
    }
}
