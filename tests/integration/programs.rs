/*!
Real programs through outq-sendmail installed as `/usr/sbin/sendmail`
(and so as `/usr/bin/mailq`, Debian's link to it), delivered by the runner
to an SMTP server of the test's own, which records envelope and message:

- bsd-mailx `mail -s SUBJECT root` as an ordinary user;
- Symfony Mailer's default sendmail transport (`/usr/sbin/sendmail -bs`);
- `mailq` as root, as the queue owner and as a user (refused), and
  `sendmail -q` as each (the user's succeeds doing nothing).

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

/// A minimal SMTP server on a loopback port: plain EHLO, records each
/// transaction.
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
        let arg = |p: &str| line[p.len()..].trim().trim_start_matches('<').trim_end_matches('>').to_owned();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250 capture.test\r\n")?;
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
                let _ = serve(conn, &g);
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
        SendmailSwap { saved }
    }
}

impl Drop for SendmailSwap {
    fn drop(&mut self) {
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
    fn new() -> Setup {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = bin_dir.path().join("outq");
        std::fs::copy(bin("outq"), &outq).unwrap();
        std::fs::set_permissions(&outq, std::fs::Permissions::from_mode(0o755)).unwrap();
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
        let swap = SendmailSwap::install();
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
    let s = Setup::new();
    let caller = s.acc.caller.name.clone();

    if mailx {
        let mut c = as_user(&s.acc.caller, &[], Path::new("/usr/bin/bsd-mailx"));
        c.args(["-s", "disk almost full", "root"]);
        ok("bsd-mailx", &run_timeout(c, b"/var is 95% full\n", TIMEOUT));
        let got = s.deliver(1);
        let m = &got[0];
        assert_eq!(m.sender, format!("{caller}@{HOST}"));
        assert_eq!(m.rcpts, [format!("root@{HOST}")]);
        assert_eq!(header(&m.data, "To"), Some("root"), "{}", m.data);
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
