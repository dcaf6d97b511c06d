/*!
The scriptable SMTP server the SMTP tests talk to (`smtp`: the transport
in-process; `faults`: the runner's fault matrix through `outq run`).

It listens on 127.0.0.1 and answers each command by a per-test script,
falling back to an ordinary server that keeps the state of its
transaction as Postfix does: RCPT without MAIL gets 503, DATA without an
accepted recipient 554 (503 without MAIL). It records, per connection,
every command line, the message data after each DATA, and the pipelined
groups (below); and every transaction it accepted (2xx to the end of the
data, for the recipients it answered 2xx).

PIPELINING: when the server advertises it (`Opts::extensions`, the
default), it checks how the client sends each transaction. Before
answering a MAIL FROM it reads, without answering anything, until the
commands it holds end with DATA (RFC 2920: DATA ends a group) or the
client has sent nothing for [`GROUP_WAIT`]. The commands it then holds,
from the MAIL FROM on (an RSET before it in the same burst included), are
recorded as one group with the number of reads they took. A client that
pipelines shows the whole transaction in one group; a lock-step client,
which waits for the reply to MAIL FROM, shows a group of one command (and
loses [`GROUP_WAIT`]). Without the advertisement the server does not wait
and records the group all the same, so a client that pipelines anyway is
caught too.
*/

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outq::config::Relay;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// How long the server waits for the rest of a pipelined group.
pub const GROUP_WAIT: Duration = Duration::from_millis(500);

/// What the server does about one command.
pub enum Act {
    /// Send these reply lines (CRLF-separated; the last CRLF is added).
    Reply(String),
    /// Drop the connection without a word.
    Close,
    /// Never answer; read until the client gives up.
    Hang,
    /// What an ordinary server does.
    Default,
}

/// Consulted (while the server is not healed) for every command line
/// (without CRLF), for the greeting as `GREETING` and for the end of the
/// data as `.`.
pub type Script = Arc<dyn Fn(&str) -> Act + Send + Sync>;

#[derive(Clone)]
pub struct Opts {
    pub greeting: String,
    /// EHLO keywords after the host name (STARTTLS hidden once TLS is up;
    /// `AUTH PLAIN LOGIN` added when `auth` is set and none is listed).
    pub extensions: Vec<String>,
    pub tls: Option<Arc<ServerConfig>>,
    /// TLS from the first byte (smtps://).
    pub implicit_tls: bool,
    /// MAIL is refused with 530 before STARTTLS.
    pub require_tls: bool,
    /// Credentials required before MAIL (530 until given).
    pub auth: Option<(String, String)>,
    /// While not healed: drop the connection after this many bytes of data.
    pub close_in_data_after: Option<usize>,
    pub script: Script,
}

/// The default extensions, PIPELINING first.
pub fn extensions() -> Vec<String> {
    vec!["PIPELINING".into(), "ENHANCEDSTATUSCODES".into(), "8BITMIME".into()]
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            greeting: "220 mx.test.example ESMTP outq test server".into(),
            extensions: extensions(),
            tls: None,
            implicit_tls: false,
            require_tls: false,
            auth: None,
            close_in_data_after: None,
            script: Arc::new(|_| Act::Default),
        }
    }
}

impl Opts {
    /// The same server with PIPELINING advertised or not.
    pub fn pipelining(mut self, on: bool) -> Opts {
        self.extensions.retain(|e| e != "PIPELINING");
        if on {
            self.extensions.insert(0, "PIPELINING".into());
        }
        self
    }

    fn advertises_pipelining(&self) -> bool {
        self.extensions.iter().any(|e| e == "PIPELINING")
    }
}

/// Commands the client had sent before the server answered a MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub commands: Vec<String>,
    /// Reads it took beyond the one that brought the MAIL FROM.
    pub extra_reads: usize,
}

/// What one connection carried.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub commands: Vec<String>,
    /// Each message's bytes as received after DATA, `.` CRLF included.
    pub data: Vec<Vec<u8>>,
    pub groups: Vec<Group>,
    pub tls: bool,
    pub authenticated: bool,
}

