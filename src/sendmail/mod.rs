/*!
`outq-sendmail`: the sendmail-compatible front end, run by callers with no
privilege at all.

It turns a sendmail command line and a message on standard input into one
run of the set-group-ID helper `outq-enqueue` with a clean envelope, and
returns the helper's exit code. Read in this order:

- [`args`]: the command line (getopt rules, the options real callers use);
- [`dots`]: the lone-dot rule, applied while the message streams;
- [`headers`]: the header section: `-t` recipients, `Bcc:` removal, and the
  `From:`, `Date:` and `Message-ID:` fields added when missing;
- [`helper`]: running the helper and streaming the message into it.

outq-sendmail holds no privilege, so everything it does can be done by its
caller directly with `outq-enqueue`; the helper checks the envelope and
the message again and is the only judge of what enters the queue.
Errors are one line, `outq-sendmail: WHAT (FIX)`, with a sysexits code.
*/
#![forbid(unsafe_code)]

pub mod args;
pub mod dots;
pub mod headers;
pub mod helper;

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use nix::unistd::{User, getuid};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::config::{self, Config};
use outq_spool::exit::Code;
use outq_spool::log::escape;
use outq_spool::process;

use crate::config::RunnerConfig;

/// A refusal or error: one line on standard error and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub what: String,
    pub fix: String,
}

impl Failure {
    pub fn new(code: Code, what: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure { code, what: what.into(), fix: fix.into() }
    }

    pub fn temp(what: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure::new(Code::TempFail, what, fix)
    }

    fn usage(e: args::UsageError) -> Failure {
        Failure::new(Code::Usage, e.0, args::USAGE)
    }

    pub fn report(&self) -> ExitCode {
        let _ = writeln!(std::io::stderr().lock(), "outq-sendmail: {} ({})", self.what, self.fix);
        ExitCode::from(self.code as u8)
    }
}

/// Entry point used by `src/bin/outq-sendmail.rs`.
pub fn main() -> ExitCode {
    match run() {
        Ok(Done::Code(code)) => ExitCode::from(code),
        Ok(Done::Listed(code)) => code,
        Err(f) => f.report(),
    }
}

/// How a run ended without a failure of outq-sendmail's own.
#[derive(Debug)]
enum Done {
    /// The helper's exit code.
    Code(u8),
    /// `-bp` ran.
    Listed(ExitCode),
}

fn run() -> Result<Done, Failure> {
    // A closed descriptor is reopened on /dev/null first, so that no pipe
    // or file opened later can land on 0, 1 or 2.
    let closed = process::ensure_std_fds().map_err(|e| {
        Failure::temp(format!("cannot open /dev/null for a closed standard descriptor: {e}"), "check /dev/null")
    })?;
    let mut argv = std::env::args_os();
    let argv0 = argv.next();
    let args = args::parse(argv0.as_deref(), argv).map_err(Failure::usage)?;
    let config_path = match &args.config {
        Some(p) => absolute(p)?,
        None => PathBuf::from(config::CONFIG_PATH),
    };
    if args.mode == args::Mode::ListQueue {
        return Ok(Done::Listed(list_queue(args.config.as_ref().map(|_| config_path.clone()))));
    }
    if args.mode == args::Mode::RebuildAliases {
        // outq keeps no alias database to compile: programs that run
        // `newaliases` after editing /etc/aliases (package scripts, admins)
        // must see success, as they would with any MTA.
        return Ok(Done::Code(0));
    }
    if closed.stdin {
        return Err(Failure::new(Code::NoInput, "standard input is closed", "give the message on standard input"));
    }
    let (cfg, found) = load_config(&config_path)?;
    let runner = RunnerConfig::from_config(&cfg).map_err(|e| {
        Failure::temp(format!("{}: {e}", config_path.display()), "correct the configuration file; see outq.conf(5)")
    })?;
    let host = config::effective_hostname(&cfg);
    let me = Identity::new(&args, &host)?;

    let signals = process::take_termination_signals()
        .map_err(|e| Failure::temp(format!("cannot set up signal handling: {e}"), "report this as a bug"))?;
    let input = dots::DotReader::new(helper::Input { signals: &signals }, !args.ignore_dots);
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let section = headers::read_section(&mut reader).map_err(|e| match e {
        headers::ReadError::TooLarge => Failure::new(
            Code::DataErr,
            format!("the header section is longer than {} bytes", headers::MAX_HEADER_BYTES),
            "send a message with a smaller header",
        ),
        headers::ReadError::BareCr => Failure::new(
            Code::DataErr,
            "a header line contains a CR that does not end the line",
            "end header lines with LF or CRLF only",
        ),
        headers::ReadError::Io(e) => helper::input_failure(&e),
    })?;

    let recipients = envelope_recipients(&args, &section)?;
    let added = missing_fields(&section, &me, &host)?;
    let head = headers::render(&section, &added);

    let development = match helper::is_setgid(&runner.enqueue_program) {
        Some(false) if found => Some((cfg.spool_directory.clone(), config_path.clone())),
        _ => None,
    };
    let helper = helper::Helper { program: runner.enqueue_program.clone(), development };
    helper::submit(&helper, &me.envelope_sender, &recipients, &head, &mut reader, &signals).map(Done::Code)
}

