/*!
The operator commands (`outq list`, `show`, `flush`, `hold`, `release`,
`delete`, `requeue`, `status`) on a real installation: a spool owned by a
test queue owner, entries submitted by a test caller through the installed
set-group-ID helper, and runners started as the queue owner with
`relay = pipe:relay.sh`, whose behaviour for each attempt is read from a
control file the test writes ([`Mode`]): defer (exit 75), deliver (0), fail
(1) or sleep (stay in the attempt, so the entry stays in `active/`).

The commands are run as the queue owner, as root (the test process itself,
which becomes the owner) and as other users (refused with exit 77); the
tests assert their output, exit status and what they left in the spool.

Every test needs root (accounts, the set-group-ID helper,
`/etc/outq/outq.conf`): not as root each prints `SKIPPED (needs root):
NAME` and passes, unless `OUTQ_REQUIRE_PRIVILEGED=1`. Runners are started
in their own process group and killed with it on drop; every wait is
bounded.
*/

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{
    Account, PrivilegedLock, Ran, SystemConfig, TestAccounts, as_user, install_helper, list, privileged,
    privileged_lock, root_tempdir, run_timeout, wait_timeout, wait_until,
};

/// Upper bound for one command, one runner pass or one wait: they take
/// milliseconds, so only a hang reaches it.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The queue directories an operator sees, and `state/`.
const QUEUES: [&str; 7] = ["new", "active", "deferred", "hold", "failed", "corrupt", "state"];

/// What the relay script does for an attempt.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Exit 75 with `451 4.3.0 try again later`.
    Defer,
    /// Exit 0.
    Deliver,
    /// Exit 1 with `550 5.1.1 no such user`.
    Fail,
    /// Wait (at most a minute) until the mode changes, then do that.
    Sleep,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Defer => "defer",
            Mode::Deliver => "deliver",
            Mode::Fail => "fail",
            Mode::Sleep => "sleep",
        }
    }
}

/// The relay. `CTL` and `LOG` are replaced by the fixture's directories.
/// Each attempt appends `ID start MODE` when it starts and `ID MODE` when
/// it ends to `LOG/calls`.
const RELAY: &str = r#"#!/bin/sh
ctl=CTL
log=LOG
id=$OUTQ_QUEUE_ID
cat > /dev/null
mode() { cat "$ctl/mode.$id" 2>/dev/null || cat "$ctl/mode" 2>/dev/null; }
m=$(mode)
echo "$id start $m" >> "$log/calls"
n=0
while [ "$m" = sleep ]; do
    n=$((n + 1))
    if [ "$n" -gt 600 ]; then
        echo "451 4.3.0 the test relay gave up sleeping" >&2
        exit 75
    fi
    sleep 0.1
    m=$(mode)
done
echo "$id $m" >> "$log/calls"
case $m in
    deliver) exit 0 ;;
    fail) echo "550 5.1.1 no such user" >&2; exit 1 ;;
    *) echo "451 4.3.0 try again later" >&2; exit 75 ;;
esac
"#;

// ---------------------------------------------------------------------------
// Background runners

/// `outq run` started in its own process group, its standard error (the
/// log) collected by a thread. Dropped before it was reaped, the whole
/// group (the runner and its relay scripts) is killed.
struct Bg {
    child: Child,
    what: String,
    err: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    reaped: bool,
}

impl Bg {
    fn spawn(mut cmd: Command) -> Bg {
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let err = Arc::new(Mutex::new(Vec::new()));
        let (stderr, buf) = (child.stderr.take().unwrap(), err.clone());
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                buf.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        });
        Bg { child, what, err, reader: Some(reader), reaped: false }
    }

    /// The runner's pid (`setpriv` executes it in place).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    #[track_caller]
    fn wait_log(&mut self, needle: &str) {
        let found = wait_until(TIMEOUT, || self.log().contains(needle) || self.child.try_wait().unwrap().is_some());
        assert!(found && self.log().contains(needle), "{} never logged {needle:?}; log:\n{}", self.what, self.log());
    }

    /// SIGKILL the whole process group and reap the runner.
    fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Wait (bounded) for the end: the exit status and the log.
    #[track_caller]
    fn finish(mut self) -> Ran {
        let Some(status) = wait_timeout(&mut self.child, TIMEOUT) else {
            self.kill_group();
            panic!("{} did not finish within {TIMEOUT:?}; log:\n{}", self.what, self.log());
        };
        self.reaped = true;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ran { code: status.code(), stdout: String::new(), stderr: self.log() }
    }

    /// SIGTERM, then the end, which must be a clean exit.
    #[track_caller]
    fn stop(self) -> String {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM).unwrap();
        let r = self.finish();
        assert_eq!(r.code, Some(0), "runner after SIGTERM:\n{}", r.stderr);
        r.stderr
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if !self.reaped {
            // Not reaped, so its pid still names its process group.
            self.kill_group();
        }
    }
}

// ---------------------------------------------------------------------------
// The installation

/// One test's installation. Fields drop in order: the configuration is
/// restored, the spool and the binaries removed, the accounts deleted, and
/// only then the lock released. (Runners are locals of the test, declared
/// after the fixture, so they are killed first.)
///
/// ```text
/// <bin_dir>/        root 0755
///   outq-enqueue    root:<group> 2755
///   outq            a copy the test accounts can run
///   relay.sh        root 0755, the pipe: relay
///   ctl/            root 0755: mode, mode.ID (root 0644)
/// <spool_dir>/      root 0755
///   spool/          made by 'outq init', owned by the queue owner
///   log/            the queue owner's: the relay's calls file
/// ```
struct Ops {
    config: SystemConfig,
    spool: PathBuf,
    log: PathBuf,
    _spool_dir: tempfile::TempDir,
    outq: PathBuf,
    helper: PathBuf,
    relay: PathBuf,
    ctl: PathBuf,
    _bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    _lock: PrivilegedLock,
}

