/*!
The runner's configuration keys, read from the same `outq.conf` the helper
uses. `outq_spool::config` parses the file and interprets the helper's keys;
this module validates the rest ([`RUNNER_KEYS`] and [`ADDRESS_KEYS`]), so a
typo is an error with its line number and `outq check` can name keys that
neither side knows.

Each program validates only the keys it uses: the runner all of them,
`outq-sendmail` only `enqueue_program` and the address keys it applies
([`Rewriting`]), so a typo in a runner-only key never stops a submission.
*/
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use outq_spool::config::Config;

use crate::duration;

/// Every runner key with a one-line description (`outq.conf(5)` documents
/// each; a test checks it).
pub const RUNNER_KEYS: &[(&str, &str)] = &[
    ("relay", "where to deliver: smtp://, smtps://, maildir: or pipe:"),
    ("queue_run_interval", "how often the whole queue is scanned"),
    ("shutdown_timeout", "how long deliveries may finish after SIGTERM"),
    ("minimal_backoff_time", "shortest wait before a retry"),
    ("maximal_backoff_time", "longest wait before a retry"),
    ("maximal_queue_lifetime", "age after which undelivered recipients fail"),
    ("tmp_max_age", "age after which an unlockable file in tmp/ is removed"),
    ("failed_max_age", "age after which a failed entry is removed"),
    ("max_rcpt_per_transaction", "most recipients in one SMTP transaction"),
    ("connections", "parallel deliveries"),
    ("connect_timeout", "limit for establishing a connection"),
    ("command_timeout", "limit for each SMTP command's reply"),
    ("data_timeout", "limit for sending the message and its final reply"),
    ("relay_failure_limit", "consecutive failures after which a relay is skipped for a queue run interval"),
    ("starttls", "opportunistic, required or off"),
    ("tls_ca_file", "CA certificates for the relay instead of the system's"),
    ("relay_auth_file", "credentials for SMTP AUTH"),
    ("delay_warning_time", "send a delay notice after this long (0s: never)"),
    ("enqueue_program", "the helper outq-sendmail runs"),
];

/// The keys about addresses: how bare names are qualified, where local
/// mail goes, and masquerading (documented in outq.conf(5), ADDRESS KEYS).
pub const ADDRESS_KEYS: &[(&str, &str)] = &[
    ("myorigin", "domain that qualifies bare addresses (default: myhostname)"),
    ("alias_file", "the aliases file the runner applies (default /etc/aliases)"),
    ("admin_address", "where mail for local names no alias knows goes"),
    ("masquerade_domain", "domain that replaces this host's name in senders"),
    ("masquerade_users", "local parts masqueraded (empty: all)"),
];

/// The default aliases file; a missing file means no aliases.
pub const DEFAULT_ALIAS_FILE: &str = "/etc/aliases";

/// Whether outq knows `key` at all (the helper's, the runner's or an
/// address key).
pub fn is_known_key(key: &str) -> bool {
    is_runner_key(key)
        || ADDRESS_KEYS.iter().any(|(k, _)| *k == key)
        || outq_spool::config::KEYS.iter().any(|(k, _)| *k == key)
}

/// What outq-sendmail applies to headers and envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewriting {
    /// This host's name (`myhostname`, `/etc/mailname` or the kernel's).
    pub myhostname: String,
    /// The domain that qualifies bare addresses.
    pub myorigin: String,
    /// Replaces this host's names in the envelope sender and `From:`.
    pub masquerade_domain: Option<String>,
    /// Local parts to masquerade; empty means every one.
    pub masquerade_users: Vec<String>,
}

