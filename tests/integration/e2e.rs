/*!
The whole path against a real MTA: an unprivileged caller submits through
the installed set-group-ID helper, the queue owner runs `outq run --once`
with `relay = smtp://127.0.0.1:PORT`, and a private Postfix instance
accepts the mail and delivers it into Maildirs.

The Postfix instance is the test's own and disturbs no system Postfix: its
own `config_directory`, `queue_directory`, `data_directory` and log file in
a temporary directory, its own `syslog_name`, listening only on a free
loopback port (`127.0.0.1:PORT inet n - n - - smtpd` in its master.cf),
delivering with the `virtual` agent into `<tmp>/mail/<local part>/` as a
test account. It is started with `postfix -c DIR start` after
`postfix -c DIR check`, and stopped with `postfix -c DIR stop` in `Drop`.

Privileged like `privileged.rs`: needs root (accounts, a set-group-ID
helper, `/etc/outq/outq.conf`) and an installed Postfix (CI:
`apt-get install postfix` with `postfix/main_mailer_type` preseeded to
`No configuration`, so that no system instance is configured or started).
Without either it prints `SKIPPED (...)` and passes, unless
`OUTQ_REQUIRE_PRIVILEGED=1`, which turns the skip into a failure.

What "identical" means here: Postfix's `virtual` agent stores lines with
LF, and puts `Return-Path`, `X-Original-To`, `Delivered-To` and its own
`Received` above outq's `Received` header. Everything after outq's
`Received` line must be the submitted message with its line ends
normalised to LF (the SMTP encoding sends CRLF for CRLF and LF alike, see
`outq::deliver::wire`), dot-stuffing undone by Postfix.
*/

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    Account, PrivilegedLock, Ran, SystemConfig, TestAccounts, as_user, install_helper, list, privileged,
    privileged_lock, root_tempdir, run_timeout, wait_until,
};

/// Upper bound for one program run or wait.
const TIMEOUT: Duration = Duration::from_secs(120);

const POSTFIX: &str = "/usr/sbin/postfix";
const POSTCONF: &str = "/usr/sbin/postconf";

/// The domain the private Postfix delivers into Maildirs.
const DOMAIN: &str = "e2e.test";
/// outq's `myhostname`, as named in its Received header.
const OUTQ_HOST: &str = "client.e2e.test";
const SENDER: &str = "app@example.org";

const QUEUES: [&str; 8] = ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt", "state"];

