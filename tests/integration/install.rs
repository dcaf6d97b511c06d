/*!
Installation: `install/install.sh`, the systemd files and the Debian
package.

Without privilege:
- the tmpfiles.d and sysusers.d files agree with the spool layout;
- the service unit carries its hardening and the warning for callers, and
  `systemd-analyze verify` accepts it (`SKIPPED (systemd-analyze not
  installed)` without it);
- the scripts pass shellcheck (`SKIPPED (shellcheck not installed)`);
- staging as an ordinary user applies modes only (the helper not
  set-group-ID) and records the intended owners in the manifest.

As root (`SKIPPED (needs root): NAME` otherwise, a failure with
`OUTQ_REQUIRE_PRIVILEGED=1`; a missing tool is then a failure too):
- staging into a `DESTDIR` with a test user and group sets every owner,
  group and mode; uninstall and purge remove what they should;
- a live installation under a private prefix in `/run` creates the
  accounts, the spool, passes `outq check`; uninstall keeps queued mail,
  purge removes spool, configuration and accounts;
- the Debian package (built as install/README.md says, or given as
  `OUTQ_DEB`) is installed with apt as the mail transport agent in a
  throw-away copy of this machine (`sysroot`) that has Postfix and
  bsd-mailx: Postfix is replaced and its queued mail reported, bsd-mailx
  stays and, installed again, pulls in no exim4; the installed helper is
  static-pie; `outq setup` runs non-interactively; mail goes
  from an unprivileged user through the helper, `/usr/sbin/sendmail`,
  `/usr/lib/sendmail` and `mail(1)` to a Maildir with the runner as the
  package's `outq` user; `mailq` and `newaliases` work; `dpkg -r` keeps
  the queued mail and `dpkg -P` removes everything. This machine's own
  package state is never changed.

Without privilege: the package's helper is static-pie (ELF type `DYN`,
no program interpreter, no shared library) while `outq` and
`outq-sendmail` are dynamically linked; lintian finds no error or warning
in the package, and the RPM built from `install/rpm/outq.spec` has the
expected modes, owners, flags and scriptlets (`rpm -qp --dump`,
`--scripts`).
*/

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::{Group, User};
use outq_spool::layout::{GroupRole, Kind, PARTS};

use crate::support::{
    Account, Elf, Ran, TestAccounts, bin, privileged, privileged_lock, root_tempdir, run_timeout, static_helper,
};
use crate::sysroot::Sysroot;

/// Bound for one script or program run (the package build has its own).
const TIMEOUT: Duration = Duration::from_secs(120);

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A tool the test needs: present, or a visible skip (a failure when
/// `OUTQ_REQUIRE_PRIVILEGED=1`, as CI sets it, so CI cannot skip it).
fn tool(test: &str, program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test}: {program} is not installed");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED ({program} not installed): {test}");
    false
}

fn run(mut cmd: Command) -> Ran {
    cmd.current_dir("/");
    run_timeout(cmd, b"", TIMEOUT)
}

#[track_caller]
fn ok(what: &str, r: &Ran) {
    assert_eq!(r.code, Some(0), "{what} failed\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
}

// ---------------------------------------------------------------------------
// The shipped files themselves.

#[test]
fn tmpfiles_and_sysusers_agree_with_the_spool_layout() {
    let tmpfiles = read(&top().join("install/systemd/outq.tmpfiles"));
    let mut lines: Vec<Vec<&str>> = tmpfiles
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), PARTS.len(), "one tmpfiles line per spool path");
    for part in PARTS.iter() {
        let path =
            if part.name.is_empty() { "/var/spool/outq".to_owned() } else { format!("/var/spool/outq/{}", part.name) };
        let i = lines.iter().position(|f| f.get(1) == Some(&path.as_str())).unwrap_or_else(|| panic!("no {path}"));
        let f = lines.remove(i);
        let kind = if part.kind == Kind::Dir { "d" } else { "f" };
        let group = if part.group == GroupRole::Drop { "outqdrop" } else { "outq" };
        let mode = format!("{:04o}", part.mode);
        assert_eq!(f, vec![kind, path.as_str(), mode.as_str(), "outq", group, "-"], "tmpfiles line for {path}");
    }

    let sysusers = read(&top().join("install/systemd/outq.sysusers"));
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(entries.iter().any(|f| f[..3] == ["u", "outq", "-"]), "sysusers: no user outq: {sysusers}");
    assert!(sysusers.contains("/var/spool/outq /usr/sbin/nologin"), "sysusers: home and shell: {sysusers}");
    assert!(entries.iter().any(|f| f[..] == ["g", "outqdrop", "-"]), "sysusers: no group outqdrop: {sysusers}");
    assert!(!entries.iter().any(|f| f[0] == "m"), "sysusers: outqdrop must never get members: {sysusers}");
}

