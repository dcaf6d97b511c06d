/*!
The `sendmail` command line, parsed without side effects.

Options follow getopt(3) as sendmail and Postfix use it: single letters,
which may be clustered (`-ti`); an option that takes a value takes the rest
of its word or, if nothing is left, the next word (`-fADDR`, `-f ADDR`,
`-oi`, `-o i`). Option parsing stops at `--` or at the first word that is
not an option (POSIX order, as Postfix does on Linux): every word after it
is a recipient, even one starting with `-`.

What is understood:

- `-t` take recipients from the message's headers; `-i` and `-oi` do not
  end the message at a line holding a single dot;
- `-f SENDER` and `-r SENDER` the envelope sender, `-F NAME` the full name
  for a `From:` header outq-sendmail adds;
- `-bm` deliver (the default), `-bp` list the queue (also when invoked as
  `mailq`), `-bi` rebuild the aliases (also when invoked as `newaliases`);
- `-C FILE` an alternate configuration file;
- accepted and ignored: `-v`, `-oem`, `-oee`, `-odb`, `-odi`, `-om`, and
  `-B TYPE`, `-N DSN`, `-R RET`, `-V ENVID` with their values.

Anything else is a usage error (exit 64) naming the option, escaped.
*/
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use outq_spool::log::escape;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `-bm`: read a message and queue it.
    #[default]
    Deliver,
    /// `-bp`: list the queue (`outq list`).
    ListQueue,
    /// `-bi`: rebuild the alias database (`newaliases`).
    RebuildAliases,
}

/// The parsed command line; addresses and the full name are raw bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    /// `-t`
    pub extract: bool,
    /// `-i` or `-oi`
    pub ignore_dots: bool,
    /// `-f` or `-r`: `Some(b"")` or `Some(b"<>")` is the null sender.
    pub sender: Option<Vec<u8>>,
    /// `-F`
    pub full_name: Option<Vec<u8>>,
    /// `-C`
    pub config: Option<PathBuf>,
    pub recipients: Vec<Vec<u8>>,
}

/// A command-line error: the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

pub const USAGE: &str = "usage: outq-sendmail [-t] [-i] [-f sender] [-F name] [-C file] [--] recipient ... < message";

/// Options that take a value.
const WITH_VALUE: &[u8] = b"bBCfFNoRrV";
/// Options without a value.
const FLAGS: &[u8] = b"tiv";

/// Parse the command line. `argv0` is the name the program was run as:
/// `mailq` means `-bp`, `newaliases` means `-bi`.
pub fn parse(argv0: Option<&OsStr>, argv: impl Iterator<Item = OsString>) -> Result<Args, UsageError> {
    let mut args = Args::default();
    let invoked_as = argv0.map(|a| a.as_bytes().rsplit(|&b| b == b'/').next().unwrap_or_default().to_vec());
    match invoked_as.as_deref() {
        Some(b"mailq") => args.mode = Mode::ListQueue,
        Some(b"newaliases") => args.mode = Mode::RebuildAliases,
        _ => {}
    }
    let mut it = argv.map(OsString::into_vec);
    while let Some(word) = it.next() {
        if word == b"--" {
            break;
        }
        if !word.starts_with(b"-") || word == b"-" {
            args.recipients.push(word);
            break;
        }
        if word.starts_with(b"--") {
            return Err(UsageError(format!("unknown option {}", escape(&word))));
        }
        let mut rest = word.get(1..).unwrap_or_default();
        while let Some((&letter, after)) = rest.split_first() {
            rest = after;
            if FLAGS.contains(&letter) {
                match letter {
                    b't' => args.extract = true,
                    b'i' => args.ignore_dots = true,
                    _ => {} // -v
                }
                continue;
            }
            if !WITH_VALUE.contains(&letter) {
                return Err(UsageError(format!("unknown option -{}", escape(&[letter]))));
            }
            let value = if rest.is_empty() {
                it.next().ok_or_else(|| UsageError(format!("option -{} needs a value", char::from(letter))))?
            } else {
                std::mem::take(&mut rest).to_vec()
            };
            apply(&mut args, letter, value)?;
        }
    }
    args.recipients.extend(it);
    if args.mode == Mode::Deliver && !args.extract && args.recipients.is_empty() {
        return Err(UsageError("no recipient given (name recipients, or use -t to take them from the headers)".into()));
    }
    Ok(args)
}

fn apply(args: &mut Args, letter: u8, value: Vec<u8>) -> Result<(), UsageError> {
    match letter {
        b'b' => match value.as_slice() {
            b"m" => args.mode = Mode::Deliver,
            b"p" => args.mode = Mode::ListQueue,
            b"i" => args.mode = Mode::RebuildAliases,
            _ => return Err(UsageError(format!("option -b{} is not supported", escape(&value)))),
        },
        b'o' => match value.as_slice() {
            b"i" => args.ignore_dots = true,
            b"em" | b"ee" | b"db" | b"di" | b"m" => {}
            _ => return Err(UsageError(format!("unknown option -o{}", escape(&value)))),
        },
        b'f' | b'r' => set_once(&mut args.sender, value, "-f or -r")?,
        b'F' => set_once(&mut args.full_name, value, "-F")?,
        b'C' => set_once(&mut args.config, PathBuf::from(OsString::from_vec(value)), "-C")?,
        // -B, -N, -R, -V: accepted and ignored, as their values only
        // matter to an SMTP server's extensions outq does not offer.
        _ => {}
    }
    Ok(())
}

