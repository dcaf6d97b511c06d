/*!
Test support: run the built binaries and assert on what they did.

The helper the tests run is the workspace's debug build, or the file named
by `OUTQ_TEST_HELPER` (an absolute path) when that is set: `.ci/run` sets
it to the static-pie helper of `install/build-helper`, the one the
packages ship, so the whole suite, the privileged tests included, runs
against it. The first test that runs the helper prints one line saying
which helper it is and how it is linked (`helper under test: PATH
(OUTQ_TEST_HELPER; static-pie)`). [`Elf`] reads the ELF header and
program headers that tell a static-pie executable from a dynamically
linked one.
*/

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of a workspace binary. `outq` is built for this test by cargo; the
/// helper lives in its own package and is built by `cargo build --workspace`
/// (the README's test command runs that first).
///
/// The helper is the one named by [`TEST_HELPER_VAR`] when it is set: CI
/// sets it to the static-pie build of `install/build-helper`, the helper
/// the packages ship, so that every test (the privileged ones included)
/// runs that binary rather than the debug build. The first call for the
/// helper prints which one the tests run.
pub fn bin(name: &str) -> PathBuf {
    if name == "outq-enqueue" {
        if let Some(p) = test_helper() {
            report_helper(&p, true);
            return p;
        }
    }
    let outq = PathBuf::from(env!("CARGO_BIN_EXE_outq"));
    let p = outq.with_file_name(name);
    assert!(p.exists(), "{} is not built: run 'cargo build --workspace' before the tests", p.display());
    if name == "outq-enqueue" {
        report_helper(&p, false);
    }
    p
}

/// `OUTQ_TEST_HELPER=/path/to/outq-enqueue`: the helper every test runs
/// in place of the workspace's debug build (an absolute path to a file).
pub const TEST_HELPER_VAR: &str = "OUTQ_TEST_HELPER";

/// The helper named by [`TEST_HELPER_VAR`], if it is set and not empty.
pub fn test_helper() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(TEST_HELPER_VAR).filter(|v| !v.is_empty())?);
    assert!(p.is_absolute(), "{TEST_HELPER_VAR}={} is not an absolute path", p.display());
    assert!(p.is_file(), "{TEST_HELPER_VAR}={} is not a file", p.display());
    Some(p)
}

/// The static-pie helper that `install/build-helper` made: the one named by
/// [`TEST_HELPER_VAR`], else `release/helper/outq-enqueue` in this build's
/// target directory when it is there.
pub fn static_helper() -> Option<PathBuf> {
    if let Some(p) = test_helper() {
        return Some(p);
    }
    let outq = PathBuf::from(env!("CARGO_BIN_EXE_outq"));
    let p = outq.parent()?.parent()?.join("release/helper/outq-enqueue");
    p.is_file().then_some(p)
}

static HELPER_REPORTED: std::sync::Once = std::sync::Once::new();

/// One line, once per test process, on standard error: the helper the
/// tests run, where it came from and how it is linked.
fn report_helper(p: &Path, from_env: bool) {
    HELPER_REPORTED.call_once(|| {
        let origin = if from_env { TEST_HELPER_VAR } else { "the workspace build" };
        let kind = Elf::read(p).map_or_else(|e| format!("not a readable ELF file: {e}"), |elf| elf.kind());
        // Straight to the descriptor, as the skip lines: libtest captures
        // eprintln! of passing tests.
        let _ = writeln!(std::io::stderr(), "helper under test: {} ({origin}; {kind})", p.display());
    });
}

/// What the tests need to know of an ELF64 little-endian executable: its
/// type and the program headers and dynamic entries that tell a static-pie
/// executable from one that needs the dynamic loader. Read by hand from
/// the file (the offsets of the System V ABI), with no ELF crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// `e_type`: [`Elf::ET_EXEC`], [`Elf::ET_DYN`]...
    pub e_type: u16,
    /// Whether a `PT_INTERP` program header names a program interpreter.
    pub interp: bool,
    /// Whether a `PT_GNU_RELRO` program header is there.
    pub relro: bool,
    /// The `DT_NEEDED` entries of the dynamic section (shared libraries).
    pub needed: usize,
}

