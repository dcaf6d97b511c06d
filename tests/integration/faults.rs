/*!
The runner's SMTP fault matrix: the real `outq run --once` against a
scriptable SMTP server on loopback, one case per way a relay can fail.

For each case a message is submitted to a fresh spool (made by `outq init`,
owned by the runner's account: the current user, or `nobody` when the tests
run as root, every program then started through `setpriv`), and the runner
is run once against a server misbehaving as scripted. The test checks, from
the runner's log and the state file (`state/ID`: `rcpt <ADDR>
sent|pending|failed REPLY`), each recipient's outcome, where the entry
ended (removed, `deferred/`, `failed/`), and that the state file is exactly
the sum of the attempts. Then the server is healed (or the configuration
fixed), the entry made due (its state file's mtime is its next attempt),
and the runner run again: exactly the pending recipients must be retried.
A last run delivers the failure notices the runner queued for the sender.

The server records every transaction it accepted (RCPT 2xx, then 2xx to
the end of the data): each recipient must have been accepted exactly once
if it ended `sent`, never otherwise, so nothing accepted is sent twice.

The table printed at the end (`--nocapture`) summarises each case.

`runner_log_stderr_carries_transport_warnings` checks, separately, that a
warning of the SMTP transport (a STARTTLS downgrade) reaches the log the
runner was started with (`--log stderr`).
*/

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;

use crate::smtp_server::{Act, Opts, Server, pki, rcpt_by_local_part};
use crate::support::{Ran, bin, list, run_timeout};

/// Upper bound for one program run; a run takes well under a second except
/// in the timeout cases (2 s).
const TIMEOUT: Duration = Duration::from_secs(60);

const DOMAIN: &str = "faults.test";
const SENDER: &str = "sender@faults.test";
const MYHOSTNAME: &str = "client.faults.test";

const QUEUES: [&str; 8] = ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt", "state"];

// ---------------------------------------------------------------------------
// The runner's installation

/// A private spool made by `outq init`, owned by the account that runs
/// the runner: the current user, or `nobody` when we are root.
pub(crate) struct Dev {
    dir: tempfile::TempDir,
    bin: PathBuf,
    work: PathBuf,
    pub(crate) spool: PathBuf,
    pub(crate) config: PathBuf,
    as_nobody: bool,
    uid: u32,
    gid: u32,
    /// Whether the cases' servers advertise PIPELINING.
    pipelining: bool,
}

