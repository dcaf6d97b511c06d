/*!
Delivery: the transports a message can leave through, behind one interface.

The runner hands a [`Transport`] one message at a time ([`Outgoing`]) and
gets back one [`Outcome`] per recipient, in order. The message is never
loaded whole: [`Outgoing::body`] streams it from the entry file.

- [`smtp`]: SMTP / SMTPS relays, connections reused across messages;
- [`maildir`]: drops the message and its envelope into a Maildir;
- [`pipe`]: runs a program with the message on standard input;
- [`wire`]: the SMTP DATA encoding (CRLF, dot-stuffing, line length).
*/
#![forbid(unsafe_code)]

pub mod maildir;
pub mod pipe;
pub mod smtp;
pub mod wire;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use outq_spool::address::{Mailbox, Sender};
use outq_spool::queue_id::QueueId;

use crate::config::{Relay, RunnerConfig};

/// One message to deliver to some of its recipients.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub id: &'a QueueId,
    pub sender: &'a Sender,
    /// The recipients to attempt now (those still pending).
    pub recipients: &'a [Mailbox],
    /// The trace header to put in front of the message, without a line end
    /// (`Received: from userid 33 (www-data) by host (outq) id ID; DATE`).
    pub received: &'a str,
    /// The entry file, positioned anywhere (reads use offsets).
    pub entry: &'a File,
    pub body_offset: u64,
    pub size: u64,
}

impl Outgoing<'_> {
    /// The message bytes exactly as submitted, streamed from the entry.
    pub fn body(&self) -> Body<'_> {
        Body { file: self.entry, pos: self.body_offset, end: self.body_offset.saturating_add(self.size) }
    }
}

/// A reader over the message bytes of an entry (pread-based, so several
/// readers never disturb each other's position).
#[derive(Debug)]
pub struct Body<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(buf.get_mut(..want).unwrap_or(&mut []), self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "entry ended before its declared size"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Accepted by the next hop: done.
    Sent,
    /// Temporary failure: try again later.
    Deferred,
    /// Permanent failure: give up on this recipient.
    Failed,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// The server's reply or our own explanation, one line, unescaped.
    pub reply: String,
    /// Where it went, for the log: `host[ip]:port`, `maildir:/path`, ...
    pub relay: String,
}

impl Outcome {
    pub fn new(status: Status, reply: impl Into<String>, relay: impl Into<String>) -> Outcome {
        Outcome { status, reply: reply.into(), relay: relay.into() }
    }

    /// The same outcome for every recipient of `msg`.
    pub fn all(msg: &Outgoing<'_>, status: Status, reply: &str, relay: &str) -> Vec<Outcome> {
        msg.recipients.iter().map(|_| Outcome::new(status, reply, relay)).collect()
    }
}

/// A way out for messages. Each delivery worker owns one, so an
/// implementation may keep connections open between messages.
pub trait Transport: Send {
    /// Attempt every recipient of `msg`; one outcome per recipient, in order.
    fn deliver(&mut self, msg: &Outgoing<'_>) -> Vec<Outcome>;

    /// Close whatever is kept open (idle, or shutting down).
    fn close(&mut self) {}
}

/// Build the transport for `cfg.relays`.
pub fn build(cfg: &RunnerConfig, myhostname: &str) -> Result<Box<dyn Transport>, String> {
    match cfg.relays.first() {
        Some(Relay::Maildir(path)) => Ok(Box::new(maildir::Maildir::new(path.clone(), myhostname))),
        Some(Relay::Pipe(argv)) => Ok(Box::new(pipe::Pipe::new(argv.clone(), cfg.data_timeout))),
        Some(Relay::Smtp { .. }) => Ok(Box::new(smtp::Smtp::new(cfg, myhostname)?)),
        None => Err("no relay configured".into()),
    }
}
