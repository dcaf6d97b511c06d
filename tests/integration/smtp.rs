/*!
SMTP delivery (`outq::deliver::smtp::Smtp`) against an in-process server
(`smtp_server`: scripted per test, an ordinary server otherwise; it records
every command line, the exact DATA bytes and the pipelined groups it
received, per connection). The transport is
driven through the `Transport` trait with messages stored in real entry
files, as the runner will. Timeouts are short so that the stalls under test
cost well under a second each.
*/

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outq::config::{Relay, RunnerConfig, StartTls};
use outq::deliver::smtp::Smtp;
use outq::deliver::{Outcome, Outgoing, Status, Transport, wire};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::entry::{self, Header};
use outq_spool::queue_id::QueueId;
use rustls::ServerConfig;

use crate::smtp_server::{self, Act, Opts, Server, rcpt_by_local_part};

const MYHOSTNAME: &str = "client.example";
const RECEIVED: &str = "Received: from userid 1000 (tester) by client.example (outq) id 0692A1B2C3D4E5F60718293A4B; \
                        Fri, 28 Nov 2025 16:00:00 +0000";

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
    let (ca_pem, server) = smtp_server::pki();
    Pki { ca_pem, server }
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
    assert_eq!(c.group_verbs(), [["MAIL", "RCPT", "RCPT", "DATA"]], "one pipelined group: {:?}", c.groups);
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
    for p in [true, false] {
        for (code, status) in [(451, Status::Deferred), (553, Status::Failed), (530, Status::Deferred)] {
            let server = Server::start(
                Opts {
                    script: Arc::new(move |l| {
                        if l.starts_with("MAIL") { Act::Reply(format!("{code} sender refused")) } else { Act::Default }
                    }),
                    ..Opts::default()
                }
                .pipelining(p),
            );
            let mut t = smtp(&cfg(vec![server.relay()]));
            let out = t.deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
            assert_all(&out, status, &format!("{code} sender refused"));
            let c = server.only();
            if p {
                // The group went out whole; the server refused the rest
                // (503), no message was sent, and the transaction was reset.
                assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET"]);
            } else {
                assert_eq!(c.verbs(), ["EHLO", "MAIL"]);
            }
            assert!(c.data.is_empty());
        }
    }
}

#[test]
fn smtp_no_accepted_recipient_resets_instead_of_data() {
    for p in [true, false] {
        let server = Server::start(Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() }.pipelining(p));
        let mut t = smtp(&cfg(vec![server.relay()]));
        let out = t.deliver(&Msg::new(&["r550@example.org", "r451@example.org"], BODY).outgoing());
        assert_eq!(statuses(&out), [Status::Failed, Status::Deferred]);
        assert_eq!(out[0].reply, "550 5.1.0 r550 answered 550");
        assert_eq!(out[1].reply, "451 4.1.0 r451 answered 451");
        let c = server.only();
        if p {
            // DATA ended the group and was refused (554): no data, RSET.
            assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET"]);
        } else {
            assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "RSET"]);
        }
        assert!(c.data.is_empty());
    }
}

