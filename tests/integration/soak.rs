/*!
The fault soak: a real installation driven for a while by parallel callers,
a relay that fails at random, a spool filesystem that runs full, and
`SIGKILL` for the runner and for callers, then healed and drained; every
message accepted with exit 0 must then be accounted for.

One test, [`soak`], in two modes:

- short (the default, about a minute): part of the integration tests,
  privileged (a visible `SKIPPED (needs root)` unless root; a failure with
  `OUTQ_REQUIRE_PRIVILEGED=1`);
- long: `bench/soak/run MINUTES` (default 15), which sets
  `OUTQ_SOAK_MINUTES` and runs this test alone. `OUTQ_SOAK_SECONDS`
  overrides the duration, `OUTQ_SOAK_SEED` the random seed (the faults are
  drawn from it; the timing of a shared machine is not reproducible).

The installation is the one `privileged.rs` builds: unique test accounts
(the helper's dedicated group, two callers, the queue owner), the helper
copied `root:GROUP 2755`, `/etc/outq/outq.conf` taken over (restored at the
end; runs serialise on `/run/outq-tests.lock`), and a spool made by
`outq init` on a tmpfs mounted for the test (small, so it fills up, with a
low `spool_min_free`).

What runs at once:

- callers: several threads, each running the installed helper as a test
  user through `setpriv` with the null sender (`-f ''`: no notices), one to
  three recipients `rK.TOKEN@soak.test`, and a message carrying the same
  unique `TOKEN` in `X-Soak-Token:` and the FNV-1a sum of its body in
  `X-Soak-Sum:`. The exit code, the printed queue ID and the error line are
  recorded. A few callers are `SIGKILL`ed at a random moment (the message
  is then fed slowly, so the kill can land before, during or after the
  commit). After any refusal `tmp/` and `new/` are searched for the token
  at once: a refused submission must leave nothing behind.
- the relay: an SMTP server on loopback that, until healed, answers at
  random with temporary and permanent refusals (RCPT, DATA, the end of the
  data), disconnects (at the greeting, mid-command, mid-data, instead of
  the final reply), and stalls past the runner's timeouts. It records every
  permanent refusal it gives and every (recipient, token) it accepts, with
  the queue ID and uid of the `Received:` line and whether the acceptance
  came after the client's `data_timeout` (a relay-side duplicate, not
  outq's). From time to time it has an outage (421 to everyone) until the
  spool filesystem has been full for a moment.
- the runner: `outq run` as the queue owner, `SIGKILL`ed every few seconds
  and restarted.

At the end: callers stop, the last runner is killed, the relay healed; then
`outq release` for everything in `hold/`, `outq flush`, `outq run --once`,
again while anything is left but `failed/`; after `tmp_max_age` one more
pass sweeps `tmp/`. The checks:

- every submission that exited 0 reached each recipient at least once, or
  is in `failed/` with that recipient failed, a reason, and a permanent
  refusal the relay recorded for it; anything else is a loss;
- a copy carries the queue ID the helper printed and the caller's uid; no
  body was altered;
- a submission that exited non-zero never reached the relay and is nowhere
  in the spool; a killed caller's message either never appears or is
  accounted for like an accepted one;
- at least one submission was refused with 75 for lack of space;
- `new/`, `active/`, `deferred/`, `hold/`, `tmp/` and `corrupt/` are empty,
  `state/` holds only the states of `failed/` entries;
- duplicates are counted; each must fall in a documented window: a runner
  stop between the two acceptances (outq-spool(5), DUPLICATES), or a relay
  that answered after the client gave up.

A summary is printed, and written with the logs to a directory under
`CARGO_TARGET_TMPDIR` (the path is printed).
*/

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{
    Account, PrivilegedLock, Rng, SystemConfig, TestAccounts, as_user, install_helper, privileged, privileged_lock,
    root_cmd, root_tempdir,
};

const DOMAIN: &str = "soak.test";

// The runner's timeouts, and the relay's stalls that exceed them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const DATA_TIMEOUT: Duration = Duration::from_secs(4);
const COMMAND_STALL: Duration = Duration::from_secs(3);
const DATA_STALL: Duration = Duration::from_secs(5);
/// `tmp_max_age`: files of killed callers are swept this long after their
/// last write.
const TMP_MAX_AGE: Duration = Duration::from_secs(2);

/// Longest a single helper run may take before it counts as hung.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a final `outq run --once` may take.
const ONCE_TIMEOUT: Duration = Duration::from_secs(300);

const QUEUES: [&str; 7] = ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt"];

// ---------------------------------------------------------------------------
// Parameters