/// The `key=value` settings of a unit file, in order.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_service_unit_is_hardened_and_warns_callers() {
    let path = top().join("install/systemd/outq.service");
    let text = read(&path);
    let settings = unit_settings(&text);
    let has = |k: &str, v: &str| settings.iter().any(|(a, b)| a == k && b == v);
    for (k, v) in [
        ("Type", "simple"),
        ("User", "outq"),
        ("Group", "outq"),
        ("ExecStart", "/usr/sbin/outq run --log syslog"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("UMask", "0077"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/spool/outq"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert!(has(k, v), "outq.service lacks {k}={v}");
    }
    // The runner identifies submitters by file owner: no user namespace.
    assert!(!settings.iter().any(|(k, v)| k == "PrivateUsers" && v != "no"), "PrivateUsers= would hide owners");
    assert!(
        text.contains("must NOT set\n# NoNewPrivileges=yes") && text.contains("set-group-ID bit"),
        "outq.service must warn that callers' units may not set NoNewPrivileges=yes"
    );
    let readme = read(&top().join("install/README.md"));
    assert!(readme.contains("must not set `NoNewPrivileges=yes`"), "install/README.md must carry the warning");

    let test = "the_service_unit_is_hardened_and_warns_callers (systemd-analyze)";
    if !tool(test, "systemd-analyze", &["--version"]) {
        return;
    }
    // verify checks that ExecStart= exists: point it at the built runner.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("outq.service");
    std::fs::write(&unit, text.replace("/usr/sbin/outq ", &format!("{} ", bin("outq").display()))).unwrap();
    let mut c = Command::new("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(&unit);
    let r = run(c);
    ok("systemd-analyze verify", &r);
    assert_eq!(r.stderr.trim(), "", "systemd-analyze verify complained");

    let mut c = Command::new("systemd-analyze");
    c.args(["security", "--offline=true", "--no-pager"]).arg(&unit);
    let r = run(c);
    ok("systemd-analyze security --offline=true", &r);
    let level: f64 = r
        .stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for outq.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {}", r.stdout));
    assert!(level <= 2.0, "exposure level {level} (1.2 when written): the hardening weakened\n{}", r.stdout);
}

#[test]
fn the_scripts_pass_shellcheck() {
    if !tool("the_scripts_pass_shellcheck", "shellcheck", &["--version"]) {
        return;
    }
    let mut c = Command::new("shellcheck");
    c.args(["-s", "sh"]);
    for s in [
        "install/install.sh",
        "install/debian/preinst",
        "install/debian/postinst",
        "install/debian/prerm",
        "install/debian/postrm",
        "install/rpm/build.sh",
    ] {
        c.arg(top().join(s));
    }
    ok("shellcheck", &run(c));
    // The build script is bash (its shebang tells shellcheck).
    let mut c = Command::new("shellcheck");
    c.arg(top().join("install/build-helper"));
    ok("shellcheck install/build-helper", &run(c));
}

// ---------------------------------------------------------------------------
// install.sh

/// One installed path with its intended owner, group and mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    path: String,
    owner: String,
    group: String,
    mode: u32,
}

fn expect(path: String, owner: &str, group: &str, mode: u32) -> Expect {
    Expect { path, owner: owner.into(), group: group.into(), mode }
}

/// Everything install.sh installs for these settings.
fn expected(prefix: &str, sysconf: &str, drop_group: &str, config_kept: bool) -> Vec<Expect> {
    let mut v = vec![
        expect(format!("{prefix}/sbin/outq-enqueue"), "root", drop_group, 0o2755),
        expect(format!("{prefix}/sbin/outq"), "root", "root", 0o755),
        expect(format!("{prefix}/sbin/outq-sendmail"), "root", "root", 0o755),
        expect(format!("{prefix}/lib/systemd/system/outq-smtp.socket"), "root", "root", 0o644),
        expect(format!("{prefix}/lib/systemd/system/outq-smtp@.service"), "root", "root", 0o644),
        expect(format!("{prefix}/lib/systemd/system/outq.service"), "root", "root", 0o644),
        expect(format!("{prefix}/lib/sysusers.d/outq.conf"), "root", "root", 0o644),
        expect(format!("{prefix}/lib/tmpfiles.d/outq.conf"), "root", "root", 0o644),
        expect(format!("{sysconf}/outq"), "root", "root", 0o755),
        expect(format!("{sysconf}/outq/outq.conf{}", if config_kept { ".example" } else { "" }), "root", "root", 0o644),
    ];
    for page in man_pages() {
        let section = page.rsplit('.').next().unwrap().to_owned();
        v.push(expect(format!("{prefix}/share/man/man{section}/{page}.gz"), "root", "root", 0o644));
    }
    v.sort();
    v
}

/// The manual pages in man/, by file name.
fn man_pages() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(top().join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.rsplit('.').next().is_some_and(|s| s.len() == 1 && s.as_bytes()[0].is_ascii_digit()))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "man pages: {v:?}");
    v
}

/// The manifest install.sh wrote, as sorted entries.
fn manifest(path: &Path) -> Vec<Expect> {
    let mut v: Vec<Expect> = read(path)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "manifest line {l:?}");
            Expect {
                mode: u32::from_str_radix(f[0], 8).unwrap(),
                owner: f[1].into(),
                group: f[2].into(),
                path: f[3].into(),
            }
        })
        .collect();
    v.sort();
    v
}

/// Every file and symbolic link under `root`, as paths below it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    out
}

fn uid_of(name: &str) -> u32 {
    User::from_name(name).unwrap().unwrap_or_else(|| panic!("no user {name}")).uid.as_raw()
}

fn gid_of(name: &str) -> u32 {
    Group::from_name(name).unwrap().unwrap_or_else(|| panic!("no group {name}")).gid.as_raw()
}

/// Assert owner, group and mode of each expected path under `root`.
#[track_caller]
fn assert_installed(root: &Path, want: &[Expect]) {
    for e in want {
        let p = root.join(e.path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{} is missing: {err}", p.display()));
        let show = |uid: u32, gid: u32, mode: u32| format!("uid {uid} gid {gid} mode {mode:04o}");
        assert_eq!(
            show(m.uid(), m.gid(), m.mode() & 0o7777),
            show(uid_of(&e.owner), gid_of(&e.group), e.mode),
            "{} ({}:{})",
            p.display(),
            e.owner,
            e.group
        );
        if e.path.ends_with(".gz") {
            let bytes = std::fs::read(&p).unwrap();
            // gzip -9n: no name and no time stamp, so builds are reproducible.
            assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0], "{}: gzip without a name", p.display());
            assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "{}: gzip without a time stamp", p.display());
        }
    }
}