/// Root, and Postfix installed. Same contract as [`privileged`]: a visible
/// skip line, or a failure under `OUTQ_REQUIRE_PRIVILEGED=1`.
fn e2e_possible(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    if Path::new(POSTFIX).exists() && Path::new(POSTCONF).exists() {
        return true;
    }
    let why = "needs Postfix: apt-get install postfix, with postfix/main_mailer_type = No configuration";
    if std::env::var_os("OUTQ_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test} {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED ({why}): {test}");
    false
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Postfix programs write their errors to standard error only when it is a
/// terminal (otherwise to the log, which does not exist before the start):
/// rerun `args` under script(1) to show why it failed.
fn postfix_diagnostics(args: &[&str]) -> String {
    let line = std::iter::once(POSTFIX).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let mut c = Command::new("/usr/bin/script");
    c.args(["-qec", &line, "/dev/null"]);
    let r = run_timeout(c, b"", TIMEOUT);
    format!("{}{}", r.stdout, r.stderr)
}

// ---------------------------------------------------------------------------
// A private Postfix instance

struct PrivatePostfix {
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PrivatePostfix {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Where the Maildir of `local`@[`DOMAIN`] is.
    fn maildir(&self, local: &str) -> PathBuf {
        self.dir.path().join("mail").join(local)
    }

    fn postfix(&self, verb: &str) -> Ran {
        let conf = self.conf().display().to_string();
        let mut c = Command::new(POSTFIX);
        c.args(["-c", &conf, verb]).current_dir("/");
        run_timeout(c, b"", TIMEOUT)
    }

    /// Configure and start an instance delivering `locals`@[`DOMAIN`] into
    /// Maildirs owned by `owner`; with `tls` (certificate and key, PEM), it
    /// requires STARTTLS of its clients.
    fn start(owner: &Account, locals: &[&str], tls: Option<(&str, &str)>) -> PrivatePostfix {
        let dir = root_tempdir("oqt-postfix-");
        let base = dir.path();
        let (etc, queue, data, mail) = (base.join("etc"), base.join("queue"), base.join("data"), base.join("mail"));
        for d in [&etc, &queue, &data, &mail] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let postfix_user = nix::unistd::User::from_name("postfix").unwrap().expect("the postfix account");
        std::os::unix::fs::chown(&data, Some(postfix_user.uid.as_raw()), None).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&mail, Some(owner.uid), Some(owner.gid)).unwrap();

        let port = free_port();
        let tls_cf = match tls {
            Some((cert, key)) => {
                std::fs::write(etc.join("cert.pem"), cert).unwrap();
                std::fs::write(etc.join("key.pem"), key).unwrap();
                std::fs::set_permissions(etc.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
                format!(
                    "smtpd_tls_cert_file = {e}/cert.pem\nsmtpd_tls_key_file = {e}/key.pem\n\
                     smtpd_tls_security_level = encrypt\nsmtpd_tls_loglevel = 1\n\
                     smtpd_tls_received_header = yes\n",
                    e = etc.display()
                )
            }
            None => String::new(),
        };
        let vmailbox: String = locals.iter().map(|l| format!("{l}@{DOMAIN} {l}/\n")).collect();
        std::fs::write(etc.join("vmailbox"), vmailbox).unwrap();
        let main_cf = format!(
            "# Private instance for outq's end-to-end test.\n\
             compatibility_level = 3.6\n\
             config_directory = {etc}\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             syslog_name = postfix-outq-e2e-{pid}\n\
             maillog_file = {base}/postfix.log\n\
             maillog_file_prefixes = {base}\n\
             myhostname = mx.{DOMAIN}\n\
             mydomain = {DOMAIN}\n\
             myorigin = $myhostname\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             # Neither rewrite nor complete the headers of what outq sends.\n\
             local_header_rewrite_clients =\n\
             always_add_missing_headers = no\n\
             smtputf8_enable = no\n\
             alias_maps =\n\
             alias_database =\n\
             biff = no\n\
             virtual_mailbox_domains = {DOMAIN}\n\
             virtual_mailbox_base = {mail}\n\
             virtual_mailbox_maps = texthash:{etc}/vmailbox\n\
             virtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{gid}\n\
             virtual_minimum_uid = {uid}\n\
             {tls_cf}",
            tls_cf = tls_cf,
            etc = etc.display(),
            queue = queue.display(),
            data = data.display(),
            base = base.display(),
            mail = mail.display(),
            pid = std::process::id(),
            uid = owner.uid,
            gid = owner.gid,
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
        // No chroot (the queue directory holds no copy of /etc), no pickup
        // of local submissions beyond the defaults Postfix needs.
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup    unix  n - n 60    1 pickup\n\
             cleanup   unix  n - n -     0 cleanup\n\
             qmgr      unix  n - n 300   1 qmgr\n\
             rewrite   unix  - - n -     - trivial-rewrite\n\
             bounce    unix  - - n -     0 bounce\n\
             defer     unix  - - n -     0 bounce\n\
             trace     unix  - - n -     0 bounce\n\
             verify    unix  - - n -     1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n -     - proxymap\n\
             proxywrite unix - - n -     1 proxymap\n\
             smtp      unix  - - n -     - smtp\n\
             relay     unix  - - n -     - smtp\n\
             showq     unix  n - n -     - showq\n\
             error     unix  - - n -     - error\n\
             retry     unix  - - n -     - error\n\
             discard   unix  - - n -     - discard\n\
             local     unix  - n n -     - local\n\
             virtual   unix  - n n -     - virtual\n\
             anvil     unix  - - n -     1 anvil\n\
             tlsmgr    unix  - - n 1000? 1 tlsmgr\n\
             scache    unix  - - n -     1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(etc.join("master.cf"), master_cf).unwrap();

        let mut pf = PrivatePostfix { dir, port, running: false };
        let conf = pf.conf().display().to_string();
        if pf.postfix("check").code != Some(0) {
            panic!("postfix -c {conf} check failed:\n{}", postfix_diagnostics(&["-c", &conf, "check"]));
        }
        let r = pf.postfix("start");
        if r.code != Some(0) {
            panic!(
                "postfix -c {conf} start failed: {r:?}\n{}\n{}",
                postfix_diagnostics(&["-c", &conf, "start"]),
                pf.log()
            );
        }
        pf.running = true;
        let listening = wait_until(Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(listening, "the private Postfix does not listen on 127.0.0.1:{port}; its log:\n{}", pf.log());
        pf
    }

    /// The files in `local`'s Maildir new/.
    fn delivered(&self, local: &str) -> Vec<Vec<u8>> {
        let new = self.maildir(local).join("new");
        if !new.exists() {
            return Vec::new();
        }
        list(&new).iter().map(|n| std::fs::read(new.join(n)).unwrap()).collect()
    }

    /// Wait until `local` has `n` messages (never more).
    #[track_caller]
    fn wait_for(&self, local: &str, n: usize) -> Vec<Vec<u8>> {
        let ok = wait_until(TIMEOUT, || self.delivered(local).len() >= n);
        let got = self.delivered(local);
        assert!(
            ok && got.len() == n,
            "{local}@{DOMAIN} has {} messages, expected {n}; Postfix log:\n{}",
            got.len(),
            self.log()
        );
        got
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if self.running {
            // Synchronous: postfix-script waits for the master to exit (and
            // kills it after 5 s), so the directory can then be removed.
            let conf = self.conf().display().to_string();
            let _ = Command::new(POSTFIX)
                .args(["-c", &conf, "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// The outq installation

/// The helper installed set-group-ID for a test group, the system
/// configuration pointing at the private Postfix, and a spool owned by a
/// test queue owner. Drop order: Postfix stopped, configuration restored,
/// spool and binaries removed, accounts deleted, lock released.
struct Install {
    postfix: PrivatePostfix,
    _config: SystemConfig,
    spool: PathBuf,
    _spool_dir: tempfile::TempDir,
    helper: PathBuf,
    outq: PathBuf,
    _bin_dir: tempfile::TempDir,
    acc: TestAccounts,
    _lock: PrivilegedLock,
}

impl Install {
    /// With `tls`, Postfix requires STARTTLS with a certificate of a test
    /// CA, and outq has `starttls = required` and that CA as `tls_ca_file`.
    fn new(locals: &[&str], tls: bool) -> Install {
        let lock = privileged_lock();
        let acc = TestAccounts::create();
        let bin_dir = root_tempdir("oqt-bin-");
        let helper = install_helper(bin_dir.path(), "outq-enqueue", acc.group.gid, 0o2755);
        let outq = crate::support::install_outq(bin_dir.path());
        let spool_dir = root_tempdir("oqt-spool-");
        let spool = spool_dir.path().join("spool");
        // The Maildirs belong to the second test account.
        let (postfix, tls_cf) = if tls {
            let (ca, cert, key) = test_pki();
            let ca_file = spool_dir.path().join("ca.pem");
            std::fs::write(&ca_file, ca).unwrap();
            std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let pf = PrivatePostfix::start(&acc.second, locals, Some((&cert, &key)));
            (pf, format!("starttls = required\ntls_ca_file = {}\n", ca_file.display()))
        } else {
            // The default starttls (opportunistic): this Postfix offers no
            // STARTTLS, so the session goes on in the clear.
            (PrivatePostfix::start(&acc.second, locals, None), "starttls = opportunistic\n".to_owned())
        };
        let config = SystemConfig::take();
        config.write(&format!(
            "spool_directory = {}\nspool_min_free = 0\nmyhostname = {OUTQ_HOST}\n\
             relay = smtp://127.0.0.1:{}\n{tls_cf}connections = 2\n",
            spool.display(),
            postfix.port
        ));
        let inst = Install {
            postfix,
            _config: config,
            spool,
            _spool_dir: spool_dir,
            helper,
            outq,
            _bin_dir: bin_dir,
            acc,
            _lock: lock,
        };
        let spool = inst.spool.display().to_string();
        let mut c = Command::new(&inst.outq);
        c.args(["init", "--spool", &spool, "--user", &inst.acc.owner.name, "--group", &inst.acc.group.name]);
        run_timeout(c, b"", TIMEOUT).assert_code(0);
        inst
    }

    /// The caller submits `body` through the set-group-ID helper.
    #[track_caller]
    fn submit(&self, sender: &str, rcpts: &[String], body: &[u8]) -> String {
        let mut c = as_user(&self.acc.caller, &[], &self.helper);
        c.args(["-f", sender]).args(rcpts);
        run_timeout(c, body, TIMEOUT).queue_id()
    }

    /// `outq run --once --log stderr` as the queue owner, with the system
    /// configuration; must succeed. Returns the log.
    #[track_caller]
    fn run_once(&self) -> String {
        let mut c = as_user(&self.acc.owner, &[], &self.outq);
        c.args(["run", "--once", "--log", "stderr"]);
        let r = run_timeout(c, b"", TIMEOUT);
        r.assert_code(0);
        r.stderr
    }

    fn names(&self, q: &str) -> Vec<String> {
        list(&self.spool.join(q))
    }

    #[track_caller]
    fn assert_spool_empty_but(&self, except: &[&str], log: &str) {
        for q in QUEUES.iter().filter(|q| !except.contains(q)) {
            assert_eq!(self.names(q), Vec::<String>::new(), "{q}/ is not empty; runner log:\n{log}");
        }
    }

    fn relay(&self) -> String {
        format!("relay=127.0.0.1[127.0.0.1]:{}", self.postfix.port)
    }

    /// outq's Received line for entry `id`, up to the date.
    fn received_prefix(&self, id: &str) -> String {
        let c = &self.acc.caller;
        format!("Received: from userid {} ({}) by {OUTQ_HOST} (outq) id {id}; ", c.uid, c.name)
    }
}

/// A test CA (PEM), and a certificate it signed for 127.0.0.1 with its key
/// (PEM).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, "outq e2e test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "mx.e2e.test");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn rcpt(local: &str) -> String {
    format!("{local}@{DOMAIN}")
}

/// The submitted message as the Maildir holds it: every CRLF, bare CR and
/// LF a LF, and a last line always terminated.
fn as_stored(submitted: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(submitted.len());
    let mut i = 0;
    while i < submitted.len() {
        match submitted[i] {
            b'\r' => {
                out.push(b'\n');
                if submitted.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// A delivered file split at outq's Received header: the lines above it
/// (Postfix's), and what follows it.
struct Stored {
    above: Vec<String>,
    after: Vec<u8>,
}

fn split_at_received(file: &[u8], received_prefix: &str) -> Option<Stored> {
    let mut above = Vec::new();
    let mut pos = 0;
    while pos < file.len() {
        let end = file[pos..].iter().position(|&b| b == b'\n').map_or(file.len(), |n| pos + n + 1);
        let line = String::from_utf8_lossy(&file[pos..end]).trim_end_matches('\n').to_owned();
        if line.starts_with(received_prefix) {
            return Some(Stored { above, after: file[end..].to_vec() });
        }
        if line.is_empty() {
            return None; // end of the header: no outq Received line
        }
        above.push(line);
        pos = end;
    }
    None
}

/// The lines Postfix may put above outq's Received header, and only those.
#[track_caller]
fn assert_postfix_trace(above: &[String], to: &str, sender: &str) {
    assert_eq!(above.first().map(String::as_str), Some(format!("Return-Path: <{sender}>").as_str()), "{above:#?}");
    assert!(above.iter().any(|l| *l == format!("Delivered-To: {to}")), "no Delivered-To: {to} in {above:#?}");
    for l in above {
        let known =
            ["Return-Path: ", "X-Original-To: ", "Delivered-To: ", "Received: "].iter().any(|p| l.starts_with(p))
                || l.starts_with([' ', '\t']);
        assert!(known, "Postfix added an unexpected line above outq's Received header: {l:?} in {above:#?}");
    }
    let postfix_received = above.iter().filter(|l| l.starts_with("Received: ")).count();
    assert_eq!(postfix_received, 1, "{above:#?}");
}

/// Check every recipient's Maildir: one message per entry sent to it,
/// identical to what was submitted.
#[track_caller]
fn assert_delivered(inst: &Install, sender: &str, expected: &BTreeMap<String, Vec<(String, Vec<u8>)>>) {
    for (local, msgs) in expected {
        let to = rcpt(local);
        let files = inst.postfix.wait_for(local, msgs.len());
        for (id, body) in msgs {
            let prefix = inst.received_prefix(id);
            let found: Vec<Stored> = files.iter().filter_map(|f| split_at_received(f, &prefix)).collect();
            assert_eq!(found.len(), 1, "{to}: expected one file with {prefix:?}");
            let stored = &found[0];
            assert_postfix_trace(&stored.above, &to, sender);
            let want = as_stored(body);
            if stored.after != want {
                let at = stored
                    .after
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(want.len().min(stored.after.len()));
                let show =
                    |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned();
                panic!(
                    "{to}: message {id} differs from what was submitted at byte {at} (stored {} bytes, expected {}):\n\
                     stored:   {:?}\nexpected: {:?}",
                    stored.after.len(),
                    want.len(),
                    show(&stored.after),
                    show(&want)
                );
            }
        }
    }
}

/// A message with the headers Postfix would otherwise add, lines that need
/// dot-stuffing, and mixed line ends.
fn small_message(to: &[String]) -> Vec<u8> {
    format!(
        "From: App <{SENDER}>\r\nTo: {}\r\nSubject: outq e2e small\r\nDate: Fri, 28 Nov 2025 16:00:00 +0000\r\n\
         Message-ID: <e2e-small@example.org>\r\n\r\nfirst line\r\n.leading dot\r\n..two dots\r\n.\r\n\
         an LF line\nFrom the start of a line\r\n. dot space\r\nlast line\r\n",
        to.join(", ")
    )
    .into_bytes()
}

/// About 1 MB with many lines starting with '.', ending without a line end.
fn large_message(to: &[String]) -> Vec<u8> {
    let mut m = format!(
        "From: App <{SENDER}>\r\nTo: {}\r\nSubject: outq e2e large\r\nDate: Fri, 28 Nov 2025 16:00:01 +0000\r\n\
         Message-ID: <e2e-large@example.org>\r\n\r\n",
        to.join(", ")
    )
    .into_bytes();
    let mut i = 0u32;
    while m.len() < 1_000_000 {
        let line = match i % 7 {
            0 => format!(".{i:07} a line that starts with a dot, stuffed on the wire\r\n"),
            1 => ".\r\n".to_owned(),
            2 => format!("{i:07} {}\n", "x".repeat(900)),
            _ => format!("{i:07} 0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"),
        };
        m.extend_from_slice(line.as_bytes());
        i += 1;
    }
    m.extend_from_slice(b"..the last line, unterminated");
    m
}

#[track_caller]
fn assert_sent_lines(log: &str, id: &str, rcpts: &[String], relay: &str) {
    for r in rcpts {
        let head = format!("{id}: to=<{r}>, {relay}, ");
        assert!(
            log.lines().any(|l| l.contains(&head) && l.contains("status=sent (250 ")),
            "no 'status=sent' line for {r} of {id} via {relay} in\n{log}"
        );
    }
}

#[test]
fn e2e_postfix_accepts_and_delivers_into_maildirs() {
    if !e2e_possible("e2e_postfix_accepts_and_delivers_into_maildirs") {
        return;
    }
    let locals = ["alice", "bob", "carol"];
    let inst = Install::new(&locals, false);
    let all: Vec<String> = locals.iter().map(|l| rcpt(l)).collect();

    // Two messages: three recipients with dots and mixed line ends, and
    // 1 MB to two of them.
    let small = small_message(&all);
    let large_to = vec![rcpt("alice"), rcpt("bob")];
    let large = large_message(&large_to);
    let id_small = inst.submit(SENDER, &all, &small);
    let id_large = inst.submit(SENDER, &large_to, &large);
    assert_eq!(inst.names("new").len(), 2);

    let log = inst.run_once();
    let relay = inst.relay();
    assert_sent_lines(&log, &id_small, &all, &relay);
    assert_sent_lines(&log, &id_large, &large_to, &relay);
    for id in [&id_small, &id_large] {
        assert!(log.contains(&format!("{id}: removed (delivered)")), "{id} not removed:\n{log}");
    }
    inst.assert_spool_empty_but(&[], &log);

    let mut expected: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for l in locals {
        expected.entry(l.to_owned()).or_default().push((id_small.clone(), small.clone()));
    }
    for l in ["alice", "bob"] {
        expected.entry(l.to_owned()).or_default().push((id_large.clone(), large.clone()));
    }
    assert_delivered(&inst, SENDER, &expected);
    let pf_log = inst.postfix.log();
    for r in &all {
        assert!(
            pf_log.lines().any(|l| l.contains(&format!("to=<{r}>, relay=virtual")) && l.contains("status=sent")),
            "Postfix did not log a delivery to {r}:\n{pf_log}"
        );
    }

    // A second pass has nothing to do, and nothing arrives twice.
    let log = inst.run_once();
    assert!(!log.contains("status="), "a second pass delivered:\n{log}");
    std::thread::sleep(Duration::from_millis(500));
    for (local, msgs) in &expected {
        assert_eq!(inst.postfix.delivered(local).len(), msgs.len(), "{local} got a message twice");
    }
    let _ = writeln!(
        std::io::stderr(),
        "e2e: Postfix on 127.0.0.1:{} received {} + {} bytes for {} + {} recipients, stored identically",
        inst.postfix.port,
        small.len(),
        large.len(),
        all.len(),
        large_to.len()
    );
}

/// A recipient Postfix does not know fails with its 550 reply, the entry
/// goes to failed/, and the failure notice the runner queues for the
/// sender travels the same way back into the sender's own Maildir.
#[test]
fn e2e_postfix_refuses_an_unknown_mailbox_and_the_notice_comes_back() {
    if !e2e_possible("e2e_postfix_refuses_an_unknown_mailbox_and_the_notice_comes_back") {
        return;
    }
    let inst = Install::new(&["dave", "app"], false);
    let sender = rcpt("app");
    let (dave, unknown) = (rcpt("dave"), rcpt("no-such-user"));
    let to = vec![dave.clone(), unknown.clone()];
    let body = small_message(&to);
    let id = inst.submit(&sender, &to, &body);

    let log = inst.run_once();
    assert_sent_lines(&log, &id, std::slice::from_ref(&dave), &inst.relay());
    let head = format!("{id}: to=<{unknown}>, {}, ", inst.relay());
    assert!(
        log.lines().any(|l| l.contains(&head) && l.contains("status=failed (550 5.1.1 ")),
        "no 'status=failed (550 5.1.1' line for {unknown} in\n{log}"
    );
    assert!(log.contains(&format!("{id}: moved to failed/ (1 recipient(s) failed)")), "{log}");
    assert_eq!(inst.names("failed"), vec![id.clone()], "{log}");
    let state = std::fs::read_to_string(inst.spool.join("state").join(&id)).unwrap();
    assert!(state.lines().any(|l| l.starts_with(&format!("rcpt <{dave}> sent 250 "))), "{state}");
    assert!(
        state.lines().any(|l| l.starts_with(&format!("rcpt <{unknown}> failed 550 5.1.1 "))
            && l.contains("User unknown in virtual mailbox table")),
        "{state}"
    );
    // The failure notice, queued into new/ for the next pass.
    let notice_line = format!("{id}: sender notification: ");
    let notice = log
        .lines()
        .find_map(|l| l.split_once(&notice_line).map(|(_, n)| n.trim().to_owned()))
        .unwrap_or_else(|| panic!("no sender notification queued:\n{log}"));
    assert_eq!(inst.names("new"), vec![notice.clone()], "{log}");
    let mut expected = BTreeMap::new();
    expected.insert("dave".to_owned(), vec![(id.clone(), body)]);
    assert_delivered(&inst, &sender, &expected);

    // The next pass delivers the notice, from the null sender.
    let log = inst.run_once();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{notice}: to=<{sender}>, {}, ", inst.relay()))
                && l.contains("status=sent (250 ")),
        "the notice was not sent:\n{log}"
    );
    inst.assert_spool_empty_but(&["failed", "state"], &log);
    assert_eq!(inst.names("state"), vec![id.clone()], "{log}");
    let files = inst.postfix.wait_for("app", 1);
    let text = String::from_utf8_lossy(&files[0]).into_owned();
    assert!(text.starts_with("Return-Path: <>\n"), "the notice does not come from the null sender:\n{text}");
    assert!(text.contains(&unknown), "the notice does not name {unknown}:\n{text}");
    assert!(text.contains(&id) || text.contains("550 5.1.1"), "the notice does not describe the failure:\n{text}");
}

/// Postfix requiring STARTTLS (`smtpd_tls_security_level = encrypt`) with
/// a certificate of a test CA; outq with `starttls = required` and that CA:
/// rustls against OpenSSL, and the message still arrives intact.
#[test]
fn e2e_postfix_with_required_starttls() {
    if !e2e_possible("e2e_postfix_with_required_starttls") {
        return;
    }
    let inst = Install::new(&["erin", "frank"], true);
    let to = vec![rcpt("erin"), rcpt("frank")];
    let body = small_message(&to);
    let id = inst.submit(SENDER, &to, &body);
    let log = inst.run_once();
    assert_sent_lines(&log, &id, &to, &inst.relay());
    inst.assert_spool_empty_but(&[], &log);
    let mut expected = BTreeMap::new();
    for l in ["erin", "frank"] {
        expected.insert(l.to_owned(), vec![(id.clone(), body.clone())]);
    }
    assert_delivered(&inst, SENDER, &expected);
    let pf_log = inst.postfix.log();
    let tls_line = pf_log
        .lines()
        .find(|l| l.contains("TLS connection established from localhost[127.0.0.1]"))
        .unwrap_or_else(|| panic!("Postfix logged no TLS connection:\n{pf_log}"));
    let stored = String::from_utf8_lossy(&inst.postfix.delivered("erin")[0]).into_owned();
    assert!(stored.contains("with ESMTPS id "), "Postfix's Received header does not say ESMTPS:\n{stored}");
    let _ = writeln!(std::io::stderr(), "e2e: {}", tls_line.split_once("]: ").map_or(tls_line, |(_, t)| t));
}
