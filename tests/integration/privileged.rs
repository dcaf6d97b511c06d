/*!
The helper as it is really deployed: installed `root:<group> 2755`, reading
the system configuration, run by real users through `setpriv` with an empty
environment, and attacked the ways a caller can attack a set-group-ID
program (closed descriptors, umask, resource limits, environment, signals,
`no_new_privs`, bad input). Also `outq init` and `outq check` on that
installation.

Every test needs root: it creates accounts, installs a set-group-ID copy of
the helper and takes over `/etc/outq/outq.conf` (the helper's fixed
configuration path) for its duration. Not as root, each test prints
`SKIPPED (needs root): NAME` and passes, unless `OUTQ_REQUIRE_PRIVILEGED=1`.
The tests run one at a time (see `support::privileged_lock`), and all
changes are undone in `Drop`, also when a test fails.
*/

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use outq_spool::entry::{self, Limits};
use outq_spool::layout::PARTS;

use crate::support::{
    Account, PrivilegedLock, Ran, SystemConfig, TestAccounts, TestSyslog, as_user, bin, install_helper, list, message,
    mode_of, privileged, privileged_lock, root_cmd, root_tempdir, run_timeout, wait_timeout, wait_until,
};

const LIMITS: Limits = Limits { max_recipients: 1000, max_size: 10_240_000 };

/// Upper bound for any one program run or wait; the helper itself takes
/// milliseconds, so only a hang reaches it.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A complete installation for one test. Fields drop in this order: the
/// configuration is restored, the spool and the helper copies are removed,
/// the accounts deleted, and only then the lock released.
struct Fixture {
    config: SystemConfig,
    /// The spool root, `<spool_dir>/spool`, made by `outq init`.
    spool: PathBuf,
    /// What the fixture's `outq init` printed.
    init_output: String,
    _spool_dir: tempfile::TempDir,
    /// The installed set-group-ID helper.
    helper: PathBuf,
    bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    _lock: PrivilegedLock,
}

impl Fixture {
    fn new() -> Fixture {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let spool_dir = root_tempdir("oqt-spool-");
        let spool = spool_dir.path().join("spool");
        // The configuration first: `outq init` reads it too.
        let config = SystemConfig::take();
        let mut fx = Fixture {
            config,
            spool,
            init_output: String::new(),
            _spool_dir: spool_dir,
            helper,
            bin_dir,
            acc,
            _lock: lock,
        };
        fx.write_config("");
        fx.init_output = fx.init().assert_code(0).stdout.clone();
        fx
    }

    /// The system configuration: this spool, no free-space reserve (the
    /// test machine's disk may be small), and `extra` lines.
    fn write_config(&self, extra: &str) {
        self.config.write(&format!("spool_directory = {}\nspool_min_free = 0\n{extra}", self.spool.display()));
    }

    fn outq(&self, args: &[&str]) -> Ran {
        let mut c = Command::new(bin("outq"));
        c.args(args).current_dir("/");
        run_timeout(c, b"", TIMEOUT)
    }

    fn init(&self) -> Ran {
        let spool = self.spool.display().to_string();
        self.outq(&["init", "--spool", &spool, "--user", &self.acc.owner.name, "--group", &self.acc.group.name])
    }

    fn check(&self) -> Ran {
        let spool = self.spool.display().to_string();
        let helper = self.helper.display().to_string();
        let config = self.config.path().display().to_string();
        self.outq(&[
            "check",
            "--spool",
            &spool,
            "--user",
            &self.acc.owner.name,
            "--group",
            &self.acc.group.name,
            "--helper",
            &helper,
            "--config",
            &config,
        ])
    }

    /// The installed helper as `who`, with extra `setpriv` options.
    fn helper_as(&self, who: &Account, setpriv_opts: &[&str]) -> Command {
        as_user(who, setpriv_opts, &self.helper)
    }

    /// The installed helper started by `/bin/sh -c script` as `who`; the
    /// script ends with `exec "$0" "$@"` (the helper and `args`).
    fn helper_via_sh(&self, who: &Account, script: &str, args: &[&str]) -> Command {
        let mut c = as_user(who, &[], Path::new("/bin/sh"));
        c.arg("-c").arg(script).arg(&self.helper).args(args);
        c
    }

    /// The installed helper under `prlimit LIMITS...` as `who`.
    fn helper_with_limits(&self, who: &Account, limits: &[&str], args: &[&str]) -> Command {
        let mut c = as_user(who, &[], Path::new("/usr/bin/prlimit"));
        c.args(limits).arg("--").arg(&self.helper).args(args);
        c
    }

    /// Run `who` submitting `input` to `args`.
    fn submit(&self, who: &Account, args: &[&str], input: &[u8]) -> Ran {
        let mut c = self.helper_as(who, &[]);
        c.args(args);
        run_timeout(c, input, TIMEOUT)
    }

    /// A spool directory's names, listed as root.
    fn names(&self, sub: &str) -> Vec<String> {
        list(&self.spool.join(sub))
    }

    #[track_caller]
    fn assert_spool_empty(&self, what: &str) {
        assert_eq!(self.names("new"), Vec::<String>::new(), "{what}: left an entry in new/");
        assert_eq!(self.names("tmp"), Vec::<String>::new(), "{what}: left a file in tmp/");
    }

    /// The refusal contract: exit `code`, nothing on standard output, one
    /// `outq-enqueue: WHAT (FIX)` line on standard error, an empty spool.
    #[track_caller]
    fn assert_refused(&self, what: &str, r: &Ran, code: i32) {
        assert_eq!(r.code, Some(code), "{what}: {r:?}");
        r.assert_one_error_line();
        assert_eq!(r.stdout, "", "{what}: printed on standard output");
        self.assert_spool_empty(what);
    }

    /// The success contract: exit 0, a queue ID of 26 hexadecimal digits
    /// alone on standard output, nothing on standard error, that entry alone
    /// in new/ and nothing in tmp/. Returns the entry's path.
    #[track_caller]
    fn assert_accepted(&self, what: &str, r: &Ran) -> PathBuf {
        let id = r.queue_id();
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{what}: queue ID {id:?} is not hexadecimal");
        assert_eq!(r.stderr, "", "{what}: wrote to standard error");
        self.the_entry(what, &id)
    }