impl Conversation {
    pub fn count(&self, prefix: &str) -> usize {
        self.commands.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// The commands reduced to their verbs, for comparing sequences.
    pub fn verbs(&self) -> Vec<&str> {
        self.commands.iter().map(|c| c.split([' ', ':']).next().unwrap_or("")).collect()
    }

    /// The groups reduced to their verbs.
    pub fn group_verbs(&self) -> Vec<Vec<&str>> {
        self.groups
            .iter()
            .map(|g| g.commands.iter().map(|c| c.split([' ', ':']).next().unwrap_or("")).collect())
            .collect()
    }
}

/// One transaction the server accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub sender: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
}

#[derive(Debug, Default)]
struct Record {
    conversations: Vec<Conversation>,
    accepted: Vec<Accepted>,
}

pub struct Server {
    pub addr: SocketAddr,
    healed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
}

impl Server {
    pub fn start(opts: Opts) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let healed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let (h, s, r) = (healed.clone(), stop.clone(), record.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let healed = h.load(Ordering::SeqCst);
                let idx = {
                    let mut rec = r.lock().unwrap();
                    rec.conversations.push(Conversation::default());
                    rec.conversations.len() - 1
                };
                let (opts, record) = (opts.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(tcp, &opts, &record, idx, healed);
                });
            }
        });
        Server { addr, healed, stop, record }
    }

    /// From now on (for new connections), behave: the script is no longer
    /// consulted.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// The relay as configured: `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.addr.port())
    }

    pub fn relay(&self) -> Relay {
        Relay::Smtp { host: "127.0.0.1".into(), port: self.addr.port(), implicit_tls: false }
    }

    /// The relay as the runner names it.
    pub fn name(&self) -> String {
        format!("127.0.0.1[127.0.0.1]:{}", self.addr.port())
    }

    pub fn conversations(&self) -> Vec<Conversation> {
        self.record.lock().unwrap().conversations.clone()
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.record.lock().unwrap().accepted.clone()
    }

    /// The only conversation. The server records each command before it
    /// answers, so everything the client saw answered is there.
    pub fn only(&self) -> Conversation {
        let c = self.conversations();
        assert_eq!(c.len(), 1, "expected one connection: {c:#?}");
        c.into_iter().next().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wake the accept loop so that it sees the flag and ends.
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    Gone,
}

impl Io {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Io::Plain(s) => Some(s),
            Io::Tls(s) => Some(&s.sock),
            Io::Gone => None,
        }
    }
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

/// The read timeout of the server's connections.
const IDLE: Duration = Duration::from_secs(30);

struct Peer<'a> {
    io: Io,
    buf: Vec<u8>,
    record: &'a Mutex<Record>,
    idx: usize,
}

impl Peer<'_> {
    fn note(&self, f: impl FnOnce(&mut Conversation)) {
        f(&mut self.record.lock().unwrap().conversations[self.idx]);
    }

    /// Read once more into the buffer; false at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.io.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// One line with its line end, or None at the end of the stream.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=lf).collect());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The complete lines waiting in the buffer, without CRLF.
    fn buffered_lines(&self) -> Vec<String> {
        let end = self.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&self.buf[..end]).lines().map(|l| l.trim_end_matches('\r').to_owned()).collect()
    }

    /// Record the group `mail` begins (see the module notes); when `wait`,
    /// first read until it ends with DATA or nothing more comes.
    fn group(&mut self, before: &[String], mail: &str, wait: bool) {
        let mut extra_reads = 0;
        let ends = |p: &Peer<'_>| p.buffered_lines().last().is_some_and(|l| l.eq_ignore_ascii_case("DATA"));
        if wait && !ends(self) {
            if let Some(tcp) = self.io.tcp() {
                let _ = tcp.set_read_timeout(Some(GROUP_WAIT));
            }
            while !ends(self) && self.fill() {
                extra_reads += 1;
            }
            if let Some(tcp) = self.io.tcp() {
                let _ = tcp.set_read_timeout(Some(IDLE));
            }
        }
        let mut commands = before.to_vec();
        commands.push(mail.to_owned());
        commands.extend(self.buffered_lines());
        self.note(|c| c.groups.push(Group { commands, extra_reads }));
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
            self.note(|c| c.tls = true);
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    fn hang(&mut self) {
        let _ = io::copy(&mut self.io, &mut io::sink());
    }
}

