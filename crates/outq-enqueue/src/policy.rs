/*!
Who may submit (`submit_users`) and the envelope they submit.

The caller is the real uid the kernel reports. Its login is needed only
for a default sender (no `-f`) or a `submit_users` list; only then are the
account files `/etc/passwd` and `/etc/group` read, directly and never
through NSS (see `outq_spool::accounts`: no name service library is ever
loaded into this process). Otherwise the submission path reads no account
database at all: the entry's owner is the uid, and the runner names the
submitter from it.

In `submit_users`, a number is a user ID and `@`number a group ID, for
accounts that exist only in a directory service.
*/
#![forbid(unsafe_code)]

use nix::unistd::getgroups;
use outq_spool::accounts::{self, Passwd};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::config::{self, Config, SubmitUsers};
use outq_spool::entry::is_valid_login;
use outq_spool::exit::Code;
use outq_spool::fs::FsError;
use outq_spool::log::escape;

use crate::args::Args;
use crate::failure::Failure;
use crate::startup::Env;

/// The submitting user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    /// From the password file, when it was needed.
    pub login: Option<String>,
}

/// A validated envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sender: Sender,
    pub recipients: Vec<Mailbox>,
}

fn denied(what: String) -> Failure {
    Failure::new(Code::NoPerm, what, "ask the administrator to add you to submit_users in outq.conf")
}

fn unreadable(e: FsError) -> Failure {
    Failure::temp(format!("cannot read the account files: {e}"), "check /etc/passwd and /etc/group with 'outq check'")
}

/// Identify the caller and apply `submit_users`. The password file is read
/// only when the login is needed: for the default sender (`need_login`)
/// or a `submit_users` list.
pub fn authorize(cfg: &Config, env: &Env, need_login: bool) -> Result<Caller, Failure> {
    let uid = env.ruid.as_raw();
    if !need_login && matches!(cfg.submit_users, SubmitUsers::Anyone) {
        return Ok(Caller { uid, login: None });
    }
    let passwd = accounts::read(accounts::PASSWD).map_err(unreadable)?;
    let user = accounts::passwd_by_uid(&passwd, uid);
    if let Some(u) = &user {
        if !is_valid_login(&u.name) {
            return Err(Failure::new(
                Code::NoPerm,
                format!("account name of uid {uid} is not usable: {}", escape(u.name.as_bytes())),
                "use an account name of printable ASCII",
            ));
        }
    }
    if need_login && user.is_none() {
        return Err(Failure::new(
            Code::NoPerm,
            format!("uid {uid} has no account in /etc/passwd, so there is no default sender"),
            "give the sender with -f (outq-sendmail always does)",
        ));
    }
    let caller = Caller { uid, login: user.as_ref().map(|u| u.name.clone()) };
    match &cfg.submit_users {
        SubmitUsers::Anyone => Ok(caller),
        SubmitUsers::Only { users, groups } => {
            let listed = users.iter().any(|w| is_this_user(w, uid, user.as_ref()));
            if listed || in_any_group(groups, user.as_ref(), env)? {
                Ok(caller)
            } else {
                let who = user.map(|u| format!("user {} (uid {uid})", u.name)).unwrap_or(format!("uid {uid}"));
                Err(denied(format!("{who} is not allowed to submit mail")))
            }
        }
    }
}

/// A number of `submit_users` is a user or group ID; any other word a
/// name.
fn as_id(word: &str) -> Option<u32> {
    if word.bytes().all(|b| b.is_ascii_digit()) { word.parse().ok() } else { None }
}

fn is_this_user(word: &str, uid: u32, user: Option<&Passwd>) -> bool {
    match as_id(word) {
        Some(id) => id == uid,
        None => user.is_some_and(|u| u.name == word),
    }
}

/// Membership by the caller's real gid, its supplementary groups (from the
/// kernel), its primary group in the password file, or the group file's
/// member list.
fn in_any_group(groups: &[String], user: Option<&Passwd>, env: &Env) -> Result<bool, Failure> {
    if groups.is_empty() {
        return Ok(false);
    }
    let mine: Vec<u32> = getgroups().unwrap_or_default().iter().map(|g| g.as_raw()).collect();
    let holds = |gid: u32| gid == env.rgid.as_raw() || mine.contains(&gid) || user.is_some_and(|u| u.gid == gid);
    let mut file: Option<Vec<u8>> = None;
    for word in groups {
        if let Some(gid) = as_id(word) {
            if holds(gid) {
                return Ok(true);
            }
            continue;
        }
        let text = match &file {
            Some(t) => t,
            None => file.insert(accounts::read(accounts::GROUP).map_err(unreadable)?),
        };
        // A group that does not exist is skipped.
        let Some(g) = accounts::group_by_name(text, word) else { continue };
        if holds(g.gid) || user.is_some_and(|u| g.members.contains(&u.name)) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn bad_address(which: &str, raw: &[u8], e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::DataErr, format!("{which} {}: {e}", escape(raw)), "give addresses as local@domain (RFC 5321)")
}

/// Validate the sender and recipients; a bare local part is qualified with
/// `myhostname`.
pub fn envelope(args: &Args, cfg: &Config, caller: &Caller) -> Result<Envelope, Failure> {
    let host = config::effective_hostname(cfg);
    let sender = match &args.sender {
        Some(raw) if raw.is_empty() || raw == b"<>" => Sender::Null,
        Some(raw) => Sender::Mailbox(Mailbox::parse_or_qualify(raw, &host).map_err(|e| bad_address("sender", raw, e))?),
        None => {
            let login = caller.login.as_deref().unwrap_or_default();
            Sender::Mailbox(Mailbox::parse_or_qualify(login.as_bytes(), &host).map_err(|e| {
                Failure::new(
                    Code::DataErr,
                    format!("cannot make a sender from account name {}: {e}", escape(login.as_bytes())),
                    "give the sender with -f",
                )
            })?)
        }
    };
    if args.recipients.len() > cfg.max_recipients {
        return Err(Failure::new(
            Code::DataErr,
            format!("{} recipients, more than max_recipients ({})", args.recipients.len(), cfg.max_recipients),
            "split the message or raise max_recipients in outq.conf",
        ));
    }
    let recipients = args
        .recipients
        .iter()
        .map(|raw| Mailbox::parse_or_qualify(raw, &host).map_err(|e| bad_address("recipient", raw, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope { sender, recipients })
}
