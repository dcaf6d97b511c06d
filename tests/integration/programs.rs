/*!
Real programs through outq-sendmail installed as `/usr/sbin/sendmail`
(and so as `/usr/bin/mailq`, Debian's link to it), delivered by the runner
to an SMTP server of the test's own, which records envelope and message:

- bsd-mailx `mail -s SUBJECT root` as an ordinary user;
- Symfony Mailer's default sendmail transport (`/usr/sbin/sendmail -bs`);
- `mailq` as root, as the queue owner and as a user (refused), and
  `sendmail -q` as each (the user's succeeds doing nothing);
- compliance: the same command lines (cron's, PHP's, flags sendmail 8
  documents) through Postfix's own sendmail, into a private Postfix that
  relays to the same test server, and through outq-sendmail: envelope,
  header fields (less trace fields, dates and IDs) and body must agree,
  up to the deviations listed in `known_deviations`.

Privileged: root, test accounts, the helper installed set-group-ID,
`/etc/outq/outq.conf` and `/usr/sbin/sendmail` taken over under the
privileged lock and put back afterwards. bsd-mailx, php-cli and
php-symfony-mailer are installed by `.ci/run`.
*/

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    PrivilegedLock, Ran, SystemConfig, TestAccounts, as_user, bin, have_program, install_helper, privileged,
    privileged_lock, root_tempdir, run_timeout, wait_until,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const HOST: &str = "client.programs.test";
const SENDMAIL: &str = "/usr/sbin/sendmail";

/// One message as the test server received it.
#[derive(Debug, Clone, Default)]
struct Received {
    sender: String,
    rcpts: Vec<String>,
    data: String,
}

/// A minimal SMTP server on a loopback port: EHLO offers 8BITMIME only
/// (so that no client converts the body), records each transaction.
struct Capture {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

fn serve(conn: TcpStream, got: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    out.write_all(b"220 capture.test ESMTP\r\n")?;
    let mut cur = Received::default();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        // The path between < and >, without parameters after it.
        let arg = |p: &str| {
            let rest = line[p.len()..].trim();
            let inner = rest.strip_prefix('<').and_then(|r| r.split_once('>')).map_or(rest, |(a, _)| a);
            inner.to_owned()
        };
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250-capture.test\r\n250 8BITMIME\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            cur = Received { sender: arg("MAIL FROM:"), ..Received::default() };
            out.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            cur.rcpts.push(arg("RCPT TO:"));
            out.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go\r\n")?;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                cur.data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            got.lock().unwrap().push(std::mem::take(&mut cur));
            out.write_all(b"250 queued\r\n")?;
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}

impl Capture {
    fn start() -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let g = Arc::clone(&g);
                std::thread::spawn(move || serve(conn, &g));
            }
        });
        Capture { port, got }
    }

    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// `/usr/sbin/sendmail` replaced by outq-sendmail; put back on drop.
struct SendmailSwap {
    saved: Option<PathBuf>,
    installed: bool,
}

impl SendmailSwap {
    fn install() -> SendmailSwap {
        let saved = PathBuf::from(format!("{SENDMAIL}.oqt-saved-{}", std::process::id()));
        let saved = match std::fs::rename(SENDMAIL, &saved) {
            Ok(()) => Some(saved),
            Err(_) => None,
        };
        std::fs::copy(bin("outq-sendmail"), SENDMAIL).unwrap();
        std::fs::set_permissions(SENDMAIL, std::fs::Permissions::from_mode(0o755)).unwrap();
        SendmailSwap { saved, installed: true }
    }
}

impl Drop for SendmailSwap {
    fn drop(&mut self) {
        if !self.installed {
            return;
        }
        let _ = std::fs::remove_file(SENDMAIL);
        if let Some(s) = &self.saved {
            let _ = std::fs::rename(s, SENDMAIL);
        }
    }
}

/// Drop order: sendmail put back, configuration restored, spool and
/// binaries removed, accounts deleted, lock released.
struct Setup {
    _swap: SendmailSwap,
    _config: SystemConfig,
    spool: PathBuf,
    _spool_dir: tempfile::TempDir,
    outq: PathBuf,
    _bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    capture: Capture,
    _lock: PrivilegedLock,
}