    /// The single committed entry, after a run that printed `id`: in new/,
    /// nothing left in tmp/. Returns its path.
    #[track_caller]
    fn the_entry(&self, what: &str, id: &str) -> PathBuf {
        assert_eq!(self.names("new"), vec![id.to_owned()], "{what}");
        assert_eq!(self.names("tmp"), Vec::<String>::new(), "{what}: left a file in tmp/");
        self.spool.join("new").join(id)
    }

    /// Remove every committed entry (as root), so the next case starts empty.
    fn clear_new(&self) {
        for name in self.names("new") {
            std::fs::remove_file(self.spool.join("new").join(name)).unwrap();
        }
    }

    /// `outq check` must exit 1 and print a line containing `needle`.
    #[track_caller]
    fn assert_check_finds(&self, what: &str, needle: &str) {
        let r = self.check();
        assert_eq!(r.code, Some(1), "{what}: outq check did not fail: {r:?}");
        assert!(
            r.stdout.lines().any(|l| l.starts_with("outq check: ") && l.contains(needle)),
            "{what}: no line naming {needle:?} in\n{}",
            r.stdout
        );
    }

    #[track_caller]
    fn assert_check_clean(&self, what: &str) {
        let r = self.check();
        assert_eq!(r.code, Some(0), "{what}: outq check: {r:?}");
        assert!(r.stdout.contains("is in order"), "{what}: {}", r.stdout);
    }

    /// Wait until the helper `pid` has created its file in tmp/, written at
    /// least `min_len` bytes to it, and is waiting for standard input
    /// (`/proc/PID/syscall`). Returns the file's path.
    #[track_caller]
    fn wait_blocked_in_read(&self, pid: u32, min_len: u64) -> PathBuf {
        let mut file = None;
        let ok = wait_until(TIMEOUT, || {
            let names = self.names("tmp");
            let [name] = names.as_slice() else { return false };
            let path = self.spool.join("tmp").join(name);
            let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            file = Some(path);
            written >= min_len && blocked_reading_stdin(pid)
        });
        assert!(ok, "helper {pid} never blocked reading standard input with {min_len} bytes in tmp/");
        file.unwrap()
    }
}

/// Whether process `pid` sleeps waiting for standard input: in poll(2) on
/// its input and its signalfd, or in read(2) on descriptor 0.
fn blocked_reading_stdin(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else { return false };
    let mut fields = text.split_whitespace();
    let state = proc_status_field(pid, "State").unwrap_or_default();
    let (nr, arg0) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    let waiting = (nr == libc::SYS_read.to_string() && arg0 == "0x0")
        || nr == libc::SYS_poll.to_string()
        || nr == libc::SYS_ppoll.to_string();
    waiting && state.starts_with('S')
}