impl Rewriting {
    /// The address keys outq-sendmail uses; no other key is looked at.
    pub fn from_config(cfg: &Config) -> Result<Rewriting, KeyError> {
        let myhostname = outq_spool::config::effective_hostname(cfg);
        let myorigin = domain_key(cfg, "myorigin")?.unwrap_or_else(|| myhostname.clone());
        let masquerade_domain = domain_key(cfg, "masquerade_domain")?;
        let masquerade_users = match cfg.other.get("masquerade_users") {
            None => Vec::new(),
            Some(s) => {
                let users: Vec<String> = s
                    .value
                    .split(|c: char| c == ',' || c.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = users.iter().find(|u| !is_local_part(u)) {
                    return Err(KeyError {
                        line: s.line,
                        message: format!("masquerade_users: {bad:?} is not a local part"),
                    });
                }
                users
            }
        };
        Ok(Rewriting { myhostname, myorigin, masquerade_domain, masquerade_users })
    }

    /// Whether `domain` is one of this host's names: `myhostname`,
    /// `myorigin` or `localhost` (any case).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        [self.myhostname.as_str(), self.myorigin.as_str(), "localhost"].iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// What the runner needs to apply aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aliasing {
    pub alias_file: PathBuf,
    /// Catch-all for local names no alias knows; `None`: none.
    pub admin_address: Option<outq_spool::address::Mailbox>,
    /// The names that make an address local: `myhostname`, `myorigin`,
    /// `localhost`.
    pub local_domains: Vec<String>,
    /// The domain a local name without alias keeps on its way to the relay.
    pub myorigin: String,
}

impl Aliasing {
    pub fn from_config(cfg: &Config) -> Result<Aliasing, KeyError> {
        let r = Rewriting::from_config(cfg)?;
        let alias_file = match cfg.other.get("alias_file") {
            None => PathBuf::from(DEFAULT_ALIAS_FILE),
            Some(s) if s.value.starts_with('/') => PathBuf::from(&s.value),
            Some(s) => return Err(KeyError { line: s.line, message: "alias_file: must be an absolute path".into() }),
        };
        let admin_address = match cfg.other.get("admin_address") {
            Some(s) if !s.value.is_empty() => {
                Some(outq_spool::address::Mailbox::parse(s.value.as_bytes()).map_err(|e| KeyError {
                    line: s.line,
                    message: format!("admin_address: {e} (give a full address such as admin@example.org)"),
                })?)
            }
            _ => None,
        };
        let mut local_domains = vec![r.myhostname.to_ascii_lowercase()];
        for d in [r.myorigin.to_ascii_lowercase(), "localhost".to_owned()] {
            if !local_domains.contains(&d) {
                local_domains.push(d);
            }
        }
        Ok(Aliasing { alias_file, admin_address, local_domains, myorigin: r.myorigin })
    }
}

fn is_local_part(s: &str) -> bool {
    outq_spool::address::Mailbox::parse_or_qualify(s.as_bytes(), "localhost").is_ok() && !s.contains('@')
}

/// A key whose value is a domain name; `None` when it is not set.
fn domain_key(cfg: &Config, key: &str) -> Result<Option<String>, KeyError> {
    match cfg.other.get(key) {
        None => Ok(None),
        Some(s) if s.value.is_empty() => Ok(None),
        Some(s) if outq_spool::address::is_domain(s.value.as_bytes()) => Ok(Some(s.value.clone())),
        Some(s) => Err(KeyError { line: s.line, message: format!("{key}: must be a domain name such as example.org") }),
    }
}

/// `enqueue_program`, the one runner key outq-sendmail reads.
pub fn enqueue_program(cfg: &Config) -> Result<PathBuf, KeyError> {
    match cfg.other.get("enqueue_program") {
        None => Ok(PathBuf::from(outq_spool::config::ENQUEUE_PROGRAM)),
        Some(s) if s.value.starts_with('/') => Ok(PathBuf::from(&s.value)),
        Some(s) => Err(KeyError { line: s.line, message: "enqueue_program: must be an absolute path".into() }),
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// `smtp://host[:port]` or, with `implicit_tls`, `smtps://host[:port]`.
    Smtp { host: String, port: u16, implicit_tls: bool },
    /// `maildir:/path`
    Maildir(PathBuf),
    /// `pipe:/absolute/program args...`
    Pipe(Vec<String>),
}

/// STARTTLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Opportunistic,
    Required,
    Off,
}

/// The runner's settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Tried in order; more than one only for SMTP relays.
    pub relays: Vec<Relay>,
    pub queue_run_interval: Duration,
    pub shutdown_timeout: Duration,
    pub minimal_backoff_time: Duration,
    pub maximal_backoff_time: Duration,
    pub maximal_queue_lifetime: Duration,
    pub tmp_max_age: Duration,
    pub failed_max_age: Duration,
    pub max_rcpt_per_transaction: usize,
    pub connections: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Consecutive session failures that make the runner skip a relay for
    /// `queue_run_interval` (0: never skip).
    pub relay_failure_limit: u32,
    pub starttls: StartTls,
    pub tls_ca_file: Option<PathBuf>,
    pub relay_auth_file: Option<PathBuf>,
    /// `None`: no delay warnings (the default).
    pub delay_warning_time: Option<Duration>,
    pub enqueue_program: PathBuf,
}