#[derive(Debug, Clone)]
struct Params {
    soak: Duration,
    long: bool,
    seed: u64,
    submitters: usize,
    /// Pause of each caller between submissions, in milliseconds.
    pace_ms: (u64, u64),
    fs_mib: u64,
    min_free: u64,
    connections: usize,
    /// Life of one runner before its SIGKILL, in milliseconds.
    runner_life_ms: (u64, u64),
    helper_kill_rate: f64,
    first_outage: Duration,
    /// Between outages, in seconds.
    outage_gap_s: (u64, u64),
    outage_max: Duration,
    progress_every: Duration,
    harvest_every: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

impl Params {
    fn from_env() -> Params {
        let minutes = env_u64("OUTQ_SOAK_MINUTES");
        let seconds = env_u64("OUTQ_SOAK_SECONDS");
        let long = minutes.is_some();
        let soak = Duration::from_secs(seconds.unwrap_or(minutes.map_or(50, |m| m * 60)));
        let seed = env_u64("OUTQ_SOAK_SEED").unwrap_or_else(|| {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            t.as_secs() ^ u64::from(t.subsec_nanos()) << 20 ^ u64::from(std::process::id())
        });
        Params {
            soak,
            long,
            seed,
            submitters: 4,
            pace_ms: (20, 120),
            fs_mib: if long { 32 } else { 16 },
            min_free: 128 * 1024,
            connections: 3,
            runner_life_ms: (200, 4000),
            helper_kill_rate: 0.04,
            first_outage: soak.mul_f64(0.25).min(Duration::from_secs(60)),
            outage_gap_s: (40, 120),
            outage_max: Duration::from_secs(20),
            progress_every: Duration::from_secs(if long { 60 } else { 10 }),
            harvest_every: Duration::from_secs(5),
        }
    }
}

// ---------------------------------------------------------------------------
// Small tools

fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

fn rcpt_addr(k: u64, token: &str) -> String {
    format!("r{k}.{token}@{DOMAIN}")
}

/// The token of a soak address `rK.TOKEN@soak.test`.
fn token_of(addr: &str) -> Option<String> {
    let local = addr.strip_suffix(DOMAIN)?.strip_suffix('@')?;
    let (_, token) = local.split_once('.')?;
    token.starts_with('T').then(|| token.to_owned())
}

/// Every soak token mentioned in `data` as `.TOKEN@soak.test`.
fn tokens_in(data: &[u8]) -> HashSet<String> {
    let mut found = HashSet::new();
    let suffix = format!("@{DOMAIN}");
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == b'.' && data[i + 1] == b'T' {
            let digits = data[i + 2..].iter().take_while(|b| b.is_ascii_digit()).count();
            let end = i + 2 + digits;
            if digits > 0 && data[end..].starts_with(suffix.as_bytes()) {
                found.insert(String::from_utf8_lossy(&data[i + 1..end]).into_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// The first bytes of a file: envelope and headers are all we search.
fn head_of(path: &Path, n: u64) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path).ok()?.take(n).read_to_end(&mut v).ok()?;
    Some(v)
}

/// The names in a spool directory, without the helper's per-account
/// ledgers of `tmp/` (`.share.UID`), which are not entries.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(outq_spool::layout::SHARE_LEDGER_PREFIX))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Digits replaced, so that refusal texts group by kind.
fn normalise(s: &str) -> String {
    let mut out = String::new();
    let mut in_num = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_num {
                out.push('N');
            }
            in_num = true;
        } else {
            out.push(c);
            in_num = false;
        }
    }
    out
}

/// Print at once, also when the test harness captures output.
fn say(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// A message of about `size` bytes; its body's sum is in `X-Soak-Sum:`.
fn build_message(rng: &mut Rng, token: &str, rcpts: &[String], size: usize) -> Vec<u8> {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:-_=+/()<>";
    let mut body = Vec::with_capacity(size + 256);
    while body.len() < size {
        // Some lines start with a dot (dot-stuffing), some are empty.
        if rng.chance(0.05) {
            body.push(b'.');
        }
        for _ in 0..rng.below(160) {
            body.push(CHARS[rng.below(CHARS.len() as u64) as usize]);
        }
        body.extend_from_slice(b"\r\n");
    }
    let mut m = format!(
        "From: soak <soak@{DOMAIN}>\r\nTo: {}\r\nSubject: soak {token}\r\nMessage-ID: <{token}@{DOMAIN}>\r\n\
         X-Soak-Token: {token}\r\nX-Soak-Sum: {:016x}\r\n\r\n",
        rcpts.join(", "),
        fnv64(&body)
    )
    .into_bytes();
    m.extend_from_slice(&body);
    m
}

/// Mostly small messages, some medium, a few of megabytes.
fn pick_size(rng: &mut Rng) -> usize {
    let n = match rng.below(100) {
        0..70 => rng.range(200, 8_000),
        70..95 => rng.range(8_000, 128_000),
        _ => rng.range(256_000, 2_000_000),
    };
    n as usize
}

// ---------------------------------------------------------------------------
// The relay

/// One (recipient, token) the relay accepted.
#[derive(Debug, Clone)]
struct Accept {
    rcpt: String,
    token: String,
    /// Queue ID and uid from the `Received:` line outq added.
    id: String,
    uid: Option<u32>,
    at: Instant,
    /// The reply came after the client's data_timeout had passed.
    late: bool,
}

/// A permanent refusal the relay gave.
#[derive(Debug, Clone)]
struct Refusal {
    rcpt: String,
    token: String,
    stage: &'static str,
}

#[derive(Debug, Default)]
struct Record {
    accepted: Vec<Accept>,
    refused: Vec<Refusal>,
    /// Tokens in any RCPT the relay saw.
    seen: HashSet<String>,
    /// Anything malformed the relay received.
    problems: Vec<String>,
    faults: BTreeMap<&'static str, u64>,
    connections: u64,
    transactions: u64,
}

struct RelayShared {
    healed: AtomicBool,
    outage: AtomicBool,
    stop: AtomicBool,
    record: Mutex<Record>,
}

struct Relay {
    addr: SocketAddr,
    shared: Arc<RelayShared>,
}

impl Relay {
    fn start(seed: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RelayShared {
            healed: AtomicBool::new(false),
            outage: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            record: Mutex::new(Record::default()),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            for tcp in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                sh.record.lock().unwrap().connections += 1;
                let (sh, rng) = (sh.clone(), rng.fork());
                std::thread::spawn(move || {
                    let _ = serve(tcp, &sh, rng);
                });
            }
        });
        Relay { addr, shared }
    }

    fn heal(&self) {
        self.shared.healed.store(true, Ordering::SeqCst);
    }

    fn set_outage(&self, on: bool) {
        self.shared.outage.store(on, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One SMTP connection on the relay's side.
struct Session<'a> {
    out: TcpStream,
    inp: BufReader<TcpStream>,
    sh: &'a RelayShared,
    rng: Rng,
}

/// What the session does next.
enum Next {
    Go,
    /// Drop the connection now.
    Close,
}

impl Session<'_> {
    /// A fault with probability `p`, never once healed.
    fn fault(&mut self, p: f64) -> bool {
        !self.sh.healed.load(Ordering::SeqCst) && self.rng.chance(p)
    }

    fn note(&self, what: &'static str) {
        *self.sh.record.lock().unwrap().faults.entry(what).or_default() += 1;
    }

    fn send(&mut self, reply: &str) -> io::Result<()> {
        self.out.write_all(format!("{reply}\r\n").as_bytes())?;
        self.out.flush()
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        let mut l = Vec::new();
        match self.inp.read_until(b'\n', &mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l),
        }
    }

    /// Say nothing for `d` (past the client's timeout), then hang up.
    fn stall(&mut self, what: &'static str, d: Duration) -> Next {
        self.note(what);
        std::thread::sleep(d);
        Next::Close
    }

    fn refuse_permanently(&mut self, rcpts: &[(String, String)], stage: &'static str, reply: &str) -> io::Result<()> {
        {
            let mut rec = self.sh.record.lock().unwrap();
            for (rcpt, token) in rcpts {
                rec.refused.push(Refusal { rcpt: rcpt.clone(), token: token.clone(), stage });
            }
        }
        self.send(reply)
    }
}

