/*!
The helper in development mode (not set-group-ID): the full write path,
the entry format on disk, and the data errors. No privilege needed.
*/

use outq_spool::entry::{self, Limits};

use crate::support::{DevSpool, message, mode_of, run_with_input};

const LIMITS: Limits = Limits { max_recipients: 1000, max_size: 10_240_000 };

#[test]
fn commits_an_entry_that_parses_back() {
    let s = DevSpool::new();
    let body = message(4096);
    let mut cmd = s.helper();
    cmd.args(["-f", "sender@example.org", "rcpt1@example.org", "<rcpt2@example.net>"]);
    let r = run_with_input(cmd, &body);
    let id = r.queue_id();
    assert_eq!(s.names("new"), vec![id.clone()]);
    assert!(s.names("tmp").is_empty());
    let path = s.root().join("new").join(&id);
    assert_eq!(mode_of(&path), 0o404);
    let data = std::fs::read(&path).unwrap();
    let (h, got) = entry::parse_bytes(&data, &LIMITS).unwrap();
    assert_eq!(got, body.as_slice());
    assert_eq!(h.id.as_str(), id);
    assert_eq!(h.sender.as_str(), "sender@example.org");
    let rcpts: Vec<&str> = h.recipients.iter().map(|r| r.as_str()).collect();
    assert_eq!(rcpts, ["rcpt1@example.org", "rcpt2@example.net"]);
    assert_eq!(h.uid, nix::unistd::getuid().as_raw());
}

#[test]
fn default_sender_is_login_at_myhostname_and_bare_names_are_qualified() {
    let s = DevSpool::new();
    let cfg = s.write_config("spool_min_free = 0\nmyhostname = host.example\n");
    let _ = cfg;
    let mut cmd = s.helper();
    cmd.arg("root");
    let id = run_with_input(cmd, b"hi\n").queue_id();
    let data = std::fs::read(s.root().join("new").join(&id)).unwrap();
    let (h, _) = entry::parse_bytes(&data, &LIMITS).unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap();
    assert_eq!(h.sender.as_str(), format!("{}@host.example", me.name));
    assert_eq!(h.recipients[0].as_str(), "root@host.example");
}

#[test]
fn null_sender_forms() {
    for f in ["", "<>"] {
        let s = DevSpool::new();
        let mut cmd = s.helper();
        cmd.args(["-f", f, "a@example.org"]);
        let id = run_with_input(cmd, b"bounce\n").queue_id();
        let data = std::fs::read(s.root().join("new").join(&id)).unwrap();
        assert_eq!(entry::parse_bytes(&data, &LIMITS).unwrap().0.sender.as_str(), "");
    }
}

/// Each case: arguments, input, expected exit code. None may leave an entry.
#[test]
fn refusals_leave_nothing_behind() {
    let big = vec![b'x'; 2049];
    let many: Vec<String> = (0..4).map(|i| format!("r{i}@example.org")).collect();
    let cases: Vec<(Vec<&str>, &[u8], i32, &str)> = vec![
        (vec!["-x", "a@example.org"], b"m\n", 64, "unknown option"),
        (vec![], b"m\n", 64, "no recipient"),
        (vec!["--", "-oQ@example.org"], b"m\n", 65, "leading dash"),
        (vec!["a b@example.org"], b"m\n", 65, "space"),
        (vec!["a@example.org\r\nRCPT TO:<x@y.example>"], b"m\n", 65, "CRLF"),
        (vec!["a@example.org\n"], b"m\n", 65, "LF"),
        (vec!["-f", "bad sender@x.example", "a@example.org"], b"m\n", 65, "bad sender"),
        (vec!["a@example.org"], b"", 65, "empty message"),
        (vec!["a@example.org"], b"nul \0 byte\n", 65, "NUL in message"),
        (vec!["a@example.org"], &big, 65, "oversize"),
        (many.iter().map(String::as_str).collect(), b"m\n", 65, "too many recipients"),
    ];
    for (args, input, code, what) in cases {
        let s = DevSpool::new();
        s.write_config("spool_min_free = 0\nmessage_size_limit = 2048\nmax_recipients = 3\n");
        let mut cmd = s.helper();
        cmd.args(&args);
        let r = run_with_input(cmd, input);
        assert_eq!(r.code, Some(code), "{what}: {r:?}");
        r.assert_one_error_line();
        assert!(r.stdout.is_empty(), "{what}: printed {:?}", r.stdout);
        assert!(s.names("new").is_empty(), "{what}: left an entry in new/");
        assert!(s.names("tmp").is_empty(), "{what}: left a file in tmp/");
    }
}

#[test]
fn an_escape_sequence_in_an_address_is_not_echoed_raw() {
    let s = DevSpool::new();
    let mut cmd = s.helper();
    cmd.arg("a\x1b[2J@example.org");
    let r = run_with_input(cmd, b"m\n");
    r.assert_code(65).assert_one_error_line();
    assert!(!r.stderr.contains('\x1b'), "raw escape echoed: {:?}", r.stderr);
    assert!(r.stderr.contains("\\x1b"));
}