impl Ops {
    fn new() -> Ops {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-ops-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = crate::support::install_outq(bin_dir.path());
        let ctl = bin_dir.path().join("ctl");
        std::fs::create_dir(&ctl).unwrap();
        std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spool_dir = root_tempdir("oqt-ops-spool-");
        let spool = spool_dir.path().join("spool");
        let log = spool_dir.path().join("log");
        std::fs::create_dir(&log).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&log, Some(acc.owner.uid), Some(acc.owner.gid)).unwrap();
        let relay = bin_dir.path().join("relay.sh");
        let text = RELAY.replace("CTL", &ctl.display().to_string()).replace("LOG", &log.display().to_string());
        std::fs::write(&relay, text).unwrap();
        std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = SystemConfig::take();
        let ops = Ops {
            config,
            spool,
            log,
            _spool_dir: spool_dir,
            outq,
            helper,
            relay,
            ctl,
            _bin_dir: bin_dir,
            acc,
            _lock: lock,
        };
        // The system configuration serves the helper (whose path is fixed),
        // the runner and the commands; it is root's, in root's directories,
        // so root may read it too. An hour between scans: only commits and
        // `outq flush` make a running daemon look at the queue.
        ops.write_config("");
        ops.set_mode(Mode::Defer);
        let spool = ops.spool.display().to_string();
        let r = ops.root(&["init", "--spool", &spool, "--user", &ops.acc.owner.name, "--group", &ops.acc.group.name]);
        r.assert_code(0);
        ops
    }

    /// The system configuration: this spool, the relay, `extra` lines.
    fn write_config(&self, extra: &str) {
        self.config.write(&format!(
            "spool_directory = {}\nspool_min_free = 0\nmyhostname = test.example\nrelay = pipe:{}\n\
             queue_run_interval = 1h\n{extra}",
            self.spool.display(),
            self.relay.display()
        ));
    }

    fn owner(&self) -> &Account {
        &self.acc.owner
    }

    /// `outq ARGS` as `who`, through setpriv with an empty environment.
    fn outq_as(&self, who: &Account, args: &[&str]) -> Ran {
        let mut c = as_user(who, &[], &self.outq);
        c.args(args);
        run_timeout(c, b"", TIMEOUT)
    }

    /// `outq ARGS` as the queue owner.
    fn op(&self, args: &[&str]) -> Ran {
        self.outq_as(self.owner(), args)
    }

    /// `outq ARGS` run by this (root) process itself, empty environment.
    fn root(&self, args: &[&str]) -> Ran {
        let mut c = Command::new(&self.outq);
        c.env_clear().current_dir("/").args(args);
        run_timeout(c, b"", TIMEOUT)
    }

    /// The caller submits `body` through the installed helper.
    #[track_caller]
    fn submit(&self, args: &[&str], body: &[u8]) -> String {
        let mut c = as_user(&self.acc.caller, &[], &self.helper);
        c.args(args);
        run_timeout(c, body, TIMEOUT).queue_id()
    }

    /// `outq run [--once] --log stderr` as the queue owner, in the background.
    fn spawn_runner(&self, once: bool) -> Bg {
        let mut c = as_user(self.owner(), &[], &self.outq);
        c.arg("run");
        if once {
            c.arg("--once");
        }
        c.args(["--log", "stderr"]);
        Bg::spawn(c)
    }

    /// One `outq run --once` pass, which must succeed; returns its log.
    #[track_caller]
    fn run_once(&self) -> String {
        let r = self.spawn_runner(true).finish();
        assert_eq!(r.code, Some(0), "outq run --once:\n{}", r.stderr);
        r.stderr
    }

    /// The daemon, once it has said it started.
    #[track_caller]
    fn start_daemon(&self) -> Bg {
        let mut d = self.spawn_runner(false);
        d.wait_log("runner started");
        d
    }

    fn write_ctl(&self, name: &str, mode: Mode) {
        // Replaced by a rename: the relay never reads a half-written file.
        let tmp = self.ctl.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, mode.word()).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, self.ctl.join(name)).unwrap();
    }

    /// What the relay does from now on for every entry.
    fn set_mode(&self, mode: Mode) {
        self.write_ctl("mode", mode);
    }

    /// What the relay does from now on for entry `id` alone.
    fn set_mode_for(&self, id: &str, mode: Mode) {
        self.write_ctl(&format!("mode.{id}"), mode);
    }

    /// The relay's record of its attempts, one line each start and end.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.join("calls")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// The attempts of `id` that ended in `mode`.
    fn ended(&self, id: &str, mode: Mode) -> usize {
        let line = format!("{id} {}", mode.word());
        self.calls().iter().filter(|l| **l == line).count()
    }

    /// The attempts of `id` that started.
    fn started(&self, id: &str) -> usize {
        let prefix = format!("{id} start ");
        self.calls().iter().filter(|l| l.starts_with(&prefix)).count()
    }

    fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }

    fn path(&self, q: &str, name: &str) -> PathBuf {
        self.spool.join(q).join(name)
    }

    fn state(&self, id: &str) -> String {
        std::fs::read_to_string(self.path("state", id)).unwrap_or_else(|e| panic!("state/{id}: {e}"))
    }

    /// Which queue holds `id` (none when it is gone).
    fn where_is(&self, id: &str) -> Option<&'static str> {
        QUEUES.iter().copied().filter(|q| *q != "state").find(|q| self.path(q, id).exists())
    }

    /// `id` is nowhere, its state file included: the runner removes the
    /// entry first and its state right after, so a wait for the end of a
    /// delivery waits for both.
    fn gone(&self, id: &str) -> bool {
        self.where_is(id).is_none() && !self.names("state").iter().any(|n| n.contains(id))
    }

    /// `id` is in queue `q` and nowhere else.
    #[track_caller]
    fn assert_in(&self, id: &str, q: &str) {
        let found: Vec<&str> =
            QUEUES.iter().copied().filter(|q| *q != "state").filter(|q| self.path(q, id).exists()).collect();
        assert_eq!(found, vec![q], "{id} is not (only) in {q}/");
    }

    /// `id` is nowhere: no entry, no state, no request.
    #[track_caller]
    fn assert_gone(&self, id: &str) {
        assert_eq!(self.where_is(id), None, "{id} is still queued");
        let left: Vec<String> = self.names("state").into_iter().filter(|n| n.contains(id)).collect();
        assert!(left.is_empty(), "{id} left {left:?} in state/");
    }

    /// Every name in every queue and `state/`, with each state file's text.
    fn snapshot(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for q in QUEUES {
            for n in self.names(q) {
                let text =
                    if q == "state" { std::fs::read_to_string(self.path(q, &n)).unwrap() } else { String::new() };
                v.push((format!("{q}/{n}"), text));
            }
        }
        v
    }

    /// `file` belongs to the queue owner (user and primary group).
    #[track_caller]
    fn assert_owners(&self, file: &Path) {
        let m = std::fs::symlink_metadata(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!((m.uid(), m.gid()), (self.owner().uid, self.owner().gid), "owner of {}", file.display());
    }

    /// `outq list --json` as the owner, its `entries`.
    #[track_caller]
    fn list_json(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let r = self.op(&args);
        r.assert_code(0);
        json(&r.stdout)["entries"].as_array().unwrap_or_else(|| panic!("no entries array: {}", r.stdout)).clone()
    }
}

// ---------------------------------------------------------------------------
// Reading the output

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[track_caller]
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The keys of a JSON object, sorted.
#[track_caller]
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect();
    k.sort();
    k
}

/// `exit 0`, nothing on standard error, exactly `stdout`.
#[track_caller]
fn assert_ok(r: &Ran, stdout: &str) {
    r.assert_code(0);
    assert_eq!(r.stderr, "", "unexpected standard error");
    assert_eq!(r.stdout, stdout, "unexpected standard output");
}

/// Exit `code`, nothing on standard output, one `outq: WHAT (FIX)` line on
/// standard error that contains `needle`.
#[track_caller]
fn assert_error(r: &Ran, code: i32, needle: &str) {
    r.assert_code(code);
    assert_eq!(r.stdout, "", "printed on standard output");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {:?}", r.stderr);
    let l = lines[0];
    assert!(l.starts_with("outq: ") && l.ends_with(')') && l.contains(" ("), "malformed error line {l:?}");
    assert!(l.contains(needle), "error line {l:?} lacks {needle:?}");
}

