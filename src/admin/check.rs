/*!
`outq check`: audit an installation, in the spirit of `postfix check`.

Each problem is one line naming what is wrong and the command that fixes
it. Exit 0 when nothing is found, 1 otherwise. Checked:

- the configuration file and its directory (owner root, not writable by
  group or others, parses, no unknown keys, no malformed line);
- the mail name: a warning (exit status unchanged) when `myhostname` (or
  `/etc/mailname`, or the host name) or `myorigin` is not fully qualified;
- the aliases file (trusted, every line usable);
- the queue user and the helper's group (exist; the group is dedicated: not
  `mail`, not root's, nobody's primary group, no members);
- every path of the spool layout and the directories above it;
- the installed helper (root-owned, set-group-ID to the helper's group, not
  writable by group or others, not set-user-ID);
- free space against `spool_min_free`;
- `relay_auth_file`: owned by the queue owner, not readable by others.

It also notes, without counting them as problems, whether a runner holds
the queue lock and which program (and package) `/usr/sbin/sendmail` is.

`--send ADDRESS` queues a test message through the helper, as any caller
would; `--relay` sets up a session with every relay as delivery would
(TLS policy and certificate, AUTH) and sends no mail ([`super::relay`]).
*/
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, SFlag, fstatat};
use nix::unistd::Uid;
use outq_spool::config::{self, ConfigError};
use outq_spool::fs::{self, AncestorPolicy};
use outq_spool::layout::{GroupRole, Kind, PARTS};

use super::{Target, resolve};
use crate::cli::CheckArgs;
use crate::error::Error;

/// One problem and its remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub problem: String,
    pub fix: String,
}

fn finding(problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { problem: problem.into(), fix: fix.into() }
}

pub fn run(args: &CheckArgs) -> Result<ExitCode, Error> {
    let t = resolve(&args.spool)?;
    let helper = args.helper.clone().unwrap_or_else(|| config::ENQUEUE_PROGRAM.into());
    let mut found = Vec::new();
    check_config(&t, &mut found);
    check_accounts(&t, &mut found);
    check_spool(&t, &mut found);
    check_helper(&t, &helper, &mut found);
    check_free_space(&t, &mut found);
    check_auth_file(&t, &mut found);
    for note in [runner_note(&t), super::sendmail_owner::note()].into_iter().flatten() {
        println!("outq check: note: {note}");
    }
    if let Some(address) = &args.send {
        match super::relay::send_test(&t, address) {
            Ok(id) => println!("outq check: test message to {address} queued as {id}"),
            Err(f) => found.push(f),
        }
    }
    if args.relay {
        super::relay::check_relays(&t, &mut found);
    }
    // Printed, but they do not make the check fail.
    for w in mail_name_warnings(&t).into_iter().chain(submit_users_warnings(&t)) {
        println!("outq check: warning: {} (fix: {})", w.problem, w.fix);
    }
    for f in &found {
        println!("outq check: {} (fix: {})", f.problem, f.fix);
    }
    if found.is_empty() {
        println!(
            "outq check: {} is in order (owner {}, helper group {}, helper {})",
            t.spool.display(),
            t.user.name,
            t.group.name,
            helper.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("outq check: {} problem(s) found", found.len());
        Ok(ExitCode::from(1))
    }
}

fn check_config(t: &Target, out: &mut Vec<Finding>) {
    let shown = t.config_path.display();
    match &t.config_error {
        Some(ConfigError::Untrusted(e)) => out.push(finding(
            format!("configuration {shown} is not trusted: {e}"),
            format!("chown root:root {shown} && chmod 0644 {shown} (and its directory: owned by root, mode 0755)"),
        )),
        Some(ConfigError::Syntax { error, .. }) => {
            out.push(finding(format!("configuration {shown}: {error}"), "correct that line (see outq.conf(5))"))
        }
        None => {}
    }
    for p in &t.cfg.problems {
        out.push(finding(
            format!("configuration {shown}: {p} (outq-sendmail and the helper ignore it; the runner refuses to start)"),
            "correct that line (see outq.conf(5))",
        ));
    }
    for (key, setting) in &t.cfg.other {
        if !crate::config::is_known_key(key) {
            out.push(finding(
                format!("configuration {shown} line {}: unknown key {key}", setting.line),
                "correct or remove it (see outq.conf(5))",
            ));
        }
    }
    if t.config_error.is_some() {
        return;
    }
    // The broken lines are reported above; the values are checked too.
    let values = outq_spool::config::Config { problems: Vec::new(), ..t.cfg.clone() };
    let runner_problem = crate::config::RunnerConfig::from_config(&values).err();
    for e in [runner_problem, crate::config::Aliasing::from_config(&t.cfg).err()].into_iter().flatten() {
        out.push(finding(format!("configuration {shown}: {e}"), "correct that line (see outq.conf(5))"));
    }
    if let Ok(a) = crate::config::Aliasing::from_config(&t.cfg) {
        check_aliases(&a, out);
    }
}

/// Relays refuse senders such as `root@vm` (553): the name that qualifies
/// bare addresses must be a fully qualified domain name.
fn mail_name_warnings(t: &Target) -> Vec<Finding> {
    let mut out = Vec::new();
    if t.config_error.is_some() {
        return out;
    }
    let Ok(r) = crate::config::Rewriting::from_config(&t.cfg) else { return out };
    let source = if t.cfg.myhostname.is_some() {
        "myhostname"
    } else if config::read_mailname(Path::new(config::MAILNAME_PATH)).is_some() {
        config::MAILNAME_PATH
    } else {
        "the system host name"
    };
    if !r.myhostname.contains('.') {
        out.push(finding(
            format!("myhostname {} (from {source}) is not a fully qualified domain name; relays refuse senders such as root@{}", r.myhostname, r.myhostname),
            format!("set myhostname (or myorigin) in the configuration, or write the host's FQDN to {}", config::MAILNAME_PATH),
        ));
    }
    if !r.myorigin.contains('.') && r.myorigin != r.myhostname {
        out.push(finding(
            format!("myorigin {} is not a fully qualified domain name", r.myorigin),
            "set myorigin to a domain such as example.org",
        ));
    }
    out
}

/// The helper reads `submit_users` names from /etc/passwd and /etc/group
/// only, never through NSS: a listed name those files lack is refused at
/// every submission, even when the name service knows it.
fn submit_users_warnings(t: &Target) -> Vec<Finding> {
    use outq_spool::accounts;
    let outq_spool::config::SubmitUsers::Only { users, groups } = &t.cfg.submit_users else { return Vec::new() };
    let passwd = accounts::read(accounts::PASSWD).unwrap_or_default();
    let group = accounts::read(accounts::GROUP).unwrap_or_default();
    let mut out = Vec::new();
    unknown_to_files(
        &mut out,
        users,
        "user",
        "",
        accounts::PASSWD,
        |n| accounts::passwd_by_name(&passwd, n).is_some(),
        |n| nix::unistd::User::from_name(n).ok().flatten().map(|u| u.uid.as_raw()),
    );
    unknown_to_files(
        &mut out,
        groups,
        "group",
        "@",
        accounts::GROUP,
        |n| accounts::group_by_name(&group, n).is_some(),
        |n| nix::unistd::Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()),
    );
    out
}

