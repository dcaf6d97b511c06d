/*!
`outq-sendmail`, the sendmail-compatible front end, run the way real
callers run it: a PHP `mail()`-style `sh -c "... -t -i"`, `s-nail` with its
`mta` variable, and `git send-email --sendmail-cmd`. Each test points
outq-sendmail at a development spool with `-C` (the helper it names is the
built `outq-enqueue`, not set-group-ID, so outq-sendmail hands it the
spool and the configuration) and then parses the committed entry in
`new/`: envelope sender, recipients and the message bytes.

s-nail and git-email are installed by `.ci/run`; without them those tests
print `SKIPPED (<program> not installed)`, and fail instead when
`OUTQ_REQUIRE_PRIVILEGED=1`.
*/

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    SENDMAIL_HOST, SendmailSpool, bin, have_program, my_login, report_missing, run_timeout, run_with_input,
};

const WAIT: Duration = Duration::from_secs(60);

/// The header section of `msg` as (name, value) pairs, values unfolded.
fn headers(msg: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap().split("\n\n").next().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            out.last_mut().unwrap().1.push_str(line);
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn header_values(msg: &[u8], name: &str) -> Vec<String> {
    headers(msg).into_iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect()
}

/// The one value of `name`.
#[track_caller]
fn header(msg: &[u8], name: &str) -> String {
    let v = header_values(msg, name);
    assert_eq!(v.len(), 1, "expected one {name} header: {}", String::from_utf8_lossy(msg));
    v[0].clone()
}

/// The message after its header section.
fn body(msg: &[u8]) -> &[u8] {
    let crlf = msg.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = msg.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let at = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(msg.len()),
    };
    &msg[at..]
}

/// A Date: value as this implementation writes it and RFC 5322 allows.
#[track_caller]
fn assert_date(v: &str) {
    let parts: Vec<&str> = v.split(' ').collect();
    assert_eq!(parts.len(), 6, "{v:?}");
    assert!(["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"].contains(&parts[0]), "{v:?}");
    assert!(parts[4].len() == 8 && parts[5] == "+0000", "{v:?}");
}

#[track_caller]
fn assert_message_id(v: &str) {
    assert!(v.starts_with('<') && v.ends_with(&format!("@{SENDMAIL_HOST}>")), "{v:?}");
    let local = &v[1..v.find('@').unwrap()];
    let (secs, random) = local.split_once('.').unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_700_000_000, "{v:?}");
    assert!(random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()), "{v:?}");
}

/// Write an executable script without our process ever holding it open
/// for writing (a concurrent fork in another test thread could otherwise
/// make its exec fail with ETXTBSY).
fn write_script(path: &Path, text: &str) {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg("cat > \"$1\" && chmod 0755 \"$1\"").arg("sh").arg(path);
    run_with_input(c, text.as_bytes()).assert_code(0);
}

#[test]
fn php_mail_style_t_i_takes_to_cc_bcc_and_strips_bcc() {
    let s = SendmailSpool::new();
    // What PHP's mail() writes to popen("sendmail_path", "w"): To and
    // Subject first, then the additional headers, an empty line, the body.
    let msg = "To: alice@example.org, \"Bob, B.\" <bob@example.org>\n\
               Subject: Order 42\n\
               X-PHP-Originating-Script: 33:shop.php\n\
               From: Shop <shop@example.org>\n\
               Cc: carol@example.org (Carol), team: dan@example.org, Eve <eve@example.org>;\n\
               Bcc: hidden@example.org, Other Hidden <hidden2@example.org>\n\
               MIME-Version: 1.0\n\
               Content-Type: text/plain; charset=UTF-8\n\
               \n\
               Hello,\n\
               .\n\
               the line above is a lone dot and stays (-i).\n";
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(format!("{} -t -i", s.shell_cmd()));
    let r = run_with_input(c, msg.as_bytes());
    r.assert_code(0);
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{r:?}");
    let (sender, rcpts, got) = s.only_entry();
    assert_eq!(sender, format!("{}@{SENDMAIL_HOST}", my_login()));
    assert_eq!(
        rcpts,
        [
            "alice@example.org",
            "bob@example.org",
            "carol@example.org",
            "dan@example.org",
            "eve@example.org",
            "hidden@example.org",
            "hidden2@example.org"
        ]
    );
    assert!(header_values(&got, "Bcc").is_empty(), "Bcc passed on: {}", String::from_utf8_lossy(&got));
    assert!(!String::from_utf8_lossy(&got).contains("hidden"));
    assert_eq!(header(&got, "From"), "Shop <shop@example.org>");
    assert_eq!(header(&got, "To"), "alice@example.org, \"Bob, B.\" <bob@example.org>");
    assert_eq!(header(&got, "X-PHP-Originating-Script"), "33:shop.php");
    assert_date(&header(&got, "Date"));
    assert_message_id(&header(&got, "Message-ID"));
    assert_eq!(body(&got), b"Hello,\n.\nthe line above is a lone dot and stays (-i).\n");
}

