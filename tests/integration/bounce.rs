/*!
Delivery status notifications through the real runner.

Each test builds a private installation: a spool made by `outq init`, the
helper in development mode, and `outq run --once` with a `pipe:` relay
whose script fails (exit 1, or 75 for "try later") every message that has
a sender and delivers (saves) every message from the null sender, that is
every notice (the null-sender test makes it fail those too). Run as root, everything runs as `nobody` through `setpriv`
(the runner refuses root), from copies of the binaries in a root-owned
0755 directory; otherwise as the current user. The notices are checked
with a standard MIME parser, Python's `email` package.
*/

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use outq_spool::entry::{self, Limits};

use crate::support::{Ran, bin, list, run_timeout};

const LIMITS: Limits = Limits { max_recipients: 1000, max_size: 10_240_000 };
const TIMEOUT: Duration = Duration::from_secs(60);
const HOST: &str = "mx.example.org";

/// The original message: its headers must come back in the notice, its
/// body must not.
const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: quarterly report\r\n\
Message-ID: <orig-1@example.org>\r\n\r\nHello Bob,\r\nthe body stays here.\r\n";

/// Reads a message file and prints what the tests check, one
/// `key<TAB>value` per line, values with `\` and newlines escaped.
const PARSER: &str = r#"
import sys, email, email.utils
from email import policy
def out(k, v):
    v = str(v).replace("\\", "\\\\").replace("\n", "\\n")
    print(f"{k}\t{v}")
def unfold(v):
    return v.replace("\r", "").replace("\n", "")
with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=policy.compat32)
out("defects", len(msg.defects))
out("content-type", msg.get_content_type())
out("report-type", msg.get_param("report-type"))
for h in ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted"]:
    out("h." + h, unfold(msg.get(h, "")))
out("date-parses", email.utils.parsedate_to_datetime(msg["Date"]) is not None)
parts = msg.get_payload() if msg.is_multipart() else []
out("parts", len(parts))
for i, p in enumerate(parts):
    out(f"part{i}", p.get_content_type())
if len(parts) == 3:
    out("text", parts[0].get_payload(decode=True).decode("ascii"))
    blocks = parts[1].get_payload()
    out("blocks", len(blocks))
    for j, b in enumerate(blocks):
        for k, v in b.items():
            out(f"dsn{j}.{k}", unfold(v))
    arrival = blocks[0].get("Arrival-Date")
    if arrival:
        out("arrival-epoch", int(email.utils.parsedate_to_datetime(arrival).timestamp()))
    out("headers", parts[2].get_payload(decode=True).decode("utf-8", "replace"))
"#;

/// What the parser printed.
struct Parsed(Vec<(String, String)>);