#[test]
fn smtp_pipelining_no_accepted_recipient_but_data_accepted() {
    // A server that answers 354 to DATA although it accepted no recipient:
    // the client ends the DATA at once with a lone dot (RFC 2920 3.1), so
    // that no message is sent, and resets; the connection stays usable.
    let server = Server::start(Opts {
        script: Arc::new(|l| match l {
            "DATA" => Act::Reply("354 go ahead".into()),
            _ => rcpt_by_local_part(l),
        }),
        ..Opts::default()
    });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let out = t.deliver(&Msg::new(&["r550@example.org", "r452@example.org"], BODY).outgoing());
    assert_eq!(statuses(&out), [Status::Failed, Status::Deferred]);
    assert_eq!(out[1].reply, "452 4.1.0 r452 answered 452");
    let msg = Msg::new(&["a@example.org"], BODY);
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0");
    let c = server.only();
    assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "RSET", "MAIL", "RCPT", "DATA"]);
    assert_eq!(c.data, vec![b".\r\n".to_vec(), msg.wire()], "nothing but the dot went out for no recipient");
    assert_eq!(server.accepted().len(), 1);
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
    for p in [true, false] {
        let server = Server::start(
            Opts {
                script: Arc::new(|l| match l {
                    "RCPT TO:<c@example.org>" => Act::Reply("421 4.7.0 too many errors, closing".into()),
                    _ => rcpt_by_local_part(l),
                }),
                ..Opts::default()
            }
            .pipelining(p),
        );
        let mut t = smtp(&cfg(vec![server.relay()]));
        let msg = Msg::new(&["r550@example.org", "b@example.org", "c@example.org", "d@example.org"], BODY);
        let out = t.deliver(&msg.outgoing());
        assert_eq!(statuses(&out), [Status::Failed, Status::Deferred, Status::Deferred, Status::Deferred]);
        for o in &out[1..] {
            assert_eq!(o.reply, "421 4.7.0 too many errors, closing");
        }
        let c = server.only();
        assert!(c.data.is_empty());
        if !p {
            assert_eq!(c.count("DATA"), 0);
        }
    }
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
    for p in [true, false] {
        let server = Server::start(Opts::default().pipelining(p));
        let mut t = smtp(&cfg(vec![server.relay()]));
        let first = Msg::new(&["a@example.org"], BODY);
        let second = Msg::new(&["b@example.org"], b"Subject: second\n\nhello\n");
        assert_all(&t.deliver(&first.outgoing()), Status::Sent, "250");
        assert_all(&t.deliver(&second.outgoing()), Status::Sent, "250");
        t.close();
        let c = server.only();
        assert_eq!(c.verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]);
        assert_eq!(c.data, vec![first.wire(), second.wire()]);
        if p {
            // The RSET that checks the kept connection goes with the group.
            assert_eq!(c.group_verbs(), [vec!["MAIL", "RCPT", "DATA"], vec!["RSET", "MAIL", "RCPT", "DATA"]]);
        } else {
            assert_eq!(c.group_verbs(), [["MAIL"], ["MAIL"]]);
        }
    }
}

