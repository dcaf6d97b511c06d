/*!
The runner `outq run` end to end: the real binaries, a real spool, and the
`maildir:` and `pipe:` transports (no network).

Most tests run in development mode and need no privilege: the spool is
made by `outq init` and owned by the account that runs the runner. That
account is the current user, or `nobody` when the tests run as root
(`outq run` refuses root), in which case every program is started through
`setpriv --reuid=nobody --regid=nogroup --clear-groups` and the binaries
are linked into a directory `nobody` can reach ([`Dev`]).

`real_users_submit_and_the_queue_owner_delivers` is privileged: it installs
the helper set-group-ID for test accounts and runs the runner as the queue
owner (skipped with a visible line unless root; a failure with
`OUTQ_REQUIRE_PRIVILEGED=1`).

`crash_safety_under_repeated_sigkill` is the crash test (development mode,
no root needed): it kills the daemon at random points and checks that no
message was lost.

Every runner is started in its own process group, so a test that fails, or
that kills the runner on purpose, also kills the programs it started
(`pipe:` scripts); waits are bounded.
*/

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::support::{
    Account, PrivilegedLock, Ran, SystemConfig, TestAccounts, as_user, bin, install_helper, list, privileged,
    privileged_lock, root_tempdir, run_timeout, wait_until,
};

/// Upper bound for one runner pass or one wait; a pass over a handful of
/// entries takes milliseconds, so only a hang reaches it.
const TIMEOUT: Duration = Duration::from_secs(60);

const QUEUES: [&str; 8] = ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt", "state"];

// ---------------------------------------------------------------------------
// Processes