impl Parsed {
    #[track_caller]
    fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} missing from the parsed notice: {:?}", self.0))
    }
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        match (c, c == '\\') {
            (_, true) => match it.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// One private installation.
struct Setup {
    _base: tempfile::TempDir,
    bin: PathBuf,
    work: PathBuf,
    spool: PathBuf,
    config: PathBuf,
    /// Where the relay script saves what it delivers.
    out: PathBuf,
    /// Whether commands run as `nobody` (the test runs as root).
    as_nobody: bool,
}

impl Setup {
    /// `fail_code`: the script's exit status, with `reply` on its standard
    /// error, for a message with a sender (and for every message unless
    /// `deliver_null`); `extra`: more configuration lines.
    fn new(fail_code: u8, reply: &str, extra: &str, deliver_null: bool) -> Setup {
        let as_nobody = nix::unistd::geteuid().is_root();
        let base = tempfile::Builder::new().prefix("oqt-bounce-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin_dir = base.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        for name in ["outq", "outq-enqueue"] {
            std::fs::copy(bin(name), bin_dir.join(name)).unwrap();
            std::fs::set_permissions(bin_dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let work = base.path().join("work");
        let out = work.join("out");
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&out).unwrap();
        let script = work.join("relay.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 if [ -z \"$OUTQ_SENDER\" ] && {deliver_null}; then\n\
                 \tcat > \"$1/$OUTQ_QUEUE_ID.msg\" || exit 75\n\
                 \tprintf 'sender=%s\\nrecipients=%s\\n' \"$OUTQ_SENDER\" \"$OUTQ_RECIPIENTS\" > \"$1/$OUTQ_QUEUE_ID.env\"\n\
                 \texit 0\n\
                 fi\n\
                 echo '{reply}' >&2\n\
                 exit {fail_code}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = work.join("outq.conf");
        std::fs::write(
            &config,
            format!(
                "myhostname = {HOST}\nspool_min_free = 0\nrelay = pipe:{} {}\n{extra}",
                script.display(),
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
        if as_nobody {
            let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
            for p in [&work, &out, &config, &script] {
                std::os::unix::fs::chown(p, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
            }
        }
        let s = Setup { bin: bin_dir, spool: work.join("spool"), work, config, out, as_nobody, _base: base };
        let mut init = s.command("outq");
        init.arg("init").arg("--spool").arg(&s.spool).arg("--config").arg(&s.config);
        s.run(init, b"").assert_code(0);
        s
    }

    /// A command for one of our programs, as the runner's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_nobody {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
        c
    }

    fn run(&self, cmd: Command, input: &[u8]) -> Ran {
        run_timeout(cmd, input, TIMEOUT)
    }

    /// Submit `MESSAGE`; returns its queue ID.
    fn submit(&self, sender: &str, recipients: &[&str]) -> String {
        let mut c = self.command("outq-enqueue");
        c.arg("--spool").arg(&self.spool).arg("--config").arg(&self.config).arg("-f").arg(sender).args(recipients);
        self.run(c, MESSAGE).queue_id()
    }

    /// `outq run --once`; returns its log.
    fn run_once(&self) -> String {
        let mut c = self.command("outq");
        c.args(["run", "--once", "--log", "stderr", "--spool"]).arg(&self.spool).arg("--config").arg(&self.config);
        let r = self.run(c, b"");
        r.assert_code(0);
        r.stderr
    }

    fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }

    /// The notice queued by `log` for `id`, from its log line.
    #[track_caller]
    fn notice_id(&self, log: &str, id: &str) -> String {
        let prefix = format!("outq: {id}: sender notification: ");
        let lines: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect();
        assert_eq!(lines.len(), 1, "expected one notification for {id} in:\n{log}");
        let nid = lines[0].split(' ').next().unwrap().to_owned();
        assert_eq!(nid.len(), 26, "bad notice ID in {log}");
        nid
    }

    /// Parse what the relay saved for `id` with Python's email package.
    fn parse_delivered(&self, id: &str) -> Parsed {
        let script = self.work.join("parse.py");
        std::fs::write(&script, PARSER).unwrap();
        let out = Command::new("python3")
            .arg(&script)
            .arg(self.out.join(format!("{id}.msg")))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3 must be installed to check the notices");
        assert!(out.status.success(), "parser failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        Parsed(
            text.lines()
                .map(|l| {
                    let (k, v) = l.split_once('\t').unwrap_or((l, ""));
                    (k.to_owned(), unescape(v))
                })
                .collect(),
        )
    }

    fn envelope(&self, id: &str) -> String {
        std::fs::read_to_string(self.out.join(format!("{id}.env"))).unwrap()
    }

    fn runner_uid(&self) -> u32 {
        if self.as_nobody {
            nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw()
        } else {
            nix::unistd::geteuid().as_raw()
        }
    }
}

/// The checks every notice passes: structure, top headers, per-message
/// fields, the original headers without the body.
#[track_caller]
fn check_common(p: &Parsed, subject: &str, arrival: u64) {
    assert_eq!(p.get("defects"), "0");
    assert_eq!(p.get("content-type"), "multipart/report");
    assert_eq!(p.get("report-type"), "delivery-status");
    assert_eq!(p.get("parts"), "3");
    assert_eq!(p.get("part0"), "text/plain");
    assert_eq!(p.get("part1"), "message/delivery-status");
    assert_eq!(p.get("part2"), "text/rfc822-headers");
    assert_eq!(p.get("h.From"), format!("Mail Delivery System <MAILER-DAEMON@{HOST}>"));
    assert_eq!(p.get("h.To"), "alice@example.org");
    assert_eq!(p.get("h.Subject"), subject);
    assert_eq!(p.get("h.MIME-Version"), "1.0");
    assert_eq!(p.get("h.Auto-Submitted"), "auto-replied");
    assert!(p.get("h.Message-ID").ends_with(&format!("@{HOST}>")));
    assert_eq!(p.get("date-parses"), "True");
    assert_eq!(p.get("dsn0.Reporting-MTA"), format!("dns; {HOST}"));
    assert_eq!(p.get("arrival-epoch"), arrival.to_string());
    let headers = p.get("headers");
    for h in ["From: Alice <alice@example.org>", "Subject: quarterly report", "Message-ID: <orig-1@example.org>"] {
        assert!(headers.contains(h), "{h:?} missing from the attached headers: {headers:?}");
    }
    assert!(!headers.contains("Hello Bob"), "the body leaked into the notice: {headers:?}");
}

/// The entry of a notice as the runner queued it: the helper's format,
/// null sender, to the original sender, mode 0404, the helper's group.
#[track_caller]
fn check_notice_entry(s: &Setup, nid: &str) {
    let path = s.spool.join("new").join(nid);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o404);
    assert_eq!(meta.gid(), std::fs::metadata(s.spool.join("new")).unwrap().gid());
    assert_eq!(meta.uid(), s.runner_uid());
    let data = std::fs::read(&path).unwrap();
    let (h, _) = entry::parse_bytes(&data, &LIMITS).unwrap();
    assert_eq!(h.id.as_str(), nid);
    assert_eq!(h.sender.as_str(), "");
    let rcpts: Vec<&str> = h.recipients.iter().map(|r| r.as_str()).collect();
    assert_eq!(rcpts, ["alice@example.org"]);
    assert_eq!(h.uid, s.runner_uid());
}

fn arrival_of(s: &Setup, q: &str, id: &str) -> u64 {
    let data = std::fs::read(s.spool.join(q).join(id)).unwrap();
    entry::parse_bytes(&data, &LIMITS).unwrap().0.arrival
}

#[test]
fn permanent_failure_sends_one_notice_to_the_sender() {
    let s = Setup::new(1, "550 5.1.1 <bob@example.net>: Recipient address rejected", "", true);
    let id = s.submit("alice@example.org", &["bob@example.net", "carol@example.net"]);

    let log = s.run_once();
    assert!(log.contains(&format!("{id}: moved to failed/ (2 recipient(s) failed)")), "{log}");
    let nid = s.notice_id(&log, &id);
    assert_eq!(s.names("failed"), vec![id.clone()]);
    assert_eq!(s.names("new"), vec![nid.clone()]);
    assert!(s.names("tmp").is_empty());
    check_notice_entry(&s, &nid);

    // The second pass delivers the notice through the same relay.
    let log = s.run_once();
    assert!(log.contains(&format!("{nid}: removed (delivered)")), "{log}");
    assert!(!log.contains("sender notification"), "a notice about a notice:\n{log}");
    assert!(s.names("new").is_empty() && s.names("deferred").is_empty() && s.names("active").is_empty());
    assert_eq!(s.envelope(&nid), "sender=\nrecipients=alice@example.org\n");

    let p = s.parse_delivered(&nid);
    check_common(&p, "Undelivered Mail Returned to Sender", arrival_of(&s, "failed", &id));
    assert_eq!(p.get("blocks"), "3");
    for (j, rcpt) in [(1, "bob@example.net"), (2, "carol@example.net")] {
        assert_eq!(p.get(&format!("dsn{j}.Final-Recipient")), format!("rfc822; {rcpt}"));
        assert_eq!(p.get(&format!("dsn{j}.Action")), "failed");
        assert_eq!(p.get(&format!("dsn{j}.Status")), "5.1.1");
        let diag = p.get(&format!("dsn{j}.Diagnostic-Code"));
        assert!(diag.starts_with("smtp; ") && diag.contains("550 5.1.1 <bob@example.net>: Recipient address rejected"));
    }
    let text = p.get("text");
    assert!(text.contains("<carol@example.net>: ") && text.contains("Recipient address rejected"), "{text}");
    assert!(text.contains(&id), "{text}");
}

#[test]
fn null_sender_is_never_notified() {
    // The relay fails everything, null sender included.
    let s = Setup::new(1, "550 5.1.1 no such user", "", false);
    let id = s.submit("", &["bob@example.net"]);
    let log = s.run_once();
    assert!(log.contains(&format!("{id}: moved to failed/")), "{log}");
    assert!(log.contains(&format!("{id}: no sender notification: the sender is null (<>)")), "{log}");
    assert!(!log.contains(": sender notification: "), "{log}");
    assert_eq!(s.names("failed"), vec![id]);
    assert!(s.names("new").is_empty() && s.names("tmp").is_empty());
    let log = s.run_once();
    assert!(!log.contains("notification"), "{log}");
    assert!(list(&s.out).is_empty());
}

#[test]
fn delay_warning_is_sent_once() {
    let extra = "delay_warning_time = 1s\nminimal_backoff_time = 0s\nmaximal_backoff_time = 1s\n";
    let s = Setup::new(75, "451 4.7.1 greylisted, try again later", extra, true);
    let id = s.submit("alice@example.org", &["bob@example.net"]);
    // Older than delay_warning_time at the first attempt.
    std::thread::sleep(Duration::from_millis(1200));

    let log = s.run_once();
    assert!(log.contains(&format!("{id}: to=<bob@example.net>")) && log.contains("status=deferred"), "{log}");
    let nid = s.notice_id(&log, &id);
    assert!(log.contains(&format!("{id}: sender notification: {nid} (delay warning)")), "{log}");
    assert_eq!(s.names("deferred"), vec![id.clone()]);
    assert_eq!(s.names("new"), vec![nid.clone()]);
    check_notice_entry(&s, &nid);
    let state = std::fs::read_to_string(s.spool.join("state").join(&id)).unwrap();
    assert!(state.lines().any(|l| l.starts_with("warned ")), "{state}");

    // Due again (backoff at most 1s): tried again, but not warned again.
    std::thread::sleep(Duration::from_millis(1200));
    let log = s.run_once();
    assert!(log.contains(&format!("{nid}: removed (delivered)")), "{log}");
    assert!(log.contains(&format!("{id}: to=<bob@example.net>")), "the message was not tried again:\n{log}");
    assert!(!log.contains("sender notification"), "{log}");
    assert!(s.names("new").is_empty());
    assert_eq!(s.names("deferred"), vec![id.clone()]);
    assert_eq!(s.envelope(&nid), "sender=\nrecipients=alice@example.org\n");

    let p = s.parse_delivered(&nid);
    check_common(&p, "Delayed Mail (still being retried)", arrival_of(&s, "deferred", &id));
    assert_eq!(p.get("blocks"), "2");
    assert_eq!(p.get("dsn1.Final-Recipient"), "rfc822; bob@example.net");
    assert_eq!(p.get("dsn1.Action"), "delayed");
    assert_eq!(p.get("dsn1.Status"), "4.7.1");
    assert!(p.get("dsn1.Diagnostic-Code").contains("451 4.7.1 greylisted"));
    assert!(p.get("text").contains("warning only"));
}
