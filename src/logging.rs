/*!
The runner's log: syslog (facility mail, ident `outq`) or standard error
(`--log stderr`). One line per event; every byte that came from a caller or
a server is escaped before it gets here (`outq_spool::log::escape`), and
the sink escapes any control byte left as a safety net.
*/
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::OnceLock;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Syslog,
    Stderr,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Choose the sink once, at start-up.
pub fn init(sink: Sink) {
    if sink == Sink::Syslog {
        outq_spool::log::open(c"outq");
    }
    let _ = SINK.set(sink);
}

fn emit(level: &str, line: &str) {
    match SINK.get().copied().unwrap_or(Sink::Stderr) {
        Sink::Syslog if level == "warning" => outq_spool::log::warning(line),
        Sink::Syslog => outq_spool::log::info(line),
        Sink::Stderr => {
            // One write per line: standard error is unbuffered, and
            // `writeln!` would write the prefix, the text and the newline
            // separately.
            let mut out = String::with_capacity(line.len() + 7);
            out.push_str("outq: ");
            out.extend(line.chars().map(|c| if c.is_control() { '?' } else { c }));
            out.push('\n');
            let _ = std::io::stderr().lock().write_all(out.as_bytes());
        }
    }
}

pub fn info(line: &str) {
    emit("info", line);
}

pub fn warning(line: &str) {
    emit("warning", line);
}
