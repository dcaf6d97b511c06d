/*!
`outq setup`: the guided setup. Sets where mail goes (relay host, port,
TLS mode, credentials), where mail for root goes (`admin_address`) and the
mail name (`myhostname`) without editing files by hand.

On a terminal it asks, showing the current value as the default; with
`--non-interactive` (as the Debian package's postinst runs it), or without
a terminal, it takes the flags and keeps every other value as it is. It
edits the configuration in place: other keys, comments and their order are
kept, and the new text is validated before it atomically replaces the old.
The password goes to its own file (`relay_auth_file`), owned by the queue
owner with mode 0600, never to the configuration or the command line.
*/
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::unistd::User;
use outq_spool::address::{Mailbox, is_domain};
use outq_spool::config;

use crate::cli::{SetupArgs, TlsMode};
use crate::config::{Relay, RunnerConfig, parse_relays};
use crate::error::Error;

/// The configuration written when there is none yet: the documented example.
const EXAMPLE: &str = include_str!("../../install/outq.conf.example");

/// Relay host when neither the file nor the flags name one: the runner's
/// built-in default.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The settings `outq setup` manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub auth: Auth,
    /// Empty: not set (local mail is not redirected).
    pub admin_address: String,
    /// Empty: not set (`/etc/mailname`, else the host name).
    pub mailname: String,
}

/// SMTP AUTH credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// The existing `relay_auth_file`, unchanged.
    Keep(PathBuf),
    Set {
        user: String,
        password: String,
    },
}

impl TlsMode {
    fn standard_port(self) -> u16 {
        match self {
            TlsMode::Smtps => 465,
            TlsMode::Starttls => 587,
            TlsMode::Opportunistic | TlsMode::Off => 25,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TlsMode::Smtps => "smtps",
            TlsMode::Starttls => "starttls",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Off => "off",
        }
    }

    fn parse(s: &str) -> Option<TlsMode> {
        [TlsMode::Smtps, TlsMode::Starttls, TlsMode::Opportunistic, TlsMode::Off].into_iter().find(|m| m.name() == s)
    }
}

/// `outq setup`.
pub fn run(a: &SetupArgs) -> Result<ExitCode, Error> {
    let path = a.config.clone().unwrap_or_else(|| PathBuf::from(config::CONFIG_PATH));
    let (text, existed) = read_config(&path)?;
    let cfg = config::parse(text.as_bytes()).map_err(|e| {
        Error::new(format!("{}: {e}", path.display()), "correct the file first; outq setup only edits a valid one")
    })?;
    let current = current_answers(&cfg)?;
    let interactive = !a.non_interactive && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let answers = if interactive { ask(&current, a)? } else { from_flags(&current, a)? };
    let auth_path = path.with_file_name("relay-auth");
    let new_text = render(&text, &current, &answers, &auth_path);
    let parsed = config::parse(new_text.as_bytes())
        .map_err(|e| Error::new(format!("the new configuration is invalid: {e}"), "report this as a bug"))?;
    RunnerConfig::from_config(&parsed)
        .map_err(|e| Error::new(format!("the new configuration is invalid: {e}"), "check the values given"))?;
    if let Auth::Set { user, password } = &answers.auth {
        write_auth_file(&auth_path, &parsed.queue_user, user, password)?;
    }
    if new_text != text || !existed {
        write_atomically(&path, new_text.as_bytes(), 0o644, None)?;
    }
    if answers.auth == Auth::None
        && let Auth::Keep(old) = &current.auth
        && old == &auth_path
    {
        let _ = std::fs::remove_file(old);
    }
    summary(&path, &answers, &auth_path);
    Ok(ExitCode::SUCCESS)
}

fn read_config(path: &Path) -> Result<(String, bool), Error> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(|t| (t, true))
            .map_err(|_| Error::new(format!("{} is not UTF-8", path.display()), "correct the file first")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((EXAMPLE.to_owned(), false)),
        Err(e) => Err(Error::new(format!("cannot read {}: {e}", path.display()), "run outq setup as root")),
    }
}