#[test]
fn missing_spool_is_a_temporary_failure() {
    let s = DevSpool::new();
    std::fs::remove_dir(s.root().join("new")).unwrap();
    let mut cmd = s.helper();
    cmd.arg("a@example.org");
    run_with_input(cmd, b"m\n").assert_code(75).assert_one_error_line().assert_stderr_contains("outq init");
}

#[test]
fn wrong_mode_on_new_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = DevSpool::new();
    std::fs::set_permissions(s.root().join("new"), std::fs::Permissions::from_mode(0o3770)).unwrap();
    let mut cmd = s.helper();
    cmd.arg("a@example.org");
    run_with_input(cmd, b"m\n").assert_code(75).assert_one_error_line().assert_stderr_contains("mode 3770");
    assert!(s.names("new").is_empty());
}

#[test]
fn symlinked_spool_directory_is_not_followed() {
    let s = DevSpool::new();
    let real = s.dir.path().join("elsewhere");
    std::fs::rename(s.root().join("new"), &real).unwrap();
    std::os::unix::fs::symlink(&real, s.root().join("new")).unwrap();
    let mut cmd = s.helper();
    cmd.arg("a@example.org");
    run_with_input(cmd, b"m\n").assert_code(75).assert_stderr_contains("symbolic link");
    assert!(crate::support::list(&real).is_empty());
}

#[test]
fn free_space_reserve_refuses_with_tempfail() {
    let s = DevSpool::new();
    s.write_config("spool_min_free = 18446744073709551615\n");
    let mut cmd = s.helper();
    cmd.arg("a@example.org");
    run_with_input(cmd, b"m\n").assert_code(75).assert_one_error_line().assert_stderr_contains("spool_min_free");
    assert!(s.names("new").is_empty());
}

#[test]
fn streams_a_large_message_in_constant_memory() {
    let s = DevSpool::new();
    s.write_config("spool_min_free = 0\nmessage_size_limit = 50000000\n");
    let body = message(20_000_000);
    let mut cmd = s.helper();
    cmd.arg("a@example.org");
    let id = run_with_input(cmd, &body).queue_id();
    let data = std::fs::read(s.root().join("new").join(&id)).unwrap();
    let limits = Limits { max_recipients: 10, max_size: 50_000_000 };
    assert_eq!(entry::parse_bytes(&data, &limits).unwrap().1, body.as_slice());
}

/// Standard input from a regular file is read without waiting, in pieces
/// that end at multiples of 64 KiB in the entry (the first shortened by
/// the header); whatever the size around those boundaries, the entry
/// parses back to the same bytes with its real size.
#[test]
fn a_message_from_a_regular_file_parses_back_at_every_piece_boundary() {
    let s = DevSpool::new();
    let dir = tempfile::tempdir().unwrap();
    for size in [1, 4096, 65_000, 65_536, 65_537, 131_072, 131_073, 300_001] {
        let body = message(size);
        let input = dir.path().join(format!("m{size}"));
        std::fs::write(&input, &body).unwrap();
        let mut cmd = s.helper();
        cmd.arg("a@example.org").stdin(std::fs::File::open(&input).unwrap());
        let r = crate::support::Ran::from_output(cmd.output().unwrap());
        let id = r.queue_id();
        let data = std::fs::read(s.root().join("new").join(&id)).unwrap();
        let (h, got) = entry::parse_bytes(&data, &LIMITS).unwrap();
        assert_eq!(got, body.as_slice(), "size {size}");
        assert_eq!(h.size, size as u64);
    }
}

/// A pipe that delivers a long message in uneven bursts, with pauses:
/// every burst that arrives is put on disk while the helper waits, and the
/// entry still parses back to the same bytes.
#[test]
fn a_message_in_uneven_bursts_parses_back() {
    use std::io::Write;
    let s = DevSpool::new();
    let body = message(200_003);
    let mut cmd = s.helper();
    cmd.arg("a@example.org")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut at = 0;
    for (i, len) in [1usize, 70_000, 3, 65_533, 12_345, 65_536].iter().cycle().enumerate() {
        if at == body.len() {
            break;
        }
        let end = (at + len).min(body.len());
        stdin.write_all(&body[at..end]).unwrap();
        stdin.flush().unwrap();
        at = end;
        if i % 2 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    drop(stdin);
    let r = crate::support::Ran::from_output(child.wait_with_output().unwrap());
    let id = r.queue_id();
    let data = std::fs::read(s.root().join("new").join(&id)).unwrap();
    let (_, got) = entry::parse_bytes(&data, &LIMITS).unwrap();
    assert_eq!(got, body.as_slice());
}