/// The address between `<` and `>` of a MAIL or RCPT line.
fn path_of(line: &str) -> String {
    let start = line.find('<').map_or(line.len(), |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_owned()
}

/// The open transaction: sender and accepted recipients.
type Tx = Option<(String, Vec<String>)>;

fn serve(tcp: TcpStream, opts: &Opts, record: &Mutex<Record>, idx: usize, healed: bool) -> io::Result<()> {
    tcp.set_read_timeout(Some(IDLE))?;
    let mut p = Peer { io: Io::Plain(tcp), buf: Vec::new(), record, idx };
    if opts.implicit_tls {
        p.upgrade(opts.tls.as_ref().unwrap());
    }
    let script = |line: &str| if healed { Act::Default } else { (opts.script)(line) };
    match script("GREETING") {
        Act::Reply(r) => p.send(&r)?,
        Act::Default => p.send(&opts.greeting)?,
        Act::Close => return Ok(()),
        Act::Hang => {
            p.hang();
            return Ok(());
        }
    }
    let mut authenticated = false;
    let mut tx: Tx = None;
    // An RSET answered in the same burst as the MAIL FROM after it.
    let mut pending_rset: Option<String> = None;
    while let Some(line) = p.line() {
        let cmd = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
        p.note(|c| c.commands.push(cmd.clone()));
        let upper = cmd.to_ascii_uppercase();
        let verb = upper.split([' ', ':']).next().unwrap_or("").to_owned();
        if verb == "MAIL" {
            let before: Vec<String> = pending_rset.take().into_iter().collect();
            p.group(&before, &cmd, opts.advertises_pipelining());
        }
        pending_rset = (verb == "RSET"
            && p.buffered_lines().first().is_some_and(|l| l.to_ascii_uppercase().starts_with("MAIL")))
        .then(|| cmd.clone());
        let reply = match script(&cmd) {
            Act::Reply(r) => r,
            Act::Close => return Ok(()),
            Act::Hang => {
                p.hang();
                return Ok(());
            }
            Act::Default => {
                if verb == "AUTH" {
                    authenticated = authenticate(&mut p, opts, &cmd)?;
                    p.note(|c| c.authenticated = authenticated);
                    continue;
                }
                default_reply(opts, &verb, p.is_tls(), authenticated, &tx)
            }
        };
        p.send(&reply)?;
        let ok = reply.starts_with('2');
        match verb.as_str() {
            "STARTTLS" if reply.starts_with("220") => {
                p.upgrade(opts.tls.as_ref().unwrap());
                tx = None;
            }
            "QUIT" => return Ok(()),
            "MAIL" if ok => tx = Some((path_of(&cmd), Vec::new())),
            "RCPT" if ok => {
                if let Some((_, rcpts)) = tx.as_mut() {
                    rcpts.push(path_of(&cmd));
                }
            }
            "RSET" | "EHLO" | "HELO" => tx = None,
            "DATA" if reply.starts_with("354") => {
                let mut data = Vec::new();
                loop {
                    let Some(l) = p.line() else { return Ok(()) };
                    data.extend_from_slice(&l);
                    if !healed && opts.close_in_data_after.is_some_and(|n| data.len() >= n) {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                }
                p.note(|c| c.data.push(data.clone()));
                let end = match script(".") {
                    Act::Reply(r) => r,
                    Act::Default if tx.as_ref().is_some_and(|(_, r)| !r.is_empty()) => {
                        "250 2.0.0 Ok: queued as TEST".to_owned()
                    }
                    Act::Default => "554 5.5.1 Error: no valid recipients".to_owned(),
                    Act::Close => return Ok(()),
                    Act::Hang => {
                        p.hang();
                        return Ok(());
                    }
                };
                // Recorded before the reply, so that a client that saw the
                // 250 finds the transaction recorded.
                if let Some((sender, rcpts)) = tx.take().filter(|(_, r)| end.starts_with('2') && !r.is_empty()) {
                    let tls = p.is_tls();
                    p.record.lock().unwrap().accepted.push(Accepted { sender, rcpts, data, tls });
                }
                p.send(&end)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// AUTH PLAIN (initial response) and AUTH LOGIN; answers 235 or 535.
fn authenticate(p: &mut Peer<'_>, opts: &Opts, cmd: &str) -> io::Result<bool> {
    let Some((user, pass)) = opts.auth.as_ref() else {
        p.send("503 5.5.1 AUTH not offered")?;
        return Ok(false);
    };
    let want = [b"\0".as_slice(), user.as_bytes(), b"\0", pass.as_bytes()].concat();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let given = match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
        Some("PLAIN") => BASE64.decode(words.get(2).unwrap_or(&"")).unwrap_or_default(),
        Some("LOGIN") => {
            p.send("334 VXNlcm5hbWU6")?;
            let u = p.line().unwrap_or_default();
            p.send("334 UGFzc3dvcmQ6")?;
            let w = p.line().unwrap_or_default();
            let d = |l: &[u8]| BASE64.decode(l.trim_ascii_end()).unwrap_or_default();
            [b"\0".as_slice(), &d(&u), b"\0", &d(&w)].concat()
        }
        _ => Vec::new(),
    };
    let ok = given == want;
    p.send(if ok { "235 2.7.0 Authentication successful" } else { "535 5.7.8 Authentication credentials invalid" })?;
    Ok(ok)
}

fn default_reply(opts: &Opts, verb: &str, tls: bool, authenticated: bool, tx: &Tx) -> String {
    match verb {
        "EHLO" => {
            let mut lines = vec!["250-mx.test.example".to_owned()];
            let mut ext: Vec<String> = opts.extensions.iter().filter(|e| !(tls && *e == "STARTTLS")).cloned().collect();
            if opts.auth.is_some() && !ext.iter().any(|e| e.starts_with("AUTH")) {
                ext.push("AUTH PLAIN LOGIN".into());
            }
            lines.extend(ext.iter().map(|e| format!("250-{e}")));
            let last = lines.pop().unwrap();
            lines.push(last.replacen("250-", "250 ", 1));
            lines.join("\r\n")
        }
        "HELO" => "250 mx.test.example".into(),
        "STARTTLS" if opts.tls.is_some() && !tls => "220 2.0.0 Ready to start TLS".into(),
        "STARTTLS" => "454 4.7.0 TLS not available".into(),
        "MAIL" if opts.require_tls && !tls => "530 5.7.0 Must issue a STARTTLS command first".into(),
        "MAIL" if opts.auth.is_some() && !authenticated => "530 5.7.0 Authentication required".into(),
        "MAIL" if tx.is_some() => "503 5.5.1 Error: nested MAIL command".into(),
        "MAIL" => "250 2.1.0 Ok".into(),
        "RCPT" if tx.is_none() => "503 5.5.1 Error: need MAIL command".into(),
        "RCPT" => "250 2.1.5 Ok".into(),
        "DATA" if tx.is_none() => "503 5.5.1 Error: need RCPT command".into(),
        "DATA" if tx.as_ref().is_some_and(|(_, r)| r.is_empty()) => "554 5.5.1 Error: no valid recipients".into(),
        "DATA" => "354 End data with <CR><LF>.<CR><LF>".into(),
        "RSET" | "NOOP" => "250 2.0.0 Ok".into(),
        "QUIT" => "221 2.0.0 Bye".into(),
        _ => "502 5.5.2 Error: command not recognized".into(),
    }
}

/// A script answering `RCPT TO:<rNNN@...>` with code NNN, other lines by
/// default.
pub fn rcpt_by_local_part(line: &str) -> Act {
    match line.strip_prefix("RCPT TO:<r").and_then(|r| r.get(..3)).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) => Act::Reply(format!("{code} {}.1.0 r{code} answered {code}", code / 100)),
        None => Act::Default,
    }
}

/// A test CA (PEM), and a server configuration with a certificate it
/// signed for 127.0.0.1 and localhost.
pub fn pki() -> (String, Arc<ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, "outq test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), server_config(&cert, &key))
}

/// A self-signed CA certificate for 127.0.0.1 (PEM) that the server
/// presents as its own: trusted through `tls_ca_file`, yet refused by a
/// client as an end entity.
pub fn ca_as_end_entity() -> (String, Arc<ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "outq self-signed relay");
    let cert = ca.self_signed(&key).unwrap();
    (cert.pem(), server_config(&cert, &key))
}

/// A server configuration presenting `cert`.
fn server_config(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    use rustls::pki_types::PrivateKeyDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    Arc::new(server)
}