/// One field of `/proc/PID/status`, without its name.
fn proc_status_field(pid: u32, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// A helper still running: standard input stays open until closed, output
/// is collected by threads, and the process is killed if the test fails
/// before it ends.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    done: bool,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let stdout = Some(drain(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(drain(Box::new(child.stderr.take().unwrap())));
        Running { stdin: child.stdin.take(), child, stdout, stderr, done: false }
    }

    /// The helper's pid (`setpriv` executes it in place).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn feed(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("standard input already closed");
        if let Err(e) = stdin.write_all(data) {
            let (status, out, err) = self.finish();
            panic!("writing to the helper failed: {e}; it ended with {status}: {out:?} {err:?}");
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Wait (bounded) for the end; returns the status and the output.
    fn finish(&mut self) -> (ExitStatus, String, String) {
        let status = wait_timeout(&mut self.child, TIMEOUT).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("helper {} did not finish within {TIMEOUT:?}", self.child.id());
        });
        self.done = true;
        self.stdin = None;
        let text = |h: Option<JoinHandle<Vec<u8>>>| String::from_utf8_lossy(&h.unwrap().join().unwrap()).into_owned();
        (status, text(self.stdout.take()), text(self.stderr.take()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Owner, group, mode, inode, size and change times: what any write,
/// chmod, chown or replacement of a file would alter.
fn fingerprint(p: &Path) -> (u32, u32, u32, u64, u64, i64, i64, i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

#[test]
fn caller_commits_an_entry_it_owns_with_mode_0404() {
    if !privileged("caller_commits_an_entry_it_owns_with_mode_0404") {
        return;
    }
    let fx = Fixture::new();
    let caller = &fx.acc.caller;
    let body = message(4096);
    let r = fx.submit(caller, &["-f", "sender@example.org", "rcpt@example.org"], &body);
    let path = fx.assert_accepted("happy path", &r);
    let id = r.queue_id();
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.is_file());
    assert_eq!(m.uid(), caller.uid, "entry owner");
    assert_eq!(m.gid(), fx.acc.group.gid, "entry group");
    assert_eq!(m.mode() & 0o7777, 0o404, "entry mode");
    let data = std::fs::read(&path).unwrap();
    let (h, got) = entry::parse_bytes(&data, &LIMITS).unwrap();
    assert_eq!(h.id.as_str(), id);
    assert_eq!(h.uid, caller.uid);
    // With -f and submit_users = anyone the helper makes no password
    // lookup: the entry names the submitter by uid (and file owner) only.
    assert_eq!(h.login, None);
    assert_eq!(h.sender.as_str(), "sender@example.org");
    assert_eq!(got, body.as_slice());
    fx.clear_new();
    // Without -f the login is read from /etc/passwd for the default
    // sender, and kept.
    let r = fx.submit(caller, &["rcpt@example.org"], &body);
    let path = fx.assert_accepted("default sender", &r);
    let (h, _) = entry::parse_bytes(&std::fs::read(&path).unwrap(), &LIMITS).unwrap();
    assert_eq!(h.login.as_deref(), Some(caller.name.as_str()));
    assert!(h.sender.as_str().starts_with(&format!("{}@", caller.name)), "{}", h.sender.as_str());
}

#[test]
fn callers_cannot_list_or_read_the_spool() {
    if !privileged("callers_cannot_list_or_read_the_spool") {
        return;
    }
    let fx = Fixture::new();
    let (caller, second) = (&fx.acc.caller, &fx.acc.second);
    let id = fx.submit(caller, &["a@example.org"], b"Subject: secret\n\nfor a only\n").queue_id();
    let new = fx.spool.join("new");
    let tmp = fx.spool.join("tmp");
    let entry = new.join(&id);

    // As the caller itself, not through the helper: every way in fails.
    let attempts: &[(&str, &[&Path])] = &[
        ("/bin/ls", &[&new]),
        ("/bin/ls", &[&tmp]),
        ("/usr/bin/find", &[&new]),
        ("/bin/cat", &[&entry]),
        ("/usr/bin/stat", &[&entry]),
    ];
    for who in [caller, second] {
        for (program, args) in attempts {
            let mut c = as_user(who, &[], Path::new(program));
            c.args(*args);
            let r = run_timeout(c, b"", TIMEOUT);
            assert_ne!(r.code, Some(0), "{} could run {program} {args:?}: {r:?}", who.name);
            assert!(!r.stdout.contains("secret"), "{program} showed the message");
        }
        // A plain open(2) for reading, from the shell.
        let mut c = as_user(who, &[], Path::new("/bin/sh"));
        c.arg("-c").arg("exec 3<\"$1\"").arg("sh").arg(&entry);
        let r = run_timeout(c, b"", TIMEOUT);
        assert_ne!(r.code, Some(0), "{} opened the entry: {r:?}", who.name);
    }

    // The second caller submits through the helper too; the helper only
    // creates, so that gives it nothing of the first caller's.
    let id2 = fx.submit(second, &["b@example.org"], b"from b\n").queue_id();
    assert_eq!(fx.names("new"), {
        let mut v = vec![id.clone(), id2.clone()];
        v.sort();
        v
    });
    assert_eq!(std::fs::symlink_metadata(new.join(&id2)).unwrap().uid(), second.uid);

    // Even holding the helper's group (search permission on new/), the
    // second caller cannot read the entry: its mode gives the group nothing.
    let mode = mode_of(&entry);
    assert_eq!(mode & 0o070, 0, "entry mode {mode:o} grants the group access");
    let group_opt = format!("--groups={}", fx.acc.group.gid);
    let mut c = as_user(second, &[&group_opt], Path::new("/usr/bin/stat"));
    c.arg("-c").arg("%u").arg(&entry);
    let r = run_timeout(c, b"", TIMEOUT);
    assert_eq!(r.code, Some(0), "with the group, new/ should be searchable: {r:?}");
    let mut c = as_user(second, &[&group_opt], Path::new("/bin/cat"));
    c.arg(&entry);
    let r = run_timeout(c, b"", TIMEOUT);
    assert_ne!(r.code, Some(0), "the helper's group could read an entry: {r:?}");
    assert!(r.stderr.contains("Permission denied"), "{r:?}");
}

#[test]
fn outq_check_passes_a_clean_install_and_names_each_broken_state() {
    if !privileged("outq_check_passes_a_clean_install_and_names_each_broken_state") {
        return;
    }
    let fx = Fixture::new();
    let spool = fx.spool.display().to_string();
    let helper = fx.helper.display().to_string();
    let config = fx.config.path().display().to_string();
    let (caller, second, group) = (&fx.acc.caller, &fx.acc.second, &fx.acc.group);
    fx.assert_check_clean("clean install");

    // Spool directories; `outq init` repairs modes and owners.
    let set_mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set_mode(&fx.spool.join("new"), 0o3770);
    fx.assert_check_finds("new/ mode 3770", &format!("{spool}/new has mode 3770, expected 3730"));
    fx.init().assert_code(0);
    fx.assert_check_clean("after repairing new/");

    std::os::unix::fs::chown(fx.spool.join("active"), Some(caller.uid), None).unwrap();
    fx.assert_check_finds("active/ owner", &format!("{spool}/active is owned by uid {}", caller.uid));
    fx.init().assert_code(0);
    fx.assert_check_clean("after repairing active/");

    // tmp/ replaced by a symbolic link: reported, and never followed by init.
    let tmp = fx.spool.join("tmp");
    let moved = fx.spool.join("tmp.real");
    std::fs::rename(&tmp, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &tmp).unwrap();
    fx.assert_check_finds("tmp/ symlink", &format!("{spool}/tmp is a symbolic link"));
    let before = fingerprint(&moved);
    let r = fx.init();
    assert_ne!(r.code, Some(0), "outq init accepted a symlinked tmp/: {r:?}");
    assert_eq!(fingerprint(&moved), before, "outq init followed the symlink");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&moved, &tmp).unwrap();
    fx.assert_check_clean("after restoring tmp/");

    // The installed helper.
    set_mode(&fx.helper, 0o755);
    fx.assert_check_finds("helper without set-group-ID", &format!("helper {helper} is not set-group-ID"));
    set_mode(&fx.helper, 0o2775);
    fx.assert_check_finds("helper group-writable", &format!("helper {helper} is writable by group or others"));
    set_mode(&fx.helper, 0o2755);
    fx.assert_check_clean("after restoring the helper");

    // The configuration file.
    set_mode(fx.config.path(), 0o664);
    fx.assert_check_finds("config group-writable", &format!("configuration {config} is not trusted"));
    fx.write_config("");
    std::os::unix::fs::chown(fx.config.path(), Some(caller.uid), None).unwrap();
    fx.assert_check_finds("config owned by the caller", &format!("configuration {config} is not trusted"));
    fx.write_config("");
    fx.assert_check_clean("after restoring the configuration");

    // The helper's group must stay dedicated.
    root_cmd("usermod", &["-g", &group.name, &second.name]);
    fx.assert_check_finds("group is a primary group", &format!("group {} is the primary group of", group.name));
    root_cmd("usermod", &["-g", &second.name, &second.name]);
    root_cmd("usermod", &["-a", "-G", &group.name, &second.name]);
    fx.assert_check_finds("group has a member", &format!("group {} has members ({})", group.name, second.name));
    root_cmd("usermod", &["-r", "-G", &group.name, &second.name]);
    fx.assert_check_clean("after restoring the group");
}

#[test]
fn outq_init_is_idempotent_repairs_modes_and_never_touches_entries() {
    if !privileged("outq_init_is_idempotent_repairs_modes_and_never_touches_entries") {
        return;
    }
    let fx = Fixture::new();
    let spool = fx.spool.display().to_string();
    assert!(fx.init_output.lines().any(|l| l.starts_with("outq init: created ")), "{}", fx.init_output);
    let parts = || -> Vec<_> { PARTS.iter().map(|p| fingerprint(&fx.spool.join(p.name))).collect() };

    // Running it again changes nothing, and says so the same way each time.
    let before = parts();
    let second = fx.init().assert_code(0).stdout.clone();
    let third = fx.init().assert_code(0).stdout.clone();
    assert_eq!(second, third);
    let ready =
        format!("outq init: spool {spool} ready (owner {}, helper group {})\n", fx.acc.owner.name, fx.acc.group.name);
    assert_eq!(second, ready, "a second run reported changes");
    assert_eq!(parts(), before, "a second run changed the spool");

    // Break modes and an owner with an entry waiting in new/.
    let id = fx.submit(&fx.acc.caller, &["a@example.org"], b"waiting\n").queue_id();
    let entry = fx.spool.join("new").join(&id);
    let entry_before = (fingerprint(&entry), std::fs::read(&entry).unwrap());
    let set_mode = |p: &str, m: u32| {
        std::fs::set_permissions(fx.spool.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    };
    set_mode("new", 0o770);
    set_mode("active", 0o755);
    std::os::unix::fs::chown(fx.spool.join("deferred"), Some(fx.acc.caller.uid), None).unwrap();
    let r = fx.init();
    r.assert_code(0);
    for change in [
        format!("outq init: set mode of {spool}/new to 3730"),
        format!("outq init: set mode of {spool}/active to 0700"),
        format!("outq init: set owner of {spool}/deferred to {}:{}", fx.acc.owner.uid, fx.acc.owner.gid),
    ] {
        assert!(r.stdout.lines().any(|l| l == change), "missing {change:?} in\n{}", r.stdout);
    }
    for p in PARTS.iter() {
        assert_eq!(mode_of(&fx.spool.join(p.name)), p.mode, "{} after repair", p.name);
    }
    assert_eq!((fingerprint(&entry), std::fs::read(&entry).unwrap()), entry_before, "outq init touched an entry");
    assert_eq!(fx.names("new"), vec![id]);
    assert_eq!(fx.init().assert_code(0).stdout, ready);
    fx.assert_check_clean("after repair");
}

#[test]
fn closed_stdin_is_refused_closed_stdout_or_stderr_accepted() {
    if !privileged("closed_stdin_is_refused_closed_stdout_or_stderr_accepted") {
        return;
    }
    let fx = Fixture::new();
    let caller = &fx.acc.caller;
    let log = TestSyslog::new();
    // Exactly one descriptor closed per case; the helper must notice even
    // though glibc (secure mode) reopens it before main.
    let r = run_timeout(fx.helper_via_sh(caller, "exec <&-; exec \"$0\" \"$@\"", &["a@example.org"]), b"m\n", TIMEOUT);
    fx.assert_refused("standard input closed", &r, 66);
    r.assert_stderr_contains("standard input is closed");
    // Standard output closed: accepted; the queue ID reaches syslog only.
    let cmd = fx.helper_via_sh(caller, "exec >&-; exec \"$0\" \"$@\"", &["-f", "s@example.org", "a@example.org"]);
    let r = run_timeout(log.wrap(&cmd), b"m\n", TIMEOUT);
    assert_eq!(r.code, Some(0), "standard output closed: {r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""), "standard output closed");
    let ids = fx.names("new");
    assert_eq!(ids.len(), 1, "standard output closed: exactly one entry, found {ids:?}");
    assert_eq!(fx.names("tmp"), Vec::<String>::new());
    assert_logged(&log, &ids[0], "standard output closed: queue ID logged only");
    fx.clear_new();
    // Standard error closed: accepted, the queue ID printed and logged.
    let cmd = fx.helper_via_sh(caller, "exec 2>&-; exec \"$0\" \"$@\"", &["-f", "s@example.org", "a@example.org"]);
    let r = run_timeout(log.wrap(&cmd), b"m\n", TIMEOUT);
    assert_eq!(r.code, Some(0), "standard error closed: {r:?}");
    let path = fx.assert_accepted("standard error closed", &r);
    assert_eq!(fx.names("new").len(), 1);
    assert!(path.ends_with(r.queue_id()));
    assert_logged(&log, &r.queue_id(), "uid=");
}

/// Exactly one record in `log` is the helper's acceptance of `id`: facility
/// mail, severity info, our ident, and `needle` in its text.
#[track_caller]
fn assert_logged(log: &TestSyslog, id: &str, needle: &str) {
    let records = log.records();
    let accepted: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("<22>outq-enqueue[") && r.contains(&format!("]: {id}: uid=")))
        .collect();
    assert_eq!(accepted.len(), 1, "one acceptance record for {id} in {records:?}");
    assert!(accepted[0].contains(needle), "{needle:?} not in {:?}", accepted[0]);
}

#[test]
fn outq_sendmail_accepts_closed_stdout_and_stderr() {
    if !privileged("outq_sendmail_accepts_closed_stdout_and_stderr") {
        return;
    }
    let fx = Fixture::new();
    let caller = &fx.acc.caller;
    let log = TestSyslog::new();
    fx.write_config(&format!("myhostname = host.example\nenqueue_program = {}\n", fx.helper.display()));
    for (script, what) in [("exec >&-", "standard output closed"), ("exec 2>&-", "standard error closed")] {
        let mut cmd = as_user(caller, &[], Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg(format!("{script}; exec \"$0\" \"$@\""))
            .arg(bin("outq-sendmail"))
            .args(["-i", "a@example.org"]);
        let r = run_timeout(log.wrap(&cmd), b"Subject: t\n\nm\n", TIMEOUT);
        assert_eq!(r.code, Some(0), "{what}: {r:?}");
        assert_eq!(r.stderr, "", "{what}");
        let ids = fx.names("new");
        assert_eq!(ids.len(), 1, "{what}: exactly one entry, found {ids:?}");
        assert_logged(&log, &ids[0], "uid=");
        fx.clear_new();
    }
}

#[test]
fn the_callers_umask_is_neutralised() {
    if !privileged("the_callers_umask_is_neutralised") {
        return;
    }
    let fx = Fixture::new();
    for mask in ["0777", "0000"] {
        let script = format!("umask {mask}; exec \"$0\" \"$@\"");
        let r = run_timeout(fx.helper_via_sh(&fx.acc.caller, &script, &["a@example.org"]), b"m\n", TIMEOUT);
        let path = fx.assert_accepted(&format!("umask {mask}"), &r);
        assert_eq!(mode_of(&path), 0o404, "entry mode under umask {mask}");
        fx.clear_new();
    }
}

#[test]
fn file_size_limit_fails_cleanly_and_a_low_soft_limit_is_raised() {
    if !privileged("file_size_limit_fails_cleanly_and_a_low_soft_limit_is_raised") {
        return;
    }
    let fx = Fixture::new();
    let caller = &fx.acc.caller;
    let body = message(4096);
    // One 512-byte block, soft and hard: the write fails with EFBIG (SIGXFSZ
    // is blocked, never delivered), the partial file is removed.
    let r = run_timeout(fx.helper_with_limits(caller, &["--fsize=512:512"], &["a@example.org"]), &body, TIMEOUT);
    fx.assert_refused("RLIMIT_FSIZE 512:512", &r, 75);
    r.assert_stderr_contains("file size limit");
    // Only the soft limit low: the helper raises it to the hard one.
    let r = run_timeout(fx.helper_with_limits(caller, &["--fsize=512:unlimited"], &["a@example.org"]), &body, TIMEOUT);
    let path = fx.assert_accepted("RLIMIT_FSIZE 512:unlimited", &r);
    let data = std::fs::read(path).unwrap();
    assert_eq!(entry::parse_bytes(&data, &LIMITS).unwrap().1, body.as_slice());
}

#[test]
fn open_files_limit_fails_cleanly() {
    if !privileged("open_files_limit_fails_cleanly") {
        return;
    }
    let fx = Fixture::new();
    let r = run_timeout(fx.helper_with_limits(&fx.acc.caller, &["--nofile=4:4"], &["a@example.org"]), b"m\n", TIMEOUT);
    fx.assert_refused("RLIMIT_NOFILE 4:4", &r, 75);
}

#[test]
fn a_poisoned_environment_is_ignored() {
    if !privileged("a_poisoned_environment_is_ignored") {
        return;
    }
    let fx = Fixture::new();
    let evil = Path::new("/tmp/evil");
    let evil_before = std::fs::symlink_metadata(evil).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));
    let mut c = Command::new("/usr/bin/env");
    c.env_clear().current_dir("/").arg("-i");
    c.args([
        "LD_PRELOAD=/tmp/nonexistent.so",
        "TZ=/etc/passwd",
        "TMPDIR=/nonexistent",
        "RUST_BACKTRACE=full",
        "OUTQ_SPOOL=/tmp/evil",
        "OUTQ_CONFIG=/tmp/evil",
    ]);
    c.arg("/usr/bin/setpriv")
        .arg(format!("--reuid={}", fx.acc.caller.uid))
        .arg(format!("--regid={}", fx.acc.caller.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(&fx.helper)
        .arg("a@example.org");
    let r = run_timeout(c, b"m\n", TIMEOUT);
    let id = r.queue_id();
    fx.the_entry("poisoned environment", &id);
    // setpriv, not set-group-ID, is itself loaded with the preload and says
    // so; the helper (secure mode) must add nothing.
    assert!(r.stderr.lines().all(|l| l.contains("LD_PRELOAD")), "unexpected stderr: {:?}", r.stderr);
    let evil_after = std::fs::symlink_metadata(evil).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));
    assert_eq!(evil_after, evil_before, "something was written at /tmp/evil");
}

#[test]
fn sigterm_in_the_middle_of_a_message_removes_the_temporary_file() {
    if !privileged("sigterm_in_the_middle_of_a_message_removes_the_temporary_file") {
        return;
    }
    let fx = Fixture::new();
    let body = message(4 << 20);
    let mut c = fx.helper_as(&fx.acc.caller, &[]);
    c.arg("a@example.org");
    let mut run = Running::spawn(c);
    let part = 256 * 1024;
    run.feed(&body[..part]);
    fx.wait_blocked_in_read(run.pid(), part as u64);
    root_cmd("/bin/kill", &["-s", "TERM", &run.pid().to_string()]);
    // Standard input stays open: the signal alone must end it.
    let (status, out, err) = run.finish();
    let r = Ran { code: status.code(), stdout: out, stderr: err };
    fx.assert_refused("SIGTERM mid-message", &r, 75);
    r.assert_stderr_contains("interrupted by signal 15");
}

#[test]
fn sigkill_in_the_middle_of_a_message_never_reaches_new() {
    if !privileged("sigkill_in_the_middle_of_a_message_never_reaches_new") {
        return;
    }
    let fx = Fixture::new();
    let body = message(4 << 20);
    let mut c = fx.helper_as(&fx.acc.caller, &[]);
    c.arg("a@example.org");
    let mut run = Running::spawn(c);
    let part = 256 * 1024;
    run.feed(&body[..part]);
    let partial = fx.wait_blocked_in_read(run.pid(), part as u64);
    run.child.kill().unwrap();
    let (status, _, _) = run.finish();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // SIGKILL cannot be caught: the partial file stays for the runner to
    // remove, but nothing was committed.
    assert_eq!(fx.names("tmp"), vec![partial.file_name().unwrap().to_string_lossy().into_owned()]);
    assert_eq!(fx.names("new"), Vec::<String>::new());
}

#[test]
fn development_overrides_are_refused_when_setgid() {
    if !privileged("development_overrides_are_refused_when_setgid") {
        return;
    }
    let fx = Fixture::new();
    let spool = fx.spool.display().to_string();
    let config = fx.config.path().display().to_string();
    for (opt, value) in [("--spool", spool.as_str()), ("--config", config.as_str())] {
        let r = fx.submit(&fx.acc.caller, &[opt, value, "a@example.org"], b"m\n");
        fx.assert_refused(opt, &r, 64);
        r.assert_stderr_contains("refused when running set-group-ID");
    }
}

#[test]
fn no_new_privs_is_diagnosed() {
    if !privileged("no_new_privs_is_diagnosed") {
        return;
    }
    let fx = Fixture::new();
    let mut c = fx.helper_as(&fx.acc.caller, &["--no-new-privs"]);
    c.arg("a@example.org");
    let r = run_timeout(c, b"m\n", TIMEOUT);
    fx.assert_refused("no_new_privs", &r, 75);
    r.assert_stderr_contains("no_new_privs");
}

#[test]
fn a_helper_without_the_setgid_bit_is_diagnosed() {
    if !privileged("a_helper_without_the_setgid_bit_is_diagnosed") {
        return;
    }
    let fx = Fixture::new();
    let plain = install_helper(fx.bin_dir.path(), "outq-enqueue-plain", fx.acc.group.gid, 0o755);
    let mut c = as_user(&fx.acc.caller, &[], &plain);
    c.arg("a@example.org");
    let r = run_timeout(c, b"m\n", TIMEOUT);
    fx.assert_refused("no set-group-ID bit", &r, 75);
    r.assert_stderr_contains("set-group-ID bit is missing");
}

#[test]
fn bad_envelopes_and_messages_are_refused() {
    if !privileged("bad_envelopes_and_messages_are_refused") {
        return;
    }
    let fx = Fixture::new();
    fx.write_config("message_size_limit = 2048\nmax_recipients = 3\n");
    let big = message(4096);
    let many: Vec<String> = (0..4).map(|i| format!("r{i}@example.org")).collect();
    let cases: Vec<(Vec<&str>, &[u8], &str)> = vec![
        (vec!["a@example.org\r\nRCPT TO:<x@y.example>"], b"m\n", "CR LF in a recipient"),
        (vec!["a@example.org\n"], b"m\n", "LF in a recipient"),
        (vec!["a b@example.org"], b"m\n", "space in a recipient"),
        (vec!["--", "-oQ@example.org"], b"m\n", "leading '-' after --"),
        (vec!["a@example.org"], b"nul \0 byte\n", "NUL in the message"),
        (vec!["a@example.org"], &big, "message over message_size_limit"),
        (many.iter().map(String::as_str).collect(), b"m\n", "more than max_recipients"),
        (vec!["a@example.org"], b"", "empty message"),
    ];
    for (args, input, what) in cases {
        let r = fx.submit(&fx.acc.caller, &args, input);
        fx.assert_refused(what, &r, 65);
    }
}

#[test]
fn submit_users_is_enforced() {
    if !privileged("submit_users_is_enforced") {
        return;
    }
    let fx = Fixture::new();
    let (caller, second) = (&fx.acc.caller, &fx.acc.second);

    fx.write_config(&format!("submit_users = {}\n", second.name));
    let r = fx.submit(caller, &["a@example.org"], b"m\n");
    fx.assert_refused("caller not listed", &r, 77);
    r.assert_stderr_contains(&format!("user {} (uid {}) is not allowed", caller.name, caller.uid));
    fx.assert_accepted("listed user", &fx.submit(second, &["a@example.org"], b"m\n"));
    fx.clear_new();

    // By the caller's own primary group, and by a supplementary group.
    root_cmd("usermod", &["-a", "-G", &second.name, &caller.name]);
    for group in [&caller.name, &second.name] {
        fx.write_config(&format!("submit_users = @{group}\n"));
        fx.assert_accepted(&format!("member of @{group}"), &fx.submit(caller, &["a@example.org"], b"m\n"));
        fx.clear_new();
    }

    // An account only a directory service knows: a uid and gid with no
    // line in /etc/passwd or /etc/group. The helper reads those files and
    // never NSS, so it is listed by number.
    let ghost = unlisted_account();
    let as_ghost = |args: &[&str]| {
        let mut c = fx.helper_as(&ghost, &["--clear-groups"]);
        c.args(args);
        run_timeout(c, b"m\n", TIMEOUT)
    };
    fx.write_config(&format!("submit_users = {}, {}\n", second.name, ghost.uid));
    fx.assert_accepted("listed by uid", &as_ghost(&["-f", "g@example.org", "a@example.org"]));
    fx.clear_new();
    fx.write_config(&format!("submit_users = @{}\n", ghost.gid));
    fx.assert_accepted("listed by gid", &as_ghost(&["-f", "g@example.org", "a@example.org"]));
    fx.clear_new();
    fx.assert_refused("not in the listed gid", &fx.submit(caller, &["a@example.org"], b"m\n"), 77);
    fx.write_config(&format!("submit_users = {}\n", second.name));
    let r = as_ghost(&["-f", "g@example.org", "a@example.org"]);
    fx.assert_refused("unlisted uid", &r, 77);
    r.assert_stderr_contains(&format!("uid {} is not allowed", ghost.uid));
    // Without -f there is no default sender for it.
    fx.write_config("");
    let r = as_ghost(&["a@example.org"]);
    fx.assert_refused("no default sender", &r, 77);
    r.assert_stderr_contains(&format!("uid {} has no account in /etc/passwd", ghost.uid));
    fx.assert_accepted("with -f", &as_ghost(&["-f", "g@example.org", "a@example.org"]));
}

/// A uid and gid that no line of /etc/passwd or /etc/group (nor NSS) knows.
fn unlisted_account() -> Account {
    let known = |db: &str, id: u32| {
        std::process::Command::new("getent").args([db, &id.to_string()]).output().is_ok_and(|o| o.status.success())
    };
    let id = (3_900_000..3_999_999)
        .step_by(7919)
        .map(|i| i + std::process::id() % 7919)
        .find(|id| !known("passwd", *id) && !known("group", *id))
        .unwrap();
    Account { name: format!("uid{id}"), uid: id, gid: id }
}

#[test]
fn startup_hardening_is_visible_in_proc() {
    if !privileged("startup_hardening_is_visible_in_proc") {
        return;
    }
    let fx = Fixture::new();
    let mut c = fx.helper_as(&fx.acc.caller, &[]);
    c.arg("a@example.org");
    let mut run = Running::spawn(c);
    let first = b"Subject: proc\n\nfirst part\n";
    run.feed(first);
    fx.wait_blocked_in_read(run.pid(), first.len() as u64);
    let pid = run.pid();
    let proc = |f: &str| PathBuf::from(format!("/proc/{pid}/{f}"));

    // Started with an empty environment (env -i); nothing was added on the
    // way. (/proc shows the environment given to execve: clearenv(3) in the
    // helper does not change it, so this cannot show the clearing itself;
    // a_poisoned_environment_is_ignored covers that.)
    assert_eq!(std::fs::read(proc("environ")).unwrap(), b"");
    assert_eq!(proc_status_field(pid, "Umask").as_deref(), Some("0077"));
    let limits = std::fs::read_to_string(proc("limits")).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .expect("core limit line")
        .split_whitespace()
        .collect();
    assert_eq!(core.get(..2), Some(&["0", "0"][..]), "core file size limit: {core:?}");
    assert_eq!(std::fs::read_link(proc("cwd")).unwrap(), fx.spool);
    // Non-dumpable: the kernel then makes its /proc files root's, although
    // the process runs as the caller.
    assert_eq!(proc_status_field(pid, "Uid").unwrap().split_whitespace().next(), Some(&*fx.acc.caller.uid.to_string()));
    assert_eq!(std::fs::metadata(proc("environ")).unwrap().uid(), 0, "the helper is still dumpable");
    // Signals: exactly the termination signals (read from a signalfd, so
    // no handler runs) and SIGPIPE and SIGXFSZ (never delivered: the write
    // that raises one fails instead) blocked.
    let mask = |f: &str| u64::from_str_radix(&proc_status_field(pid, f).unwrap(), 16).unwrap();
    let bit = |sig: i32| 1u64 << (sig - 1);
    let terminating = [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGALRM];
    let write_signals = bit(libc::SIGPIPE) | bit(libc::SIGXFSZ);
    assert_eq!(mask("SigBlk"), terminating.iter().map(|&s| bit(s)).sum::<u64>() | write_signals);
    for sig in terminating {
        assert_eq!(mask("SigCgt") & bit(sig), 0, "signal {sig} has a handler");
    }

    run.close_stdin();
    let (status, out, err) = run.finish();
    let path = fx.assert_accepted("after /proc checks", &Ran { code: status.code(), stdout: out, stderr: err });
    assert_eq!(std::fs::symlink_metadata(path).unwrap().uid(), fx.acc.caller.uid);
}

#[test]
fn root_running_the_helper_holds_no_capabilities() {
    if !privileged("root_running_the_helper_holds_no_capabilities") {
        return;
    }
    let fx = Fixture::new();
    let mut c = Command::new(&fx.helper);
    c.env_clear().current_dir("/").arg("a@example.org");
    let mut run = Running::spawn(c);
    let first = b"Subject: root\n\nfirst part\n";
    run.feed(first);
    fx.wait_blocked_in_read(run.pid(), first.len() as u64);
    let pid = run.pid();
    assert_eq!(proc_status_field(pid, "Uid").unwrap().split_whitespace().next(), Some("0"));
    for field in ["CapEff", "CapPrm"] {
        assert_eq!(proc_status_field(pid, field).as_deref(), Some("0000000000000000"), "{field}");
    }
    run.close_stdin();
    let (status, out, err) = run.finish();
    let path = fx.assert_accepted("root", &Ran { code: status.code(), stdout: out, stderr: err });
    let m = std::fs::symlink_metadata(path).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, fx.acc.group.gid, 0o404));
}

