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
  `mailq`), `-bi` and `-I` check the aliases file (also when invoked as
  `newaliases`), `-bs` SMTP on standard input and output, `-bv` verify the
  recipients and deliver nothing, `-bh` and `-bH` do nothing (exit 0);
- `-q`, `-qINTERVAL`, `-qRSITE`, `-qIID`: one queue run now (no daemon);
- `-C FILE` an alternate configuration file.

Every other option letter that Postfix's or sendmail 8's sendmail(1)
documents is accepted and ignored, with its value when it takes one:
`-Ac`/`-Am`, `-B`, `-c`, `-D`, `-d`, `-e`, `-G`, `-h`, `-L`, `-m`, `-N`,
`-n`, `-O`, `-o` (any letter), `-p`, `-R`, `-U`, `-V`, `-v`, `-X`, `-x`.
Postfix refuses `-n`, `-d` and `-D`; outq accepts them, so that no mail is
lost over a flag sendmail 8 documents. A letter no sendmail documents is a
usage error (exit 64) naming it, escaped, as in Postfix.
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
    /// `-bi`, `-I`, `newaliases`: check the aliases file (there is nothing
    /// to compile).
    RebuildAliases,
    /// `-bs`: an SMTP session on standard input and output.
    Smtp,
    /// `-bv`: check the recipients, queue nothing.
    Verify,
    /// `-q...`: make deferred mail due now.
    Flush,
    /// `-bh`, `-bH`: nothing to do (no host status database).
    Nothing,
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
    /// `-qIID`: the entry to flush.
    pub flush_id: Option<String>,
}

/// A command-line error: the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

pub const USAGE: &str =
    "usage: outq-sendmail [-t] [-i] [-f sender] [-F name] [-C file] [-bs|-bp|-bv|-q] [--] recipient ... < message";

