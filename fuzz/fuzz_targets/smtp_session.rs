//! The `-bs` SMTP session (`outq::sendmail::smtpd`, `smtp_command`,
//! `smtp_data`) over arbitrary client input, with a stand-in for the helper
//! that keeps what it is given.
//!
//! Properties: the session ends without panicking; every output line is a
//! reply (`DDD ` or `DDD-`, CR LF); every message handed on was complete and
//! clean (no NUL, no more than the size limit) and had a sender accepted by
//! MAIL and between 1 and the recipient limit of recipients.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use outq::sendmail::smtpd::{Envelope, Reply, Session, Settings, Submit};

const MAX_SIZE: u64 = 4096;
const MAX_RCPTS: usize = 5;

struct Keep(usize);

impl Submit for Keep {
    fn submit(&mut self, envelope: &Envelope, data: &mut dyn Read) -> Reply {
        assert!(!envelope.recipients.is_empty() && envelope.recipients.len() <= MAX_RCPTS);
        let mut text = Vec::new();
        match data.read_to_end(&mut text) {
            Ok(_) => {
                assert!(!text.contains(&0), "a NUL was handed on");
                assert!(text.len() as u64 <= MAX_SIZE, "over the size limit");
                self.0 += 1;
                Reply::new(250, "2.0.0", "Ok")
            }
            Err(_) => Reply::new(451, "4.3.0", "not queued"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut keep = Keep(0);
    let mut out = Vec::new();
    let settings = Settings { hostname: "mx.example".into(), max_size: MAX_SIZE, max_recipients: MAX_RCPTS };
    let _ = Session::new(data, &mut out, &mut keep, settings).run();
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "{line:?}");
        assert!(line.len() >= 6 && line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        assert!(line[3] == b' ' || line[3] == b'-', "{line:?}");
    }
});
