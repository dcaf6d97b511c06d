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
- [`rewrite`]: bare addresses qualified with `myorigin`, masquerading, and
  the address lists programs pass on the command line;
- [`nul`]: NUL bytes replaced so a program's binary output is not lost;
- [`helper`]: running the helper and streaming the message into it;
- [`smtpd`], [`smtp_command`], [`smtp_data`], [`smtp_stdio`]: `-bs`, an
  SMTP session on standard input and output whose messages go through the
  same pipeline;
- [`mailq`]: `-bp` and `mailq`; [`queue_run`]: `-q`.

Only the keys outq-sendmail uses can make it refuse mail: the helper's,
`enqueue_program`, `myorigin`, `masquerade_domain` and `masquerade_users`
(see `crate::config`); a mistake in a runner-only key is the runner's.
Refusals go to standard error and to syslog (facility mail).

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
pub mod mailq;
pub mod nul;
pub mod queue_run;
pub mod rewrite;
pub mod smtp_command;
pub mod smtp_data;
pub mod smtp_stdio;
pub mod smtpd;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use nix::unistd::{User, getuid};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::config::{self, Config};
use outq_spool::exit::Code;
use outq_spool::log::escape;
use outq_spool::process;

use crate::config::Rewriting;

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

    /// One line on standard error, and the same on syslog (facility
    /// mail): a caller such as cron keeps only the exit status.
    pub fn report(&self) -> ExitCode {
        let _ = writeln!(std::io::stderr().lock(), "outq-sendmail: {} ({})", self.what, self.fix);
        outq_spool::log::open(c"outq-sendmail");
        outq_spool::log::warning(&format!(
            "refused (uid {}, exit {}): {} ({})",
            getuid(),
            self.code as u8,
            self.what,
            self.fix
        ));
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
    let explicit_config = args.config.as_ref().map(|_| config_path.clone());
    match args.mode {
        args::Mode::ListQueue => return Ok(Done::Listed(mailq::run(explicit_config))),
        args::Mode::Flush => return Ok(Done::Listed(queue_run::run(explicit_config, args.flush_id.clone()))),
        args::Mode::Nothing => return Ok(Done::Code(0)),
        args::Mode::RebuildAliases => return check_aliases(&config_path),
        args::Mode::Deliver | args::Mode::Smtp | args::Mode::Verify => {}
    }
    let ctx = Context::load(config_path)?;
    if args.mode == args::Mode::Verify {
        return Ok(Done::Code(verify(&args.recipients, &ctx.rewriting.myorigin)));
    }
    if closed.stdin {
        return Err(Failure::new(Code::NoInput, "standard input is closed", "give the message on standard input"));
    }
    let signals = process::take_termination_signals()
        .map_err(|e| Failure::temp(format!("cannot set up signal handling: {e}"), "report this as a bug"))?;
    if args.mode == args::Mode::Smtp {
        return smtp_stdio::serve(&ctx, &signals).map(Done::Code);
    }
    let me = Identity::new(&args, &ctx.rewriting)?;
    let nuls = nul::NulReplacer::new(helper::Input { signals: &signals });
    let nul_count = nuls.count.clone();
    let input = dots::DotReader::new(nuls, !args.ignore_dots);
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let message = Message { me: &me, recipients: &args.recipients, extract: args.extract };
    let done = submit_stream(&ctx, &message, &mut reader, &signals);
    if nul_count.get() > 0 {
        outq_spool::log::open(c"outq-sendmail");
        outq_spool::log::info(&format!(
            "uid {}: {} NUL byte(s) in the message replaced by ^@ (exit {})",
            getuid(),
            nul_count.get(),
            done.as_ref().map_or_else(|f| f.code as u8, |c| *c)
        ));
    }
    done.map(Done::Code)
}

/// The configuration outq-sendmail runs with: only the keys it uses.
#[derive(Debug)]
pub struct Context {
    cfg: Config,
    config_path: PathBuf,
    /// Whether the configuration file exists.
    found: bool,
    enqueue_program: PathBuf,
    rewriting: Rewriting,
}