// ---------------------------------------------------------------------------
// Leftovers of killed helpers (tmp/): reclaimed by the kernel's lock, and
// each account's share of the spool (submit_share).

impl Fixture {
    /// `outq run --once` as the queue owner, delivering into a Maildir of
    /// its own; the runner's log.
    fn run_once(&self) -> Ran {
        let outq = self.bin_dir.path().join("outq");
        if !outq.exists() {
            crate::support::install_outq(self.bin_dir.path());
        }
        let mut c = as_user(&self.acc.owner, &[], &outq);
        c.args(["run", "--once", "--log", "stderr"]);
        run_timeout(c, b"", Duration::from_secs(120))
    }

    /// The configuration with a Maildir relay owned by the queue owner.
    fn write_runner_config(&self, extra: &str) {
        let home = self.spool.parent().unwrap().join("owner-home");
        if !home.exists() {
            std::fs::create_dir(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(self.acc.owner.uid), Some(self.acc.owner.gid)).unwrap();
        }
        self.write_config(&format!("relay = maildir:{}/Maildir\n{extra}", home.display()));
    }
}

#[test]
fn two_hundred_killed_helpers_are_all_reclaimed_by_the_next_run() {
    if !privileged("two_hundred_killed_helpers_are_all_reclaimed_by_the_next_run") {
        return;
    }
    const HELPERS: usize = 200;
    const PART: usize = 20 * 1024;
    let fx = Fixture::new();
    fx.write_runner_config("message_size_limit = 1000000\n");
    let body = message(PART);
    let mut runs: Vec<Running> = (0..HELPERS)
        .map(|_| {
            let mut c = fx.helper_as(&fx.acc.caller, &[]);
            c.arg("a@example.org");
            let mut r = Running::spawn(c);
            r.feed(&body);
            r
        })
        .collect();
    let tmp = fx.spool.join("tmp");
    let written = wait_until(Duration::from_secs(120), || {
        let names = fx.names("tmp");
        names.len() == HELPERS
            && names.iter().all(|n| std::fs::metadata(tmp.join(n)).map(|m| m.len()).unwrap_or(0) >= PART as u64)
    });
    assert!(written, "{} of {HELPERS} helpers wrote {PART} bytes", fx.names("tmp").len());
    for r in &mut runs {
        r.child.kill().unwrap();
        let (status, _, _) = r.finish();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }
    assert_eq!(fx.names("tmp").len(), HELPERS, "the killed helpers' files");
    // Past the instant a new file is left alone in, whatever tmp_max_age.
    std::thread::sleep(Duration::from_millis(2100));
    let r = fx.run_once();
    r.assert_code(0);
    assert_eq!(fx.names("tmp"), Vec::<String>::new(), "left in tmp/ after the run:\n{}", r.stderr);
    assert_eq!(fx.names("new"), Vec::<String>::new());
    let reclaimed =
        r.stderr.lines().filter(|l| l.contains("removed from tmp/: never committed; its writer (uid")).count();
    assert_eq!(reclaimed, HELPERS, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("tmp/: reclaimed {HELPERS} abandoned file(s)")), "{}", r.stderr);
}