#[test]
fn command_line_recipients_are_added_to_header_recipients_with_t() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-t", "extra@example.org", "a@example.org"]);
    let r = run_with_input(c, b"To: a@example.org, root\nResent-Note: none\nSubject: x\n\nb\n");
    r.assert_code(0);
    let (_, rcpts, _) = s.only_entry();
    // Any Resent- field switches -t to the Resent-To/Cc/Bcc set: none here.
    assert_eq!(rcpts, ["extra@example.org", "a@example.org"]);

    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-t", "extra@example.org", "a@example.org"]);
    let r = run_with_input(c, b"To: a@example.org, root\nSubject: x\n\nb\n");
    r.assert_code(0);
    let (_, rcpts, _) = s.only_entry();
    // Each address once; a bare name is qualified by the helper.
    assert_eq!(rcpts, ["extra@example.org", "a@example.org", &format!("root@{SENDMAIL_HOST}")]);
}

#[test]
fn resent_headers_select_the_resent_recipients() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("-t");
    let msg = b"From: a@example.org\nTo: original@example.org\nResent-From: me@example.org\n\
                Resent-To: new@example.org\nResent-Bcc: secret@example.org\nSubject: fwd\n\nbody\n";
    run_with_input(c, msg).assert_code(0);
    let (_, rcpts, got) = s.only_entry();
    assert_eq!(rcpts, ["new@example.org", "secret@example.org"]);
    assert!(header_values(&got, "Resent-Bcc").is_empty());
    assert_eq!(header(&got, "To"), "original@example.org");
}

#[test]
fn t_without_any_recipient_is_a_data_error() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("-t");
    let r = run_with_input(c, b"To: undisclosed-recipients:;\nSubject: x\n\nb\n");
    r.assert_code(65).assert_stderr_contains("outq-sendmail: no recipient addresses");
    assert!(s.entries().is_empty());
    let mut c = s.cmd();
    c.arg("-t");
    run_with_input(c, b"To: Just A Name\n\nb\n").assert_code(65).assert_stderr_contains("without an address");
    assert!(s.entries().is_empty());
}

#[test]
fn lone_dot_ends_the_message_without_i() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a@example.org");
    let msg = b"Subject: dots\n\nline 1\n..two dots stay\n.x stays\n.\nnot part of the message\n";
    run_with_input(c, msg).assert_code(0);
    let (_, _, got) = s.only_entry();
    assert_eq!(body(&got), b"line 1\n..two dots stay\n.x stays\n");

    // CRLF line ends, and the dot in the header section.
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a@example.org");
    run_with_input(c, b"Subject: crlf\r\nFrom: a@example.org\r\n.\r\nTo: x@example.org\r\n\r\nlost\r\n").assert_code(0);
    let (_, _, got) = s.only_entry();
    assert!(got.starts_with(b"Subject: crlf\r\nFrom: a@example.org\r\nDate: "), "{}", String::from_utf8_lossy(&got));
    assert!(!String::from_utf8_lossy(&got).contains("lost"));
    assert!(header_values(&got, "To").is_empty());
}

#[test]
fn lone_dot_is_data_with_i_and_oi() {
    for opt in ["-i", "-oi"] {
        let s = SendmailSpool::new();
        let mut c = s.cmd();
        c.args([opt, "a@example.org"]);
        let msg = b"Subject: dots\r\n\r\nline 1\r\n.\r\nline 3\r\n.";
        run_with_input(c, msg).assert_code(0);
        let (_, _, got) = s.only_entry();
        assert_eq!(body(&got), b"line 1\r\n.\r\nline 3\r\n.", "{opt}");
    }
}

