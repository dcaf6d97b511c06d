/*!
`outq run`: drain the spool.

The delivery state machine, one entry at a time:

```text
new/ --pickup (validate)--> active/ --attempt--> (removed)    all sent
  |                           |   ^               deferred/   some pending
  +--invalid--> corrupt/      |   |               failed/     none pending, some failed
                              |   +-- due --- deferred/
                    crash ----+--> deferred/ (recovered) or hold/ (3rd time)
```

The main thread holds the queue lock, recovers, picks up `new/` (woken by
inotify within a second of a commit), scans `deferred/` for due entries
(one `stat` of each state file, no open), and hands claimed entries to
`connections` worker threads, each owning its transport and so its SMTP
connection. The moves into `active/` of one dispatch are made durable
together before any is delivered; a settling thread makes delivered
entries' removals durable in batches, then removes their state files.
Each full pass also takes again any entry left in `active/` by an attempt
that could not record its result. SIGTERM/SIGINT stop new work and let attempts finish within
`shutdown_timeout`; SIGHUP reloads the configuration.

- [`lock`]: one runner per spool;
- [`recover`]: start-up recovery and sweeping;
- [`schedule`]: backoff and lifetime;
- [`attempt`]: one delivery attempt and where the entry goes next.
*/
#![forbid(unsafe_code)]

pub mod attempt;
pub mod lock;
pub mod recover;
pub mod schedule;

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::geteuid;
use outq_spool::config::{self as spool_config, Config};
use outq_spool::entry::Limits;
use outq_spool::queue_id::QueueId;

use crate::admin::config_trust;
use crate::aliases::{self, Aliases};
use crate::config::{Aliasing, RunnerConfig};
use crate::deliver;
use crate::error::Error;
use crate::logging;
use crate::queue::state::State;
use crate::queue::store::{Moves, Queue, Store, now};
use crate::queue::validate::{self, Loaded};
use outq_spool::log::escape;

/// What every worker needs, replaced as a whole on SIGHUP.
#[derive(Debug)]
pub struct Settings {
    pub runner: RunnerConfig,
    /// Where local names go (`alias_file`, `admin_address`).
    pub aliasing: Aliasing,
    pub host: String,
    pub limits: Limits,
    /// Set when the runner is shutting down: workers finish the current
    /// transaction and stop.
    pub stop: Arc<AtomicBool>,
    /// Distinguishes reloads, so workers rebuild their transports.
    pub generation: u64,
}