/// The managed settings as the file has them, defaults filled in.
fn current_answers(cfg: &config::Config) -> Result<Answers, Error> {
    let rc = RunnerConfig::from_config(cfg)
        .map_err(|e| Error::new(format!("configuration {e}"), "correct the file first; see outq.conf(5)"))?;
    let (host, port, implicit) = match rc.relays.first() {
        Some(Relay::Smtp { host, port, implicit_tls }) => (host.clone(), *port, *implicit_tls),
        // A maildir: or pipe: target is replaced only when asked to.
        _ => (DEFAULT_HOST.to_owned(), 25, false),
    };
    let tls = match (implicit, rc.starttls) {
        (true, _) => TlsMode::Smtps,
        (false, crate::config::StartTls::Required) => TlsMode::Starttls,
        (false, crate::config::StartTls::Opportunistic) => TlsMode::Opportunistic,
        (false, crate::config::StartTls::Off) => TlsMode::Off,
    };
    let auth = rc.relay_auth_file.map_or(Auth::None, Auth::Keep);
    let get = |k: &str| cfg.other.get(k).map(|s| s.value.clone()).unwrap_or_default();
    Ok(Answers {
        host,
        port,
        tls,
        auth,
        admin_address: get("admin_address"),
        mailname: cfg.myhostname.clone().unwrap_or_default(),
    })
}

/// The answers from the flags alone; what they do not name stays.
pub fn from_flags(current: &Answers, a: &SetupArgs) -> Result<Answers, Error> {
    let mut n = current.clone();
    if let Some(h) = &a.relay {
        n.host = h.clone();
    }
    if let Some(t) = a.tls {
        n.tls = t;
    }
    n.port = match a.port {
        Some(p) => p,
        None if a.relay.is_some() || a.tls.is_some() => n.tls.standard_port(),
        None => current.port,
    };
    check_relay(&n)?;
    match (&a.auth_user, &a.auth_password_file) {
        (Some(u), _) if u.is_empty() => n.auth = Auth::None,
        (Some(u), Some(f)) => n.auth = Auth::Set { user: u.clone(), password: read_password_file(f)? },
        (Some(_), None) => {
            return Err(Error::usage(
                "--auth-user needs a password",
                "give --auth-password-file FILE (or - for standard input)",
            ));
        }
        (None, Some(_)) => return Err(Error::usage("--auth-password-file needs --auth-user", "give both")),
        (None, None) => {}
    }
    if let Auth::Set { user, password } = &n.auth {
        check_credentials(user, password)?;
    }
    if let Some(addr) = &a.admin_address {
        n.admin_address = addr.trim().to_owned();
        check_admin(&n.admin_address)?;
    }
    if let Some(m) = &a.mailname {
        n.mailname = m.trim().to_owned();
        check_mailname(&n.mailname)?;
    }
    Ok(n)
}

fn check_relay(n: &Answers) -> Result<(), Error> {
    parse_relays(&relay_url(n)).map(|_| ()).map_err(|e| {
        Error::usage(format!("relay {}: {e}", n.host), "give a host name or address and a port from 1 to 65535")
    })
}

fn check_credentials(user: &str, password: &str) -> Result<(), Error> {
    let bad = |s: &str| s.chars().any(char::is_control);
    if user.is_empty() || user.chars().any(char::is_whitespace) || bad(user) {
        return Err(Error::usage("the AUTH user name is empty or has blanks", "give the relay account's name"));
    }
    if password.is_empty() || bad(password) || password.trim() != password {
        return Err(Error::usage(
            "the password is empty, has control characters, or begins or ends with a blank",
            "give the password alone on one line",
        ));
    }
    Ok(())
}

fn check_admin(addr: &str) -> Result<(), Error> {
    if addr.is_empty() || Mailbox::parse(addr.as_bytes()).is_ok() {
        return Ok(());
    }
    Err(Error::usage(format!("{addr:?} is not a mail address"), "give a full address such as admin@example.org"))
}

fn check_mailname(name: &str) -> Result<(), Error> {
    if name.is_empty() || is_domain(name.as_bytes()) {
        return Ok(());
    }
    Err(Error::usage(format!("{name:?} is not a domain name"), "give a name such as mail.example.org"))
}

