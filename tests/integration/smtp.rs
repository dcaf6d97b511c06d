/*!
SMTP delivery (`outq::deliver::smtp::Smtp`) against an in-process server.

The server listens on 127.0.0.1, answers each command by a per-test script
(falling back to an ordinary, permissive server), and records every command
line and the exact DATA bytes it received, per connection. The transport is
driven through the `Transport` trait with messages stored in real entry
files, as the runner will. Timeouts are short so that the stalls under test
cost well under a second each.
*/

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outq::config::{Relay, RunnerConfig, StartTls};
use outq::deliver::smtp::Smtp;
use outq::deliver::{Outcome, Outgoing, Status, Transport, wire};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::entry::{self, Header};
use outq_spool::queue_id::QueueId;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

const MYHOSTNAME: &str = "client.example";
const RECEIVED: &str = "Received: from userid 1000 (tester) by client.example (outq) id 0692A1B2C3D4E5F60718293A4B; \
                        Fri, 28 Nov 2025 16:00:00 +0000";

// ---------------------------------------------------------------- server

/// What the server does about one command.
enum Act {
    /// Send these reply lines (CRLF-separated, the last CRLF is added).
    Reply(String),
    /// Drop the connection without a word.
    Close,
    /// Never answer; wait for the client to give up.
    Hang,
    /// What an ordinary server would do.
    Default,
}

/// Consulted for every command line (without CRLF), for the greeting as
/// `GREETING` and for the end of the data as `.`.
type Script = Arc<dyn Fn(&str) -> Act + Send + Sync>;

#[derive(Clone)]
struct Opts {
    greeting: String,
    /// EHLO keywords after the host name line (STARTTLS is hidden once TLS
    /// is up).
    extensions: Vec<String>,
    tls: Option<Arc<ServerConfig>>,
    implicit_tls: bool,
    /// Credentials required before MAIL (530 until they are given).
    auth: Option<(String, String)>,
    /// Drop the connection after this many bytes of message data.
    close_in_data_after: Option<usize>,
    script: Script,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            greeting: "220 test.example ESMTP".into(),
            extensions: vec!["PIPELINING".into(), "ENHANCEDSTATUSCODES".into()],
            tls: None,
            implicit_tls: false,
            auth: None,
            close_in_data_after: None,
            script: Arc::new(|_| Act::Default),
        }
    }
}

/// What one connection carried.
#[derive(Debug, Clone, Default)]
struct Conversation {
    commands: Vec<String>,
    /// Each message's bytes as received after DATA, `.` CRLF included.
    data: Vec<Vec<u8>>,
    tls: bool,
    authenticated: bool,
}

impl Conversation {
    fn count(&self, prefix: &str) -> usize {
        self.commands.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// The commands reduced to their verbs, for comparing sequences.
    fn verbs(&self) -> Vec<&str> {
        self.commands.iter().map(|c| c.split([' ', ':']).next().unwrap_or("")).collect()
    }
}

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Conversation>>>,
}

impl Server {
    fn start(opts: Opts) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let idx = {
                    let mut l = shared.lock().unwrap();
                    l.push(Conversation::default());
                    l.len() - 1
                };
                let (opts, log) = (opts.clone(), Arc::clone(&shared));
                std::thread::spawn(move || {
                    let _ = serve(tcp, &opts, &log, idx);
                });
            }
        });
        Server { addr, log }
    }

    fn relay(&self) -> Relay {
        Relay::Smtp { host: "127.0.0.1".into(), port: self.addr.port(), implicit_tls: false }
    }

    fn name(&self) -> String {
        format!("127.0.0.1[127.0.0.1]:{}", self.addr.port())
    }

    fn conversations(&self) -> Vec<Conversation> {
        self.log.lock().unwrap().clone()
    }

    /// The only conversation. The server records each command before it
    /// answers, so everything the client saw answered is there.
    fn only(&self) -> Conversation {
        let c = self.conversations();
        assert_eq!(c.len(), 1, "expected one connection: {c:#?}");
        c.into_iter().next().unwrap()
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    Gone,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
            Io::Gone => Ok(0),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(s) => s.write(buf),
            Io::Gone => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
            Io::Gone => Ok(()),
        }
    }
}

struct Peer<'a> {
    io: Io,
    buf: Vec<u8>,
    log: &'a Mutex<Vec<Conversation>>,
    idx: usize,
}