impl Context {
    fn load(config_path: PathBuf) -> Result<Context, Failure> {
        let (cfg, found) = load_config(&config_path)?;
        let key_failure = |e: crate::config::KeyError| {
            Failure::temp(format!("{}: {e}", config_path.display()), "correct the configuration file; see outq.conf(5)")
        };
        let enqueue_program = crate::config::enqueue_program(&cfg).map_err(key_failure)?;
        let rewriting = Rewriting::from_config(&cfg).map_err(key_failure)?;
        Ok(Context { cfg, config_path, found, enqueue_program, rewriting })
    }

    fn host(&self) -> &str {
        &self.rewriting.myhostname
    }

    fn helper(&self) -> helper::Helper {
        let development = match helper::is_setgid(&self.enqueue_program) {
            Some(false) if self.found => Some((self.cfg.spool_directory.clone(), self.config_path.clone())),
            _ => None,
        };
        helper::Helper { program: self.enqueue_program.clone(), development }
    }
}

/// Who sends one message, and to whom.
#[derive(Debug)]
struct Message<'a> {
    me: &'a Identity,
    recipients: &'a [Vec<u8>],
    /// `-t`: also the recipients of the headers.
    extract: bool,
}

/// The pipeline every message goes through, from the command line (`-t`)
/// and from SMTP (`-bs`) alike: the header section read, completed and
/// rewritten, the recipients settled, the helper run with the rest of
/// `reader`.
fn submit_stream<R: BufRead>(
    ctx: &Context,
    msg: &Message<'_>,
    reader: &mut R,
    signals: &process::Terminations,
) -> Result<u8, Failure> {
    let section = headers::read_section(reader).map_err(|e| match e {
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
    let recipients = envelope_recipients(msg.recipients, msg.extract, &section, &ctx.rewriting)?;
    let added = missing_fields(&section, msg.me, ctx.host())?;
    let section = rewrite_fields(section, &ctx.rewriting);
    let head = headers::render(&section, &added);
    helper::submit(&ctx.helper(), &msg.me.envelope_sender, &recipients, &head, reader, signals)
}

/// `-bv`: say for each address whether it would be accepted; queue
/// nothing. Exit 0 when all are, 67 (EX_NOUSER, as sendmail) otherwise.
fn verify(recipients: &[Vec<u8>], origin: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    let mut bad = false;
    for r in recipients {
        let _ = match Mailbox::parse_or_qualify(r, origin) {
            Ok(m) => writeln!(out, "{}... deliverable: queued for the relay as <{}>", escape(r), m.as_str()),
            Err(e) => {
                bad = true;
                writeln!(out, "{}... invalid address: {e}", escape(r))
            }
        };
    }
    if bad { 67 } else { 0 }
}

/// The rules for one field: masquerading only for the sender fields.
fn rules<'a>(r: &'a Rewriting, local: &'a [&'a str], masquerade: bool) -> rewrite::Rules<'a> {
    rewrite::Rules {
        origin: &r.myorigin,
        local_domains: local,
        masquerade: if masquerade { r.masquerade_domain.as_deref() } else { None },
        masquerade_users: &r.masquerade_users,
    }
}

/// The address fields with bare names qualified and, in `From:` and
/// `Resent-From:`, this host masqueraded.
fn rewrite_fields(mut section: headers::Section, r: &Rewriting) -> headers::Section {
    const ADDRESS_FIELDS: [&str; 10] = [
        "From",
        "To",
        "Cc",
        "Reply-To",
        "Sender",
        "Resent-From",
        "Resent-To",
        "Resent-Cc",
        "Resent-Reply-To",
        "Resent-Sender",
    ];
    let local = [r.myhostname.as_str(), r.myorigin.as_str(), "localhost"];
    for f in section.fields.iter_mut() {
        if !ADDRESS_FIELDS.iter().any(|n| f.is(n)) {
            continue;
        }
        let masquerade = f.is("From") || f.is("Resent-From");
        if let Some(raw) = rewrite::field(&f.raw, &rules(r, &local, masquerade)) {
            f.raw = raw;
        }
    }
    section
}