/// A program started in its own process group, its standard output and
/// error collected by threads. Dropped before it was waited for, the whole
/// group is killed.
struct Proc {
    child: Child,
    what: String,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    reaped: bool,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let collect = |r: Box<dyn Read + Send>, buf: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut r = BufReader::new(r);
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    buf.lock().unwrap().extend_from_slice(&line);
                    line.clear();
                }
            })
        };
        let (out, err) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), out.clone()),
            collect(Box::new(child.stderr.take().unwrap()), err.clone()),
        ];
        Proc { child, what, out, err, readers, reaped: false }
    }

    /// The runner's pid (`setpriv` executes it in place).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to standard error so far (the runner's log).
    fn log(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    #[track_caller]
    fn wait_log(&mut self, needle: &str) {
        let found = wait_until(TIMEOUT, || self.log().contains(needle) || self.child.try_wait().unwrap().is_some());
        assert!(found && self.log().contains(needle), "{} never logged {needle:?}; log:\n{}", self.what, self.log());
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGKILL the whole process group and reap the runner.
    fn kill_group(&mut self) -> ExitStatus {
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let status = self.child.wait().unwrap();
        self.reaped = true;
        status
    }

    /// Wait (bounded) for the end; on timeout kill everything and fail.
    #[track_caller]
    fn finish(mut self, timeout: Duration) -> (ExitStatus, Ran) {
        let status = match crate::support::wait_timeout(&mut self.child, timeout) {
            Some(s) => s,
            None => {
                self.kill_group();
                panic!("{} did not finish within {timeout:?}; log:\n{}", self.what, self.log());
            }
        };
        self.reaped = true;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        (status, Ran { code: status.code(), stdout: text(&self.out), stderr: text(&self.err) })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // The runner is not reaped, so its pid still names this group.
            let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// A development-mode installation

/// A private spool made by `outq init`, with the account that runs
/// everything: the current user, or `nobody` when we are root.
///
/// ```text
/// <dir>/            0755, ours (root's or the user's)
///   bin/            links to (or copies of) outq, outq-enqueue, outq-sendmail
///   outq.conf       0644, ours
///   *.sh            pipe: scripts, 0755
///   work/           0755, the runner's account
///     spool/        made by 'outq init' as that account
///     mail/         the maildir: relay (made by the runner)
/// ```
struct Dev {
    dir: tempfile::TempDir,
    bin: PathBuf,
    work: PathBuf,
    spool: PathBuf,
    config: PathBuf,
    /// Programs run as `nobody` through setpriv.
    as_nobody: bool,
    uid: u32,
    gid: u32,
    /// Extra environment for the runner.
    env: Vec<(String, String)>,
}

/// `to` as a hard link to `from`, or a copy when they are on different
/// filesystems.
fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

impl Dev {
    fn new() -> Dev {
        let dir = tempfile::Builder::new().prefix("oqt-run-").tempdir_in("/tmp").unwrap();
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
        for name in ["outq", "outq-enqueue", "outq-sendmail"] {
            link_or_copy(&bin(name), &bin_dir.join(name));
        }
        let work = dir.path().join("work");
        let spool = work.join("spool");
        let config = dir.path().join("outq.conf");
        let dev = Dev { bin: bin_dir, work: work.clone(), spool, config, as_nobody, uid, gid, env: Vec::new(), dir };
        dev.mkdir(&work);
        dev.set_config("");
        let spool = dev.spool.display().to_string();
        let config = dev.config.display().to_string();
        dev.run(dev.outq(&["init", "--spool", &spool, "--config", &config])).assert_code(0);
        dev
    }

    /// The configuration: the helper's essentials and `extra`.
    fn set_config(&self, extra: &str) {
        std::fs::write(&self.config, format!("spool_min_free = 0\nmyhostname = test.example\n{extra}")).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// A `relay = maildir:` configuration delivering to `work/mail`.
    fn maildir_config(&self, extra: &str) -> PathBuf {
        let mail = self.work.join("mail");
        self.set_config(&format!("relay = maildir:{}\n{extra}", mail.display()));
        mail
    }

    /// Give `path` to the runner's account (when that is not us).
    fn own(&self, path: &Path) {
        if self.as_nobody {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
        }
    }

    /// A 0755 directory owned by the runner's account.
    fn mkdir(&self, path: &Path) -> PathBuf {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.own(path);
        path.to_path_buf()
    }

    /// A shell script the runner's account may execute (owned by us).
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A program from `bin/`, run as the runner's account.
    fn cmd(&self, program: &str) -> Command {
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

    fn outq(&self, args: &[&str]) -> Command {
        let mut c = self.cmd("outq");
        c.args(args);
        c
    }

    /// `outq run [--once] --spool S --config C --log stderr`.
    fn runner(&self, once: bool) -> Command {
        let mut c = self.cmd("outq");
        c.arg("run");
        if once {
            c.arg("--once");
        }
        c.arg("--spool").arg(&self.spool).arg("--config").arg(&self.config).args(["--log", "stderr"]);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    #[track_caller]
    fn run(&self, cmd: Command) -> Ran {
        run_timeout(cmd, b"", TIMEOUT)
    }

    /// `outq run --once` to its end.
    #[track_caller]
    fn run_once(&self) -> Ran {
        Proc::spawn(self.runner(true)).finish(TIMEOUT).1
    }

    /// `outq run --once`, which must succeed; returns its log.
    #[track_caller]
    fn run_once_ok(&self) -> String {
        let r = self.run_once();
        r.assert_code(0);
        r.stderr
    }

    /// The daemon, once it has logged that it started.
    #[track_caller]
    fn start_daemon(&self) -> Proc {
        let mut p = Proc::spawn(self.runner(false));
        p.wait_log("runner started");
        let line = format!("runner started on {} (pid {})", self.spool.display(), p.pid());
        assert!(p.log().contains(&line), "expected {line:?} in\n{}", p.log());
        p
    }

    /// Submit `body` with the helper (development mode); returns the ID.
    #[track_caller]
    fn submit(&self, args: &[&str], body: &[u8]) -> String {
        let mut c = self.cmd("outq-enqueue");
        c.arg("--spool").arg(&self.spool).arg("--config").arg(&self.config).args(args);
        run_timeout(c, body, TIMEOUT).queue_id()
    }

    fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }

    fn path(&self, q: &str, name: &str) -> PathBuf {
        self.spool.join(q).join(name)
    }

    fn state(&self, id: &str) -> String {
        std::fs::read_to_string(self.path("state", id)).unwrap()
    }

    /// Every queue directory but those in `except` is empty.
    #[track_caller]
    fn assert_empty_but(&self, except: &[&str]) {
        for q in QUEUES.iter().filter(|q| !except.contains(q)) {
            assert_eq!(self.names(q), Vec::<String>::new(), "{q}/ is not empty");
        }
    }

    /// The submitter as the Received header names it.
    fn submitter(&self) -> String {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.uid)).unwrap().unwrap().name;
        format!("Received: from userid {} ({name}) by test.example (outq) id ", self.uid)
    }
}

/// One file of a Maildir split at the lines the transport adds.
#[derive(Debug)]
struct Delivery {
    return_path: String,
    delivered_to: String,
    received: String,
    body: Vec<u8>,
}

impl Delivery {
    fn parse(data: &[u8]) -> Delivery {
        let mut rest = data;
        let mut line = || {
            let end = rest.iter().position(|&b| b == b'\n').expect("a line the transport added");
            let l = String::from_utf8(rest[..end].to_vec()).unwrap();
            rest = &rest[end + 1..];
            l
        };
        let (return_path, delivered_to, received) = (line(), line(), line());
        Delivery { return_path, delivered_to, received, body: rest.to_vec() }
    }

    fn subject(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("").trim_end().to_owned()
    }
}

/// The messages in `maildir`'s new/ (none when it does not exist yet).
fn deliveries(maildir: &Path) -> Vec<Delivery> {
    let new = maildir.join("new");
    if !new.exists() {
        return Vec::new();
    }
    list(&new).iter().map(|n| Delivery::parse(&std::fs::read(new.join(n)).unwrap())).collect()
}

/// Files left in the maildir's tmp/ (writes interrupted by a kill).
fn maildir_tmp_count(maildir: &Path) -> usize {
    let tmp = maildir.join("tmp");
    if tmp.exists() { list(&tmp).len() } else { 0 }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mtime(p: &Path) -> u64 {
    u64::try_from(std::fs::metadata(p).unwrap().mtime()).unwrap()
}

/// The number of lines in `p`, 0 when it does not exist.
fn lines_in(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0)
}

/// Log lines that contain every one of `needles`.
fn log_has(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

// ---------------------------------------------------------------------------
// 1. Development mode, the whole path

#[test]
fn dev_mode_delivers_each_message_once_to_each_recipient() {
    let dev = Dev::new();
    let mail = dev.maildir_config("");
    let messages: Vec<(Vec<&str>, Vec<u8>)> = vec![
        (vec!["a@example.org"], b"Subject: one\r\n\r\nfirst\r\n.\r\n..\r\nFrom me\r\n".to_vec()),
        (vec!["b@example.org", "c@example.net"], b"Subject: two\n\nto two\nEND\n".to_vec()),
        (vec!["d@example.org"], b"Subject: three\n\nno final newline \xc3\xa9\xff".to_vec()),
    ];
    let mut expected: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    let mut ids = Vec::new();
    for (rcpts, body) in &messages {
        let mut args = vec!["-f", "sender@example.org"];
        args.extend(rcpts);
        let id = dev.submit(&args, body);
        for r in rcpts {
            expected.insert((*r).to_owned(), (id.clone(), body.clone()));
        }
        ids.push(id);
    }
    assert_eq!(dev.names("new").len(), 3);

    let log = dev.run_once_ok();

    let got = deliveries(&mail);
    assert_eq!(got.len(), expected.len(), "one file per recipient: {got:#?}");
    let mut seen = BTreeSet::new();
    for d in &got {
        let rcpt = d.delivered_to.strip_prefix("Delivered-To: ").unwrap();
        let (id, body) = expected.get(rcpt).unwrap_or_else(|| panic!("unexpected delivery to {rcpt}"));
        assert!(seen.insert(rcpt.to_owned()), "{rcpt} got two files");
        assert_eq!(d.return_path, "Return-Path: <sender@example.org>");
        let prefix = format!("{}{id}; ", dev.submitter());
        assert!(d.received.starts_with(&prefix), "{:?} does not start with {prefix:?}", d.received);
        assert_eq!(&d.body, body, "message to {rcpt} differs from what was submitted");
        assert!(
            log_has(&log, &[&format!("{id}: to=<{rcpt}>, relay=maildir:{}", mail.display()), "status=sent"]),
            "no status=sent line for {rcpt} in\n{log}"
        );
    }
    for id in &ids {
        assert!(log_has(&log, &[&format!("{id}: removed (delivered)")]), "{id} not removed:\n{log}");
        assert!(log_has(&log, &[&format!("{id}: picked up: uid={}", dev.uid)]), "{id} not picked up:\n{log}");
    }
    assert!(log.contains("runner stopped"), "{log}");
    dev.assert_empty_but(&[]);

    // A second pass finds nothing to do.
    dev.run_once_ok();
    assert_eq!(deliveries(&mail).len(), expected.len(), "a second pass delivered again");
}

// ---------------------------------------------------------------------------
// 2. Real users (privileged)

/// A real installation: the helper set-group-ID for a dedicated group,
/// `/etc/outq/outq.conf` taken over, and a spool owned by a test queue
/// owner. Fields drop in order: configuration restored, spool and binaries
/// removed, accounts deleted, lock released.
struct Install {
    _config: SystemConfig,
    spool: PathBuf,
    mail: PathBuf,
    _spool_dir: tempfile::TempDir,
    helper: PathBuf,
    outq: PathBuf,
    _bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    _lock: PrivilegedLock,
}

impl Install {
    fn new() -> Install {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = bin_dir.path().join("outq");
        link_or_copy(&bin("outq"), &outq);
        let spool_dir = root_tempdir("oqt-spool-");
        let spool = spool_dir.path().join("spool");
        // The queue owner's own directory for the maildir: relay.
        let home = spool_dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(acc.owner.uid), Some(acc.owner.gid)).unwrap();
        let mail = home.join("Maildir");
        let config = SystemConfig::take();
        config.write(&format!(
            "spool_directory = {}\nspool_min_free = 0\nmyhostname = test.example\nrelay = maildir:{}\n",
            spool.display(),
            mail.display()
        ));
        let inst = Install {
            _config: config,
            spool,
            mail,
            _spool_dir: spool_dir,
            helper,
            outq,
            _bin_dir: bin_dir,
            acc,
            _lock: lock,
        };
        let spool = inst.spool.display().to_string();
        let mut c = Command::new(&inst.outq);
        c.args(["init", "--spool", &spool, "--user", &inst.acc.owner.name, "--group", &inst.acc.group.name]);
        run_timeout(c, b"", TIMEOUT).assert_code(0);
        inst
    }

    fn submit(&self, who: &Account, args: &[&str], body: &[u8]) -> String {
        let mut c = as_user(who, &[], &self.helper);
        c.args(args);
        run_timeout(c, body, TIMEOUT).queue_id()
    }

    fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }
}

#[test]
fn real_users_submit_and_the_queue_owner_delivers() {
    if !privileged("real_users_submit_and_the_queue_owner_delivers") {
        return;
    }
    let inst = Install::new();
    let caller = &inst.acc.caller;
    let body = b"Subject: real\r\n\r\nfrom a real caller\r\n".to_vec();
    let id = inst.submit(caller, &["-f", "app@example.org", "x@example.org", "y@example.org"], &body);
    assert_eq!(inst.names("new"), vec![id.clone()]);

    // Root is refused, and touches nothing.
    let mut c = Command::new(&inst.outq);
    c.env_clear().current_dir("/").args(["run", "--once", "--log", "stderr"]);
    let r = run_timeout(c, b"", TIMEOUT);
    r.assert_code(77).assert_stderr_contains("outq run must not run as root");
    r.assert_stderr_contains("runuser").assert_stderr_contains("User=outq");
    assert_eq!(inst.names("new"), vec![id.clone()], "the refused runner moved the entry");
    assert!(!inst.mail.exists(), "the refused runner delivered");

    // The queue owner, with the system configuration (no --spool, no --config).
    let mut c = as_user(&inst.acc.owner, &[], &inst.outq);
    c.args(["run", "--once", "--log", "stderr"]);
    let (_, r) = Proc::spawn(c).finish(TIMEOUT);
    r.assert_code(0);
    let log = r.stderr;
    assert!(log.contains(&format!("runner started on {}", inst.spool.display())), "{log}");
    assert!(log_has(&log, &[&format!("{id}: picked up: uid={}", caller.uid)]), "{log}");

    let got = deliveries(&inst.mail);
    let mut to: Vec<&str> = got.iter().map(|d| d.delivered_to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["Delivered-To: x@example.org", "Delivered-To: y@example.org"], "{log}");
    for d in &got {
        let prefix = format!("Received: from userid {} ({}) by test.example (outq) id {id}; ", caller.uid, caller.name);
        assert!(d.received.starts_with(&prefix), "{:?}", d.received);
        assert_eq!(d.body, body);
        assert_eq!(std::fs::metadata(inst.mail.join("new")).unwrap().uid(), inst.acc.owner.uid);
    }
    for q in QUEUES {
        assert_eq!(inst.names(q), Vec::<String>::new(), "{q}/ is not empty\n{log}");
    }
}

// ---------------------------------------------------------------------------
// 3. One runner per spool; SIGTERM

#[test]
fn a_second_runner_is_refused_and_sigterm_stops_the_first() {
    let dev = Dev::new();
    dev.maildir_config("");
    let daemon = dev.start_daemon();
    let r = dev.run_once();
    r.assert_code(75);
    r.assert_stderr_contains(&format!("another runner (pid {}) holds the queue lock", daemon.pid()));
    assert!(!r.stderr.contains("runner started"), "the second runner started: {}", r.stderr);

    daemon.signal(Signal::SIGTERM);
    let (status, r) = daemon.finish(TIMEOUT);
    assert_eq!(status.code(), Some(0), "daemon after SIGTERM: {status}\n{}", r.stderr);
    assert!(r.stderr.contains("stopping on signal"), "{}", r.stderr);
    assert!(r.stderr.lines().last().is_some_and(|l| l.contains("runner stopped")), "{}", r.stderr);

    // The lock is free again.
    dev.run_once_ok();
}

// ---------------------------------------------------------------------------
// 4. inotify wake-up

#[test]
fn the_daemon_wakes_up_for_a_new_message() {
    let dev = Dev::new();
    let mail = dev.maildir_config("queue_run_interval = 1h\n");
    let daemon = dev.start_daemon();
    // The first message may be taken by the start-up pass; once it is
    // delivered that pass is over, and the next scan is an hour away.
    dev.submit(&["first@example.org"], b"Subject: first\n\n1\n");
    assert!(wait_until(Duration::from_secs(10), || deliveries(&mail).len() == 1), "first message:\n{}", daemon.log());
    std::thread::sleep(Duration::from_millis(300));

    let id = dev.submit(&["second@example.org"], b"Subject: second\n\n2\n");
    let t0 = Instant::now();
    let woke = wait_until(Duration::from_secs(2), || deliveries(&mail).len() == 2);
    let took = t0.elapsed();
    assert!(woke, "{id} not delivered within 2 s of its commit (queue_run_interval is 1h):\n{}", daemon.log());
    let _ = writeln!(std::io::stderr(), "runner: the daemon delivered a new message {took:?} after its commit");

    daemon.signal(Signal::SIGTERM);
    let (status, r) = daemon.finish(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", r.stderr);
    dev.assert_empty_but(&[]);
}

// ---------------------------------------------------------------------------
// 5. Planted files

#[test]
fn planted_files_in_new_are_quarantined_without_being_followed() {
    let dev = Dev::new();
    let mail = dev.maildir_config("");
    let outside = dev.mkdir(&dev.work.join("outside"));
    let body = |what: &str| format!("Subject: {what}\n\n{}\n", "x".repeat(200)).into_bytes();
    let cases = ["symlink", "hardlink", "fifo", "group", "truncated", "mode", "name", "control"];
    let mut id = BTreeMap::new();
    for what in cases {
        let rcpt = format!("{what}@example.org");
        id.insert(what, dev.submit(&[rcpt.as_str()], &body(what)));
    }
    let new = |name: &str| dev.path("new", name);
    // (name in new/, reason the runner must give)
    let mut expect: Vec<(String, String)> = Vec::new();

    // A symbolic link to a valid entry outside the spool.
    let target = outside.join(&id["symlink"]);
    std::fs::rename(new(&id["symlink"]), &target).unwrap();
    std::os::unix::fs::symlink(&target, new(&id["symlink"])).unwrap();
    dev.own(&new(&id["symlink"]));
    let target_before = {
        let m = std::fs::symlink_metadata(&target).unwrap();
        (m.ino(), m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.nlink())
    };
    let target_data = std::fs::read(&target).unwrap();
    expect.push((id["symlink"].clone(), "a symbolic link".into()));

    // A second link to a valid entry.
    std::fs::hard_link(new(&id["hardlink"]), outside.join("second-link")).unwrap();
    expect.push((id["hardlink"].clone(), "2 hard links".into()));

    // A FIFO the runner may open (a blocking open would hang it).
    std::fs::remove_file(new(&id["fifo"])).unwrap();
    nix::unistd::mkfifo(&new(&id["fifo"]), nix::sys::stat::Mode::from_bits_truncate(0o404)).unwrap();
    std::fs::set_permissions(new(&id["fifo"]), std::fs::Permissions::from_mode(0o404)).unwrap();
    dev.own(&new(&id["fifo"]));
    expect.push((id["fifo"].clone(), "not a regular file".into()));

    // Another group than the helper's.
    let other_gid = if dev.as_nobody {
        Some(0)
    } else {
        nix::unistd::getgroups().unwrap().into_iter().map(|g| g.as_raw()).find(|&g| g != dev.gid)
    };
    match other_gid {
        Some(g) => {
            std::os::unix::fs::chown(new(&id["group"]), None, Some(g)).unwrap();
            expect.push((id["group"].clone(), format!("group {g} is not the helper's group {}", dev.gid)));
        }
        None => {
            let _ = writeln!(std::io::stderr(), "SKIPPED (no second group to use): planted file with another group");
            std::fs::remove_file(new(&id["group"])).unwrap();
        }
    }

    // A valid entry cut short.
    let cut = new(&id["truncated"]);
    let full = std::fs::metadata(&cut).unwrap().len();
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(full - 40).unwrap();
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o404)).unwrap();
    expect.push((id["truncated"].clone(), format!("file is {} bytes, header and size say {full}", full - 40)));

    // A valid entry with another mode.
    std::fs::set_permissions(new(&id["mode"]), std::fs::Permissions::from_mode(0o444)).unwrap();
    expect.push((id["mode"].clone(), "mode 0444 is not 0404".into()));

    // A valid entry under a name that is not a queue ID (lower case).
    let lower = id["name"].to_lowercase();
    std::fs::rename(new(&id["name"]), new(&lower)).unwrap();
    expect.push((lower, "the name is not a queue ID".into()));

    let log = dev.run_once_ok();

    let mut planted: Vec<String> = expect.iter().map(|(n, _)| n.clone()).collect();
    planted.sort();
    assert_eq!(dev.names("corrupt"), planted, "{log}");
    for (name, why) in &expect {
        let line = format!("{name}: moved from new/ to corrupt/{name}: {why}");
        assert!(log.lines().any(|l| l.ends_with(&line)), "no {line:?} in\n{log}");
    }
    // Each moved as it was: the link is still a link, the FIFO a FIFO.
    assert!(std::fs::symlink_metadata(dev.path("corrupt", &id["symlink"])).unwrap().file_type().is_symlink());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(dev.path("corrupt", &id["fifo"])).unwrap().file_type().is_fifo());
    let target_after = {
        let m = std::fs::symlink_metadata(&target).unwrap();
        (m.ino(), m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.nlink())
    };
    assert_eq!(target_after, target_before, "the symlink's target was changed");
    assert_eq!(std::fs::read(&target).unwrap(), target_data);

    // Only the control message was delivered.
    let got: Vec<String> = deliveries(&mail).into_iter().map(|d| d.delivered_to).collect();
    assert_eq!(got, ["Delivered-To: control@example.org"], "{log}");

    // The reason stays with the entry: once the second link is gone the
    // file looks valid again, and `outq list` still says why it is there.
    std::fs::remove_file(outside.join("second-link")).unwrap();
    let mut list = dev.outq(&["list", "--json", "--spool"]);
    list.arg(&dev.spool).arg("--config").arg(&dev.config);
    let r = dev.run(list);
    r.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let listed = doc["entries"].as_array().unwrap();
    assert_eq!(listed.len(), planted.len(), "{}", r.stdout);
    let hardlink = listed.iter().find(|e| e["id"] == id["hardlink"].as_str()).unwrap();
    assert_eq!(hardlink["problem"], serde_json::Value::Null, "{}", r.stdout);
    assert_eq!(hardlink["last_error"], "quarantined: 2 hard links", "{}", r.stdout);
    for e in listed {
        assert!(e["last_error"].as_str().is_some_and(|l| l.starts_with("quarantined: ")), "{}", r.stdout);
    }
    dev.assert_empty_but(&["corrupt", "state"]);
}

