/*!
SMTP and SMTPS delivery to the configured relays, one connection kept open
across messages.

- [`client`]: the connection: deadlines, bounded replies parsed with
  `smtp-proto`, TLS upgrade;
- [`tls`]: trust anchors and server names for rustls;
- [`auth`]: `relay_auth_file` and AUTH PLAIN / LOGIN.

Session set-up, per relay address in order: connect (`connect_timeout`),
TLS at once for `smtps://`, greeting, EHLO (HELO when EHLO is refused with
5xx), STARTTLS by the `starttls` policy then EHLO again, AUTH when
`relay_auth_file` is set and the relay offers AUTH. Any failure before the
first MAIL FROM (connect error, timeout, a greeting other than 2xx, TLS,
authentication) moves on to the next address, then the next relay; when
all fail, every recipient is deferred with the reasons.

Decisions the interface left open:
- `starttls = opportunistic` uses STARTTLS when offered and checks the
  certificate as always. If the relay refuses STARTTLS, the session goes on
  in the clear; if the handshake or the certificate check fails, the
  connection is unusable, so the address is reconnected once without
  STARTTLS. Both log a warning. That is all "opportunistic" can promise: an
  attacker able to break TLS can also strip the STARTTLS offer. Under
  `required` the same failures are temporary failures.
- Credentials are sent only over TLS, or to a loopback address (127/8,
  ::1), where nothing crosses a network. A rejected login (535 and any
  other refusal of AUTH) is a temporary failure: the operator can fix the
  credentials. A 530 reply to MAIL FROM ("authentication required") is
  temporary for the same reason.
- SIZE: the size declared is the Received line plus the message as stored,
  a lower bound of what the encoded DATA will be (encoding only adds
  bytes), so a message refused beforehand as too large really is; a message
  that only turns out too large after encoding is refused by the server at
  the end of the data, which is permanent as well.
- A connection kept between messages is checked with RSET before it is
  used; if that fails it is replaced once, transparently.
- PIPELINING (RFC 2920), when the relay offers it: the RSET of a kept
  connection, MAIL FROM, every RCPT TO and DATA go out in one write, and
  the replies are read in order, each deciding what it decided in
  lock-step (see [`Smtp::exchange`]). DATA is in the group: RFC 2920 lets
  it end one, and the case that makes that delicate, no recipient
  accepted, is handled as the RFC asks: a refused DATA is followed by
  RSET, an accepted one by a lone `.` (no message data), then RSET. The
  message itself is sent only after a 354. A group holds at most
  [`GROUP_BYTES`] of commands, so writing it can never block while the
  server waits for its replies to be read (the deadlock of RFC 2920 3.1).
  Without PIPELINING, every command waits for its reply, as before.
- A reply that no command asked for, or one of a class that makes no sense
  where it came, means the replies no longer match their commands. In
  lock-step that is seen before the next command and the verdicts read
  until then stand; in a pipelined group it may be seen only at the end,
  so then no verdict of the group is trusted: its recipients are all
  deferred. A lost connection (or 421) in the middle of a group keeps the
  verdicts of the replies read before it, as in lock-step.
- QUIT waits at most [`QUIT_TIMEOUT`] for its reply: nothing depends on it.
*/
#![forbid(unsafe_code)]

pub mod auth;
pub mod breaker;
pub mod client;
pub mod tls;

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use smtp_proto::EhloResponse;

use self::auth::{AuthError, Credentials, Mechanism};
use self::client::{Broken, Conn, Reply, describe};
use super::wire::DataEncoder;
use super::{Outcome, Outgoing, Status, Transport};
use crate::config::{Relay, RunnerConfig, StartTls};

/// Longest wait for the reply to QUIT.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of commands written in one pipelined group before their
/// replies are read: far below any TCP send buffer, so the write completes
/// at once even when the server is not reading until it can write its
/// replies.
pub const GROUP_BYTES: usize = 4096;

/// One configured relay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    implicit_tls: bool,
}

/// What the relay offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offers {
    starttls: bool,
    /// smtp-proto's AUTH mechanism bits; 0 without AUTH.
    auth: u64,
    /// Whether SIZE was advertised; `size_limit` 0 means no fixed limit.
    size: bool,
    size_limit: u64,
    /// Whether PIPELINING (RFC 2920) was advertised.
    pipelining: bool,
}

/// An established session, ready for MAIL FROM.
#[derive(Debug)]
struct Session {
    conn: Conn,
    offers: Offers,
    /// The relay as configured (`host:port`), the breaker's key.
    target: String,
}