/// The address between `<` and `>`.
fn path_of(line: &str) -> String {
    let start = line.find('<').map_or(line.len(), |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_owned()
}

fn serve(tcp: TcpStream, sh: &RelayShared, rng: Rng) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    let _ = tcp.set_nodelay(true);
    let out = tcp.try_clone()?;
    let mut s = Session { out, inp: BufReader::new(tcp), sh, rng };
    let healed = || sh.healed.load(Ordering::SeqCst);
    if !healed() && sh.outage.load(Ordering::SeqCst) {
        s.note("outage: 421 greeting");
        return s.send("421 4.3.2 soak.test outage, try again later");
    }
    if s.fault(0.02) {
        match s.rng.below(3) {
            0 => {
                s.note("greeting: 421");
                return s.send("421 4.3.2 soak.test busy");
            }
            1 => {
                s.note("greeting: disconnect");
                return Ok(());
            }
            _ => {
                s.stall("greeting: stall", COMMAND_STALL);
                return Ok(());
            }
        }
    }
    s.send("220 mx.soak.test ESMTP soak relay")?;
    // The open transaction's accepted recipients, with their tokens.
    let mut tx: Option<Vec<(String, String)>> = None;
    while let Some(raw) = s.line() {
        let cmd = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_owned();
        let verb = cmd.to_ascii_uppercase().split([' ', ':']).next().unwrap_or("").to_owned();
        let next = match verb.as_str() {
            "EHLO" | "HELO" => {
                if s.fault(0.01) {
                    s.note("EHLO: disconnect");
                    Next::Close
                } else {
                    tx = None;
                    s.send("250-mx.soak.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES")?;
                    Next::Go
                }
            }
            "MAIL" => {
                if !healed() && sh.outage.load(Ordering::SeqCst) {
                    s.note("outage: 451 MAIL");
                    s.send("451 4.3.2 soak.test outage")?;
                    Next::Go
                } else if s.fault(0.03) {
                    s.note("MAIL: 451");
                    s.send("451 4.3.0 soak: try MAIL again later")?;
                    Next::Go
                } else if s.fault(0.005) {
                    s.note("MAIL: 421 and disconnect");
                    s.send("421 4.3.2 soak: closing")?;
                    Next::Close
                } else {
                    tx = Some(Vec::new());
                    s.send("250 2.1.0 Ok")?;
                    Next::Go
                }
            }
            "RCPT" => {
                let rcpt = path_of(&cmd);
                let Some(token) = token_of(&rcpt) else {
                    sh.record.lock().unwrap().problems.push(format!("RCPT of a foreign address: {cmd:?}"));
                    s.send("550 5.1.1 not a soak address")?;
                    continue;
                };
                sh.record.lock().unwrap().seen.insert(token.clone());
                if tx.is_none() {
                    s.send("503 5.5.1 MAIL first")?;
                    continue;
                }
                let roll = if healed() { 1.0 } else { s.rng.unit() };
                if roll < 0.06 {
                    s.note("RCPT: 451");
                    s.send("451 4.2.0 soak: mailbox busy")?;
                    Next::Go
                } else if roll < 0.09 {
                    s.note("RCPT: 550 (permanent)");
                    s.refuse_permanently(&[(rcpt, token)], "RCPT 550", "550 5.1.1 soak: no such mailbox")?;
                    Next::Go
                } else if roll < 0.10 {
                    s.note("RCPT: disconnect");
                    Next::Close
                } else if roll < 0.105 {
                    s.stall("RCPT: stall", COMMAND_STALL)
                } else {
                    if let Some(t) = tx.as_mut() {
                        t.push((rcpt, token));
                    }
                    s.send("250 2.1.5 Ok")?;
                    Next::Go
                }
            }
            "DATA" => data(&mut s, &mut tx)?,
            "RSET" => {
                if s.fault(0.01) {
                    s.note("RSET: disconnect");
                    Next::Close
                } else {
                    tx = None;
                    s.send("250 2.0.0 Ok")?;
                    Next::Go
                }
            }
            "NOOP" => {
                s.send("250 2.0.0 Ok")?;
                Next::Go
            }
            "QUIT" => {
                let _ = s.send("221 2.0.0 Bye");
                Next::Close
            }
            _ => {
                s.send("502 5.5.2 command not recognized")?;
                Next::Go
            }
        };
        if let Next::Close = next {
            return Ok(());
        }
    }
    Ok(())
}

/// DATA: refusals of the command, the data (maybe cut), the final reply.
fn data(s: &mut Session<'_>, tx: &mut Option<Vec<(String, String)>>) -> io::Result<Next> {
    let rcpts = match tx.take() {
        Some(r) if !r.is_empty() => r,
        _ => {
            s.send("554 5.5.1 no valid recipients")?;
            return Ok(Next::Go);
        }
    };
    let roll = if s.sh.healed.load(Ordering::SeqCst) { 1.0 } else { s.rng.unit() };
    if roll < 0.02 {
        s.note("DATA: 451");
        s.send("451 4.3.0 soak: not now")?;
        return Ok(Next::Go);
    }
    if roll < 0.03 {
        s.note("DATA: 554 (permanent)");
        s.refuse_permanently(&rcpts, "DATA 554", "554 5.7.1 soak: transaction refused")?;
        return Ok(Next::Go);
    }
    let cut_after = s.fault(0.015).then(|| s.rng.below(16_384) as usize);
    s.send("354 End data with <CR><LF>.<CR><LF>")?;
    let started = Instant::now();
    s.sh.record.lock().unwrap().transactions += 1;
    let mut msg = Vec::new();
    let mut received = 0usize;
    loop {
        let Some(l) = s.line() else { return Ok(Next::Close) };
        received += l.len();
        if cut_after.is_some_and(|n| received >= n) {
            s.note("data: disconnect midway");
            return Ok(Next::Close);
        }
        if l == b".\r\n" {
            break;
        }
        // Undo dot-stuffing.
        let l = if l.starts_with(b"..") { &l[1..] } else { &l[..] };
        msg.extend_from_slice(l);
    }
    let roll = if s.sh.healed.load(Ordering::SeqCst) { 1.0 } else { s.rng.unit() };
    if roll < 0.05 {
        s.note("end of data: 451");
        s.send("451 4.3.0 soak: queue trouble, try again")?;
        return Ok(Next::Go);
    }
    if roll < 0.08 {
        s.note("end of data: 554 (permanent)");
        s.refuse_permanently(&rcpts, "end of data 554", "554 5.6.0 soak: content refused")?;
        return Ok(Next::Go);
    }
    if roll < 0.10 {
        s.note("end of data: disconnect instead of a reply");
        return Ok(Next::Close);
    }
    if roll < 0.115 {
        return Ok(s.stall("end of data: stall", DATA_STALL));
    }
    let (id, uid, token, problem) = examine(&msg);
    let late = started.elapsed() + Duration::from_millis(500) >= DATA_TIMEOUT;
    {
        let mut rec = s.sh.record.lock().unwrap();
        if let Some(p) = problem {
            rec.problems.push(p);
        }
        for (rcpt, t) in &rcpts {
            if token.as_deref() != Some(t.as_str()) {
                rec.problems.push(format!("message with X-Soak-Token {token:?} sent to {rcpt}"));
            }
            rec.accepted.push(Accept {
                rcpt: rcpt.clone(),
                token: t.clone(),
                id: id.clone(),
                uid,
                at: Instant::now(),
                late,
            });
        }
    }
    s.send("250 2.0.0 Ok: queued")?;
    Ok(Next::Go)
}