// ---------------------------------------------------------------------------
// 6. A message that keeps killing the runner ends in hold/

#[test]
fn an_entry_interrupted_three_times_is_held() {
    let dev = Dev::new();
    let out = dev.mkdir(&dev.work.join("pipe"));
    let script = dev.script(
        "slow.sh",
        &format!(
            "#!/bin/sh\necho \"$OUTQ_QUEUE_ID\" >> {o}/starts\ncat > /dev/null\nsleep 600\necho done >> {o}/finished\n",
            o = out.display()
        ),
    );
    dev.set_config(&format!("relay = pipe:{}\n", script.display()));
    let id = dev.submit(&["poison@example.org"], b"Subject: poison\n\nkills the runner\n");

    for attempt in 1..=3 {
        let mut runner = Proc::spawn(dev.runner(true));
        let started =
            wait_until(TIMEOUT, || lines_in(&out.join("starts")) == attempt && dev.names("active") == [id.clone()]);
        assert!(started, "attempt {attempt} never started; log:\n{}", runner.log());
        runner.kill_group();
        assert_eq!(dev.names("active"), vec![id.clone()], "after kill {attempt}");
    }
    let log = dev.run_once_ok();
    assert!(log.contains(&format!("{id}: recovered from an interrupted delivery, moved to hold/")), "{log}");
    assert_eq!(dev.names("hold"), vec![id.clone()], "{log}");
    let state = dev.state(&id);
    assert!(state.lines().any(|l| l == "hold interrupted delivery 3 times"), "{state}");
    assert!(state.lines().any(|l| l == "recoveries 3"), "{state}");
    assert!(state.lines().any(|l| l == "rcpt <poison@example.org> pending "), "{state}");

    // Held means held: another pass does not touch it.
    dev.run_once_ok();
    assert_eq!(dev.names("hold"), vec![id.clone()]);
    assert_eq!(lines_in(&out.join("starts")), 3, "the held entry was attempted again");
    assert!(!out.join("finished").exists(), "the script completed a delivery");
    dev.assert_empty_but(&["hold", "state"]);
}