/// How far `outq check --relay` got with one relay address.
#[derive(Debug, Clone)]
pub struct Probe {
    pub relay: String,
    /// What worked, in order.
    pub steps: Vec<String>,
    /// The step that failed, if one did.
    pub failure: Option<String>,
}

impl Offers {
    /// The extensions that matter to delivery, for `outq check --relay`.
    fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.starttls {
            v.push("STARTTLS".to_owned());
        }
        if self.auth != 0 {
            v.push("AUTH".to_owned());
        }
        if self.size {
            v.push(if self.size_limit > 0 { format!("SIZE {}", self.size_limit) } else { "SIZE".to_owned() });
        }
        if self.pipelining {
            v.push("PIPELINING".to_owned());
        }
        if v.is_empty() { "no extensions outq uses".to_owned() } else { v.join(", ") }
    }
}

/// Why one relay address could not be used.
#[derive(Debug)]
enum SetupError {
    /// TLS could not be set up over the plaintext connection; under the
    /// opportunistic policy the address is tried again without STARTTLS.
    Tls(String),
    Other(String),
}

impl SetupError {
    fn text(self) -> String {
        match self {
            SetupError::Tls(s) | SetupError::Other(s) => s,
        }
    }
}

impl From<Broken> for SetupError {
    fn from(b: Broken) -> SetupError {
        SetupError::Other(b.0)
    }
}

/// Timeouts from the configuration.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    command: Duration,
    data: Duration,
}

/// SMTP relays, tried in order, with the connection kept between messages.
#[derive(Debug)]
pub struct Smtp {
    targets: Vec<Target>,
    myhostname: String,
    timeouts: Timeouts,
    starttls: StartTls,
    /// The TLS settings, or why there are none (reported when TLS is needed).
    tls: Result<Arc<ClientConfig>, String>,
    auth_file: Option<PathBuf>,
    max_rcpt: usize,
    breaker: breaker::Breaker,
    session: Option<Session>,
    /// Steps of session set-up, recorded only for `outq check --relay`.
    trace: std::cell::RefCell<Option<Vec<String>>>,
}

/// Whether `name` may follow EHLO: a domain or an address literal. Checked
/// once, so nothing from the host's name can add a command to the stream.
fn valid_ehlo_name(name: &str) -> bool {
    if outq_spool::address::is_domain(name.as_bytes()) {
        return true;
    }
    match name.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(lit) => match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        },
        None => false,
    }
}

/// Credentials may travel in the clear only to the local host.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `host[ip]:port`, the relay as logged.
fn relay_name(host: &str, addr: &SocketAddr) -> String {
    format!("{host}[{}]:{}", addr.ip(), addr.port())
}