impl Dev {
    pub(crate) fn new(pipelining: bool) -> Dev {
        let dir = tempfile::Builder::new().prefix("oqt-faults-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let as_nobody = nix::unistd::geteuid().is_root();
        let (uid, gid) = if as_nobody {
            let u = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
            (u.uid.as_raw(), u.gid.as_raw())
        } else {
            (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
        };
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["outq", "outq-enqueue"] {
            let to = bin_dir.join(name);
            if std::fs::hard_link(bin(name), &to).is_err() {
                std::fs::copy(bin(name), &to).unwrap();
            }
        }
        let work = dir.path().join("work");
        let spool = work.join("spool");
        let config = dir.path().join("outq.conf");
        let dev = Dev { bin: bin_dir, work: work.clone(), spool, config, as_nobody, uid, gid, dir, pipelining };
        std::fs::create_dir(&work).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
        dev.own(&work);
        dev.configure("smtp://127.0.0.1:25", &[]);
        let (spool, config) = (dev.spool.display().to_string(), dev.config.display().to_string());
        let mut c = dev.cmd("outq");
        c.args(["init", "--spool", &spool, "--config", &config]);
        run_timeout(c, b"", TIMEOUT).assert_code(0);
        dev
    }

    /// The configuration: `relay`, short timeouts, one connection, no
    /// STARTTLS unless `settings` say otherwise.
    pub(crate) fn configure(&self, relay: &str, settings: &[(&str, &str)]) {
        let mut keys: BTreeMap<&str, String> = [
            ("spool_min_free", "0"),
            ("myhostname", MYHOSTNAME),
            ("connections", "1"),
            ("connect_timeout", "2s"),
            ("command_timeout", "2s"),
            ("data_timeout", "2s"),
            ("starttls", "off"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        keys.insert("relay", relay.to_owned());
        for (k, v) in settings {
            keys.insert(k, (*v).to_owned());
        }
        let text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        std::fs::write(&self.config, text).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub(crate) fn own(&self, path: &Path) {
        if self.as_nobody {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
        }
    }

    /// A file beside the configuration, readable by everyone.
    fn public_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// A file owned by the runner's account with `mode`.
    fn private_file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self.own(&p);
        p
    }

    /// A program from `bin/`, run as the runner's account.
    pub(crate) fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_nobody {
            let mut c = Command::new("/usr/bin/setpriv");
            c.arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(path);
            c
        } else {
            Command::new(path)
        };
        c.env_clear().env("PATH", "/usr/bin:/bin").current_dir(&self.work);
        c
    }

    #[track_caller]
    pub(crate) fn submit(&self, rcpts: &[String], body: &[u8]) -> String {
        let mut c = self.cmd("outq-enqueue");
        c.arg("--spool").arg(&self.spool).arg("--config").arg(&self.config);
        c.args(["-f", SENDER]).args(rcpts);
        run_timeout(c, body, TIMEOUT).queue_id()
    }

    /// `outq run --once`, which must succeed; its log and how long it took.
    #[track_caller]
    pub(crate) fn run_once(&self) -> (String, Duration) {
        let mut c = self.cmd("outq");
        c.arg("run").arg("--once").arg("--spool").arg(&self.spool).arg("--config").arg(&self.config);
        c.args(["--log", "stderr"]);
        let t0 = Instant::now();
        let r: Ran = run_timeout(c, b"", TIMEOUT);
        let took = t0.elapsed();
        r.assert_code(0);
        (r.stderr, took)
    }

    pub(crate) fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }

    pub(crate) fn state(&self, id: &str) -> Option<String> {
        std::fs::read_to_string(self.spool.join("state").join(id)).ok()
    }

    /// Make a deferred entry due: its state file's mtime is its next
    /// attempt (what `touch -d '1 hour ago' state/ID` does).
    pub(crate) fn make_due(&self, id: &str) {
        let p = self.spool.join("state").join(id);
        if p.exists() {
            let past = SystemTime::now() - Duration::from_secs(3600);
            std::fs::File::open(&p).unwrap().set_modified(past).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// One case

/// Where an entry ended after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Removed,
    Deferred,
    Failed,
}

impl Place {
    fn label(self) -> &'static str {
        match self {
            Place::Removed => "removed",
            Place::Deferred => "deferred/",
            Place::Failed => "failed/",
        }
    }
}

/// What the log says happened to one recipient in one run.
#[derive(Debug, Clone)]
struct Attempt {
    /// sent, deferred or failed.
    word: String,
    reply: String,
}

/// The attempts of entry `id` in `log`, by recipient.
fn attempts(log: &str, id: &str) -> BTreeMap<String, Attempt> {
    let head = format!("{id}: to=<");
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(&head) else { continue };
        let Some((addr, rest)) = rest.split_once(">, ") else { continue };
        let Some((_, rest)) = rest.split_once(", status=") else { continue };
        let (word, reply) = rest.split_once(" (").unwrap_or((rest, ""));
        let reply = reply.strip_suffix(')').unwrap_or(reply);
        let a = Attempt { word: word.to_owned(), reply: reply.to_owned() };
        assert!(out.insert(addr.to_owned(), a).is_none(), "{addr} attempted twice in one run:\n{log}");
    }
    out
}

/// The `rcpt` lines of a state file: address → (status, reply).
fn state_rcpts(state: &str) -> BTreeMap<String, (String, String)> {
    state
        .lines()
        .filter_map(|l| l.strip_prefix("rcpt <"))
        .map(|l| {
            let (addr, rest) = l.split_once("> ").unwrap();
            let (status, reply) = rest.split_once(' ').unwrap_or((rest, ""));
            (addr.to_owned(), (status.to_owned(), reply.to_owned()))
        })
        .collect()
}

fn addr(local: &str) -> String {
    format!("{local}@{DOMAIN}")
}

/// One case in progress: the entry, what each recipient has come to, and
/// the summaries for the table.
struct Case<'a> {
    dev: &'a Dev,
    id: String,
    rcpts: Vec<String>,
    /// Cumulative: pending, sent or failed.
    status: BTreeMap<String, &'static str>,
    notices: Vec<String>,
    runs: Vec<String>,
    why: String,
    /// Every run's log, for the notices' deliveries.
    logs: String,
}

impl<'a> Case<'a> {
    fn submit(dev: &'a Dev, locals: &[&str], body: &[u8]) -> Case<'a> {
        let rcpts: Vec<String> = locals.iter().map(|l| addr(l)).collect();
        let id = dev.submit(&rcpts, body);
        let status = rcpts.iter().map(|r| (r.clone(), "pending")).collect();
        Case { dev, id, rcpts, status, notices: Vec::new(), runs: Vec::new(), why: String::new(), logs: String::new() }
    }

    fn pending(&self) -> Vec<String> {
        self.status.iter().filter(|(_, s)| **s == "pending").map(|(r, _)| r.clone()).collect()
    }

    /// Make the entry due, run the runner once, and check: exactly the
    /// pending recipients were attempted, each with the expected word
    /// (`sent`, `deferred`, `failed`) and a reply containing the text given;
    /// the entry is at `place`; the state file is the sum of the attempts.
    #[track_caller]
    fn run(&mut self, place: Place, expect: &[(&str, &str, &str)]) -> String {
        self.dev.make_due(&self.id);
        let (log, took) = self.dev.run_once();
        self.logs.push_str(&log);
        let got = attempts(&log, &self.id);
        let mut want_rcpts: Vec<String> = expect.iter().map(|(l, _, _)| addr(l)).collect();
        want_rcpts.sort();
        let tried: Vec<String> = got.keys().cloned().collect();
        assert_eq!(tried, want_rcpts, "recipients attempted; log:\n{log}");
        assert_eq!(tried, self.pending(), "the attempted recipients are not the pending ones; log:\n{log}");
        for (local, word, reply) in expect {
            let a = &got[&addr(local)];
            assert_eq!(a.word, *word, "{local}: {a:?}\n{log}");
            assert!(a.reply.contains(reply), "{local}: reply {:?} lacks {reply:?}\n{log}", a.reply);
            let now = match *word {
                "sent" => "sent",
                "deferred" => "pending",
                _ => "failed",
            };
            self.status.insert(addr(local), now);
        }
        // The reason shown in the table: a temporary failure's, else a
        // permanent one's.
        if self.why.is_empty() {
            let pick = |w: &str| got.values().find(|a| a.word == w).map(|a| a.reply.clone());
            self.why = pick("deferred").or_else(|| pick("failed")).unwrap_or_default();
        }
        // Where the entry went.
        let id = &self.id;
        let here = |q: &str| self.dev.names(q).contains(id);
        let at = match (here("deferred"), here("failed")) {
            (true, false) => Place::Deferred,
            (false, true) => Place::Failed,
            (false, false) => Place::Removed,
            _ => panic!("{id} is in deferred/ and failed/"),
        };
        for q in ["new", "active", "hold", "corrupt", "tmp"] {
            assert!(!here(q), "{id} is in {q}/; log:\n{log}");
        }
        assert_eq!(at, place, "where {id} ended; log:\n{log}");
        match (at, self.dev.state(id)) {
            (Place::Removed, None) => {
                assert!(self.pending().is_empty() && !self.status.values().any(|s| *s == "failed"));
                assert!(log.contains(&format!("{id}: removed (delivered)")), "{log}");
            }
            (Place::Removed, Some(s)) => panic!("{id} removed but its state remains:\n{s}"),
            (_, None) => panic!("{id} is in {} without a state file", at.label()),
            (_, Some(state)) => {
                let lines = state_rcpts(&state);
                let want: BTreeMap<String, String> =
                    self.status.iter().map(|(r, s)| (r.clone(), s.to_string())).collect();
                let have: BTreeMap<String, String> = lines.iter().map(|(r, (s, _))| (r.clone(), s.clone())).collect();
                assert_eq!(have, want, "state file of {id}:\n{state}");
                for (r, a) in &got {
                    assert_eq!(lines[r].1, a.reply, "{r}: the state keeps the last reply:\n{state}");
                }
                let attempts = self.runs.len() + 1;
                assert!(state.lines().any(|l| l == format!("attempts {attempts}")), "{state}");
            }
        }
        // Failure notices queued for the sender.
        let notice_head = format!("{id}: sender notification: ");
        self.notices.extend(log.lines().filter_map(|l| l.split_once(&notice_head).map(|(_, n)| n.trim().to_owned())));
        let gave_up = at == Place::Failed && self.runs.iter().all(|r| !r.starts_with("failed/"));
        if gave_up {
            assert_eq!(self.notices.len(), 1, "entry given up without one notice:\n{log}");
        }
        let summary = self.summary(at, took);
        self.runs.push(summary);
        log
    }

    /// `deferred/: sent a; pending b c; failed d (2.0s)`
    fn summary(&self, at: Place, took: Duration) -> String {
        let mut parts = Vec::new();
        for s in ["sent", "pending", "failed"] {
            let who: Vec<&str> =
                self.rcpts.iter().filter(|r| self.status[*r] == s).map(|r| r.split('@').next().unwrap_or(r)).collect();
            if !who.is_empty() {
                parts.push(format!("{s} {}", who.join(" ")));
            }
        }
        let slow =
            if took >= Duration::from_secs(1) { format!(" ({:.1}s)", took.as_secs_f64()) } else { String::new() };
        format!("{}: {}{slow}", at.label(), parts.join("; "))
    }

    /// A run in which nothing of this entry is due or left (a deferred
    /// entry not yet due, a failed one): it is not attempted.
    #[track_caller]
    fn run_nothing(&mut self) {
        let (log, _) = self.dev.run_once();
        self.logs.push_str(&log);
        assert!(attempts(&log, &self.id).is_empty(), "{} was attempted again:\n{log}", self.id);
    }

    /// Deliver the queued notices (a last run), then check the server's
    /// record: each recipient accepted once if sent, never otherwise; each
    /// notice accepted once, from the null sender to the sender; and the
    /// spool holds nothing but the entry where it ended.
    #[track_caller]
    fn finish(mut self, server: Option<&Server>, name: &str, rows: &Rows) {
        if !self.dev.names("new").is_empty() {
            let (log, _) = self.dev.run_once();
            self.logs.push_str(&log);
        }
        for n in &self.notices {
            let log = &self.logs;
            let a = attempts(log, n);
            assert_eq!(a.keys().collect::<Vec<_>>(), [SENDER], "notice {n}:\n{log}");
            assert_eq!(a[SENDER].word, "sent", "notice {n}:\n{log}");
        }
        let id = self.id.clone();
        let end = self.runs.last().cloned().unwrap_or_default();
        let keep: &[&str] = if end.starts_with("removed") {
            &[]
        } else if end.starts_with("failed/") {
            &["failed", "state"]
        } else {
            &["deferred", "state"]
        };
        for q in QUEUES {
            let want: Vec<String> = if keep.contains(&q) { vec![id.clone()] } else { Vec::new() };
            assert_eq!(self.dev.names(q), want, "{q}/ at the end");
        }
        let mut counts = Vec::new();
        if let Some(server) = server {
            let accepted = server.accepted();
            for r in &self.rcpts {
                let n = accepted.iter().map(|a| a.rcpts.iter().filter(|x| *x == r).count()).sum::<usize>();
                let want = usize::from(self.status[r] == "sent");
                assert_eq!(n, want, "{r} ({}) was accepted {n} times: {accepted:#?}", self.status[r]);
                counts.push(format!("{}={n}", r.split('@').next().unwrap_or(r)));
            }
            for a in accepted.iter().filter(|a| a.sender.is_empty()) {
                assert_eq!(a.rcpts, [SENDER], "a notice to someone else: {a:?}");
            }
            let notices = accepted.iter().filter(|a| a.sender.is_empty()).count();
            assert_eq!(notices, self.notices.len(), "notices accepted: {accepted:#?}");
            for a in accepted.iter().filter(|a| !a.sender.is_empty()) {
                assert_eq!(a.sender, SENDER);
                let trace = format!("(outq) id {id}; ");
                assert!(a.data.windows(trace.len()).any(|w| w == trace.as_bytes()), "data without outq's Received");
                assert!(a.data.ends_with(b"\r\n.\r\n"));
            }
            if !self.notices.is_empty() {
                counts.push(format!("notice={notices}"));
            }
            check_groups(server, self.dev.pipelining);
        }
        while self.runs.len() < 2 {
            self.runs.push("(nothing to retry)".into());
        }
        let why = std::mem::take(&mut self.why);
        rows.lock().unwrap().push(Row {
            case: format!("{name}{}", if self.dev.pipelining { "" } else { " [no PIPELINING]" }),
            run1: self.runs[0].clone(),
            run2: self.runs[1..].join(" / "),
            accepted: counts.join(" "),
            why,
        });
    }
}

/// How the runner sent its transactions to `server`: with PIPELINING
/// advertised, each MAIL FROM with its RCPT TOs and DATA in one burst
/// (nothing answered before the group was complete); without, one command
/// at a time.
#[track_caller]
fn check_groups(server: &Server, pipelining: bool) {
    for conv in server.conversations() {
        for g in &conv.groups {
            let verbs: Vec<&str> = g.commands.iter().map(|c| c.split([' ', ':']).next().unwrap_or("")).collect();
            if pipelining {
                let body = verbs.strip_prefix(&["RSET"][..]).unwrap_or(&verbs);
                assert!(
                    body.len() >= 3
                        && body[0] == "MAIL"
                        && body[1..body.len() - 1].iter().all(|v| *v == "RCPT")
                        && body[body.len() - 1] == "DATA"
                        && g.extra_reads == 0,
                    "not one pipelined group: {g:?}"
                );
            } else {
                assert_eq!(verbs, ["MAIL"], "pipelined without PIPELINING advertised: {g:?}");
            }
        }
    }
}

struct Row {
    case: String,
    run1: String,
    run2: String,
    accepted: String,
    why: String,
}

type Rows = Mutex<Vec<Row>>;

fn small_body() -> Vec<u8> {
    b"From: sender@faults.test\r\nSubject: fault matrix\r\n\r\nhello\r\n.leading dot\r\n".to_vec()
}

/// Larger than the socket buffers, so that a server hanging up in the
/// middle is noticed while the data is still being written.
/// Larger than the socket buffers of a loopback connection can hold (the
/// sender's grows to 4 MiB, `tcp_wmem`; the receiver's stays small while
/// it does not read), so a server that stops reading and closes during DATA
/// is seen while the message is still being sent, however fast the client
/// writes. Within the default `message_size_limit`.
fn large_body() -> Vec<u8> {
    let mut b = b"From: sender@faults.test\r\nSubject: fault matrix, large\r\n\r\n".to_vec();
    while b.len() < 9_000_000 {
        b.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    b
}

// ---------------------------------------------------------------------------
// The cases

/// A server, PIPELINING advertised when `p`.
fn start(p: bool, opts: Opts) -> Server {
    Server::start(opts.pipelining(p))
}

/// A server, a spool configured for it with `settings`, and a case.
fn setup(p: bool, opts: Opts, settings: &[(&str, &str)]) -> (Dev, Server) {
    let dev = Dev::new(p);
    let server = start(p, opts);
    dev.configure(&server.url(), settings);
    (dev, server)
}

fn connection_refused(rows: &Rows, p: bool) {
    let dev = Dev::new(p);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dev.configure(&format!("smtp://127.0.0.1:{closed}"), &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    let why = format!("connect to 127.0.0.1[127.0.0.1]:{closed}: Connection refused");
    c.run(Place::Deferred, &[("a", "deferred", &why), ("b", "deferred", &why)]);
    // Not due yet: left alone.
    c.run_nothing();
    // The relay comes up (here: the configuration points to one that is).
    let server = start(p, Opts::default());
    dev.configure(&server.url(), &[]);
    c.run(Place::Removed, &[("a", "sent", "250 2.0.0"), ("b", "sent", "250 2.0.0")]);
    c.finish(Some(&server), "connection refused", rows);
}

fn greeting_421(rows: &Rows, p: bool) {
    let opts = Opts {
        script: Arc::new(|l| match l {
            "GREETING" => Act::Reply("421 4.3.2 Service not available, closing transmission channel".into()),
            _ => Act::Default,
        }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    let why = format!("{} refused to talk to us: 421 4.3.2 Service not available", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why), ("b", "deferred", &why)]);
    assert!(server.conversations()[0].commands.is_empty(), "the client spoke after a 421 greeting");
    server.heal();
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    c.finish(Some(&server), "421 greeting", rows);
}

fn mixed_rcpt_replies(rows: &Rows, p: bool) {
    let (dev, server) = setup(p, Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() }, &[]);
    let mut c = Case::submit(&dev, &["r250", "r450", "r452", "r550", "r552"], &small_body());
    c.run(
        Place::Deferred,
        &[
            ("r250", "sent", "250 2.0.0 Ok: queued"),
            ("r450", "deferred", "450 4.1.0 r450 answered 450"),
            ("r452", "deferred", "452 4.1.0 r452 answered 452"),
            ("r550", "failed", "550 5.1.0 r550 answered 550"),
            // RFC 5321 4.5.3.1.10: 552 to RCPT means "too many recipients".
            ("r552", "deferred", "552 5.1.0 r552 answered 552"),
        ],
    );
    server.heal();
    c.run(Place::Failed, &[("r450", "sent", "250"), ("r452", "sent", "250"), ("r552", "sent", "250")]);
    c.run_nothing();
    c.finish(Some(&server), "RCPT 250/450/452/550/552", rows);
}

fn temporary_after_data(rows: &Rows, p: bool) {
    let opts = Opts {
        script: Arc::new(|l| match l {
            "." => Act::Reply("451 4.3.0 Error: queue file write error".into()),
            _ => rcpt_by_local_part(l),
        }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["a", "r550", "b"], &small_body());
    let why = "451 4.3.0 Error: queue file write error";
    c.run(Place::Deferred, &[("a", "deferred", why), ("r550", "failed", "550 5.1.0"), ("b", "deferred", why)]);
    server.heal();
    c.run(Place::Failed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    c.finish(Some(&server), "4xx after DATA", rows);
}

fn permanent_after_data(rows: &Rows, p: bool) {
    let opts = Opts {
        script: Arc::new(|l| match l {
            "." => Act::Reply("554 5.6.0 Error: message content rejected".into()),
            _ => Act::Default,
        }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    let why = "554 5.6.0 Error: message content rejected";
    c.run(Place::Failed, &[("a", "failed", why), ("b", "failed", why)]);
    server.heal();
    c.run_nothing();
    c.finish(Some(&server), "5xx after DATA", rows);
}

fn second_transaction_lost(rows: &Rows, p: bool) {
    // Three transactions of at most two recipients: the connection dies in
    // the second; the third goes out on a new connection.
    let opts = Opts {
        script: Arc::new(|l| if l == "RCPT TO:<c@faults.test>" { Act::Close } else { Act::Default }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[("max_rcpt_per_transaction", "2")]);
    let mut c = Case::submit(&dev, &["a", "b", "c", "d", "e"], &small_body());
    let why = format!("lost connection with {} while sending RCPT TO", server.name());
    c.run(
        Place::Deferred,
        &[
            ("a", "sent", "250"),
            ("b", "sent", "250"),
            ("c", "deferred", &why),
            ("d", "deferred", &why),
            ("e", "sent", "250"),
        ],
    );
    let convs = server.conversations();
    assert_eq!(convs.len(), 2, "{convs:#?}");
    assert_eq!(server.accepted().iter().map(|a| a.rcpts.len()).collect::<Vec<_>>(), [2, 1]);
    server.heal();
    c.run(Place::Removed, &[("c", "sent", "250"), ("d", "sent", "250")]);
    c.finish(Some(&server), "lost in 2nd of 3 transactions", rows);
}

fn disconnect_in_data(rows: &Rows, p: bool) {
    let (dev, server) = setup(p, Opts { close_in_data_after: Some(4096), ..Opts::default() }, &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &large_body());
    let why = format!("lost connection with {} while sending the message", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why), ("b", "deferred", &why)]);
    server.heal();
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    c.finish(Some(&server), "disconnect during DATA", rows);
}

fn disconnect_after_rcpt(rows: &Rows, p: bool) {
    let opts = Opts {
        script: Arc::new(|l| match l {
            "RCPT TO:<b@faults.test>" => Act::Close,
            _ => rcpt_by_local_part(l),
        }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["r550", "a", "b", "c"], &small_body());
    let why = format!("lost connection with {} while sending RCPT TO", server.name());
    c.run(
        Place::Deferred,
        &[("r550", "failed", "550 5.1.0"), ("a", "deferred", &why), ("b", "deferred", &why), ("c", "deferred", &why)],
    );
    server.heal();
    c.run(Place::Failed, &[("a", "sent", "250"), ("b", "sent", "250"), ("c", "sent", "250")]);
    c.finish(Some(&server), "disconnect after RCPT", rows);
}

fn stall_after_rcpt(rows: &Rows, p: bool) {
    let opts = Opts {
        script: Arc::new(|l| if l == "RCPT TO:<b@faults.test>" { Act::Hang } else { Act::Default }),
        ..Opts::default()
    };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    let why = format!("conversation with {} timed out while sending RCPT TO", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why), ("b", "deferred", &why)]);
    server.heal();
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    c.finish(Some(&server), "no reply to RCPT (2s)", rows);
}

fn stall_after_data(rows: &Rows, p: bool) {
    let opts = Opts { script: Arc::new(|l| if l == "." { Act::Hang } else { Act::Default }), ..Opts::default() };
    let (dev, server) = setup(p, opts, &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    let why =
        format!("conversation with {} timed out while waiting for the reply to the end of the message", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why), ("b", "deferred", &why)]);
    server.heal();
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    c.finish(Some(&server), "no reply to final dot (2s)", rows);
}

fn tls_opts(server_config: Arc<ServerConfig>) -> Opts {
    Opts {
        extensions: vec!["PIPELINING".into(), "STARTTLS".into(), "ENHANCEDSTATUSCODES".into()],
        tls: Some(server_config),
        require_tls: true,
        ..Opts::default()
    }
}

fn starttls_required(rows: &Rows, p: bool) {
    let (ca, server_config) = pki();
    let dev = Dev::new(p);
    let ca_file = dev.public_file("ca.pem", &ca);
    let server = start(p, tls_opts(server_config));
    let ca_path = ca_file.display().to_string();
    dev.configure(&server.url(), &[("starttls", "required"), ("tls_ca_file", &ca_path)]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    let convs = server.conversations();
    assert_eq!(convs.len(), 1);
    assert!(convs[0].tls, "{convs:?}");
    assert!(server.accepted().iter().all(|a| a.tls), "accepted in the clear");
    c.finish(Some(&server), "STARTTLS required, test CA", rows);
}

fn starttls_untrusted(rows: &Rows, p: bool) {
    let (_, server_config) = pki();
    let (other_ca, _) = pki();
    let dev = Dev::new(p);
    let ca_file = dev.public_file("ca.pem", &other_ca);
    let server = start(p, tls_opts(server_config.clone()));
    let ca_path = ca_file.display().to_string();
    dev.configure(&server.url(), &[("starttls", "required"), ("tls_ca_file", &ca_path)]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    let why = format!("TLS handshake with {} failed", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why)]);
    assert_eq!(server.accepted().len(), 0);
    // The operator fixes tls_ca_file: a server with a certificate of the
    // CA now trusted.
    let (ca, fixed) = pki();
    dev.public_file("ca.pem", &ca);
    let good = start(p, tls_opts(fixed));
    dev.configure(&good.url(), &[("starttls", "required"), ("tls_ca_file", &ca_path)]);
    c.run(Place::Removed, &[("a", "sent", "250")]);
    assert!(good.accepted().iter().all(|a| a.tls));
    c.finish(Some(&good), "STARTTLS required, unknown CA", rows);
}

fn starttls_not_offered(rows: &Rows, p: bool) {
    let (dev, server) = setup(p, Opts::default(), &[("starttls", "required")]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    let why = format!("{} does not offer STARTTLS, and starttls = required", server.name());
    c.run(Place::Deferred, &[("a", "deferred", &why)]);
    // The operator relaxes the policy.
    dev.configure(&server.url(), &[("starttls", "opportunistic")]);
    c.run(Place::Removed, &[("a", "sent", "250")]);
    c.finish(Some(&server), "STARTTLS required, not offered", rows);
}

fn starttls_refused_opportunistic(rows: &Rows, p: bool) {
    // Offered, then refused with 454: the session goes on in the clear.
    let opts = Opts { extensions: vec!["STARTTLS".into()], ..Opts::default() };
    let (dev, server) = setup(p, opts, &[("starttls", "opportunistic")]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    c.run(Place::Removed, &[("a", "sent", "250")]);
    assert_eq!(server.conversations()[0].commands[1], "STARTTLS");
    assert!(server.accepted().iter().all(|a| !a.tls));
    c.why = "454 to STARTTLS: sent in the clear".into();
    c.finish(Some(&server), "STARTTLS opportunistic, 454", rows);
}

fn starttls_untrusted_opportunistic(rows: &Rows, p: bool) {
    // A certificate that cannot be verified: a new connection without TLS.
    let (_, server_config) = pki();
    let (other_ca, _) = pki();
    let dev = Dev::new(p);
    let ca_file = dev.public_file("ca.pem", &other_ca);
    let server = start(p, Opts { require_tls: false, ..tls_opts(server_config) });
    let ca_path = ca_file.display().to_string();
    dev.configure(&server.url(), &[("starttls", "opportunistic"), ("tls_ca_file", &ca_path)]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    c.run(Place::Removed, &[("a", "sent", "250")]);
    let convs = server.conversations();
    assert_eq!(convs.len(), 2, "{convs:#?}");
    assert!(!convs[1].commands.iter().any(|l| l == "STARTTLS"), "{convs:#?}");
    assert!(server.accepted().iter().all(|a| !a.tls));
    c.why = "handshake failed: sent in the clear on a new connection".into();
    c.finish(Some(&server), "STARTTLS opportunistic, unknown CA", rows);
}

const USER: &str = "outq-test@faults.test";
const PASSWORD: &str = "correct horse battery";

fn auth_opts() -> Opts {
    Opts { auth: Some((USER.into(), PASSWORD.into())), ..Opts::default() }
}

fn auth_required(rows: &Rows, p: bool) {
    let (dev, server) = setup(p, auth_opts(), &[]);
    let mut c = Case::submit(&dev, &["a", "b"], &small_body());
    // No credentials configured: the server's 530 to MAIL is temporary.
    let why = "530 5.7.0 Authentication required";
    c.run(Place::Deferred, &[("a", "deferred", why), ("b", "deferred", why)]);
    let file = dev.private_file("relay-auth", &format!("# relay\n{USER} {PASSWORD}\n"), 0o600);
    dev.configure(&server.url(), &[("relay_auth_file", &file.display().to_string())]);
    c.run(Place::Removed, &[("a", "sent", "250"), ("b", "sent", "250")]);
    let convs = server.conversations();
    assert!(convs.last().is_some_and(|cv| cv.authenticated), "{convs:#?}");
    c.finish(Some(&server), "AUTH required", rows);
}

fn auth_wrong_password(rows: &Rows, p: bool) {
    let dev = Dev::new(p);
    let server = start(p, auth_opts());
    let file = dev.private_file("relay-auth", &format!("{USER} wrong-password\n"), 0o600);
    dev.configure(&server.url(), &[("relay_auth_file", &file.display().to_string())]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    let why = format!("{} rejected the credentials: 535 5.7.8", server.name());
    let log = c.run(Place::Deferred, &[("a", "deferred", &why)]);
    assert!(!log.contains("wrong-password"), "the password was logged:\n{log}");
    assert!(!dev.state(&c.id).unwrap().contains("wrong-password"), "the password is in the state file");
    // Fixed in place: same owner and mode.
    dev.private_file("relay-auth", &format!("{USER} {PASSWORD}\n"), 0o600);
    c.run(Place::Removed, &[("a", "sent", "250")]);
    c.finish(Some(&server), "AUTH, wrong password", rows);
}

fn auth_file_readable_by_others(rows: &Rows, p: bool) {
    let dev = Dev::new(p);
    let server = start(p, auth_opts());
    let file = dev.private_file("relay-auth", &format!("{USER} {PASSWORD}\n"), 0o644);
    dev.configure(&server.url(), &[("relay_auth_file", &file.display().to_string())]);
    let mut c = Case::submit(&dev, &["a"], &small_body());
    let why = format!("relay_auth_file {} has mode 0644", file.display());
    let log = c.run(Place::Deferred, &[("a", "deferred", &why)]);
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
    assert!(server.conversations().is_empty(), "connected with a refused credentials file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.run(Place::Removed, &[("a", "sent", "250")]);
    c.finish(Some(&server), "AUTH, relay_auth_file 0644", rows);
}

/// Run every case (each in its own spool, with its own server), print the
/// table, and fail if any case failed.
#[test]
fn runner_smtp_fault_matrix() {
    type CaseFn = fn(&Rows, bool);
    let cases: &[(&str, CaseFn)] = &[
        ("connection refused", connection_refused),
        ("421 greeting", greeting_421),
        ("RCPT 250/450/452/550/552", mixed_rcpt_replies),
        ("4xx after DATA", temporary_after_data),
        ("5xx after DATA", permanent_after_data),
        ("disconnect after RCPT", disconnect_after_rcpt),
        ("lost in 2nd of 3 transactions", second_transaction_lost),
        ("disconnect during DATA", disconnect_in_data),
        ("no reply to RCPT (2s)", stall_after_rcpt),
        ("no reply to final dot (2s)", stall_after_data),
        ("STARTTLS required, test CA", starttls_required),
        ("STARTTLS required, unknown CA", starttls_untrusted),
        ("STARTTLS required, not offered", starttls_not_offered),
        ("STARTTLS opportunistic, 454", starttls_refused_opportunistic),
        ("STARTTLS opportunistic, unknown CA", starttls_untrusted_opportunistic),
        ("AUTH required", auth_required),
        ("AUTH, wrong password", auth_wrong_password),
        ("AUTH, relay_auth_file 0644", auth_file_readable_by_others),
    ];
    let rows: Rows = Mutex::new(Vec::new());
    let mut failed = Vec::new();
    for p in [true, false] {
        for (name, case) in cases {
            let name = format!("{name}{}", if p { "" } else { " [no PIPELINING]" });
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&rows, p)));
            if let Err(e) = r {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                let first = msg.lines().next().unwrap_or("").to_owned();
                rows.lock().unwrap().push(Row {
                    case: name.clone(),
                    run1: "FAILED".into(),
                    run2: String::new(),
                    accepted: String::new(),
                    why: first,
                });
                failed.push(name);
            }
        }
    }
    let rows = rows.into_inner().unwrap();
    let head = Row {
        case: "case".into(),
        run1: "run 1 (faulty)".into(),
        run2: "run 2 (healed/fixed, entry due)".into(),
        accepted: "accepted by server".into(),
        why: "run 1 reason".into(),
    };
    let width = |f: fn(&Row) -> &str| rows.iter().chain([&head]).map(|r| f(r).len()).max().unwrap_or(0);
    let (w1, w2, w3, w4) = (width(|r| &r.case), width(|r| &r.run1), width(|r| &r.run2), width(|r| &r.accepted));
    let mut out = String::from("\nfaults: runner SMTP fault matrix (outq run --once)\n");
    for r in [&head].into_iter().chain(rows.iter()) {
        out.push_str(&format!("  {:w1$} | {:w2$} | {:w3$} | {:w4$} | {}\n", r.case, r.run1, r.run2, r.accepted, r.why));
    }
    let _ = writeln!(std::io::stderr(), "{out}");
    assert!(failed.is_empty(), "fault matrix cases failed: {failed:?} (see the table and the panics above)");
}

/// Warnings the SMTP transport gives (a TLS downgrade under
/// `starttls = opportunistic`) must reach the log the runner was told to
/// use: with `--log stderr`, standard error.
#[test]
fn runner_log_stderr_carries_transport_warnings() {
    let opts = Opts { extensions: vec!["STARTTLS".into()], ..Opts::default() };
    let (dev, server) = setup(true, opts, &[("starttls", "opportunistic")]);
    let id = dev.submit(&[addr("a")], &small_body());
    let (log, _) = dev.run_once();
    assert!(log.contains(&format!("{id}: to=<a@faults.test>, relay={}", server.name())), "{log}");
    let warning = format!("{} refused STARTTLS: 454 4.7.0 TLS not available; going on without TLS", server.name());
    assert!(log.contains(&warning), "the transport's warning {warning:?} is missing from the --log stderr log:\n{log}");
}

// ---------------------------------------------------------------------------
// Operating against relays: `outq check --relay`, `outq check --send`,
// `outq status` and failed entries, and the circuit breaker of a pass.

impl Dev {
    /// `outq check --relay` (and `extra`) as the runner's account: its
    /// standard output.
    fn check(&self, extra: &[&str]) -> Ran {
        let mut c = self.cmd("outq");
        c.arg("check").arg("--spool").arg(&self.spool).arg("--config").arg(&self.config);
        c.arg("--helper").arg(self.bin.join("outq-enqueue")).args(extra);
        run_timeout(c, b"", TIMEOUT)
    }

    fn op(&self, args: &[&str]) -> Ran {
        let mut c = self.cmd("outq");
        c.args(args).arg("--spool").arg(&self.spool).arg("--config").arg(&self.config);
        run_timeout(c, b"", TIMEOUT)
    }
}

/// The `outq check` lines about relays.
fn relay_lines(r: &Ran) -> Vec<String> {
    r.stdout.lines().filter(|l| l.starts_with("outq check: relay")).map(str::to_owned).collect()
}

#[test]
fn check_relay_reports_reachable_refusing_wrong_password_and_a_ca_as_end_entity() {
    // Reachable, with STARTTLS (test CA) and AUTH: every step, no problem.
    let dev = Dev::new(true);
    let (ca_pem, tls) = pki();
    let opts = Opts { auth: Some((USER.into(), PASSWORD.into())), ..tls_opts(tls) };
    let server = Server::start(opts.clone());
    let ca = dev.public_file("ca.pem", &ca_pem);
    let auth = dev.private_file("relay-auth", &format!("{USER} {PASSWORD}\n"), 0o600);
    let (ca, auth) = (ca.display().to_string(), auth.display().to_string());
    let secure = [("starttls", "required"), ("tls_ca_file", ca.as_str()), ("relay_auth_file", auth.as_str())];
    dev.configure(&server.url(), &secure);
    let r = dev.check(&["--relay"]);
    let lines = relay_lines(&r).join("\n");
    let name = server.name();
    for step in [
        format!("relay {name}: connected to {name}"),
        format!("relay {name}: greeting: 220"),
        format!("relay {name}: STARTTLS established, certificate verified for 127.0.0.1"),
        format!("relay {name}: AUTH accepted the credentials of relay_auth_file"),
        format!("relay {name}: ready for delivery (no mail sent)"),
    ] {
        assert!(lines.contains(&step), "missing {step:?} in:\n{}", r.stdout);
    }
    assert!(!r.stdout.contains(PASSWORD), "the password was printed:\n{}", r.stdout);
    let commands: Vec<String> = server.conversations().iter().flat_map(|c| c.commands.clone()).collect();
    assert!(!commands.iter().any(|c| c.starts_with("MAIL")), "check --relay sent mail: {commands:?}");
    assert!(!r.stdout.contains("outq check: relay") || !lines.contains("(fix:"), "{}", r.stdout);

    // Wrong password: the AUTH step fails with its fix.
    dev.private_file("relay-auth", &format!("{USER} wrong-password\n"), 0o600);
    let r = dev.check(&["--relay"]);
    let want = format!("outq check: relay {name}: {name} rejected the credentials: 535");
    assert!(r.stdout.contains(&want), "missing {want:?} in:\n{}", r.stdout);
    assert!(r.stdout.contains("(fix: correct USERNAME PASSWORD in relay_auth_file"), "{}", r.stdout);
    assert!(!r.stdout.contains("wrong-password"), "the password was printed:\n{}", r.stdout);
    assert_eq!(r.code, Some(1), "a failing relay is a problem: {}", r.stdout);

    // Refusing: nothing listens on the port.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    dev.configure(&format!("smtp://127.0.0.1:{closed}"), &[]);
    let r = dev.check(&["--relay"]);
    let want =
        format!("relay 127.0.0.1[127.0.0.1]:{closed}: connect to 127.0.0.1[127.0.0.1]:{closed}: Connection refused");
    assert!(r.stdout.contains(&want), "missing {want:?} in:\n{}", r.stdout);
    assert!(r.stdout.contains("(fix: check relay= (host and port)"), "{}", r.stdout);

    // A self-signed CA certificate presented as the server's own.
    let (self_signed, tls) = crate::smtp_server::ca_as_end_entity();
    let server = Server::start(tls_opts(tls));
    let ca = dev.public_file("self-signed.pem", &self_signed).display().to_string();
    dev.configure(&server.url(), &[("starttls", "required"), ("tls_ca_file", ca.as_str())]);
    let r = dev.check(&["--relay"]);
    let name = server.name();
    assert!(r.stdout.contains(&format!("relay {name}: TLS handshake with {name} failed")), "{}", r.stdout);
    assert!(
        r.stdout.contains("(fix: the relay presents a CA certificate (basicConstraints CA:TRUE"),
        "no clear error for a CA certificate used as an end entity:\n{}",
        r.stdout
    );
}

#[test]
fn check_send_queues_a_test_message_that_is_delivered() {
    let dev = Dev::new(true);
    let server = Server::start(Opts::default());
    let helper = dev.bin.join("outq-enqueue").display().to_string();
    dev.configure(&server.url(), &[("enqueue_program", &helper)]);
    let r = dev.check(&["--send", "admin@faults.test"]);
    let id = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("outq check: test message to admin@faults.test queued as "))
        .unwrap_or_else(|| panic!("no queue ID in:\n{}", r.stdout))
        .to_owned();
    assert_eq!(dev.names("new"), vec![id.clone()]);
    dev.run_once();
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].rcpts, vec!["admin@faults.test".to_owned()]);
    let data = String::from_utf8_lossy(&accepted[0].data).into_owned();
    for h in ["From: outq check <postmaster@", "To: <admin@faults.test>", "Date: ", "Message-ID: <outq-check."] {
        assert!(data.contains(h), "{h:?} missing from the test message:\n{data}");
    }
    // Not an address: refused, nothing queued.
    let r = dev.check(&["--send", "not an address"]);
    assert!(r.stdout.contains("is not a mail address"), "{}", r.stdout);
    assert!(dev.names("new").is_empty());
}

#[test]
fn status_exit_codes_follow_failed_entries() {
    let opts = Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() };
    let (dev, _server) = setup(true, opts, &[]);
    // r550 is refused with 550: the entry ends in failed/ (the notice to
    // the sender is delivered by the second run).
    let id = dev.submit(&[addr("r550")], &small_body());
    dev.run_once();
    dev.run_once();
    assert!(dev.names("failed").contains(&id), "failed/: {:?}", dev.names("failed"));
    let failed = dev.names("failed").len();
    // A runner holding the lock, so that only failed/ decides.
    let mut runner = dev.cmd("outq");
    runner.args(["run", "--log", "stderr", "--spool"]).arg(&dev.spool).arg("--config").arg(&dev.config);
    runner.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    runner.stderr(std::process::Stdio::null());
    let mut child = runner.spawn().unwrap();
    let held = crate::support::wait_until(TIMEOUT, || dev.op(&["status"]).stdout.contains("runner running"));
    let outcome = std::panic::catch_unwind(|| {
        assert!(held, "the runner never took the lock");
        let r = dev.op(&["status", "--monitor"]);
        assert_eq!(r.code, Some(1), "{}", r.stdout);
        assert!(r.stdout.starts_with("OUTQ WARNING - 0 queued"), "{}", r.stdout);
        assert!(r.stdout.contains(&format!("({failed} failed)")) && r.stdout.contains(" failed=1"), "{}", r.stdout);
        let r = dev.op(&["status", "--crit-failed", "1"]);
        assert_eq!(r.code, Some(2), "{}", r.stdout);
        assert!(r.stdout.starts_with("OUTQ CRITICAL - "), "{}", r.stdout);
        let r = dev.op(&["status", "--warn-failed", "5"]);
        assert_eq!(r.code, Some(0), "{}", r.stdout);
        // Deleted: OK again with the defaults.
        for f in dev.names("failed") {
            dev.op(&["delete", &f]).assert_code(0);
        }
        let r = dev.op(&["status", "--monitor"]);
        assert_eq!(r.code, Some(0), "{}", r.stdout);
        assert!(r.stdout.starts_with("OUTQ OK - 0 queued"), "{}", r.stdout);
        // A spool that cannot be read is UNKNOWN.
        let mut c = dev.cmd("outq");
        c.args(["status", "--monitor", "--spool", "/nonexistent/outq-spool", "--config"]).arg(&dev.config);
        let r = run_timeout(c, b"", TIMEOUT);
        assert_eq!(r.code, Some(3), "{} {}", r.stdout, r.stderr);
        assert!(r.stdout.starts_with("OUTQ UNKNOWN - "), "{}", r.stdout);
    });
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
    let _ = child.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

/// A relay that accepts connections and never says a word costs a pass a
/// few command timeouts, not one per entry: after `relay_failure_limit`
/// (3) failures the rest of the queue is deferred without connecting.
#[test]
fn a_silent_relay_defers_a_thousand_entries_in_one_pass() {
    const ENTRIES: usize = 1000;
    let opts = Opts { script: Arc::new(|_| Act::Hang), ..Opts::default() };
    let (dev, server) = setup(true, opts, &[("command_timeout", "2s"), ("connections", "2")]);
    let body = small_body();
    let t0 = Instant::now();
    for n in 0..ENTRIES {
        dev.submit(&[addr(&format!("r{n}"))], &body);
    }
    let submit = t0.elapsed();
    let (log, took) = dev.run_once();
    assert_eq!(dev.names("deferred").len(), ENTRIES, "not all deferred; log tail:\n{}", tail(&log));
    let opened = log.matches("consecutive failures (last:").count();
    assert_eq!(opened, 1, "the breaker should open (and be logged) once:\n{}", tail(&log));
    let skipped = log.matches(" not tried: ").count();
    assert!(skipped >= ENTRIES - 4, "{skipped} entries deferred by the breaker:\n{}", tail(&log));
    let tried = server.conversations().len();
    assert!(tried <= 4, "{tried} connections to a silent relay (limit 3, 2 threads)");
    // Without the breaker this pass takes ENTRIES x command_timeout / 2
    // threads = 1,000 s; with it, the 3 timeouts plus the bookkeeping.
    assert!(took < Duration::from_secs(120), "the pass took {took:?}");
    let _ = writeln!(
        std::io::stderr(),
        "silent relay: {ENTRIES} entries deferred in one pass in {:.1} s ({tried} connections; submitting took {:.1} s)",
        took.as_secs_f64(),
        submit.as_secs_f64()
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