// ---------------------------------------------------------------------------
// 7 and 8. The pipe transport

/// A `pipe:` script that records its environment, its input and each run,
/// and exits with the number in `pipe/code` (1 also writes a reason to
/// standard error).
fn recording_pipe(dev: &Dev) -> PathBuf {
    let out = dev.mkdir(&dev.work.join("pipe"));
    std::fs::write(out.join("code"), "0\n").unwrap();
    let script = dev.script(
        "record.sh",
        &format!(
            "#!/bin/sh\nset -e\no={o}\necho run >> \"$o/$OUTQ_QUEUE_ID.runs\"\nenv > \"$o/$OUTQ_QUEUE_ID.env\"\n\
             cat > \"$o/$OUTQ_QUEUE_ID.stdin\"\ncode=$(cat \"$o/code\")\n\
             if [ \"$code\" = 1 ]; then echo 'no such mailbox here' >&2; fi\nexit \"$code\"\n",
            o = out.display()
        ),
    );
    dev.set_config(&format!("relay = pipe:{}\n", script.display()));
    out
}

fn set_code(out: &Path, code: u8) {
    std::fs::write(out.join("code"), format!("{code}\n")).unwrap();
}

#[test]
fn pipe_exit_status_decides_delivered_deferred_or_failed() {
    let mut dev = Dev::new();
    dev.env.push(("OUTQ_CANARY".into(), "leaked".into()));
    let out = recording_pipe(&dev);
    let script = dev.dir.path().join("record.sh").display().to_string();

    // Exit 0: delivered, removed.
    let body = b"Subject: pipe\r\n\r\nline one\r\n.\r\nlast line without end".to_vec();
    let sent = dev.submit(&["-f", "from@example.org", "p1@example.org", "p2@example.org"], &body);
    let log = dev.run_once_ok();
    assert_eq!(lines_in(&out.join(format!("{sent}.runs"))), 1);
    let env = std::fs::read_to_string(out.join(format!("{sent}.env"))).unwrap();
    let vars: BTreeSet<&str> = env.lines().collect();
    for v in [
        format!("OUTQ_QUEUE_ID={sent}"),
        "OUTQ_SENDER=from@example.org".into(),
        "OUTQ_RECIPIENTS=p1@example.org p2@example.org".into(),
        "PATH=/usr/bin:/bin".into(),
    ] {
        assert!(vars.contains(v.as_str()), "{v:?} missing from the environment:\n{env}");
    }
    assert!(!env.contains("OUTQ_CANARY"), "the runner's environment leaked into the pipe:\n{env}");
    let stdin = std::fs::read(out.join(format!("{sent}.stdin"))).unwrap();
    let nl = stdin.iter().position(|&b| b == b'\n').unwrap();
    let received = String::from_utf8(stdin[..nl].to_vec()).unwrap();
    assert!(received.starts_with(&format!("{}{sent}; ", dev.submitter())), "{received:?}");
    assert_eq!(&stdin[nl + 1..], body.as_slice(), "the pipe did not get the exact message");
    for r in ["p1@example.org", "p2@example.org"] {
        assert!(log_has(&log, &[&format!("{sent}: to=<{r}>, relay=pipe:{script}"), "status=sent"]), "{log}");
    }
    dev.assert_empty_but(&[]);

    // Exit 75: deferred, next attempt in the future, recipient pending.
    set_code(&out, 75);
    let deferred = dev.submit(&["later@example.org"], b"Subject: later\n\nx\n");
    let before = now();
    let log = dev.run_once_ok();
    assert!(log_has(&log, &[&format!("{deferred}: to=<later@example.org>"), "status=deferred", "exit 75"]), "{log}");
    assert_eq!(dev.names("deferred"), vec![deferred.clone()], "{log}");
    let state = dev.state(&deferred);
    let due = mtime(&dev.path("state", &deferred));
    assert!(due > before + 60, "next attempt {due} is not in the future (now {before})");
    assert!(state.lines().any(|l| l == format!("next_attempt {due}")), "state mtime is not next_attempt:\n{state}");
    assert!(state.lines().any(|l| l == "attempts 1"), "{state}");
    assert!(state.lines().any(|l| l.starts_with("rcpt <later@example.org> pending ")), "{state}");
    assert!(state.lines().any(|l| l.starts_with("last_error ") && l.contains("exit 75")), "{state}");

    // Exit 1: failed, with the reason. (The null sender, so that no
    // failure notice is queued: that is another test's subject.)
    set_code(&out, 1);
    let failed = dev.submit(&["-f", "", "nobody-here@example.org"], b"Subject: fail\n\nx\n");
    let log = dev.run_once_ok();
    assert_eq!(dev.names("failed"), vec![failed.clone()], "{log}");
    let state = dev.state(&failed);
    let reason = format!("rcpt <nobody-here@example.org> failed {script} exit 1: no such mailbox here");
    assert!(state.lines().any(|l| l == reason), "{reason:?} not in\n{state}");
    assert!(log.contains(&format!("{failed}: moved to failed/ (1 recipient(s) failed)")), "{log}");
    // The deferred entry was not due during that pass.
    assert_eq!(lines_in(&out.join(format!("{deferred}.runs"))), 1);
    assert_eq!(dev.names("deferred"), vec![deferred]);
    dev.assert_empty_but(&["deferred", "failed", "state"]);
}