fn read_password_file(f: &Path) -> Result<String, Error> {
    let text = if f == Path::new("-") {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::new(format!("cannot read the password: {e}"), "give it on standard input"))?;
        line
    } else {
        std::fs::read_to_string(f)
            .map_err(|e| Error::new(format!("cannot read {}: {e}", f.display()), "give a readable file"))?
    };
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The `relay` value for the answers.
fn relay_url(n: &Answers) -> String {
    let scheme = if n.tls == TlsMode::Smtps { "smtps" } else { "smtp" };
    let host = if n.host.contains(':') { format!("[{}]", n.host) } else { n.host.clone() };
    format!("{scheme}://{host}:{}", n.port)
}

/// The new configuration text: each managed key whose answer changed is
/// set, replaced or removed; everything else stays as it was (a `maildir:`
/// relay or a list of relays is only replaced when the relay is changed).
pub fn render(text: &str, old: &Answers, n: &Answers, auth_path: &Path) -> String {
    let starttls = match n.tls {
        TlsMode::Smtps => None,
        TlsMode::Starttls => Some("required"),
        TlsMode::Opportunistic => Some("opportunistic"),
        TlsMode::Off => Some("off"),
    };
    let auth = match &n.auth {
        Auth::None => None,
        Auth::Keep(p) => Some(p.display().to_string()),
        Auth::Set { .. } => Some(auth_path.display().to_string()),
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let relay_changed = (&old.host, old.port, old.tls) != (&n.host, n.port, n.tls);
    let mut out = text.to_owned();
    for (key, changed, value) in [
        ("relay", relay_changed, Some(relay_url(n))),
        ("starttls", relay_changed, starttls.map(str::to_owned)),
        ("relay_auth_file", old.auth != n.auth, auth),
        ("admin_address", old.admin_address != n.admin_address, nonempty(&n.admin_address)),
        ("myhostname", old.mailname != n.mailname, nonempty(&n.mailname)),
    ] {
        if changed {
            out = set_key(&out, key, value.as_deref());
        }
    }
    out
}

/// The key a line sets, if it is a setting (`commented`: also `#key = ...`).
fn line_key(line: &str, commented: bool) -> Option<&str> {
    let t = line.trim_start();
    let t = if commented { t.strip_prefix('#')?.trim_start() } else { t };
    if t.starts_with('#') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')).then_some(k)
}

/// Set `key` to `value` (or remove it): the setting line is replaced in
/// place; a new one goes after the commented example of the key, else at
/// the end.
pub fn set_key(text: &str, key: &str, value: Option<&str>) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let new = value.map(|v| format!("{key} = {v}"));
    if let Some(i) = lines.iter().position(|l| line_key(l, false) == Some(key)) {
        match new {
            Some(n) => drop(lines.splice(i..=i, [n])),
            None => drop(lines.splice(i..=i, None)),
        }
    } else if let Some(n) = new {
        match lines.iter().position(|l| line_key(l, true) == Some(key)) {
            Some(i) => lines.insert(i + 1, n),
            None => lines.push(n),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Write `bytes` to `path` so that readers see the old file or the new one:
/// a new file beside it, synced, renamed over it, the directory synced.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32, owner: Option<&User>) -> Result<(), Error> {
    let fail = |what: &str, e: std::io::Error| {
        Error::new(format!("cannot {what} {}: {e}", path.display()), "run outq setup as root")
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.setup-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The process umask must not narrow the intended mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        // Owned as intended before it appears under its name.
        if let Some(u) = owner {
            nix::unistd::fchown(f.as_fd(), Some(u.uid), Some(u.gid)).map_err(std::io::Error::from)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| fail("write", e))
}

/// The credentials file: `user password`, owned by the queue owner, 0600.
fn write_auth_file(path: &Path, queue_user: &str, user: &str, password: &str) -> Result<(), Error> {
    let owner = match User::from_name(queue_user) {
        Ok(Some(u)) => u,
        _ => {
            return Err(Error::new(
                format!("user {queue_user} does not exist"),
                "install the package (or create the queue owner) first",
            ));
        }
    };
    let body = format!("# written by outq setup\n{user} {password}\n");
    write_atomically(path, body.as_bytes(), 0o600, Some(&owner))
}

// ---------------------------------------------------------------------------
// Interactive questions.

/// One question; an empty answer takes the default shown.
fn prompt(question: &str, default: &str) -> Result<String, Error> {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{question} [{default}]: ");
    let _ = out.flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::new(format!("cannot read the answer: {e}"), "run with --non-interactive and flags"))?;
    if n == 0 {
        return Err(Error::usage("no answer (end of input)", "run with --non-interactive and flags"));
    }
    let line = line.trim();
    Ok(if line.is_empty() { default.to_owned() } else { line.to_owned() })
}

/// A password, read with the terminal's echo off.
fn prompt_secret(question: &str) -> Result<String, Error> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(stdin.as_fd()).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &quiet);
    }
    print!("{question}: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, t);
    }
    println!();
    r.map_err(|e| Error::new(format!("cannot read the password: {e}"), "use --auth-password-file"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Ask each question, with the flags (else the file) as the defaults.
fn ask(current: &Answers, a: &SetupArgs) -> Result<Answers, Error> {
    let d = from_flags(current, a)?;
    println!("outq setup: press Enter to keep the value in brackets; '-' means none.");
    let mut n = d.clone();
    n.host = prompt("Relay host (your provider's or company's SMTP server)", &d.host)?;
    loop {
        let t = prompt("TLS: smtps (port 465), starttls (required), opportunistic or off", d.tls.name())?;
        match TlsMode::parse(&t) {
            Some(m) => {
                n.tls = m;
                break;
            }
            None => println!("  one of: smtps, starttls, opportunistic, off"),
        }
    }
    let port_default = if n.tls == d.tls && n.host == d.host { d.port } else { n.tls.standard_port() };
    n.port = prompt("Relay port", &port_default.to_string())?
        .parse()
        .map_err(|_| Error::usage("the port is not a number from 1 to 65535", "answer with a port number"))?;
    check_relay(&n)?;
    let user_default = match &d.auth {
        Auth::None => "-".to_owned(),
        Auth::Keep(p) => existing_user(p).unwrap_or_else(|| "(unchanged)".into()),
        Auth::Set { user, .. } => user.clone(),
    };
    let user = prompt("User name for SMTP AUTH", &user_default)?;
    n.auth = match (user.as_str(), &d.auth) {
        ("-", _) => Auth::None,
        (u, Auth::Keep(p)) if u == user_default => Auth::Keep(p.clone()),
        (u, Auth::Set { password, .. }) if u == user_default => {
            Auth::Set { user: u.into(), password: password.clone() }
        }
        (u, _) => Auth::Set { user: u.into(), password: prompt_secret("Password (not shown)")? },
    };
    if let Auth::Set { user, password } = &n.auth {
        check_credentials(user, password)?;
    }
    let none = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
    let admin = prompt("Address that receives mail for root", &none(&d.admin_address))?;
    n.admin_address = if admin == "-" { String::new() } else { admin };
    check_admin(&n.admin_address)?;
    let shown = if d.mailname.is_empty() { "-".to_owned() } else { d.mailname.clone() };
    let name = prompt("Mail name (domain of this host's mail; '-': /etc/mailname or the host name)", &shown)?;
    n.mailname = if name == "-" { String::new() } else { name };
    check_mailname(&n.mailname)?;
    Ok(n)
}

/// The user name in an existing credentials file (root can read it).
fn existing_user(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string(p).ok()?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))?;
    line.split([' ', '\t']).next().map(str::to_owned)
}