#[test]
fn a_slow_live_writer_is_not_touched_and_commits_afterwards() {
    if !privileged("a_slow_live_writer_is_not_touched_and_commits_afterwards") {
        return;
    }
    let fx = Fixture::new();
    fx.write_runner_config("");
    let body = message(64 * 1024);
    let mut c = fx.helper_as(&fx.acc.caller, &[]);
    c.arg("a@example.org");
    let mut run = Running::spawn(c);
    run.feed(&body[..16 * 1024]);
    let partial = fx.wait_blocked_in_read(run.pid(), 16 * 1024);
    std::thread::sleep(Duration::from_millis(2100));
    // `outq list --state tmp` shows it, owner and all, as being written.
    let owner = fx.bin_dir.path().join("outq");
    let r = fx.run_once();
    r.assert_code(0);
    assert!(partial.exists(), "the runner removed a live writer's file:\n{}", r.stderr);
    let mut c = as_user(&fx.acc.owner, &[], &owner);
    c.args(["list", "--state", "tmp"]);
    let l = run_timeout(c, b"", TIMEOUT);
    l.assert_code(0);
    let name = partial.file_name().unwrap().to_string_lossy().into_owned();
    let line = l.stdout.lines().find(|x| x.starts_with(&name)).unwrap_or_else(|| panic!("{}", l.stdout));
    assert!(line.contains(&format!("uid={} ({})", fx.acc.caller.uid, fx.acc.caller.name)), "{line}");
    assert!(line.ends_with(" writing"), "{line}");
    let mut c = as_user(&fx.acc.owner, &[], &owner);
    c.args(["status"]);
    let s = run_timeout(c, b"", TIMEOUT);
    assert!(s.stdout.lines().any(|x| x.starts_with("tmp ") && x.contains(" 1 entries")), "{}", s.stdout);
    run.feed(&body[16 * 1024..]);
    run.close_stdin();
    let (status, out, err) = run.finish();
    assert_eq!(status.code(), Some(0), "{out} {err}");
    let r = Ran { code: status.code(), stdout: out, stderr: err };
    fx.the_entry("slow writer", &r.queue_id());
}