#[test]
fn a_deferred_entry_is_retried_only_when_due() {
    let dev = Dev::new();
    let out = recording_pipe(&dev);
    set_code(&out, 75);
    let id = dev.submit(&["retry@example.org"], b"Subject: retry\n\nx\n");
    let runs = out.join(format!("{id}.runs"));
    dev.run_once_ok();
    assert_eq!(lines_in(&runs), 1);
    assert_eq!(dev.names("deferred"), vec![id.clone()]);
    let state_path = dev.path("state", &id);
    assert!(mtime(&state_path) > now(), "deferral without a future next attempt");

    // Not due: not retried.
    set_code(&out, 0);
    let log = dev.run_once_ok();
    assert_eq!(lines_in(&runs), 1, "retried before it was due:\n{log}");
    assert_eq!(dev.names("deferred"), vec![id.clone()]);

    // Due (the state file's mtime is the next attempt): retried, delivered.
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(&state_path).unwrap().set_modified(past).unwrap();
    let log = dev.run_once_ok();
    assert_eq!(lines_in(&runs), 2, "not retried once due:\n{log}");
    assert!(log_has(&log, &[&format!("{id}: to=<retry@example.org>"), "attempts=2", "status=sent"]), "{log}");
    dev.assert_empty_but(&[]);
}

// ---------------------------------------------------------------------------
// 9. Crash safety

/// A small pseudo-random generator (xorshift64*), seeded from the clock;
/// the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("OUTQ_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        let _ = writeln!(std::io::stderr(), "runner: crash test seed {seed} (set OUTQ_TEST_SEED to replay)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration between `lo` and `hi` milliseconds, log-uniform: as many
    /// draws between 5 and 10 ms as between 100 and 200 ms.
    fn log_uniform_ms(&mut self, lo: f64, hi: f64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo * (hi / lo).powf(u) / 1000.0)
    }
}