fn set_once<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), UsageError> {
    if slot.is_some() {
        return Err(UsageError(format!("option {name} given twice")));
    }
    *slot = Some(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, UsageError> {
        parse(Some(OsStr::new("/usr/sbin/sendmail")), v.iter().map(OsString::from))
    }

    fn rcpts(a: &Args) -> Vec<&str> {
        a.recipients.iter().map(|r| std::str::from_utf8(r).unwrap()).collect()
    }

    #[test]
    fn php_and_cron_command_lines() {
        let a = p(&["-t", "-i"]).unwrap();
        assert!(a.extract && a.ignore_dots && a.recipients.is_empty());
        let a = p(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]).unwrap();
        assert_eq!(a.full_name.as_deref(), Some(&b"CronDaemon"[..]));
        assert!(a.ignore_dots);
        assert_eq!(rcpts(&a), ["root"]);
    }

    #[test]
    fn clustered_and_separate_values() {
        let a = p(&["-ti", "-f", "a@b.example", "-F", "Full Name", "x@y.example"]).unwrap();
        assert!(a.extract && a.ignore_dots);
        assert_eq!(a.sender.as_deref(), Some(&b"a@b.example"[..]));
        assert_eq!(a.full_name.as_deref(), Some(&b"Full Name"[..]));
        let a = p(&["-ra@b.example", "-o", "i", "x@y.example"]).unwrap();
        assert_eq!(a.sender.as_deref(), Some(&b"a@b.example"[..]));
        assert!(a.ignore_dots);
        let a = p(&["-f", "", "x@y.example"]).unwrap();
        assert_eq!(a.sender.as_deref(), Some(&b""[..]));
        let a = p(&["-itfme@b.example", "x@y.example"]).unwrap();
        assert_eq!(a.sender.as_deref(), Some(&b"me@b.example"[..]));
    }

    #[test]
    fn ignored_options_take_their_values() {
        let a = p(&[
            "-v",
            "-oee",
            "-odb",
            "-odi",
            "-om",
            "-B",
            "8BITMIME",
            "-N",
            "never",
            "-R",
            "hdrs",
            "-V",
            "id1",
            "-bm",
            "a@b.example",
        ])
        .unwrap();
        assert_eq!(rcpts(&a), ["a@b.example"]);
        assert!(!a.ignore_dots && !a.extract);
    }

    #[test]
    fn options_end_at_the_first_recipient_or_double_dash() {
        let a = p(&["a@b.example", "-t", "-x"]).unwrap();
        assert_eq!(rcpts(&a), ["a@b.example", "-t", "-x"]);
        assert!(!a.extract);
        let a = p(&["-i", "--", "-oQ@example.org"]).unwrap();
        assert_eq!(rcpts(&a), ["-oQ@example.org"]);
    }

    #[test]
    fn queue_listing() {
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::ListQueue);
        let a = parse(Some(OsStr::new("/usr/bin/mailq")), std::iter::empty()).unwrap();
        assert_eq!(a.mode, Mode::ListQueue);
        let a = p(&["-C", "/etc/x.conf", "-bp"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/etc/x.conf")));
    }

    #[test]
    fn alias_rebuild() {
        assert_eq!(p(&["-bi"]).unwrap().mode, Mode::RebuildAliases);
        let a = parse(Some(OsStr::new("/usr/bin/newaliases")), std::iter::empty()).unwrap();
        assert_eq!(a.mode, Mode::RebuildAliases);
        let a = parse(Some(OsStr::new("sendmail")), ["-bi".into()].into_iter()).unwrap();
        assert_eq!(a.mode, Mode::RebuildAliases);
    }

    #[test]
    fn usage_errors_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["-x", "a@b.example"], "unknown option -x"),
            (&["-q"], "unknown option -q"),
            (&["-bs"], "-bs is not supported"),
            (&["-oQ/tmp", "a@b.example"], "unknown option -oQ/tmp"),
            (&["--help"], "unknown option --help"),
            (&["-f"], "option -f needs a value"),
            (&["-i"], "no recipient"),
            (&[], "no recipient"),
            (&["-f", "a@b", "-r", "c@d", "e@f"], "given twice"),
            (&["-\x1b[2J", "a@b.example"], "unknown option -\\x1b"),
        ];
        for (v, want) in cases {
            let e = p(v).unwrap_err();
            assert!(e.0.contains(want), "{v:?}: {:?}", e.0);
            assert!(!e.0.contains('\x1b'));
        }
    }
}