#[test]
fn missing_from_date_message_id_are_added_and_present_ones_kept() {
    // All present: the message passes byte for byte.
    let s = SendmailSpool::new();
    let msg = b"From: Someone <someone@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0100\r\n\
                Message-ID: <given@example.org>\r\nSubject: kept\r\n\r\nbody\r\n";
    let mut c = s.cmd();
    c.args(["-f", "envelope@example.org", "a@example.org"]);
    run_with_input(c, msg).assert_code(0);
    let (sender, _, got) = s.only_entry();
    assert_eq!(sender, "envelope@example.org");
    assert_eq!(got, msg);

    // None present: added after the existing fields, with the message's
    // CRLF line ends; From from -f and -F.
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-f", "sender@example.org", "-F", "Doe, Jörg", "a@example.org"]);
    run_with_input(c, b"Subject: none\r\n\r\nbody\r\n").assert_code(0);
    let (sender, _, got) = s.only_entry();
    assert_eq!(sender, "sender@example.org");
    let text = String::from_utf8(got.clone()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "Subject: none");
    assert_eq!(lines[1], "From: =?UTF-8?B?RG9lLCBKw7ZyZw==?= <sender@example.org>");
    assert!(lines[2].starts_with("Date: ") && lines[3].starts_with("Message-ID: "), "{text:?}");
    assert_date(&lines[2]["Date: ".len()..]);
    assert_message_id(&lines[3]["Message-ID: ".len()..]);
    assert_eq!(&lines[4..], ["", "body", ""]);

    // -r, an ASCII full name that needs quoting, -FNAME attached.
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-r", "r@example.org", "-FDoe, John", "a@example.org"]);
    run_with_input(c, b"Subject: x\n\nb\n").assert_code(0);
    let (sender, _, got) = s.only_entry();
    assert_eq!(sender, "r@example.org");
    assert_eq!(header(&got, "From"), "\"Doe, John\" <r@example.org>");
}

#[test]
fn default_sender_is_the_callers_login() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a@example.org");
    run_with_input(c, b"Subject: x\n\nb\n").assert_code(0);
    let (sender, _, got) = s.only_entry();
    let me = format!("{}@{SENDMAIL_HOST}", my_login());
    assert_eq!(sender, me);
    let from = header(&got, "From");
    assert!(from == me || from.ends_with(&format!(" <{me}>")), "{from:?}");
}

#[test]
fn null_sender() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-f", "<>", "a@example.org"]);
    run_with_input(c, b"Subject: bounce\n\nb\n").assert_code(0);
    let (sender, _, got) = s.only_entry();
    assert_eq!(sender, "");
    assert_eq!(header(&got, "From"), format!("MAILER-DAEMON@{SENDMAIL_HOST}"));
}

#[test]
fn headers_only_messages() {
    for (input, expect_start) in [
        (&b"Subject: only headers\n"[..], &b"Subject: only headers\nFrom: "[..]),
        (b"Subject: no line end", b"Subject: no line end\nFrom: "),
        (b"", b"From: "),
    ] {
        let s = SendmailSpool::new();
        let mut c = s.cmd();
        c.arg("a@example.org");
        run_with_input(c, input).assert_code(0);
        let (_, _, got) = s.only_entry();
        assert!(got.starts_with(expect_start), "{}", String::from_utf8_lossy(&got));
        assert!(got.ends_with(b"\n") && !got.ends_with(b"\n\n"), "{}", String::from_utf8_lossy(&got));
        assert_eq!(header_values(&got, "Date").len(), 1);
        assert_eq!(header_values(&got, "Message-ID").len(), 1);
    }
}

#[test]
fn a_body_without_headers_gets_an_empty_line_before_it() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a@example.org");
    run_with_input(c, b"just text, no headers\nsecond line\n").assert_code(0);
    let (_, _, got) = s.only_entry();
    assert_eq!(body(&got), b"just text, no headers\nsecond line\n");
    assert_eq!(headers(&got).len(), 3);
}

#[test]
fn unknown_options_are_usage_errors() {
    let s = SendmailSpool::new();
    for (args, named) in [
        (&["-y", "a@example.org"][..], "unknown option -y"),
        (&["-bt"], "-bt is not supported"),
        (&["-qX"], "-qX is not implemented"),
        (&["--verbose", "a@example.org"], "unknown option --verbose"),
        (&["-\x1b[31m", "a@example.org"], "unknown option -\\x1b"),
        (&["-i"], "no recipient given"),
    ] {
        let mut c = s.cmd();
        c.args(args);
        let r = run_with_input(c, b"Subject: x\n\nb\n");
        r.assert_code(64).assert_stderr_contains(named);
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(r.stderr.starts_with("outq-sendmail: ") && r.stderr.trim_end().ends_with(')'), "{r:?}");
        assert!(!r.stderr.contains('\x1b'));
    }
    assert!(s.entries().is_empty());
}