/// Crash test (development mode, no root needed).
///
/// 300 messages of 1 to 3 recipients go to a `maildir:` relay while the
/// daemon (`connections = 4`) is started and killed with SIGKILL after a
/// random 5 to 200 ms, 80 times; then one `outq run --once` runs to the
/// end. No message may be lost. Duplicates are allowed (a kill after the
/// transport delivered and before the entry was removed re-sends it), and
/// counted.
///
/// The runner delivers the whole 600 recipients in about 0.2 s, so if all
/// messages were submitted first only the first two or three kills would
/// interrupt anything. Instead 6 messages are submitted before each of the
/// first 50 starts, and the wait is log-uniform over 5 to 200 ms, so that
/// a good share of the kills land during start-up, recovery, pickup and
/// delivery (the counts printed say how many left entries in `active/`).
///
/// Entries that were in `active/` at three kills are held by design. They
/// are released with `outq release`, as an operator would, and must then
/// be delivered like the rest, so that "held" can never hide a loss.
#[test]
fn crash_safety_under_repeated_sigkill() {
    const MESSAGES: usize = 300;
    const BATCH: usize = 6;
    const KILLS: usize = 80;
    let dev = Dev::new();
    let mail = dev.maildir_config("connections = 4\n");
    let mut rng = Rng::new();

    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut submitted = 0;
    let (mut interrupting_kills, mut interrupted_entries) = (0, 0);
    let t0 = Instant::now();
    for _ in 0..KILLS {
        for _ in 0..BATCH {
            if submitted == MESSAGES {
                break;
            }
            let i = submitted;
            let rcpts: Vec<String> = (0..1 + i % 3).map(|k| format!("user{}@example.org", (i + k) % 10)).collect();
            let subject = format!("crash-{i}");
            let body =
                format!("Subject: {subject}\r\nFrom: app@example.org\r\n\r\nmessage {i}\r\n{}\r\n", "y".repeat(2000));
            let mut args = vec!["-f", "app@example.org"];
            args.extend(rcpts.iter().map(String::as_str));
            dev.submit(&args, body.as_bytes());
            wanted.extend(rcpts.into_iter().map(|r| (r, subject.clone())));
            submitted += 1;
        }
        let mut daemon = Proc::spawn(dev.runner(false));
        std::thread::sleep(rng.log_uniform_ms(5.0, 200.0));
        let status = daemon.kill_group();
        assert!(
            status.signal() == Some(libc::SIGKILL),
            "the daemon ended before it was killed: {status}\n{}",
            daemon.log()
        );
        let active = dev.names("active").len();
        if active > 0 {
            interrupting_kills += 1;
            interrupted_entries += active;
        }
    }
    assert_eq!(submitted, MESSAGES);
    let killing = t0.elapsed();
    let after_kills = deliveries(&mail).len();

    let log = dev.run_once_ok();

    // Held entries: each was found in active/ at three starts or more (more
    // when a kill fell between the state write and the move to hold/ of
    // the third recovery). Release them with 'outq release'.
    let held = dev.names("hold");
    for id in &held {
        let state = dev.state(id);
        assert!(state.lines().any(|l| l.starts_with("hold interrupted delivery ")), "{id}: {state}");
        let recoveries: u32 = state.lines().find_map(|l| l.strip_prefix("recoveries ")).unwrap().parse().unwrap();
        assert!(recoveries >= 3, "{id} held after {recoveries} recoveries: {state}");
    }
    let log2 = if held.is_empty() {
        String::new()
    } else {
        let spool = dev.spool.display().to_string();
        let config = dev.config.display().to_string();
        let mut args = vec!["release", "--spool", &spool, "--config", &config];
        args.extend(held.iter().map(String::as_str));
        dev.run(dev.outq(&args)).assert_code(0);
        assert_eq!(dev.names("deferred").len(), held.len(), "outq release did not move them to deferred/");
        dev.run_once_ok()
    };

    let got = deliveries(&mail);
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for d in &got {
        let rcpt = d.delivered_to.strip_prefix("Delivered-To: ").unwrap().to_owned();
        *count.entry((rcpt, d.subject())).or_default() += 1;
    }
    let lost: Vec<&(String, String)> = wanted.iter().filter(|k| !count.contains_key(*k)).collect();
    let unexpected: Vec<&(String, String)> = count.keys().filter(|k| !wanted.contains(*k)).collect();
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    let leftover_tmp_states = dev.names("state").iter().filter(|n| n.starts_with('.')).count();
    let _ = writeln!(
        std::io::stderr(),
        "runner: crash test: kills={KILLS} in {killing:.1?} ({interrupting_kills} left {interrupted_entries} \
         entries in active/), messages={MESSAGES}, recipients={}, delivered before the final pass={after_kills}, \
         deliveries={}, duplicates={duplicates}, held={}, lost={}, maildir tmp/ leftovers={}, \
         interrupted state writes left={leftover_tmp_states}",
        wanted.len(),
        got.len(),
        held.len(),
        lost.len(),
        maildir_tmp_count(&mail),
    );
    assert!(lost.is_empty(), "{} deliveries lost, e.g. {:?}\n{log}\n{log2}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(unexpected.is_empty(), "unexpected deliveries: {unexpected:?}");
    assert_eq!(got.len(), wanted.len() + duplicates);
    for q in ["new", "active", "deferred", "hold", "failed", "corrupt"] {
        assert_eq!(dev.names(q), Vec::<String>::new(), "{q}/ is not empty\n{log}\n{log2}");
    }
    let states: Vec<String> = dev.names("state").into_iter().filter(|n| !n.starts_with('.')).collect();
    assert_eq!(states, Vec::<String>::new(), "state files without an entry remain");
}

// ---------------------------------------------------------------------------
// Aliases and the admin_address catch-all (applied by the runner)

/// A root- (or our-) owned 0644 aliases file in the test directory.
fn write_aliases(dev: &Dev, text: &str) -> PathBuf {
    let p = dev.dir.path().join("aliases");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn delivered_to(mail: &Path) -> BTreeSet<String> {
    deliveries(mail).iter().map(|d| d.delivered_to.strip_prefix("Delivered-To: ").unwrap().to_owned()).collect()
}

#[test]
fn aliases_and_the_catch_all_route_local_names() {
    let dev = Dev::new();
    let aliases = write_aliases(
        &dev,
        "# the usual Debian file, and more\nmailer-daemon: postmaster\npostmaster: root\n\
         root: admin@example.net, ops\nops:\n  ops-team@example.net\n\
         loop1: loop2\nloop2: loop1\nprog: \"|/usr/bin/procmail\"\nthis line is broken\n",
    );
    let mail = dev.maildir_config(&format!("alias_file = {}\n", aliases.display()));
    let body = b"Subject: aliases\n\nx\n";
    let id = dev.submit(
        &["-f", "app@example.org", "root", "postmaster@localhost", "alice", "remote@example.org", "loop1", "prog"],
        body,
    );
    let log = dev.run_once_ok();
    let want: BTreeSet<String> = [
        "admin@example.net",
        "ops-team@example.net",
        "alice@test.example",
        "remote@example.org",
        "loop1@test.example",
        "prog@test.example",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(delivered_to(&mail), want, "{log}");
    for d in deliveries(&mail) {
        assert_eq!(d.body, body, "the message itself is not rewritten");
    }
    for needle in [
        format!("{id}: to=<root@test.example> aliased to <admin@example.net>"),
        format!("{id}: to=<root@test.example> aliased to <ops-team@example.net>"),
        "alias loop through loop1 -> loop2".to_owned(),
        "target |/usr/bin/procmail is not supported by a null client".to_owned(),
        format!("aliases file {}: line 10:", aliases.display()),
    ] {
        assert!(log.contains(&needle), "{needle:?} not in the log:\n{log}");
    }
    dev.assert_empty_but(&[]);
    // outq check names the broken line too.
    let (spool, conf) = (dev.spool.display().to_string(), dev.config.display().to_string());
    let r = dev.run(dev.outq(&["check", "--spool", &spool, "--config", &conf]));
    let want = format!("aliases file {}: line 10: expected 'name: address, ...'; skipped", aliases.display());
    assert!(r.stdout.contains(&want), "{want:?} not in\n{}", r.stdout);

    // With admin_address, the names no alias resolves go there instead.
    dev.maildir_config(&format!("alias_file = {}\nadmin_address = boss@example.net\n", aliases.display()));
    std::fs::remove_dir_all(&mail).unwrap();
    dev.submit(&["root", "alice", "loop1", "remote@example.org"], body);
    let log = dev.run_once_ok();
    let want: BTreeSet<String> =
        ["admin@example.net", "ops-team@example.net", "boss@example.net", "remote@example.org"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(delivered_to(&mail), want, "{log}");
    assert!(log.contains("alice@test.example has no alias: sent to admin_address boss@example.net"), "{log}");

    // Without an aliases file, root goes to the catch-all.
    std::fs::remove_file(&aliases).unwrap();
    std::fs::remove_dir_all(&mail).unwrap();
    dev.submit(&["root"], body);
    let log = dev.run_once_ok();
    assert_eq!(delivered_to(&mail), BTreeSet::from(["boss@example.net".to_owned()]), "{log}");
    dev.assert_empty_but(&[]);
}

#[test]
fn an_expansion_is_recorded_with_its_origin_and_kept_across_attempts() {
    let dev = Dev::new();
    let out = recording_pipe(&dev);
    let script = dev.dir.path().join("record.sh");
    let aliases = write_aliases(&dev, "root: first@example.net\n");
    dev.set_config(&format!("relay = pipe:{}\nalias_file = {}\n", script.display(), aliases.display()));
    set_code(&out, 75);
    let id = dev.submit(&["root", "other@example.org"], b"Subject: s\n\nx\n");
    let log = dev.run_once_ok();
    let state = dev.state(&id);
    assert!(
        state.lines().any(|l| l.starts_with("rcpt <first@example.net> via <root@test.example> pending ")),
        "{state}"
    );
    assert!(state.lines().any(|l| l.starts_with("rcpt <other@example.org> pending ")), "{state}\n{log}");

    // The file changes; the recorded expansion is what the next attempt uses.
    write_aliases(&dev, "root: second@example.net\n");
    set_code(&out, 0);
    dev.run(dev.outq(&[
        "flush",
        "--spool",
        &dev.spool.display().to_string(),
        "--config",
        &dev.config.display().to_string(),
    ]))
    .assert_code(0);
    let log = dev.run_once_ok();
    let env = std::fs::read_to_string(out.join(format!("{id}.env"))).unwrap();
    assert!(env.lines().any(|l| l == "OUTQ_RECIPIENTS=first@example.net other@example.org"), "{env}\n{log}");
    dev.assert_empty_but(&[]);
}

#[test]
fn an_aliases_file_others_may_write_defers_instead_of_guessing() {
    let dev = Dev::new();
    let aliases = write_aliases(&dev, "root: admin@example.net\n");
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mail = dev.maildir_config(&format!("alias_file = {}\n", aliases.display()));
    let id = dev.submit(&["root"], b"Subject: s\n\nx\n");
    let log = dev.run_once_ok();
    assert!(deliveries(&mail).is_empty(), "delivered with an untrusted aliases file:\n{log}");
    assert_eq!(dev.names("deferred"), vec![id.clone()], "{log}");
    assert!(log_has(&log, &[&id, "aliases file not usable", "deferred until the file can be read"]), "{log}");
    let (spool, conf) = (dev.spool.display().to_string(), dev.config.display().to_string());
    let r = dev.run(dev.outq(&["check", "--spool", &spool, "--config", &conf]));
    assert!(
        r.stdout.contains("aliases file not usable") && r.stdout.contains("the runner defers mail"),
        "{}",
        r.stdout
    );

    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dev.run_once_ok();
    assert_eq!(delivered_to(&mail), BTreeSet::from(["admin@example.net".to_owned()]), "{log}");
    dev.assert_empty_but(&[]);
}

// ---------------------------------------------------------------------------
// A null client's callers: cron through outq-sendmail to an SMTP server

/// What the test's SMTP server received in one transaction.
#[derive(Debug, Clone, Default)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
}

/// A minimal SMTP server on a loopback port: accepts every transaction
/// and records it (no extensions, so the client sends one command at a
/// time).
struct SmtpSink {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = SmtpSink::serve(conn, &log);
                });
            }
        });
        SmtpSink { port, got }
    }

    fn serve(conn: std::net::TcpStream, log: &Mutex<Vec<Received>>) -> std::io::Result<()> {
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut out = conn.try_clone()?;
        let mut r = BufReader::new(conn);
        out.write_all(b"220 sink.test ESMTP\r\n")?;
        let mut cur = Received::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            let upper = text.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                out.write_all(b"250 sink.test\r\n")?;
            } else if let Some(a) = upper.strip_prefix("MAIL FROM:") {
                cur = Received { mail_from: text[10..10 + a.len()].to_owned(), ..Received::default() };
                out.write_all(b"250 ok\r\n")?;
            } else if upper.starts_with("RCPT TO:") {
                cur.rcpt_to.push(text[8..].to_owned());
                out.write_all(b"250 ok\r\n")?;
            } else if upper == "DATA" {
                out.write_all(b"354 go on\r\n")?;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let l = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                    cur.data.extend_from_slice(l);
                }
                log.lock().unwrap().push(std::mem::take(&mut cur));
                out.write_all(b"250 queued\r\n")?;
            } else if upper == "QUIT" {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            } else {
                out.write_all(b"250 ok\r\n")?;
            }
        }
    }

    fn relay(&self) -> String {
        format!("relay = smtp://127.0.0.1:{}\nstarttls = off\n", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// The value of header `name` in `msg` (unfolded), if any.
fn header_value(msg: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(f) = found.as_mut() {
            if line.starts_with([' ', '\t']) {
                f.push_str(line);
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case(name) {
                found = Some(v.trim_start().to_owned());
            }
        }
    }
    found
}

/// What cron (Debian's 3.0pl1) writes to its mailer for a job whose output
/// is `output`, with `MAILTO` = `mailto`.
fn cron_message(mailto: &str, output: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: root (Cron Daemon)\nTo: {mailto}\nSubject: Cron <root@vm> /usr/local/bin/job\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
         X-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <HOME=/root>\nX-Cron-Env: <LOGNAME=root>\n\n"
    )
    .into_bytes();
    m.extend_from_slice(output);
    m
}

#[test]
fn cron_mail_with_two_addresses_and_a_nul_byte_reaches_the_smtp_server() {
    if !privileged("cron_mail_with_two_addresses_and_a_nul_byte_reaches_the_smtp_server") {
        return;
    }
    let _lock = privileged_lock();
    let dev = Dev::new();
    let sink = SmtpSink::start();
    let aliases = write_aliases(&dev, "root: admin@example.net\n");
    let conf = format!(
        "spool_directory = {}\nspool_min_free = 0\nmyhostname = test.example\nenqueue_program = {}\n\
         alias_file = {}\n{}",
        dev.spool.display(),
        dev.bin.join("outq-enqueue").display(),
        aliases.display(),
        sink.relay()
    );
    // cron runs /usr/sbin/sendmail with no -C: the system configuration.
    let system = SystemConfig::take();
    system.write(&conf);
    std::fs::write(&dev.config, &conf).unwrap();

    // Debian cron: "%s -FCronDaemon -i -B8BITMIME -oem  %s" with MAILTO
    // "ops@example.org,root", split on white space, as the job's user.
    let output = b"line one\n\0binary\x00data\nlast line\n";
    let mut c = dev.cmd("outq-sendmail");
    c.args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org,root"]);
    let r = run_timeout(c, &cron_message("ops@example.org,root", output), TIMEOUT);
    r.assert_code(0);
    // MAILTO="ops@example.org, root" arrives as two words.
    let mut c = dev.cmd("outq-sendmail");
    c.args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org,", "root"]);
    run_timeout(c, &cron_message("ops@example.org, root", b"second\n"), TIMEOUT).assert_code(0);

    let log = dev.run_once_ok();
    let got = sink.received();
    assert_eq!(got.len(), 2, "{log}");
    let login = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(dev.uid)).unwrap().unwrap().name;
    for g in &got {
        assert_eq!(g.mail_from, format!("<{login}@test.example>"), "{log}");
        assert_eq!(g.rcpt_to, ["<ops@example.org>", "<admin@example.net>"], "{log}");
        assert_eq!(header_value(&g.data, "From").as_deref(), Some("root@test.example (Cron Daemon)"));
        let to = header_value(&g.data, "To").unwrap();
        assert!(to == "ops@example.org,root@test.example" || to == "ops@example.org, root@test.example", "{to}");
        assert!(header_value(&g.data, "Date").is_some() && header_value(&g.data, "Message-ID").is_some());
        assert_eq!(
            header_value(&g.data, "Subject").as_deref(),
            Some("Cron <root@vm> /usr/local/bin/job"),
            "other fields are kept as they are"
        );
        assert_eq!(header_value(&g.data, "X-Cron-Env").as_deref(), Some("<SHELL=/bin/sh>"));
    }
    // The two messages may arrive in either order (parallel connections).
    let first = &got.iter().find(|g| g.data.windows(8).any(|w| w == b"line one")).expect("the first message").data;
    let body_at = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&first[body_at..], b"line one\r\n^@binary^@data\r\nlast line\r\n", "NUL bytes become ^@");
    assert!(!first.contains(&0u8));
    dev.assert_empty_but(&[]);
}

