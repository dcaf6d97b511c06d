/*!
`-bs` on the real standard input and output: the read timeout, the
termination signals, and the [`Submit`] that queues each message through
the same pipeline as `-t` mail ([`super::submit_stream`]) and turns the
helper's exit status into an SMTP reply.

Replies for the helper's statuses: 0 is `250 2.0.0`; 65 (the message
itself was refused) is `554 5.6.0`; 64 (an address the helper refused) is
`553 5.1.3`; 77 is `550 5.7.1`; everything else, and a failure to run the
helper, is `451 4.3.0` so that the client keeps the message and tries
again. The helper's own explanation goes to standard error (the journal,
under the socket unit).
*/
#![forbid(unsafe_code)]

use std::io::{self, BufReader, BufWriter, Read};
use std::os::fd::AsFd;

use nix::errno::Errno;
use outq_spool::exit::Code;
use outq_spool::process::{Terminations, Wait};

use super::smtpd::{Envelope, Reply, Session, Settings, Submit};
use super::{Context, Failure, Identity, Message, args, helper};

/// Seconds of silence after which the session ends (RFC 5321 4.5.3.2
/// asks for at least 5 minutes).
pub const TIMEOUT_SECS: u32 = 300;

/// Standard input with a timeout, abandoned on a termination signal.
#[derive(Debug)]
struct TimedInput<'a> {
    signals: &'a Terminations,
}

impl Read for TimedInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stdin = io::stdin();
        let mut waited = 0;
        loop {
            // poll(2) waits at most 60 s per call here; count the calls.
            match self.signals.wait_readable_for(stdin.as_fd(), Some(60_000))? {
                Some(Wait::Ready) => {}
                Some(Wait::Signal(sig)) => return Err(io::Error::other(helper::Interrupted(sig))),
                None => {
                    waited += 60;
                    if waited >= TIMEOUT_SECS {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    continue;
                }
            }
            match nix::unistd::read(stdin.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Queues each message with the helper.
struct Helper<'a> {
    ctx: &'a Context,
    signals: &'a Terminations,
}

impl Submit for Helper<'_> {
    fn submit(&mut self, envelope: &Envelope, data: &mut dyn Read) -> Reply {
        let sender_args = args::Args { sender: Some(envelope.sender.clone()), ..args::Args::default() };
        let me = match Identity::new(&sender_args, &self.ctx.rewriting) {
            Ok(me) => me,
            Err(f) => return failure_reply(&f),
        };
        let msg = Message { me: &me, recipients: &envelope.recipients, extract: false };
        let mut reader = BufReader::with_capacity(64 * 1024, data);
        match super::submit_stream(self.ctx, &msg, &mut reader, self.signals) {
            Ok(0) => Reply::new(250, "2.0.0", "Ok: queued"),
            Ok(65) => Reply::new(554, "5.6.0", "Error: message refused; see the system log"),
            Ok(64) => Reply::new(553, "5.1.3", "Error: address refused; see the system log"),
            Ok(77) => Reply::new(550, "5.7.1", "Error: not permitted to submit mail"),
            Ok(_) => Reply::new(451, "4.3.0", "Error: queue temporarily unavailable; try again later"),
            Err(f) => failure_reply(&f),
        }
    }
}

fn failure_reply(f: &Failure) -> Reply {
    let text = format!("Error: {}", f.what.replace(['\r', '\n'], " "));
    match f.code {
        Code::DataErr => Reply::new(554, "5.6.0", text),
        Code::Usage => Reply::new(553, "5.1.3", text),
        Code::NoPerm => Reply::new(550, "5.7.1", text),
        _ => Reply::new(451, "4.3.0", text),
    }
}

/// Run one session on standard input and output; the exit status.
pub fn serve(ctx: &Context, signals: &Terminations) -> Result<u8, Failure> {
    let input = BufReader::with_capacity(64 * 1024, TimedInput { signals });
    let output = BufWriter::new(io::stdout().lock());
    let settings = Settings {
        hostname: ctx.host().to_owned(),
        max_size: ctx.cfg.message_size_limit,
        max_recipients: ctx.cfg.max_recipients,
    };
    let mut helper = Helper { ctx, signals };
    match Session::new(input, output, &mut helper, settings).run() {
        Ok(super::smtpd::End::Quit | super::smtpd::End::Eof) => Ok(0),
        Ok(super::smtpd::End::Closed) => Ok(Code::TempFail as u8),
        Err(e) => Err(Failure::temp(format!("SMTP session failed: {e}"), "connect again")),
    }
}
