/*!
The configuration file `/etc/outq/outq.conf`, shared by every outq program.

Format: one `key = value` per line; blank lines and lines whose first
non-blank character is `#` are ignored; a key may appear once. Values are
taken as written, with surrounding white space removed. Sizes are decimal
byte counts.

The file is read through [`load`], which walks its path with `O_NOFOLLOW` and
trusts it only if it and every directory above it are owned by an accepted
owner (root in production) and not writable by group or others. A missing
file means the defaults.

This module interprets the keys the helper needs ([`KEYS`]); every other
key is kept raw in [`Config::other`] for the runner, which validates its
own, and `outq check` reports a key that neither knows.

Only what the helper uses can stop the helper: a malformed line, a
malformed key name or a repeated key that is not one of [`KEYS`] is kept
in [`Config::problems`] instead of failing the parse, so a typo in a
runner-only key never makes a submission fail (the runner and `outq check`
report it). A line that names one of [`KEYS`], even misspelled in case, is
an error for everyone.

When `myhostname` is not set, [`effective_hostname`] takes the name from
[`MAILNAME_PATH`] (Debian's `/etc/mailname`) and then from the kernel's
host name.
*/
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::Uid;

use crate::address;
use crate::fs::{self, AncestorPolicy, FsError};

/// Where the configuration lives. Fixed at build time (a distribution may
/// set `OUTQ_CONFIG_PATH` when building); never taken from the environment
/// or the command line of a set-group-ID program.
pub const CONFIG_PATH: &str = match option_env!("OUTQ_CONFIG_PATH") {
    Some(p) => p,
    None => "/etc/outq/outq.conf",
};

/// Where the helper is installed, for `outq check` and `outq-sendmail`.
pub const ENQUEUE_PROGRAM: &str = match option_env!("OUTQ_ENQUEUE_PROGRAM") {
    Some(p) => p,
    None => "/usr/sbin/outq-enqueue",
};

pub const DEFAULT_SPOOL: &str = "/var/spool/outq";
pub const DEFAULT_MESSAGE_SIZE_LIMIT: u64 = 10_240_000;
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;
pub const DEFAULT_SPOOL_MIN_FREE: u64 = 50_000_000;
pub const DEFAULT_QUEUE_USER: &str = "outq";
pub const DEFAULT_SETGID_GROUP: &str = "outqdrop";

/// The mail name file read when `myhostname` is not set, as Debian's MTAs
/// do. Fixed at build time like [`CONFIG_PATH`].
pub const MAILNAME_PATH: &str = match option_env!("OUTQ_MAILNAME_PATH") {
    Some(p) => p,
    None => "/etc/mailname",
};

/// The largest configuration file read (a sanity bound, not a format limit).
pub const MAX_CONFIG_SIZE: u64 = 64 * 1024;

/// Every key outq knows, with a one-line description (`outq.conf(5)` must
/// document each, and a test checks that it does).
pub const KEYS: &[(&str, &str)] = &[
    ("spool_directory", "the spool's absolute path"),
    ("myhostname", "this host's name, used for default senders"),
    ("message_size_limit", "largest message accepted, in bytes"),
    ("max_recipients", "most recipients accepted for one message"),
    ("submit_users", "who may submit: anyone, or user names and @groups"),
    ("spool_min_free", "bytes that must stay free on the spool's filesystem"),
    ("submit_share", "most of the spool one account may hold in tmp/ and new/: N% of the filesystem, bytes, or 0"),
    ("queue_user", "the account that owns the spool and runs the runner"),
    ("setgid_group", "the helper's dedicated group"),
];

/// A raw `key = value` setting this crate does not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub line: usize,
    pub value: String,
}

/// Who may submit mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitUsers {
    Anyone,
    /// User names and group names (written `@group`).
    Only {
        users: Vec<String>,
        groups: Vec<String>,
    },
}