impl Setup {
    /// With `swap`, outq-sendmail replaces `/usr/sbin/sendmail`.
    fn new(swap: bool) -> Setup {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = crate::support::install_outq(bin_dir.path());
        let spool_dir = root_tempdir("oqt-spool-");
        let spool = spool_dir.path().join("spool");
        let capture = Capture::start();
        let config = SystemConfig::take();
        config.write(&format!(
            "spool_directory = {}\nspool_min_free = 0\nmyhostname = {HOST}\nenqueue_program = {}\n\
             relay = smtp://127.0.0.1:{}\nstarttls = off\n",
            spool.display(),
            helper.display(),
            capture.port
        ));
        let swap = if swap { SendmailSwap::install() } else { SendmailSwap { saved: None, installed: false } };
        let s = Setup {
            _swap: swap,
            _config: config,
            spool,
            _spool_dir: spool_dir,
            outq,
            _bin_dir: bin_dir,
            acc,
            capture,
            _lock: lock,
        };
        let mut c = Command::new(&s.outq);
        let spool = s.spool.display().to_string();
        c.args(["init", "--spool", &spool, "--user", &s.acc.owner.name, "--group", &s.acc.group.name]);
        run_timeout(c, b"", TIMEOUT).assert_code(0);
        s
    }

    /// One queue run as the owner; then what the server received.
    fn deliver(&self, n: usize) -> Vec<Received> {
        let mut c = as_user(&self.acc.owner, &[], &self.outq);
        c.args(["run", "--once", "--log", "stderr"]);
        let r = run_timeout(c, b"", TIMEOUT);
        r.assert_code(0);
        assert!(wait_until(TIMEOUT, || self.capture.got.lock().unwrap().len() >= n), "runner log:\n{}", r.stderr);
        self.capture.take()
    }

    fn queued(&self) -> Vec<String> {
        crate::support::list(&self.spool.join("new"))
    }
}

fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    let head = data.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[track_caller]
fn ok(what: &str, r: &Ran) {
    assert_eq!(r.code, Some(0), "{what}: {r:?}");
}

#[test]
fn real_programs_through_installed_sendmail() {
    let test = "real_programs_through_installed_sendmail";
    if !privileged(test) {
        return;
    }
    let mailx = have_program("bsd-mailx", test);
    let php = have_program("php", test) && {
        let found = Path::new("/usr/share/php/Symfony/Component/Mailer/autoload.php").exists();
        if !found {
            crate::support::report_missing("php-symfony-mailer", test);
        }
        found
    };
    let s = Setup::new(true);
    let caller = s.acc.caller.name.clone();

    if mailx {
        let mut c = as_user(&s.acc.caller, &[], Path::new("/usr/bin/bsd-mailx"));
        c.args(["-s", "disk almost full", "root"]);
        ok("bsd-mailx", &run_timeout(c, b"/var is 95% full\n", TIMEOUT));
        let got = s.deliver(1);
        let m = &got[0];
        assert_eq!(m.sender, format!("{caller}@{HOST}"));
        assert_eq!(m.rcpts, [format!("root@{HOST}")]);
        let root = format!("root@{HOST}");
        assert_eq!(header(&m.data, "To"), Some(root.as_str()), "{}", m.data);
        assert_eq!(header(&m.data, "Subject"), Some("disk almost full"));
        assert!(header(&m.data, "From").is_some_and(|f| f.contains(&format!("{caller}@{HOST}"))), "{}", m.data);
        assert!(header(&m.data, "Message-ID").is_some() && header(&m.data, "Date").is_some());
        assert!(m.data.ends_with("\r\n\r\n/var is 95% full\r\n"), "{:?}", m.data);
    }

    if php {
        let script = r#"<?php
require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
use Symfony\Component\Mailer\Mailer;
use Symfony\Component\Mailer\Transport\SendmailTransport;
use Symfony\Component\Mime\Email;
$transport = new SendmailTransport();
$email = (new Email())->from('Shop <shop@app.example>')->to('one@example.org', 'two@example.org')
    ->subject('order 42')->text("Thanks.\n.\nA lone dot above.\n");
(new Mailer($transport))->send($email);
echo "sent\n";
"#;
        let mut c = as_user(&s.acc.caller, &[], Path::new("/usr/bin/php"));
        c.arg("-r").arg(script.trim_start_matches("<?php\n"));
        let r = run_timeout(c, b"", TIMEOUT);
        ok("php symfony mailer", &r);
        assert!(r.stdout.contains("sent"), "{r:?}");
        let got = s.deliver(1);
        let m = &got[0];
        assert_eq!(m.sender, "shop@app.example");
        assert_eq!(m.rcpts, ["one@example.org", "two@example.org"]);
        assert_eq!(header(&m.data, "Subject"), Some("order 42"));
        assert_eq!(header(&m.data, "From"), Some("Shop <shop@app.example>"));
        assert!(m.data.contains("\r\n\r\nThanks.\r\n.\r\nA lone dot above.\r\n"), "{:?}", m.data);
    }

    // mailq and sendmail -q: a message waits in the queue.
    let mut c = as_user(&s.acc.caller, &[], Path::new(SENDMAIL));
    c.args(["-f", "waiting@app.example", "w@example.org"]);
    ok("sendmail", &run_timeout(c, b"Subject: waiting\n\nw\n", TIMEOUT));
    let id = s.queued().pop().unwrap();
    let mailq = Path::new("/usr/bin/mailq");
    let mailq = if std::fs::canonicalize(mailq).ok().as_deref() == Some(Path::new(SENDMAIL)) {
        mailq.to_path_buf()
    } else {
        // Invoked as mailq through a link of our own.
        let link = s._bin_dir.path().join("mailq");
        std::os::unix::fs::symlink(SENDMAIL, &link).unwrap();
        link
    };
    for (who, cmd) in [("root", Command::new(&mailq)), ("owner", as_user(&s.acc.owner, &[], &mailq))] {
        let r = run_timeout(cmd, b"", TIMEOUT);
        ok(&format!("mailq as {who}"), &r);
        assert!(r.stdout.contains(&id) && r.stdout.contains("<waiting@app.example>"), "{who}: {r:?}");
        assert!(r.stdout.lines().any(|l| l.trim() == "<w@example.org>"), "{who}: {r:?}");
        assert!(r.stdout.ends_with("Total requests: 1\n"), "{who}: {r:?}");
    }
    let r = run_timeout(as_user(&s.acc.caller, &[], &mailq), b"", TIMEOUT);
    assert_eq!(r.code, Some(77), "{r:?}");
    assert!(r.stderr.starts_with("mailq: only the queue owner") && r.stdout.is_empty(), "{r:?}");
    for (who, mut cmd) in [
        ("user", as_user(&s.acc.caller, &[], Path::new(SENDMAIL))),
        ("owner", as_user(&s.acc.owner, &[], Path::new(SENDMAIL))),
        ("root", Command::new(SENDMAIL)),
    ] {
        cmd.arg("-q");
        let r = run_timeout(cmd, b"", TIMEOUT);
        ok(&format!("sendmail -q as {who}"), &r);
        assert_eq!(r.stderr, "", "{who}: {r:?}");
    }
    assert_eq!(s.queued(), [id], "sendmail -q must not touch new mail");
    let got = s.deliver(1);
    assert_eq!(got[0].rcpts, ["w@example.org"]);
}