/// `newaliases`, `-bi`, `-I`: outq has no alias database to build (the
/// runner reads the file itself), so this checks the file: each unusable
/// line is reported and the exit status is still 0, as maintainer scripts
/// expect; a file that cannot be used at all is an error.
fn check_aliases(config_path: &Path) -> Result<Done, Failure> {
    let (cfg, _) = load_config(config_path)?;
    let aliasing = crate::config::Aliasing::from_config(&cfg).map_err(|e| {
        Failure::temp(format!("{}: {e}", config_path.display()), "correct the configuration file; see outq.conf(5)")
    })?;
    let shown = aliasing.alias_file.display().to_string();
    let aliases = crate::aliases::Aliases::load(&aliasing.alias_file)
        .map_err(|e| Failure::temp(e, format!("{shown} must be owned by root and not writable by group or others")))?;
    let mut err = std::io::stderr().lock();
    for p in &aliases.problems {
        let _ = writeln!(err, "outq-sendmail: warning: {shown}: {p}");
    }
    Ok(Done::Code(0))
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
    fn new(args: &args::Args, r: &Rewriting) -> Result<Identity, Failure> {
        let local = [r.myhostname.as_str(), r.myorigin.as_str(), "localhost"];
        let rules = rules(r, &local, true);
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
            let (envelope_sender, from_address) = match Sender::parse(raw) {
                Ok(Sender::Null) => (raw.clone(), format!("MAILER-DAEMON@{}", r.myhostname)),
                _ => {
                    let m = Mailbox::parse_or_qualify(raw, &r.myorigin).map_err(|e| {
                        Failure::new(
                            Code::DataErr,
                            format!("sender {}: {e}", escape(raw)),
                            "give addresses as local@domain (RFC 5321)",
                        )
                    })?;
                    let rewritten = rewrite::address(m.as_str(), &rules);
                    (rewritten.clone().into_bytes(), rewritten)
                }
            };
            return Ok(Identity { envelope_sender, from_address, full_name });
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
        let mailbox = Mailbox::parse_or_qualify(user.name.as_bytes(), &r.myorigin).map_err(|e| {
            Failure::new(
                Code::DataErr,
                format!("cannot make a sender from account name {}: {e}", escape(user.name.as_bytes())),
                "give the sender with -f",
            )
        })?;
        let full_name = full_name.or_else(|| headers::gecos_name(user.gecos.as_bytes(), &user.name));
        let address = rewrite::address(mailbox.as_str(), &rules);
        Ok(Identity { envelope_sender: address.clone().into_bytes(), from_address: address, full_name })
    }
}

/// The command line's recipients, then (with `-t`) those of the headers,
/// each once, in order, bare names qualified with `myorigin`. Postfix's
/// rule: with `-t`, addresses on the command line are added to those in the
/// headers, not removed from them. A command-line word may hold a list
/// (`a,b`) or a name address (`Name <a@b>`).
fn envelope_recipients(
    given: &[Vec<u8>],
    extract: bool,
    section: &headers::Section,
    r: &Rewriting,
) -> Result<Vec<Vec<u8>>, Failure> {
    let mut all = Vec::new();
    for word in given {
        let found = rewrite::command_line(word).map_err(|e| {
            Failure::new(
                Code::DataErr,
                format!("recipient {}: {}", escape(word), escape(e.as_bytes())),
                "write recipients as local@domain or Name <local@domain>, separated by commas",
            )
        })?;
        all.extend(found);
    }
    if extract {
        let found = headers::recipients(&section.fields).map_err(|e| {
            Failure::new(Code::DataErr, e.what, "write recipients as local@domain or Name <local@domain>")
        })?;
        all.extend(found);
    }
    // Bare names get myorigin here (the helper would use myhostname); what
    // does not parse is passed on for the helper to refuse by name.
    for a in all.iter_mut() {
        if !a.contains(&b'@') {
            if let Ok(m) = Mailbox::parse_or_qualify(a, &r.myorigin) {
                *a = m.as_str().as_bytes().to_vec();
            }
        }
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