/// install.sh with a clean environment and `vars`.
fn install_sh(script: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new("/bin/sh");
    c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    c.arg(script).args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// A copy of the parts of the tree install.sh reads (install/, man/) and
/// of the built programs, all world-readable, in `dir`: an ordinary user
/// can run it wherever the checkout is. Returns (script, bindir).
fn copy_tree(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    for sub in ["install", "install/systemd", "install/debian", "man", "bin"] {
        std::fs::create_dir_all(src.join(sub)).unwrap();
        std::fs::set_permissions(src.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["install", "install/systemd", "install/debian", "man"] {
        for e in std::fs::read_dir(top().join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let to = src.join(sub).join(e.file_name());
                std::fs::copy(e.path(), &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }
    // The helper where install/build-helper puts it, install.sh's default.
    std::fs::create_dir(src.join("bin/helper")).unwrap();
    std::fs::set_permissions(src.join("bin/helper"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (prog, at) in [("outq", "outq"), ("outq-enqueue", "helper/outq-enqueue"), ("outq-sendmail", "outq-sendmail")] {
        let to = src.join("bin").join(at);
        std::fs::copy(bin(prog), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (src.join("install/install.sh"), src.join("bin"))
}

#[test]
fn staging_as_an_ordinary_user_records_owners_in_the_manifest() {
    // As root, the script runs as nobody; otherwise as ourselves.
    let dir = tempfile::Builder::new().prefix("oqt-stage-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (script, bindir) = copy_tree(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let (uid, gid) =
        if root { (65534, 65534) } else { (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()) };
    if root {
        std::os::unix::fs::chown(&out, Some(uid), Some(gid)).unwrap();
    }
    let destdir = out.join("stage");
    let (d, b) = (destdir.display().to_string(), bindir.display().to_string());
    let vars = [("DESTDIR", d.as_str()), ("BINDIR", b.as_str())];
    let wrap = |c: Command| {
        if !root {
            return c;
        }
        let mut w = Command::new("/usr/bin/setpriv");
        w.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(c.get_program()).args(c.get_args());
        w.env_clear();
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                w.env(k, v);
            }
        }
        w
    };
    let r = run(wrap(install_sh(&script, &[], &vars)));
    ok("install.sh as an ordinary user", &r);
    assert!(r.stdout.contains("were NOT applied"), "the script must say it did not set owners: {}", r.stdout);

    let want = expected("/usr", "/etc", "outqdrop", false);
    assert_eq!(manifest(&out.join("stage.manifest")), want, "the manifest lists every path with its intended owner");
    let files = files_under(&destdir);
    let want_files: BTreeSet<String> = want.iter().filter(|e| e.path != "/etc/outq").map(|e| e.path.clone()).collect();
    assert_eq!(files, want_files, "exactly the expected files, no leftovers");
    for e in &want {
        let m = std::fs::symlink_metadata(destdir.join(e.path.trim_start_matches('/'))).unwrap();
        // Modes without the set-group-ID bit: it would name the wrong group.
        assert_eq!(m.mode() & 0o7777, e.mode & 0o777, "{}", e.path);
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", e.path);
    }

    let r = run(wrap(install_sh(&script, &["uninstall", "--purge"], &vars)));
    ok("install.sh uninstall --purge (staged)", &r);
    assert_eq!(files_under(&destdir), BTreeSet::new(), "purge leaves no file in DESTDIR");
    assert!(!out.join("stage.manifest").exists(), "purge removes the manifest");
}

#[test]
fn staging_as_root_sets_every_owner_group_and_mode() {
    if !privileged("staging_as_root_sets_every_owner_group_and_mode") {
        return;
    }
    let _lock = privileged_lock();
    let acc = TestAccounts::create();
    let (user, group) = (acc.owner.name.as_str(), acc.group.name.as_str());
    let dir = root_tempdir("oqt-stage-");
    let destdir = dir.path().join("stage");
    let d = destdir.display().to_string();
    let bindir = bin("outq").parent().unwrap().display().to_string();
    let helper = bin("outq-enqueue").display().to_string();
    let vars = [
        ("DESTDIR", d.as_str()),
        ("BINDIR", bindir.as_str()),
        ("HELPER", helper.as_str()),
        ("OUTQ_USER", user),
        ("OUTQ_GROUP", group),
    ];
    let script = top().join("install/install.sh");

    let r = run(install_sh(&script, &[], &vars));
    ok("install.sh into DESTDIR as root", &r);
    assert!(!r.stdout.contains("NOT applied"), "{}", r.stdout);
    let want = expected("/usr", "/etc", group, false);
    assert_installed(&destdir, &want);
    assert_eq!(manifest(&dir.path().join("stage.manifest")), want);

    // The shipped files, rewritten for these names.
    let unit = read(&destdir.join("usr/lib/systemd/system/outq.service"));
    assert!(unit.contains(&format!("\nUser={user}\nGroup={user}\n")), "{unit}");
    let sysusers = read(&destdir.join("usr/lib/sysusers.d/outq.conf"));
    assert!(sysusers.contains(&format!("\nu {user} - ")) && sysusers.contains(&format!("\ng {group} -")), "{sysusers}");
    let tmpfiles = read(&destdir.join("usr/lib/tmpfiles.d/outq.conf"));
    assert!(tmpfiles.contains(&format!("/var/spool/outq/new 3730 {user} {group} -")), "{tmpfiles}");
    let conf = read(&destdir.join("etc/outq/outq.conf"));
    assert!(conf.contains(&format!("\nqueue_user = {user}\nsetgid_group = {group}\n")), "{conf}");
    outq_spool::config::parse(conf.as_bytes()).expect("the installed configuration parses");

    // Again, over a changed configuration: kept, the example beside it.
    let conf_path = destdir.join("etc/outq/outq.conf");
    std::fs::write(&conf_path, "relay = maildir:/nowhere\n").unwrap();
    let r = run(install_sh(&script, &[], &vars));
    ok("install.sh again", &r);
    assert!(r.stdout.contains("kept the existing"), "{}", r.stdout);
    assert_eq!(read(&conf_path), "relay = maildir:/nowhere\n", "an existing configuration is never replaced");
    assert_installed(&destdir, &expected("/usr", "/etc", group, true));

    let r = run(install_sh(&script, &["uninstall"], &vars));
    ok("install.sh uninstall (staged)", &r);
    let left = files_under(&destdir);
    let kept: BTreeSet<String> = ["/etc/outq/outq.conf", "/etc/outq/outq.conf.example"].map(String::from).into();
    assert_eq!(left, kept, "uninstall keeps the configuration only");
    let r = run(install_sh(&script, &["uninstall", "--purge"], &vars));
    ok("install.sh uninstall --purge (staged)", &r);
    assert_eq!(files_under(&destdir), BTreeSet::new());
}

/// A name used by no user and no group.
fn unused_name(tag: &str) -> String {
    for n in 0..1000 {
        let name = format!("oq{tag}{}x{n}", std::process::id());
        if User::from_name(&name).unwrap().is_none() && Group::from_name(&name).unwrap().is_none() {
            return name;
        }
    }
    panic!("no unused account name");
}

/// Removes accounts that a test expected a script to create (and remove).
struct AccountsGuard(Vec<String>);

impl Drop for AccountsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            if User::from_name(name).ok().flatten().is_some() {
                let _ = Command::new("userdel").arg("-f").arg(name).status();
            }
            if Group::from_name(name).ok().flatten().is_some() {
                let _ = Command::new("groupdel").arg(name).status();
            }
        }
    }
}

#[test]
fn live_install_creates_accounts_and_spool_and_purge_removes_them() {
    if !privileged("live_install_creates_accounts_and_spool_and_purge_removes_them") {
        return;
    }
    let _lock = privileged_lock();
    let (user, group) = (unused_name("u"), unused_name("g"));
    let _accounts = AccountsGuard(vec![user.clone(), group.clone()]);
    // Under /run: root-owned and not world-writable all the way up, which
    // the configuration's trust rules and the spool's checks require.
    let dir = tempfile::Builder::new().prefix("oqt-live-").tempdir_in("/run").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().display().to_string();
    let (prefix, sysconf, spool) = (format!("{base}/usr"), format!("{base}/etc"), format!("{base}/spool"));
    // A configuration prepared beforehand (no free-space reserve: /run is
    // small): install.sh keeps it and puts its example beside it.
    for d in [sysconf.clone(), format!("{sysconf}/outq")] {
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf = format!("{sysconf}/outq/outq.conf");
    std::fs::write(
        &conf,
        format!("spool_directory = {spool}\nqueue_user = {user}\nsetgid_group = {group}\nspool_min_free = 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bindir = bin("outq").parent().unwrap().display().to_string();
    let helper = bin("outq-enqueue").display().to_string();
    let vars = [
        ("PREFIX", prefix.as_str()),
        ("SYSCONFDIR", sysconf.as_str()),
        ("SPOOLDIR", spool.as_str()),
        ("OUTQ_USER", user.as_str()),
        ("OUTQ_GROUP", group.as_str()),
        ("BINDIR", bindir.as_str()),
        ("HELPER", helper.as_str()),
    ];
    let script = top().join("install/install.sh");

    let r = run(install_sh(&script, &[], &vars));
    ok("live install.sh", &r);
    assert!(r.stdout.contains(&format!("created group {group}")), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("created user {user}")), "{}", r.stdout);
    assert!(User::from_name("outq-smtp").unwrap().is_some(), "the SMTP session account: {}", r.stdout);
    assert!(r.stdout.contains("outq init: spool"), "outq init did not run: {}", r.stdout);
    assert!(r.stdout.contains("is in order"), "outq check did not pass: {}", r.stdout);
    // The debug programs read /etc/outq/outq.conf; the script says so.
    assert!(r.stderr.contains("rebuild with OUTQ_CONFIG_PATH="), "{}", r.stderr);

    let u = User::from_name(&user).unwrap().unwrap();
    let own = Group::from_gid(u.gid).unwrap().unwrap();
    assert_eq!(own.name, user, "the queue owner has a group of its own");
    assert_eq!(u.dir, PathBuf::from(&spool));
    assert!(u.shell.ends_with("nologin"), "shell {}", u.shell.display());
    assert!(u.uid.as_raw() < 1000, "a system account");
    let g = Group::from_name(&group).unwrap().unwrap();
    assert!(g.mem.is_empty() && g.gid != u.gid, "the helper's group is dedicated");
    assert_installed(Path::new("/"), &expected(&prefix, &sysconf, &group, true));
    for part in PARTS.iter() {
        let p = Path::new(&spool).join(part.name);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let gid = if part.group == GroupRole::Drop { g.gid } else { u.gid };
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (u.uid.as_raw(), gid.as_raw(), part.mode), "{p:?}");
    }
    // The installed unit names the installed runner: systemd accepts it.
    if tool("live_install (systemd-analyze)", "systemd-analyze", &["--version"]) {
        let mut c = Command::new("systemd-analyze");
        c.args(["verify", "--man=no"]).arg(format!("{prefix}/lib/systemd/system/outq.service"));
        let r = run(c);
        ok("systemd-analyze verify of the installed unit", &r);
        assert_eq!(r.stderr.trim(), "", "systemd-analyze verify complained");
    }

    // Installing again is an upgrade: nothing is created twice.
    let r = run(install_sh(&script, &[], &vars));
    ok("live install.sh again", &r);
    assert!(!r.stdout.contains("created user") && r.stdout.contains("is in order"), "{}", r.stdout);

    // Uninstall keeps queued mail, the configuration and the accounts.
    let queued = Path::new(&spool).join("new/00000000000000000000000001");
    std::fs::write(&queued, "queued").unwrap();
    let r = run(install_sh(&script, &["uninstall"], &vars));
    ok("live uninstall", &r);
    assert!(!Path::new(&format!("{prefix}/sbin/outq-enqueue")).exists());
    assert!(!Path::new(&format!("{prefix}/lib/systemd/system/outq.service")).exists());
    assert_eq!(read(&queued), "queued", "uninstall keeps queued mail");
    assert!(Path::new(&conf).exists());
    assert!(User::from_name(&user).unwrap().is_some() && Group::from_name(&group).unwrap().is_some());

    let r = run(install_sh(&script, &["uninstall", "--purge"], &vars));
    ok("live uninstall --purge", &r);
    assert!(!Path::new(&spool).exists(), "purge removes the spool");
    assert!(!Path::new(&format!("{sysconf}/outq")).exists(), "purge removes the configuration");
    assert!(User::from_name(&user).unwrap().is_none(), "purge removes the user");
    assert!(Group::from_name(&user).unwrap().is_none(), "purge removes the user's group");
    assert!(Group::from_name(&group).unwrap().is_none(), "purge removes the helper's group");
    assert!(User::from_name("outq-smtp").unwrap().is_none(), "purge removes outq-smtp");
    assert!(Group::from_name("outq-smtp").unwrap().is_none(), "purge removes outq-smtp's group");
}

// ---------------------------------------------------------------------------
// The Debian package, as a mail transport agent.
//
// Installed for real with apt and dpkg, in a throw-away copy of this machine
// (`sysroot`): the copy starts with this machine's packages, Postfix
// included, and everything the test changes (Postfix removed, accounts,
// statoverrides) vanishes with it, so other tests and other developers on
// this machine keep their Postfix.

const HELPER: &str = "/usr/sbin/outq-enqueue";
const SPOOL: &str = "/var/spool/outq";
const MAILDIR: &str = "/var/lib/outq-test-maildir";

/// The package to test: `OUTQ_DEB`, else built here in its own target
/// directory as `install/README.md` says: `cargo build --release -p
/// outq`, `install/build-helper`, `cargo deb -p outq --no-build`.
fn package(test: &str) -> Option<PathBuf> {
    // Built once for all the tests that need it: each build rewrites the
    // same .deb, which another test may be reading at that moment.
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.as_ref() {
        return Some(p.clone());
    }
    let deb = build_package(test)?;
    *built = Some(deb.clone());
    Some(deb)
}

fn build_package(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTQ_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "OUTQ_DEB={} is not a file", p.display());
        return Some(p);
    }
    if !tool(test, "cargo", &["deb", "--version"]) {
        return None;
    }
    let target = bin("outq").parent().unwrap().parent().unwrap().join("deb-test");
    let out = target.join("debian");
    let build = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args).current_dir(top());
        // Its own target directory (the test's cargo may hold the lock of
        // this one) and none of the outer cargo's job server.
        c.env("CARGO_TARGET_DIR", &target).env_remove("CARGO_MAKEFLAGS").env_remove("MAKEFLAGS").env_remove("MFLAGS");
        c
    };
    ok(
        "cargo build --release -p outq",
        &run_timeout(build("cargo", &["build", "--release", "-p", "outq"]), b"", Duration::from_secs(1800)),
    );
    let helper = top().join("install/build-helper").display().to_string();
    ok("install/build-helper", &run_timeout(build(&helper, &[]), b"", Duration::from_secs(600)));
    let mut c = build("cargo", &["deb", "-p", "outq", "--no-build", "--output"]);
    c.arg(&out);
    let r = run_timeout(c, b"", Duration::from_secs(600));
    ok("cargo deb", &r);
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .expect("cargo deb made no .deb");
    Some(deb)
}

/// `apt-get -q -y ARGS` in the copy, quiet, timed; the time is printed.
fn apt(sys: &Sysroot, args: &[&str]) -> Ran {
    let mut all = vec!["-q", "-y", "-o", "Dpkg::Use-Pty=0", "-o", "APT::Color=0"];
    all.extend_from_slice(args);
    let started = std::time::Instant::now();
    let r = sys.run("apt-get", &all, b"");
    let _ = writeln!(std::io::stderr(), "apt-get {}: {:.1}s", args.join(" "), started.elapsed().as_secs_f64());
    r
}

/// `dpkg ARGS` in the copy.
fn dpkg_in(sys: &Sysroot, args: &[&str]) -> Ran {
    sys.run("dpkg", args, b"")
}

fn statoverride_in(sys: &Sysroot) -> String {
    sys.run("dpkg-statoverride", &["--list", HELPER], b"").stdout.trim().to_owned()
}

/// Owner, group and mode of each path in the copy, names looked up in the
/// copy's own account files.
#[track_caller]
fn assert_installed_in(sys: &Sysroot, want: &[Expect]) {
    for e in want {
        let p = sys.path(&e.path);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{} is missing: {err}", e.path));
        let (uid, gid) = (sys.uid(&e.owner).unwrap(), sys.gid(&e.group).unwrap());
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, e.mode), "{} ({}:{})", e.path, e.owner, e.group);
    }
}

