/*!
Who may submit (`submit_users`) and the envelope they submit.

The caller is the real uid the kernel reports. Its login is needed only
for a default sender (no `-f`) or a `submit_users` list; only then is it
looked up in the password database (NSS), after the helper has changed
into the spool directory (so a library that opens a relative path cannot be
steered by the caller's working directory). Otherwise the submission path
makes no lookup at all: the entry's owner is the uid, and the runner names
the submitter from it.
*/
#![forbid(unsafe_code)]

use nix::unistd::{Gid, Group, User, getgroups};
use outq_spool::address::{Mailbox, Sender};
use outq_spool::config::{self, Config, SubmitUsers};
use outq_spool::entry::is_valid_login;
use outq_spool::exit::Code;
use outq_spool::log::escape;

use crate::args::Args;
use crate::failure::Failure;
use crate::startup::Env;

/// The submitting user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    /// From the password database, when it was needed.
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

/// Identify the caller and apply `submit_users`. The password database is
/// consulted only when the login is needed: for the default sender
/// (`need_login`) or a `submit_users` list.
pub fn authorize(cfg: &Config, env: &Env, need_login: bool) -> Result<Caller, Failure> {
    if !need_login && matches!(cfg.submit_users, SubmitUsers::Anyone) {
        return Ok(Caller { uid: env.ruid.as_raw(), login: None });
    }
    let uid = env.ruid;
    let user = match User::from_uid(uid) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(Failure::new(
                Code::NoPerm,
                format!("uid {uid} has no account name"),
                "run as a user listed in the password database",
            ));
        }
        Err(e) => {
            return Err(Failure::temp(
                format!("cannot look up uid {uid}: {}", e.desc()),
                "check the password database (nsswitch)",
            ));
        }
    };
    if !is_valid_login(&user.name) {
        return Err(Failure::new(
            Code::NoPerm,
            format!("account name of uid {uid} is not usable: {}", escape(user.name.as_bytes())),
            "use an account name of printable ASCII",
        ));
    }
    let caller = Caller { uid: uid.as_raw(), login: Some(user.name.clone()) };
    match &cfg.submit_users {
        SubmitUsers::Anyone => Ok(caller),
        SubmitUsers::Only { users, groups } => {
            if users.contains(&user.name) || in_any_group(groups, &user, env)? {
                Ok(caller)
            } else {
                Err(denied(format!("user {} (uid {uid}) is not allowed to submit mail", user.name)))
            }
        }
    }
}

/// Membership by the caller's real gid, its supplementary groups (from the
/// kernel), or the group's member list.
fn in_any_group(groups: &[String], user: &User, env: &Env) -> Result<bool, Failure> {
    let mine: Vec<Gid> = getgroups().unwrap_or_default();
    for name in groups {
        let g = match Group::from_name(name) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => {
                return Err(Failure::temp(
                    format!("cannot look up group {name}: {}", e.desc()),
                    "check the group database (nsswitch)",
                ));
            }
        };
        let by_gid = g.gid == env.rgid || mine.contains(&g.gid);
        if by_gid || g.mem.contains(&user.name) || user.gid == g.gid {
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