#[test]
fn a_caller_over_its_share_gets_75_while_another_still_submits() {
    if !privileged("a_caller_over_its_share_gets_75_while_another_still_submits") {
        return;
    }
    let fx = Fixture::new();
    // Two messages being written use up the share: each may still grow to
    // message_size_limit.
    fx.write_runner_config("message_size_limit = 40000\nsubmit_share = 100000\n");
    let mut writers: Vec<Running> = (0..2)
        .map(|_| {
            let mut c = fx.helper_as(&fx.acc.caller, &[]);
            c.arg("a@example.org");
            let mut r = Running::spawn(c);
            r.feed(b"Subject: slow\n\n");
            r
        })
        .collect();
    assert!(wait_until(TIMEOUT, || fx.names("tmp").len() == 2), "{:?}", fx.names("tmp"));
    let r = fx.submit(&fx.acc.caller, &["a@example.org"], b"Subject: third\n\nbody\n");
    assert_eq!(r.code, Some(75), "{r:?}");
    r.assert_one_error_line();
    r.assert_stderr_contains("would exceed submit_share (100000 bytes)");
    assert_eq!(fx.names("new"), Vec::<String>::new());
    // Another account is not affected.
    let r = fx.submit(&fx.acc.second, &["a@example.org"], b"Subject: other\n\nbody\n");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(fx.names("new").len(), 1);
    // Killed, the writers hold their share until the runner reclaims their
    // files; then the caller submits again.
    for w in &mut writers {
        w.child.kill().unwrap();
        w.finish();
    }
    let r = fx.submit(&fx.acc.caller, &["a@example.org"], b"Subject: third\n\nbody\n");
    assert_eq!(r.code, Some(0), "abandoned files count only their size: {r:?}");
    std::thread::sleep(Duration::from_millis(2100));
    fx.run_once().assert_code(0);
    assert_eq!(fx.names("tmp"), Vec::<String>::new());
    let r = fx.submit(&fx.acc.caller, &["a@example.org"], b"Subject: fourth\n\nbody\n");
    assert_eq!(r.code, Some(0), "{r:?}");
    // Well within the share by its records, and with few new ones, the
    // ledger was not looked up: the third message, taken by the runner
    // since, is still recorded (an ID alone: counted at
    // message_size_limit), and the fourth beside it.
    let ledger_path = fx.spool.join("tmp").join(format!(".share.{}", fx.acc.caller.uid));
    let ledger = std::fs::read_to_string(&ledger_path).unwrap();
    assert_eq!(ledger.lines().filter(|l| !l.contains(' ')).count(), 2, "{ledger}");
    assert_eq!(fx.names("new").len(), 1, "the fourth");
    // Once the records since the last look-up are many (32) and outnumber
    // those it kept, the ledger is pruned: the IDs the runner has taken
    // are dropped. The share itself is never near here.
    fx.write_runner_config("message_size_limit = 40000\nsubmit_share = 100000000\n");
    for _ in 0..30 {
        let r = fx.submit(&fx.acc.caller, &["a@example.org"], b"Subject: more\n\nbody\n");
        assert_eq!(r.code, Some(0), "{r:?}");
    }
    let before = std::fs::read_to_string(&ledger_path).unwrap();
    assert_eq!(before.lines().filter(|l| !l.contains(' ')).count(), 32, "not looked up yet: {before}");
    fx.run_once().assert_code(0);
    assert_eq!(fx.names("new"), Vec::<String>::new());
    let r = fx.submit(&fx.acc.caller, &["a@example.org"], b"Subject: last\n\nbody\n");
    assert_eq!(r.code, Some(0), "{r:?}");
    let after = std::fs::read_to_string(&ledger_path).unwrap();
    assert_eq!(after, format!("{}\n", r.queue_id()), "pruned to the last message");
}
