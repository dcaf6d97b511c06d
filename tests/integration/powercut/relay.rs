/*!
The relay of the power-cut test: a small SMTP server on loopback that
accepts, defers (`defer.` recipients, first time only) or refuses (`fail.`
recipients) by the recipient's name, and calls a hook with the recipients
of each accepted message before it sends the final 250: that is where the
"right after acceptance" power cut is taken, while the runner waits for the
reply and writes nothing.
*/

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Called with the accepted recipients, before the 250 goes out.
pub type AcceptHook = Arc<dyn Fn(&[String]) + Send + Sync>;

struct Shared {
    stop: AtomicBool,
    /// Refuse nothing (the relay of the boot after a cut).
    accept_all: bool,
    deferred_once: Mutex<HashSet<String>>,
    hook: AcceptHook,
}

pub struct Relay {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Relay {
    pub fn start(accept_all: bool, hook: AcceptHook) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accept_all,
            deferred_once: Mutex::new(HashSet::new()),
            hook,
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || {
                    let _ = serve(tcp, &sh);
                });
            }
        });
        Relay { port, shared }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn path_of(line: &str) -> String {
    let start = line.find('<').map_or(line.len(), |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_ascii_lowercase()
}

fn serve(tcp: TcpStream, sh: &Shared) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = tcp.try_clone()?;
    let mut inp = BufReader::new(tcp);
    let send = |out: &mut TcpStream, s: &str| -> std::io::Result<()> { out.write_all(format!("{s}\r\n").as_bytes()) };
    send(&mut out, "220 relay.powercut.test ESMTP")?;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if inp.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let verb = cmd.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => send(&mut out, "250-relay.powercut.test\r\n250 8BITMIME")?,
            "MAIL" => {
                rcpts.clear();
                send(&mut out, "250 2.1.0 Ok")?;
            }
            "RCPT" => {
                let rcpt = path_of(&cmd);
                if !sh.accept_all && rcpt.starts_with("fail.") {
                    send(&mut out, "550 5.1.1 no such mailbox")?;
                } else if !sh.accept_all
                    && rcpt.starts_with("defer.")
                    && sh.deferred_once.lock().unwrap().insert(rcpt.clone())
                {
                    send(&mut out, "451 4.2.0 mailbox busy, try later")?;
                } else {
                    rcpts.push(rcpt);
                    send(&mut out, "250 2.1.5 Ok")?;
                }
            }
            "DATA" => {
                if rcpts.is_empty() {
                    send(&mut out, "554 5.5.1 no valid recipients")?;
                    continue;
                }
                send(&mut out, "354 go ahead")?;
                loop {
                    line.clear();
                    if inp.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                (sh.hook)(&rcpts);
                rcpts.clear();
                send(&mut out, "250 2.0.0 Ok: queued")?;
            }
            "RSET" => {
                rcpts.clear();
                send(&mut out, "250 2.0.0 Ok")?;
            }
            "NOOP" => send(&mut out, "250 2.0.0 Ok")?,
            "QUIT" => {
                let _ = send(&mut out, "221 2.0.0 Bye");
                return Ok(());
            }
            _ => send(&mut out, "502 5.5.2 command not recognized")?,
        }
    }
}