impl Elf {
    pub const ET_EXEC: u16 = 2;
    pub const ET_DYN: u16 = 3;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const PT_GNU_RELRO: u32 = 0x6474_e552;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;

    /// Parse `path`; an error names what is wrong with it.
    pub fn read(path: &Path) -> Result<Elf, String> {
        let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Elf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Elf, String> {
        fn field<const N: usize>(data: &[u8], at: u64) -> Result<[u8; N], String> {
            let at = usize::try_from(at).map_err(|_| format!("offset {at} out of range"))?;
            data.get(at..at.saturating_add(N))
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("truncated at offset {at}"))
        }
        let u16_at = |at: u64| field::<2>(data, at).map(u16::from_le_bytes);
        let u32_at = |at: u64| field::<4>(data, at).map(u32::from_le_bytes);
        let u64_at = |at: u64| field::<8>(data, at).map(u64::from_le_bytes);
        if data.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err("no ELF magic".into());
        }
        // e_ident: EI_CLASS 2 (64-bit), EI_DATA 1 (little endian).
        if data.get(4..6) != Some([2u8, 1].as_slice()) {
            return Err("not ELF64 little endian".into());
        }
        let e_type = u16_at(16)?;
        let (phoff, phentsize, phnum) = (u64_at(32)?, u64::from(u16_at(54)?), u64::from(u16_at(56)?));
        let (mut interp, mut relro, mut needed) = (false, false, 0);
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            match u32_at(ph)? {
                Elf::PT_INTERP => interp = true,
                Elf::PT_GNU_RELRO => relro = true,
                Elf::PT_DYNAMIC => {
                    // p_offset at 8, p_filesz at 32; entries of 16 bytes.
                    let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
                    for d in (off..off + size).step_by(16) {
                        match u64_at(d)? {
                            Elf::DT_NULL => break,
                            Elf::DT_NEEDED => needed += 1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Elf { e_type, interp, relro, needed })
    }

    /// A position-independent executable that needs no dynamic loader and
    /// no shared library.
    pub fn is_static_pie(&self) -> bool {
        self.e_type == Elf::ET_DYN && !self.interp && self.needed == 0
    }

    /// "static-pie", "dynamically linked" or what else it is, in words.
    pub fn kind(&self) -> String {
        if self.is_static_pie() {
            "static-pie".into()
        } else if self.interp || self.needed > 0 {
            format!("dynamically linked, {} shared libraries", self.needed)
        } else if self.e_type == Elf::ET_EXEC {
            "static, not position-independent".into()
        } else {
            format!("ELF type {}", self.e_type)
        }
    }
}

/// The result of running a program.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from_output(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "unexpected exit status\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Ran {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}: {}", self.stderr);
        self
    }

    /// The helper's contract: one error line `outq-enqueue: WHAT (FIX)`.
    #[track_caller]
    pub fn assert_one_error_line(&self) -> &Ran {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {:?}", self.stderr);
        let l = lines[0];
        assert!(l.starts_with("outq-enqueue: ") && l.ends_with(')') && l.contains(" ("), "malformed error line {l:?}");
        self
    }

    /// The queue ID printed on success.
    #[track_caller]
    pub fn queue_id(&self) -> String {
        self.assert_code(0);
        let id = self.stdout.trim_end().to_owned();
        assert_eq!(self.stdout, format!("{id}\n"));
        assert_eq!(id.len(), 26, "bad queue id {id:?}");
        id
    }
}

/// Run `cmd` with `input` on standard input.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Ran {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // Write from a thread: the child may exit early without reading it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    Ran::from_output(out)
}

