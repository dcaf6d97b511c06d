/*!
`outq show ID [--headers | --body | --raw | --json]`: one entry.

Default: the envelope, the recipients with their states and last replies,
then the message's header section. `--headers` prints only the message
header section, `--body` only the message body, `--raw` the message exactly
as submitted, `--json` the same document as `outq list --json` for it.
*/
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;

use super::inventory;
use crate::error::Error;
use crate::queue::validate;

/// What part of the entry to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Summary,
    Headers,
    Body,
    Raw,
    Json,
}

/// Reads the message part of an entry file.
struct Message<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl Read for Message<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(buf.get_mut(..want).unwrap_or(&mut []), self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A header byte as printed: printable ASCII, tab and UTF-8 pass; other
/// control bytes become `\xNN`.
fn shown_byte(b: u8) -> Vec<u8> {
    if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 { vec![b] } else { format!("\\x{b:02x}").into_bytes() }
}

pub fn run(o: &super::Opened, id: &str, part: Part) -> Result<(), Error> {
    let q = inventory::locate(&o.store, id)
        .ok_or_else(|| Error::new(format!("no entry {}", outq_spool::log::escape(id.as_bytes())), "see 'outq list'"))?;
    let limits = outq_spool::entry::Limits { max_recipients: o.cfg.max_recipients, max_size: o.cfg.message_size_limit };
    let view = inventory::view(&o.store, q, id, &limits);
    let mut out = std::io::stdout().lock();
    if part == Part::Json {
        let s = serde_json::to_string_pretty(&view)
            .map_err(|e| Error::new(format!("cannot encode JSON: {e}"), "report this as a bug"))?;
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let loaded = validate::load(&o.store, q, id, &limits).map_err(|why| {
        Error::new(format!("entry {id} cannot be read: {why}"), "it stays where it is; see 'outq list'")
    })?;
    let (start, size) = (loaded.parsed.body_offset, loaded.parsed.header.size);
    let mut msg = BufReader::new(Message { file: &loaded.file, pos: start, end: start + size });
    let io = |e: std::io::Error| Error::new(format!("cannot print: {e}"), "check the output");
    match part {
        Part::Raw => {
            std::io::copy(&mut msg, &mut out).map_err(io)?;
        }
        Part::Headers | Part::Body | Part::Summary => {
            if part == Part::Summary {
                let _ = writeln!(
                    out,
                    "id: {}\nstate: {}\narrival: {}\nsize: {}\nsender: <{}>",
                    view.id,
                    view.state,
                    crate::date::rfc5322(view.arrival),
                    view.size,
                    view.sender
                );
                for r in &view.recipients {
                    let _ = writeln!(out, "recipient: <{}> {} {}", r.address, r.status, r.reply);
                }
                if let Some(e) = &view.last_error {
                    let _ = writeln!(out, "last error: {e}");
                }
                if let Some(h) = &view.hold_reason {
                    let _ = writeln!(out, "held: {h}");
                }
                let _ = writeln!(out);
            }
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = msg.read_until(b'\n', &mut line).map_err(io)?;
                let blank = line == b"\n" || line == b"\r\n";
                if n == 0 || blank {
                    break;
                }
                if part != Part::Body {
                    // Header lines go to a terminal: escape what could
                    // control it (--raw prints the bytes as they are).
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    let shown: Vec<u8> = text.iter().flat_map(|&b| shown_byte(b)).collect();
                    out.write_all(&shown).and_then(|()| out.write_all(b"\n")).map_err(io)?;
                }
            }
            if part == Part::Body {
                std::io::copy(&mut msg, &mut out).map_err(io)?;
            }
        }
        Part::Json => {}
    }
    Ok(())
}
