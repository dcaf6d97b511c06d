/*!
SMTP AUTH (RFC 4954) with the credentials of `relay_auth_file`.

The file holds one credential line, `USERNAME PASSWORD`: the user name is
everything up to the first space or tab, the password everything after that
run of blanks, up to the end of the line (it may contain spaces; blanks at
its end are ignored, so it cannot begin or end with one). Empty lines and
lines whose first non-blank character is `#` are comments. The file must be
UTF-8, at most 4096 bytes, hold exactly one credential line, and contain no
control character in it.

Because it holds a password, the file is read from a descriptor opened with
`O_NOFOLLOW` and refused unless, on that descriptor, it is a regular file
owned by the runner's effective uid (the queue owner) with no permission
bit for group or others. A refusal is a temporary failure naming the file
and the fix, so an operator sees it in the log and mail waits.

Mechanisms: PLAIN when offered, else LOGIN; nothing else is attempted. The
password is never logged and never put in an error text.
*/
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use nix::fcntl::OFlag;

use super::client::{Broken, Conn};

/// Largest credentials file read.
const MAX_FILE: u64 = 4096;

/// A user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// Read and check the credentials file. The error names the file and the
/// fix; it never quotes the file's content.
pub fn read_file(path: &Path) -> Result<Credentials, String> {
    let shown = path.display();
    // O_NONBLOCK: opening a FIFO planted in place of the file must not hang
    // the runner; it is refused below as not a regular file.
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = OpenOptions::new().read(true).custom_flags(flags.bits()).open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            format!("relay_auth_file {shown} is a symbolic link (fix: set relay_auth_file to the file itself)")
        } else {
            format!(
                "cannot open relay_auth_file {shown}: {} (fix: create it, owned by the queue owner, mode 0600)",
                super::client::describe(&e)
            )
        }
    })?;
    let meta = file.metadata().map_err(|e| format!("relay_auth_file {shown}: {}", super::client::describe(&e)))?;
    if !meta.file_type().is_file() {
        return Err(format!("relay_auth_file {shown} is not a regular file (fix: make it a plain file, mode 0600)"));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "relay_auth_file {shown} is owned by uid {}, not by the queue owner (uid {euid}) \
             (fix: chown {euid} {shown})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "relay_auth_file {shown} has mode {mode:04o}, which gives group or others access to a password \
             (fix: chmod 600 {shown})"
        ));
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "relay_auth_file {shown} is larger than {MAX_FILE} bytes (fix: one USERNAME PASSWORD line)"
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read relay_auth_file {shown}: {}", super::client::describe(&e)))?;
    parse(&bytes).map_err(|why| format!("relay_auth_file {shown}: {why} (fix: one line 'USERNAME PASSWORD')"))
}

/// Parse the file's content (see the module documentation).
fn parse(bytes: &[u8]) -> Result<Credentials, String> {
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let blank = [' ', '\t'];
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches(blank);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = n + 1;
        if found.is_some() {
            return Err(format!("line {n}: a second credential line"));
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("line {n}: control character"));
        }
        let (user, password) = line.split_once(blank).ok_or_else(|| format!("line {n}: no password"))?;
        let password = password.trim_matches(blank);
        if password.is_empty() {
            return Err(format!("line {n}: no password"));
        }
        found = Some(Credentials { user: user.to_owned(), password: password.to_owned() });
    }
    found.ok_or_else(|| "no credential line".to_owned())
}

/// The SASL PLAIN response (RFC 4616): no authorization identity.
fn plain_response(c: &Credentials) -> String {
    let mut msg = Vec::with_capacity(c.user.len() + c.password.len() + 2);
    msg.push(0);
    msg.extend_from_slice(c.user.as_bytes());
    msg.push(0);
    msg.extend_from_slice(c.password.as_bytes());
    BASE64.encode(msg)
}

