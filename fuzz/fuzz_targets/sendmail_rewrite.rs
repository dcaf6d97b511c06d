//! outq-sendmail's address rewriting (`outq::sendmail::rewrite`): bare
//! names in address fields qualified with `myorigin`, masquerading, and the
//! address lists programs pass on the command line (`a,b`, `Name <a@b>`).
//!
//! The first byte picks the function: 0 `field` without masquerading,
//! 1 `field` with masquerading, 2 `command_line`. The rest is the input (a
//! field value after `To:`, or one command-line word).
//!
//! Properties:
//! - no panic and no endless loop on any input;
//! - without masquerading, rewriting only inserts: the field is a
//!   subsequence of the result;
//! - a rewritten field needs no second rewrite (with and without
//!   masquerading, the masquerade domain not being one of this host's);
//! - every address `command_line` returns is returned unchanged when it is
//!   given back alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outq::sendmail::rewrite::{Rules, command_line, field};

const LOCAL: &[&str] = &["host.example", "localhost"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    match mode % 3 {
        0 | 1 => {
            let rules = Rules {
                origin: "host.example",
                local_domains: LOCAL,
                masquerade: (mode % 3 == 1).then_some("m.example"),
                masquerade_users: &[],
            };
            let mut raw = b"To:".to_vec();
            raw.extend_from_slice(input);
            let Some(out) = field(&raw, &rules) else { return };
            if rules.masquerade.is_none() {
                let mut it = out.iter();
                assert!(raw.iter().all(|b| it.any(|o| o == b)), "{raw:?} is not inside {out:?}");
            }
            assert_eq!(field(&out, &rules), None, "{raw:?} -> {out:?} changes again");
        }
        _ => {
            if let Ok(list) = command_line(input) {
                for a in list {
                    assert_eq!(command_line(&a), Ok(vec![a.clone()]), "from {input:?}");
                }
            }
        }
    }
});