#[test]
fn accepted_and_ignored_options() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args([
        "-v",
        "-oem",
        "-oee",
        "-odb",
        "-odi",
        "-om",
        "-bm",
        "-B",
        "8BITMIME",
        "-N",
        "never",
        "-R",
        "hdrs",
        "-V",
        "envid",
        "-FCronDaemon",
        "-i",
        "-B8BITMIME",
        "--",
        "root",
    ]);
    run_with_input(c, b"Subject: Cron <root@host> true\n\nout\n").assert_code(0);
    let (_, rcpts, got) = s.only_entry();
    assert_eq!(rcpts, [format!("root@{SENDMAIL_HOST}")]);
    assert!(header(&got, "From").starts_with("CronDaemon <"));
}

#[test]
fn the_helpers_exit_code_and_message_come_through() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a..b@example.org");
    let r = run_with_input(c, b"Subject: x\n\nb\n");
    r.assert_code(65).assert_stderr_contains("outq-enqueue: recipient");
    assert!(s.entries().is_empty());

    // A command-line word holding a name but no address is outq-sendmail's
    // own refusal.
    let mut c = s.cmd();
    c.arg("not an address");
    let r = run_with_input(c, b"Subject: x\n\nb\n");
    r.assert_code(65).assert_stderr_contains("outq-sendmail: recipient not an address");
    assert!(s.entries().is_empty());

    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-f", "bad sender", "a@example.org"]);
    run_with_input(c, b"b\n").assert_code(65).assert_stderr_contains("outq-sendmail: sender");

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-enqueue");
    write_script(&fake, "#!/bin/sh\n/bin/cat >/dev/null\nexit 77\n");
    let s = SendmailSpool::with(&fake, "");
    let mut c = s.cmd();
    c.arg("a@example.org");
    run_with_input(c, b"b\n").assert_code(77);
}

#[test]
fn a_helper_that_cannot_run_or_is_killed_is_a_temporary_failure() {
    let s = SendmailSpool::with(Path::new("/nonexistent/outq-enqueue"), "");
    let mut c = s.cmd();
    c.arg("a@example.org");
    let r = run_with_input(c, b"Subject: x\n\nb\n");
    r.assert_code(75).assert_stderr_contains("outq-sendmail: cannot run /nonexistent/outq-enqueue");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.trim_end().ends_with(')'));

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("killed");
    write_script(&fake, "#!/bin/sh\nkill -KILL $$\n");
    let s = SendmailSpool::with(&fake, "");
    let mut c = s.cmd();
    c.arg("a@example.org");
    let r = run_with_input(c, b"Subject: x\n\nb\n");
    r.assert_code(75).assert_stderr_contains("killed by signal 9");
}

#[test]
fn spool_and_config_are_passed_only_to_a_helper_without_setgid() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("record");
    let log = dir.path().join("argv");
    write_script(
        &fake,
        &format!("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > '{}'\n/bin/cat >/dev/null\n", log.display()),
    );
    let s = SendmailSpool::with(&fake, "");
    let argv = || {
        let mut c = s.cmd();
        c.args(["-f", "me@example.org", "--", "a@example.org", "-b@example.org"]);
        run_with_input(c, b"Subject: x\n\nb\n").assert_code(0);
        std::fs::read_to_string(&log).unwrap()
    };
    let want_tail = "-f\nme@example.org\n--\na@example.org\n-b@example.org\n";
    let dev = format!("--spool\n{}\n--config\n{}\n{want_tail}", s.spool.root().display(), s.config.display());
    assert_eq!(argv(), dev);
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o2755)).unwrap();
    assert_eq!(crate::support::mode_of(&fake), 0o2755, "could not set the set-group-ID bit");
    assert_eq!(argv(), want_tail);
}

#[test]
fn header_section_is_bounded() {
    let s = SendmailSpool::new();
    let mut msg = b"Subject: big\n".to_vec();
    while msg.len() < 1024 * 1024 + 100 {
        msg.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\n");
    }
    msg.extend_from_slice(b"\nbody\n");
    let mut c = s.cmd();
    c.arg("a@example.org");
    run_with_input(c, &msg).assert_code(65).assert_stderr_contains("header section is longer than");
    assert!(s.entries().is_empty());
}