// ---------------------------------------------------------------------------
// Compliance with Postfix's sendmail

const POSTFIX: &str = "/usr/sbin/postfix";

/// A private Postfix instance that takes local submissions (its own
/// sendmail and postdrop, `-C DIR`) and relays everything to `relay_port`.
struct PostfixRelay {
    dir: tempfile::TempDir,
}

impl PostfixRelay {
    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn start(relay_port: u16) -> PostfixRelay {
        let dir = root_tempdir("oqt-pfrelay-");
        let base = dir.path();
        let (etc, queue, data) = (base.join("etc"), base.join("queue"), base.join("data"));
        for d in [&etc, &queue, &data] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let postfix_user = nix::unistd::User::from_name("postfix").unwrap().expect("the postfix account");
        std::os::unix::fs::chown(&data, Some(postfix_user.uid.as_raw()), None).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let main_cf = format!(
            "compatibility_level = 3.6\nconfig_directory = {etc}\nqueue_directory = {queue}\n\
             data_directory = {data}\nmail_owner = postfix\nsetgid_group = postdrop\n\
             syslog_name = postfix-outq-compliance-{pid}\nmaillog_file = {base}/postfix.log\n\
             maillog_file_prefixes = {base}\nmyhostname = {HOST}\nmyorigin = $myhostname\n\
             mydestination =\ninet_interfaces = loopback-only\ninet_protocols = ipv4\n\
             relayhost = [127.0.0.1]:{relay_port}\nalias_maps =\nalias_database =\nbiff = no\n\
             smtp_tls_security_level = none\nsmtputf8_enable = no\n\
             smtp_connection_cache_on_demand = no\n",
            etc = etc.display(),
            queue = queue.display(),
            data = data.display(),
            base = base.display(),
            pid = std::process::id(),
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
        let master_cf = "pickup unix n - n 1 1 pickup\ncleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\nflush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\nrelay unix - - n - - smtp\nshowq unix n - n - - showq\n\
             error unix - - n - - error\nretry unix - - n - - error\ndiscard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\npostlog unix-dgram n - n - 1 postlogd\n";
        std::fs::write(etc.join("master.cf"), master_cf).unwrap();
        let pf = PostfixRelay { dir };
        for verb in ["check", "start"] {
            let mut c = Command::new(POSTFIX);
            c.arg("-c").arg(pf.etc()).arg(verb).current_dir("/");
            let r = run_timeout(c, b"", TIMEOUT);
            assert_eq!(r.code, Some(0), "postfix {verb}: {r:?}\n{}", pf.log());
        }
        pf
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Postfix's sendmail with `args`, as root, `input` on standard input.
    fn sendmail(&self, args: &[&str], input: &[u8]) {
        let mut c = Command::new(SENDMAIL);
        c.arg("-C").arg(self.etc()).args(args).current_dir("/");
        let r = run_timeout(c, input, TIMEOUT);
        assert_eq!(r.code, Some(0), "Postfix sendmail {args:?}: {r:?}");
    }
}

impl Drop for PostfixRelay {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Header fields as (lower-case name, value), less the ones that differ
/// by nature between two mail systems (trace fields, dates, IDs).
fn comparable_headers(data: &str) -> Vec<(String, String)> {
    let head = data.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    out.retain(|(n, _)| !["received", "date", "message-id"].contains(&n.as_str()));
    out.sort();
    out
}

/// What outq does differently from Postfix on purpose: the `From:` outq
/// adds for the null sender is `MAILER-DAEMON@host`, which relays accept;
/// Postfix writes a bare `MAILER-DAEMON`. A bare local part in an address
/// field is qualified on the Postfix side only (both qualify today, so
/// this changes nothing else; it would hide nothing but an unqualified
/// outq header, which the `To: root` check of the bsd-mailx test catches).
fn known_deviations(fields: Vec<(String, String)>) -> Vec<(String, String)> {
    fields
        .into_iter()
        .map(|(n, v)| {
            if !["from", "to", "cc"].contains(&n.as_str()) {
                return (n, v);
            }
            let end = v.find([' ', '(']).unwrap_or(v.len());
            let (addr, rest) = v.split_at(end);
            if addr.is_empty() || addr.contains(['@', '<']) {
                return (n, v);
            }
            (n, format!("{addr}@{HOST}{rest}"))
        })
        .collect()
}

#[test]
fn compliance_with_postfix_sendmail() {
    let test = "compliance_with_postfix_sendmail";
    if !privileged(test) {
        return;
    }
    if !Path::new(POSTFIX).exists() {
        crate::support::report_missing("postfix", test);
        return;
    }
    let s = Setup::new(false);
    let pf = PostfixRelay::start(s.capture.port);
    let cron_body = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> run-parts /etc/cron.daily\n\
MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
X-Cron-Env: <SHELL=/bin/sh>\n\nrun-parts: /etc/cron.daily/x exited with return code 1\n";
    let t_body = b"From: App <app@example.org>\nTo: one@example.org\nCc: two@example.org\n\
Bcc: hidden@example.org\nSubject: extract\n\nbody\n";
    let cases: &[(&[&str], &[u8])] = &[
        // cron's own command line (Debian cron 3.0).
        (&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], cron_body),
        // PHP mail() and most scripts.
        (&["-t", "-i"], t_body),
        (&["-t", "-i", "-f", "bounce@example.org", "extra@example.org"], t_body),
        // No headers at all, recipient on the command line.
        (&["-i", "-f", "", "plain@example.org"], b"just a body\n"),
        // Flags sendmail 8 documents, which both accept and ignore.
        (
            &["-U", "-Am", "-odq", "-L", "tag", "-h", "5", "-O", "X=y", "-oi", "someone@example.org"],
            b"Subject: flags\n\nx\n",
        ),
    ];
    for (args, input) in cases {
        pf.sendmail(args, input);
        let postfix_got = {
            assert!(
                wait_until(TIMEOUT, || !s.capture.got.lock().unwrap().is_empty()),
                "Postfix relayed nothing for {args:?}; its log:\n{}",
                pf.log()
            );
            s.capture.take().remove(0)
        };
        let mut c = Command::new(bin("outq-sendmail"));
        c.args(*args).current_dir("/");
        ok(&format!("outq-sendmail {args:?}"), &run_timeout(c, input, TIMEOUT));
        let outq_got = s.deliver(1).remove(0);
        assert_eq!(outq_got.sender, postfix_got.sender, "envelope sender for {args:?}");
        // The same set; Postfix's queue manager sorts them.
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        assert_eq!(sorted(&outq_got.rcpts), sorted(&postfix_got.rcpts), "recipients for {args:?}");
        assert_eq!(
            known_deviations(comparable_headers(&outq_got.data)),
            known_deviations(comparable_headers(&postfix_got.data)),
            "headers for {args:?}\noutq:\n{}\nPostfix:\n{}",
            outq_got.data,
            postfix_got.data
        );
        let body = |d: &str| d.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        assert_eq!(body(&outq_got.data), body(&postfix_got.data), "body for {args:?}");
    }
}