/// One line of `outq list`.
#[derive(Debug)]
struct Line {
    id: String,
    state: String,
    age: String,
    size: u64,
    sender: String,
    /// pending/delivered/failed
    counts: String,
    next: String,
    last: String,
}

#[track_caller]
fn parse_line(l: &str) -> Line {
    let t: Vec<&str> = l.split_whitespace().collect();
    assert!(t.len() >= 7, "short list line {l:?}");
    let (next, rest) = if t[6] == "in" { (format!("in {}", t[7]), &t[8..]) } else { (t[6].to_owned(), &t[7..]) };
    Line {
        id: t[0].to_owned(),
        state: t[1].to_owned(),
        age: t[2].to_owned(),
        size: t[3].parse().unwrap_or_else(|_| panic!("bad size in {l:?}")),
        sender: t[4].to_owned(),
        counts: t[5].to_owned(),
        next,
        last: rest.join(" "),
    }
}

/// `outq list` output, one parsed line per entry.
#[track_caller]
fn parse_list(r: &Ran) -> Vec<Line> {
    r.assert_code(0);
    assert_eq!(r.stderr, "");
    r.stdout.lines().map(parse_line).collect()
}

/// One state's line of `outq status`: (count, bytes, oldest).
#[track_caller]
fn status_row(text: &str, state: &str) -> (u64, u64, String) {
    let l = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(state))
        .unwrap_or_else(|| panic!("no {state} line in\n{text}"));
    let t: Vec<&str> = l.split_whitespace().collect();
    assert_eq!((t.len(), t[2], t[4], t[5]), (7, "entries", "bytes", "oldest"), "malformed status line {l:?}");
    (t[1].parse().unwrap(), t[3].parse().unwrap(), t[6].to_owned())
}

/// One state of `outq status --json`.
#[track_caller]
fn status_state<'a>(doc: &'a Value, state: &str) -> &'a Value {
    doc["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == state)
        .unwrap_or_else(|| panic!("no state {state} in {doc}"))
}

/// Wait until `cond` holds; fail with `what` and the runner's log if not.
#[track_caller]
fn wait_for(what: &str, runner: Option<&Bg>, cond: impl FnMut() -> bool) {
    if !wait_until(TIMEOUT, cond) {
        panic!("timed out waiting until {what}; runner log:\n{}", runner.map(Bg::log).unwrap_or_default());
    }
}

const MSG_A: &[u8] =
    b"From: app@example.org\r\nTo: x@example.org, y@example.org\r\nSubject: ops test\r\n\r\nline one\r\nline two\r\n";

fn msg(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\n\nbody of {subject}\n").into_bytes()
}

// ---------------------------------------------------------------------------
// 1. Looking: list, show; usage errors