/// Run `program args` in the copy as `who` (no privilege, no groups).
fn as_caller(sys: &Sysroot, who: &Account, program: &str, args: &[&str], input: &str) -> Ran {
    let (u, g) = (format!("--reuid={}", who.uid), format!("--regid={}", who.gid));
    let mut all = vec![u.as_str(), g.as_str(), "--clear-groups", "--", program];
    all.extend_from_slice(args);
    sys.run("/usr/bin/setpriv", &all, input.as_bytes())
}

fn listing_in(sys: &Sysroot, dir: &str) -> Vec<String> {
    crate::support::list(&sys.path(dir))
}

/// The copy starts as a fresh system for outq: no package, files or
/// accounts left by anything on this machine.
fn clean_copy(sys: &Sysroot) {
    if !sys.package_status("outq").is_empty() {
        let _ = dpkg_in(sys, &["--purge", "--force-depends", "outq"]);
    }
    let _ = sys.run("dpkg-statoverride", &["--remove", HELPER], b"");
    for p in [SPOOL, "/etc/outq", MAILDIR] {
        let _ = std::fs::remove_dir_all(sys.path(p));
    }
    let _ = sys.run("userdel", &["outq"], b"");
    for name in ["outq", "outqdrop"] {
        let _ = sys.run("groupdel", &[name], b"");
    }
    // man-db's index update is the slowest trigger of every install.
    sys.run("debconf-set-selections", &[], b"man-db man-db/auto-update boolean false\n");
}