impl Settings {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Options of `outq run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spool: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub once: bool,
    pub log_stderr: bool,
}

/// Load and validate both halves of the configuration.
pub fn load_settings(opts: &RunOptions, stop: Arc<AtomicBool>, generation: u64) -> Result<(Config, Settings), Error> {
    let path = opts.config.clone().unwrap_or_else(|| PathBuf::from(spool_config::CONFIG_PATH));
    let (cfg, _) = spool_config::load(&path, &config_trust())
        .map_err(|e| Error::temp(e.to_string(), "correct the configuration (see outq.conf(5)) and 'outq check'"))?;
    let runner = RunnerConfig::from_config(&cfg)
        .map_err(|e| Error::temp(format!("{}: {e}", path.display()), "correct that line (see outq.conf(5))"))?;
    let aliasing = Aliasing::from_config(&cfg)
        .map_err(|e| Error::temp(format!("{}: {e}", path.display()), "correct that line (see outq.conf(5))"))?;
    let host = spool_config::effective_hostname(&cfg);
    let limits = Limits { max_recipients: cfg.max_recipients, max_size: cfg.message_size_limit };
    Ok((cfg, Settings { runner, aliasing, host, limits, stop, generation }))
}

/// Open and validate an entry, quarantining it when it fails.
pub fn load(store: &Store, s: &Settings, q: Queue, name: &str) -> Option<Loaded> {
    match validate::load(store, q, name, &s.limits) {
        Ok(l) => Some(l),
        Err(why) => {
            recover::quarantine(store, q, name, &why);
            None
        }
    }
}

/// A claimed entry on its way to a worker.
#[derive(Debug)]
struct Job {
    entry: Loaded,
    state: State,
    settings: Arc<Settings>,
}

/// When a finished attempt wakes the main thread: only when it has
/// something to do about it, that is when the entries in flight have
/// dropped to where it claims more, or when the last has finished. Waking
/// it for every message cost a pipe write, a context switch and a read
/// per message, while the window kept dozens of entries in flight.
#[derive(Debug, Default)]
struct Pacer {
    /// Attempts handed to the delivery threads and not yet finished.
    running: AtomicUsize,
    /// A finished attempt that leaves this many running, or fewer, wakes
    /// the main thread.
    wake_at: AtomicUsize,
}

impl Pacer {
    /// An attempt is handed out (before it is sent to a thread).
    fn started(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// A delivery thread finished an attempt (after sending its `Done`):
    /// whether to wake the main thread.
    fn finished(&self) -> bool {
        let left = self.running.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        left <= self.wake_at.load(Ordering::SeqCst)
    }

    /// The main thread wants waking once no more than `n` attempts are
    /// running; returns whether that is already so (then it must not
    /// wait). Both sides write, then read the other's value, all
    /// sequentially consistent: a finish that comes meanwhile is seen by
    /// one side or the other, never by neither.
    fn wake_at(&self, n: usize) -> bool {
        self.wake_at.store(n, Ordering::SeqCst);
        self.running.load(Ordering::SeqCst) <= n
    }
}

/// The answer a worker sends back.
#[derive(Debug)]
struct Done {
    id: QueueId,
}

fn refuse_privilege() -> Result<(), Error> {
    if geteuid().is_root() {
        return Err(Error::perm(
            "outq run must not run as root",
            "start it as the queue owner: 'runuser -u outq -- outq run', or User=outq in the service unit",
        ));
    }
    match outq_spool::process::effective_capabilities() {
        Ok(0) => Ok(()),
        Ok(caps) => Err(Error::perm(
            format!("outq run holds capabilities ({caps:#x}) it must not have"),
            "start it without capabilities (CapabilityBoundingSet= in the service unit)",
        )),
        Err(_) => Ok(()),
    }
}

/// Block the signals the runner acts on and read them from a signalfd.
fn signals() -> Result<SignalFd, Error> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let fail =
        |e: nix::errno::Errno| Error::temp(format!("cannot set up signals: {}", e.desc()), "report this as a bug");
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(fail)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(fail)
}

/// `outq run` and `outq run --once`.
pub fn run(opts: &RunOptions) -> Result<ExitCode, Error> {
    logging::init(if opts.log_stderr { logging::Sink::Stderr } else { logging::Sink::Syslog });
    refuse_privilege()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (cfg, settings) = load_settings(opts, stop.clone(), 0)?;
    let root = opts.spool.clone().unwrap_or_else(|| cfg.spool_directory.clone());
    let store = Arc::new(Store::open(&root)?);
    let _lock = lock::acquire(&store)?;
    let sigfd = signals()?;
    let settings = Arc::new(settings);
    recover::recover_active(&store, &settings);
    recover::sweep(&store, &settings);
    let mut runner = Runner::start(store.clone(), settings)?;
    logging::info(&format!("runner started on {} (pid {})", root.display(), std::process::id()));
    if opts.once {
        runner.pass(true);
        runner.drain_all(&sigfd);
    } else {
        runner.daemon(opts, &sigfd)?;
    }
    runner.shutdown();
    logging::info("runner stopped");
    Ok(ExitCode::SUCCESS)
}

/// The main thread's state.
struct Runner {
    store: Arc<Store>,
    settings: Arc<Settings>,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    wake: OwnedFd,
    pacer: Arc<Pacer>,
    workers: Vec<JoinHandle<()>>,
    in_flight: HashSet<QueueId>,
    ready: VecDeque<(Queue, String)>,
    /// The thread that makes delivered entries' removals durable.
    settler: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    aliases: AliasCache,
}

/// The aliases file as last read, re-read when its identity or time stamp
/// changes (no `newaliases` step is needed).
#[derive(Debug, Default)]
struct AliasCache {
    /// (path, device, inode, mtime, ctime, size) of what `aliases` holds;
    /// `None` before the first read or for a missing file.
    key: Option<(PathBuf, u64, u64, i64, i64, i64)>,
    aliases: Aliases,
    loaded: bool,
}

impl AliasCache {
    /// The current aliases, or why they cannot be used now.
    fn get(&mut self, path: &std::path::Path) -> Result<&Aliases, String> {
        let key = match nix::sys::stat::stat(path) {
            Ok(st) => Some((path.to_path_buf(), st.st_dev, st.st_ino, st.st_mtime, st.st_ctime, st.st_size)),
            Err(nix::errno::Errno::ENOENT) => None,
            Err(e) => return Err(format!("aliases file {}: {}", path.display(), e.desc())),
        };
        if !self.loaded || key != self.key {
            self.aliases = Aliases::load(path)?;
            for p in &self.aliases.problems {
                logging::warning(&format!("aliases file {}: {p}", path.display()));
            }
            self.key = key;
            self.loaded = true;
        }
        Ok(&self.aliases)
    }
}

impl Runner {
    fn start(store: Arc<Store>, settings: Arc<Settings>) -> Result<Runner, Error> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (wake_r, wake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| Error::temp(format!("cannot create a pipe: {}", e.desc()), "check the open files limit"))?;
        let wake_w = Arc::new(wake_w);
        let pacer = Arc::new(Pacer::default());
        let mut workers = Vec::new();
        for n in 0..settings.runner.connections {
            let (store, rx, tx) = (store.clone(), jobs_rx.clone(), done_tx.clone());
            let (wake, pace) = (wake_w.clone(), pacer.clone());
            let handle = std::thread::Builder::new()
                .name(format!("delivery-{n}"))
                .spawn(move || worker(&store, &rx, &tx, (&wake, &pace)))
                .map_err(|e| Error::temp(format!("cannot start a delivery thread: {e}"), "check memory limits"))?;
            workers.push(handle);
        }
        let done = Arc::new(AtomicBool::new(false));
        let (st, flag) = (store.clone(), done.clone());
        let settler = std::thread::Builder::new()
            .name("settle-removals".into())
            .spawn(move || settle_removals(&st, &flag))
            .map_err(|e| Error::temp(format!("cannot start a thread: {e}"), "check memory limits"))?;
        Ok(Runner {
            settler: Some((done, settler)),
            store,
            settings,
            jobs: Some(jobs_tx),
            done: done_rx,
            wake: wake_r,
            pacer,
            workers,
            in_flight: HashSet::new(),
            ready: VecDeque::new(),
            aliases: AliasCache::default(),
        })
    }

    /// Most entries in flight (claimed, being delivered or waiting for a
    /// delivery thread): enough to keep every thread busy while the next
    /// claim waits for its directory flushes (a few milliseconds on a slow
    /// disk), few enough that a crash leaves little in `active/` (and only
    /// the first `connections` of them count an interruption:
    /// `recover::possibly_attempted`).
    fn window(&self) -> usize {
        self.settings.runner.connections.saturating_mul(16).max(16)
    }

    /// Most entries claimed by one dispatch, their moves made durable with
    /// one flush of each directory.
    fn batch(&self) -> usize {
        self.settings.runner.connections.saturating_mul(4).max(4)
    }

    /// Claims are made when no more than this many entries are in flight,
    /// a batch at a time up to the window: each batch's moves share
    /// one flush of `active/` and of the directory they came from, instead
    /// of a flush pair per message as each worker frees up, while every
    /// worker still has entries waiting for it.
    fn refill_at(&self) -> usize {
        self.settings.runner.connections.saturating_mul(8).max(8)
    }

    /// Find work: everything in `new/`, and, when `deferred` is set,
    /// every due entry in `deferred/`.
    fn pass(&mut self, deferred: bool) {
        let mut fresh: Vec<String> = self.store.list(Queue::New).unwrap_or_default();
        fresh.sort();
        let queued: HashSet<String> = self.ready.iter().map(|(_, n)| n.clone()).collect();
        for name in fresh {
            if !queued.contains(&name) {
                self.ready.push_back((Queue::New, name));
            }
        }
        if deferred {
            let t = now();
            let mut due: Vec<(u64, String)> = self
                .store
                .list(Queue::Deferred)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| {
                    let when = self.store.due_time(&n).unwrap_or(0);
                    (when <= t).then_some((when, n))
                })
                .collect();
            due.sort();
            for (_, name) in due {
                if !queued.contains(&name) {
                    self.ready.push_back((Queue::Deferred, name));
                }
            }
            self.retry_stuck(&queued);
        }
        self.dispatch();
    }

    /// Entries in `active/` that no attempt holds: their attempt could not
    /// record its result (state write or rename failed). This runner holds
    /// the queue lock, so nobody else is delivering them; they are taken
    /// again where they are, at every full pass.
    fn retry_stuck(&mut self, queued: &HashSet<String>) {
        let mut stuck: Vec<String> = self.store.list(Queue::Active).unwrap_or_default();
        stuck.retain(|n| !queued.contains(n) && QueueId::parse(n).is_none_or(|id| !self.in_flight.contains(&id)));
        stuck.sort();
        for name in stuck {
            logging::info(&format!("{}: left in active/ by an earlier attempt; retried", escape(name.as_bytes())));
            self.ready.push_back((Queue::Active, name));
        }
    }

    /// Claim and hand out ready entries while the window has room. The
    /// moves into `active/` are made durable together, once per pass of
    /// this loop, before any of them is delivered: a crash after a
    /// delivery must find the entry in `active/` (recovered), never again
    /// in `new/` or `deferred/` beside a lost state.
    fn dispatch(&mut self) {
        if self.in_flight.len() > self.refill_at() || self.ready.is_empty() {
            return;
        }
        // Short claims: from idle (at start-up, after a recovery, when the
        // queue ran dry) one entry per connection, then batches of
        // `batch()`, up to the window. Delivery starts after a short claim,
        // and the entries claimed before the one under way are the ones in
        // flight, so a crash during a claim counts an interruption
        // (`recover::possibly_attempted`, the `connections` claimed first)
        // against entries that could have been under way, not against a
        // long batch that none of the threads had reached.
        let connections = self.settings.runner.connections.max(1);
        let batch = if self.in_flight.is_empty() { connections } else { self.batch() };
        let mut claimed = Vec::new();
        let store = self.store.clone();
        let mut moves = Moves::new(&store);
        while self.in_flight.len() + claimed.len() < self.window() && claimed.len() < batch {
            let Some((from, name)) = self.ready.pop_front() else { break };
            if let Some(job) = self.claim(&mut moves, from, &name) {
                claimed.push(job);
            }
        }
        if let Err(e) = moves.commit() {
            // Left in active/ and claimed again at the next full pass.
            logging::warning(&format!("cannot make the pickup durable ({}); delivery postponed", e.desc()));
            return;
        }
        for job in claimed {
            self.in_flight.insert(job.entry.id.clone());
            if let Some(tx) = &self.jobs {
                self.pacer.started();
                if tx.send(job).is_err() {
                    logging::warning("delivery threads have stopped");
                }
            }
        }
    }

    /// Validate and move an entry into `active/`, with its state. An entry
    /// already in `active/` (left there by an attempt that could not record
    /// its result) is taken where it is.
    fn claim(&mut self, moves: &mut Moves<'_>, from: Queue, name: &str) -> Option<Job> {
        let s = self.settings.clone();
        let entry = match from {
            Queue::New => {
                let entry = load(&self.store, &s, Queue::New, name)?;
                moves.rename(Queue::New, Queue::Active, name).ok()?;
                // The name we moved must still be the file we checked.
                let st = self.store.stat(Queue::Active, name).ok()?;
                if st.st_ino != entry.inode {
                    recover::quarantine(&self.store, Queue::Active, name, "replaced while being picked up");
                    return None;
                }
                logging::info(&format!(
                    "{}: picked up: uid={} from={} nrcpt={} size={}",
                    entry.id,
                    entry.owner,
                    entry.parsed.header.sender,
                    entry.parsed.header.recipients.len(),
                    entry.parsed.header.size
                ));
                entry
            }
            Queue::Active => load(&self.store, &s, Queue::Active, name)?,
            _ => {
                moves.rename(from, Queue::Active, name).ok()?;
                load(&self.store, &s, Queue::Active, name)?
            }
        };
        // An entry being delivered is not held, whatever a racing `outq
        // hold` wrote before its rename failed.
        let state = State { hold: None, ..self.store.entry_state(name, &entry.parsed.header.recipients) };
        // Aliases apply once, before the first attempt; afterwards the
        // recorded expansion is what is delivered.
        let state = if state.attempts == 0 {
            match self.expand(&entry, state) {
                Some(st) => st,
                None => {
                    let _ = self.store.rename_durably(Queue::Active, Queue::Deferred, name);
                    return None;
                }
            }
        } else {
            state
        };
        Some(Job { entry, state, settings: s })
    }

    /// The state with the entry's recipients expanded through the aliases
    /// file; `None` when the file cannot be used now (the entry waits, as
    /// a mail system does when its alias database is unavailable).
    fn expand(&mut self, entry: &Loaded, state: State) -> Option<State> {
        let aliasing = self.settings.aliasing.clone();
        let aliases = match self.aliases.get(&aliasing.alias_file) {
            Ok(a) => a,
            Err(e) => {
                logging::warning(&format!("{}: {e}; deferred until the file can be read", entry.id));
                return None;
            }
        };
        let mut expanded: Vec<(outq_spool::address::Mailbox, Option<outq_spool::address::Mailbox>)> = Vec::new();
        for rcpt in &entry.parsed.header.recipients {
            let e = aliases::expand(rcpt, aliases, &aliasing);
            for note in &e.notes {
                logging::warning(&format!("{}: {note}", entry.id));
            }
            for a in e.addresses {
                if expanded.iter().any(|(x, _)| x.as_str().eq_ignore_ascii_case(a.as_str())) {
                    continue;
                }
                let origin = (a != *rcpt).then(|| rcpt.clone());
                if let Some(o) = &origin {
                    logging::info(&format!("{}: to=<{o}> aliased to <{a}>", entry.id));
                }
                expanded.push((a, origin));
            }
        }
        Some(state.with_expansion(expanded))
    }

    /// Collect finished attempts without waiting.
    fn reap(&mut self) {
        let mut byte = [0u8; 64];
        while nix::unistd::read(self.wake.as_fd(), &mut byte).is_ok_and(|n| n > 0) {}
        while let Ok(d) = self.done.try_recv() {
            self.in_flight.remove(&d.id);
        }
    }

    /// Wait until every claimed and ready entry is done (`--once`), or a
    /// termination signal arrives (then stop as the daemon does).
    fn drain_all(&mut self, sigfd: &SignalFd) {
        loop {
            if let Ok(Some(info)) = sigfd.read_signal() {
                if info.ssi_signo != Signal::SIGHUP as u32 {
                    logging::info("stopping on signal");
                    return;
                }
            }
            self.reap();
            self.dispatch();
            if self.in_flight.is_empty() && self.ready.is_empty() {
                return;
            }
            if self.pacer.wake_at(self.wake_point()) {
                continue;
            }
            let mut fds =
                [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::from(200u8)) {
                if e != nix::errno::Errno::EINTR {
                    logging::warning(&format!("poll failed: {}", e.desc()));
                    return;
                }
            }
            // Every delivery thread gone (none would report again): what
            // is still claimed is recovered by the next queue run.
            match self.done.try_recv() {
                Ok(d) => {
                    self.in_flight.remove(&d.id);
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    logging::warning("delivery threads have stopped");
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
    }

    /// How few attempts may be left running before the main thread has
    /// work: a refill when entries are ready, else none (the last one).
    fn wake_point(&self) -> usize {
        if self.ready.is_empty() { 0 } else { self.refill_at() }
    }

    fn daemon(&mut self, opts: &RunOptions, sigfd: &SignalFd) -> Result<(), Error> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::temp(format!("cannot use inotify: {}", e.desc()), "raise fs.inotify limits"))?;
        let watch_fail = |e: nix::errno::Errno| {
            Error::temp(format!("cannot watch the spool: {}", e.desc()), "raise fs.inotify limits")
        };
        inotify
            .add_watch(&self.store.root.join(Queue::New.name()), AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
            .map_err(watch_fail)?;
        // `outq flush`, `release` and `requeue` touch the lock file to ask
        // for a full pass: no pid file, no signal.
        let flush_watch = inotify
            .add_watch(&self.store.root.join(outq_spool::layout::LOCK), AddWatchFlags::IN_ATTRIB)
            .map_err(watch_fail)?;
        // A helper that finds too little free space sets the times of tmp/
        // (an attribute change of the root's child `tmp`): reclaim it now.
        let root_watch = inotify.add_watch(&self.store.root, AddWatchFlags::IN_ATTRIB).map_err(watch_fail)?;
        let mut last_tmp_sweep: Option<Instant> = None;
        let mut next_pass = Instant::now();
        let mut reap_now = false;
        loop {
            if Instant::now() >= next_pass {
                recover::sweep(&self.store, &self.settings);
                last_tmp_sweep = Some(Instant::now());
                self.pass(true);
                next_pass = Instant::now() + self.settings.runner.queue_run_interval;
            }
            let wait = if reap_now {
                Duration::ZERO
            } else {
                next_pass.saturating_duration_since(Instant::now()).min(Duration::from_secs(60))
            };
            let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::NONE);
            let mut fds = [
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::temp(format!("poll failed: {}", e.desc()), "report this as a bug")),
            }
            let [new_ready, sig_ready, _] = fds.map(|f| f.any().unwrap_or(false));
            self.reap();
            if sig_ready {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    if info.ssi_signo == Signal::SIGHUP as u32 {
                        self.reload(opts);
                    } else {
                        logging::info("stopping on signal");
                        return Ok(());
                    }
                }
            }
            if new_ready {
                let (mut flush, mut low_space) = (false, false);
                while let Ok(events) = inotify.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    flush |= events.iter().any(|e| e.wd == flush_watch);
                    low_space |= events.iter().any(|e| {
                        e.wd == root_watch && e.name.as_deref() == Some(std::ffi::OsStr::new(outq_spool::layout::TMP))
                    });
                }
                // A queue run starts with a sweep of tmp/: every flush, and
                // a helper's low-space call, at most once a second.
                let recent = last_tmp_sweep.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                if (flush || low_space) && !recent {
                    if low_space {
                        logging::info("a helper found the spool short of space: sweeping tmp/");
                    }
                    recover::sweep_tmp(&self.store, &self.settings);
                    last_tmp_sweep = Some(Instant::now());
                }
                if flush {
                    logging::info("flush requested");
                }
                self.pass(flush);
            }
            self.dispatch();
            // Attempts that finished meanwhile, past the wake point, are
            // reaped without waiting (none in flight: nothing to reap).
            let due = self.pacer.wake_at(self.wake_point());
            reap_now = due && !self.in_flight.is_empty();
        }
    }

    fn reload(&mut self, opts: &RunOptions) {
        let generation = self.settings.generation + 1;
        match load_settings(opts, self.settings.stop.clone(), generation) {
            Ok((_, s)) => {
                self.settings = Arc::new(s);
                logging::info("configuration reloaded");
            }
            Err(e) => logging::warning(&format!("configuration not reloaded: {e}")),
        }
    }

    /// Stop handing out work, let attempts finish within `shutdown_timeout`.
    fn shutdown(mut self) {
        self.ready.clear();
        self.settings.stop.store(true, Ordering::SeqCst);
        self.jobs = None; // workers see the channel close
        let deadline = Instant::now() + self.settings.runner.shutdown_timeout;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            if let Ok(d) = self.done.recv_timeout(Duration::from_millis(100)) {
                self.in_flight.remove(&d.id);
            }
        }
        if self.in_flight.is_empty() {
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        } else {
            logging::warning(&format!(
                "{} attempt(s) still running at shutdown; they will be recovered",
                self.in_flight.len()
            ));
        }
        if let Some((done, handle)) = self.settler.take() {
            self.store.stop_settling(&done);
            let _ = handle.join();
        }
    }
}