#[test]
fn ops_list_and_show_describe_each_entry() {
    if !privileged("ops_list_and_show_describe_each_entry") {
        return;
    }
    let fx = Ops::new();
    assert_ok(&fx.op(&["list"]), "queue is empty\n");

    let t0 = now();
    let a = fx.submit(&["-f", "app@example.org", "x@example.org", "y@example.org"], MSG_A);
    let b_body = b"Subject: second\n\nno final newline".to_vec();
    let b = fx.submit(&["-f", "", "z@example.org"], &b_body);
    let t1 = now();

    // Before any runner: both in new/, all recipients pending, no next attempt.
    let lines = parse_list(&fx.op(&["list"]));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let la = lines.iter().find(|l| l.id == a).expect("A listed");
    assert_eq!((la.state.as_str(), la.size, la.sender.as_str()), ("new", MSG_A.len() as u64, "<app@example.org>"));
    assert_eq!((la.counts.as_str(), la.next.as_str(), la.last.as_str()), ("2/0/0", "-", "waiting for pickup"));
    let lb = lines.iter().find(|l| l.id == b).expect("B listed");
    assert_eq!((lb.state.as_str(), lb.sender.as_str(), lb.counts.as_str()), ("new", "<>", "1/0/0"));

    // One pass that defers both.
    fx.run_once();
    fx.assert_in(&a, "deferred");
    fx.assert_in(&b, "deferred");
    let reply = format!("{} exit 75: 451 4.3.0 try again later", fx.relay.display());

    // Text: one line per entry, oldest first.
    let r = fx.op(&["list"]);
    let lines = parse_list(&r);
    assert_eq!(lines.iter().map(|l| l.id.clone()).collect::<Vec<_>>(), vec![a.clone(), b.clone()], "{}", r.stdout);
    let la = &lines[0];
    assert_eq!(la.state, "deferred");
    assert!(la.age.ends_with('s') && la.age.len() <= 3, "age of a fresh entry: {:?}", la.age);
    assert_eq!((la.size, la.sender.as_str(), la.counts.as_str()), (MSG_A.len() as u64, "<app@example.org>", "2/0/0"));
    assert!(la.next == "in 4m" || la.next == "in 5m", "next attempt after a 5 minute backoff: {:?}", la.next);
    assert_eq!(la.last, reply);
    assert_eq!((lines[1].sender.as_str(), lines[1].size), ("<>", b_body.len() as u64));

    // JSON: the same, with exact keys and times.
    let entries = fx.list_json(&[]);
    assert_eq!(entries.len(), 2);
    let ja = &entries[0];
    let want: Vec<String> = ["arrival", "id", "last_error", "next_attempt", "recipients", "sender", "size", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(keys(ja), want, "{ja}");
    assert_eq!((ja["id"].as_str(), ja["state"].as_str()), (Some(a.as_str()), Some("deferred")));
    let arrival = ja["arrival"].as_u64().unwrap();
    assert!((t0..=t1).contains(&arrival), "arrival {arrival} not within {t0}..={t1}");
    assert_eq!(ja["size"].as_u64(), Some(MSG_A.len() as u64));
    assert_eq!(ja["sender"], "app@example.org");
    let next = ja["next_attempt"].as_u64().unwrap();
    assert!(next >= t1 + 240 && next <= now() + 300, "next attempt {next} is not 5 minutes away");
    assert_eq!(ja["last_error"].as_str(), Some(reply.as_str()));
    let rcpts = ja["recipients"].as_array().unwrap();
    let got: Vec<(&str, &str)> =
        rcpts.iter().map(|r| (r["address"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(got, [("x@example.org", "pending"), ("y@example.org", "pending")]);
    assert!(rcpts.iter().all(|r| r["reply"] == reply.as_str()), "{ja}");
    assert_eq!(entries[1]["sender"], "");

    // --state filters.
    assert_eq!(parse_list(&fx.op(&["list", "--state", "deferred"])).len(), 2);
    assert_ok(&fx.op(&["list", "--state", "hold"]), "queue is empty\n");
    assert!(fx.list_json(&["--state", "new"]).is_empty());

    // show: the envelope, recipients, last error, then the headers.
    let r = fx.op(&["show", &a]);
    r.assert_code(0);
    // Header lines are printed for a terminal: one LF each (--raw keeps CRLF).
    let headers = "From: app@example.org\nTo: x@example.org, y@example.org\nSubject: ops test\n";
    let summary = format!(
        "id: {a}\nstate: deferred\narrival: {{date}}\nsize: {}\nsender: <app@example.org>\n\
         recipient: <x@example.org> pending {reply}\nrecipient: <y@example.org> pending {reply}\n\
         last error: {reply}\n\n{headers}",
        MSG_A.len()
    );
    let date_line = r.stdout.lines().nth(2).unwrap();
    assert!(date_line.starts_with("arrival: ") && date_line.len() > 20, "{date_line:?}");
    assert_eq!(r.stdout.replacen(date_line, "arrival: {date}", 1), summary);
    assert_ok(&fx.op(&["show", "--headers", &a]), headers);
    assert_ok(&fx.op(&["show", "--body", &a]), "line one\r\nline two\r\n");
    let r = fx.op(&["show", "--raw", &a]);
    r.assert_code(0);
    assert_eq!(r.stdout.as_bytes(), MSG_A, "--raw differs from what was submitted");
    let r = fx.op(&["show", "--raw", &b]);
    assert_eq!(r.stdout.as_bytes(), b_body.as_slice(), "--raw differs from what was submitted");
    assert_ok(&fx.op(&["show", "--body", &b]), "no final newline");
    // Control bytes a submitter put in a header cannot reach the
    // operator's terminal, except with --raw.
    let c_body = b"Subject: \x1b[31mred\x1b]0;title\x07\r\n\r\nbody\r\n".to_vec();
    let c = fx.submit(&["c@example.org"], &c_body);
    assert_ok(&fx.op(&["show", "--headers", &c]), "Subject: \\x1b[31mred\\x1b]0;title\\x07\n");
    let r = fx.op(&["show", &c]);
    r.assert_code(0);
    assert!(!r.stdout.contains('\x1b') && !r.stdout.contains('\x07'), "{:?}", r.stdout);
    assert_eq!(fx.op(&["show", "--raw", &c]).stdout.as_bytes(), c_body.as_slice());
    assert_ok(&fx.op(&["delete", &c]), &format!("outq: {c}: deleted\n"));
    let r = fx.op(&["show", "--json", &a]);
    r.assert_code(0);
    assert_eq!(&json(&r.stdout), ja, "show --json and list --json differ");

    // Usage errors (64) and unknown entries (1); nothing changes.
    let before = fx.snapshot();
    assert_error(&fx.op(&["list", "--state", "bogus"]), 64, "unknown state \"bogus\"");
    assert_error(&fx.op(&["hold"]), 64, "no queue ID given");
    for cmd in ["release", "delete", "requeue"] {
        assert_error(&fx.op(&[cmd]), 64, "no queue ID given");
    }
    assert_error(&fx.op(&["delete", "--state", "bogus", "--older-than", "1d"]), 64, "unknown state");
    assert_error(&fx.op(&["delete", "--state", "failed", "--older-than", "soon"]), 64, "is not a duration");
    assert_error(&fx.op(&["status", "--warn-age", "3w"]), 64, "is not a duration");
    let unknown = "0000000010000000000000000A";
    assert_error(&fx.op(&["show", unknown]), 1, &format!("no entry {unknown}"));
    for cmd in ["hold", "release", "delete", "requeue"] {
        assert_error(&fx.op(&[cmd, unknown]), 1, &format!("no entry {unknown}"));
    }
    assert_error(&fx.op(&["flush", unknown]), 1, &format!("{unknown} is not deferred"));
    // Several IDs: each is done or refused, and the status says one failed.
    let r = fx.op(&["hold", unknown, &a]);
    r.assert_code(1);
    assert_eq!(r.stdout, format!("outq: {a}: held\n"));
    assert!(r.stderr.contains(&format!("no entry {unknown}")), "{}", r.stderr);
    let r = fx.op(&["release", &a]);
    assert_ok(&r, &format!("outq: {a}: released\n"));
    fx.assert_in(&a, "deferred");
    // Actions that do not apply to where the entry is: exit 1, no change.
    assert_error(&fx.op(&["release", &b]), 1, &format!("{b} is in deferred/; release does not apply there"));
    assert_error(&fx.op(&["requeue", &b]), 1, &format!("{b} is in deferred/; requeue does not apply there"));
    fx.assert_in(&b, "deferred");
    assert_eq!(
        before.iter().filter(|(n, _)| !n.starts_with("state/")).collect::<Vec<_>>(),
        fx.snapshot().iter().filter(|(n, _)| !n.starts_with("state/")).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// 2. hold, release, flush with a running daemon

#[test]
fn ops_hold_keeps_an_entry_back_and_flush_wakes_the_daemon() {
    if !privileged("ops_hold_keeps_an_entry_back_and_flush_wakes_the_daemon") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org"], &msg("a"));
    let b = fx.submit(&["b@example.org"], &msg("b"));
    let c = fx.submit(&["c@example.org"], &msg("c"));
    fx.run_once();
    for id in [&a, &b, &c] {
        fx.assert_in(id, "deferred");
        assert_eq!(fx.ended(id, Mode::Defer), 1, "{id}: {:?}", fx.calls());
    }

    // hold: to hold/, with the reason in its state.
    assert_ok(&fx.op(&["hold", &a]), &format!("outq: {a}: held\n"));
    fx.assert_in(&a, "hold");
    assert!(fx.state(&a).lines().any(|l| l == "hold held by the operator"), "{}", fx.state(&a));
    let held = parse_list(&fx.op(&["list", "--state", "hold"]));
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!((held[0].id.as_str(), held[0].state.as_str(), held[0].next.as_str()), (a.as_str(), "hold", "-"));
    assert!(held[0].last.contains("try again later"), "{held:#?}");
    let j = fx.list_json(&["--state", "hold"]);
    assert_eq!(j[0]["hold_reason"], "held by the operator");
    let r = fx.op(&["show", &a]);
    r.assert_code(0);
    assert!(
        r.stdout.contains("\nstate: hold\n") && r.stdout.contains("\nheld: held by the operator\n"),
        "{}",
        r.stdout
    );
    // Holding twice does not apply (it is no longer new or deferred).
    assert_error(&fx.op(&["hold", &a]), 1, &format!("{a} is in hold/; hold does not apply there"));

    // The runner passes a held entry by, even when everything else is due.
    fx.set_mode(Mode::Deliver);
    assert_ok(&fx.op(&["flush", &b]), "outq: 1 deferred entry made due now\n");
    fx.run_once();
    fx.assert_gone(&b);
    assert_eq!(fx.ended(&b, Mode::Deliver), 1);
    fx.assert_in(&a, "hold");
    fx.assert_in(&c, "deferred");
    assert_eq!(fx.started(&a), 1, "a held entry was attempted: {:?}", fx.calls());
    assert_eq!(fx.started(&c), 1, "an entry not yet due was attempted: {:?}", fx.calls());

    // release: back to deferred/, due now, no hold reason.
    let t = now();
    assert_ok(&fx.op(&["release", &a]), &format!("outq: {a}: released\n"));
    fx.assert_in(&a, "deferred");
    assert!(!fx.state(&a).contains("\nhold "), "{}", fx.state(&a));
    let due = std::fs::metadata(fx.path("state", &a)).unwrap().mtime() as u64;
    assert!(due >= t && due <= now(), "released entry due at {due}, not now ({t})");
    let la = parse_list(&fx.op(&["list", "--state", "deferred"]));
    let la = la.iter().find(|l| l.id == a).unwrap();
    assert_eq!(la.next, "now");

    // The daemon's first pass delivers the released entry, and not C,
    // which is due in five minutes (scans are an hour apart).
    let daemon = fx.start_daemon();
    wait_for("the released entry is delivered", Some(&daemon), || fx.ended(&a, Mode::Deliver) == 1);
    wait_for("the released entry is gone", Some(&daemon), || fx.gone(&a));
    fx.assert_gone(&a);
    std::thread::sleep(Duration::from_millis(1500));
    fx.assert_in(&c, "deferred");
    assert_eq!(fx.started(&c), 1, "C was attempted before the flush: {:?}\n{}", fx.calls(), daemon.log());

    // flush: made due and the daemon woken through the lock file.
    let t0 = Instant::now();
    assert_ok(&fx.op(&["flush"]), "outq: 1 deferred entry made due now\n");
    let woke = wait_until(Duration::from_secs(5), || fx.gone(&c));
    let took = t0.elapsed();
    assert!(woke, "C not delivered within 5 s of 'outq flush':\n{}", daemon.log());
    assert_eq!(fx.ended(&c, Mode::Deliver), 1);
    fx.assert_gone(&c);
    let log = daemon.stop();
    assert!(log.contains("flush requested"), "{log}");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("ops: the daemon delivered a flushed entry {took:?} after 'outq flush'\n").as_bytes(),
    );
    // Nothing left to flush.
    assert_ok(&fx.op(&["flush"]), "outq: 0 deferred entries made due now\n");
    for q in QUEUES {
        assert_eq!(fx.names(q), Vec::<String>::new(), "{q}/ is not empty");
    }
}

// ---------------------------------------------------------------------------
// 3. While a runner delivers

#[test]
fn ops_hold_and_delete_of_an_entry_being_delivered_wait_for_the_attempt() {
    if !privileged("ops_hold_and_delete_of_an_entry_being_delivered_wait_for_the_attempt") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org"], &msg("a"));
    let b = fx.submit(&["b@example.org"], &msg("b"));
    fx.set_mode(Mode::Sleep);
    let runner = fx.spawn_runner(true);
    wait_for("both attempts started", Some(&runner), || fx.started(&a) == 1 && fx.started(&b) == 1);
    fx.assert_in(&a, "active");
    fx.assert_in(&b, "active");

    // Looking works during delivery.
    let lines = parse_list(&fx.op(&["list", "--state", "active"]));
    assert_eq!(lines.iter().map(|l| l.state.as_str()).collect::<Vec<_>>(), ["active", "active"]);
    assert_eq!(fx.op(&["show", "--raw", &a]).stdout.as_bytes(), msg("a").as_slice());
    let r = fx.op(&["status", "--json"]);
    r.assert_code(0);
    let doc = json(&r.stdout);
    assert_eq!(status_state(&doc, "active")["count"], 2);
    assert_eq!((doc["runner_running"].as_bool(), doc["runner_pid"].as_u64()), (Some(true), Some(runner.pid() as u64)));

    // hold (as the owner) and delete (as root): requests, the entries stay.
    assert_ok(&fx.op(&["hold", &a]), &format!("outq: {a}: being delivered; hold when the attempt ends\n"));
    assert_ok(&fx.root(&["delete", &b]), &format!("outq: {b}: being delivered; delete when the attempt ends\n"));
    fx.assert_in(&a, "active");
    fx.assert_in(&b, "active");
    let req_a = fx.path("state", &format!("{a}.request"));
    let req_b = fx.path("state", &format!("{b}.request"));
    assert_eq!(std::fs::read_to_string(&req_a).unwrap(), "hold\n");
    assert_eq!(std::fs::read_to_string(&req_b).unwrap(), "delete\n");
    fx.assert_owners(&req_a);
    fx.assert_owners(&req_b);

    // What cannot wait is refused.
    assert_error(&fx.op(&["release", &a]), 1, &format!("{a} is being delivered"));
    assert_error(&fx.op(&["requeue", &a]), 1, &format!("{a} is being delivered"));
    assert_error(&fx.op(&["flush", &a]), 1, &format!("{a} is not deferred"));
    assert_ok(&fx.op(&["flush"]), "outq: 0 deferred entries made due now\n");
    assert_error(&fx.op(&["delete", "--state", "active", "--older-than", "0s"]), 1, "cannot be deleted in bulk");
    fx.assert_in(&a, "active");
    fx.assert_in(&b, "active");

    // The attempts end (deferred): A is held, B deleted.
    fx.set_mode(Mode::Defer);
    let log = runner.finish();
    assert_eq!(log.code, Some(0), "{}", log.stderr);
    assert!(log.stderr.contains(&format!("{a}: held by the operator after its attempt")), "{}", log.stderr);
    assert!(log.stderr.contains(&format!("{b}: deleted by the operator after its attempt")), "{}", log.stderr);
    assert_eq!((fx.ended(&a, Mode::Defer), fx.ended(&b, Mode::Defer)), (1, 1), "{:?}", fx.calls());
    fx.assert_in(&a, "hold");
    assert!(!req_a.exists(), "the hold request was left behind");
    let st = fx.state(&a);
    assert!(st.contains("\nhold held by the operator\n") && st.contains("attempts 1\n"), "{st}");
    fx.assert_gone(&b);
    let held = parse_list(&fx.op(&["list", "--state", "hold"]));
    assert_eq!(held.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), [a.as_str()]);
}

#[test]
fn ops_requests_survive_a_killed_runner() {
    if !privileged("ops_requests_survive_a_killed_runner") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org"], &msg("a"));
    let b = fx.submit(&["b@example.org"], &msg("b"));
    fx.set_mode(Mode::Sleep);
    let mut runner = fx.spawn_runner(true);
    wait_for("both attempts started", Some(&runner), || fx.started(&a) == 1 && fx.started(&b) == 1);
    assert_ok(&fx.op(&["hold", &a]), &format!("outq: {a}: being delivered; hold when the attempt ends\n"));
    assert_ok(&fx.op(&["delete", &b]), &format!("outq: {b}: being delivered; delete when the attempt ends\n"));
    runner.kill_group();
    fx.assert_in(&a, "active");
    fx.assert_in(&b, "active");

    // The next runner recovers active/ and carries the requests out,
    // without attempting either entry.
    fx.set_mode(Mode::Deliver);
    let log = fx.run_once();
    fx.assert_in(&a, "hold");
    fx.assert_gone(&b);
    assert_eq!((fx.started(&a), fx.started(&b)), (1, 1), "attempted after recovery: {:?}\n{log}", fx.calls());
    let st = fx.state(&a);
    assert!(st.contains("\nhold held by the operator\n") && st.contains("\nrecoveries 1\n"), "{st}");
    assert!(!fx.path("state", &format!("{a}.request")).exists());
    assert!(log.contains(&format!("{a}: recovered from an interrupted delivery, moved to hold/")), "{log}");

    // Released: the count of interruptions is cleared.
    assert_ok(&fx.op(&["release", &a]), &format!("outq: {a}: released\n"));
    assert!(fx.state(&a).contains("\nrecoveries 0\n"), "{}", fx.state(&a));
    // Held again, then released while a daemon waits (scans an hour
    // apart): the release wakes it, and it delivers at once.
    assert_ok(&fx.op(&["hold", &a]), &format!("outq: {a}: held\n"));
    let daemon = fx.start_daemon();
    std::thread::sleep(Duration::from_millis(300));
    fx.assert_in(&a, "hold");
    assert_ok(&fx.op(&["release", &a]), &format!("outq: {a}: released\n"));
    let woke = wait_until(Duration::from_secs(5), || fx.gone(&a));
    assert!(woke, "a released entry was not delivered within 5 s:\n{}", daemon.log());
    daemon.stop();
    fx.assert_gone(&a);
    assert_eq!(fx.ended(&a, Mode::Deliver), 1, "{:?}", fx.calls());
}

// ---------------------------------------------------------------------------
// 4. requeue, delete

#[test]
fn ops_requeue_brings_back_failed_and_corrupt_entries() {
    if !privileged("ops_requeue_brings_back_failed_and_corrupt_entries") {
        return;
    }
    let fx = Ops::new();
    // The null sender: no delivery status notice is queued for a failure.
    let a = fx.submit(&["-f", "", "r1@example.org", "r2@example.org"], &msg("failing"));
    let f = fx.submit(&["-f", "", "f@example.org"], &msg("failing too"));
    let bad = fx.submit(&["-f", "", "c@example.org"], &msg("corrupt"));
    fx.set_mode_for(&a, Mode::Fail);
    fx.set_mode_for(&f, Mode::Fail);
    // Planted: the entry's content replaced, its owner and mode kept.
    let bad_path = fx.path("new", &bad);
    let meta = std::fs::metadata(&bad_path).unwrap();
    std::fs::write(&bad_path, b"not an outq entry\n").unwrap();
    assert_eq!(std::fs::metadata(&bad_path).unwrap().uid(), meta.uid());
    // And a file whose name is no queue ID (root's, planted by hand).
    let t0 = now();
    std::fs::write(fx.path("new", "junk"), b"junk\n").unwrap();

    let log = fx.run_once();
    fx.assert_in(&a, "failed");
    fx.assert_in(&bad, "corrupt");
    fx.assert_in("junk", "corrupt");
    assert!(log.contains(&format!("{bad}: moved from new/ to corrupt/{bad}")), "{log}");
    assert!(log.contains("junk: moved from new/ to corrupt/junk"), "{log}");
    let failed_reply = format!("{} exit 1: 550 5.1.1 no such user", fx.relay.display());
    let st = fx.state(&a);
    assert!(st.contains(&format!("rcpt <r1@example.org> failed {failed_reply}\n")), "{st}");

    let l = parse_list(&fx.op(&["list", "--state", "failed"]));
    assert_eq!(l.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), [a.as_str(), f.as_str()], "{l:#?}");
    assert_eq!((l[0].counts.as_str(), l[0].next.as_str(), l[1].counts.as_str()), ("0/0/2", "-", "0/0/1"));
    let r = fx.op(&["show", &a]);
    r.assert_code(0);
    assert!(r.stdout.contains(&format!("recipient: <r2@example.org> failed {failed_reply}\n")), "{}", r.stdout);

    // A corrupt entry is listed with what is wrong with it, shown as JSON,
    // and refused by the other views.
    let c = fx.list_json(&["--state", "corrupt"]);
    let c: Vec<&Value> = [bad.as_str(), "junk"]
        .iter()
        .map(|id| c.iter().find(|e| e["id"] == *id).unwrap_or_else(|| panic!("{id} not listed: {c:?}")))
        .collect();
    let l = parse_list(&fx.op(&["list", "--state", "corrupt"]));
    assert_eq!(l.len(), 2, "{l:#?}");
    for (e, id) in c.iter().zip([bad.as_str(), "junk"]) {
        assert_eq!(e["state"], "corrupt");
        assert!(e["problem"].as_str().is_some_and(|p| !p.is_empty()), "{e}");
        let line = l.iter().find(|l| l.id == id).unwrap();
        assert_eq!(line.last, e["problem"].as_str().unwrap());
        // Its age: from its queue ID, or else from the file's time.
        let arrival = e["arrival"].as_u64().unwrap();
        assert!(arrival + 5 >= t0 && arrival <= now(), "{id}: arrival {arrival}, not about {t0}: {e}");
        assert!(line.age.ends_with('s'), "{id}: age {:?} of a file planted seconds ago", line.age);
    }
    let r = fx.op(&["show", "--json", &bad]);
    r.assert_code(0);
    assert_eq!(&json(&r.stdout), c[0]);
    assert_error(&fx.op(&["show", &bad]), 1, &format!("entry {bad} cannot be read"));

    // requeue from failed/: deferred, the failed recipients pending, due now.
    let r = fx.op(&["requeue", &a]);
    assert_ok(&r, &format!("outq: {a}: requeued (failed recipients will be tried again)\n"));
    fx.assert_in(&a, "deferred");
    let st = fx.state(&a);
    assert!(!st.contains(" failed "), "{st}");
    assert_eq!(st.matches(" pending ").count(), 2, "{st}");
    let l = parse_list(&fx.op(&["list", "--state", "deferred"]));
    assert_eq!((l[0].counts.as_str(), l[0].next.as_str()), ("2/0/0", "now"));

    // requeue from corrupt/: back to new/ for validation.
    assert_ok(&fx.op(&["requeue", &bad]), &format!("outq: {bad}: requeued for validation\n"));
    fx.assert_in(&bad, "new");

    // The next pass delivers A and quarantines the planted file again.
    fx.set_mode_for(&a, Mode::Deliver);
    let log = fx.run_once();
    fx.assert_gone(&a);
    assert_eq!(fx.ended(&a, Mode::Deliver), 1, "{:?}", fx.calls());
    fx.assert_in(&bad, "corrupt");
    assert!(log.contains(&format!("{bad}: moved from new/ to corrupt/{bad}")), "{log}");
    assert_eq!(fx.started(&bad), 0, "a corrupt entry was attempted");
    fx.assert_in(&f, "failed");

    // With a daemon waiting (scans an hour apart): requeue of a failed
    // entry wakes it; one of a corrupt entry is seen by its watch on new/.
    fx.set_mode_for(&f, Mode::Deliver);
    let daemon = fx.start_daemon();
    std::thread::sleep(Duration::from_millis(300));
    fx.assert_in(&f, "failed");
    assert_ok(&fx.op(&["requeue", &f]), &format!("outq: {f}: requeued (failed recipients will be tried again)\n"));
    let woke = wait_until(Duration::from_secs(5), || fx.gone(&f));
    assert!(woke, "a requeued entry was not delivered within 5 s:\n{}", daemon.log());
    assert_eq!(fx.ended(&f, Mode::Deliver), 1, "{:?}", fx.calls());
    assert_ok(&fx.op(&["requeue", "junk"]), "outq: junk: requeued for validation\n");
    wait_for("junk is quarantined again", Some(&daemon), || {
        daemon.log().contains("junk: moved from new/ to corrupt/junk")
    });
    fx.assert_in("junk", "corrupt");
    daemon.stop();
    fx.assert_gone(&f);
}

#[test]
fn ops_delete_removes_entries_one_by_one_and_by_age() {
    if !privileged("ops_delete_removes_entries_one_by_one_and_by_age") {
        return;
    }
    let fx = Ops::new();
    let ids: Vec<String> = (0..3).map(|n| fx.submit(&["-f", "", "r@example.org"], &msg(&format!("m{n}")))).collect();
    let fresh = fx.submit(&["n@example.org"], &msg("new"));
    let held = fx.submit(&["h@example.org"], &msg("held"));

    // From new/, and from hold/ (held straight from new/).
    assert_ok(&fx.op(&["delete", &fresh]), &format!("outq: {fresh}: deleted\n"));
    fx.assert_gone(&fresh);
    assert_ok(&fx.op(&["hold", &held]), &format!("outq: {held}: held\n"));
    fx.assert_in(&held, "hold");
    assert!(fx.state(&held).contains("rcpt <h@example.org> pending"), "{}", fx.state(&held));
    assert_ok(&fx.op(&["delete", &held]), &format!("outq: {held}: deleted\n"));
    fx.assert_gone(&held);

    fx.set_mode(Mode::Fail);
    fx.run_once();
    for id in &ids {
        fx.assert_in(id, "failed");
    }
    // One by one, with its state.
    assert_ok(&fx.op(&["delete", &ids[0]]), &format!("outq: {}: deleted\n", ids[0]));
    fx.assert_gone(&ids[0]);

    // By age: a week keeps them; once they are a second old, 0s takes both.
    assert_ok(&fx.op(&["delete", "--state", "failed", "--older-than", "7d"]), "outq: deleted 0 entries from failed/\n");
    fx.assert_in(&ids[1], "failed");
    fx.assert_in(&ids[2], "failed");
    let newest = fx.list_json(&["--state", "failed"]).iter().map(|e| e["arrival"].as_u64().unwrap()).max().unwrap();
    while now() <= newest {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ok(&fx.op(&["delete", "--state", "failed", "--older-than", "0s"]), "outq: deleted 2 entries from failed/\n");
    for q in QUEUES {
        assert_eq!(fx.names(q), Vec::<String>::new(), "{q}/ is not empty");
    }
}

// ---------------------------------------------------------------------------
// 5. status

#[test]
fn ops_status_reports_the_queue_and_its_runner() {
    if !privileged("ops_status_reports_the_queue_and_its_runner") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org"], &msg("a"));
    let b = fx.submit(&["b@example.org"], &msg("b"));
    fx.run_once();
    assert_ok(&fx.op(&["hold", &b]), &format!("outq: {b}: held\n"));
    let size = |q: &str, id: &str| std::fs::metadata(fx.path(q, id)).unwrap().len();
    let spool = fx.spool.display().to_string();

    // With a runner (idle: nothing is due for five minutes).
    let daemon = fx.start_daemon();
    let pid = daemon.pid();
    let r = fx.op(&["status"]);
    r.assert_code(0);
    assert_eq!(r.stdout.lines().next(), Some(format!("spool {spool}: runner running (pid {pid})").as_str()));
    assert_eq!(r.stdout.lines().count(), 8, "{}", r.stdout);
    assert_eq!(status_row(&r.stdout, "tmp"), (0, 0, "-".to_owned()));
    let (n, bytes, oldest) = status_row(&r.stdout, "deferred");
    assert_eq!((n, bytes), (1, size("deferred", &a)));
    assert!(oldest.ends_with('s'), "{oldest}");
    assert_eq!(status_row(&r.stdout, "hold").0, 1);
    assert_eq!(status_row(&r.stdout, "new"), (0, 0, "-".to_owned()));

    let r = fx.op(&["status", "--json"]);
    r.assert_code(0);
    let doc = json(&r.stdout);
    assert_eq!(keys(&doc), ["runner_pid", "runner_running", "spool", "states"]);
    assert_eq!((doc["spool"].as_str(), doc["runner_running"].as_bool()), (Some(spool.as_str()), Some(true)));
    assert_eq!(doc["runner_pid"].as_u64(), Some(pid as u64));
    let states: Vec<&str> = doc["states"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt"]);
    let d = status_state(&doc, "deferred");
    assert_eq!(keys(d), ["bytes", "count", "oldest_age", "state"]);
    assert_eq!((d["count"].as_u64(), d["bytes"].as_u64()), (Some(1), Some(size("deferred", &a))));
    assert!(d["oldest_age"].as_u64().is_some_and(|s| s < 60), "{d}");
    assert_eq!(status_state(&doc, "hold")["bytes"].as_u64(), Some(size("hold", &b)));
    assert_eq!(status_state(&doc, "failed")["oldest_age"], Value::Null);

    // Thresholds: young entries and a runner are OK.
    let r = fx.op(&["status", "--warn-age", "1h", "--crit-age", "2h"]);
    r.assert_code(0);
    assert!(r.stdout.starts_with("OUTQ OK - 2 queued, oldest "), "{}", r.stdout);
    assert!(r.stdout.contains(", runner running | tmp=0 new=0 active=0 deferred=1 hold=1 failed=0 corrupt=0 oldest="));
    assert_eq!(r.stdout.lines().count(), 1);

    // Older than the thresholds (the oldest is at least 2 s old).
    let arrival = fx.list_json(&[]).iter().map(|e| e["arrival"].as_u64().unwrap()).min().unwrap();
    while now() < arrival + 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = fx.op(&["status", "--warn-age", "1s", "--crit-age", "1h"]);
    r.assert_code(1);
    assert!(r.stdout.starts_with("OUTQ WARNING - 2 queued, "), "{}", r.stdout);
    let r = fx.op(&["status", "--crit-age", "1s"]);
    r.assert_code(2);
    assert!(r.stdout.starts_with("OUTQ CRITICAL - 2 queued, "), "{}", r.stdout);

    // Without a runner: said so, and at least WARNING.
    daemon.stop();
    let r = fx.op(&["status"]);
    assert_eq!(r.stdout.lines().next(), Some(format!("spool {spool}: runner not running").as_str()));
    let doc = json(&fx.op(&["status", "--json"]).stdout);
    assert_eq!((doc["runner_running"].as_bool(), &doc["runner_pid"]), (Some(false), &Value::Null));
    let r = fx.op(&["status", "--warn-age", "1h", "--crit-age", "2h"]);
    r.assert_code(1);
    assert!(r.stdout.starts_with("OUTQ WARNING - ") && r.stdout.contains("no runner holds the queue lock"));
}

// ---------------------------------------------------------------------------
// 6. Who may run them

#[test]
fn ops_root_acts_as_the_owner_and_other_users_are_refused() {
    if !privileged("ops_root_acts_as_the_owner_and_other_users_are_refused") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["-f", "app@example.org", "x@example.org"], MSG_A);
    let b = fx.submit(&["b@example.org"], &msg("b"));
    fx.run_once();

    // Root, itself: every read command works and sees what the owner sees.
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "--state", "deferred"],
        vec!["show", a.as_str()],
        vec!["show", "--headers", a.as_str()],
        vec!["show", "--body", a.as_str()],
        vec!["show", "--raw", a.as_str()],
        vec!["show", "--json", a.as_str()],
        vec!["status", "--json"],
    ] {
        let (mine, theirs) = (fx.root(&args), fx.op(&args));
        theirs.assert_code(0);
        mine.assert_code(0);
        // The two runs may straddle a second: ages and "in 5m" differ then.
        assert_eq!(without_ages(&mine.stdout), without_ages(&theirs.stdout), "{args:?}");
        assert!(mine.stderr.is_empty(), "{args:?}: {}", mine.stderr);
    }
    let r = fx.root(&["status"]);
    r.assert_code(0);
    assert!(r.stdout.contains("runner not running"), "{}", r.stdout);
    assert_eq!(fx.root(&["show", "--raw", &a]).stdout.as_bytes(), MSG_A);

    // Root's changes leave files owned by the queue owner.
    assert_ok(&fx.root(&["hold", &a]), &format!("outq: {a}: held\n"));
    fx.assert_in(&a, "hold");
    fx.assert_owners(&fx.path("state", &a));
    assert_ok(&fx.root(&["release", &a]), &format!("outq: {a}: released\n"));
    fx.assert_in(&a, "deferred");
    fx.assert_owners(&fx.path("state", &a));
    assert_ok(&fx.root(&["flush"]), "outq: 2 deferred entries made due now\n");
    fx.assert_owners(&fx.spool.join("lock"));
    for q in QUEUES {
        for n in fx.names(q) {
            let m = std::fs::symlink_metadata(fx.path(q, &n)).unwrap();
            assert_ne!(m.uid(), 0, "{q}/{n} is root's");
        }
    }

    // Anyone else: refused, and nothing changes.
    let before = fx.snapshot();
    let owner = &fx.owner().name;
    let refusal = format!("only the queue owner ({owner}) or root may manage the queue");
    for who in [&fx.acc.caller, &fx.acc.second] {
        for args in [
            vec!["list"],
            vec!["list", "--json"],
            vec!["list", "--state", "deferred"],
            vec!["show", a.as_str()],
            vec!["show", "--raw", a.as_str()],
            vec!["show", "--json", a.as_str()],
            vec!["flush"],
            vec!["flush", a.as_str()],
            vec!["hold", a.as_str()],
            vec!["release", a.as_str()],
            vec!["delete", a.as_str()],
            vec!["requeue", a.as_str()],
            vec!["delete", "--state", "deferred", "--older-than", "0s"],
            vec!["status"],
            vec!["status", "--json"],
            vec!["status", "--warn-age", "1s", "--crit-age", "1h"],
        ] {
            let r = fx.outq_as(who, &args);
            assert_eq!(r.code, Some(77), "{} {args:?}: {r:?}", who.name);
            assert_error(&r, 77, &refusal);
        }
    }
    assert_eq!(fx.snapshot(), before, "a refused command changed the spool");

    // Root deletes, too.
    assert_ok(&fx.root(&["delete", &a, &b]), &format!("outq: {a}: deleted\noutq: {b}: deleted\n"));
    fx.assert_gone(&a);
    fx.assert_gone(&b);

    // A spool root owned by root: root will not manage it (nor may the owner).
    std::os::unix::fs::chown(&fx.spool, Some(0), None).unwrap();
    assert_error(&fx.root(&["list"]), 77, "the spool is owned by root");
    assert_error(&fx.op(&["list"]), 77, "only the queue owner (root) or root may manage the queue");
    std::os::unix::fs::chown(&fx.spool, Some(fx.owner().uid), None).unwrap();
    assert_ok(&fx.root(&["list"]), "queue is empty\n");
}

// ---------------------------------------------------------------------------
// 7. Regressions: names that are not entries, entries that cannot be read

/// An ID is a file name in a queue directory, never a path: `delete
/// ../lock` used to unlink the spool's lock file (and `../../x` any file
/// the owner may remove, also when root ran it), `flush ../state/ID` to
/// touch a state file.
#[test]
fn ops_names_outside_the_queues_are_not_entries() {
    if !privileged("ops_names_outside_the_queues_are_not_entries") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org"], &msg("a"));
    fx.run_once();
    fx.assert_in(&a, "deferred");
    let before = fx.snapshot();
    let calls = fx.calls();
    let escapes = [
        "../lock".to_owned(),
        format!("../deferred/{a}"),
        format!("../state/{a}"),
        "../../log/calls".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        String::new(),
    ];
    for name in &escapes {
        for cmd in ["show", "hold", "release", "delete", "requeue"] {
            let r = fx.op(&[cmd, name]);
            assert_error(&r, 1, &format!("no entry {name}"));
        }
        assert_error(&fx.op(&["flush", name]), 1, "is not deferred");
        assert_error(&fx.root(&["delete", name]), 1, &format!("no entry {name}"));
    }
    assert_eq!(fx.snapshot(), before, "a name outside the queues changed the spool");
    assert!(fx.spool.join("lock").exists(), "the lock file was deleted");
    assert_eq!(fx.calls(), calls, "the relay's log was touched");
}

/// An entry `hold` cannot read (here: `max_recipients` lowered after it was
/// accepted) and that has no state yet: the hold used to write a state
/// with no recipients, so once the entry validated again and was released,
/// the runner found nothing pending and removed it as delivered, unsent.
/// Now the hold is refused and the entry left alone.
#[test]
fn ops_hold_keeps_the_recipients_of_an_entry_it_cannot_read() {
    if !privileged("ops_hold_keeps_the_recipients_of_an_entry_it_cannot_read") {
        return;
    }
    let fx = Ops::new();
    let a = fx.submit(&["a@example.org", "b@example.org"], &msg("a"));
    fx.write_config("max_recipients = 1\n");
    let held = fx.op(&["hold", &a]);
    fx.write_config("");
    if held.code == Some(0) {
        assert_eq!(held.stdout, format!("outq: {a}: held\n"));
        fx.assert_in(&a, "hold");
        assert_ok(&fx.op(&["release", &a]), &format!("outq: {a}: released\n"));
    } else {
        assert_error(&held, 1, &format!("{a} cannot be read"));
        fx.assert_in(&a, "new");
        assert!(!fx.path("state", &a).exists(), "a refused hold wrote a state");
    }
    fx.set_mode(Mode::Deliver);
    let log = fx.run_once();
    assert_eq!(fx.ended(&a, Mode::Deliver), 1, "{a} left the queue without being sent:\n{log}");
    fx.assert_gone(&a);
}

/// Output with every time-dependent value blanked: ages and waits
/// (`12s`, `in 4m`) and the JSON `oldest_age` numbers.
fn without_ages(out: &str) -> String {
    out.lines()
        .map(|line| {
            if line.trim_start().starts_with("\"oldest_age\"") {
                return "\"oldest_age\": T".to_owned();
            }
            line.split(' ')
                .map(|w| {
                    let digits = w.trim_end_matches(['s', 'm', 'h', 'd']);
                    if !w.is_empty()
                        && digits.len() + 1 == w.len()
                        && !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit())
                    {
                        "T"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
