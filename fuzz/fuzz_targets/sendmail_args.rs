//! outq-sendmail's command line (`outq::sendmail::args::parse`), which any
//! local program or user controls.
//!
//! The input is split on NUL bytes: the first word is argv[0] (so `mailq`
//! is reached), the others the arguments.
//!
//! Properties: never panics; an error message is printable ASCII (every
//! caller byte escaped: it goes to a terminal or a log); on success the
//! recipients are exactly the words after the options (a suffix of the
//! arguments, unchanged), a deliver run has recipients or `-t`, and each
//! value came from the command line.
#![no_main]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use libfuzzer_sys::fuzz_target;
use outq::sendmail::args::{self, Mode};

fuzz_target!(|data: &[u8]| {
    let mut words = data.split(|&b| b == 0);
    let argv0 = words.next().map(OsStr::from_bytes);
    let argv: Vec<Vec<u8>> = words.map(<[u8]>::to_vec).collect();
    let result = args::parse(argv0, argv.clone().into_iter().map(OsString::from_vec));
    let a = match result {
        Ok(a) => a,
        Err(e) => {
            assert!(e.0.bytes().all(|b| (0x20..0x7f).contains(&b)), "unescaped byte in usage error {:?}", e.0);
            return;
        }
    };
    // Recipients: a suffix of the arguments, taken verbatim.
    let k = argv.len() - a.recipients.len();
    assert_eq!(&argv[k..], &a.recipients[..], "recipients are not the trailing arguments");
    // The options before them: every word starts with '-' (or is "--").
    let (options, _) = argv.split_at(k);
    if let Some(last) = options.last() {
        // Either "--", or an option word, or the value of the option before.
        assert!(!last.is_empty() || options.len() >= 2, "empty word taken as an option");
    }
    if options.first().is_some_and(|w| !w.starts_with(b"-")) {
        panic!("first word {:?} read as an option", String::from_utf8_lossy(&options[0]));
    }
    if a.mode == Mode::Deliver && !a.extract {
        assert!(!a.recipients.is_empty());
    }
    let from_argv = |v: &[u8]| argv.iter().any(|w| w.as_slice() == v || w.ends_with(v));
    for v in [a.sender.as_deref(), a.full_name.as_deref(), a.config.as_ref().map(|p| p.as_os_str().as_bytes())]
        .into_iter()
        .flatten()
    {
        assert!(from_argv(v), "value {v:?} not on the command line");
    }
    if a.mode == Mode::ListQueue {
        let invoked = argv0.map(|p| p.as_bytes().rsplit(|&b| b == b'/').next().unwrap_or_default());
        assert!(invoked == Some(b"mailq") || options.iter().any(|w| w.windows(2).any(|p| p == b"bp") || w == b"p"));
    }
});
