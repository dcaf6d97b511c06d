/*!
`maildir:/path`: drop each message into a Maildir, one file per recipient.

For development, tests and the README's demonstration: no network, and the
result is a file anyone can read. Each file is the message as submitted,
preceded by `Return-Path: <sender>`, `Delivered-To: <recipient>` and the
trace header. It is written in `tmp/`, fsynced, and renamed into `new/`
(the Maildir protocol), with a unique name of time, queue ID, recipient
index and host. The Maildir and its `tmp/`, `new/`, `cur/` are created
(mode 0700) if missing.
*/
#![forbid(unsafe_code)]

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{Outcome, Outgoing, Status, Transport};

/// The Maildir transport.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    host: String,
}

impl Maildir {
    pub fn new(root: PathBuf, host: &str) -> Maildir {
        Maildir { root, host: host.to_owned() }
    }

    fn prepare(&self) -> io::Result<()> {
        let mut b = DirBuilder::new();
        b.recursive(true).mode(0o700);
        for sub in ["tmp", "new", "cur"] {
            b.create(self.root.join(sub))?;
        }
        Ok(())
    }

    fn write_one(&self, msg: &Outgoing<'_>, index: usize, rcpt: &str) -> io::Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}R{index}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            msg.id,
            self.host
        );
        let tmp = self.root.join("tmp").join(&name);
        let file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc_nofollow()).open(&tmp)?;
        let mut out = BufWriter::with_capacity(64 * 1024, &file);
        writeln!(out, "Return-Path: <{}>", msg.sender.as_str())?;
        writeln!(out, "Delivered-To: {rcpt}")?;
        writeln!(out, "{}", msg.received)?;
        io::copy(&mut msg.body(), &mut out)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, self.root.join("new").join(&name))?;
        File::open(self.root.join("new"))?.sync_all()
    }
}

/// `O_NOFOLLOW`, so a planted symbolic link in `tmp/` is not written through.
fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

impl Transport for Maildir {
    fn deliver(&mut self, msg: &Outgoing<'_>) -> Vec<Outcome> {
        let relay = format!("maildir:{}", self.root.display());
        if let Err(e) = self.prepare() {
            return Outcome::all(msg, Status::Deferred, &format!("cannot create the Maildir: {e}"), &relay);
        }
        msg.recipients
            .iter()
            .enumerate()
            .map(|(i, r)| match self.write_one(msg, i, r.as_str()) {
                Ok(()) => Outcome::new(Status::Sent, "delivered to Maildir", relay.clone()),
                Err(e) => Outcome::new(Status::Deferred, format!("cannot write to the Maildir: {e}"), relay.clone()),
            })
            .collect()
    }
}