/// A message in Postfix's own queue, put there by Postfix's sendmail
/// (postdrop) while Postfix is the MTA: what replacing it must not drop
/// silently.
fn queue_in_postfix(sys: &Sysroot) {
    if !sys.path("/etc/postfix/main.cf").exists() {
        // Installed "No configuration": Postfix's defaults.
        std::fs::write(sys.path("/etc/postfix/main.cf"), "").unwrap();
    }
    let r = sys.run("/usr/sbin/sendmail", &["-i", "someone@example.org"], b"Subject: queued in postfix\n\nbody\n");
    ok("Postfix's sendmail", &r);
    assert_eq!(listing_in(sys, "/var/spool/postfix/maildrop").len(), 1, "one message in Postfix's maildrop");
}

#[test]
fn the_debian_package_replaces_postfix_installs_delivers_removes_and_purges() {
    let test = "the_debian_package_replaces_postfix_installs_delivers_removes_and_purges";
    if !privileged(test) || !tool(test, "dpkg", &["--version"]) || !tool(test, "unshare", &["--version"]) {
        return;
    }
    let Some(deb) = package(test) else { return };
    let _lock = privileged_lock();
    let started = std::time::Instant::now();
    let host_postfix = Command::new("dpkg-query").args(["-W", "-f=${Status}", "postfix"]).output().unwrap().stdout;
    let acc = TestAccounts::create();
    let caller = &acc.caller;
    let sys = Sysroot::new();
    clean_copy(&sys);

    // A system whose MTA is Postfix, with bsd-mailx (which needs an MTA).
    if !sys.installed("postfix") {
        sys.run("debconf-set-selections", &[], b"postfix postfix/main_mailer_type select No configuration\n");
        ok("apt-get install postfix", &apt(&sys, &["install", "--no-install-recommends", "postfix"]));
    }
    ok("apt-get install bsd-mailx", &apt(&sys, &["install", "--no-install-recommends", "bsd-mailx"]));
    assert!(sys.installed("postfix") && sys.installed("bsd-mailx"));
    queue_in_postfix(&sys);

    // apt install ./outq.deb: Postfix goes (Conflicts + Replaces on
    // mail-transport-agent), bsd-mailx stays (outq Provides it).
    std::fs::copy(&deb, sys.path("/tmp/outq.deb")).unwrap();
    let r = apt(&sys, &["install", "--no-install-recommends", "/tmp/outq.deb"]);
    ok("apt-get install ./outq.deb", &r);
    assert!(sys.installed("outq"), "{}", r.stdout);
    assert_eq!(sys.package_status("postfix"), "deinstall ok config-files", "Postfix is removed (not purged)");
    assert!(sys.installed("bsd-mailx"), "bsd-mailx stays: outq provides mail-transport-agent");
    for exim in ["exim4-base", "exim4-daemon-light", "exim4-daemon-heavy"] {
        assert!(!sys.installed(exim), "{exim} was pulled in");
    }
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("Postfix's queue /var/spool/postfix still holds 1 message(s) (maildrop: 1)"),
        "the postinst reports the mail left in Postfix's queue: {all}"
    );
    assert_eq!(listing_in(&sys, "/var/spool/postfix/maildrop").len(), 1, "Postfix's queued mail is kept");
    assert!(all.contains("outq setup: /etc/outq/outq.conf written"), "the postinst runs outq setup: {all}");
    assert!(all.contains("outq check: /var/spool/outq is in order"), "the postinst runs outq check: {all}");

    // The installed helper is the static-pie build of install/build-helper.
    let elf = Elf::read(&sys.path(HELPER)).unwrap();
    assert!(elf.is_static_pie() && elf.relro, "the installed {HELPER} is {}: {elf:?}", elf.kind());
    let _ = writeln!(std::io::stderr(), "installed {HELPER}: {}", elf.kind());

    // What the package installs, with owners from the copy's accounts.
    assert_eq!(statoverride_in(&sys), "root outqdrop 2755 /usr/sbin/outq-enqueue");
    let mut want = vec![
        expect(HELPER.into(), "root", "outqdrop", 0o2755),
        expect("/usr/sbin/outq".into(), "root", "root", 0o755),
        expect("/usr/sbin/outq-sendmail".into(), "root", "root", 0o755),
        expect("/etc/outq".into(), "root", "root", 0o755),
        expect("/etc/outq/outq.conf".into(), "root", "root", 0o644),
        expect("/usr/lib/systemd/system/outq.service".into(), "root", "root", 0o644),
        expect("/usr/lib/systemd/system/outq-smtp.socket".into(), "root", "root", 0o644),
        expect("/usr/lib/systemd/system/outq-smtp@.service".into(), "root", "root", 0o644),
        expect("/usr/lib/sysusers.d/outq.conf".into(), "root", "root", 0o644),
        expect("/usr/lib/tmpfiles.d/outq.conf".into(), "root", "root", 0o644),
        expect("/usr/share/lintian/overrides/outq".into(), "root", "root", 0o644),
    ];
    for page in man_pages() {
        let section = page.rsplit('.').next().unwrap().to_owned();
        want.push(expect(format!("/usr/share/man/man{section}/{page}.gz"), "root", "root", 0o644));
    }
    assert_installed_in(&sys, &want);
    // The MTA's names: links to outq-sendmail (Debian Policy 11.6).
    for (link, target) in [
        ("/usr/sbin/sendmail", "outq-sendmail"),
        ("/usr/lib/sendmail", "../sbin/outq-sendmail"),
        ("/usr/bin/mailq", "../sbin/outq-sendmail"),
        ("/usr/bin/newaliases", "../sbin/outq-sendmail"),
        ("/usr/share/man/man8/sendmail.8.gz", "outq-sendmail.8.gz"),
    ] {
        assert_eq!(std::fs::read_link(sys.path(link)).unwrap(), PathBuf::from(target), "{link}");
    }
    let conffiles = sys.run("dpkg-query", &["-W", "-f=${Conffiles}", "outq"], b"").stdout;
    assert!(!conffiles.contains("/etc/outq/outq.conf"), "outq.conf is made by outq setup, not a conffile");
    assert_eq!(sys.passwd_field("outq", 5).as_deref(), Some(SPOOL), "outq's home");
    assert_eq!(sys.passwd_field("outq", 6).as_deref(), Some("/usr/sbin/nologin"), "outq's shell");
    let (outq_uid, outq_gid, drop_gid) =
        (sys.uid("outq").unwrap(), sys.gid("outq").unwrap(), sys.gid("outqdrop").unwrap());
    assert_eq!(sys.passwd_field("outq", 3), Some(outq_gid.to_string()), "outq's primary group is outq");
    assert_eq!(sys.group_members("outqdrop").as_deref(), Some(""), "outqdrop has no members");
    assert!(sys.uid("outq-smtp").is_some(), "the SMTP session account outq-smtp");
    for part in PARTS.iter() {
        let p = Path::new(SPOOL).join(part.name);
        let m = std::fs::symlink_metadata(sys.path(&p.display().to_string())).unwrap();
        let gid = if part.group == GroupRole::Drop { drop_gid } else { outq_gid };
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (outq_uid, gid, part.mode), "{p:?}");
    }

    // The guided setup, non-interactive, with the password on stdin.
    let before = read(&sys.path("/etc/outq/outq.conf"));
    let r = sys.run(
        "/usr/sbin/outq",
        &[
            "setup",
            "--non-interactive",
            "--relay",
            "smtp.example.org",
            "--tls",
            "starttls",
            "--auth-user",
            "www1@example.org",
            "--auth-password-file",
            "-",
            "--admin-address",
            "ops@example.org",
            "--mailname",
            "host.example.org",
        ],
        b"correct horse battery staple\n",
    );
    ok("outq setup --non-interactive", &r);
    assert!(r.stdout.contains("relay: smtp://smtp.example.org:587 (STARTTLS required)"), "{}", r.stdout);
    assert!(!r.stdout.contains("correct horse"), "the password is never printed");
    let conf = read(&sys.path("/etc/outq/outq.conf"));
    for line in [
        "relay = smtp://smtp.example.org:587\n",
        "starttls = required\n",
        "relay_auth_file = /etc/outq/relay-auth\n",
        "admin_address = ops@example.org\n",
        "myhostname = host.example.org\n",
    ] {
        assert!(conf.contains(line), "outq.conf lacks {line:?}:\n{conf}");
    }
    let kept: Vec<&str> = before.lines().filter(|l| l.starts_with('#')).collect();
    assert!(kept.iter().all(|l| conf.lines().any(|c| c == *l)), "setup keeps the file's comments");
    assert_installed_in(&sys, &[expect("/etc/outq/relay-auth".into(), "outq", "outq", 0o600)]);
    assert!(read(&sys.path("/etc/outq/relay-auth")).contains("\nwww1@example.org correct horse battery staple\n"));
    let r = sys.run("/usr/sbin/outq", &["check"], b"");
    ok("outq check after setup", &r);
    assert!(r.stdout.contains("is in order"), "{}", r.stdout);
    // Run again without flags (as every upgrade's postinst does): no change.
    ok("outq setup again", &sys.run("/usr/sbin/outq", &["setup", "--non-interactive"], b""));
    assert_eq!(read(&sys.path("/etc/outq/outq.conf")), conf, "setup without flags changes nothing");

    // Mail through every name programs use, delivered to a Maildir.
    std::fs::write(
        sys.path("/etc/outq/outq.conf"),
        format!("relay = maildir:{MAILDIR}\nspool_min_free = 0\nmyhostname = test.example\n"),
    )
    .unwrap();
    std::fs::create_dir(sys.path(MAILDIR)).unwrap();
    std::os::unix::fs::chown(sys.path(MAILDIR), Some(outq_uid), Some(outq_gid)).unwrap();
    std::fs::set_permissions(sys.path(MAILDIR), std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = as_caller(&sys, caller, HELPER, &["-f", "sender@example.org", "one@example.org"], "Subject: one\n\n1\n");
    let first = r.queue_id();
    let r = as_caller(&sys, caller, "/usr/sbin/sendmail", &["-i", "two@example.org"], "Subject: two\n\n2\n");
    ok("/usr/sbin/sendmail", &r);
    let r = as_caller(&sys, caller, "/usr/lib/sendmail", &["-t"], "To: three@example.org\nSubject: three\n\n3\n");
    ok("/usr/lib/sendmail", &r);
    let r = as_caller(&sys, caller, "/usr/bin/mail", &["-s", "four", "four@example.org"], "4\n");
    ok("mail(1) from bsd-mailx", &r);
    assert_eq!(listing_in(&sys, &format!("{SPOOL}/new")).len(), 4, "four entries queued");
    let r = sys.run("/usr/bin/mailq", &[], b"");
    ok("mailq", &r);
    assert!(r.stdout.contains(&first), "mailq lists the queue: {}", r.stdout);
    let r = as_caller(&sys, caller, "/usr/bin/newaliases", &[], "");
    ok("newaliases", &r);

    // Reinstalling (an upgrade) keeps the statoverride, queue and configuration.
    ok("dpkg -i again", &dpkg_in(&sys, &["-i", "/tmp/outq.deb"]));
    assert_installed_in(&sys, &[expect(HELPER.into(), "root", "outqdrop", 0o2755)]);
    assert_eq!(listing_in(&sys, &format!("{SPOOL}/new")).len(), 4, "an upgrade keeps queued mail");
    assert!(read(&sys.path("/etc/outq/outq.conf")).contains(MAILDIR), "an upgrade keeps the configuration");

    let r =
        sys.run("/usr/sbin/runuser", &["-u", "outq", "--", "/usr/sbin/outq", "run", "--once", "--log", "stderr"], b"");
    ok("outq run --once as outq", &r);
    let delivered = listing_in(&sys, &format!("{MAILDIR}/new"));
    assert_eq!(delivered.len(), 4, "four messages delivered: {delivered:?}");
    let texts: Vec<String> = delivered.iter().map(|n| read(&sys.path(&format!("{MAILDIR}/new/{n}")))).collect();
    for (rcpt, subject) in [("one", "one"), ("two", "two"), ("three", "three"), ("four", "four")]
        .map(|(r, s)| (format!("{r}@example.org"), s))
    {
        assert!(
            texts
                .iter()
                .any(|t| t.contains(&format!("Delivered-To: {rcpt}")) && t.contains(&format!("Subject: {subject}"))),
            "{rcpt} not delivered: {texts:?}"
        );
    }
    assert!(delivered.iter().any(|n| n.contains(&first)), "the Maildir file names the queue ID {first}");
    assert!(sys.run("/usr/bin/mailq", &[], b"").stdout.contains("empty"), "mailq: the queue is empty");

    // bsd-mailx removed and installed again: outq is the MTA, no exim4.
    ok("dpkg -r bsd-mailx", &dpkg_in(&sys, &["-r", "bsd-mailx"]));
    let r = apt(&sys, &["install", "--no-install-recommends", "bsd-mailx"]);
    ok("apt-get install bsd-mailx (outq as the MTA)", &r);
    assert!(sys.installed("bsd-mailx") && sys.installed("outq"));
    for exim in ["exim4-base", "exim4-daemon-light", "exim4-daemon-heavy"] {
        assert!(!sys.installed(exim), "{exim} was pulled in: {}", r.stdout);
    }
    // (dpkg would refuse to remove the MTA bsd-mailx depends on.)
    ok("dpkg -r bsd-mailx", &dpkg_in(&sys, &["-r", "bsd-mailx"]));

    // Remove: the queued mail, configuration, accounts and statoverride stay.
    let r = as_caller(&sys, caller, HELPER, &["-f", "sender@example.org", "five@example.org"], "Subject: five\n\n5\n");
    let fifth = r.queue_id();
    ok("dpkg -r", &dpkg_in(&sys, &["-r", "outq"]));
    for p in ["/usr/sbin/outq", HELPER, "/usr/sbin/outq-sendmail", "/usr/sbin/sendmail", "/usr/bin/mailq"] {
        assert!(std::fs::symlink_metadata(sys.path(p)).is_err(), "{p} is still there after dpkg -r");
    }
    assert_eq!(listing_in(&sys, &format!("{SPOOL}/new")), vec![fifth], "dpkg -r keeps queued mail");
    assert!(sys.path("/etc/outq/outq.conf").exists(), "dpkg -r keeps the configuration");
    assert!(sys.uid("outq").is_some() && sys.gid("outqdrop").is_some(), "dpkg -r keeps the accounts");
    assert_eq!(statoverride_in(&sys), "root outqdrop 2755 /usr/sbin/outq-enqueue", "dpkg -r keeps the statoverride");

    // Purge: no account, file or statoverride is left.
    ok("dpkg -P", &dpkg_in(&sys, &["-P", "outq"]));
    assert_eq!(sys.package_status("outq"), "", "dpkg forgets outq after a purge");
    for p in [SPOOL, "/etc/outq", "/etc/systemd/system/multi-user.target.wants/outq.service"] {
        assert!(std::fs::symlink_metadata(sys.path(p)).is_err(), "{p} is still there after dpkg -P");
    }
    assert!(sys.uid("outq").is_none(), "dpkg -P removes the user outq");
    assert!(sys.gid("outq").is_none() && sys.gid("outqdrop").is_none(), "dpkg -P removes the groups");
    assert!(sys.uid("outq-smtp").is_none() && sys.gid("outq-smtp").is_none(), "dpkg -P removes outq-smtp");
    assert_eq!(statoverride_in(&sys), "", "dpkg -P removes the statoverride");

    // This machine's own package state did not change.
    drop(sys);
    let now = Command::new("dpkg-query").args(["-W", "-f=${Status}", "postfix"]).output().unwrap().stdout;
    assert_eq!(now, host_postfix, "the host's Postfix is as it was");
    let _ = writeln!(std::io::stderr(), "{test}: {:.1}s", started.elapsed().as_secs_f64());
}