/// One warning per listed name (numbers are IDs, not names) that `file`
/// lacks: with the number NSS gives it, if any.
fn unknown_to_files(
    out: &mut Vec<Finding>,
    names: &[String],
    kind: &str,
    prefix: &str,
    file: &str,
    in_file: impl Fn(&str) -> bool,
    by_nss: impl Fn(&str) -> Option<u32>,
) {
    for name in names.iter().filter(|w| !w.bytes().all(|b| b.is_ascii_digit()) && !in_file(w)) {
        out.push(match by_nss(name) {
            Some(id) => finding(
                format!("submit_users: {kind} {name} is known to the name service but not to {file}, which outq-enqueue reads instead"),
                format!("list it by its {kind} ID: {prefix}{id}"),
            ),
            None if kind == "group" => finding(
                format!("submit_users: there is no {kind} {name} (it is skipped)"),
                "correct submit_users in the configuration",
            ),
            None => finding(format!("submit_users: there is no {kind} {name}"), "correct submit_users in the configuration"),
        });
    }
}

fn check_aliases(a: &crate::config::Aliasing, out: &mut Vec<Finding>) {
    let shown = a.alias_file.display();
    match crate::aliases::Aliases::load(&a.alias_file) {
        Ok(aliases) => {
            for p in &aliases.problems {
                out.push(finding(
                    format!("aliases file {shown}: {p}"),
                    "correct that line (see outq.conf(5), ALIASES)",
                ));
            }
        }
        Err(e) => out.push(finding(
            format!("{e}; the runner defers mail until it can read it"),
            format!("chown root:root {shown} && chmod 0644 {shown}"),
        )),
    }
}

/// Primary gids of every account in /etc/passwd (accounts known only to
/// another NSS source are not seen; see outq(8)).
fn primary_group_users(gid: u32) -> Vec<String> {
    let Ok(text) = std::fs::read(outq_spool::accounts::PASSWD) else { return Vec::new() };
    outq_spool::accounts::passwd_entries(&text).filter(|p| p.gid == gid).map(|p| p.name).collect()
}

