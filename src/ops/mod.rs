/*!
The operator commands: `list`, `show`, `flush`, `hold`, `release`,
`delete`, `requeue`, `status`.

Who may run them: the queue owner, or root, which first becomes the queue
owner (supplementary groups dropped, then gid, then uid) so that every file
it touches keeps the right owner. Anyone else is refused with exit 77.

All of them are safe while a runner delivers: no command edits an entry in
`active/` (a hold or delete of an active entry is left as a request that
the runner carries out when the attempt ends), and every move is a rename.

- [`inventory`]: reading entries and their state for display;
- [`list`], [`show`], [`status`]: looking;
- [`control`]: flush, hold, release, delete, requeue.
*/
#![forbid(unsafe_code)]

pub mod control;
pub mod inventory;
pub mod leftovers;
pub mod list;
pub mod show;
pub mod status;

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User, geteuid, setgroups, setresgid, setresuid};
use outq_spool::config::{self as spool_config, Config};

use crate::admin::config_trust;
use crate::config::RunnerConfig;
use crate::error::Error;
use crate::queue::store::Store;

/// Where to find the spool, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Where {
    pub spool: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// An opened spool with its configuration, as the queue owner.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    pub cfg: Config,
    pub runner: RunnerConfig,
}

/// Become the owner of `root` (when root) or check that we are it.
pub fn become_owner(root: &Path) -> Result<(), Error> {
    let st = nix::sys::stat::stat(root)
        .map_err(|e| Error::temp(format!("{}: {}", root.display(), e.desc()), "create it with 'outq init'"))?;
    let owner = Uid::from_raw(st.st_uid);
    let me = geteuid();
    if me == owner && !owner.is_root() {
        return Ok(());
    }
    let name = User::from_uid(owner).ok().flatten();
    let shown = name.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| format!("uid {owner}"));
    if !me.is_root() {
        return Err(Error::perm(
            format!("only the queue owner ({shown}) or root may manage the queue"),
            format!("run it as {shown}, e.g. 'runuser -u {shown} -- outq ...', or as root"),
        ));
    }
    if owner.is_root() {
        return Err(Error::perm("the spool is owned by root", "repair it with 'outq init'"));
    }
    let gid = name.map(|u| u.gid).unwrap_or(Gid::from_raw(st.st_gid));
    let fail = |e: nix::errno::Errno| Error::temp(format!("cannot become {shown}: {}", e.desc()), "check the account");
    setgroups(&[]).map_err(fail)?;
    setresgid(gid, gid, gid).map_err(fail)?;
    setresuid(owner, owner, owner).map_err(fail)?;
    Ok(())
}

/// Load the configuration, become the owner, open the spool.
pub fn open(w: &Where) -> Result<Opened, Error> {
    let path = w.config.clone().unwrap_or_else(|| PathBuf::from(spool_config::CONFIG_PATH));
    let (cfg, _) = spool_config::load(&path, &config_trust())
        .map_err(|e| Error::temp(e.to_string(), "correct the configuration (see outq.conf(5))"))?;
    let runner = RunnerConfig::from_config(&cfg)
        .map_err(|e| Error::temp(format!("{}: {e}", path.display()), "correct that line (see outq.conf(5))"))?;
    let root = w.spool.clone().unwrap_or_else(|| cfg.spool_directory.clone());
    become_owner(&root)?;
    crate::logging::init(crate::logging::Sink::Syslog);
    let store = Store::open(&root)?;
    Ok(Opened { store, cfg, runner })
}