impl Peer<'_> {
    fn record(&self, f: impl FnOnce(&mut Conversation)) {
        f(&mut self.log.lock().unwrap()[self.idx]);
    }

    /// One line with its line end, or None at the end of the stream.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=lf).collect());
            }
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn send(&mut self, reply: &str) -> io::Result<()> {
        self.io.write_all(format!("{reply}\r\n").as_bytes())?;
        self.io.flush()
    }

    fn upgrade(&mut self, config: &Arc<ServerConfig>) {
        assert!(self.buf.is_empty(), "client pipelined past STARTTLS");
        if let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) {
            let conn = ServerConnection::new(Arc::clone(config)).unwrap();
            self.io = Io::Tls(Box::new(StreamOwned::new(conn, tcp)));
            self.record(|c| c.tls = true);
        }
    }

    fn hang(&mut self) {
        let _ = io::copy(&mut self.io, &mut io::sink());
    }
}

fn serve(tcp: TcpStream, opts: &Opts, log: &Mutex<Vec<Conversation>>, idx: usize) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut p = Peer { io: Io::Plain(tcp), buf: Vec::new(), log, idx };
    if opts.implicit_tls {
        p.upgrade(opts.tls.as_ref().unwrap());
    }
    match (opts.script)("GREETING") {
        Act::Reply(r) => p.send(&r)?,
        Act::Default => p.send(&opts.greeting)?,
        Act::Close => return Ok(()),
        Act::Hang => {
            p.hang();
            return Ok(());
        }
    }
    let mut authenticated = false;
    while let Some(line) = p.line() {
        let cmd = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
        p.record(|c| c.commands.push(cmd.clone()));
        let upper = cmd.to_ascii_uppercase();
        let reply = match (opts.script)(&cmd) {
            Act::Reply(r) => r,
            Act::Close => return Ok(()),
            Act::Hang => {
                p.hang();
                return Ok(());
            }
            Act::Default => {
                if upper.starts_with("AUTH LOGIN") {
                    p.send("334 VXNlcm5hbWU6")?;
                    let user = p.line().unwrap_or_default();
                    p.send("334 UGFzc3dvcmQ6")?;
                    let pass = p.line().unwrap_or_default();
                    let decode = |l: &[u8]| BASE64.decode(l.trim_ascii_end()).unwrap_or_default();
                    let given = [b"\0".as_slice(), &decode(&user), b"\0", &decode(&pass)].concat();
                    authenticated = check_auth(opts, &given);
                    p.record(|c| c.authenticated = authenticated);
                    p.send(if authenticated { "235 2.7.0 ok" } else { "535 5.7.8 bad credentials" })?;
                    continue;
                }
                if let Some(b64) = upper.strip_prefix("AUTH PLAIN ").map(|_| &cmd[11..]) {
                    authenticated = check_auth(opts, &BASE64.decode(b64).unwrap_or_default());
                    p.record(|c| c.authenticated = authenticated);
                    p.send(if authenticated { "235 2.7.0 ok" } else { "535 5.7.8 bad credentials" })?;
                    continue;
                }
                default_reply(opts, &upper, matches!(p.io, Io::Tls(_)), authenticated)
            }
        };
        p.send(&reply)?;
        if upper == "STARTTLS" && reply.starts_with("220") {
            p.upgrade(opts.tls.as_ref().unwrap());
        } else if upper == "QUIT" {
            return Ok(());
        } else if upper == "DATA" && reply.starts_with("354") {
            let mut data = Vec::new();
            loop {
                let Some(l) = p.line() else { return Ok(()) };
                data.extend_from_slice(&l);
                if opts.close_in_data_after.is_some_and(|n| data.len() >= n) {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
            }
            p.record(|c| c.data.push(data));
            match (opts.script)(".") {
                Act::Reply(r) => p.send(&r)?,
                Act::Default => p.send("250 2.0.0 Ok: queued as TEST")?,
                Act::Close => return Ok(()),
                Act::Hang => {
                    p.hang();
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn check_auth(opts: &Opts, plain: &[u8]) -> bool {
    let (user, pass) = opts.auth.as_ref().unwrap();
    plain == [b"\0".as_slice(), user.as_bytes(), b"\0", pass.as_bytes()].concat()
}

fn default_reply(opts: &Opts, upper: &str, tls: bool, authenticated: bool) -> String {
    let verb = upper.split([' ', ':']).next().unwrap_or("");
    match verb {
        "EHLO" => {
            let mut lines = vec!["250-test.example".to_owned()];
            lines.extend(opts.extensions.iter().filter(|e| !(tls && *e == "STARTTLS")).map(|e| format!("250-{e}")));
            let last = lines.pop().unwrap();
            lines.push(last.replacen("250-", "250 ", 1));
            lines.join("\r\n")
        }
        "HELO" => "250 test.example".into(),
        "STARTTLS" if opts.tls.is_some() && !tls => "220 2.0.0 Ready to start TLS".into(),
        "STARTTLS" => "454 4.7.0 TLS not available".into(),
        "MAIL" if opts.auth.is_some() && !authenticated => "530 5.7.0 Authentication required".into(),
        "MAIL" => "250 2.1.0 Ok".into(),
        "RCPT" => "250 2.1.5 Ok".into(),
        "DATA" => "354 End data with <CR><LF>.<CR><LF>".into(),
        "RSET" | "NOOP" => "250 2.0.0 Ok".into(),
        "QUIT" => "221 2.0.0 Bye".into(),
        _ => "502 5.5.2 Error: command not recognized".into(),
    }
}

/// A script answering `RCPT TO:<rNNN@...>` with code NNN.
fn rcpt_by_local_part(line: &str) -> Act {
    match line.strip_prefix("RCPT TO:<r").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) => {
            let class = code / 100;
            Act::Reply(format!("{code} {class}.1.0 r{code} answered {code}"))
        }
        None => Act::Default,
    }
}

// ---------------------------------------------------------------- messages

/// A message in a real entry file.
struct Msg {
    file: std::fs::File,
    id: QueueId,
    sender: Sender,
    recipients: Vec<Mailbox>,
    body_offset: u64,
    body: Vec<u8>,
}

impl Msg {
    fn new(recipients: &[&str], body: &[u8]) -> Msg {
        let header = Header {
            id: QueueId::parse("0692A1B2C3D4E5F60718293A4B").unwrap(),
            arrival: 1_764_345_600,
            uid: 1000,
            login: Some("tester".into()),
            sender: Sender::parse(b"tester@client.example").unwrap(),
            recipients: recipients.iter().map(|r| Mailbox::parse(r.as_bytes()).unwrap()).collect(),
            size: body.len() as u64,
        };
        let bytes = entry::to_bytes(&header, body);
        let body_offset = header.encode().bytes.len() as u64;
        assert_eq!(&bytes[body_offset as usize..][..body.len()], body);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        Msg {
            file,
            id: header.id,
            sender: header.sender,
            recipients: header.recipients,
            body_offset,
            body: body.to_vec(),
        }
    }

    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            id: &self.id,
            sender: &self.sender,
            recipients: &self.recipients,
            received: RECEIVED,
            entry: &self.file,
            body_offset: self.body_offset,
            size: self.body.len() as u64,
        }
    }

    /// What must reach the server after DATA.
    fn wire(&self) -> Vec<u8> {
        wire::encode(&[RECEIVED.as_bytes(), b"\r\n", &self.body].concat())
    }
}

/// A body that needs every part of the encoding.
const BODY: &[u8] = b"Subject: test\nFrom: tester@client.example\n\n.leading dot\n..two dots\r\nbare\rCR\n.\nlast line";

fn cfg(relays: Vec<Relay>) -> RunnerConfig {
    RunnerConfig {
        relays,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        data_timeout: Duration::from_secs(2),
        starttls: StartTls::Off,
        ..RunnerConfig::default()
    }
}

fn smtp(cfg: &RunnerConfig) -> Smtp {
    Smtp::new(cfg, MYHOSTNAME).unwrap()
}

fn statuses(outcomes: &[Outcome]) -> Vec<Status> {
    outcomes.iter().map(|o| o.status).collect()
}

#[track_caller]
fn assert_all(outcomes: &[Outcome], status: Status, reply_contains: &str) {
    for o in outcomes {
        assert_eq!(o.status, status, "{outcomes:#?}");
        assert!(o.reply.contains(reply_contains), "reply {:?} lacks {reply_contains:?}", o.reply);
        assert!(!o.reply.contains('\n') && !o.reply.contains('\r'), "{:?}", o.reply);
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- TLS

/// A test CA, and a server configuration with a certificate it signed for
/// `localhost` and 127.0.0.1.
struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, "outq test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    Pki { ca_pem: ca_cert.pem(), server: Arc::new(server) }
}

fn write_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

// ---------------------------------------------------------------- tests

#[test]
fn smtp_delivers_two_recipients_with_the_exact_encoding() {
    let server = Server::start(Opts::default());
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(&["alice@example.org", "bob@example.net"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!(o, &Outcome::new(Status::Sent, "250 2.0.0 Ok: queued as TEST", server.name()));
    }
    t.close();
    let c = server.only();
    assert_eq!(
        c.commands,
        [
            "EHLO client.example",
            "MAIL FROM:<tester@client.example>",
            "RCPT TO:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "DATA",
            "QUIT",
        ]
    );
    assert_eq!(c.data, vec![msg.wire()]);
    // The encoding really did something: stuffed dots, CRLF everywhere.
    let data = &c.data[0];
    assert!(data.starts_with(format!("{RECEIVED}\r\nSubject: test\r\n").as_bytes()));
    let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"\r\n..leading dot\r\n...two dots\r\n"));
    assert!(has(b"\r\nbare\r\nCR\r\n..\r\nlast line"));
    assert!(data.ends_with(b"\r\nlast line\r\n.\r\n"));
}

#[test]
fn smtp_null_sender_and_large_body_stream_through() {
    let server = Server::start(Opts::default());
    let mut t = smtp(&cfg(vec![server.relay()]));
    // Larger than the encoder's and the socket's buffers, with long lines.
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..3000 {
        body.extend_from_slice(format!(".line {i} {}\n", "x".repeat(i % 1500)).as_bytes());
    }
    let mut msg = Msg::new(&["alice@example.org"], &body);
    msg.sender = Sender::Null;
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0");
    let c = server.only();
    assert_eq!(c.commands[1], "MAIL FROM:<>");
    assert_eq!(c.data, vec![msg.wire()]);
}

#[test]
fn smtp_connection_refused_defers_everyone() {
    let port = closed_port();
    let relay = Relay::Smtp { host: "127.0.0.1".into(), port, implicit_tls: false };
    let mut t = smtp(&cfg(vec![relay]));
    let msg = Msg::new(&["a@example.org", "b@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    let name = format!("127.0.0.1[127.0.0.1]:{port}");
    let expected = Outcome::new(Status::Deferred, format!("connect to {name}: Connection refused"), name);
    assert_eq!(out, vec![expected.clone(), expected]);
}

#[test]
fn smtp_421_greeting_falls_back_to_the_next_relay() {
    let busy = Server::start(Opts { greeting: "421 4.3.2 busy, try later".into(), ..Opts::default() });
    let good = Server::start(Opts::default());
    let mut t = smtp(&cfg(vec![busy.relay(), good.relay()]));
    let msg = Msg::new(&["a@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(out, vec![Outcome::new(Status::Sent, "250 2.0.0 Ok: queued as TEST", good.name())]);
    assert!(busy.only().commands.is_empty(), "nothing is said to a server that refused us");
    assert_eq!(good.only().data, vec![msg.wire()]);
}

#[test]
fn smtp_all_relays_failing_defers_with_every_reason() {
    let busy = Server::start(Opts { greeting: "421 4.3.2 busy".into(), ..Opts::default() });
    let port = closed_port();
    let closed = Relay::Smtp { host: "127.0.0.1".into(), port, implicit_tls: false };
    let mut t = smtp(&cfg(vec![busy.relay(), closed]));
    let out = t.deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    let name = format!("127.0.0.1[127.0.0.1]:{port}");
    assert_eq!(out[0].status, Status::Deferred);
    assert_eq!(
        out[0].reply,
        format!("{} refused to talk to us: 421 4.3.2 busy; connect to {name}: Connection refused", busy.name())
    );
    assert_eq!(out[0].relay, name);
}

#[test]
fn smtp_per_recipient_replies() {
    let server = Server::start(Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(
        &["r250@example.org", "r450@example.org", "r452@example.org", "r550@example.org", "r552@example.org"],
        BODY,
    );
    let out = t.deliver(&msg.outgoing());
    assert_eq!(
        statuses(&out),
        [Status::Sent, Status::Deferred, Status::Deferred, Status::Failed, Status::Deferred],
        "552 to RCPT is temporary (RFC 5321 4.5.3.1.10)"
    );
    assert_eq!(out[0].reply, "250 2.0.0 Ok: queued as TEST");
    assert_eq!(out[1].reply, "450 4.1.0 r450 answered 450");
    assert_eq!(out[3].reply, "550 5.1.0 r550 answered 550");
    assert_eq!(out[4].reply, "552 5.1.0 r552 answered 552");
    assert!(out.iter().all(|o| o.relay == server.name()));
    let c = server.only();
    assert_eq!(c.count("RCPT"), 5);
    assert_eq!(c.data, vec![msg.wire()], "the one accepted recipient gets the message");
}

#[test]
fn smtp_multiline_reply_is_one_line() {
    let server = Server::start(Opts {
        script: Arc::new(|l| match l {
            "." => Act::Reply("550-5.7.1 Message rejected\r\n550-5.7.1 as spam,\r\n550 5.7.1 see https://x".into()),
            _ => Act::Default,
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let out = t.deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    assert_eq!(out[0].status, Status::Failed);
    assert_eq!(out[0].reply, "550 5.7.1 Message rejected as spam, see https://x");
}

#[test]
fn smtp_temporary_failure_after_data_defers_the_accepted() {
    let server = Server::start(Opts {
        script: Arc::new(|l| match l {
            "." => Act::Reply("451 4.3.0 queue file write error".into()),
            _ => rcpt_by_local_part(l),
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(&["r250@example.org", "r550@example.org", "ok@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(statuses(&out), [Status::Deferred, Status::Failed, Status::Deferred]);
    assert_eq!(out[0].reply, "451 4.3.0 queue file write error");
    assert_eq!(out[2].reply, "451 4.3.0 queue file write error");
    // The connection is still good for the next message.
    let out = t.deliver(&msg.outgoing());
    assert_eq!(statuses(&out), [Status::Deferred, Status::Failed, Status::Deferred]);
    assert_eq!(server.conversations().len(), 1);
}

#[test]
fn smtp_permanent_failure_after_data_fails_the_accepted() {
    let server = Server::start(Opts {
        script: Arc::new(
            |l| if l == "." { Act::Reply("554 5.6.0 message content rejected".into()) } else { Act::Default },
        ),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let out = t.deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
    assert_all(&out, Status::Failed, "554 5.6.0 message content rejected");
}

#[test]
fn smtp_mail_from_refused() {
    for (code, status) in [(451, Status::Deferred), (553, Status::Failed), (530, Status::Deferred)] {
        let server = Server::start(Opts {
            script: Arc::new(move |l| {
                if l.starts_with("MAIL") { Act::Reply(format!("{code} sender refused")) } else { Act::Default }
            }),
            ..Opts::default()
        });
        let mut t = smtp(&cfg(vec![server.relay()]));
        let out = t.deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
        assert_all(&out, status, &format!("{code} sender refused"));
        let c = server.only();
        assert_eq!(c.count("RCPT"), 0);
        assert_eq!(c.count("DATA"), 0);
    }
}

#[test]
fn smtp_no_accepted_recipient_resets_instead_of_data() {
    let server = Server::start(Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let out = t.deliver(&Msg::new(&["r550@example.org", "r451@example.org"], BODY).outgoing());
    assert_eq!(statuses(&out), [Status::Failed, Status::Deferred]);
    assert_eq!(server.only().verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "RSET"]);
}

#[test]
fn smtp_disconnect_during_data_defers() {
    let server = Server::start(Opts { close_in_data_after: Some(100), ..Opts::default() });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let body = b"Subject: x\n\n".repeat(50_000);
    let msg = Msg::new(&["a@example.org", "b@example.org"], &body);
    let out = t.deliver(&msg.outgoing());
    assert_all(&out, Status::Deferred, &format!("lost connection with {}", server.name()));
    // The dead connection is not reused: the next delivery connects again.
    let out = t.deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    assert_eq!(out[0].status, Status::Deferred, "this server always drops");
    assert_eq!(server.conversations().len(), 2);
}

#[test]
fn smtp_421_mid_transaction_defers_the_unfinished() {
    let server = Server::start(Opts {
        script: Arc::new(|l| match l {
            "RCPT TO:<c@example.org>" => Act::Reply("421 4.7.0 too many errors, closing".into()),
            _ => rcpt_by_local_part(l),
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(&["r550@example.org", "b@example.org", "c@example.org", "d@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(statuses(&out), [Status::Failed, Status::Deferred, Status::Deferred, Status::Deferred]);
    for o in &out[1..] {
        assert_eq!(o.reply, "421 4.7.0 too many errors, closing");
    }
    assert_eq!(server.only().count("DATA"), 0);
}

#[test]
fn smtp_stalled_server_times_out() {
    for stall_at in ["GREETING", "RCPT TO:<a@example.org>", "."] {
        let server = Server::start(Opts {
            script: Arc::new(move |l| if l == stall_at { Act::Hang } else { Act::Default }),
            ..Opts::default()
        });
        let c = RunnerConfig {
            command_timeout: Duration::from_millis(300),
            data_timeout: Duration::from_millis(300),
            ..cfg(vec![server.relay()])
        };
        let mut t = smtp(&c);
        let start = Instant::now();
        let out = t.deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
        let took = start.elapsed();
        assert_all(&out, Status::Deferred, &format!("conversation with {} timed out while", server.name()));
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "{stall_at}: {took:?}");
    }
}

#[test]
fn smtp_splits_recipients_into_transactions() {
    let server = Server::start(Opts::default());
    let c = RunnerConfig { max_rcpt_per_transaction: 2, ..cfg(vec![server.relay()]) };
    let mut t = smtp(&c);
    let rcpts = ["a@example.org", "b@example.org", "c@example.org", "d@example.org", "e@example.org"];
    let msg = Msg::new(&rcpts, BODY);
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0");
    let conv = server.only();
    assert_eq!(
        conv.verbs(),
        ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "MAIL", "RCPT", "RCPT", "DATA", "MAIL", "RCPT", "DATA"]
    );
    assert_eq!(conv.data, vec![msg.wire(); 3]);
    let rcpt_lines: Vec<&String> = conv.commands.iter().filter(|c| c.starts_with("RCPT")).collect();
    assert_eq!(rcpt_lines.len(), 5);
    for (line, r) in rcpt_lines.iter().zip(rcpts) {
        assert_eq!(**line, format!("RCPT TO:<{r}>"));
    }
}

#[test]
fn smtp_reuses_the_connection_with_rset() {
    let server = Server::start(Opts::default());
    let mut t = smtp(&cfg(vec![server.relay()]));
    let first = Msg::new(&["a@example.org"], BODY);
    let second = Msg::new(&["b@example.org"], b"Subject: second\n\nhello\n");
    assert_all(&t.deliver(&first.outgoing()), Status::Sent, "250");
    assert_all(&t.deliver(&second.outgoing()), Status::Sent, "250");
    t.close();
    let c = server.only();
    assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]);
    assert_eq!(c.data, vec![first.wire(), second.wire()]);
}

#[test]
fn smtp_replaces_a_connection_that_died_while_idle() {
    // The server drops the connection instead of answering RSET, as one
    // whose idle timer expired would.
    let server = Server::start(Opts {
        script: Arc::new(|l| if l == "RSET" { Act::Close } else { Act::Default }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250");
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250");
    let convs = server.conversations();
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0].verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "RSET"]);
    assert_eq!(convs[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
}

#[test]
fn smtp_size_limit() {
    let server = Server::start(Opts { extensions: vec!["SIZE 1000".into()], ..Opts::default() });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let big = Msg::new(&["a@example.org", "b@example.org"], &[b'x'; 1000]);
    let out = t.deliver(&big.outgoing());
    let estimate = RECEIVED.len() + 2 + 1000;
    assert_all(&out, Status::Failed, &format!("552 5.3.4 message size {estimate} exceeds"));
    assert_eq!(server.only().verbs(), ["EHLO"], "nothing is sent for a message known to be too large");
    // A message that fits declares its size, on the same connection.
    let small = Msg::new(&["a@example.org"], BODY);
    assert_all(&t.deliver(&small.outgoing()), Status::Sent, "250");
    let c = server.only();
    let size = RECEIVED.len() + 2 + BODY.len();
    assert_eq!(c.commands[2], format!("MAIL FROM:<tester@client.example> SIZE={size}"));
    assert_eq!(c.data, vec![small.wire()]);
}

#[test]
fn smtp_ehlo_refused_falls_back_to_helo() {
    let server = Server::start(Opts {
        script: Arc::new(|l| {
            if l.starts_with("EHLO") { Act::Reply("502 5.5.2 no EHLO here".into()) } else { Act::Default }
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    assert_all(&t.deliver(&Msg::new(&["a@example.org"], BODY).outgoing()), Status::Sent, "250");
    assert_eq!(server.only().commands[..2], ["EHLO client.example", "HELO client.example"]);
}

#[test]
fn smtp_starttls_required_with_a_test_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "ca.pem", &pki.ca_pem, 0o644);
    let server = Server::start(Opts {
        extensions: vec!["STARTTLS".into(), "SIZE 100000".into()],
        tls: Some(Arc::clone(&pki.server)),
        ..Opts::default()
    });
    let c = RunnerConfig { starttls: StartTls::Required, tls_ca_file: Some(ca), ..cfg(vec![server.relay()]) };
    let mut t = smtp(&c);
    let msg = Msg::new(&["a@example.org", "b@example.org"], BODY);
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0 Ok");
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0 Ok");
    t.close();
    let conv = server.only();
    assert!(conv.tls);
    assert_eq!(
        conv.verbs(),
        ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    );
    assert_eq!(conv.data, vec![msg.wire(), msg.wire()]);
}

#[test]
fn smtp_implicit_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "ca.pem", &pki.ca_pem, 0o644);
    let server = Server::start(Opts { tls: Some(Arc::clone(&pki.server)), implicit_tls: true, ..Opts::default() });
    let relay = Relay::Smtp { host: "127.0.0.1".into(), port: server.addr.port(), implicit_tls: true };
    let c = RunnerConfig { starttls: StartTls::Required, tls_ca_file: Some(ca), ..cfg(vec![relay]) };
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&smtp(&c).deliver(&msg.outgoing()), Status::Sent, "250");
    let conv = server.only();
    assert!(conv.tls);
    assert_eq!(conv.verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
    assert_eq!(conv.data, vec![msg.wire()]);
}

#[test]
fn smtp_starttls_required_but_not_offered_defers() {
    let server = Server::start(Opts::default());
    let c = RunnerConfig { starttls: StartTls::Required, ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, &format!("{} does not offer STARTTLS, and starttls = required", server.name()));
    assert_eq!(server.only().verbs(), ["EHLO"]);
}

#[test]
fn smtp_starttls_refused() {
    // Offered but refused with 454 (this server has no certificate).
    let opts = Opts { extensions: vec!["STARTTLS".into()], ..Opts::default() };
    let server = Server::start(opts.clone());
    let c = RunnerConfig { starttls: StartTls::Opportunistic, ..cfg(vec![server.relay()]) };
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&smtp(&c).deliver(&msg.outgoing()), Status::Sent, "250");
    let conv = server.only();
    assert_eq!(conv.verbs(), ["EHLO", "STARTTLS", "MAIL", "RCPT", "DATA"], "same connection, in the clear");
    assert_eq!(conv.data, vec![msg.wire()]);

    let server = Server::start(opts);
    let c = RunnerConfig { starttls: StartTls::Required, ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&msg.outgoing());
    assert_all(&out, Status::Deferred, &format!("{} refused STARTTLS: 454 4.7.0 TLS not available", server.name()));
    assert_eq!(server.only().count("MAIL"), 0);
}

#[test]
fn smtp_starttls_refuses_plaintext_injected_before_the_handshake() {
    // Bytes sent in the clear right behind the 220 must not be taken for
    // replies received over TLS (CVE-2011-0411 and its kin).
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "ca.pem", &pki.ca_pem, 0o644);
    let server = Server::start(Opts {
        extensions: vec!["STARTTLS".into()],
        tls: Some(Arc::clone(&pki.server)),
        script: Arc::new(|l| {
            if l == "STARTTLS" { Act::Reply("220 go ahead\r\n250 injected".into()) } else { Act::Default }
        }),
        ..Opts::default()
    });
    let c = RunnerConfig { starttls: StartTls::Required, tls_ca_file: Some(ca), ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, &format!("{} sent data after its reply to STARTTLS", server.name()));
    assert_eq!(server.only().count("MAIL"), 0);
}

#[test]
fn smtp_starttls_off_ignores_the_offer() {
    let server = Server::start(Opts { extensions: vec!["STARTTLS".into()], ..Opts::default() });
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&smtp(&cfg(vec![server.relay()])).deliver(&msg.outgoing()), Status::Sent, "250");
    assert_eq!(server.only().verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
}

#[test]
fn smtp_a_server_out_of_step_is_given_up() {
    // Two replies to one RCPT: every later reply would answer the wrong
    // command, so no verdict from this connection is trusted any more.
    let server = Server::start(Opts {
        script: Arc::new(|l| match l {
            "RCPT TO:<a@example.org>" => Act::Reply("250 2.1.5 Ok\r\n550 5.1.1 not for b".into()),
            _ => Act::Default,
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let out = t.deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, "a reply before the command: 550 5.1.1 not for b");
    assert_eq!(server.only().count("DATA"), 0);
}

#[test]
fn smtp_untrusted_certificate() {
    let (real, other) = (pki(), pki());
    let dir = tempfile::tempdir().unwrap();
    // The client trusts a CA that did not sign the server's certificate.
    let wrong_ca = write_file(dir.path(), "other-ca.pem", &other.ca_pem, 0o644);
    let opts = Opts { extensions: vec!["STARTTLS".into()], tls: Some(Arc::clone(&real.server)), ..Opts::default() };

    let server = Server::start(opts.clone());
    let c =
        RunnerConfig { starttls: StartTls::Required, tls_ca_file: Some(wrong_ca.clone()), ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, &format!("TLS handshake with {} failed", server.name()));
    assert!(out[0].reply.contains("certificate"), "{}", out[0].reply);
    assert_eq!(server.only().count("MAIL"), 0);

    // Opportunistic: TLS that cannot be verified gives way to plaintext,
    // on a new connection.
    let server = Server::start(opts);
    let c =
        RunnerConfig { starttls: StartTls::Opportunistic, tls_ca_file: Some(wrong_ca), ..cfg(vec![server.relay()]) };
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&smtp(&c).deliver(&msg.outgoing()), Status::Sent, "250");
    let convs = server.conversations();
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0].verbs(), ["EHLO", "STARTTLS"]);
    assert_eq!(convs[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
    assert!(!convs[1].tls);
    assert_eq!(convs[1].data, vec![msg.wire()]);
}

fn auth_server(extensions: &[&str]) -> Server {
    Server::start(Opts {
        extensions: extensions.iter().map(|s| s.to_string()).collect(),
        auth: Some(("alice@example.org".into(), "s3cret with space".into())),
        ..Opts::default()
    })
}

#[test]
fn smtp_auth_plain_with_the_relay_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "auth", "# relay login\nalice@example.org s3cret with space\n", 0o600);
    for (ext, mech) in [("AUTH LOGIN PLAIN", "AUTH PLAIN "), ("AUTH LOGIN", "AUTH LOGIN")] {
        let server = auth_server(&[ext]);
        let c = RunnerConfig { relay_auth_file: Some(file.clone()), ..cfg(vec![server.relay()]) };
        let msg = Msg::new(&["a@example.org"], BODY);
        assert_all(&smtp(&c).deliver(&msg.outgoing()), Status::Sent, "250 2.0.0");
        let conv = server.only();
        assert!(conv.authenticated);
        assert!(conv.commands[1].starts_with(mech), "{:?}", conv.commands);
        assert_eq!(conv.data, vec![msg.wire()]);
    }
    // Without credentials the server's 530 is a temporary failure.
    let server = auth_server(&["AUTH PLAIN"]);
    let out = smtp(&cfg(vec![server.relay()])).deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, "530 5.7.0 Authentication required");
}

#[test]
fn smtp_wrong_credentials_defer() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "auth", "alice@example.org wrong-password\n", 0o600);
    let server = auth_server(&["AUTH PLAIN"]);
    let c = RunnerConfig { relay_auth_file: Some(file.clone()), ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
    assert_all(&out, Status::Deferred, &format!("{} rejected the credentials: 535 5.7.8", server.name()));
    assert!(out[0].reply.contains(&file.display().to_string()));
    assert!(!out[0].reply.contains("wrong-password"));
    assert_eq!(server.only().count("MAIL"), 0);
}

#[test]
fn smtp_refuses_a_readable_relay_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "auth", "alice@example.org s3cret with space\n", 0o644);
    let server = auth_server(&["AUTH PLAIN"]);
    let c = RunnerConfig { relay_auth_file: Some(file.clone()), ..cfg(vec![server.relay()]) };
    let out = smtp(&c).deliver(&Msg::new(&["a@example.org"], BODY).outgoing());
    let shown = file.display();
    assert_all(&out, Status::Deferred, &format!("relay_auth_file {shown} has mode 0644"));
    assert!(out[0].reply.contains(&format!("chmod 600 {shown}")));
    assert!(!out[0].reply.contains("s3cret"));
    assert!(server.conversations().is_empty(), "no connection with a refused credentials file");
}
