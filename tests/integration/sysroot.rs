/*!
A throw-away copy of this machine for package tests: an overlay of `/`
with its changes in a private tmpfs, mounted in a mount namespace of its
own, where `apt` and `dpkg` can install, replace and purge packages for
real without changing this machine's package state (other tests, and
other developers on the same machine, keep their Postfix).

A holder process (`unshare --mount --propagation private sleep`) owns the
namespace; commands run in it through `nsenter` and `chroot`. The holder
dies with the thread that made it (`setpriv --pdeathsig KILL`) or on drop,
and every mount goes with its namespace. Inside, `/run` and `/tmp` are
empty tmpfs (no running systemd is visible, so maintainer scripts start no
service) and `/usr/sbin/policy-rc.d` forbids init scripts to start or stop
anything: the copy must never signal this machine's daemons.
*/

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Ran, root_tempdir, run_timeout};

/// One command in the copy may take this long (apt included).
const TIMEOUT: Duration = Duration::from_secs(300);

pub struct Sysroot {
    holder: Child,
    /// The host directory holding the mount points `t/` (tmpfs) and `m/`
    /// (the overlay, the copy's `/`).
    dir: tempfile::TempDir,
}

impl Sysroot {
    /// Mount the copy. Panics (failing the test) when it cannot.
    pub fn new() -> Sysroot {
        let dir = root_tempdir("oqt-sysroot-");
        let holder = Command::new("/usr/bin/setpriv")
            .args(["--pdeathsig", "KILL", "--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the namespace holder (setpriv, unshare)");
        let sysroot = Sysroot { holder, dir };
        sysroot.wait_for_namespace();
        let d = sysroot.dir.path().display().to_string();
        let script = format!(
            "set -e
             mkdir {d}/t {d}/m
             mount -t tmpfs -o size=4g,mode=0755 oqt-upper {d}/t
             mkdir {d}/t/upper {d}/t/work
             mount -t overlay oqt-sysroot -o lowerdir=/,upperdir={d}/t/upper,workdir={d}/t/work {d}/m
             mount -t proc proc {d}/m/proc
             mount -t devtmpfs devtmpfs {d}/m/dev
             mount -t tmpfs -o mode=0755 oqt-run {d}/m/run
             mount -t tmpfs -o mode=1777 oqt-tmp {d}/m/tmp
             printf '#!/bin/sh\\n# no service starts or stops in a test copy\\nexit 101\\n' > {d}/m/usr/sbin/policy-rc.d
             chmod 0755 {d}/m/usr/sbin/policy-rc.d"
        );
        let mut c = sysroot.in_namespace();
        c.args(["/bin/sh", "-c", &script]);
        let r = run_timeout(c, b"", TIMEOUT);
        assert_eq!(r.code, Some(0), "mounting the test copy failed: {}{}", r.stdout, r.stderr);
        sysroot
    }

    fn wait_for_namespace(&self) {
        let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let theirs = format!("/proc/{}/ns/mnt", self.holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.holder.id())).unwrap_or_default();
            if std::fs::read_link(&theirs).is_ok_and(|ns| ns != mine) && cmdline.starts_with(b"sleep\0") {
                return;
            }
            assert!(Instant::now() < deadline, "the namespace holder did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A command in the holder's mount namespace, on this machine's `/`.
    fn in_namespace(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.id().to_string()).args(["-m", "--"]);
        c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").current_dir("/");
        c
    }

    /// `program args...` run as root inside the copy, with a clean
    /// environment (noninteractive debconf and apt).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.in_namespace();
        c.arg("chroot").arg(self.dir.path().join("m")).arg(program).args(args);
        c.env("DEBIAN_FRONTEND", "noninteractive").env("LANG", "C.UTF-8").env("HOME", "/root");
        c
    }

    /// Run `program args...` in the copy with `input` on standard input.
    pub fn run(&self, program: &str, args: &[&str], input: &[u8]) -> Ran {
        run_timeout(self.command(program, args), input, TIMEOUT)
    }

    /// The copy's `path`, as seen from this machine (through the holder's
    /// view of the file system).
    pub fn path(&self, path: &str) -> PathBuf {
        let m = self.dir.path().join("m");
        Path::new(&format!("/proc/{}/root", self.holder.id()))
            .join(m.strip_prefix("/").unwrap())
            .join(path.trim_start_matches('/'))
    }

    /// A package's `${Status}` in the copy ("" when dpkg does not know it).
    pub fn package_status(&self, package: &str) -> String {
        self.run("dpkg-query", &["-W", "-f=${Status}", package], b"").stdout.trim().to_owned()
    }

    /// Whether `package` is installed in the copy.
    pub fn installed(&self, package: &str) -> bool {
        self.package_status(package) == "install ok installed"
    }

    /// uid of a user in the copy's own /etc/passwd.
    pub fn uid(&self, name: &str) -> Option<u32> {
        Self::id_in(&self.path("/etc/passwd"), name, 2)
    }

    /// gid of a group in the copy's own /etc/group.
    pub fn gid(&self, name: &str) -> Option<u32> {
        Self::id_in(&self.path("/etc/group"), name, 2)
    }

    /// A field of a user's line in the copy's /etc/passwd.
    pub fn passwd_field(&self, name: &str, field: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.path("/etc/passwd")).ok()?;
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split(':').nth(field).map(str::to_owned)
    }

    /// Members listed on a group's line in the copy's /etc/group.
    pub fn group_members(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path("/etc/group")).ok()?;
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split(':').nth(3).map(str::to_owned)
    }

    fn id_in(file: &Path, name: &str, field: usize) -> Option<u32> {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split(':').nth(field)?.parse().ok()
    }
}

impl Drop for Sysroot {
    fn drop(&mut self) {
        // The namespace, and with it every mount and the tmpfs holding all
        // changes, ends with its last process.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