impl Default for RunnerConfig {
    fn default() -> RunnerConfig {
        let min = |m: u64| Duration::from_secs(m * 60);
        RunnerConfig {
            relays: vec![Relay::Smtp { host: "127.0.0.1".into(), port: 25, implicit_tls: false }],
            queue_run_interval: min(5),
            shutdown_timeout: Duration::from_secs(30),
            minimal_backoff_time: min(5),
            maximal_backoff_time: Duration::from_secs(4000),
            maximal_queue_lifetime: Duration::from_secs(5 * 86_400),
            tmp_max_age: Duration::from_secs(86_400),
            failed_max_age: Duration::from_secs(30 * 86_400),
            max_rcpt_per_transaction: 50,
            connections: 4,
            // RFC 5321 4.5.3.2: 5 minutes for the greeting and each command,
            // 10 minutes for the reply to the end of data.
            connect_timeout: Duration::from_secs(30),
            command_timeout: min(5),
            data_timeout: min(10),
            relay_failure_limit: 3,
            starttls: StartTls::Opportunistic,
            tls_ca_file: None,
            relay_auth_file: None,
            delay_warning_time: None,
            enqueue_program: PathBuf::from(outq_spool::config::ENQUEUE_PROGRAM),
        }
    }
}

/// A runner key's problem, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Whether `key` is a runner key.
pub fn is_runner_key(key: &str) -> bool {
    RUNNER_KEYS.iter().any(|(k, _)| *k == key)
}

fn parse_host_port(rest: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (h.to_owned(), port)
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (rest.to_owned(), default_port),
        },
    };
    let ok = !host.is_empty()
        && (outq_spool::address::is_domain(host.as_bytes()) || host.parse::<std::net::IpAddr>().is_ok())
        && port != 0;
    ok.then_some((host, port))
}

/// Parse a `relay` value.
pub fn parse_relays(value: &str) -> Result<Vec<Relay>, String> {
    if let Some(path) = value.strip_prefix("maildir:") {
        let p = PathBuf::from(path.trim());
        if !p.is_absolute() {
            return Err("maildir: needs an absolute path".into());
        }
        return Ok(vec![Relay::Maildir(p)]);
    }
    if let Some(cmd) = value.strip_prefix("pipe:") {
        let argv: Vec<String> = cmd.split_ascii_whitespace().map(str::to_owned).collect();
        match argv.first() {
            Some(prog) if prog.starts_with('/') => return Ok(vec![Relay::Pipe(argv)]),
            _ => return Err("pipe: needs an absolute program path".into()),
        }
    }
    let mut relays = Vec::new();
    for url in value.split(|c: char| c == ',' || c.is_ascii_whitespace()).filter(|s| !s.is_empty()) {
        let (rest, implicit_tls, default_port) = if let Some(r) = url.strip_prefix("smtp://") {
            (r, false, 25)
        } else if let Some(r) = url.strip_prefix("smtps://") {
            (r, true, 465)
        } else {
            return Err(format!(
                "{url:?} is not smtp://host[:port], smtps://host[:port], maildir:/path or pipe:/program"
            ));
        };
        let (host, port) = parse_host_port(rest.trim_end_matches('/'), default_port)
            .ok_or_else(|| format!("{url:?} does not name a host and port"))?;
        relays.push(Relay::Smtp { host, port, implicit_tls });
    }
    if relays.is_empty() {
        return Err("relay is empty".into());
    }
    Ok(relays)
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{value:?} is not a positive number")),
    }
}

