/*!
`outq-sendmail -bs`, as programs use it: a pipelined session on standard
input and output, hostile sessions that must leave no entry, and the
loopback socket unit's per-connection command under an accept loop of the
test's own (what systemd does with `Accept=yes`: the connection becomes
standard input and output), driven by Python's smtplib. The units are
checked with `systemd-analyze verify`. python3 and systemd are installed
by `.ci/run`; without them those tests print `SKIPPED (<program> not
installed)`, and fail instead when `OUTQ_REQUIRE_PRIVILEGED=1`.
*/

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{SendmailSpool, bin, have_program, run_timeout};

const WAIT: Duration = Duration::from_secs(60);

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install/systemd").join(name)
}

/// The reply codes of a session transcript (last line of each reply).
fn codes(out: &str) -> Vec<String> {
    out.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| l[..3].to_owned()).collect()
}

fn session(s: &SendmailSpool, input: &[u8]) -> (String, i32) {
    let mut c = s.cmd();
    c.arg("-bs");
    let r = run_timeout(c, input, WAIT);
    (r.stdout.clone(), r.code.unwrap_or(-1))
}

#[test]
fn bs_pipelined_session_queues_through_the_helper() {
    let s = SendmailSpool::new();
    let input = b"EHLO app.example\r\nMAIL FROM:<web@app.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<root>\r\nDATA\r\nTo: a@example.org\r\nSubject: pipelined\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n";
    let (out, code) = session(&s, input);
    assert_eq!(code, 0, "{out}");
    assert_eq!(codes(&out), ["220", "250", "250", "250", "250", "354", "250", "221"], "{out}");
    assert!(out.contains("250-PIPELINING\r\n") && out.contains("250 2.0.0 Ok: queued\r\n"), "{out}");
    let (sender, rcpts, msg) = s.only_entry();
    assert_eq!(sender, "web@app.example");
    assert_eq!(rcpts, ["a@example.org", "root@host.example"]);
    let text = String::from_utf8(msg).unwrap();
    assert!(text.contains("Subject: pipelined\r\n"), "{text}");
    // The pipeline of -t mail added what was missing.
    assert!(text.contains("From: web@app.example\r\n"), "{text}");
    assert!(text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"), "{text}");
    assert!(text.ends_with("\r\n\r\n.leading dot\r\nbody\r\n"), "{text:?}");
}

#[test]
fn bs_hostile_sessions_leave_no_entry() {
    let env = "MAIL FROM:<a@app.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        // The client leaves in the middle of DATA.
        (format!("{env}Subject: half\r\n\r\nsome of it\r\n").into_bytes(), vec!["220", "250", "250", "354"]),
        // Bare LF: an SMTP smuggling attempt is refused, and its smuggled
        // MAIL is part of the refused text, not a command.
        (
            format!("{env}Subject: x\r\n\r\nx\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@example.org>\r\n.\r\nQUIT\r\n")
                .into_bytes(),
            vec!["220", "250", "250", "354", "550", "221"],
        ),
        // NUL in the text.
        (format!("{env}Subject: x\r\n\r\na\0b\r\n.\r\nQUIT\r\n").into_bytes(), vec!["220", "250", "250", "354", "554", "221"]),
        // Over the size limit (1000 bytes in this configuration).
        (
            [env.as_bytes(), b"Subject: big\r\n\r\n", &[b'x'; 1500], b"\r\n.\r\nQUIT\r\n"].concat(),
            vec!["220", "250", "250", "354", "552", "221"],
        ),
        // An over-long command line, junk, and no recipient.
        (
            [&b"MAIL FROM:<"[..], &[b'a'; 5000], b">\r\nHELLO\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nQUIT\r\n"].concat(),
            vec!["220", "500", "500", "250", "554", "221"],
        ),
        // Too many recipients (max_recipients = 2 here).
        (
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<z@example.org>\r\nRSET\r\nQUIT\r\n".to_vec(),
            vec!["220", "250", "250", "250", "452", "250", "221"],
        ),
    ];
    let s2 = SendmailSpool::with(&bin("outq-enqueue"), "message_size_limit = 1000\nmax_recipients = 2\n");
    for (input, want) in cases {
        let (out, _) = session(&s2, &input);
        assert_eq!(codes(&out), want, "{out}");
    }
    assert!(s2.entries().is_empty(), "a refused message was committed");
    assert!(crate::support::wait_until(WAIT, || s2.spool.names("tmp").is_empty()), "tmp/ not cleaned");
}