fn check_accounts(t: &Target, out: &mut Vec<Finding>) {
    let (user, group) = (&t.user, &t.group);
    if user.uid.is_root() {
        out.push(finding("the queue owner is root", "create a dedicated user: useradd --system outq"));
    }
    if group.name == "mail" || group.gid.as_raw() == 0 {
        out.push(finding(
            format!("the helper's group {} is a shared system group", group.name),
            "create a dedicated group: groupadd --system outqdrop",
        ));
    }
    let primaries = primary_group_users(group.gid.as_raw());
    if !primaries.is_empty() {
        out.push(finding(
            format!(
                "group {} is the primary group of {}; its members could create queue files directly",
                group.name,
                primaries.join(", ")
            ),
            "use a dedicated group that no account has as its primary group",
        ));
    }
    if !group.mem.is_empty() {
        out.push(finding(
            format!("group {} has members ({}); only the helper may hold it", group.name, group.mem.join(", ")),
            format!("gpasswd -d USER {} for each member", group.name),
        ));
    }
}

fn stat_nofollow(dir: &impl AsFd, name: &str) -> Result<FileStat, Errno> {
    fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn check_spool(t: &Target, out: &mut Vec<Finding>) {
    let root_shown = t.spool.display().to_string();
    let init = format!("outq init --spool {root_shown} --user {} --group {}", t.user.name, t.group.name);
    let policy = AncestorPolicy { owners: vec![Uid::from_raw(0)], allow_sticky: true };
    let parent = t.spool.parent().unwrap_or(Path::new("/"));
    let parent_fd = match fs::open_dir_path(parent, &policy).and_then(|(fd, st)| {
        // open_dir_path checks the directories above `parent`; the helper
        // also requires `parent` itself to be safe.
        policy.check(&parent.display().to_string(), &st)?;
        Ok(fd)
    }) {
        Ok(fd) => fd,
        Err(e) => {
            out.push(finding(
                format!("a directory above the spool is unsafe or missing: {e}"),
                "directories above the spool must be owned by root and not writable by others",
            ));
            return;
        }
    };
    let Some(root_name) = t.spool.file_name().and_then(|n| n.to_str()) else {
        out.push(finding(
            format!("{root_shown} is not a usable spool path"),
            "set spool_directory to an absolute path",
        ));
        return;
    };
    match stat_nofollow(&parent_fd, root_name) {
        Err(Errno::ENOENT) => {
            out.push(finding(format!("spool {root_shown} does not exist"), init));
            return;
        }
        Err(e) => {
            out.push(finding(format!("cannot examine {root_shown}: {}", e.desc()), "run outq check as root"));
            return;
        }
        Ok(_) => {}
    }
    let root_fd = match fs::open_child_dir(&parent_fd, root_name, &root_shown) {
        Ok(fd) => fd,
        Err(e) => {
            out.push(finding(format!("spool root: {e}"), format!("move it aside, then {init}")));
            return;
        }
    };
    for part in PARTS.iter() {
        let shown = if part.name.is_empty() { root_shown.clone() } else { format!("{root_shown}/{}", part.name) };
        let st = if part.name.is_empty() {
            nix::sys::stat::fstat(root_fd.as_fd())
        } else {
            stat_nofollow(&root_fd, part.name)
        };
        let st = match st {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                out.push(finding(format!("{shown} is missing"), init.clone()));
                continue;
            }
            Err(e) => {
                out.push(finding(format!("cannot examine {shown}: {}", e.desc()), "run outq check as root"));
                continue;
            }
        };
        let want_type = if part.kind == Kind::Dir { SFlag::S_IFDIR } else { SFlag::S_IFREG };
        if file_type(&st) == SFlag::S_IFLNK {
            out.push(finding(format!("{shown} is a symbolic link"), format!("remove it, then {init}")));
            continue;
        }
        if file_type(&st) != want_type {
            out.push(finding(
                format!("{shown} is not a {}", if part.kind == Kind::Dir { "directory" } else { "regular file" }),
                format!("move it aside, then {init}"),
            ));
            continue;
        }
        let (gid, gname) = match part.group {
            GroupRole::Owner => (t.user.gid, format!("{}'s group (gid {})", t.user.name, t.user.gid)),
            GroupRole::Drop => (t.group.gid, t.group.name.clone()),
        };
        if st.st_uid != t.user.uid.as_raw() {
            out.push(finding(
                format!("{shown} is owned by uid {}, expected {}", st.st_uid, t.user.name),
                format!("chown {} {shown}", t.user.name),
            ));
        }
        if st.st_gid != gid.as_raw() {
            out.push(finding(
                format!("{shown} has group gid {}, expected {gname}", st.st_gid),
                format!("chgrp {} {shown}", gid),
            ));
        }
        let mode = st.st_mode & 0o7777;
        if mode != part.mode {
            out.push(finding(
                format!("{shown} has mode {mode:04o}, expected {:04o}", part.mode),
                format!("chmod {:04o} {shown}", part.mode),
            ));
        }
    }
}