impl RunnerConfig {
    /// Validate the runner's keys from a parsed file.
    pub fn from_config(cfg: &Config) -> Result<RunnerConfig, KeyError> {
        // The runner uses the whole file: a line the helper tolerated
        // (see outq_spool::config) stops it.
        if let Some(p) = cfg.problems.first() {
            return Err(KeyError { line: p.line, message: p.message.clone() });
        }
        let mut rc = RunnerConfig::default();
        for (key, setting) in &cfg.other {
            if !is_runner_key(key) {
                continue;
            }
            let v = setting.value.as_str();
            let err = |message: String| KeyError { line: setting.line, message: format!("{key}: {message}") };
            let dur = || duration::parse(v).map_err(err);
            // Intervals and timeouts of zero would spin or fail at once.
            let nonzero = || match duration::parse(v) {
                Ok(d) if d.is_zero() => Err(err("must be longer than 0s".into())),
                r => r.map_err(err),
            };
            match key.as_str() {
                "relay" => rc.relays = parse_relays(v).map_err(err)?,
                "queue_run_interval" => rc.queue_run_interval = nonzero()?,
                "shutdown_timeout" => rc.shutdown_timeout = dur()?,
                "minimal_backoff_time" => rc.minimal_backoff_time = dur()?,
                "maximal_backoff_time" => rc.maximal_backoff_time = dur()?,
                "maximal_queue_lifetime" => rc.maximal_queue_lifetime = dur()?,
                "tmp_max_age" => rc.tmp_max_age = dur()?,
                "failed_max_age" => rc.failed_max_age = dur()?,
                "max_rcpt_per_transaction" => rc.max_rcpt_per_transaction = positive(v).map_err(err)?,
                "connections" => rc.connections = positive(v).map_err(err)?,
                "relay_failure_limit" => {
                    rc.relay_failure_limit = v.parse().map_err(|_| err(format!("{v:?} is not a whole number")))?
                }
                "connect_timeout" => rc.connect_timeout = nonzero()?,
                "command_timeout" => rc.command_timeout = nonzero()?,
                "data_timeout" => rc.data_timeout = nonzero()?,
                "starttls" => {
                    rc.starttls = match v {
                        "opportunistic" => StartTls::Opportunistic,
                        "required" => StartTls::Required,
                        "off" => StartTls::Off,
                        _ => return Err(err("must be opportunistic, required or off".into())),
                    }
                }
                "delay_warning_time" => {
                    let d = dur()?;
                    rc.delay_warning_time = (!d.is_zero()).then_some(d);
                }
                "tls_ca_file" | "relay_auth_file" | "enqueue_program" => {
                    let p = PathBuf::from(v);
                    if !p.is_absolute() {
                        return Err(err("must be an absolute path".into()));
                    }
                    match key.as_str() {
                        "tls_ca_file" => rc.tls_ca_file = Some(p),
                        "relay_auth_file" => rc.relay_auth_file = Some(p),
                        _ => rc.enqueue_program = p,
                    }
                }
                _ => {}
            }
        }
        if rc.minimal_backoff_time > rc.maximal_backoff_time {
            let line = cfg.other.get("minimal_backoff_time").map(|s| s.line).unwrap_or(0);
            return Err(KeyError { line, message: "minimal_backoff_time is longer than maximal_backoff_time".into() });
        }
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(text: &str) -> Result<RunnerConfig, KeyError> {
        RunnerConfig::from_config(&outq_spool::config::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn defaults() {
        assert_eq!(rc("").unwrap(), RunnerConfig::default());
    }

    #[test]
    fn relays() {
        assert_eq!(
            parse_relays("smtp://mx.example.org, smtps://[2001:db8::1]:4465 smtp://192.0.2.1:2525").unwrap(),
            vec![
                Relay::Smtp { host: "mx.example.org".into(), port: 25, implicit_tls: false },
                Relay::Smtp { host: "2001:db8::1".into(), port: 4465, implicit_tls: true },
                Relay::Smtp { host: "192.0.2.1".into(), port: 2525, implicit_tls: false },
            ]
        );
        assert_eq!(parse_relays("maildir:/srv/mail").unwrap(), vec![Relay::Maildir("/srv/mail".into())]);
        assert_eq!(
            parse_relays("pipe:/usr/bin/deliver -x").unwrap(),
            vec![Relay::Pipe(vec!["/usr/bin/deliver".into(), "-x".into()])]
        );
        for bad in ["", "http://x", "smtp://", "smtp://a b:0", "maildir:rel", "pipe:prog", "smtp://x:99999"] {
            assert!(parse_relays(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn address_keys() {
        let cfg = |t: &str| outq_spool::config::parse(t.as_bytes()).unwrap();
        let r = Rewriting::from_config(&cfg("myhostname = h.example\n")).unwrap();
        assert_eq!((r.myorigin.as_str(), r.masquerade_domain.clone()), ("h.example", None));
        assert!(r.is_local_domain("H.EXAMPLE") && r.is_local_domain("localhost") && !r.is_local_domain("x.example"));
        let r = Rewriting::from_config(&cfg(
            "myhostname = h.example\nmyorigin = example.org\nmasquerade_domain = example.org\n\
             masquerade_users = root, www-data\n",
        ))
        .unwrap();
        assert_eq!(r.myorigin, "example.org");
        assert_eq!(r.masquerade_users, ["root", "www-data"]);
        assert!(Rewriting::from_config(&cfg("masquerade_domain =\nmasquerade_users =\n")).is_ok());
        for bad in ["myorigin = not a domain", "masquerade_domain = -x", "masquerade_users = a@b"] {
            assert!(Rewriting::from_config(&cfg(bad)).is_err(), "{bad}");
        }
        // outq-sendmail's keys do not include the runner's: a bad relay or
        // admin_address does not stop it.
        assert!(Rewriting::from_config(&cfg("relay = nowhere\nadmin_address = nobody\n")).is_ok());
        let a = Aliasing::from_config(&cfg("myhostname = h.example\nadmin_address = boss@example.org\n")).unwrap();
        assert_eq!(a.alias_file, PathBuf::from(DEFAULT_ALIAS_FILE));
        assert_eq!(a.admin_address.map(|m| m.to_string()).as_deref(), Some("boss@example.org"));
        assert_eq!(a.local_domains, ["h.example", "localhost"]);
        assert!(Aliasing::from_config(&cfg("admin_address = nobody")).is_err());
        assert!(Aliasing::from_config(&cfg("alias_file = aliases")).is_err());
        assert!(Aliasing::from_config(&cfg("admin_address =")).unwrap().admin_address.is_none());
        assert!(is_known_key("myorigin") && is_known_key("relay") && is_known_key("myhostname"));
        assert!(!is_known_key("relai"));
    }

    #[test]
    fn errors_carry_the_line() {
        let e = rc("\n\nconnections = 0\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(rc("starttls = maybe").is_err());
        assert!(rc("queue_run_interval = 5").is_err());
        assert!(rc("queue_run_interval = 0s").is_err());
        assert!(rc("command_timeout = 0m").is_err());
        assert!(rc("shutdown_timeout = 0s").is_ok());
        assert!(rc("minimal_backoff_time = 2h\nmaximal_backoff_time = 1h").is_err());
    }
}