/// The arguments of the unit's ExecStart= after the program.
fn exec_start_args() -> Vec<String> {
    let text = std::fs::read_to_string(unit("outq-smtp@.service")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/sbin/outq-sendmail"));
    words.map(str::to_owned).collect()
}

/// Accept connections on 127.0.0.1 and run the unit's command on each,
/// with the connection as standard input and output (Accept=yes).
fn accept_loop(s: &SendmailSpool) -> (u16, std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = s.config.clone();
    let args = exec_start_args();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut children = Vec::new();
        while stopped.try_recv().is_err() {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let fd: OwnedFd = conn.into();
                    let out = fd.try_clone().unwrap();
                    let child = Command::new(bin("outq-sendmail"))
                        .arg("-C")
                        .arg(&config)
                        .args(&args)
                        .stdin(Stdio::from(fd))
                        .stdout(Stdio::from(out))
                        .spawn()
                        .unwrap();
                    children.push(child);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        for mut c in children {
            let _ = c.wait();
        }
    });
    (port, handle, stop)
}

#[test]
fn socket_unit_verifies_and_its_command_serves_smtplib() {
    let test = "socket_unit_verifies_and_its_command_serves_smtplib";
    if have_program("systemd-analyze", test) {
        let dir = tempfile::tempdir().unwrap();
        let service = std::fs::read_to_string(unit("outq-smtp@.service"))
            .unwrap()
            .replace("/usr/sbin/outq-sendmail", bin("outq-sendmail").to_str().unwrap());
        std::fs::write(dir.path().join("outq-smtp@.service"), service).unwrap();
        std::fs::copy(unit("outq-smtp.socket"), dir.path().join("outq-smtp.socket")).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join("outq-smtp.socket"))
            .arg(dir.path().join("outq-smtp@.service"))
            .output()
            .unwrap();
        assert!(out.status.success(), "systemd-analyze verify: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.lines().all(|l| l.contains("outq-smtp") && l.contains("user")), "{stderr}");
    }
    let socket = std::fs::read_to_string(unit("outq-smtp.socket")).unwrap();
    for want in ["ListenStream=127.0.0.1:25", "ListenStream=[::1]:25", "Accept=yes"] {
        assert!(socket.lines().any(|l| l == want), "{want} missing");
    }
    let service = std::fs::read_to_string(unit("outq-smtp@.service")).unwrap();
    for forbidden in
        ["DynamicUser=yes", "NoNewPrivileges=yes", "PrivateUsers=yes", "SystemCallFilter=", "RestrictSUIDSGID="]
    {
        assert!(
            !service.lines().any(|l| l.starts_with(forbidden)),
            "{forbidden} would disable the set-group-ID helper"
        );
    }
    if !have_program("python3", test) {
        return;
    }
    let s = SendmailSpool::new();
    let (port, handle, stop) = accept_loop(&s);
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
    code, _ = c.ehlo("django.example")
    assert code == 250 and c.has_extn("pipelining") and c.has_extn("size"), c.esmtp_features
    m = EmailMessage()
    m["From"] = "Django <noreply@app.example>"
    m["To"] = "one@example.org, two@example.org"
    m["Subject"] = "socket activated"
    m.set_content("Hello from smtplib.\n.\nA lone dot above.\n")
    refused = c.send_message(m)
    assert refused == {}, refused
    assert c.mail("noreply@app.example")[0] == 250
    code, msg = c.docmd("RCPT", "TO:<bad address@example.org>")
    assert code == 501, (code, msg)
    assert c.rset()[0] == 250
print("ok")
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(port.to_string()).output().unwrap();
    stop.send(()).unwrap();
    handle.join().unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (sender, rcpts, msg) = s.only_entry();
    assert_eq!(sender, "noreply@app.example");
    assert_eq!(rcpts, ["one@example.org", "two@example.org"]);
    let text = String::from_utf8(msg).unwrap();
    assert!(text.contains("From: Django <noreply@app.example>\r\n"), "{text}");
    assert!(text.contains("Subject: socket activated\r\n"), "{text}");
    assert!(text.contains("\r\nHello from smtplib.\r\n.\r\nA lone dot above.\r\n"), "{text:?}");
}