/// The ELF reader of the static-pie checks tells the debug `outq` (a
/// dynamically linked position-independent executable) from the helper of
/// `install/build-helper`, when that is built.
#[test]
fn the_elf_reader_tells_static_pie_from_dynamically_linked() {
    let outq = Elf::read(&bin("outq")).unwrap();
    assert_eq!(outq.e_type, Elf::ET_DYN, "{outq:?}");
    assert!(outq.interp && outq.needed > 0 && !outq.is_static_pie(), "outq is dynamically linked: {outq:?}");
    assert!(Elf::parse(b"#!/bin/sh\n").is_err());
    assert!(Elf::parse(&std::fs::read(bin("outq")).unwrap()[..40]).is_err(), "a truncated header is an error");
    match static_helper() {
        Some(p) => {
            let elf = Elf::read(&p).unwrap();
            assert!(elf.is_static_pie() && elf.relro, "{} is not static-pie with RELRO: {elf:?}", p.display());
        }
        None => {
            let _ = writeln!(std::io::stderr(), "(no static helper built: install/build-helper; only outq was read)");
        }
    }
}

/// The helper in the package is static-pie (ELF type `DYN`, no
/// `PT_INTERP`, no `DT_NEEDED`, with `PT_GNU_RELRO`), and `outq` and
/// `outq-sendmail` are not: read from the package's files, unpacked by
/// `dpkg-deb -x`. (The package test checks the installed helper too.)
#[test]
fn the_debian_package_ships_the_helper_static_pie() {
    let test = "the_debian_package_ships_the_helper_static_pie";
    if !tool(test, "dpkg-deb", &["--version"]) {
        return;
    }
    let Some(deb) = package(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(&deb).arg(dir.path());
    ok("dpkg-deb -x", &run(c));
    let elf = |p: &str| Elf::read(&dir.path().join(p.trim_start_matches('/'))).unwrap();
    let helper = elf(HELPER);
    assert_eq!(helper.e_type, Elf::ET_DYN, "{HELPER} is position-independent: {helper:?}");
    assert!(!helper.interp, "{HELPER} names no program interpreter: {helper:?}");
    assert_eq!(helper.needed, 0, "{HELPER} needs no shared library: {helper:?}");
    assert!(helper.relro, "{HELPER} has RELRO: {helper:?}");
    for p in ["/usr/sbin/outq", "/usr/sbin/outq-sendmail"] {
        let e = elf(p);
        assert!(e.interp && e.needed > 0, "{p} stays dynamically linked (it uses NSS): {e:?}");
    }
    let _ = writeln!(std::io::stderr(), "{}: {HELPER} is {}", deb.display(), helper.kind());
}

#[test]
fn the_debian_package_is_lintian_clean() {
    let test = "the_debian_package_is_lintian_clean";
    if !tool(test, "lintian", &["--version"]) {
        return;
    }
    let Some(deb) = package(test) else { return };
    let mut c = Command::new("lintian");
    c.args(["--fail-on", "error,warning", "--tag-display-limit", "0"]).arg(&deb);
    let r = run(c);
    let bad: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(bad.is_empty() && r.code == Some(0), "lintian: {bad:?}\n{}{}", r.stdout, r.stderr);
    // Each override carries its reason.
    let overrides = read(&top().join("install/debian/lintian-overrides"));
    let mut comment = false;
    for line in overrides.lines() {
        if line.starts_with('#') {
            comment = true;
        } else if !line.trim().is_empty() {
            assert!(comment, "lintian override {line:?} has no reason above it");
            comment = false;
        }
    }
}

// ---------------------------------------------------------------------------
// The RPM, built with rpmbuild from the spec and the built programs. It is
// not installed (this is not a Fedora system): its files, modes, owners,
// flags and scriptlets are read back with rpm -qp.

/// One line of `rpm -qp --dump`.
#[derive(Debug)]
struct Dumped {
    path: String,
    digest: String,
    mode: u32,
    owner: String,
    group: String,
    config: bool,
}

fn rpm_query(rpm: &Path, args: &[&str]) -> String {
    let mut c = Command::new("rpm");
    c.arg("-qp").args(args).arg(rpm);
    let r = run(c);
    ok(&format!("rpm -qp {}", args.join(" ")), &r);
    r.stdout
}

fn sha256(p: &Path) -> String {
    let mut c = Command::new("sha256sum");
    c.arg(p);
    run(c).stdout.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn the_rpm_builds_with_exact_modes_owners_flags_and_scriptlets() {
    let test = "the_rpm_builds_with_exact_modes_owners_flags_and_scriptlets";
    if !tool(test, "rpmbuild", &["--version"]) || !tool(test, "rpm", &["--version"]) {
        return;
    }
    // The spec's %build refuses a helper that is not static-pie: the one
    // of install/build-helper (OUTQ_TEST_HELPER in CI).
    let Some(helper) = static_helper() else {
        if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
            panic!("{test}: no static-pie helper: run install/build-helper or set OUTQ_TEST_HELPER");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED (no static-pie helper: run install/build-helper): {test}");
        return;
    };
    // The release programs when they are built (CI builds them for the
    // .deb), else the test build's: the spec packages what it is given.
    let debug = bin("outq").parent().unwrap().to_path_buf();
    let release = debug.parent().unwrap().join("release");
    let bindir = if ["outq", "outq-sendmail"].iter().all(|p| release.join(p).is_file()) { release } else { debug };
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut c = Command::new("/bin/sh");
    c.arg(top().join("install/rpm/build.sh")).arg(out.path()).env("BINDIR", &bindir).env("HELPER", &helper);
    ok("install/rpm/build.sh", &run(c));
    let _ = writeln!(std::io::stderr(), "rpmbuild: {:.1}s", started.elapsed().as_secs_f64());
    let arch_dir = std::fs::read_dir(out.path()).unwrap().next().unwrap().unwrap().path();
    let rpm = std::fs::read_dir(&arch_dir).unwrap().next().unwrap().unwrap().path();

    let dump: Vec<Dumped> = rpm_query(&rpm, &["--dump"])
        .lines()
        .filter(|l| !l.starts_with("/usr/lib/.build-id"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert!(f.len() >= 11, "dump line {l:?}");
            Dumped {
                path: f[0].into(),
                digest: f[3].into(),
                mode: u32::from_str_radix(f[4], 8).unwrap(),
                owner: f[5].into(),
                group: f[6].into(),
                config: f[7] == "1",
            }
        })
        .collect();
    let get = |p: &str| dump.iter().find(|d| d.path == p).unwrap_or_else(|| panic!("{p} is not in the rpm: {dump:?}"));
    let is = |p: &str, mode: u32, owner: &str, group: &str| {
        let d = get(p);
        assert_eq!((d.mode, d.owner.as_str(), d.group.as_str()), (mode, owner, group), "{p}");
    };
    is(HELPER, 0o102755, "root", "outqdrop");
    is("/usr/sbin/outq", 0o100755, "root", "root");
    is("/usr/sbin/outq-sendmail", 0o100755, "root", "root");
    is("/etc/outq", 0o40755, "root", "root");
    is("/etc/outq/outq.conf", 0o100644, "root", "root");
    assert!(get("/etc/outq/outq.conf").config, "outq.conf is %config");
    for (path, source) in [
        ("/etc/outq/outq.conf", "install/outq.conf.example"),
        ("/usr/lib/systemd/system/outq.service", "install/systemd/outq.service"),
        ("/usr/lib/sysusers.d/outq.conf", "install/systemd/outq.sysusers"),
        ("/usr/lib/tmpfiles.d/outq.conf", "install/systemd/outq.tmpfiles"),
    ] {
        is(path, 0o100644, "root", "root");
        assert_eq!(get(path).digest, sha256(&top().join(source)), "{path} is {source}");
    }
    for page in man_pages() {
        let section = page.rsplit('.').next().unwrap();
        is(&format!("/usr/share/man/man{section}/{page}.gz"), 0o100644, "root", "root");
    }
    // Nothing else is privileged: one set-group-ID file, no set-user-ID,
    // nothing writable by group or others, every other file root's.
    for d in &dump {
        assert_eq!(d.mode & 0o4000, 0, "{} is set-user-ID", d.path);
        assert!(d.mode & 0o2000 == 0 || d.path == HELPER, "{} is set-group-ID", d.path);
        assert_eq!(d.mode & 0o022, 0, "{} is writable by group or others", d.path);
        assert!(d.owner == "root" && (d.group == "root" || d.path == HELPER), "{} is {}:{}", d.path, d.owner, d.group);
    }
    // Flags: the configuration noreplace; the alternative's names ghosts.
    let flags = rpm_query(&rpm, &["--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"]);
    let flag = |p: &str| flags.lines().find_map(|l| l.strip_suffix(&format!(" {p}"))).unwrap_or("?").to_owned();
    assert_eq!(flag("/etc/outq/outq.conf"), "cn", "%config(noreplace)");
    for ghost in ["/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases"] {
        assert_eq!(flag(ghost), "g", "{ghost} is a %ghost managed by alternatives");
    }
    let provides = rpm_query(&rpm, &["--provides"]);
    assert!(provides.lines().any(|l| l == "MTA") && provides.lines().any(|l| l == "/usr/sbin/sendmail"), "{provides}");

    // Scriptlets: accounts before the files, the service, the alternative.
    let scripts = rpm_query(&rpm, &["--scripts"]);
    let part = |name: &str| -> String {
        let start = scripts.find(&format!("{name} scriptlet")).unwrap_or_else(|| panic!("no {name}: {scripts}"));
        let rest = &scripts[start..];
        let body = rest.split_once('\n').map(|(_, b)| b).unwrap_or("");
        body.split(" scriptlet (using").next().unwrap_or("").to_owned()
    };
    let pre = part("preinstall");
    assert!(pre.contains("outqdrop") && pre.contains("outq"), "%pre creates the accounts: {pre}");
    let post = part("postinstall");
    for want in [
        "alternatives --install /usr/sbin/sendmail mta /usr/sbin/outq-sendmail",
        "--slave /usr/lib/sendmail mta-sendmail /usr/sbin/outq-sendmail",
        "--slave /usr/bin/mailq mta-mailq /usr/sbin/outq-sendmail",
        "--slave /usr/bin/newaliases mta-newaliases /usr/sbin/outq-sendmail",
        "outq.service",
        "/usr/sbin/outq init",
    ] {
        assert!(post.contains(want), "%post lacks {want:?}: {post}");
    }
    let preun = part("preuninstall");
    assert!(
        preun.contains("$1 -eq 0") && preun.contains("alternatives --remove mta /usr/sbin/outq-sendmail"),
        "{preun}"
    );
    assert!(part("postuninstall").contains("outq.service"), "%postun restarts the service on upgrade");
    // Every scriptlet is valid shell.
    for tag in ["PREIN", "POSTIN", "PREUN", "POSTUN"] {
        let body = rpm_query(&rpm, &["--qf", &format!("%{{{tag}}}")]);
        let mut c = Command::new("/bin/sh");
        c.args(["-n", "-c", &body]);
        ok(&format!("sh -n of the {tag} scriptlet"), &run(c));
    }
}