/// Options that take a value (Postfix's and sendmail 8's).
const WITH_VALUE: &[u8] = b"AbBCdDefFhLNOopqRrVX";
/// Options without a value.
const FLAGS: &[u8] = b"cGIimntUvx";

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
        if word == b"-q" {
            // Not getopt-compatible: -q alone takes no value.
            args.mode = Mode::Flush;
            continue;
        }
        let mut rest = word.get(1..).unwrap_or_default();
        while let Some((&letter, after)) = rest.split_first() {
            rest = after;
            if FLAGS.contains(&letter) {
                match letter {
                    b't' => args.extract = true,
                    b'i' => args.ignore_dots = true,
                    b'I' => args.mode = Mode::RebuildAliases,
                    _ => {} // accepted and ignored
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
    check_mode(&args)?;
    Ok(args)
}

/// Recipients where the mode needs them, none where it takes none.
fn check_mode(args: &Args) -> Result<(), UsageError> {
    let takes_none = match args.mode {
        Mode::Deliver if !args.extract && args.recipients.is_empty() => {
            return Err(UsageError(
                "no recipient given (name recipients, or use -t to take them from the headers)".into(),
            ));
        }
        Mode::Verify if args.extract => return Err(UsageError("-t cannot be used with -bv".into())),
        Mode::Verify if args.recipients.is_empty() => {
            return Err(UsageError("-bv needs the addresses to verify".into()));
        }
        Mode::Smtp => Some("-bs"),
        Mode::Flush => Some("-q"),
        Mode::ListQueue => Some("-bp (mailq)"),
        Mode::RebuildAliases => Some("-bi (newaliases)"),
        _ => None,
    };
    match takes_none {
        Some(name) if !args.recipients.is_empty() => Err(UsageError(format!("{name} takes no recipient"))),
        _ => Ok(()),
    }
}

fn apply(args: &mut Args, letter: u8, value: Vec<u8>) -> Result<(), UsageError> {
    match letter {
        b'b' => {
            args.mode = match value.as_slice() {
                b"m" => Mode::Deliver,
                b"p" => Mode::ListQueue,
                b"i" => Mode::RebuildAliases,
                b"s" => Mode::Smtp,
                b"v" => Mode::Verify,
                b"h" | b"H" => Mode::Nothing,
                b"d" | b"D" | b"l" => {
                    return Err(UsageError(format!(
                        "option -b{} (daemon mode) is not supported: outq-sendmail runs no daemon; \
                         for SMTP on localhost enable the socket unit: systemctl enable --now outq-smtp.socket",
                        escape(&value)
                    )));
                }
                _ => return Err(UsageError(format!("option -b{} is not supported", escape(&value)))),
            }
        }
        b'q' => flush_option(args, &value)?,
        // Every other -oX is ignored, as Postfix ignores them.
        b'o' if value.as_slice() == b"i" => args.ignore_dots = true,
        b'f' | b'r' => set_once(&mut args.sender, value, "-f or -r")?,
        b'F' => set_once(&mut args.full_name, value, "-F")?,
        b'C' => set_once(&mut args.config, PathBuf::from(OsString::from_vec(value)), "-C")?,
        // -A -B -D -d -e -h -L -N -O -p -R -V -X: accepted and ignored;
        // their values only matter to features outq does not have.
        _ => {}
    }
    Ok(())
}

/// `-qINTERVAL`, `-qRSITE`, `-qIID` (plain `-q` never gets here).
fn flush_option(args: &mut Args, value: &[u8]) -> Result<(), UsageError> {
    match value.split_first() {
        Some((d, _)) if d.is_ascii_digit() => {}
        Some((b'R', site)) if !site.is_empty() => {}
        Some((b'I', id)) if !id.is_empty() => {
            let id = String::from_utf8(id.to_vec())
                .map_err(|_| UsageError(format!("-qI{} is not a queue ID", escape(id))))?;
            args.flush_id = Some(id);
        }
        Some((b'R', _)) => return Err(UsageError("specify: -qRsitename".into())),
        Some((b'I', _)) => return Err(UsageError("specify: -qIqueueid".into())),
        _ => return Err(UsageError(format!("-q{} is not implemented", escape(value)))),
    }
    args.mode = Mode::Flush;
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
    fn modes_and_flush_forms() {
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(p(&["-bv", "a@b.example"]).unwrap().mode, Mode::Verify);
        assert_eq!(p(&["-bh"]).unwrap().mode, Mode::Nothing);
        for q in [&["-q"][..], &["-q30m"], &["-q1h"], &["-qRexample.org"], &["-v", "-q"]] {
            assert_eq!(p(q).unwrap().mode, Mode::Flush, "{q:?}");
        }
        let a = p(&["-qI0123ABC"]).unwrap();
        assert_eq!(a.flush_id.as_deref(), Some("0123ABC"));
    }

    #[test]
    fn sendmail_8_and_postfix_options_never_refuse_mail() {
        let a = p(&[
            "-Ac",
            "-Am",
            "-L",
            "cron",
            "-h",
            "17",
            "-O",
            "DeliveryMode=b",
            "-odq",
            "-oQ/tmp",
            "-U",
            "-G",
            "-n",
            "-m",
            "-x",
            "-c",
            "-d0.1",
            "-D",
            "/tmp/log",
            "-pESMTP:host",
            "-X",
            "/tmp/x",
            "-e",
            "p",
            "-ti",
            "root",
        ])
        .unwrap();
        assert!(a.extract && a.ignore_dots);
        assert_eq!(rcpts(&a), ["root"]);
    }

    #[test]
    fn alias_checking() {
        assert_eq!(p(&["-bi"]).unwrap().mode, Mode::RebuildAliases);
        assert_eq!(p(&["-I"]).unwrap().mode, Mode::RebuildAliases);
        let a = parse(Some(OsStr::new("/usr/bin/newaliases")), std::iter::empty()).unwrap();
        assert_eq!(a.mode, Mode::RebuildAliases);
        let a = parse(Some(OsStr::new("sendmail")), ["-bi".into()].into_iter()).unwrap();
        assert_eq!(a.mode, Mode::RebuildAliases);
    }

    #[test]
    fn usage_errors_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["-bt"], "-bt is not supported"),
            (&["-bd"], "outq-smtp.socket"),
            (&["-y", "a@b.example"], "unknown option -y"),
            (&["-qS"], "-qS is not implemented"),
            (&["-qR"], "specify: -qRsitename"),
            (&["-q", "a@b.example"], "-q takes no recipient"),
            (&["-bs", "a@b.example"], "-bs takes no recipient"),
            (&["-bv"], "-bv needs"),
            (&["-bv", "-t", "a@b"], "-t cannot"),
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