/// The parsed configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub spool_directory: PathBuf,
    /// `None`: use the system host name.
    pub myhostname: Option<String>,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub submit_users: SubmitUsers,
    pub spool_min_free: u64,
    /// Most of the spool one submitting account may hold in `tmp/` and
    /// `new/` together.
    pub submit_share: Share,
    pub queue_user: String,
    pub setgid_group: String,
    /// Keys this crate does not interpret (the runner's, or typos), with
    /// their line and raw value; the runner validates its own.
    pub other: BTreeMap<String, Setting>,
    /// Lines that concern no key of [`KEYS`] and could not be used
    /// (malformed, or a repeated key): ignored by the helper, reported by
    /// the runner and `outq check`.
    pub problems: Vec<SyntaxError>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            spool_directory: PathBuf::from(DEFAULT_SPOOL),
            myhostname: None,
            message_size_limit: DEFAULT_MESSAGE_SIZE_LIMIT,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            submit_users: SubmitUsers::Anyone,
            spool_min_free: DEFAULT_SPOOL_MIN_FREE,
            submit_share: Share::Percent(DEFAULT_SUBMIT_SHARE_PERCENT),
            queue_user: DEFAULT_QUEUE_USER.into(),
            setgid_group: DEFAULT_SETGID_GROUP.into(),
            other: BTreeMap::new(),
            problems: Vec::new(),
        }
    }
}

/// A line of the file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file or a directory above it is not trustworthy, or unreadable.
    Untrusted(FsError),
    /// The file is trusted but malformed.
    Syntax { path: String, error: SyntaxError },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Untrusted(e) => write!(f, "configuration not trusted: {e}"),
            ConfigError::Syntax { path, error } => write!(f, "{path}: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(line: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError { line, message: message.into() }
}

fn parse_number(line: usize, key: &str, value: &str) -> Result<u64, SyntaxError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(line, format!("{key} must be a decimal number of bytes or items")));
    }
    let n: u64 = value.parse().map_err(|_| err(line, format!("{key} is too large")))?;
    if n == 0 {
        return Err(err(line, format!("{key} must be greater than 0")));
    }
    Ok(n)
}

/// Default `submit_share`: a quarter of the spool's file system.
pub const DEFAULT_SUBMIT_SHARE_PERCENT: u8 = 25;

/// A limit relative to the spool's file system, or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// No limit (`0`).
    Off,
    /// Percent (1 to 100) of the file system's size.
    Percent(u8),
    Bytes(u64),
}

impl Share {
    /// The limit in bytes on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> Option<u64> {
        match self {
            Share::Off => None,
            Share::Percent(p) => Some(total / 100 * u64::from(p)),
            Share::Bytes(b) => Some(b),
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Off => write!(f, "0 (off)"),
            Share::Percent(p) => write!(f, "{p}%"),
            Share::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

fn parse_share(line: usize, value: &str) -> Result<Share, SyntaxError> {
    if value == "0" {
        return Ok(Share::Off);
    }
    match value.strip_suffix('%') {
        Some(p) => match p.parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) && p.bytes().all(|b| b.is_ascii_digit()) => Ok(Share::Percent(n)),
            _ => Err(err(line, "submit_share must be a percentage from 1% to 100%, a number of bytes, or 0")),
        },
        None => parse_number(line, "submit_share", value).map(Share::Bytes),
    }
}

fn is_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
}

fn parse_submit_users(line: usize, value: &str) -> Result<SubmitUsers, SyntaxError> {
    let words: Vec<&str> =
        value.split(|c: char| c == ',' || c.is_ascii_whitespace()).filter(|w| !w.is_empty()).collect();
    if words == ["anyone"] {
        return Ok(SubmitUsers::Anyone);
    }
    if words.is_empty() {
        return Err(err(line, "submit_users must be 'anyone' or a list of user names and @groups"));
    }
    let (mut users, mut groups) = (Vec::new(), Vec::new());
    for w in words {
        let (name, list) = match w.strip_prefix('@') {
            Some(g) => (g, &mut groups),
            None => (w, &mut users),
        };
        if name == "anyone" || !is_account_name(name) {
            return Err(err(line, format!("submit_users: {:?} is not a user or @group name", w)));
        }
        list.push(name.to_owned());
    }
    Ok(SubmitUsers::Only { users, groups })
}

/// Whether `word` names one of the helper's keys, ignoring case (so a
/// misspelt `Myhostname` is still the helper's business).
fn is_helper_word(word: &str) -> bool {
    KEYS.iter().any(|(k, _)| k.eq_ignore_ascii_case(word))
}