#[test]
fn runner_only_mistakes_never_stop_a_submission_and_outq_check_names_them() {
    let dev = Dev::new();
    let mail = dev.work.join("mail");
    let conf = format!(
        "spool_directory = {}\nmyhostname = test.example\nenqueue_program = {}\nrelay = maildir:{}\n\
         starttls = sometimes\nrelai = smtp://x.example\nconnect_timeout 30s\nspool_min_free = 0\n",
        dev.spool.display(),
        dev.bin.join("outq-enqueue").display(),
        mail.display()
    );
    std::fs::write(&dev.config, &conf).unwrap();
    let conf_arg = dev.config.display().to_string();
    let spool_arg = dev.spool.display().to_string();

    // outq-sendmail and the helper accept the message.
    let mut c = dev.cmd("outq-sendmail");
    c.args(["-C", &conf_arg, "-t", "-i"]);
    let r = run_timeout(c, b"From: cron\nTo: someone@example.net\nSubject: s\n\nx\n", TIMEOUT);
    r.assert_code(0);
    assert_eq!(dev.names("new").len(), 1);

    // The runner refuses to start and says why; outq check names all three.
    let r = dev.run_once();
    r.assert_code(75);
    assert!(r.stderr.contains("line 7") || r.stderr.contains("starttls"), "{}", r.stderr);
    let r = dev.run(dev.outq(&["check", "--spool", &spool_arg, "--config", &conf_arg]));
    for needle in ["line 5: starttls", "line 6: unknown key relai", "line 7: expected 'key = value'"] {
        assert!(r.stdout.contains(needle), "{needle:?} not reported:\n{}", r.stdout);
    }

    // A mistake in a key outq-sendmail reads does stop it (exit 75).
    std::fs::write(&dev.config, format!("{conf}masquerade_domain = not a domain\n")).unwrap();
    let mut c = dev.cmd("outq-sendmail");
    c.args(["-C", &conf_arg, "a@example.net"]);
    run_timeout(c, b"Subject: s\n\nx\n", TIMEOUT).assert_code(75).assert_stderr_contains("masquerade_domain");
}