/// From a received message: the queue ID and uid of its `Received:` line,
/// its token, and what is wrong with it (a missing header, a body whose
/// sum does not match).
fn examine(msg: &[u8]) -> (String, Option<u32>, Option<String>, Option<String>) {
    let split = msg.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&msg[..i + 2], &msg[i + 4..]),
        None => (msg, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let received = lines.next().unwrap_or("");
    let id = received.split(" id ").nth(1).and_then(|r| r.split(';').next()).unwrap_or("").to_owned();
    let uid =
        received.strip_prefix("Received: from userid ").and_then(|r| r.split(' ').next()).and_then(|u| u.parse().ok());
    let field = |name: &str| head.split("\r\n").find_map(|l| l.strip_prefix(name)).map(str::to_owned);
    let token = field("X-Soak-Token: ");
    let sum = field("X-Soak-Sum: ");
    let problem = if !received.starts_with("Received: from userid ") || id.len() != 26 {
        Some(format!("message for {token:?} without outq's Received line: {received:?}"))
    } else if sum.as_deref() != Some(format!("{:016x}", fnv64(body)).as_str()) {
        Some(format!("message {token:?} (id {id}): body altered ({} bytes, sum {sum:?})", body.len()))
    } else {
        None
    };
    (id, uid, token, problem)
}

// ---------------------------------------------------------------------------
// The installation

/// A tmpfs mounted on a root-owned directory, unmounted on drop.
struct Mount {
    dir: Option<tempfile::TempDir>,
}

impl Mount {
    fn tmpfs(mib: u64) -> Mount {
        let dir = root_tempdir("oqt-soak-fs-");
        let path = dir.path().display().to_string();
        root_cmd("mount", &["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755,uid=0,gid=0"), "oqt-soak", &path]);
        Mount { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let p = dir.path().display().to_string();
            let ok = Command::new("umount").arg(&p).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&p).status();
            }
            drop(dir);
        }
    }
}

/// Everything the soak changes on the system, undone in this order on drop.
struct Install {
    _config: SystemConfig,
    spool: PathBuf,
    _mount: Mount,
    helper: PathBuf,
    outq: PathBuf,
    _bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    _lock: PrivilegedLock,
}

impl Install {
    fn new(p: &Params, relay: &Relay) -> Install {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-soak-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = crate::support::install_outq(bin_dir.path());
        let mount = Mount::tmpfs(p.fs_mib);
        let spool = mount.path().join("spool");
        let config = SystemConfig::take();
        config.write(&format!(
            "spool_directory = {spool}\n\
             spool_min_free = {min_free}\n\
             myhostname = {DOMAIN}\n\
             message_size_limit = 4000000\n\
             relay = smtp://127.0.0.1:{port}\n\
             starttls = off\n\
             connections = {conns}\n\
             queue_run_interval = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n\
             connect_timeout = {ct}s\n\
             command_timeout = {cmd}s\n\
             data_timeout = {dt}s\n\
             shutdown_timeout = 1s\n\
             tmp_max_age = {tmp}s\n",
            spool = spool.display(),
            min_free = p.min_free,
            port = relay.addr.port(),
            conns = p.connections,
            ct = CONNECT_TIMEOUT.as_secs(),
            cmd = COMMAND_TIMEOUT.as_secs(),
            dt = DATA_TIMEOUT.as_secs(),
            tmp = TMP_MAX_AGE.as_secs(),
        ));
        let inst = Install { _config: config, spool, _mount: mount, helper, outq, _bin_dir: bin_dir, acc, _lock: lock };
        let r = inst.outq_cmd(&[
            "init",
            "--spool",
            &inst.spool.display().to_string(),
            "--user",
            &inst.acc.owner.name,
            "--group",
            &inst.acc.group.name,
        ]);
        assert!(r.0 == Some(0), "outq init failed: {r:?}");
        inst
    }

    /// `outq ARGS` as root (the operator commands become the queue owner).
    fn outq_cmd(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(&self.outq).args(args).current_dir("/").stdin(Stdio::null()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }

    /// `outq run [--once]` as the queue owner, logging to `log`.
    fn runner(&self, once: bool, log: &File) -> Child {
        let mut c = as_user(&self.acc.owner, &[], &self.outq);
        c.args(["run", "--log", "stderr"]);
        if once {
            c.arg("--once");
        }
        c.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log.try_clone().unwrap());
        c.spawn().unwrap()
    }

    fn dir(&self, q: &str) -> PathBuf {
        self.spool.join(q)
    }

    fn count(&self, q: &str) -> usize {
        names(&self.dir(q)).len()
    }

    fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.spool).map(|v| outq_spool::fs::available_bytes(&v)).unwrap_or(0)
    }

    /// Files of `queues` that mention `token` (for a refused submission).
    fn find_token(&self, token: &str, queues: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for q in queues {
            for name in names(&self.dir(q)) {
                let p = self.dir(q).join(&name);
                if head_of(&p, 16_384).is_some_and(|d| tokens_in(&d).contains(token)) {
                    found.push(format!("{q}/{name}"));
                }
            }
        }
        found
    }
}

/// What an entry in `failed/` says: its tokens (from the envelope), its
/// failed recipients with their reasons, and what is wrong with it.
#[derive(Debug, Clone, Default)]
struct FailedEntry {
    tokens: HashSet<String>,
    failed: HashMap<String, String>,
    problems: Vec<String>,
}

fn read_failed(inst: &Install, id: &str) -> Option<FailedEntry> {
    use outq::queue::state::{RcptStatus, State};
    let data = std::fs::read(inst.dir("failed").join(id)).ok()?;
    let mut e = FailedEntry { tokens: tokens_in(&data[..data.len().min(65_536)]), ..FailedEntry::default() };
    let text = std::fs::read_to_string(inst.dir("state").join(id)).unwrap_or_default();
    match State::parse(&text) {
        Ok(st) => {
            for rc in &st.recipients {
                match rc.status {
                    RcptStatus::Failed => {
                        e.failed.insert(rc.address.as_str().to_owned(), rc.reply.clone());
                    }
                    RcptStatus::Pending => e.problems.push(format!("failed/{id}: {} still pending", rc.address)),
                    RcptStatus::Sent => {}
                }
            }
        }
        Err(err) => e.problems.push(format!("failed/{id}: state unreadable: {err}")),
    }
    Some(e)
}