impl Target {
    /// `host:port`, as configured.
    fn key(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Smtp {
    /// Check the settings. A `tls_ca_file` that cannot be used is an error
    /// here (a configuration mistake to report at start); a system trust
    /// store without certificates is reported when TLS is first needed.
    pub fn new(cfg: &RunnerConfig, myhostname: &str) -> Result<Smtp, String> {
        if !valid_ehlo_name(myhostname) {
            return Err(format!("{myhostname:?} is not a domain name or address literal to greet relays with"));
        }
        let targets: Vec<Target> = cfg
            .relays
            .iter()
            .filter_map(|r| match r {
                Relay::Smtp { host, port, implicit_tls } => {
                    Some(Target { host: host.clone(), port: *port, implicit_tls: *implicit_tls })
                }
                _ => None,
            })
            .collect();
        if targets.is_empty() || targets.len() != cfg.relays.len() {
            return Err("SMTP delivery needs smtp:// or smtps:// relays only".into());
        }
        let needs_tls = cfg.starttls != StartTls::Off || targets.iter().any(|t| t.implicit_tls);
        let tls = match (&cfg.tls_ca_file, needs_tls) {
            (Some(path), _) => Ok(tls::client_config(Some(path))?),
            (None, true) => tls::client_config(None),
            (None, false) => Err("TLS is not configured".into()),
        };
        Ok(Smtp {
            targets,
            myhostname: myhostname.to_owned(),
            timeouts: Timeouts { connect: cfg.connect_timeout, command: cfg.command_timeout, data: cfg.data_timeout },
            starttls: cfg.starttls,
            tls,
            auth_file: cfg.relay_auth_file.clone(),
            max_rcpt: cfg.max_rcpt_per_transaction.max(1),
            breaker: breaker::Breaker { limit: cfg.relay_failure_limit, open_for: cfg.queue_run_interval },
            session: None,
            trace: std::cell::RefCell::new(None),
        })
    }

    /// `host:port` of the first relay, for failures before any connection.
    fn first_relay(&self) -> String {
        self.targets.first().map(|t| format!("{}:{}", t.host, t.port)).unwrap_or_default()
    }

    /// A session on the first relay that works. On failure: the reasons,
    /// and the relay last tried.
    fn open(&self) -> Result<Session, (String, String)> {
        // Read before connecting: a refused file fails every relay alike.
        let creds = match &self.auth_file {
            Some(path) => Some(auth::read_file(path).map_err(|e| (e, self.first_relay()))?),
            None => None,
        };
        let mut reasons = Vec::new();
        let mut last = self.first_relay();
        for target in &self.targets {
            let key = target.key();
            if let Some(why) = self.breaker.skip(&key) {
                last = key;
                reasons.push(why);
                continue;
            }
            let before = reasons.len();
            match self.open_target(target, creds.as_ref(), &mut reasons, &mut last) {
                Some(s) => {
                    self.breaker.success(&key);
                    return Ok(s);
                }
                None => {
                    let why = reasons.get(before..).map(|r| r.join("; ")).unwrap_or_default();
                    self.breaker.failure(&key, &why);
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no relay address to try".into());
        }
        Err((reasons.join("; "), last))
    }

    /// Every address of one relay in turn; failures are added to `reasons`.
    fn open_target(
        &self,
        target: &Target,
        creds: Option<&Credentials>,
        reasons: &mut Vec<String>,
        last: &mut String,
    ) -> Option<Session> {
        let addrs = match (target.host.as_str(), target.port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                *last = target.key();
                reasons.push(format!("cannot resolve {}: {}", target.host, describe(&e)));
                return None;
            }
        };
        for addr in addrs {
            *last = relay_name(&target.host, &addr);
            match self.setup(target, addr, creds, true) {
                Ok(s) => return Some(s),
                Err(SetupError::Tls(why)) if self.starttls == StartTls::Opportunistic => {
                    crate::logging::warning(&format!(
                        "{}; trying again without TLS (starttls = opportunistic)",
                        outq_spool::log::escape(why.as_bytes())
                    ));
                    match self.setup(target, addr, creds, false) {
                        Ok(s) => return Some(s),
                        Err(e) => reasons.push(format!("{why}; without TLS: {}", e.text())),
                    }
                }
                Err(e) => reasons.push(e.text()),
            }
        }
        None
    }

    /// Connect to one address and bring the session up to MAIL FROM.
    fn setup(
        &self,
        target: &Target,
        addr: SocketAddr,
        creds: Option<&Credentials>,
        try_starttls: bool,
    ) -> Result<Session, SetupError> {
        let relay = relay_name(&target.host, &addr);
        let t = &self.timeouts;
        let tcp = TcpStream::connect_timeout(&addr, t.connect)
            .map_err(|e| SetupError::Other(format!("connect to {relay}: {}", describe(&e))))?;
        let mut conn = Conn::new(tcp, relay.clone(), addr.ip())?;
        self.note(format!("connected to {relay}"));
        if target.implicit_tls {
            conn = self.start_tls(conn, target).map_err(SetupError::Other)?;
            self.note(format!("TLS (smtps) established, certificate verified for {}", target.host));
        }
        conn.set_timeout(t.command);
        let greeting = conn.read_reply("receiving the greeting")?;
        if greeting.class() != 2 {
            return Err(SetupError::Other(format!("{relay} refused to talk to us: {}", greeting.text)));
        }
        self.note(format!("greeting: {}", greeting.text));
        let mut offers = self.hello(&mut conn)?;
        self.note(format!("EHLO accepted; offers {}", offers.describe()));
        if !conn.is_tls() && self.starttls != StartTls::Off {
            if offers.starttls && try_starttls {
                let r = conn.command("STARTTLS", "sending STARTTLS", t.command)?;
                if r.class() == 2 {
                    conn = self.start_tls(conn, target).map_err(SetupError::Tls)?;
                    self.note(format!("STARTTLS established, certificate verified for {}", target.host));
                    offers = self.hello(&mut conn)?;
                } else if self.starttls == StartTls::Required {
                    return Err(SetupError::Other(format!("{relay} refused STARTTLS: {}", r.text)));
                } else {
                    // The refusal leaves the session as it was: go on in
                    // the clear on the same connection.
                    crate::logging::warning(&outq_spool::log::escape(
                        format!(
                            "{relay} refused STARTTLS: {}; going on without TLS (starttls = opportunistic)",
                            r.text
                        )
                        .as_bytes(),
                    ));
                }
            } else if self.starttls == StartTls::Required {
                return Err(SetupError::Other(format!(
                    "{relay} does not offer STARTTLS, and starttls = required \
                     (fix: enable STARTTLS on the relay, use smtps://, or set starttls = opportunistic)"
                )));
            }
        }
        if let Some(c) = creds {
            if offers.auth != 0 {
                self.login(&mut conn, offers.auth, c)?;
                self.note("AUTH accepted the credentials of relay_auth_file".to_owned());
            } else {
                self.note("the relay does not offer AUTH: relay_auth_file is not used".to_owned());
            }
        }
        Ok(Session { conn, offers, target: target.key() })
    }

    fn note(&self, step: String) {
        if let Some(steps) = self.trace.borrow_mut().as_mut() {
            steps.push(step);
        }
    }

    /// `outq check --relay`: set up a session with every address of every
    /// relay, as delivery would (TLS policy, certificate, AUTH), send no
    /// mail, and say how far each got.
    pub fn probe(&self) -> Vec<Probe> {
        let mut out = Vec::new();
        let creds = match &self.auth_file {
            Some(path) => match auth::read_file(path) {
                Ok(c) => Some(c),
                Err(e) => {
                    out.push(Probe { relay: self.first_relay(), steps: Vec::new(), failure: Some(e) });
                    return out;
                }
            },
            None => None,
        };
        for target in &self.targets {
            let addrs = match (target.host.as_str(), target.port).to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    let why = format!("cannot resolve {}: {}", target.host, describe(&e));
                    out.push(Probe { relay: target.key(), steps: Vec::new(), failure: Some(why) });
                    continue;
                }
            };
            for addr in addrs {
                *self.trace.borrow_mut() = Some(Vec::new());
                let result = self.setup(target, addr, creds.as_ref(), true);
                let steps = self.trace.borrow_mut().take().unwrap_or_default();
                let failure = match result {
                    Ok(s) => {
                        s.conn.quit(QUIT_TIMEOUT.min(self.timeouts.command));
                        None
                    }
                    Err(e) => Some(e.text()),
                };
                out.push(Probe { relay: relay_name(&target.host, &addr), steps, failure });
            }
        }
        out
    }

    fn start_tls(&self, conn: Conn, target: &Target) -> Result<Conn, String> {
        let config = self.tls.as_ref().map_err(|e| format!("no TLS with {}: {e}", conn.relay))?;
        let name = tls::server_name(&target.host)?;
        conn.start_tls(Arc::clone(config), name, self.timeouts.command).map_err(|b| b.0)
    }

    /// EHLO, or HELO when EHLO is refused permanently.
    fn hello(&self, conn: &mut Conn) -> Result<Offers, SetupError> {
        let t = self.timeouts.command;
        let r = conn.command(&format!("EHLO {}", self.myhostname), "sending EHLO", t)?;
        match r.class() {
            2 => Ok(offers(&r)),
            5 => {
                let h = conn.command(&format!("HELO {}", self.myhostname), "sending HELO", t)?;
                if h.class() == 2 {
                    Ok(Offers::default())
                } else {
                    Err(SetupError::Other(format!("{} refused HELO: {}", conn.relay, h.text)))
                }
            }
            _ => Err(SetupError::Other(format!("{} refused EHLO: {}", conn.relay, r.text))),
        }
    }

    fn login(&self, conn: &mut Conn, offered: u64, c: &Credentials) -> Result<(), SetupError> {
        let relay = conn.relay.clone();
        if !conn.is_tls() && !is_loopback(conn.peer_ip) {
            return Err(SetupError::Other(format!(
                "not sending credentials to {relay} without TLS \
                 (fix: starttls = opportunistic or required with a relay offering STARTTLS, or smtps://)"
            )));
        }
        let mech = Mechanism::choose(offered)
            .ok_or_else(|| SetupError::Other(format!("{relay} offers neither AUTH PLAIN nor AUTH LOGIN")))?;
        auth::authenticate(conn, mech, c, self.timeouts.command).map_err(|e| match e {
            AuthError::Broken(b) => SetupError::Other(b.0),
            AuthError::Refused(text) => {
                let file = self.auth_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                SetupError::Other(format!(
                    "{relay} rejected the credentials: {text} (fix: check relay_auth_file {file})"
                ))
            }
        })
    }

    /// One transaction for `msg.recipients[range]`, begun with RSET when
    /// `probe` (a kept connection). Outcomes the server decided are written
    /// to `out`; whatever is still `None` after an error was left
    /// unfinished.
    fn transaction(
        &self,
        s: &mut Session,
        msg: &Outgoing<'_>,
        range: std::ops::Range<usize>,
        out: &mut [Option<Outcome>],
        probe: bool,
    ) -> Result<(), Stop> {
        let mut decided = Vec::new();
        let result = self.exchange(s, msg, range, &mut decided, probe);
        // Verdicts read before a reply out of step are trusted only when
        // that was seen before the next command went out (lock-step).
        let trusted = match &result {
            Err(Stop::OutOfStep(_)) => !s.offers.pipelining,
            _ => true,
        };
        if trusted {
            for (i, status, text) in decided {
                if let Some(o) = out.get_mut(i) {
                    *o = Some(Outcome::new(status, text, s.conn.relay.clone()));
                }
            }
        }
        result
    }

    /// The conversation of one transaction; each verdict is pushed to
    /// `decided` as (recipient index, status, reply) when its reply is read.
    fn exchange(
        &self,
        s: &mut Session,
        msg: &Outgoing<'_>,
        range: std::ops::Range<usize>,
        decided: &mut Vec<(usize, Status, String)>,
        probe: bool,
    ) -> Result<(), Stop> {
        let t = self.timeouts;
        let pipelined = s.offers.pipelining;
        let relay = s.conn.relay.clone();
        let steps = self.steps(s, msg, range.clone(), probe);
        let mut refused = false;
        let mut accepted = Vec::new();
        let mut data_reply = None;
        let mut sent = 0;
        let mut next = 0;
        while let Some((step, _)) = steps.get(next) {
            let step = *step;
            if next == sent {
                if refused {
                    // Nothing more is sent after a refused MAIL FROM.
                    break;
                }
                sent = send_window(&mut s.conn, &steps, next, pipelined, t.command)?;
            }
            next += 1;
            let r = match s.conn.reply(step.what(), t.command) {
                Ok(r) => r,
                Err(_) if step == Step::Probe => return Err(Stop::Stale),
                Err(b) => return Err(Stop::Broken(b)),
            };
            match step {
                Step::Probe if r.class() == 2 => {}
                Step::Probe => return Err(Stop::Stale),
                Step::Mail => {
                    let status = match (r.class(), r.code) {
                        (2, _) => continue,
                        (4, _) | (_, 530) => Status::Deferred,
                        (5, _) => Status::Failed,
                        _ => return Err(Stop::OutOfStep(unexpected(&relay, "MAIL FROM", &r))),
                    };
                    refused = true;
                    decided.extend(range.clone().map(|i| (i, status, r.text.clone())));
                }
                // Whatever the server says to RCPT after refusing MAIL FROM
                // (503, normally) changes nothing.
                Step::Rcpt(_) if refused => {}
                Step::Rcpt(i) => {
                    let status = match (r.class(), r.code) {
                        (2, _) => {
                            accepted.push(i);
                            continue;
                        }
                        // RFC 5321 4.5.3.1.10: 552 to RCPT is "too many
                        // recipients" from older servers, to be treated as
                        // temporary.
                        (4, _) | (_, 552) => Status::Deferred,
                        (5, _) => Status::Failed,
                        _ => return Err(Stop::OutOfStep(unexpected(&relay, "RCPT TO", &r))),
                    };
                    decided.push((i, status, r.text));
                }
                Step::Data => data_reply = Some(r),
            }
        }
        if pipelined && s.conn.has_unread() {
            let (b, closing) = s.conn.unsolicited("reading the replies to the pipelined commands");
            return Err(if closing { Stop::Broken(b) } else { Stop::OutOfStep(b) });
        }
        if refused || accepted.is_empty() {
            // RFC 2920 3.1: a DATA accepted although no recipient was gets
            // a lone dot, so that nothing is sent; then the transaction is
            // reset.
            if let Some(r) = data_reply {
                match r.class() {
                    3 if r.code == 354 => end_empty_data(&mut s.conn, t.data)?,
                    4 | 5 => {}
                    _ => return Err(Stop::OutOfStep(unexpected(&relay, "DATA", &r))),
                }
            }
            if refused && !pipelined {
                return Ok(());
            }
            return reset(&mut s.conn, t.command).map_err(Stop::Broken);
        }
        let r = match data_reply {
            Some(r) => r,
            None => s.conn.command("DATA", Step::Data.what(), t.command)?,
        };
        if r.code != 354 {
            let status = match r.class() {
                4 => Status::Deferred,
                5 => Status::Failed,
                _ => return Err(Stop::OutOfStep(unexpected(&relay, "DATA", &r))),
            };
            decided.extend(accepted.iter().map(|&i| (i, status, r.text.clone())));
            return reset(&mut s.conn, t.command).map_err(Stop::Broken);
        }
        send_message(&mut s.conn, msg, t.data)?;
        let r = s.conn.read_reply("waiting for the reply to the end of the message")?;
        let status = match r.class() {
            2 => Status::Sent,
            4 => Status::Deferred,
            5 => Status::Failed,
            _ => return Err(Stop::OutOfStep(unexpected(&relay, "the end of the message", &r))),
        };
        decided.extend(accepted.iter().map(|&i| (i, status, r.text.clone())));
        // 421 after the data: the verdict stands (4xx), but the server is
        // closing, so the connection must not be reused.
        if r.code == 421 { Err(Stop::Broken(Broken(r.text))) } else { Ok(()) }
    }

    /// The commands of one transaction with their lines (without CRLF).
    fn steps(
        &self,
        s: &Session,
        msg: &Outgoing<'_>,
        range: std::ops::Range<usize>,
        probe: bool,
    ) -> Vec<(Step, String)> {
        let mut steps = Vec::with_capacity(range.len().saturating_add(3));
        if probe {
            steps.push((Step::Probe, "RSET".to_owned()));
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.sender.as_str());
        if s.offers.size {
            mail.push_str(&format!(" SIZE={}", size_estimate(msg)));
        }
        steps.push((Step::Mail, mail));
        for i in range {
            if let Some(rcpt) = msg.recipients.get(i) {
                steps.push((Step::Rcpt(i), format!("RCPT TO:<{rcpt}>")));
            }
        }
        if s.offers.pipelining {
            steps.push((Step::Data, "DATA".to_owned()));
        }
        steps
    }
}

/// The commands of a transaction, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// RSET before a transaction on a kept connection: shows that the
    /// connection is still alive before anything depends on it.
    Probe,
    Mail,
    /// RCPT TO for the recipient of this index.
    Rcpt(usize),
    /// DATA as the last command of a pipelined group.
    Data,
}

