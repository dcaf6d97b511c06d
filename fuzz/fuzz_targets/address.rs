//! Envelope address validation (`outq_spool::address`): what the helper
//! checks on the command line and the runner checks again in every entry.
//!
//! The first byte picks the function: 0 `Mailbox::parse`, 1 `Sender::parse`,
//! 2 `Mailbox::parse_or_qualify` (the rest split at the first NUL into the
//! raw address and the domain). The remaining bytes are the input.
//!
//! Properties on `Ok`: the address is printable ASCII, has no space outside
//! a quoted string, does not start with `-`, is at most 254 octets; parsing
//! it again (bare or in angle brackets) gives the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outq_fuzz::address_violation;
use outq_spool::address::{Mailbox, Sender};

fn check(m: &Mailbox, input: &[u8]) {
    let s = m.as_str();
    if let Some(why) = address_violation(s) {
        panic!("accepted {:?} as {s:?}: {why}", String::from_utf8_lossy(input));
    }
    assert_eq!(Mailbox::parse(s.as_bytes()).as_ref(), Ok(m), "re-parsing {s:?} differs");
    assert_eq!(Mailbox::parse(format!("<{s}>").as_bytes()).as_ref(), Ok(m), "re-parsing <{s}> differs");
    assert_eq!(m.to_string(), s);
    // As written in an entry and in MAIL FROM / RCPT TO.
    assert_eq!(Sender::parse(s.as_bytes()), Ok(Sender::Mailbox(m.clone())));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(m) = Mailbox::parse(input) {
                check(&m, input);
                assert_ne!(input, b"<>");
            }
        }
        1 => match Sender::parse(input) {
            Ok(Sender::Null) => assert!(input.is_empty() || input == b"<>", "{input:?} read as the null sender"),
            Ok(Sender::Mailbox(m)) => {
                check(&m, input);
                let shown = Sender::Mailbox(m.clone()).to_string();
                assert_eq!(shown, format!("<{}>", m.as_str()));
            }
            Err(_) => {}
        },
        _ => {
            let (raw, domain) = match input.iter().position(|&b| b == 0) {
                Some(i) => (&input[..i], &input[i + 1..]),
                None => (input, &b"host.example"[..]),
            };
            let domain = String::from_utf8_lossy(domain);
            if let Ok(m) = Mailbox::parse_or_qualify(raw, &domain) {
                check(&m, raw);
                // Either the input was a whole mailbox, or a local part that
                // the domain was appended to.
                let whole = Mailbox::parse(raw).ok();
                let inner = raw.strip_prefix(b"<").and_then(|r| r.strip_suffix(b">")).unwrap_or(raw);
                let qualified = format!("{}@{domain}", String::from_utf8_lossy(inner));
                assert!(
                    whole.as_ref() == Some(&m) || m.as_str() == qualified,
                    "parse_or_qualify({raw:?}, {domain:?}) gave {:?}",
                    m.as_str()
                );
            }
        }
    }
});
