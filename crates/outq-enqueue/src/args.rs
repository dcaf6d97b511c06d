/*!
Command-line parsing: `outq-enqueue [-f SENDER] [--] RECIPIENT...`.

Pure: no I/O, no environment, no allocation beyond the result. Accepted
forms are `-f SENDER`, `-fSENDER`, `--` (everything after it is a
recipient), and, only when the helper is not running set-group-ID, the
development overrides `--spool DIR` and `--config FILE`. `-h`/`--help`
prints the usage.
*/
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use outq_spool::log::escape;

use crate::failure::Failure;

/// The parsed command line; addresses are still raw bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-f`: `Some(b"")` is the null sender.
    pub sender: Option<Vec<u8>>,
    pub recipients: Vec<Vec<u8>>,
    pub spool: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub help: bool,
}

/// Parse `argv[1..]`.
pub fn parse(argv: impl Iterator<Item = OsString>) -> Result<Args, Failure> {
    let mut args = Args::default();
    let mut it = argv.map(OsString::into_vec);
    let mut options_done = false;
    while let Some(arg) = it.next() {
        if options_done || !arg.starts_with(b"-") || arg == b"-" {
            args.recipients.push(arg);
            continue;
        }
        match arg.as_slice() {
            b"--" => options_done = true,
            b"-f" => {
                let v = it.next().ok_or_else(|| Failure::usage("option -f needs a sender address"))?;
                set_once(&mut args.sender, v, "-f")?;
            }
            b"--spool" => {
                let v = it.next().ok_or_else(|| Failure::usage("option --spool needs a directory"))?;
                set_once(&mut args.spool, PathBuf::from(OsString::from_vec(v)), "--spool")?;
            }
            b"--config" => {
                let v = it.next().ok_or_else(|| Failure::usage("option --config needs a file"))?;
                set_once(&mut args.config, PathBuf::from(OsString::from_vec(v)), "--config")?;
            }
            b"-h" | b"--help" => args.help = true,
            other => match other.strip_prefix(b"-f") {
                Some(v) => set_once(&mut args.sender, v.to_vec(), "-f")?,
                None => return Err(Failure::usage(format!("unknown option {}", escape(other)))),
            },
        }
    }
    if args.recipients.is_empty() && !args.help {
        return Err(Failure::usage("no recipient given"));
    }
    Ok(args)
}

fn set_once<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), Failure> {
    if slot.is_some() {
        return Err(Failure::usage(format!("option {name} given twice")));
    }
    *slot = Some(v);
    Ok(())
}

impl Args {
    /// Refuse the development overrides when running set-group-ID: the
    /// spool and configuration of a privileged program are fixed.
    pub fn check_overrides(self, secure: bool) -> Result<Args, Failure> {
        if secure && (self.spool.is_some() || self.config.is_some()) {
            return Err(Failure::usage("--spool and --config are refused when running set-group-ID"));
        }
        Ok(self)
    }
}

pub fn print_help() -> Result<(), Failure> {
    use std::io::Write;
    let text = "usage: outq-enqueue [-f SENDER] [--] RECIPIENT... < message\n\
                \n\
                Reads one message on standard input and commits it to the outq spool.\n\
                Prints the queue ID on success. See outq-enqueue(8).\n";
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, Failure> {
        parse(v.iter().map(OsString::from))
    }

    #[test]
    fn sender_forms() {
        assert_eq!(p(&["-f", "a@b.example", "c@d.example"]).unwrap().sender, Some(b"a@b.example".to_vec()));
        assert_eq!(p(&["-fa@b.example", "c@d.example"]).unwrap().sender, Some(b"a@b.example".to_vec()));
        assert_eq!(p(&["-f", "", "c@d.example"]).unwrap().sender, Some(Vec::new()));
        assert_eq!(p(&["c@d.example"]).unwrap().sender, None);
    }

    #[test]
    fn double_dash_ends_options() {
        let a = p(&["--", "-x@example.org", "--spool"]).unwrap();
        assert_eq!(a.recipients, vec![b"-x@example.org".to_vec(), b"--spool".to_vec()]);
        assert!(a.spool.is_none());
    }

    #[test]
    fn usage_errors() {
        for v in [
            &["-x", "a@b.example"][..],
            &[][..],
            &["-f"][..],
            &["-f", "a@b", "-f", "c@d", "e@f"][..],
            &["--spool"][..],
            &["-f", "a@b.example"][..],
        ] {
            assert_eq!(p(v).unwrap_err().code, outq_spool::exit::Code::Usage, "{v:?}");
        }
    }

    #[test]
    fn overrides_refused_when_secure() {
        let a = p(&["--spool", "/tmp/x", "a@b.example"]).unwrap();
        assert_eq!(a.check_overrides(true).unwrap_err().code, outq_spool::exit::Code::Usage);
        let a = p(&["--config", "/tmp/x", "a@b.example"]).unwrap();
        assert!(a.check_overrides(false).is_ok());
    }

    #[test]
    fn unknown_option_is_escaped() {
        let f = p(&["-\x1b[2J", "a@b.example"]).unwrap_err();
        assert!(f.what.contains("\\x1b[2J"), "{}", f.what);
    }
}