#[test]
fn a_large_body_is_streamed_unchanged() {
    let s = SendmailSpool::with(&bin("outq-enqueue"), "message_size_limit = 50000000\n");
    let mut msg =
        b"From: a@example.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <x@example.org>\n\n".to_vec();
    let mut n: u32 = 1;
    while msg.len() < 8 * 1024 * 1024 {
        // A cheap generator: every byte value but NUL, CR/LF mixes, dots.
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let b = (n >> 16) as u8;
        match b % 7 {
            0 => msg.extend_from_slice(b"\r\n.."),
            1 => msg.extend_from_slice(b"\n.\r"),
            _ => msg.push(b.max(1)),
        }
    }
    msg.extend_from_slice(b"\n.\n");
    let mut c = s.cmd();
    c.args(["-oi", "a@example.org"]);
    run_timeout(c, &msg, WAIT).assert_code(0);
    let (_, _, got) = s.only_entry();
    assert!(got == msg, "the message changed on its way ({} bytes in, {} out)", msg.len(), got.len());
}

#[test]
fn a_terminated_sendmail_commits_nothing() {
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.arg("a@example.org").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Subject: partial\n\nthe first half of the message\n").unwrap();
    stdin.flush().unwrap();
    // The helper has created its temporary entry: the message is flowing.
    assert!(crate::support::wait_until(WAIT, || !s.spool.names("tmp").is_empty()), "the helper never started");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = {
        let status = crate::support::wait_timeout(&mut child, WAIT).expect("outq-sendmail did not stop");
        drop(stdin);
        status
    };
    assert_eq!(out.code(), Some(75));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("outq-sendmail: interrupted by signal 15"), "{err:?}");
    assert!(s.entries().is_empty(), "a truncated message was committed");
    assert!(crate::support::wait_until(WAIT, || s.spool.names("tmp").is_empty()), "tmp/ not cleaned");
}