#[test]
fn smtp_replaces_a_connection_that_died_while_idle() {
    // The server drops the connection instead of answering RSET, as one
    // whose idle timer expired would.
    for p in [true, false] {
        let server = Server::start(
            Opts { script: Arc::new(|l| if l == "RSET" { Act::Close } else { Act::Default }), ..Opts::default() }
                .pipelining(p),
        );
        let mut t = smtp(&cfg(vec![server.relay()]));
        let msg = Msg::new(&["a@example.org"], BODY);
        assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250");
        assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250");
        let convs = server.conversations();
        assert_eq!(convs.len(), 2);
        assert_eq!(convs[0].verbs(), ["EHLO", "MAIL", "RCPT", "DATA", "RSET"]);
        assert_eq!(convs[1].verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
        assert_eq!(server.accepted().len(), 2, "each message accepted once");
    }
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
    for p in [true, false] {
        let server = Server::start(
            Opts {
                script: Arc::new(|l| match l {
                    "RCPT TO:<a@example.org>" => Act::Reply("250 2.1.5 Ok\r\n550 5.1.1 not for b".into()),
                    _ => Act::Default,
                }),
                ..Opts::default()
            }
            .pipelining(p),
        );
        let mut t = smtp(&cfg(vec![server.relay()]));
        let out = t.deliver(&Msg::new(&["a@example.org", "b@example.org"], BODY).outgoing());
        if p {
            // The replies were all read before the mismatch could show (the
            // 250 meant for b came as the reply to DATA): b's "550" is not
            // believed, everyone is deferred.
            assert_eq!(statuses(&out), [Status::Deferred, Status::Deferred], "{out:#?}");
            for o in &out {
                assert!(o.reply.contains("unexpected reply to DATA") || o.reply.contains("a reply before"), "{o:?}");
            }
        } else {
            assert_all(&out, Status::Deferred, "a reply before the command: 550 5.1.1 not for b");
            assert_eq!(server.only().count("DATA"), 0);
        }
        assert!(server.only().data.is_empty());
    }
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

// ---------------------------------------------------------------- PIPELINING

#[test]
fn smtp_pipelining_sends_each_transaction_in_one_group() {
    let server = Server::start(Opts::default());
    let c = RunnerConfig { max_rcpt_per_transaction: 3, ..cfg(vec![server.relay()]) };
    let mut t = smtp(&c);
    let rcpts = ["a@example.org", "b@example.org", "c@example.org", "d@example.org"];
    let msg = Msg::new(&rcpts, BODY);
    assert_all(&t.deliver(&msg.outgoing()), Status::Sent, "250 2.0.0");
    assert_all(&t.deliver(&Msg::new(&["e@example.org"], BODY).outgoing()), Status::Sent, "250 2.0.0");
    let conv = server.only();
    // Everything of a transaction was in the server's hands before it
    // answered the MAIL FROM, in one read.
    assert_eq!(
        conv.group_verbs(),
        [
            vec!["MAIL", "RCPT", "RCPT", "RCPT", "DATA"],
            vec!["MAIL", "RCPT", "DATA"],
            vec!["RSET", "MAIL", "RCPT", "DATA"],
        ]
    );
    assert!(conv.groups.iter().all(|g| g.extra_reads == 0), "{:?}", conv.groups);
    assert_eq!(
        conv.groups[0].commands[1..4],
        ["RCPT TO:<a@example.org>", "RCPT TO:<b@example.org>", "RCPT TO:<c@example.org>"]
    );
    assert_eq!(server.accepted().iter().map(|a| a.rcpts.len()).collect::<Vec<_>>(), [3, 1, 1]);
}

#[test]
fn smtp_pipelining_452_and_550_in_the_middle_of_a_group() {
    let server = Server::start(Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() });
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg =
        Msg::new(&["a@example.org", "r452@example.org", "b@example.org", "r550@example.org", "c@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(statuses(&out), [Status::Sent, Status::Deferred, Status::Sent, Status::Failed, Status::Sent]);
    assert_eq!(out[1].reply, "452 4.1.0 r452 answered 452");
    assert_eq!(out[3].reply, "550 5.1.0 r550 answered 550");
    for i in [0, 2, 4] {
        assert_eq!(out[i].reply, "250 2.0.0 Ok: queued as TEST");
    }
    let conv = server.only();
    assert_eq!(conv.group_verbs(), [["MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"]]);
    assert_eq!(conv.groups[0].extra_reads, 0);
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].rcpts, ["a@example.org", "b@example.org", "c@example.org"]);
    assert_eq!(conv.data, vec![msg.wire()]);
}

#[test]
fn smtp_without_pipelining_waits_for_every_reply() {
    let server = Server::start(Opts { script: Arc::new(rcpt_by_local_part), ..Opts::default() }.pipelining(false));
    let mut t = smtp(&cfg(vec![server.relay()]));
    let msg = Msg::new(&["a@example.org", "r452@example.org", "r550@example.org", "b@example.org"], BODY);
    let out = t.deliver(&msg.outgoing());
    assert_eq!(statuses(&out), [Status::Sent, Status::Deferred, Status::Failed, Status::Sent]);
    assert_all(&t.deliver(&msg.outgoing())[..1], Status::Sent, "250");
    let conv = server.only();
    // Nothing was waiting behind the MAIL FROM when the server answered it.
    assert_eq!(conv.group_verbs(), [["MAIL"], ["MAIL"]]);
    assert_eq!(conv.verbs()[..7], ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"]);
    assert_eq!(conv.verbs()[7], "RSET");
}

#[test]
fn smtp_pipelining_disconnect_after_the_group() {
    // The server takes the whole group, then hangs up: before any reply,
    // after some RCPT replies, or instead of answering DATA.
    let cases: [(&str, [Status; 3], &str); 3] = [
        ("MAIL FROM:<tester@client.example>", [Status::Deferred; 3], "while sending MAIL FROM"),
        ("RCPT TO:<b@example.org>", [Status::Failed, Status::Deferred, Status::Deferred], "while sending RCPT TO"),
        ("DATA", [Status::Failed, Status::Deferred, Status::Deferred], "while sending DATA"),
    ];
    for (at, want, what) in cases {
        // Only once: the next connection is served.
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = Server::start(Opts {
            script: Arc::new(move |l| {
                if l == at && !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    Act::Close
                } else {
                    rcpt_by_local_part(l)
                }
            }),
            ..Opts::default()
        });
        let mut t = smtp(&cfg(vec![server.relay()]));
        let msg = Msg::new(&["r550@example.org", "a@example.org", "b@example.org"], BODY);
        let out = t.deliver(&msg.outgoing());
        assert_eq!(statuses(&out), want, "{at}: {out:#?}");
        let lost = format!("lost connection with {} {what}", server.name());
        for o in out.iter().filter(|o| o.status == Status::Deferred) {
            assert_eq!(o.reply, lost, "{at}");
        }
        if want[0] == Status::Failed {
            assert_eq!(out[0].reply, "550 5.1.0 r550 answered 550", "{at}: a verdict read before the loss stands");
        }
        let conv = server.only();
        assert_eq!(conv.group_verbs(), [["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]], "{at}");
        assert!(conv.data.is_empty() && server.accepted().is_empty());
        // The dead connection is not kept: the next message connects again.
        let out = t.deliver(&Msg::new(&["c@example.org"], BODY).outgoing());
        assert_eq!(out[0].status, Status::Sent, "{at}: {out:?}");
        assert_eq!(server.conversations().len(), 2);
    }
}