fn summary(path: &Path, n: &Answers, auth_path: &Path) {
    println!("outq setup: {} written", path.display());
    let tls = match n.tls {
        TlsMode::Smtps => "TLS from the first byte",
        TlsMode::Starttls => "STARTTLS required",
        TlsMode::Opportunistic => "STARTTLS when offered",
        TlsMode::Off => "no TLS",
    };
    println!("  relay: {} ({tls})", relay_url(n));
    if n.host == DEFAULT_HOST {
        println!("  note: the relay is the default 127.0.0.1; name yours with: outq setup --relay HOST");
    }
    match &n.auth {
        Auth::None => println!("  authentication: none"),
        Auth::Keep(p) => println!("  authentication: {}", p.display()),
        Auth::Set { user, .. } => println!("  authentication: as {user} ({})", auth_path.display()),
    }
    if n.admin_address.is_empty() {
        println!("  mail for root: not redirected (set one with: outq setup --admin-address ADDRESS)");
    } else {
        println!("  mail for root: {}", n.admin_address);
    }
    if n.mailname.is_empty() {
        println!("  mail name: /etc/mailname, else the host name");
    } else {
        println!("  mail name: {}", n.mailname);
    }
    println!("  apply it to a running runner with: systemctl reload outq");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Answers {
        Answers {
            host: "mail.example.org".into(),
            port: 587,
            tls: TlsMode::Starttls,
            auth: Auth::Set { user: "u".into(), password: "p w".into() },
            admin_address: "ops@example.org".into(),
            mailname: "host.example.org".into(),
        }
    }

    #[test]
    fn render_sets_keys_beside_their_examples_and_keeps_the_rest() {
        let cfg = config::parse(EXAMPLE.as_bytes()).unwrap();
        let defaults = current_answers(&cfg).unwrap();
        assert_eq!(render(EXAMPLE, &defaults, &defaults, Path::new("/x")), EXAMPLE, "no change, no edit");
        let out = render(EXAMPLE, &defaults, &answers(), Path::new("/etc/outq/relay-auth"));
        assert!(out.contains("#relay = smtp://127.0.0.1\nrelay = smtp://mail.example.org:587\n"), "{out}");
        assert!(out.contains("#starttls = opportunistic\nstarttls = required\n"), "{out}");
        assert!(out.contains("relay_auth_file = /etc/outq/relay-auth\n"), "{out}");
        assert!(out.contains("myhostname = host.example.org\n") && out.contains("admin_address = ops@example.org\n"));
        assert!(out.contains("#submit_users = anyone\n"), "other lines stay");
        let cfg = config::parse(out.as_bytes()).unwrap();
        RunnerConfig::from_config(&cfg).unwrap();
        // Again, with fewer settings: lines are replaced or removed, not added.
        let mut n = answers();
        n.tls = TlsMode::Smtps;
        n.port = 465;
        n.auth = Auth::None;
        n.admin_address.clear();
        let again = render(&out, &answers(), &n, Path::new("/etc/outq/relay-auth"));
        assert_eq!(again.matches("\nrelay = ").count(), 1);
        assert!(again.contains("relay = smtps://mail.example.org:465\n"));
        for gone in ["\nstarttls =", "\nrelay_auth_file =", "\nadmin_address ="] {
            assert!(!again.contains(gone), "{gone} stays in {again}");
        }
    }

    #[test]
    fn other_relays_stay_unless_the_relay_is_changed() {
        let text = "relay = maildir:/srv/mail\n";
        let cfg = config::parse(text.as_bytes()).unwrap();
        let old = current_answers(&cfg).unwrap();
        let mut n = old.clone();
        n.admin_address = "ops@example.org".into();
        assert_eq!(
            render(text, &old, &n, Path::new("/x")),
            "relay = maildir:/srv/mail\nadmin_address = ops@example.org\n"
        );
    }

    #[test]
    fn ipv6_relays_are_bracketed() {
        let mut n = answers();
        n.host = "2001:db8::1".into();
        assert_eq!(relay_url(&n), "smtp://[2001:db8::1]:587");
        assert!(check_relay(&n).is_ok());
        n.host = "bad host".into();
        assert!(check_relay(&n).is_err());
    }

    #[test]
    fn values_are_checked() {
        assert!(check_credentials("u", "secret with spaces").is_ok());
        assert!(check_credentials("u v", "x").is_err());
        assert!(check_credentials("u", " x").is_err());
        assert!(check_credentials("u", "").is_err());
        assert!(check_admin("").is_ok() && check_admin("a@b.example").is_ok());
        assert!(check_admin("not an address").is_err());
        assert!(check_mailname("").is_ok() && check_mailname("h.example").is_ok());
        assert!(check_mailname("-x-").is_err());
    }
}