/// A spool for the helper in development mode, made by hand with the
/// layout's modes and the current user's group (works as root or not).
pub struct DevSpool {
    pub dir: tempfile::TempDir,
}

impl DevSpool {
    pub fn new() -> DevSpool {
        DevSpool::new_in(&std::env::temp_dir())
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A configuration file in the temporary directory.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("outq.conf");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// The helper with `--spool` (and a config that keeps the free-space
    /// reserve small so tests run on small disks too).
    pub fn helper(&self) -> Command {
        let cfg = self.dir.path().join("outq.conf");
        if !cfg.exists() {
            self.write_config("spool_min_free = 0\n");
        }
        let mut c = Command::new(bin("outq-enqueue"));
        c.arg("--spool").arg(self.root()).arg("--config").arg(cfg);
        c
    }

    pub fn names(&self, sub: &str) -> Vec<String> {
        list(&self.root().join(sub))
    }
}

/// The names in a spool directory, sorted; the helper's per-account
/// ledgers in `tmp/` (`.share.UID`, see `submit_share`) are not entries
/// and are left out.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(outq_spool::layout::SHARE_LEDGER_PREFIX))
        .collect();
    v.sort();
    v
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A 4 KB message with headers.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr\r\n");
    }
    m.truncate(size);
    m
}

// ---------------------------------------------------------------------------
// Root-only fixtures for the privileged tests. Everything here changes the
// system (accounts, /etc/outq/outq.conf), so each piece undoes itself in
// Drop, which also runs when a test panics.

/// Whether this process may run the privileged tests. Prints a visible
/// skip line when it may not; fails instead with `OUTQ_REQUIRE_PRIVILEGED=1`
/// so a CI run as the wrong user cannot pass silently.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("privileged test needs root: {test}");
    }
    // Straight to the descriptor: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {test}");
    false
}

/// Where privileged test runs serialise across processes (several checkouts
/// or test binaries may run at once; they share /etc/outq/outq.conf).
pub const PRIVILEGED_LOCK_PATH: &str = "/run/outq-tests.lock";