/// Parse the text of a configuration file.
pub fn parse(text: &[u8]) -> Result<Config, SyntaxError> {
    let text = std::str::from_utf8(text).map_err(|_| err(0, "the file is not valid UTF-8"))?;
    let mut cfg = Config::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // The key this line is about, as far as it can be told: a problem
        // with a helper key is fatal, any other is recorded.
        let word = t.split(|c: char| c == '=' || c.is_whitespace()).next().unwrap_or("");
        let mut problem = |e: SyntaxError| {
            if is_helper_word(word) {
                Err(e)
            } else {
                cfg.problems.push(e);
                Ok(())
            }
        };
        if t.chars().any(|c| c.is_control() && c != '\t') {
            problem(err(line, "control character in line"))?;
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            problem(err(line, "expected 'key = value'"))?;
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            problem(err(line, "a key is lower-case letters, digits and '_'"))?;
            continue;
        }
        if let Some(first) = seen.insert(key.to_owned(), line) {
            problem(err(line, format!("{key} is already set on line {first}")))?;
            continue;
        }
        apply(&mut cfg, line, key, value)?;
    }
    Ok(cfg)
}

fn apply(cfg: &mut Config, line: usize, key: &str, value: &str) -> Result<(), SyntaxError> {
    match key {
        "spool_directory" => {
            let p = Path::new(value);
            // Checked on the text: Path::components() silently drops "." parts.
            let canonical = value.starts_with('/') && value.split('/').skip(1).all(|c| !matches!(c, "." | ".."));
            if !canonical || value.len() > 1024 {
                return Err(err(line, "spool_directory must be an absolute path without '.' or '..'"));
            }
            cfg.spool_directory = p.to_path_buf();
        }
        "myhostname" => {
            if !address::is_domain(value.as_bytes()) {
                return Err(err(line, "myhostname must be a domain name such as mail.example.org"));
            }
            cfg.myhostname = Some(value.to_owned());
        }
        "message_size_limit" => cfg.message_size_limit = parse_number(line, key, value)?,
        "max_recipients" => {
            let n = parse_number(line, key, value)?;
            cfg.max_recipients = usize::try_from(n).map_err(|_| err(line, "max_recipients is too large"))?;
        }
        "submit_users" => cfg.submit_users = parse_submit_users(line, value)?,
        "spool_min_free" => {
            // 0 is allowed here: it turns the reserve off.
            cfg.spool_min_free = if value == "0" { 0 } else { parse_number(line, key, value)? };
        }
        "submit_share" => cfg.submit_share = parse_share(line, value)?,
        "queue_user" | "setgid_group" => {
            if !is_account_name(value) {
                return Err(err(line, format!("{key} must be an account name")));
            }
            if key == "queue_user" {
                cfg.queue_user = value.to_owned();
            } else {
                cfg.setgid_group = value.to_owned();
            }
        }
        _ => {
            cfg.other.insert(key.to_owned(), Setting { line, value: value.to_owned() });
        }
    }
    Ok(())
}

/// How much to trust a configuration file's owner.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Accepted owners of the file and of every directory above it.
    pub owners: Vec<Uid>,
    /// Accept sticky world-writable directories above it (`/tmp`), for
    /// development copies only.
    pub allow_sticky: bool,
}

impl Trust {
    /// Production: root only.
    pub fn root() -> Trust {
        Trust { owners: vec![Uid::from_raw(0)], allow_sticky: false }
    }
}

/// Load and parse the file at `path`. `Ok((cfg, false))` with defaults when
/// the file does not exist; `Ok((cfg, true))` when it was read.
pub fn load(path: &Path, trust: &Trust) -> Result<(Config, bool), ConfigError> {
    load_as(path, trust, Descriptors::Close)
}

/// [`load`] for a process that ends soon after (the helper): the two
/// descriptors opened to read the file, its directory and itself, are not
/// closed but left for the kernel to close at exit.
pub fn load_leaving_descriptors(path: &Path, trust: &Trust) -> Result<(Config, bool), ConfigError> {
    load_as(path, trust, Descriptors::Leave)
}

/// What happens to the descriptors a read opened, once it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Descriptors {
    Close,
    /// Kept open until the process exits (a short-lived process saves the
    /// `close` calls).
    Leave,
}

fn load_as(path: &Path, trust: &Trust, fds: Descriptors) -> Result<(Config, bool), ConfigError> {
    let Some(text) = read_trusted_as(path, trust, MAX_CONFIG_SIZE, fds).map_err(ConfigError::Untrusted)? else {
        return Ok((Config::default(), false));
    };
    let shown = path.display().to_string();
    let cfg = parse(&text).map_err(|error| ConfigError::Syntax { path: shown, error })?;
    Ok((cfg, true))
}