/// A relative `-C` path, made absolute from the working directory.
fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::temp(format!("cannot find the current directory: {e}"), "give -C an absolute path"))?;
    Ok(cwd.join(p))
}

fn load_config(path: &Path) -> Result<(Config, bool), Failure> {
    config::load(path, &crate::admin::config_trust()).map_err(|e| match e {
        config::ConfigError::Untrusted(e) => Failure::temp(
            format!("configuration not trusted: {e}"),
            "the file and its directories must be owned by root (or by you) and not writable by others; see outq.conf(5)",
        ),
        e => Failure::temp(e.to_string(), "correct the configuration file; see outq.conf(5)"),
    })
}

/// `-bp`: what `outq list` prints, from the same library code (it needs
/// the queue owner or root, as `outq list` does).
fn list_queue(config: Option<PathBuf>) -> ExitCode {
    let listed = crate::ops::open(&crate::ops::Where { spool: None, config })
        .and_then(|opened| crate::ops::list::run(&opened, None, false));
    match listed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "outq-sendmail: {e}");
            ExitCode::from(e.code)
        }
    }
}

/// The envelope sender and the `From:` address and name.
#[derive(Debug)]
struct Identity {
    /// As passed to the helper's `-f`.
    envelope_sender: Vec<u8>,
    /// For an added `From:` field.
    from_address: String,
    full_name: Option<String>,
}

impl Identity {
    fn new(args: &args::Args, host: &str) -> Result<Identity, Failure> {
        let full_name = match &args.full_name {
            Some(raw) => Some(
                headers::valid_full_name(raw)
                    .ok_or_else(|| {
                        Failure::new(
                            Code::Usage,
                            format!("option -F {} is not UTF-8 text without control characters", escape(raw)),
                            args::USAGE,
                        )
                    })?
                    .to_owned(),
            ),
            None => None,
        };
        if let Some(raw) = &args.sender {
            let from_address = match Sender::parse(raw) {
                Ok(Sender::Null) => format!("MAILER-DAEMON@{host}"),
                _ => Mailbox::parse_or_qualify(raw, host)
                    .map_err(|e| {
                        Failure::new(
                            Code::DataErr,
                            format!("sender {}: {e}", escape(raw)),
                            "give addresses as local@domain (RFC 5321)",
                        )
                    })?
                    .to_string(),
            };
            return Ok(Identity { envelope_sender: raw.clone(), from_address, full_name });
        }
        let user = match User::from_uid(getuid()) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Err(Failure::new(
                    Code::NoPerm,
                    format!("uid {} has no account name", getuid()),
                    "run as a user listed in the password database, or give the sender with -f",
                ));
            }
            Err(e) => {
                return Err(Failure::temp(
                    format!("cannot look up uid {}: {}", getuid(), e.desc()),
                    "check the password database (nsswitch)",
                ));
            }
        };
        let mailbox = Mailbox::parse_or_qualify(user.name.as_bytes(), host).map_err(|e| {
            Failure::new(
                Code::DataErr,
                format!("cannot make a sender from account name {}: {e}", escape(user.name.as_bytes())),
                "give the sender with -f",
            )
        })?;
        let full_name = full_name.or_else(|| headers::gecos_name(user.gecos.as_bytes(), &user.name));
        Ok(Identity {
            envelope_sender: mailbox.as_str().as_bytes().to_vec(),
            from_address: mailbox.to_string(),
            full_name,
        })
    }
}

/// The command line's recipients, then (with `-t`) those of the headers,
/// each once, in order. Postfix's rule: with `-t`, addresses on the command
/// line are added to those in the headers, not removed from them.
fn envelope_recipients(args: &args::Args, section: &headers::Section) -> Result<Vec<Vec<u8>>, Failure> {
    let mut all = args.recipients.clone();
    if args.extract {
        let found = headers::recipients(&section.fields).map_err(|e| {
            Failure::new(Code::DataErr, e.what, "write recipients as local@domain or Name <local@domain>")
        })?;
        all.extend(found);
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|r| seen.insert(r.clone()));
    if all.is_empty() {
        return Err(Failure::new(
            Code::DataErr,
            "no recipient addresses found in the message headers",
            "name recipients in To:, Cc: or Bcc:, or on the command line",
        ));
    }
    Ok(all)
}

/// `From:`, `Date:` and `Message-ID:` for those the message lacks.
fn missing_fields(section: &headers::Section, me: &Identity, host: &str) -> Result<Vec<String>, Failure> {
    let mut added = Vec::new();
    if !headers::has(&section.fields, "From") {
        added.push(headers::from_field(&me.from_address, me.full_name.as_deref()));
    }
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if !headers::has(&section.fields, "Date") {
        added.push(format!("Date: {}", crate::date::rfc5322(now)));
    }
    if !headers::has(&section.fields, "Message-ID") {
        let mut random = [0u8; 8];
        process::random_bytes(&mut random)
            .map_err(|e| Failure::temp(format!("cannot get random bytes: {e}"), "check the kernel's random source"))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        added.push(format!("Message-ID: <{now}.{hex}@{host}>"));
    }
    Ok(added)
}