/// Read every entry in `failed/`, then delete them with `outq delete`
/// (while the runner runs), so that failures do not fill the small spool.
fn harvest_failed(inst: &Install, into: &mut HashMap<String, FailedEntry>, problems: &mut Vec<String>) {
    let ids: Vec<String> = names(&inst.dir("failed")).into_iter().filter(|id| !into.contains_key(id)).collect();
    let mut read = Vec::new();
    for id in ids {
        if let Some(e) = read_failed(inst, &id) {
            into.insert(id.clone(), e);
            read.push(id);
        }
    }
    for batch in read.chunks(200) {
        let mut args = vec!["delete"];
        args.extend(batch.iter().map(String::as_str));
        let (code, out) = inst.outq_cmd(&args);
        if code != Some(0) {
            problems.push(format!("outq delete of failed entries: {code:?}: {out}"));
        }
    }
}

// ---------------------------------------------------------------------------
// Callers

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Exit(i32),
    /// SIGKILLed by the soak.
    Killed,
    /// Ended by a signal the soak did not send.
    Signal(i32),
    Hung,
}

#[derive(Debug, Clone)]
struct Submission {
    token: String,
    uid: u32,
    rcpts: Vec<String>,
    outcome: Outcome,
    queue_id: String,
    stderr: String,
    /// Where the token was found right after a refusal.
    left_behind: Vec<String>,
}

impl Submission {
    fn space_refusal(&self) -> bool {
        self.outcome == Outcome::Exit(75)
            && (self.stderr.contains("spool_min_free") || self.stderr.contains("spool filesystem full"))
    }
}

struct Callers {
    stop: AtomicBool,
    seq: AtomicU64,
    space_refusals: AtomicU64,
    done: Mutex<Vec<Submission>>,
}

