/*!
`pipe:/absolute/program args...`: run a program per message.

The program gets the message (the trace header, then the message as
submitted) on standard input and the envelope in its environment, which is
otherwise empty but for `PATH=/usr/bin:/bin`:
`OUTQ_QUEUE_ID`, `OUTQ_SENDER` (empty for the null sender) and
`OUTQ_RECIPIENTS` (space-separated; addresses never contain unquoted
spaces, and none starts with `-`). Its exit status decides for every
recipient: 0 delivered, 75 (EX_TEMPFAIL) try again later, anything else
failed; killed by a signal or by the `data_timeout` counts as temporary.
The first line of its standard error, if any, becomes the reply text.
*/
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Outcome, Outgoing, Status, Transport};

/// The pipe transport.
#[derive(Debug)]
pub struct Pipe {
    argv: Vec<String>,
    timeout: Duration,
}

impl Pipe {
    pub fn new(argv: Vec<String>, timeout: Duration) -> Pipe {
        Pipe { argv, timeout }
    }

    fn run(&self, msg: &Outgoing<'_>) -> Result<(Status, String), String> {
        let (prog, args) = self.argv.split_first().ok_or("no program")?;
        let rcpts: Vec<&str> = msg.recipients.iter().map(|r| r.as_str()).collect();
        let mut child = Command::new(prog)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("OUTQ_QUEUE_ID", msg.id.as_str())
            .env("OUTQ_SENDER", msg.sender.as_str())
            .env("OUTQ_RECIPIENTS", rcpts.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {prog}: {e}"))?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut buf);
            let _ = io::copy(&mut stderr, &mut io::sink());
            buf
        });
        // The message is written from a scoped thread, so a program that
        // stops reading without exiting is still bounded by the timeout:
        // killing it makes the write fail and the thread end.
        let stdin = child.stdin.take();
        let deadline = Instant::now() + self.timeout;
        let waited = std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> io::Result<()> {
                let Some(mut stdin) = stdin else { return Ok(()) };
                writeln!(stdin, "{}", msg.received)?;
                io::copy(&mut msg.body(), &mut stdin).map(|_| ())
            });
            let status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break Ok(Some(st)),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Ok(None);
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(format!("cannot wait for {prog}: {e}"));
                    }
                }
            };
            let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("writer failed")));
            (status, written)
        });
        let status = match waited {
            (Err(e), _) => return Err(e),
            (Ok(None), _) => {
                return Ok((Status::Deferred, format!("{prog} timed out after {}s", self.timeout.as_secs())));
            }
            (Ok(Some(st)), Err(e)) if st.success() && e.kind() != io::ErrorKind::BrokenPipe => {
                return Ok((Status::Deferred, format!("cannot write the message to {prog}: {e}")));
            }
            (Ok(Some(st)), _) => st,
        };
        let err = err_reader.join().unwrap_or_default();
        let first = String::from_utf8_lossy(&err).lines().next().unwrap_or("").chars().take(400).collect::<String>();
        let text = |what: &str| if first.is_empty() { what.to_owned() } else { format!("{what}: {first}") };
        Ok(match status.code() {
            Some(0) => (Status::Sent, text("delivered")),
            Some(75) => (Status::Deferred, text(&format!("{prog} exit 75"))),
            Some(n) => (Status::Failed, text(&format!("{prog} exit {n}"))),
            None => (Status::Deferred, text(&format!("{prog} killed by a signal"))),
        })
    }
}

impl Transport for Pipe {
    fn deliver(&mut self, msg: &Outgoing<'_>) -> Vec<Outcome> {
        let relay = format!("pipe:{}", self.argv.first().map(String::as_str).unwrap_or(""));
        match self.run(msg) {
            Ok((status, reply)) => Outcome::all(msg, status, &reply, &relay),
            Err(e) => Outcome::all(msg, Status::Deferred, &e, &relay),
        }
    }
}