#[test]
fn outq_check_warns_about_a_mail_name_that_is_not_qualified() {
    let dev = Dev::new();
    let conf_arg = dev.config.display().to_string();
    let spool_arg = dev.spool.display().to_string();
    let check = || dev.run(dev.outq(&["check", "--spool", &spool_arg, "--config", &conf_arg])).stdout;
    let warning = "outq check: warning: myhostname vm (from myhostname) is not a fully qualified domain name";
    assert!(!check().contains("warning: myhostname"), "{}", check());
    std::fs::write(&dev.config, "spool_min_free = 0\nmyhostname = vm\n").unwrap();
    let out = check();
    assert!(out.contains(warning), "{out}");
}

#[test]
fn outq_check_warns_about_submit_users_names_the_helper_cannot_find() {
    let dev = Dev::new();
    let conf_arg = dev.config.display().to_string();
    let spool_arg = dev.spool.display().to_string();
    std::fs::write(
        &dev.config,
        "spool_min_free = 0\nmyhostname = host.example.org\nsubmit_users = root, 4242, nosuchuser-oq, @root, @4242, @nosuchgroup-oq\n",
    )
    .unwrap();
    let out = dev.run(dev.outq(&["check", "--spool", &spool_arg, "--config", &conf_arg])).stdout;
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning: submit_users")).collect();
    assert_eq!(
        warnings,
        [
            "outq check: warning: submit_users: there is no user nosuchuser-oq (fix: correct submit_users in the configuration)",
            "outq check: warning: submit_users: there is no group nosuchgroup-oq (it is skipped) (fix: correct submit_users in the configuration)",
        ],
        "{out}"
    );
}

#[test]
fn masquerading_on_and_off() {
    let dev = Dev::new();
    let conf_arg = dev.config.display().to_string();
    let base = format!(
        "spool_min_free = 0\nmyhostname = host.test.example\nenqueue_program = {}\nrelay = maildir:{}\n\
         spool_directory = {}\n",
        dev.bin.join("outq-enqueue").display(),
        dev.work.join("mail").display(),
        dev.spool.display()
    );
    let submit = |extra: &str, args: &[&str], msg: &[u8]| -> (String, Vec<u8>) {
        std::fs::write(&dev.config, format!("{base}{extra}")).unwrap();
        let before: BTreeSet<String> = dev.names("new").into_iter().collect();
        let mut c = dev.cmd("outq-sendmail");
        c.args(["-C", &conf_arg]).args(args);
        run_timeout(c, msg, TIMEOUT).assert_code(0);
        let id = dev.names("new").into_iter().find(|n| !before.contains(n)).unwrap();
        let data = std::fs::read(dev.path("new", &id)).unwrap();
        let limits = outq_spool::entry::Limits { max_recipients: 1000, max_size: 100_000_000 };
        let (h, body) = outq_spool::entry::parse_bytes(&data, &limits).unwrap();
        (h.sender.as_str().to_owned(), body.to_vec())
    };
    let login = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(dev.uid)).unwrap().unwrap().name;
    let msg = b"From: Root <root@host.test.example>, root\nTo: root, a@example.net\nSubject: s\n\nx\n";

    // Off: qualified with myorigin (default myhostname), nothing else.
    let (sender, body) = submit("", &["a@example.net"], msg);
    assert_eq!(sender, format!("{login}@host.test.example"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("From: Root <root@host.test.example>, root@host.test.example\n"), "{text}");
    assert!(text.contains("\nTo: root@host.test.example, a@example.net\n"), "{text}");

    // On, for every user: sender and From: masqueraded, To: only qualified.
    let (sender, body) = submit("masquerade_domain = test.example\n", &["a@example.net"], msg);
    assert_eq!(sender, format!("{login}@test.example"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("From: Root <root@test.example>, root@test.example\n"), "{text}");
    assert!(text.contains("\nTo: root@host.test.example, a@example.net\n"), "{text}");

    // On, for root only; myorigin qualifies the rest; -f other@ is kept.
    let extra = "masquerade_domain = test.example\nmasquerade_users = root\nmyorigin = origin.example\n";
    let (sender, body) = submit(extra, &["-f", "web", "a@example.net"], msg);
    assert_eq!(sender, "web@origin.example");
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("From: Root <root@test.example>, root@test.example\n"), "{text}");
    assert!(text.contains("\nTo: root@origin.example, a@example.net\n"), "{text}");
    let (sender, _) = submit(extra, &["-f", "root@elsewhere.example", "a@example.net"], msg);
    assert_eq!(sender, "root@elsewhere.example");

    // An added From: follows the envelope sender.
    let (_, body) =
        submit("masquerade_domain = test.example\n", &["-F", "Web App", "a@example.net"], b"Subject: s\n\nx\n");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(&format!("From: Web App <{login}@test.example>")), "{text}");
}