impl Step {
    /// What the client was doing, for the reasons given when it fails.
    fn what(self) -> &'static str {
        match self {
            Step::Probe => "sending RSET",
            Step::Mail => "sending MAIL FROM",
            Step::Rcpt(_) => "sending RCPT TO",
            Step::Data => "sending DATA",
        }
    }
}

/// Why a transaction ended early.
#[derive(Debug)]
enum Stop {
    /// The kept connection failed its RSET: nothing was started on it, and
    /// a new one may be used instead.
    Stale,
    /// The connection is gone (lost, timed out, 421).
    Broken(Broken),
    /// The replies no longer match the commands (a reply nobody asked for,
    /// or one that makes no sense where it came).
    OutOfStep(Broken),
}

impl From<Broken> for Stop {
    fn from(b: Broken) -> Stop {
        Stop::Broken(b)
    }
}

impl Stop {
    /// The reason for the recipients left unfinished.
    fn reason(self) -> String {
        match self {
            Stop::Stale => "the connection was lost while idle".to_owned(),
            Stop::Broken(b) | Stop::OutOfStep(b) => b.0,
        }
    }
}

/// Write the commands of `steps` from `from` on: one in lock-step, else as
/// many as fit in [`GROUP_BYTES`] (at least one). Returns the index after
/// the last one written.
fn send_window(
    conn: &mut Conn,
    steps: &[(Step, String)],
    from: usize,
    pipelined: bool,
    timeout: Duration,
) -> Result<usize, Stop> {
    let first = steps.get(from).map_or(Step::Mail, |(step, _)| *step);
    if conn.has_unread() {
        // Every command sent so far has had its reply: what waits is a
        // reply out of step, or the server closing (421).
        let (b, closing) = conn.unsolicited(first.what());
        return Err(match (first, closing) {
            (Step::Probe, _) => Stop::Stale,
            (_, true) => Stop::Broken(b),
            (_, false) => Stop::OutOfStep(b),
        });
    }
    let mut bytes = Vec::new();
    let mut end = from;
    while let Some((_, line)) = steps.get(end) {
        if end > from && (!pipelined || bytes.len().saturating_add(line.len()).saturating_add(2) > GROUP_BYTES) {
            break;
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        end += 1;
    }
    match conn.send(&bytes, first.what(), timeout) {
        Ok(()) => Ok(end),
        Err(_) if first == Step::Probe => Err(Stop::Stale),
        Err(b) => Err(Stop::Broken(b)),
    }
}

/// End a DATA that the server accepted with no recipient: a lone dot, and
/// its reply, which decides nothing.
fn end_empty_data(conn: &mut Conn, timeout: Duration) -> Result<(), Broken> {
    const WHAT: &str = "ending a message without recipients";
    conn.send(b".\r\n", WHAT, timeout)?;
    conn.reply(WHAT, timeout).map(drop)
}

/// What the EHLO reply offers. A reply smtp-proto cannot parse offers
/// nothing: delivery still works, without extensions.
fn offers(r: &Reply) -> Offers {
    match EhloResponse::parse(&mut r.raw.iter()) {
        Ok(e) => Offers {
            starttls: e.has_capability(smtp_proto::EXT_START_TLS),
            auth: if e.has_capability(smtp_proto::EXT_AUTH) { e.auth() } else { 0 },
            size: e.has_capability(smtp_proto::EXT_SIZE),
            size_limit: e.size as u64,
            pipelining: e.has_capability(smtp_proto::EXT_PIPELINING),
        },
        Err(_) => Offers::default(),
    }
}

/// The SIZE declared: the Received line and its CRLF plus the message as
/// stored (a lower bound of the encoded size; see the module notes).
fn size_estimate(msg: &Outgoing<'_>) -> u64 {
    (msg.received.len() as u64).saturating_add(2).saturating_add(msg.size)
}

/// A reply of a class that makes no sense at this point.
fn unexpected(relay: &str, after: &str, r: &Reply) -> Broken {
    Broken(format!("{relay} sent an unexpected reply to {after}: {}", r.text))
}

/// RSET after a transaction that will not go on.
fn reset(conn: &mut Conn, timeout: Duration) -> Result<(), Broken> {
    let r = conn.command("RSET", "sending RSET", timeout)?;
    if r.class() == 2 { Ok(()) } else { Err(unexpected(&conn.relay.clone(), "RSET", &r)) }
}

/// Read errors of the entry, told apart from the socket's write errors.
struct EntryReader<'a, R: Read> {
    inner: &'a mut R,
    error: Option<io::Error>,
}

