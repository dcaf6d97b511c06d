//! SMTP replies as the runner reads them from a relay
//! (`outq::deliver::smtp::client::Conn::read_reply`), then the EHLO
//! capabilities as `deliver::smtp` reads them (`smtp_proto::EhloResponse`
//! on `Reply::raw`).
//!
//! outq has no pure function for this: `read_reply` is a method of a
//! connection that owns a `TcpStream`. So each input is sent over a fresh
//! loopback TCP connection (the server end writes the input and closes)
//! and replies are read until the connection reports an error, exactly as
//! the runner would. The client socket is closed with SO_LINGER 0, so no
//! TIME_WAIT state piles up over millions of runs.
//!
//! Properties: never panics and never blocks (end of input is an error,
//! not a wait); a reply has a code from 200 to 599, its text starts with
//! that code and is one line; `raw` is what was received, in lines of at
//! most 512 octets, at most 100 of them; the replies read are a prefix of
//! the input; the EHLO parser never panics on any reply.
#![no_main]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{setsockopt, sockopt};
use outq::deliver::smtp::client::{Conn, MAX_LINE, MAX_LINES};

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1"))
}

/// What `deliver::smtp::offers` does with an EHLO reply.
fn offers(raw: &[u8]) {
    if let Ok(e) = smtp_proto::EhloResponse::parse(&mut raw.iter()) {
        let _ = e.has_capability(smtp_proto::EXT_START_TLS);
        let _ = if e.has_capability(smtp_proto::EXT_AUTH) { e.auth() } else { 0 };
        let _ = e.has_capability(smtp_proto::EXT_SIZE);
        let _ = e.size as u64;
    }
}

fuzz_target!(|data: &[u8]| {
    let l = listener();
    let client = TcpStream::connect(l.local_addr().expect("local address")).expect("connect");
    let (mut server, _) = l.accept().expect("accept");
    setsockopt(&client, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).expect("SO_LINGER");
    // Inputs are small (-max_len), far below the socket buffers.
    server.write_all(data).expect("write to the loopback socket");
    drop(server);

    let mut conn = Conn::new(client, "fuzz[127.0.0.1]:25".into(), IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("Conn::new");
    conn.set_timeout(Duration::from_secs(10));
    let mut consumed = 0usize;
    for _ in 0..=data.len() {
        let reply = match conn.read_reply("fuzzing") {
            Ok(r) => r,
            Err(b) => {
                assert!(!b.0.contains('\n'), "multi-line error {:?}", b.0);
                assert!(!b.0.contains("timed out"), "read_reply waited for more data than was sent: {:?}", b.0);
                break;
            }
        };
        assert!((200..600).contains(&reply.code), "reply code {}", reply.code);
        assert_eq!(reply.class(), reply.code / 100);
        assert!(reply.text.starts_with(&reply.code.to_string()), "text {:?} for code {}", reply.text, reply.code);
        assert!(!reply.text.contains('\n'), "multi-line text {:?}", reply.text);
        assert!(!reply.raw.is_empty() && reply.raw.ends_with(b"\n"));
        let lines: Vec<&[u8]> = reply.raw.split_inclusive(|&b| b == b'\n').collect();
        assert!(lines.len() <= MAX_LINES, "{} lines in one reply", lines.len());
        for line in &lines {
            assert!(line.len() <= MAX_LINE, "reply line of {} octets", line.len());
        }
        assert_eq!(data.get(consumed..consumed + reply.raw.len()), Some(reply.raw.as_slice()), "raw is not the input");
        consumed += reply.raw.len();
        offers(&reply.raw);
        if !conn.has_unread() && consumed == data.len() {
            break;
        }
    }
});
