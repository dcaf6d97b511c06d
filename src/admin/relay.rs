/*!
`outq check --relay` and `outq check --send ADDRESS`: the checks that need
the world outside the host.

`--relay` becomes the queue owner (when run by root), because the runner
reads `relay_auth_file` as that account and refuses a file of anyone else,
then sets up a session with every address of every SMTP relay exactly as
delivery does ([`crate::deliver::smtp::Smtp::probe`]): connection, TLS by
the `starttls` policy with the certificate checked, EHLO, AUTH with the
configured credentials. It sends no MAIL FROM. Each step that worked is one
line; the step that failed is a problem with its fix.

`--send` submits a short test message through the installed helper, the
way any caller would, and prints its queue ID; the runner delivers it.
*/
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use super::Target;
use super::check::Finding;
use crate::config::{Relay, RunnerConfig};

/// The fix for a failure, from what it says.
fn fix_for(failure: &str) -> String {
    let has = |s: &str| failure.contains(s);
    if has("CaUsedAsEndEntity") {
        "the relay presents a CA certificate (basicConstraints CA:TRUE, e.g. a self-signed CA) as its own \
         server certificate, which TLS clients refuse: give the relay a server certificate (CA:FALSE, its \
         name in subjectAltName) signed by that CA, and name the CA in tls_ca_file"
            .into()
    } else if has("UnknownIssuer") {
        "the relay's certificate is not signed by a trusted CA: set tls_ca_file to the CA that signed it, \
         or install that CA in the system trust store"
            .into()
    } else if has("NotValidForName") {
        "the relay's certificate does not name the host in relay=: use the name the certificate carries".into()
    } else if has("Expired") {
        "the relay's certificate has expired: renew it on the relay".into()
    } else if has("rejected the credentials") {
        "correct USERNAME PASSWORD in relay_auth_file (one line), or the account on the relay".into()
    } else if has("relay_auth_file") {
        "see the message: relay_auth_file must be owned by the queue owner, mode 0600".into()
    } else if has("refused STARTTLS") || has("does not offer STARTTLS") {
        "enable STARTTLS on the relay, use smtps://, or set starttls = opportunistic".into()
    } else if has("TLS") || has("certificate") {
        "check the relay's TLS set-up and tls_ca_file; with starttls = opportunistic delivery would go on \
         in the clear"
            .into()
    } else if has("timed out") {
        "the relay does not answer in time: check relay= (host and port), firewalls, and the relay itself".into()
    } else if has("connect to") || has("cannot resolve") {
        "check relay= (host and port) and that the relay accepts connections from this host".into()
    } else {
        "see outq.conf(5) for relay, starttls, tls_ca_file and relay_auth_file".into()
    }
}

/// Probe every relay; print what worked; push what failed.
pub fn check_relays(t: &Target, found: &mut Vec<Finding>) {
    let rc = match RunnerConfig::from_config(&t.cfg) {
        Ok(rc) => rc,
        Err(_) => return, // already reported by the configuration check
    };
    if !rc.relays.iter().all(|r| matches!(r, Relay::Smtp { .. })) {
        println!("outq check: relay: delivery is not over SMTP (maildir: or pipe:); nothing to connect to");
        return;
    }
    if let Err(e) = crate::ops::become_owner(&t.spool) {
        found.push(Finding { problem: format!("cannot check the relays as the queue owner: {}", e.what), fix: e.fix });
        return;
    }
    let host = outq_spool::config::effective_hostname(&t.cfg);
    let smtp = match crate::deliver::smtp::Smtp::new(&rc, &host) {
        Ok(s) => s,
        Err(e) => {
            found.push(Finding { problem: format!("relay settings: {e}"), fix: fix_for(&e) });
            return;
        }
    };
    for probe in smtp.probe() {
        let shown = outq_spool::log::escape(probe.relay.as_bytes());
        for step in &probe.steps {
            println!("outq check: relay {shown}: {}", outq_spool::log::escape(step.as_bytes()));
        }
        match &probe.failure {
            None => println!("outq check: relay {shown}: ready for delivery (no mail sent)"),
            Some(why) => found.push(Finding {
                problem: format!("relay {shown}: {}", outq_spool::log::escape(why.as_bytes())),
                fix: fix_for(why),
            }),
        }
    }
}

/// The test message: headers a strict relay accepts.
fn test_message(host: &str, to: &str) -> Vec<u8> {
    let secs = crate::queue::store::now();
    let date = crate::date::rfc5322(secs);
    let id = format!("{secs}.{}@{host}", std::process::id());
    format!(
        "From: outq check <postmaster@{host}>\r\nTo: <{to}>\r\nSubject: outq check: test message from {host}\r\n\
         Date: {date}\r\nMessage-ID: <outq-check.{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This message was queued by 'outq check --send' on {host}.\r\n\
         If it arrived, the path from outq to this mailbox works.\r\n"
    )
    .into_bytes()
}

/// Queue a test message to `address` through the helper; its queue ID.
pub fn send_test(t: &Target, address: &str) -> Result<String, Finding> {
    let fail = |problem: String, fix: &str| Finding { problem, fix: fix.to_owned() };
    if outq_spool::address::Mailbox::parse(address.as_bytes()).is_err() {
        return Err(fail(format!("--send {address:?} is not a mail address"), "give one like admin@example.org"));
    }
    let rc = RunnerConfig::from_config(&t.cfg).unwrap_or_default();
    let program = rc.enqueue_program.clone();
    let mut cmd = Command::new(&program);
    if crate::sendmail::helper::is_setgid(&program) == Some(false) {
        // A development copy: point it at this spool and configuration.
        cmd.arg("--spool").arg(&t.spool).arg("--config").arg(&t.config_path);
    }
    let host = outq_spool::config::effective_hostname(&t.cfg);
    let mut child = cmd
        .arg("--")
        .arg(address)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", program.display()), "install outq-enqueue"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&test_message(&host, address));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(|e| fail(format!("waiting for the helper: {e}"), "try again"))?;
    if status.success() {
        Ok(outq_spool::log::escape(stdout.trim().as_bytes()))
    } else {
        Err(fail(
            format!(
                "the helper refused the test message (exit {}): {}",
                status.code().unwrap_or(-1),
                outq_spool::log::escape(stderr.trim().as_bytes())
            ),
            "see the helper's message above; outq-enqueue(8) lists its exit codes",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_gets_a_specific_fix() {
        let tls =
            fix_for("TLS handshake with r failed: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))");
        assert!(tls.contains("CA certificate"), "{tls}");
        assert!(fix_for("connect to r[127.0.0.1]:25: connection refused").contains("relay="));
        assert!(fix_for("r rejected the credentials: 535 no").contains("relay_auth_file"));
        assert!(fix_for("receiving the greeting from r: timed out").contains("does not answer"));
    }

    #[test]
    fn the_test_message_has_the_headers_relays_require() {
        let m = String::from_utf8(test_message("h.example", "a@b.example")).unwrap_or_default();
        for h in ["From: ", "To: ", "Date: ", "Message-ID: <", "Subject: "] {
            assert!(m.contains(&format!("\r\n{h}")) || m.starts_with(h), "{h} missing in {m}");
        }
    }
}