impl<R: Read> Read for EntryReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let kind = e.kind();
            self.error = Some(e);
            io::Error::new(kind, "reading the queued message")
        })
    }
}

/// Stream the Received line and the message through the DATA encoder, all
/// within `timeout`. The encoder gathers 60 KiB before each write, so the
/// socket sees few large writes and the final `.` leaves with a flush.
fn send_message(conn: &mut Conn, msg: &Outgoing<'_>, timeout: Duration) -> Result<(), Broken> {
    const WHAT: &str = "sending the message";
    conn.set_timeout(timeout);
    let mut body = msg.body();
    let mut entry = EntryReader { inner: &mut body, error: None };
    let sent = {
        // Room for the message and its CRs, up to the encoder's 64 KiB.
        let size = usize::try_from(msg.size).unwrap_or(usize::MAX);
        let expected = msg.received.len().saturating_add(size).saturating_add(size / 16).saturating_add(64);
        let mut enc = DataEncoder::with_capacity(conn.writer(), expected);
        enc.write_all(msg.received.as_bytes())
            .and_then(|()| enc.write_all(b"\r\n"))
            .and_then(|()| enc.copy_from(&mut entry))
            .and_then(|_| enc.finish().map(drop))
    };
    match (sent, entry.error) {
        (Ok(()), _) => Ok(()),
        // Never send the final dot after a short read: dropping the
        // connection makes the server discard the partial message.
        (Err(_), Some(e)) => Err(Broken(format!("cannot read the queued message: {}", describe(&e)))),
        (Err(e), None) => Err(conn.broken(&e, WHAT)),
    }
}