fn check_helper(t: &Target, helper: &Path, out: &mut Vec<Finding>) {
    let shown = helper.display();
    let st = match nix::sys::stat::lstat(helper) {
        Ok(st) => st,
        Err(e) => {
            out.push(finding(
                format!("helper {shown}: {}", e.desc()),
                "install outq-enqueue (see README), or give its path with --helper",
            ));
            return;
        }
    };
    let fix = format!("chown root:{} {shown} && chmod 2755 {shown}", t.group.name);
    if file_type(&st) != SFlag::S_IFREG {
        out.push(finding(
            format!("helper {shown} is not a regular file"),
            "install the binary itself there, not a link",
        ));
        return;
    }
    let mode = st.st_mode & 0o7777;
    if st.st_uid != 0 {
        out.push(finding(format!("helper {shown} is owned by uid {}, not root", st.st_uid), fix.clone()));
    }
    if st.st_gid != t.group.gid.as_raw() {
        out.push(finding(
            format!("helper {shown} has group gid {}, expected {}", st.st_gid, t.group.name),
            fix.clone(),
        ));
    }
    if mode & 0o2000 == 0 {
        out.push(finding(format!("helper {shown} is not set-group-ID (mode {mode:04o})"), fix.clone()));
    }
    if mode & 0o4000 != 0 {
        out.push(finding(format!("helper {shown} is set-user-ID (mode {mode:04o}); it must never be"), fix.clone()));
    }
    if mode & 0o022 != 0 {
        out.push(finding(format!("helper {shown} is writable by group or others (mode {mode:04o})"), fix));
    }
}

fn check_free_space(t: &Target, out: &mut Vec<Finding>) {
    let Ok(vfs) = nix::sys::statvfs::statvfs(&t.spool) else { return };
    let avail = outq_spool::fs::available_bytes(&vfs);
    if avail < t.cfg.spool_min_free {
        out.push(finding(
            format!(
                "spool filesystem has {avail} bytes free, below spool_min_free ({}); the helper refuses mail",
                t.cfg.spool_min_free
            ),
            "free disk space on the spool's filesystem",
        ));
    }
}

fn check_auth_file(t: &Target, out: &mut Vec<Finding>) {
    let Ok(rc) = crate::config::RunnerConfig::from_config(&t.cfg) else { return };
    let Some(path) = rc.relay_auth_file else { return };
    let shown = path.display();
    let st = match nix::sys::stat::lstat(&path) {
        Ok(st) => st,
        Err(e) => {
            out.push(finding(
                format!("relay_auth_file {shown}: {}", e.desc()),
                format!("create it with one line 'USERNAME PASSWORD', owned by {}, mode 0600", t.user.name),
            ));
            return;
        }
    };
    let fix = format!("chown {} {shown} && chmod 0600 {shown}", t.user.name);
    if file_type(&st) != SFlag::S_IFREG {
        out.push(finding(format!("relay_auth_file {shown} is not a regular file"), "make it a plain file"));
        return;
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        out.push(finding(
            format!("relay_auth_file {shown} has mode {mode:04o}: group or others can read the relay password"),
            fix.clone(),
        ));
    }
    if st.st_uid != t.user.uid.as_raw() {
        out.push(finding(
            format!(
                "relay_auth_file {shown} is owned by uid {}, not by {}; the runner refuses it",
                st.st_uid, t.user.name
            ),
            fix,
        ));
    }
}

/// Whether a runner holds the queue lock (a note: a spool may be drained
/// by `outq run --once` from a timer instead).
fn runner_note(t: &Target) -> Option<String> {
    use nix::fcntl::{Flock, FlockArg, OFlag, open};
    let path = t.spool.join(outq_spool::layout::LOCK);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = open(&path, flags, nix::sys::stat::Mode::empty()).ok()?;
    match Flock::lock(std::fs::File::from(fd), FlockArg::LockSharedNonblock) {
        Ok(_) => Some(format!(
            "no runner holds {}: queued mail is not delivered (start it: systemctl enable --now outq, \
             or runuser -u {} -- outq run)",
            path.display(),
            t.user.name
        )),
        Err(_) => Some("a runner holds the queue lock".to_owned()),
    }
}