#[test]
fn bp_lists_the_queue_in_mailq_format() {
    use std::os::unix::fs::symlink;
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-f", "listed@example.org", "a@example.org"]);
    run_with_input(c, b"Subject: x\n\nb\n").assert_code(0);
    let id = s.spool.names("new").pop().unwrap();
    if nix::unistd::geteuid().is_root() {
        // `outq list` runs as the queue owner, which must not be root.
        crate::support::root_cmd("chown", &["-R", "nobody", s.spool.root().to_str().unwrap()]);
        std::fs::set_permissions(s.spool.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let list = {
        let mut c = Command::new(bin("outq"));
        c.arg("list").arg("--config").arg(&s.config);
        run_with_input(c, b"")
    };
    let mut c = s.cmd();
    c.arg("-bp");
    let bp = run_with_input(c, b"");
    assert_eq!(bp.code, list.code, "-bp: {bp:?}\noutq list: {list:?}");
    bp.assert_code(0);
    for r in [&bp, &list] {
        assert!(r.stdout.contains(&id) && r.stdout.contains("<listed@example.org>"), "{r:?}");
    }
    // sendmail's mailq format: a recipient column and a total.
    assert!(bp.stdout.lines().any(|l| l.trim_start() == "<a@example.org>"), "{bp:?}");
    assert!(bp.stdout.ends_with("Total requests: 1\n"), "{bp:?}");
    // Invoked as mailq.
    let dir = tempfile::tempdir().unwrap();
    let mailq = dir.path().join("mailq");
    symlink(bin("outq-sendmail"), &mailq).unwrap();
    let mut c = Command::new(&mailq);
    c.arg("-C").arg(&s.config);
    let r = run_with_input(c, b"");
    r.assert_code(0);
    assert!(r.stdout.contains(&id), "{r:?}");
}

#[test]
fn s_nail_sends_through_outq_sendmail() {
    if !have_program("s-nail", "s_nail_sends_through_outq_sendmail") {
        return;
    }
    let s = SendmailSpool::new();
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut c = Command::new("s-nail");
        c.env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C");
        // -:/ reads no start-up files; sendwait waits for the MTA's status.
        c.args(["-:/", "-S", "sendwait", "-S", "expandaddr=fail,-all,+addr"]);
        c.arg("-S").arg(format!("mta={}", bin("outq-sendmail").display()));
        c.arg("-S").arg(format!("mta-arguments=-C {}", s.config.display()));
        c.args(extra);
        run_timeout(c, b"Hello from s-nail.\n.\nStill the body.\n", WAIT)
    };
    let r = run(&[
        "-s",
        "Via s-nail",
        "-c",
        "cc@example.org",
        "-b",
        "bcc@example.org",
        "-r",
        "Nail User <nail@example.org>",
        "to@example.org",
    ]);
    r.assert_code(0);
    let (sender, rcpts, got) = s.only_entry();
    assert_eq!(sender, "nail@example.org");
    assert_eq!(rcpts, ["to@example.org", "cc@example.org", "bcc@example.org"]);
    assert_eq!(header(&got, "Subject"), "Via s-nail");
    assert_eq!(header(&got, "To"), "to@example.org");
    assert_eq!(header(&got, "From"), "Nail User <nail@example.org>");
    assert!(header_values(&got, "Bcc").is_empty());
    assert_eq!(header_values(&got, "Date").len(), 1);
    assert_eq!(header_values(&got, "Message-ID").len(), 1);
    assert_eq!(body(&got), b"Hello from s-nail.\n.\nStill the body.\n");

    // Without -r s-nail writes no From: and no -f; outq-sendmail adds them.
    let s2 = SendmailSpool::new();
    let r = {
        let mut c = Command::new("s-nail");
        c.env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C");
        c.args(["-:/", "-S", "sendwait"]);
        c.arg("-S").arg(format!("mta={}", bin("outq-sendmail").display()));
        c.arg("-S").arg(format!("mta-arguments=-C {}", s2.config.display()));
        c.args(["-s", "plain", "to@example.org"]);
        run_timeout(c, b"hi\n", WAIT)
    };
    r.assert_code(0);
    let (sender, _, got) = s2.only_entry();
    let me = format!("{}@{SENDMAIL_HOST}", my_login());
    assert_eq!(sender, me);
    assert!(header(&got, "From").contains(&me));
}

#[test]
fn git_send_email_sends_a_patch_through_outq_sendmail() {
    const TEST: &str = "git_send_email_sends_a_patch_through_outq_sendmail";
    if !have_program("git", TEST) {
        return;
    }
    let probe = Command::new("git").args(["send-email", "-h"]).output().unwrap();
    let help = format!("{}{}", String::from_utf8_lossy(&probe.stdout), String::from_utf8_lossy(&probe.stderr));
    if !help.contains("--sendmail-cmd") {
        report_missing("git send-email (package git-email)", TEST);
        return;
    }
    let s = SendmailSpool::new();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.env_clear()
            .env("HOME", work.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .current_dir(&repo)
            .args(["-c", "user.name=Patch Author", "-c", "user.email=author@example.org"])
            .args(args);
        let r = run_timeout(c, b"", WAIT);
        assert_eq!(r.code, Some(0), "git {args:?}: {r:?}");
        r
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("file"), "one\n").unwrap();
    git(&["add", "file"]);
    git(&["commit", "-q", "-m", "Add file"]);
    std::fs::write(repo.join("file"), "one\n.\ntwo\n").unwrap();
    git(&["commit", "-q", "-a", "-m", "Add a lone dot\n\nThe body of the commit message."]);
    git(&["format-patch", "-q", "-1", "-o", "../patches"]);
    let patch = std::fs::read_dir(work.path().join("patches")).unwrap().next().unwrap().unwrap().path();
    git(&[
        "send-email",
        &format!("--sendmail-cmd={}", s.shell_cmd()),
        "--to=dev@example.org",
        "--cc=reviewer@example.org",
        "--bcc=archive@example.org",
        "--from=Patch Author <author@example.org>",
        "--envelope-sender=bounces@example.org",
        "--confirm=never",
        "--no-validate",
        "--suppress-cc=all",
        "--quiet",
        patch.to_str().unwrap(),
    ]);
    let (sender, rcpts, got) = s.only_entry();
    assert_eq!(sender, "bounces@example.org");
    assert_eq!(rcpts, ["dev@example.org", "reviewer@example.org", "archive@example.org"]);
    assert_eq!(header(&got, "Subject"), "[PATCH] Add a lone dot");
    assert_eq!(header(&got, "From"), "Patch Author <author@example.org>");
    assert!(header_values(&got, "Bcc").is_empty());
    assert_eq!(header_values(&got, "Message-ID").len(), 1);
    let text = String::from_utf8_lossy(body(&got)).into_owned();
    assert!(text.contains("The body of the commit message.\n"), "{text}");
    // The patch's own lone-dot line survives (git passes -i).
    assert!(text.contains("\n+.\n+two\n"), "{text}");
}

// ---------------------------------------------------------------------------
// newaliases, -bi, -I; /etc/mailname; header qualification

/// `outq-sendmail` run under the name `argv0` with `-C` and `args`.
fn named(s: &SendmailSpool, argv0: &str, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin("outq-sendmail"));
    c.arg0(argv0).arg("-C").arg(&s.config).args(args);
    c
}