/// Why the message cannot go to this relay at all: larger than the fixed
/// limit its EHLO reply announced.
fn too_large(s: &Session, msg: &Outgoing<'_>) -> Option<String> {
    let estimate = size_estimate(msg);
    (s.offers.size_limit > 0 && estimate > s.offers.size_limit).then(|| {
        format!(
            "552 5.3.4 message size {estimate} exceeds the fixed maximum message size of {} bytes of {}",
            s.offers.size_limit, s.conn.relay
        )
    })
}

/// Give every recipient not yet decided this outcome.
fn fill(out: &mut [Option<Outcome>], status: Status, why: &str, relay: &str) {
    for o in out.iter_mut().filter(|o| o.is_none()) {
        *o = Some(Outcome::new(status, why.to_owned(), relay.to_owned()));
    }
}

/// The outcomes, a recipient left without one deferred.
fn finished(out: Vec<Option<Outcome>>, relay: &str) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::new(Status::Deferred, "no reply for this recipient", relay.to_owned())))
        .collect()
}

impl Transport for Smtp {
    fn deliver(&mut self, msg: &Outgoing<'_>) -> Vec<Outcome> {
        if msg.recipients.is_empty() {
            return Vec::new();
        }
        let (mut s, mut probe) = match self.session.take() {
            Some(s) => (s, true),
            None => match self.open() {
                Ok(s) => (s, false),
                Err((why, relay)) => return Outcome::all(msg, Status::Deferred, &why, &relay),
            },
        };
        if let Some(why) = too_large(&s, msg) {
            let relay = s.conn.relay.clone();
            // Nothing was started: the session stays usable.
            self.session = Some(s);
            return Outcome::all(msg, Status::Failed, &why, &relay);
        }
        let n = msg.recipients.len();
        let mut out: Vec<Option<Outcome>> = vec![None; n];
        let mut relay = s.conn.relay.clone();
        let mut alive = true;
        let mut start = 0;
        while start < n {
            let end = start.saturating_add(self.max_rcpt).min(n);
            match self.transaction(&mut s, msg, start..end, &mut out, probe) {
                Ok(()) => {}
                Err(Stop::Stale) if probe => {
                    // The kept connection died while idle (or the server
                    // changed its mind about us): start over, once.
                    probe = false;
                    match self.open() {
                        Ok(fresh) => s = fresh,
                        Err((why, last)) => {
                            fill(&mut out, Status::Deferred, &why, &last);
                            return finished(out, &last);
                        }
                    }
                    relay = s.conn.relay.clone();
                    if let Some(why) = too_large(&s, msg) {
                        fill(&mut out, Status::Failed, &why, &relay);
                        self.session = Some(s);
                        return finished(out, &relay);
                    }
                    continue;
                }
                Err(stop) => {
                    let why = stop.reason();
                    self.breaker.failure(&s.target, &why);
                    fill(&mut out, Status::Deferred, &why, &relay);
                    alive = false;
                    break;
                }
            }
            probe = false;
            start = end;
        }
        if alive {
            self.breaker.success(&s.target);
            self.session = Some(s);
        }
        finished(out, &relay)
    }

    fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.conn.quit(QUIT_TIMEOUT.min(self.timeouts.command));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &str) -> Reply {
        Reply { code: 250, text: String::new(), raw: raw.as_bytes().to_vec() }
    }

    #[test]
    fn reads_the_offers() {
        let o = offers(&reply(
            "250-relay.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n",
        ));
        assert_eq!(
            o,
            Offers {
                starttls: true,
                auth: smtp_proto::AUTH_LOGIN | smtp_proto::AUTH_PLAIN,
                size: true,
                size_limit: 10_240_000,
                pipelining: true,
            }
        );
        let o = offers(&reply("250-relay.example\r\n250 SIZE\r\n"));
        assert_eq!(o, Offers { size: true, ..Offers::default() });
        let o = offers(&reply("250-relay.example\r\n250 pipelining\r\n"));
        assert_eq!(o, Offers { pipelining: true, ..Offers::default() });
        assert_eq!(offers(&reply("250 relay.example\r\n")), Offers::default());
        assert_eq!(offers(&reply("250 relay.example\n")), Offers::default());
    }

    #[test]
    fn ehlo_names() {
        for ok in ["host.example.org", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]"] {
            assert!(valid_ehlo_name(ok), "{ok}");
        }
        for bad in ["", "a b", "host\r\nRCPT TO:<x@y>", "[300.1.1.1]", "-x", "host."] {
            assert!(!valid_ehlo_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn loopback_only_for_plaintext_credentials() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.3.2.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
        assert!(!is_loopback("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn new_checks_the_settings() {
        let cfg = RunnerConfig { starttls: StartTls::Off, ..RunnerConfig::default() };
        assert!(Smtp::new(&cfg, "host.example").is_ok());
        assert!(Smtp::new(&cfg, "bad host").unwrap_err().contains("not a domain name"));
        let maildir = RunnerConfig { relays: vec![Relay::Maildir("/x".into())], ..cfg.clone() };
        assert!(Smtp::new(&maildir, "host.example").is_err());
        let ca = RunnerConfig { tls_ca_file: Some("/nonexistent/ca.pem".into()), ..cfg };
        assert!(Smtp::new(&ca, "host.example").unwrap_err().contains("/nonexistent/ca.pem"));
    }
}
