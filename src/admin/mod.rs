/*!
Creating (`init`), auditing (`check`) and configuring (`setup`) an
installation.

`init` and `check` take the expected owners and modes from `outq_spool::layout`, the
single table that the helper also verifies against, so the three cannot
disagree.
*/
#![forbid(unsafe_code)]

pub mod check;
pub mod init;
pub mod relay;
pub mod sendmail_owner;
pub mod setup;

use std::path::PathBuf;

use nix::unistd::{Group, Uid, User, getegid, geteuid};
use outq_spool::config::{self, Config, ConfigError, Trust};

use crate::cli::SpoolArgs;
use crate::error::Error;

/// What a command operates on, resolved from flags, configuration and
/// defaults.
#[derive(Debug)]
pub struct Target {
    pub spool: PathBuf,
    pub user: User,
    pub group: Group,
    pub cfg: Config,
    pub config_path: PathBuf,
    /// The configuration could not be used (defaults were taken instead).
    pub config_error: Option<ConfigError>,
}

/// Owners trusted for a configuration file: root, and the invoking user
/// when that is not root (a private copy for development).
pub fn config_trust() -> Trust {
    let me = geteuid();
    let mut owners = vec![Uid::from_raw(0)];
    if !me.is_root() {
        owners.push(me);
    }
    Trust { owners, allow_sticky: !me.is_root() }
}

fn lookup_user(name: &str) -> Result<User, Error> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(Error::new(
            format!("user {name} does not exist"),
            format!("create it: useradd --system --no-create-home --shell /usr/sbin/nologin {name}"),
        )),
        Err(e) => Err(Error::temp(format!("cannot look up user {name}: {}", e.desc()), "check the password database")),
    }
}

fn lookup_group(name: &str) -> Result<Group, Error> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g),
        Ok(None) => {
            Err(Error::new(format!("group {name} does not exist"), format!("create it: groupadd --system {name}")))
        }
        Err(e) => Err(Error::temp(format!("cannot look up group {name}: {}", e.desc()), "check the group database")),
    }
}

/// Resolve the spool, queue user and helper group. Flags win; as root the
/// configuration's `queue_user`/`setgid_group` are the defaults; otherwise
/// the invoking user and group (a private development spool).
pub fn resolve(args: &SpoolArgs) -> Result<Target, Error> {
    let config_path = args.config.clone().unwrap_or_else(|| PathBuf::from(config::CONFIG_PATH));
    let (cfg, config_error) = match config::load(&config_path, &config_trust()) {
        Ok((cfg, _)) => (cfg, None),
        Err(e) => (Config::default(), Some(e)),
    };
    let root = geteuid().is_root();
    let user = match (&args.user, root) {
        (Some(n), _) => lookup_user(n)?,
        (None, true) => lookup_user(&cfg.queue_user)?,
        (None, false) => match User::from_uid(geteuid()) {
            Ok(Some(u)) => u,
            _ => return Err(Error::new("cannot find your own account", "give --user")),
        },
    };
    let group = match (&args.group, root) {
        (Some(n), _) => lookup_group(n)?,
        (None, true) => lookup_group(&cfg.setgid_group)?,
        (None, false) => match Group::from_gid(getegid()) {
            Ok(Some(g)) => g,
            _ => return Err(Error::new("cannot find your own group", "give --group")),
        },
    };
    let spool = match &args.spool {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => std::env::current_dir()
            .map_err(|e| Error::new(format!("cannot find the current directory: {e}"), "give an absolute --spool"))?
            .join(p),
        None => cfg.spool_directory.clone(),
    };
    Ok(Target { spool, user, group, cfg, config_path, config_error })
}