#[test]
fn newaliases_and_bi_check_the_aliases_file() {
    let probe = SendmailSpool::new();
    let aliases = probe.spool.dir.path().join("aliases");
    let s = SendmailSpool::with(&bin("outq-enqueue"), &format!("alias_file = {}\n", aliases.display()));
    // No file: nothing to check, success.
    for (argv0, args) in [("newaliases", &[][..]), ("sendmail", &["-bi"][..]), ("sendmail", &["-I"][..])] {
        let r = run_with_input(named(&s, argv0, args), b"");
        r.assert_code(0);
        assert_eq!(r.stderr, "", "{argv0} {args:?}");
    }
    // A good file: silent success.
    std::fs::write(&aliases, "root: admin@example.org\npostmaster: root\n").unwrap();
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run_with_input(named(&s, "/usr/bin/newaliases", &[]), b"");
    r.assert_code(0);
    assert_eq!(r.stderr, "");
    // Broken lines are reported, and the exit status stays 0 (maintainer
    // scripts call newaliases).
    std::fs::write(&aliases, "root: admin@example.org\nno colon\nwww: \"|/bin/cat\"\nx: <bad@\n").unwrap();
    let r = run_with_input(named(&s, "newaliases", &[]), b"");
    r.assert_code(0);
    let shown = aliases.display().to_string();
    assert!(
        r.stderr.contains(&format!("outq-sendmail: warning: {shown}: line 2: expected 'name: address, ...'")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("line 4: target <bad@"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 2, "{}", r.stderr);
    // A file others may write cannot be used: exit 75, naming the fix.
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = run_with_input(named(&s, "sendmail", &["-bi"]), b"");
    r.assert_code(75).assert_stderr_contains("aliases file not usable");
    assert!(s.entries().is_empty());
}

#[test]
fn unqualified_header_addresses_get_myorigin_and_keep_their_names() {
    let s = SendmailSpool::with(&bin("outq-enqueue"), "myorigin = example.org\n");
    let mut c = s.cmd();
    c.args(["-t", "-i"]);
    let msg = b"From: root (Cron Daemon)\r\nTo: \"Doe, John\" <john>, ops,\r\n\tteam: a, B <b>;\r\n\
Cc: x@elsewhere.example\r\nReply-To: \"web master\"\r\nSender: www-data\r\nResent-From: admin\r\n\
Resent-To: root@example.org\r\nSubject: root\r\n\r\nbody root\r\n";
    run_with_input(c, msg).assert_code(0);
    let (sender, rcpts, got) = s.only_entry();
    assert_eq!(sender, format!("{}@example.org", my_login()));
    // Resent- fields present: -t takes Resent-To only.
    assert_eq!(rcpts, ["root@example.org"]);
    assert_eq!(header(&got, "From"), "root@example.org (Cron Daemon)");
    assert_eq!(
        header(&got, "To"),
        "\"Doe, John\" <john@example.org>, ops@example.org,\tteam: a@example.org, B <b@example.org>;"
    );
    assert_eq!(header(&got, "Cc"), "x@elsewhere.example");
    assert_eq!(header(&got, "Reply-To"), "\"web master\"@example.org");
    assert_eq!(header(&got, "Sender"), "www-data@example.org");
    assert_eq!(header(&got, "Resent-From"), "admin@example.org");
    assert_eq!(header(&got, "Subject"), "root", "other fields are not touched");
    assert_eq!(body(&got), b"body root\r\n");

    // Command-line forms: a list, a trailing comma, a name address.
    let s = SendmailSpool::new();
    let mut c = s.cmd();
    c.args(["-i", "a@example.org,root", "b@example.org,", "Jane Doe <jane@example.org>"]);
    run_with_input(c, b"Subject: s\n\nx\n").assert_code(0);
    let (_, rcpts, _) = s.only_entry();
    assert_eq!(rcpts, ["a@example.org", &format!("root@{SENDMAIL_HOST}"), "b@example.org", "jane@example.org"]);
}

/// /etc/mailname taken over for one test, put back (or removed) on drop.
struct MailName {
    saved: Option<Vec<u8>>,
}

impl MailName {
    fn set(text: &str) -> MailName {
        let path = Path::new(outq_spool::config::MAILNAME_PATH);
        let saved = std::fs::read(path).ok();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        MailName { saved }
    }
}

impl Drop for MailName {
    fn drop(&mut self) {
        let path = Path::new(outq_spool::config::MAILNAME_PATH);
        match &self.saved {
            Some(v) => {
                let _ = std::fs::write(path, v);
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[test]
fn etc_mailname_names_the_host_when_myhostname_is_not_set() {
    if !crate::support::privileged("etc_mailname_names_the_host_when_myhostname_is_not_set") {
        return;
    }
    let _lock = crate::support::privileged_lock();
    let _name = MailName::set("mail.example.test\n");
    let s = SendmailSpool::new();
    let conf = format!(
        "spool_directory = {}\nspool_min_free = 0\nenqueue_program = {}\n",
        s.spool.root().display(),
        bin("outq-enqueue").display()
    );
    s.spool.write_config(&conf);
    let mut c = s.cmd();
    c.arg("root");
    run_with_input(c, b"From: root\nSubject: s\n\nx\n").assert_code(0);
    let (sender, rcpts, got) = s.only_entry();
    assert_eq!(sender, format!("{}@mail.example.test", my_login()));
    assert_eq!(rcpts, ["root@mail.example.test"]);
    assert_eq!(header(&got, "From"), "root@mail.example.test");
    assert!(header(&got, "Message-ID").ends_with("@mail.example.test>"));
    // The helper, called directly, qualifies with the same name.
    let mut c = s.spool.helper();
    c.arg("postmaster");
    run_with_input(c, b"Subject: direct\n\nx\n").queue_id();
    let direct = s
        .entries()
        .into_iter()
        .find(|(h, _)| h.recipients.len() == 1 && h.recipients[0].as_str().starts_with("postmaster"))
        .unwrap();
    assert_eq!(direct.0.recipients[0].as_str(), "postmaster@mail.example.test");
    assert_eq!(direct.0.sender.as_str(), format!("{}@mail.example.test", my_login()));

    // A mail name that is not a domain is ignored (the host name is used).
    drop(_name);
    let _name = MailName::set("not a domain\n");
    let s2 = SendmailSpool::new();
    s2.spool.write_config(&conf.replace(&s.spool.root().display().to_string(), &s2.spool.root().display().to_string()));
    let mut c = s2.cmd();
    c.arg("root");
    run_with_input(c, b"Subject: s\n\nx\n").assert_code(0);
    let (_, rcpts, _) = s2.only_entry();
    assert!(!rcpts[0].contains("not"), "{rcpts:?}");
}

/// The datagrams a syslog socket received until one holds every needle.
fn wait_for_log(sock: &std::os::unix::net::UnixDatagram, needles: &[&str]) -> String {
    let mut seen = String::new();
    let mut buf = vec![0u8; 8192];
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if needles.iter().all(|w| line.contains(w)) {
            return line;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    panic!("no log line with {needles:?}; got:\n{seen}");
}

#[test]
fn refusals_and_replaced_nul_bytes_are_logged_to_syslog_with_facility_mail() {
    use std::os::unix::net::UnixDatagram;
    if !crate::support::privileged("refusals_and_replaced_nul_bytes_are_logged_to_syslog_with_facility_mail") {
        return;
    }
    let _lock = crate::support::privileged_lock();
    // Our own syslog socket at /dev/log; a system one is moved aside
    // (same directory, so a rename) for the few seconds of the test and
    // put back on drop, even when the test fails.
    const DEV_LOG: &str = "/dev/log";
    const SAVED: &str = "/dev/log.outq-test-saved";
    struct Restore {
        moved: bool,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(DEV_LOG);
            if self.moved {
                let _ = std::fs::rename(SAVED, DEV_LOG);
            }
        }
    }
    let moved = std::fs::symlink_metadata(DEV_LOG).is_ok();
    if moved {
        std::fs::rename(DEV_LOG, SAVED).unwrap();
    }
    let _restore = Restore { moved };
    let sock = UnixDatagram::bind(DEV_LOG).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let s = SendmailSpool::new();
    let sendmail = |args: &[&str]| -> Command {
        let mut c = Command::new(bin("outq-sendmail"));
        c.arg("-C").arg(&s.config).args(args);
        c
    };

    let r = run_with_input(sendmail(&["-y", "a@example.org"]), b"Subject: s\n\nx\n");
    r.assert_code(64).assert_stderr_contains("unknown option -y");
    // LOG_MAIL | LOG_WARNING = 16 + 4.
    let line = wait_for_log(&sock, &["outq-sendmail", "unknown option -y"]);
    assert!(line.starts_with("<20>"), "not facility mail, level warning: {line:?}");
    assert!(line.contains("refused (uid 0, exit 64)"), "{line}");

    run_with_input(sendmail(&["a@example.org"]), b"Subject: s\n\nbinary \0 here\0\n").assert_code(0);
    let line = wait_for_log(&sock, &["outq-sendmail", "2 NUL byte(s) in the message replaced by ^@"]);
    assert!(line.starts_with("<22>"), "not facility mail, level info: {line:?}");
    let (_, _, got) = s.only_entry();
    assert_eq!(body(&got), b"binary ^@ here^@\n");
}