/// How long the settling thread lets removals of delivered entries gather
/// after a flush before it makes the next one.
const SETTLE_GATHER: Duration = Duration::from_millis(5);

/// Settle delivered entries' removals until `done`, then the last ones.
fn settle_removals(store: &Store, done: &AtomicBool) {
    loop {
        let last = done.load(Ordering::SeqCst);
        let wait = if last { Duration::ZERO } else { Duration::from_millis(200) };
        match store.settle_delivered(wait, done) {
            Ok(ids) => {
                for id in &ids {
                    logging::info(&format!("{id}: removed (delivered)"));
                }
                if last && ids.is_empty() {
                    return;
                }
                // Let the next removals gather: one flush of active/ then
                // settles a batch rather than one or two deliveries. Nobody
                // waits for it; a crash in between only widens the window
                // in which a delivered entry may be sent again
                // (outq-spool(5), DUPLICATES) by these milliseconds.
                if !last && !ids.is_empty() {
                    std::thread::sleep(SETTLE_GATHER);
                }
            }
            Err(e) => {
                // The state files stay (removed later as orphans); the
                // entries are gone unless the disk lost their removal.
                logging::warning(&format!("cannot make removals of delivered entries durable: {}", e.desc()));
                if last {
                    return;
                }
            }
        }
    }
}