/// Which mechanism to use among those offered (smtp-proto's bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn choose(offered: u64) -> Option<Mechanism> {
        if offered & smtp_proto::AUTH_PLAIN != 0 {
            Some(Mechanism::Plain)
        } else if offered & smtp_proto::AUTH_LOGIN != 0 {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// Why authentication did not succeed: the connection died, or the server
/// said no (its reply).
#[derive(Debug)]
pub enum AuthError {
    Broken(Broken),
    Refused(String),
}

impl From<Broken> for AuthError {
    fn from(b: Broken) -> AuthError {
        AuthError::Broken(b)
    }
}

/// Authenticate on `conn`. Each step is bounded by `timeout`.
pub fn authenticate(conn: &mut Conn, mech: Mechanism, c: &Credentials, timeout: Duration) -> Result<(), AuthError> {
    const WHAT: &str = "authenticating";
    let reply = match mech {
        Mechanism::Plain => conn.command(&format!("AUTH PLAIN {}", plain_response(c)), WHAT, timeout)?,
        Mechanism::Login => {
            let r = conn.command("AUTH LOGIN", WHAT, timeout)?;
            if r.code != 334 {
                return Err(AuthError::Refused(r.text));
            }
            let r = conn.command(&BASE64.encode(&c.user), WHAT, timeout)?;
            if r.code != 334 {
                return Err(AuthError::Refused(r.text));
            }
            conn.command(&BASE64.encode(&c.password), WHAT, timeout)?
        }
    };
    match reply.code {
        235 => Ok(()),
        // A challenge after PLAIN's initial response would ask for more than
        // we have: cancel the exchange (RFC 4954 4) and report it.
        334 => {
            let r = conn.command("*", WHAT, timeout)?;
            Err(AuthError::Refused(format!("unexpected challenge; cancelled: {}", r.text)))
        }
        _ => Err(AuthError::Refused(reply.text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }

    #[test]
    fn parses_the_format() {
        assert_eq!(parse(b"alice s3cret\n"), Ok(creds("alice", "s3cret")));
        assert_eq!(
            parse(b"# relay\n\n  # x\nalice@example.org\t pass with spaces  \r\n"),
            Ok(creds("alice@example.org", "pass with spaces"))
        );
        assert_eq!(parse(b"  bob pw"), Ok(creds("bob", "pw")));
    }

    #[test]
    fn refuses_bad_content_without_quoting_it() {
        for (bad, why) in [
            (&b""[..], "no credential line"),
            (b"# only a comment\n", "no credential line"),
            (b"alice\n", "line 1: no password"),
            (b"alice   \n", "line 1: no password"),
            (b"a pw\nb pw2\n", "line 2: a second credential line"),
            (b"alice pw\x00x\n", "line 1: control character"),
            (b"alice \xff\n", "not UTF-8"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, why);
            assert!(!e.contains("pw"));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let d = format!("{:?}", creds("alice", "hunter2"));
        assert!(d.contains("alice") && !d.contains("hunter2"));
    }

    #[test]
    fn plain_response_is_rfc4616() {
        assert_eq!(plain_response(&creds("user", "pass")), "AHVzZXIAcGFzcw==");
    }

    #[test]
    fn prefers_plain() {
        use smtp_proto::{AUTH_CRAM_MD5, AUTH_LOGIN, AUTH_PLAIN};
        assert_eq!(Mechanism::choose(AUTH_LOGIN | AUTH_PLAIN), Some(Mechanism::Plain));
        assert_eq!(Mechanism::choose(AUTH_LOGIN | AUTH_CRAM_MD5), Some(Mechanism::Login));
        assert_eq!(Mechanism::choose(AUTH_CRAM_MD5), None);
    }

    #[test]
    fn checks_the_file_on_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth");
        std::fs::write(&p, "alice secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file(&p), Ok(creds("alice", "secret")));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_file(&p).unwrap_err();
        assert!(e.contains("mode 0640") && e.contains("chmod 600") && !e.contains("secret"), "{e}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_file(&link).unwrap_err().contains("is a symbolic link"));
        assert!(read_file(dir.path()).unwrap_err().contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_file(&fifo).unwrap_err().contains("not a regular file"));
        assert!(read_file(&dir.path().join("none")).unwrap_err().contains("No such file"));
    }

    #[test]
    fn refuses_a_file_of_another_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED refuses_a_file_of_another_owner (needs root to chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth");
        std::fs::write(&p, "alice secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = read_file(&p).unwrap_err();
        assert!(e.contains("owned by uid 65534") && e.contains("chown 0"), "{e}");
    }
}