fn submit_one(
    inst: &Install,
    who: &Account,
    token: &str,
    rcpts: &[String],
    msg: &[u8],
    kill: Option<Duration>,
) -> Submission {
    let mut c = as_user(who, &[], &inst.helper);
    c.arg("-f").arg("").arg("--").args(rcpts);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take();
    match (kill, stdin.as_mut()) {
        (None, Some(w)) => {
            let _ = w.write_all(msg);
        }
        (Some(at), Some(w)) => {
            // Slowly, so that the kill can land anywhere in the write.
            for chunk in msg.chunks(16_384) {
                if started.elapsed() >= at || w.write_all(chunk).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        _ => {}
    }
    if kill.is_none_or(|at| started.elapsed() < at) {
        drop(stdin.take());
    }
    let (mut killed, mut hung) = (false, false);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if !killed && kill.is_some_and(|at| started.elapsed() >= at) {
            let _ = child.kill();
            killed = true;
        }
        if !hung && started.elapsed() > HELPER_TIMEOUT {
            let _ = child.kill();
            hung = true;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    drop(stdin);
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let outcome = match (status.code(), status.signal()) {
        _ if hung => Outcome::Hung,
        (Some(code), _) => Outcome::Exit(code),
        (None, Some(9)) if killed => Outcome::Killed,
        (_, sig) => Outcome::Signal(sig.unwrap_or(-1)),
    };
    Submission {
        token: token.to_owned(),
        uid: who.uid,
        rcpts: rcpts.to_vec(),
        outcome,
        queue_id: out.trim_end().to_owned(),
        stderr: err.trim_end().to_owned(),
        left_behind: Vec::new(),
    }
}

fn caller_loop(inst: &Install, p: &Params, callers: &Callers, mut rng: Rng) {
    let who = [&inst.acc.caller, &inst.acc.second];
    while !callers.stop.load(Ordering::SeqCst) {
        let seq = callers.seq.fetch_add(1, Ordering::SeqCst);
        let token = format!("T{seq:07}");
        let rcpts: Vec<String> = (1..=rng.range(1, 3)).map(|k| rcpt_addr(k, &token)).collect();
        let size = pick_size(&mut rng);
        let msg = build_message(&mut rng, &token, &rcpts, size);
        let kill = rng.chance(p.helper_kill_rate).then(|| Duration::from_micros(rng.range(0, 40_000)));
        let user = who[rng.below(2) as usize];
        let mut sub = submit_one(inst, user, &token, &rcpts, &msg, kill);
        if matches!(sub.outcome, Outcome::Exit(c) if c != 0) {
            // The helper has exited: nothing of it may remain.
            sub.left_behind = inst.find_token(&token, &["tmp", "new"]);
        }
        if sub.space_refusal() {
            callers.space_refusals.fetch_add(1, Ordering::SeqCst);
        }
        callers.done.lock().unwrap().push(sub);
        std::thread::sleep(Duration::from_millis(rng.range(p.pace_ms.0, p.pace_ms.1)));
    }
}

// ---------------------------------------------------------------------------
// The runner under SIGKILL

struct RunnerCtl {
    stop: AtomicBool,
    kills: AtomicU64,
    /// When a runner stopped (killed, or a --once pass ended).
    stops: Mutex<Vec<Instant>>,
    problems: Mutex<Vec<String>>,
}

fn runner_loop(inst: &Install, p: &Params, ctl: &RunnerCtl, log: &File, mut rng: Rng) {
    while !ctl.stop.load(Ordering::SeqCst) {
        let mut child = inst.runner(false, log);
        let life = Duration::from_millis(rng.range(p.runner_life_ms.0, p.runner_life_ms.1));
        let born = Instant::now();
        let mut exited = None;
        while born.elapsed() < life && !ctl.stop.load(Ordering::SeqCst) {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match exited {
            Some(st) => ctl.problems.lock().unwrap().push(format!("the runner exited by itself: {st}")),
            None => {
                let _ = child.kill();
                let st = child.wait().unwrap();
                if st.signal() != Some(9) {
                    ctl.problems.lock().unwrap().push(format!("the runner ended before its SIGKILL: {st}"));
                }
            }
        }
        ctl.stops.lock().unwrap().push(Instant::now());
        ctl.kills.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
    }
}

// ---------------------------------------------------------------------------
// The soak

#[test]
fn soak() {
    if !privileged("soak") {
        return;
    }
    let p = Params::from_env();
    let mut rng = Rng::new(p.seed);
    let workdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "soak-{}-{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
        std::process::id()
    ));
    std::fs::create_dir_all(&workdir).unwrap();
    say(&format!(
        "soak: {} mode, {}s, seed {}, {} callers, tmpfs {} MiB, spool_min_free {} bytes, logs in {}",
        if p.long { "long" } else { "short" },
        p.soak.as_secs(),
        p.seed,
        p.submitters,
        p.fs_mib,
        p.min_free,
        workdir.display()
    ));
    let relay = Relay::start(rng.next());
    let inst = Install::new(&p, &relay);
    let log = File::options().create(true).append(true).open(workdir.join("runner.log")).unwrap();

    let callers = Callers {
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        space_refusals: AtomicU64::new(0),
        done: Mutex::new(Vec::new()),
    };
    let ctl = RunnerCtl {
        stop: AtomicBool::new(false),
        kills: AtomicU64::new(0),
        stops: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    };
    let mut outages = 0u64;
    let mut full_outages = 0u64;
    let mut harvested: HashMap<String, FailedEntry> = HashMap::new();
    let mut harvest_problems: Vec<String> = Vec::new();
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        // Whatever happens here, the threads are told to stop.
        let _stop = StopOnDrop(&[&callers.stop, &ctl.stop]);
        let runner_rng = rng.fork();
        scope.spawn(|| runner_loop(&inst, &p, &ctl, &log, runner_rng));
        for _ in 0..p.submitters {
            let r = rng.fork();
            scope.spawn(|| caller_loop(&inst, &p, &callers, r));
        }
        let mut next_outage = t0 + p.first_outage;
        let mut outage: Option<(Instant, u64)> = None;
        let mut full_at: Option<Instant> = None;
        let mut next_progress = t0 + p.progress_every;
        let mut next_harvest = t0 + p.harvest_every;
        while t0.elapsed() < p.soak {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            if now >= next_harvest {
                harvest_failed(&inst, &mut harvested, &mut harvest_problems);
                next_harvest = Instant::now() + p.harvest_every;
            }
            let space = callers.space_refusals.load(Ordering::SeqCst);
            match outage {
                None if now >= next_outage => {
                    relay.set_outage(true);
                    outage = Some((now, space));
                    outages += 1;
                }
                Some((since, base)) => {
                    if full_at.is_none() && space > base {
                        full_at = Some(now);
                        full_outages += 1;
                    }
                    let full_long_enough = full_at.is_some_and(|f| now - f >= Duration::from_secs(2));
                    if full_long_enough || now - since >= p.outage_max {
                        relay.set_outage(false);
                        outage = None;
                        full_at = None;
                        next_outage = now + Duration::from_secs(rng.range(p.outage_gap_s.0, p.outage_gap_s.1));
                    }
                }
                None => {}
            }
            if now >= next_progress {
                next_progress = now + p.progress_every;
                let done = callers.done.lock().unwrap();
                let ok = done.iter().filter(|s| s.outcome == Outcome::Exit(0)).count();
                let rec = relay.shared.record.lock().unwrap();
                say(&format!(
                    "soak: {:>5}s submitted {} (ok {ok}, space refusals {space}), runner kills {}, relay accepted {}, \
                     queue new {} active {} deferred {} hold {} failed {} (+{} deleted), free {} KiB{}",
                    t0.elapsed().as_secs(),
                    done.len(),
                    ctl.kills.load(Ordering::SeqCst),
                    rec.accepted.len(),
                    inst.count("new"),
                    inst.count("active"),
                    inst.count("deferred"),
                    inst.count("hold"),
                    inst.count("failed"),
                    harvested.len(),
                    inst.free_bytes() / 1024,
                    if outage.is_some() { " [outage]" } else { "" },
                ));
            }
        }
        relay.set_outage(false);
        callers.stop.store(true, Ordering::SeqCst);
        ctl.stop.store(true, Ordering::SeqCst);
    });
    let soaked = t0.elapsed();

    // Heal, then drain: release what is held, make everything due, run.
    relay.heal();
    let mut held_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut released = 0usize;
    let mut rounds = 0;
    let mut drain_problems = Vec::new();
    loop {
        rounds += 1;
        let held = names(&inst.dir("hold"));
        if !held.is_empty() {
            for id in &held {
                let st = std::fs::read_to_string(inst.dir("state").join(id)).unwrap_or_default();
                let why = st.lines().find_map(|l| l.strip_prefix("hold ")).unwrap_or("(no state)");
                *held_reasons.entry(why.to_owned()).or_default() += 1;
            }
            let mut args = vec!["release"];
            args.extend(held.iter().map(String::as_str));
            let r = inst.outq_cmd(&args);
            assert_eq!(r.0, Some(0), "outq release: {}", r.1);
            released += held.len();
        }
        let r = inst.outq_cmd(&["flush"]);
        assert_eq!(r.0, Some(0), "outq flush: {}", r.1);
        once(&inst, &log, &ctl, &mut drain_problems);
        let left: usize = ["new", "active", "deferred", "hold"].iter().map(|q| inst.count(q)).sum();
        if left == 0 {
            break;
        }
        if rounds >= 30 {
            drain_problems.push(format!("the queue did not drain in {rounds} passes: {left} entries left"));
            break;
        }
    }
    // The files of killed callers in tmp/ go once older than tmp_max_age.
    std::thread::sleep(TMP_MAX_AGE + Duration::from_millis(2100));
    once(&inst, &log, &ctl, &mut drain_problems);

    drain_problems.extend(harvest_problems);
    let report = Report::build(&inst, &relay, &callers, &ctl, &workdir, harvested);
    let mut text = report.render(&p, soaked, outages, full_outages, released, &held_reasons, rounds);
    for d in &drain_problems {
        text.push_str(&format!("PROBLEM: {d}\n"));
    }
    std::fs::write(workdir.join("summary.txt"), &text).unwrap();
    say(&text);
    let mut failures: Vec<String> = report.problems.clone();
    failures.extend(drain_problems);
    if report.space_refusals == 0 {
        failures.push("the spool never filled up: no submission was refused with 75 for space".into());
    }
    assert!(
        failures.is_empty(),
        "soak failed (logs in {}):\n{}",
        workdir.display(),
        failures.iter().take(40).map(|f| format!("  {f}\n")).collect::<String>()
    );
}

/// Sets the flags when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// One `outq run --once` as the queue owner.
fn once(inst: &Install, log: &File, ctl: &RunnerCtl, problems: &mut Vec<String>) {
    let mut child = inst.runner(true, log);
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > ONCE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ctl.stops.lock().unwrap().push(Instant::now());
    match status {
        Some(st) if st.success() => {}
        Some(st) => problems.push(format!("outq run --once failed: {st}")),
        None => problems.push(format!("outq run --once did not finish within {ONCE_TIMEOUT:?}")),
    }
}

// ---------------------------------------------------------------------------
// The checks