/// A delivery thread: take a job, attempt it, report back.
fn worker(store: &Store, jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, (wake, pacer): (&OwnedFd, &Pacer)) {
    let mut transport: Option<(u64, Box<dyn deliver::Transport>)> = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Err(_) => break,
        };
        let s = job.settings.clone();
        if transport.as_ref().is_none_or(|(g, _)| *g != s.generation) {
            if let Some((_, mut t)) = transport.take() {
                t.close();
            }
            match deliver::build(&s.runner, &s.host) {
                Ok(t) => transport = Some((s.generation, t)),
                Err(e) => logging::warning(&format!("cannot set up delivery: {e}")),
            }
        }
        let id = job.entry.id.clone();
        if s.stopping() {
            // Claimed but not started: hand it back, due now, untouched.
            if store.rename_durably(Queue::Active, Queue::Deferred, id.as_str()).is_ok() {
                let _ = store.set_due(id.as_str(), now());
            }
        } else if let Some((_, t)) = transport.as_mut() {
            if attempt::attempt(store, &s, t.as_mut(), &job.entry, job.state) == attempt::Disposition::Delivered {
                // Its name is gone: closing the file frees it, which the
                // settling thread does, not this one.
                store.retire(job.entry.file);
            }
        } else {
            // No transport could be built: leave it for a later pass.
            let _ = store.rename_durably(Queue::Active, Queue::Deferred, id.as_str());
        }
        let _ = done.send(Done { id });
        if pacer.finished() {
            let _ = nix::unistd::write(wake, b"x");
        }
    }
    if let Some((_, mut t)) = transport {
        t.close();
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;

    #[test]
    fn a_finished_attempt_wakes_the_main_thread_only_past_its_wake_point() {
        let p = Pacer::default();
        for _ in 0..4 {
            p.started();
        }
        assert!(!p.wake_at(2), "4 running, waking at 2: wait");
        assert!(!p.finished(), "3 left");
        assert!(p.finished(), "2 left: the refill point");
        assert!(p.finished(), "1 left: still past it");
        assert!(!p.wake_at(0), "1 running, waking at 0: wait for the last");
        assert!(p.finished(), "the last");
        assert!(p.wake_at(0), "none running: nothing to wait for");
    }
}
