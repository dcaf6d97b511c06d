/*!
`outq setup`, the guided setup, on a configuration file of the test's own
(no privilege needed: the credentials file goes to the invoking user, named
as `queue_user`). The Debian package's use of it (non-interactive in the
postinst, on the real `/etc/outq`) is tested in `install`.

- without a terminal it asks nothing: the flags are set, everything else in
  the file stays, and a second run without flags changes nothing;
- on a terminal (a pseudo-terminal made by `script`) it asks, with the
  current values as defaults;
- wrong values and an invalid file are refused with one line, the file
  untouched.
*/

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Ran, bin, run_timeout};

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().name
}

fn setup(conf: &Path, args: &[&str], input: &str) -> Ran {
    let mut c = Command::new(bin("outq"));
    c.arg("setup").arg("--config").arg(conf).args(args);
    run_timeout(c, input.as_bytes(), Duration::from_secs(30))
}

/// A configuration owned by the test, with a comment and a key setup
/// does not manage.
fn config(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("outq.conf");
    std::fs::write(&conf, format!("# kept\nqueue_user = {}\nconnections = 2\n", me())).unwrap();
    conf
}

#[test]
fn setup_without_a_terminal_sets_the_flags_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path());
    let r = setup(
        &conf,
        &[
            "--relay",
            "mail.example.org",
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
        "correct horse battery staple\n",
    );
    r.assert_code(0);
    assert!(!r.stdout.contains("horse"), "the password is never printed: {}", r.stdout);
    let auth = dir.path().join("relay-auth");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert_eq!(
        text,
        format!(
            "# kept\nqueue_user = {}\nconnections = 2\nrelay = smtp://mail.example.org:587\nstarttls = required\n\
             relay_auth_file = {}\nadmin_address = ops@example.org\nmyhostname = host.example.org\n",
            me(),
            auth.display()
        )
    );
    let m = std::fs::metadata(&conf).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o644);
    let m = std::fs::metadata(&auth).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o600, nix::unistd::getuid().as_raw()),
        "credentials: 0600, queue owner's"
    );
    assert!(std::fs::read_to_string(&auth).unwrap().contains("\nwww1@example.org correct horse battery staple\n"));

    // Again without flags: nothing changes.
    setup(&conf, &["--non-interactive"], "").assert_code(0);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), text);

    // Only the port: the relay line changes, nothing else.
    setup(&conf, &["--non-interactive", "--port", "2525"], "").assert_code(0);
    let changed = std::fs::read_to_string(&conf).unwrap();
    assert_eq!(changed, text.replace(":587\n", ":2525\n"));

    // Authentication and the admin address removed.
    setup(&conf, &["--non-interactive", "--auth-user", "", "--admin-address", ""], "").assert_code(0);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains("relay_auth_file") && !text.contains("admin_address"), "{text}");
    assert!(!auth.exists(), "the credentials file written by setup is removed with the authentication");
}

#[test]
fn setup_refuses_wrong_values_and_invalid_files_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path());
    let before = std::fs::read_to_string(&conf).unwrap();
    for (args, input, want) in [
        (&["--relay", "bad host"][..], "", "relay bad host"),
        (&["--admin-address", "not an address"][..], "", "is not a mail address"),
        (&["--mailname=-x-"][..], "", "is not a domain name"),
        (&["--auth-user", "u"][..], "", "--auth-user needs a password"),
        (&["--auth-user", "u", "--auth-password-file", "-"][..], " padded\n", "password"),
    ] {
        let r = setup(&conf, args, input);
        assert_ne!(r.code, Some(0), "{args:?} was accepted");
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.starts_with("outq: ") && r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), before, "{args:?} changed the file");
    }
    std::fs::write(&conf, "relay = nowhere\n").unwrap();
    let r = setup(&conf, &["--relay", "mail.example.org"], "");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("correct the file first"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "relay = nowhere\n");
}

#[test]
fn setup_without_a_file_starts_from_the_documented_example() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("outq.conf");
    let r = setup(&conf, &["--non-interactive"], "");
    r.assert_code(0);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("install/outq.conf.example")).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), example, "the defaults are the example's");
    assert!(r.stdout.contains("relay: smtp://127.0.0.1:25 (STARTTLS when offered)"), "{}", r.stdout);
    assert!(r.stdout.contains("name yours with: outq setup --relay HOST"), "{}", r.stdout);
}

#[test]
fn setup_on_a_terminal_asks_with_the_current_values_as_defaults() {
    if Command::new("script").arg("--version").output().is_err() {
        if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
            panic!("script (util-linux) is not installed");
        }
        eprintln!("SKIPPED (script not installed): setup_on_a_terminal_asks_with_the_current_values_as_defaults");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path());
    // Relay, TLS, port (Enter: the TLS mode's), user, password, root's
    // address, mail name.
    let answers = "mail.example.org\nsmtps\n\nwww1\nsecret words\nops@example.org\nh.example.org\n";
    let line = format!("{} setup --config {}", bin("outq").display(), conf.display());
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]);
    let r = run_timeout(c, answers.as_bytes(), Duration::from_secs(30));
    r.assert_code(0);
    for prompt in ["Relay host", "[127.0.0.1]", "TLS:", "[opportunistic]", "Relay port [465]", "Password (not shown)"] {
        assert!(r.stdout.contains(prompt), "no {prompt:?} asked: {}", r.stdout);
    }
    let text = std::fs::read_to_string(&conf).unwrap();
    for want in [
        "relay = smtps://mail.example.org:465\n",
        "admin_address = ops@example.org\n",
        "myhostname = h.example.org\n",
        "connections = 2\n",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert!(!text.contains("starttls"), "smtps needs no starttls key: {text}");
    let auth = std::fs::read_to_string(dir.path().join("relay-auth")).unwrap();
    assert!(auth.contains("\nwww1 secret words\n"), "{auth}");
}