#[derive(Debug, Default)]
struct Report {
    submissions: usize,
    ok: usize,
    refused: BTreeMap<i32, usize>,
    refusal_reasons: BTreeMap<String, usize>,
    space_refusals: usize,
    space_min_free: usize,
    space_enospc: usize,
    helper_kills: usize,
    killed_committed: usize,
    runner_kills: u64,
    runner_enospc_lines: usize,
    /// `cannot recover from active/`: the state could not be written at a
    /// start (the log line does not say why; on this spool, a full disk).
    runner_recovery_failures: usize,
    runner_recoveries_to_hold: usize,
    relay_connections: u64,
    relay_transactions: u64,
    faults: BTreeMap<&'static str, u64>,
    acceptances: usize,
    pairs_delivered: usize,
    duplicate_copies: usize,
    duplicate_pairs: usize,
    max_copies: usize,
    dup_after_stop: usize,
    dup_after_late: usize,
    losses: usize,
    failed_entries: usize,
    failed_deleted: usize,
    failed_rcpts: usize,
    failed_by_stage: BTreeMap<&'static str, usize>,
    permanent_refusals: usize,
    leftover_state_tmp: usize,
    problems: Vec<String>,
}

impl Report {
    fn build(
        inst: &Install,
        relay: &Relay,
        callers: &Callers,
        ctl: &RunnerCtl,
        workdir: &Path,
        harvested: HashMap<String, FailedEntry>,
    ) -> Report {
        let mut r = Report::default();
        let subs = callers.done.lock().unwrap().clone();
        let rec = relay.shared.record.lock().unwrap();
        let stops = ctl.stops.lock().unwrap().clone();
        r.problems.extend(ctl.problems.lock().unwrap().iter().cloned());
        r.problems.extend(rec.problems.iter().cloned());
        r.runner_kills = ctl.kills.load(Ordering::SeqCst);
        r.relay_connections = rec.connections;
        r.relay_transactions = rec.transactions;
        r.faults = rec.faults.clone();
        r.acceptances = rec.accepted.len();
        r.permanent_refusals = rec.refused.len();

        let log = std::fs::read_to_string(workdir.join("runner.log")).unwrap_or_default();
        r.runner_enospc_lines = log.lines().filter(|l| l.contains("No space left on device")).count();
        r.runner_recovery_failures = log.lines().filter(|l| l.contains("cannot recover from active/")).count();
        r.runner_recoveries_to_hold =
            log.lines().filter(|l| l.contains("interrupted delivery, moved to hold/")).count();

        // What the relay saw, by (recipient, token).
        let mut accepted: HashMap<(String, String), Vec<&Accept>> = HashMap::new();
        for a in &rec.accepted {
            accepted.entry((a.rcpt.clone(), a.token.clone())).or_default().push(a);
        }
        let refused: HashMap<(String, String), &'static str> =
            rec.refused.iter().map(|f| ((f.rcpt.clone(), f.token.clone()), f.stage)).collect();
        r.pairs_delivered = accepted.len();

        // The spool after the drain.
        let mut in_spool: HashMap<String, Vec<String>> = HashMap::new();
        for q in QUEUES {
            for name in names(&inst.dir(q)) {
                let data = std::fs::read(inst.dir(q).join(&name)).unwrap_or_default();
                for t in tokens_in(&data[..data.len().min(65_536)]) {
                    in_spool.entry(t).or_default().push(format!("{q}/{name}"));
                }
                if q != "failed" {
                    r.problems.push(format!("{q}/{name} left after the drain"));
                }
            }
        }
        let failed_ids: HashSet<String> = names(&inst.dir("failed")).into_iter().collect();
        r.failed_entries = failed_ids.len();
        for name in names(&inst.dir("state")) {
            if name.starts_with('.') {
                r.leftover_state_tmp += 1;
            } else if !failed_ids.contains(&name) {
                r.problems.push(format!("state/{name} without an entry in failed/"));
            }
        }
        // Failed entries, deleted during the soak or left at the end.
        r.failed_deleted = harvested.len();
        let mut failed = harvested;
        for id in &failed_ids {
            if let Some(e) = read_failed(inst, id) {
                failed.insert(id.clone(), e);
            }
        }
        let mut failed_by_token: HashMap<String, Vec<String>> = HashMap::new();
        for (id, e) in &failed {
            r.problems.extend(e.problems.iter().cloned());
            for t in &e.tokens {
                failed_by_token.entry(t.clone()).or_default().push(id.clone());
            }
        }
        r.failed_entries = failed.len();

        let mut ids_seen: HashMap<String, String> = HashMap::new();
        let tokens: HashSet<&str> = subs.iter().map(|s| s.token.as_str()).collect();
        for s in &subs {
            r.submissions += 1;
            let committed = match &s.outcome {
                Outcome::Exit(0) => {
                    r.ok += 1;
                    let valid = s.queue_id.len() == 26 && s.queue_id.bytes().all(|b| b.is_ascii_hexdigit());
                    if !valid {
                        r.problems.push(format!("{}: exit 0 but printed {:?}", s.token, s.queue_id));
                    }
                    if let Some(other) = ids_seen.insert(s.queue_id.clone(), s.token.clone()) {
                        r.problems.push(format!("queue ID {} printed for {} and {other}", s.queue_id, s.token));
                    }
                    true
                }
                Outcome::Exit(code) => {
                    *r.refused.entry(*code).or_default() += 1;
                    *r.refusal_reasons.entry(format!("{code}: {}", normalise(&s.stderr))).or_default() += 1;
                    if s.space_refusal() {
                        r.space_refusals += 1;
                        if s.stderr.contains("spool_min_free") {
                            r.space_min_free += 1;
                        } else {
                            r.space_enospc += 1;
                        }
                    }
                    if !s.left_behind.is_empty() {
                        r.problems.push(format!(
                            "{} refused with {code} but left {:?} behind ({})",
                            s.token, s.left_behind, s.stderr
                        ));
                    }
                    let at_relay = rec.seen.contains(&s.token);
                    if at_relay || in_spool.contains_key(&s.token) || failed_by_token.contains_key(&s.token) {
                        r.problems.push(format!(
                            "{} refused with {code} ({}) but reached the relay ({at_relay}) or the spool ({:?} {:?})",
                            s.token,
                            s.stderr,
                            in_spool.get(&s.token),
                            failed_by_token.get(&s.token)
                        ));
                    }
                    false
                }
                Outcome::Killed => {
                    r.helper_kills += 1;
                    let seen = rec.seen.contains(&s.token)
                        || in_spool.contains_key(&s.token)
                        || failed_by_token.contains_key(&s.token);
                    if seen {
                        r.killed_committed += 1;
                    }
                    seen
                }
                Outcome::Signal(sig) => {
                    r.problems.push(format!("{}: the helper died of signal {sig}: {}", s.token, s.stderr));
                    false
                }
                Outcome::Hung => {
                    r.problems.push(format!("{}: the helper did not finish within {HELPER_TIMEOUT:?}", s.token));
                    false
                }
            };
            if !committed {
                continue;
            }
            // Accounted for: delivered to each recipient, or failed for a
            // reason the relay gave.
            let ok = s.outcome == Outcome::Exit(0);
            for rcpt in &s.rcpts {
                let key = (rcpt.clone(), s.token.clone());
                if let Some(copies) = accepted.get(&key) {
                    for a in copies {
                        if (ok && a.id != s.queue_id) || a.uid != Some(s.uid) {
                            r.problems.push(format!(
                                "{rcpt}: delivered with id {} uid {:?}, submitted as {} by uid {}",
                                a.id, a.uid, s.queue_id, s.uid
                            ));
                        }
                    }
                    continue;
                }
                let ids: Vec<String> = if ok {
                    vec![s.queue_id.clone()]
                } else {
                    failed_by_token.get(&s.token).cloned().unwrap_or_default()
                };
                let reason = ids.iter().find_map(|id| failed.get(id).and_then(|e| e.failed.get(rcpt)));
                match (reason, refused.get(&key)) {
                    (Some(why), Some(stage)) if !why.is_empty() => {
                        r.failed_rcpts += 1;
                        *r.failed_by_stage.entry(stage).or_default() += 1;
                    }
                    (Some(why), stage) => {
                        r.losses += 1;
                        r.problems.push(format!(
                            "LOSS: {rcpt} of {} ({:?}) failed with {why:?}, but the relay refused it {stage:?}",
                            s.queue_id, s.outcome
                        ));
                    }
                    (None, _) => {
                        r.losses += 1;
                        r.problems.push(format!(
                            "LOSS: {rcpt} of {} ({:?}) never reached the relay and is not in failed/ (spool: {:?})",
                            s.queue_id,
                            s.outcome,
                            in_spool.get(&s.token)
                        ));
                    }
                }
            }
        }
        for t in &rec.seen {
            if !tokens.contains(t.as_str()) {
                r.problems.push(format!("the relay saw {t}, which no caller submitted"));
            }
        }

        // Duplicates, each explained by a runner stop between the two
        // acceptances or by a reply the client no longer waited for.
        for ((rcpt, token), copies) in &accepted {
            r.max_copies = r.max_copies.max(copies.len());
            if copies.len() < 2 {
                continue;
            }
            r.duplicate_pairs += 1;
            let mut sorted = copies.clone();
            sorted.sort_by_key(|a| a.at);
            for w in sorted.windows(2) {
                let (a, b) = (w[0], w[1]);
                r.duplicate_copies += 1;
                if a.id != b.id {
                    r.problems.push(format!("{rcpt}: {token} delivered from two entries, {} and {}", a.id, b.id));
                }
                if stops.iter().any(|s| *s > a.at && *s < b.at) {
                    r.dup_after_stop += 1;
                } else if a.late {
                    r.dup_after_late += 1;
                } else {
                    r.problems.push(format!(
                        "unexplained duplicate: {rcpt} ({token}, {}) accepted again {:?} later with no runner stop \
                         in between",
                        a.id,
                        b.at - a.at
                    ));
                }
            }
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn render(
        &self,
        p: &Params,
        soaked: Duration,
        outages: u64,
        full_outages: u64,
        released: usize,
        held: &BTreeMap<String, u64>,
        rounds: usize,
    ) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(format!(
            "==== outq soak summary ({} mode, {}s of faults, seed {}, {} callers, {} connections, tmpfs {} MiB, \
             spool_min_free {})",
            if p.long { "long" } else { "short" },
            soaked.as_secs(),
            p.seed,
            p.submitters,
            p.connections,
            p.fs_mib,
            p.min_free
        ));
        let refused: Vec<String> = self.refused.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        line(format!(
            "submissions: {} total; exit 0: {}; refused: {} [{}]; helpers killed: {} ({} had committed)",
            self.submissions,
            self.ok,
            self.refused.values().sum::<usize>(),
            refused.join(", "),
            self.helper_kills,
            self.killed_committed
        ));
        for (why, n) in &self.refusal_reasons {
            line(format!("  refused {n:>6} x {why}"));
        }
        line(format!("kills: runner {} (SIGKILL), helpers {}", self.runner_kills, self.helper_kills));
        line(format!(
            "disk full: {} refusals with 75 for space ({} below spool_min_free, {} ENOSPC while writing); \
             {} of {} relay outages filled the spool; runner: {} state writes failed with ENOSPC, {} recoveries \
             failed (entry left in active/ until the next start)",
            self.space_refusals,
            self.space_min_free,
            self.space_enospc,
            full_outages,
            outages,
            self.runner_enospc_lines,
            self.runner_recovery_failures
        ));
        line(format!(
            "relay: {} connections, {} transactions with data, {} acceptances of {} (recipient, token) pairs, \
             {} permanent refusals",
            self.relay_connections,
            self.relay_transactions,
            self.acceptances,
            self.pairs_delivered,
            self.permanent_refusals
        ));
        let faults: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        line(format!("faults injected: {}", faults.join("; ")));
        line(format!(
            "duplicates: {} extra copies on {} pairs (max {} copies of one); after a runner stop {}, after a late \
             relay reply {}",
            self.duplicate_copies, self.duplicate_pairs, self.max_copies, self.dup_after_stop, self.dup_after_late
        ));
        let stages: Vec<String> = self.failed_by_stage.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        line(format!(
            "failed: {} entries ({} deleted from failed/ during the soak), {} recipients failed with a relay's \
             permanent refusal [{}]",
            self.failed_entries,
            self.failed_deleted,
            self.failed_rcpts,
            stages.join(", ")
        ));
        let held: Vec<String> = held.iter().map(|(k, v)| format!("{v} x {k}")).collect();
        line(format!(
            "held: {} entries released from hold/ at the end [{}]; runner moved to hold/ {} times; drain passes {}",
            released,
            held.join(", "),
            self.runner_recoveries_to_hold,
            rounds
        ));
        line(format!("state/: {} leftover temporary state files (.ID.tmp)", self.leftover_state_tmp));
        line(format!("LOSSES: {}", self.losses));
        line(format!("problems: {}", self.problems.len()));
        for p in self.problems.iter().take(40) {
            line(format!("PROBLEM: {p}"));
        }
        t
    }
}