/// Read a small root-administered file (this configuration, the aliases
/// file) under the same rules: every directory above it and the file
/// itself owned by a trusted owner and not writable by group or others,
/// no symbolic link, at most `max` bytes. `Ok(None)` when it does not exist.
pub fn read_trusted(path: &Path, trust: &Trust, max: u64) -> Result<Option<Vec<u8>>, FsError> {
    read_trusted_as(path, trust, max, Descriptors::Close)
}

fn read_trusted_as(path: &Path, trust: &Trust, max: u64, fds: Descriptors) -> Result<Option<Vec<u8>>, FsError> {
    let shown = path.display().to_string();
    let (name, parent) = match (path.file_name(), path.parent()) {
        (Some(n), Some(p)) => (n, p),
        _ => return Err(FsError::new(shown, fs::Problem::NotCanonical)),
    };
    let policy = AncestorPolicy { owners: trust.owners.clone(), allow_sticky: trust.allow_sticky };
    let dir = match fs::open_dir_path(parent, &policy) {
        Ok((fd, st)) => {
            // The directory holding the file must itself be trustworthy.
            let parent_shown = parent.display().to_string();
            check_owned_not_writable(&parent_shown, &st, trust)?;
            fd
        }
        Err(e) if e.errno() == Some(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(FsError::new(shown, fs::Problem::Symlink)),
        Err(e) => return Err(FsError::sys(shown, e)),
    };
    let st = fstat(&fd).map_err(|e| FsError::sys(shown.clone(), e))?;
    fs::require_trusted_file(&shown, &st, &trust.owners, max)?;
    let expected = u64::try_from(st.st_size).unwrap_or(0);
    let file = std::fs::File::from(fd);
    let text = fs::read_file_sized(&file, max, expected)
        .map_err(|e| FsError::sys(shown.clone(), Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    if fds == Descriptors::Leave {
        std::mem::forget(file);
        std::mem::forget(dir);
    }
    Ok(Some(text))
}

fn check_owned_not_writable(shown: &str, st: &nix::sys::stat::FileStat, trust: &Trust) -> Result<(), FsError> {
    let policy = AncestorPolicy { owners: trust.owners.clone(), allow_sticky: false };
    let probe = AncestorPolicyCheck { policy: &policy };
    probe.check(shown, st)
}

/// Applies an [`AncestorPolicy`] to one directory (the config's own
/// directory, which must not be writable even if sticky).
struct AncestorPolicyCheck<'a> {
    policy: &'a AncestorPolicy,
}

impl AncestorPolicyCheck<'_> {
    fn check(&self, shown: &str, st: &nix::sys::stat::FileStat) -> Result<(), FsError> {
        if !fs::is_dir(st) {
            return Err(FsError::new(shown, fs::Problem::WrongType));
        }
        if !self.policy.owners.contains(&Uid::from_raw(st.st_uid)) {
            return Err(FsError::new(
                shown,
                fs::Problem::Owner { found: st.st_uid, expected: "a trusted owner (root)".into() },
            ));
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(FsError::new(
                shown,
                fs::Problem::Mode { found: mode, expected: "no write permission for group or others".into() },
            ));
        }
        Ok(())
    }
}

/// The host name to use: the configured one, else the first line of
/// [`MAILNAME_PATH`] if it is a valid domain, else the system's if it is a
/// valid domain, else `localhost`.
pub fn effective_hostname(cfg: &Config) -> String {
    if let Some(h) = &cfg.myhostname {
        return h.clone();
    }
    if let Some(name) = read_mailname(Path::new(MAILNAME_PATH)) {
        return name;
    }
    match nix::unistd::gethostname() {
        Ok(h) => match h.into_string() {
            Ok(s) if address::is_domain(s.as_bytes()) => s,
            _ => "localhost".into(),
        },
        Err(_) => "localhost".into(),
    }
}

/// The mail name in `path`: its first line, trimmed, if that is a domain.
/// A missing, unreadable, oversized or malformed file is no mail name.
pub fn read_mailname(path: &Path) -> Option<String> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = nix::fcntl::open(path, flags, Mode::empty()).ok()?;
    let st = fstat(&fd).ok()?;
    if !fs::is_regular(&st) {
        return None;
    }
    let text = fs::read_all(fd, 1024).ok()?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let name = std::str::from_utf8(first).ok()?.trim();
    address::is_domain(name.as_bytes()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_file() {
        assert_eq!(parse(b"").unwrap(), Config::default());
        assert_eq!(parse(b"# only a comment\n\n   \n").unwrap(), Config::default());
    }

    #[test]
    fn parses_every_key() {
        let text = b"spool_directory = /srv/spool/outq\nmyhostname=mail.example.org\n  message_size_limit = 2048 \n\
max_recipients = 5\nsubmit_users = www-data, alice @mailers\nspool_min_free = 0\nqueue_user = q\nsetgid_group = qd\n";
        let c = parse(text).unwrap();
        assert_eq!(c.spool_directory, PathBuf::from("/srv/spool/outq"));
        assert_eq!(c.myhostname.as_deref(), Some("mail.example.org"));
        assert_eq!(c.message_size_limit, 2048);
        assert_eq!(c.max_recipients, 5);
        assert_eq!(
            c.submit_users,
            SubmitUsers::Only { users: vec!["www-data".into(), "alice".into()], groups: vec!["mailers".into()] }
        );
        assert_eq!(c.spool_min_free, 0);
        assert_eq!(c.queue_user, "q");
        assert_eq!(c.setgid_group, "qd");
        assert!(c.other.is_empty());
    }

    #[test]
    fn keys_table_lists_every_parsed_key() {
        for (key, _) in KEYS {
            let value = match *key {
                "spool_directory" => "/x",
                "myhostname" => "h.example",
                "submit_users" => "anyone",
                "queue_user" | "setgid_group" => "name",
                _ => "1",
            };
            let c = parse(format!("{key} = {value}\n").as_bytes()).unwrap();
            assert!(c.other.is_empty(), "{key} is in KEYS but not parsed");
        }
    }

    #[test]
    fn other_keys_are_kept_with_their_line_and_value() {
        let c = parse(b"\nrelai = smtp://x\n").unwrap();
        assert_eq!(c.other.get("relai"), Some(&Setting { line: 2, value: "smtp://x".into() }));
    }

    #[test]
    fn rejects_malformed_lines() {
        let cases: &[(&[u8], usize)] = &[
            (b"spool_directory\n", 1),
            (b"\nspool_directory = relative/path\n", 2),
            (b"spool_directory = /a/../b\n", 1),
            (b"spool_directory = /var/./tmp\n", 1),
            (b"message_size_limit = 10M\n", 1),
            (b"message_size_limit = 0\n", 1),
            (b"message_size_limit = 99999999999999999999999\n", 1),
            (b"max_recipients = -1\n", 1),
            (b"myhostname = not a host\n", 1),
            (b"submit_users =\n", 1),
            (b"submit_users = alice, ../x\n", 1),
            (b"submit_users = anyone alice\n", 1),
            (b"Spool_Directory = /x\n", 1),
            (b"max_recipients = 1\nmax_recipients = 2\n", 2),
            (b"myhostname host.example\n", 1),
            (b"\nsubmit_users\n", 2),
            (b"queue_user = -root\n", 1),
            (b"myhostname = a\x01b\n", 1),
            (b"\xff\xfe = 1\n", 0),
        ];
        for (text, line) in cases {
            let e = parse(text).expect_err(&String::from_utf8_lossy(text));
            assert_eq!(e.line, *line, "{:?}: {}", String::from_utf8_lossy(text), e);
        }
    }

    #[test]
    fn problems_with_other_keys_do_not_stop_the_parse() {
        let text = b"relay smtp://x\nStartTLS = on\nrelay = a\nrelay = b\nx\x01y = 1\nmax_recipients = 7\n";
        let c = parse(text).unwrap();
        assert_eq!(c.max_recipients, 7);
        let lines: Vec<usize> = c.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 2, 4, 5]);
        assert_eq!(c.other.get("relay").map(|s| s.value.as_str()), Some("a"));
    }

    #[test]
    fn mail_name_file() {
        let dir = std::env::temp_dir().join(format!("outq-mailname-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mailname");
        std::fs::write(&p, "mail.example.org\nignored\n").unwrap();
        assert_eq!(read_mailname(&p).as_deref(), Some("mail.example.org"));
        std::fs::write(&p, "  spaced.example \n").unwrap();
        assert_eq!(read_mailname(&p).as_deref(), Some("spaced.example"));
        std::fs::write(&p, "not a name\n").unwrap();
        assert_eq!(read_mailname(&p), None);
        std::fs::write(&p, "a".repeat(2000)).unwrap();
        assert_eq!(read_mailname(&p), None);
        assert_eq!(read_mailname(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