static PRIVILEGED_MUTEX: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held for a whole privileged test: the process-wide mutex (libtest runs
/// tests on threads) and an exclusive flock(2) shared with other processes.
pub struct PrivilegedLock {
    _flock: nix::fcntl::Flock<std::fs::File>,
    _mutex: std::sync::MutexGuard<'static, ()>,
}

pub fn privileged_lock() -> PrivilegedLock {
    use std::os::unix::fs::OpenOptionsExt;
    // A test that panicked while holding the mutex poisons it; its fixture
    // has been torn down by then, so the next test may go on.
    let mutex = PRIVILEGED_MUTEX.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(PRIVILEGED_LOCK_PATH)
        .unwrap_or_else(|e| panic!("open {PRIVILEGED_LOCK_PATH}: {e}"));
    let flock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {PRIVILEGED_LOCK_PATH}: {e}"));
    PrivilegedLock { _flock: flock, _mutex: mutex }
}

/// Run a root administration command (useradd, chown...) and require success.
#[track_caller]
pub fn root_cmd(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command, ignoring failure (cleanup, where panicking would abort).
pub fn root_cmd_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A test account with its own primary group of the same name.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// The account's own primary group (`useradd --user-group`).
    pub gid: u32,
}

/// A dedicated test group for the helper.
#[derive(Debug, Clone)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

/// Accounts created so far, removed in reverse order on drop.
#[derive(Default)]
struct AccountCleanup {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Drop for AccountCleanup {
    fn drop(&mut self) {
        for user in self.users.iter().rev() {
            // -f as a fallback: a helper left running by a failed test would
            // otherwise keep the account alive.
            if !root_cmd_quiet("userdel", &[user]) {
                root_cmd_quiet("userdel", &["-f", user]);
            }
            // userdel keeps the user's own group when it still has members.
            if nix::unistd::Group::from_name(user).ok().flatten().is_some() {
                root_cmd_quiet("groupdel", &[user]);
            }
        }
        for group in self.groups.iter().rev() {
            root_cmd_quiet("groupdel", &[group]);
        }
    }
}

/// The accounts of one privileged test: the helper's dedicated group, two
/// callers and the queue owner.
pub struct TestAccounts {
    pub group: TestGroup,
    pub caller: Account,
    pub second: Account,
    pub owner: Account,
    _cleanup: AccountCleanup,
}

static NAME_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh name `oqt<pid><n>` used by no user and no group.
fn fresh_name() -> String {
    use nix::unistd::{Group, User};
    for _ in 0..1000 {
        let n = NAME_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("oqt{}{n}", std::process::id());
        assert!(name.len() <= 32, "account name too long: {name}");
        let taken = User::from_name(&name).ok().flatten().is_some() || Group::from_name(&name).ok().flatten().is_some();
        if !taken {
            return name;
        }
    }
    panic!("no free test account name");
}

impl TestAccounts {
    pub fn create() -> TestAccounts {
        use nix::unistd::{Group, User};
        // Filled as we go, so a failure halfway removes what was made.
        let mut cleanup = AccountCleanup::default();
        let group_name = fresh_name();
        root_cmd("groupadd", &["--system", &group_name]);
        cleanup.groups.push(group_name.clone());
        let group = Group::from_name(&group_name).unwrap().expect("new group");
        let mut user = || {
            let name = fresh_name();
            root_cmd(
                "useradd",
                &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", &name],
            );
            cleanup.users.push(name.clone());
            let u = User::from_name(&name).unwrap().expect("new user");
            assert_ne!(u.gid, group.gid, "the helper's group must not be a primary group");
            Account { name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }
        };
        let (caller, second, owner) = (user(), user(), user());
        TestAccounts {
            group: TestGroup { name: group_name, gid: group.gid.as_raw() },
            caller,
            second,
            owner,
            _cleanup: cleanup,
        }
    }
}

/// A copy of the built helper in its own root-owned 0755 directory under
/// /tmp (every user can reach it), owned root:`gid` with `mode`.
pub fn install_helper(dir: &Path, name: &str, gid: u32, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(bin("outq-enqueue"), &path).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
    // After chown, which clears the set-group-ID bit.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A copy of the built `outq` in `dir`, mode 0755, that every account
/// can run (the build directory may not be reachable by test accounts).
pub fn install_outq(dir: &Path) -> PathBuf {
    let path = dir.join("outq");
    std::fs::copy(bin("outq"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A root-owned 0755 temporary directory under /tmp.
pub fn root_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The system configuration file the installed helper reads
/// (`outq_spool::config::CONFIG_PATH`), taken over for one test: whatever
/// was there is put back on drop, and /etc/outq removed if we created it.
pub struct SystemConfig {
    path: PathBuf,
    /// Content, mode, uid and gid of the file that was there.
    saved: Option<(Vec<u8>, u32, u32, u32)>,
    created_dir: Option<PathBuf>,
}

impl SystemConfig {
    pub fn take() -> SystemConfig {
        let path = PathBuf::from(outq_spool::config::CONFIG_PATH);
        let dir = path.parent().unwrap().to_path_buf();
        let created_dir = match std::fs::symlink_metadata(&dir) {
            Ok(m) => {
                assert!(m.is_dir(), "{} is not a directory", dir.display());
                None
            }
            Err(_) => {
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
                std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
                Some(dir)
            }
        };
        let saved = match std::fs::symlink_metadata(&path) {
            Ok(m) => {
                assert!(m.is_file(), "{} is not a regular file; not touching it", path.display());
                Some((std::fs::read(&path).unwrap(), m.mode() & 0o7777, m.uid(), m.gid()))
            }
            Err(_) => None,
        };
        SystemConfig { path, saved, created_dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the file's content, root:root 0644.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
        std::os::unix::fs::chown(&self.path, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

impl Drop for SystemConfig {
    fn drop(&mut self) {
        match &self.saved {
            Some((text, mode, uid, gid)) => {
                let _ = std::fs::write(&self.path, text);
                let _ = std::os::unix::fs::chown(&self.path, Some(*uid), Some(*gid));
                let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(*mode));
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        if let Some(dir) = &self.created_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A command that runs `program` as `who` (real and effective uid and gid,
/// its supplementary groups from the group database) with an empty
/// environment, the way a real caller would start it.
pub fn as_user(who: &Account, setpriv_opts: &[&str], program: &Path) -> Command {
    let mut c = Command::new("/usr/bin/setpriv");
    c.env_clear().current_dir("/");
    c.arg(format!("--reuid={}", who.uid)).arg(format!("--regid={}", who.gid));
    if !setpriv_opts.iter().any(|o| o.starts_with("--groups") || o.starts_with("--clear-groups")) {
        c.arg("--init-groups");
    }
    c.args(setpriv_opts).arg("--").arg(program);
    c
}

/// Like [`run_with_input`], but fails the test instead of hanging when the
/// program does not finish within `timeout`.
pub fn run_timeout(mut cmd: Command, input: &[u8], timeout: std::time::Duration) -> Ran {
    use std::io::Read;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // The child may exit without reading everything: write from a thread.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    });
    let _ = writer.join();
    Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// Poll `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut std::process::Child, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Poll `cond` every few milliseconds until it holds; false after `timeout`.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// outq-sendmail: a development spool with a configuration naming the built
// helper, in a directory whose ancestors are trusted even when the tests
// run as root (unlike /tmp, which outq-sendmail refuses to trust as root).

impl DevSpool {
    /// Like [`DevSpool::new`], in a fresh directory under `parent`.
    pub fn new_in(parent: &Path) -> DevSpool {
        let dir = tempfile::Builder::new().prefix("outq-test-").tempdir_in(parent).unwrap();
        let root = dir.path().join("spool");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in outq_spool::layout::PARTS.iter().filter(|p| !p.name.is_empty()) {
            let path = root.join(p.name);
            match p.kind {
                outq_spool::layout::Kind::Dir => std::fs::create_dir(&path).unwrap(),
                outq_spool::layout::Kind::File => drop(std::fs::File::create(&path).unwrap()),
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(p.mode)).unwrap();
        }
        DevSpool { dir }
    }
}

/// A parent directory for test spools whose every ancestor a configuration
/// may live under: as root, `/run/outq-tests` (root 0755: root trusts no
/// sticky `/tmp` and the checkout may be anywhere); otherwise the cargo
/// target's scratch directory, owned by the user running the tests.
pub fn trusted_tmp_parent() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        let p = PathBuf::from("/run/outq-tests");
        let _ = std::fs::create_dir(&p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    }
}

/// A spool, a configuration (`-C`) for outq-sendmail naming it and the
/// built helper, with `myhostname = host.example`.
pub struct SendmailSpool {
    pub spool: DevSpool,
    pub config: PathBuf,
}

pub const SENDMAIL_HOST: &str = "host.example";

impl SendmailSpool {
    pub fn new() -> SendmailSpool {
        SendmailSpool::with(&bin("outq-enqueue"), "")
    }

    /// With `helper` as enqueue_program and `extra` configuration lines.
    pub fn with(helper: &Path, extra: &str) -> SendmailSpool {
        let spool = DevSpool::new_in(&trusted_tmp_parent());
        let text = format!(
            "spool_directory = {}\nspool_min_free = 0\nmyhostname = {SENDMAIL_HOST}\nenqueue_program = {}\n{extra}",
            spool.root().display(),
            helper.display()
        );
        let config = spool.write_config(&text);
        SendmailSpool { spool, config }
    }

    /// `outq-sendmail -C CONFIG`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("outq-sendmail"));
        c.arg("-C").arg(&self.config);
        c
    }

    /// The same as a shell command line, for programs that run their
    /// mailer through `sh -c`.
    pub fn shell_cmd(&self) -> String {
        format!("'{}' -C '{}'", bin("outq-sendmail").display(), self.config.display())
    }

    /// Every committed entry, parsed.
    pub fn entries(&self) -> Vec<(outq_spool::entry::Header, Vec<u8>)> {
        let limits = outq_spool::entry::Limits { max_recipients: 1000, max_size: 100_000_000 };
        self.spool
            .names("new")
            .iter()
            .map(|n| {
                let data = std::fs::read(self.spool.root().join("new").join(n)).unwrap();
                let (h, body) = outq_spool::entry::parse_bytes(&data, &limits).unwrap();
                (h, body.to_vec())
            })
            .collect()
    }

    /// The one committed entry: envelope sender, recipients, message.
    #[track_caller]
    pub fn only_entry(&self) -> (String, Vec<String>, Vec<u8>) {
        let mut all = self.entries();
        assert_eq!(all.len(), 1, "expected one entry in new/, found {}", all.len());
        let (h, body) = all.remove(0);
        let rcpts = h.recipients.iter().map(|r| r.as_str().to_owned()).collect();
        (h.sender.as_str().to_owned(), rcpts, body)
    }
}

/// The login of the real uid (the default sender's local part).
pub fn my_login() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().name
}

/// Whether `program` is on PATH; when it is not, [`report_missing`].
pub fn have_program(program: &str, test: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(program).is_file()) {
        return true;
    }
    report_missing(program, test);
    false
}

/// A program a test needs is missing: print a visible skip line, or fail
/// with `OUTQ_REQUIRE_PRIVILEGED=1` (CI installs it).
pub fn report_missing(program: &str, test: &str) {
    if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test}: {program} is not installed and OUTQ_REQUIRE_PRIVILEGED=1 (.ci/run installs it)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED ({program} not installed): {test}");
}

// ---------------------------------------------------------------------------
// A syslog of the test's own: the programs log to the fixed path /dev/log,
// which the machine may not have and other work on it must not see replaced.

/// A datagram socket standing in for `/dev/log`, and a way to run a command
/// in a private mount namespace where `/dev/log` is that socket (a tmpfs on
/// `/dev` holding `null`, `full`, `zero`, `random`, `urandom` from the real
/// one, and `log`). Needs root (`unshare --mount`).
pub struct TestSyslog {
    dir: tempfile::TempDir,
    socket: std::os::unix::net::UnixDatagram,
}

impl TestSyslog {
    pub fn new() -> TestSyslog {
        let dir = root_tempdir("outq-syslog-");
        let path = dir.path().join("log");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        // Any caller may log, as to the real /dev/log.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        TestSyslog { dir, socket }
    }

    /// `cmd` (program, arguments, working directory `/`, empty environment)
    /// run where `/dev/log` is this socket.
    pub fn wrap(&self, cmd: &Command) -> Command {
        const SETUP: &str = "set -e; d=$1; shift; mount --rbind /dev \"$d/dev\"; \
            mount -t tmpfs -o mode=0755,nosuid tmpfs /dev; \
            for n in null full zero random urandom; do : >/dev/$n; mount --bind \"$d/dev/$n\" /dev/$n; done; \
            : >/dev/log; mount --bind \"$d/log\" /dev/log; exec \"$@\"";
        let mut c = Command::new("/usr/bin/unshare");
        c.env_clear().current_dir("/");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", SETUP, "sh"]);
        c.arg(self.dir.path()).arg(cmd.get_program()).args(cmd.get_args());
        c
    }

    /// Every record received so far.
    pub fn records(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned());
        }
        out
    }
}

/// splitmix64: a small random generator for fault injection and random
/// scenarios, reproducible from its seed (the soak and power-cut tests
/// print theirs).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A generator of its own for another thread, seeded from this one.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}
