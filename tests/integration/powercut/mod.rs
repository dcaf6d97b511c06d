/*!
Power cuts for real: outq on an ext4 file system on a loop device, images
of the disk taken at chosen moments, each image booted (fsck, mount,
recovery, the runner) and every acknowledged message accounted for.

# The model of a power cut

The file system is on a loop device whose backing file is a disk with a
volatile write cache, served over FUSE by a thread of this test
([`cache`]). The loop device passes each write to that file, in order, and
each cache flush (REQ_PREFLUSH, and the FUA writes it turns into flushes)
as an fsync of the file. The disk thus knows at every moment what is
durable (written before the last flush) and what is only in its cache.

A power cut is taken while no outq program runs (right after the helper
exits 0, right after an operator command prints success, after a queue
run), while the runner waits for the relay's reply to the message's data
(right after the relay accepted), or at a random part of the flushes the
disk receives while a step runs ("during submit", "during hold"...: the
middle of an operation, at the moments its fsyncs reach the disk). Each
cut after a step or an acceptance gives images of what a disk can hold
after losing power at that moment:

- "flushed": only what was flushed; every cached write is lost (a disk
  that honours flushes and nothing more);
- "written": every write that reached the disk (a disk without a volatile
  cache; what a copy of a backing file on tmpfs holds);
- "subset" (random runs): the flushed state plus a random subset of the
  cached writes (a disk that wrote some of its cache back, in any order).

A cut at a flush gives a "subset" image (just before the flush
completed) and a "written" one (just after). In all of them the page
cache is lost: data and metadata ext4 had not yet written, journal
transactions not yet committed, and on ext4 without a journal every
directory, inode and bitmap block not yet written back.

Each image is booted: `e2fsck -fy` first for ext4 without a journal, as a
boot would; a mount (which replays the journal); `outq run --once`,
`outq flush`, `outq run --once` against a relay that accepts everything;
then `outq list --json` and the queue directories.

What this can catch: a move, delete or state write that outq reports or
depends on before it is durable (the operation undone, or half done: an
entry under two names, in `lost+found`, a state file without its entry);
a recovery that mistakes such leftovers for damage; fsyncs that do not
reach the disk as flushes.

What it cannot catch:

- states between two flushes other than those the cache models: inside an
  operation the cuts fall at its flushes only, and cached writes are
  dropped whole, never torn (the crash states built by hand cover the
  rest);
- ext4's own ordering bugs are not the question, and file systems other
  than ext4 (XFS, btrfs) are not tested;
- a disk that lies about flushes.

There is no device-mapper, nbd or ublk in this kernel; FUSE under a loop
device gives the same write-and-flush log as dm-log-writes would.

# What is counted, per file system and cut point

- lost: an acknowledged message (helper exit 0 before the cut, not deleted
  by an acknowledged `delete`) with a recipient the relay never accepted,
  neither before the cut nor after the boot, that is not in `hold/`,
  `failed/` or `corrupt/` with a reason;
- duplicates: a recipient accepted twice; "in the window" when the first
  acceptance came in the queue run under way at the cut (between the
  relay's acceptance and the durable removal, which a runner may batch
  until the end of its pass: outq-spool(5), DUPLICATES), else outside it;
- stuck: an entry of an acknowledged message left in `new/`, `active/`,
  `deferred/` or `tmp/` (or in two queues) after the drain, or in `hold/`
  without an acknowledged `hold`;
- no-reason: an entry in `failed/` or `corrupt/` without a reason in
  `outq list --json` (its problem, last error, or a failed recipient's
  reply);
- a message with an operator command under way at the cut (a cut at a
  flush during the command) is only checked for duplicates: the command
  may have taken effect or not;
- undone: an acknowledged `hold` (delivered after the boot), `release`
  (still in `hold/`), `delete` (delivered or still in the spool) or
  `requeue` (still in `failed/`);
- reported: not delivered but in `failed/` with a reason;
- corrupt: an acknowledged message quarantined in `corrupt/` with a reason
  (allowed, but a valid message there is a recovery that mistook an
  interrupted operation for damage);
- lost+found: files e2fsck put there.

# Runs

- The CI test [`powercut`] runs a fixed scenario (submissions, a queue
  run with deferral and refusal, hold, release, delete, flush, requeue,
  more runs) on both file systems with a cut after every step and every
  acceptance, and at 30 % of the flushes during the steps. It fails on
  any loss, stuck entry, entry without a reason, undone command or
  duplicate outside the window; about a minute. Privileged (loop devices, mounts): a
  visible `SKIPPED (needs root)` unless root, a failure with
  `OUTQ_REQUIRE_PRIVILEGED=1`.
- `bench/powercut/run N` sets `OUTQ_POWERCUT_CUTS=N`: random scenarios on
  both file systems until N cut points were taken (after random steps and
  acceptances, at random flushes); it prints the counts and fails the
  same way. `OUTQ_POWERCUT_SEED` repeats the draws.
- `OUTQ_POWERCUT_BINARIES=DIR` runs the `outq` and `outq-enqueue` of
  another build (an older commit, to compare counts).

Everything runs in development mode as `nobody` (the helper with
`--spool`/`--config`): the code paths that write the spool are those of an
installation; the set-group-ID bit changes no write.
*/

mod cache;
mod disk;
mod ledger;
mod relay;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache::{Contents, Keep};
use disk::{Disk, Fs};
use ledger::{Event, Msg, Op};
use relay::Relay;

use crate::support::{Ran, Rng, bin, have_program, privileged, privileged_lock, root_tempdir, run_timeout};

const TIMEOUT: Duration = Duration::from_secs(120);
const DOMAIN: &str = "powercut.test";
const QUEUES: [&str; 7] = ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt"];

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------
// Steps and cuts

#[derive(Debug, Clone, Copy)]
enum Step {
    Submit(usize),
    Hold(usize),
    Release(usize),
    Delete(usize),
    Requeue(usize),
    Flush,
    Run,
}

impl Step {
    /// The cut point's name.
    fn name(self) -> &'static str {
        match self {
            Step::Submit(_) => "after submit",
            Step::Hold(_) => "after hold",
            Step::Release(_) => "after release",
            Step::Delete(_) => "after delete",
            Step::Requeue(_) => "after requeue",
            Step::Flush => "after flush",
            Step::Run => "after queue run",
        }
    }

    /// The name of a cut at a flush while the step runs.
    fn during(self) -> &'static str {
        match self {
            Step::Submit(_) => "during submit",
            Step::Hold(_) => "during hold",
            Step::Release(_) => "during release",
            Step::Delete(_) => "during delete",
            Step::Requeue(_) => "during requeue",
            Step::Flush => "during flush",
            Step::Run => "during queue run",
        }
    }
}

const ACCEPT_CUT: &str = "after acceptance";

/// The chance of a cut at each flush the disk receives during a step.
const FLUSH_CUT: f64 = 0.3;

/// Which acceptances are followed by a cut.
enum AcceptCuts {
    Every,
    Chance(f64, Rng),
}

/// Where the cuts of one live run are taken, and what they keep.
struct CutPlan {
    accept: AcceptCuts,
    /// Images of each cut after a step or an acceptance.
    keeps: Vec<Keep>,
    rng: Rng,
    /// The chance of a cut at each flush during a step.
    flush_cut: f64,
}

/// One cut: its image, and the recipients accepted in the queue run that
/// was under way (the duplicate window: the runner may batch the fsyncs
/// of its removals until the end of its pass).
struct Cut {
    n: usize,
    name: &'static str,
    /// One image per choice of what the disk's cache keeps.
    images: Vec<(Keep, PathBuf)>,
    window: Vec<String>,
    /// Writes in the disk's cache at the cut (what "flushed" drops).
    cached: usize,
}

/// The events and cuts of one live disk; the relay's hook writes here too.
struct Recorder {
    disk: Arc<Mutex<Contents>>,
    keeps: Mutex<Vec<Keep>>,
    rng: Mutex<Rng>,
    dir: PathBuf,
    events: Mutex<Vec<Event>>,
    cuts: Mutex<Vec<Cut>>,
    accept_cuts: Mutex<AcceptCuts>,
    /// Recipients accepted in the queue run under way (None between runs).
    run_accepted: Mutex<Option<Vec<String>>>,
    /// The step under way, for cuts at the disk's flushes.
    during: Mutex<Option<&'static str>>,
    /// The chance of a cut at a flush during a step.
    flush_cut: f64,
}

impl Recorder {
    fn event(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    /// A power cut now. Lock order, here and at a flush: the disk's
    /// contents, then the events, then the window and the cuts.
    fn cut(&self, name: &'static str) {
        let c = self.disk.lock().unwrap();
        let keeps = self.keeps.lock().unwrap().clone();
        self.cut_with(&c, name, &keeps);
    }

    /// A cut of `c` with one image per `keeps`.
    fn cut_with(&self, c: &Contents, name: &'static str, keeps: &[Keep]) {
        // The window is read under the events' lock, as `accepted` writes
        // both under it: an acceptance before this cut in the events is
        // then in its window too, whichever thread got there first.
        let mut events = self.events.lock().unwrap();
        let window = self.run_accepted.lock().unwrap().clone().unwrap_or_default();
        let mut cuts = self.cuts.lock().unwrap();
        let n = cuts.len();
        let mut images = Vec::new();
        for keep in keeps {
            // A fresh draw of the cached writes kept, for each cut.
            let keep = match keep {
                Keep::Some(_) => Keep::Some(self.rng.lock().unwrap().next()),
                k => *k,
            };
            let image = self.dir.join(format!("cut-{n}-{}.img", keep.name()));
            std::fs::write(&image, c.cut(keep)).unwrap();
            images.push((keep, image));
        }
        events.push(Event::Cut(n));
        cuts.push(Cut { n, name, images, window, cached: c.cached() });
    }

    /// At a flush the disk received during a step, maybe a cut: the
    /// state just before the flush completes (the flushed part and a
    /// random part of the cache) and just after (every write).
    fn at_flush(&self, c: &Contents) {
        let Some(during) = *self.during.lock().unwrap() else { return };
        if !self.rng.lock().unwrap().chance(self.flush_cut) {
            return;
        }
        self.cut_with(c, during, &[Keep::Some(0), Keep::Written]);
    }

    fn accepted(&self, rcpts: &[String]) {
        {
            // One step for the event and the window (see `cut_with`).
            let mut events = self.events.lock().unwrap();
            events.push(Event::Accepted(rcpts.to_vec()));
            if let Some(w) = self.run_accepted.lock().unwrap().as_mut() {
                w.extend_from_slice(rcpts);
            }
        }
        let cut = match &mut *self.accept_cuts.lock().unwrap() {
            AcceptCuts::Every => true,
            AcceptCuts::Chance(p, rng) => rng.chance(*p),
        };
        if cut {
            self.cut(ACCEPT_CUT);
        }
    }
}

// ---------------------------------------------------------------------------
// The programs, as `nobody`, on a spool

/// Programs and configuration files in a root-owned directory `nobody`
/// can read; scratch space (images, mount points) on tmpfs.
struct Rig {
    bin: tempfile::TempDir,
    scratch: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl Rig {
    fn new() -> Rig {
        let bin_dir = root_tempdir("oqt-powercut-");
        // OUTQ_POWERCUT_BINARIES: the programs of another build (to count
        // the cuts of an older commit with this test).
        let other = std::env::var_os("OUTQ_POWERCUT_BINARIES").map(PathBuf::from);
        let bin = |name: &str| other.as_ref().map_or_else(|| bin(name), |d| d.join(name));
        for name in ["outq", "outq-enqueue"] {
            let to = bin_dir.path().join(name);
            // A link where possible: a copy holds a descriptor open for
            // writing that a concurrent fork can inherit, and the program
            // cannot be executed while one exists (ETXTBSY).
            if std::fs::hard_link(bin(name), &to).is_err() {
                std::fs::copy(bin(name), &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let scratch = tempfile::Builder::new().prefix("oqt-powercut-").tempdir_in("/dev/shm").unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let u = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
        Rig { bin: bin_dir, scratch, uid: u.uid.as_raw(), gid: u.gid.as_raw() }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(self.bin.path().join(program));
        c.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
        c
    }

    /// A configuration naming the relay on `port`.
    fn config(&self, name: &str, port: u16) -> PathBuf {
        let p = self.bin.path().join(name);
        std::fs::write(
            &p,
            format!(
                "spool_min_free = 0\nmyhostname = {DOMAIN}\nrelay = smtp://127.0.0.1:{port}\nstarttls = off\n\
                 connections = 1\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n\
                 connect_timeout = 5s\ncommand_timeout = 30s\ndata_timeout = 30s\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    fn outq(&self, spool: &Path, config: &Path, args: &[&str]) -> Ran {
        let mut c = self.cmd("outq");
        c.args(args).arg("--spool").arg(spool).arg("--config").arg(config);
        run_timeout(c, b"", TIMEOUT)
    }

    fn run_once(&self, spool: &Path, config: &Path) -> Ran {
        self.outq(spool, config, &["run", "--once", "--log", "stderr"])
    }
}

/// A spool made by `outq init` as `nobody` in `work/` on `root`.
fn init_spool(rig: &Rig, root: &Path, config: &Path) -> PathBuf {
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&work, Some(rig.uid), Some(rig.gid)).unwrap();
    let spool = work.join("spool");
    let r = rig.outq(&spool, config, &["init"]);
    r.assert_code(0);
    // An installation is made long before the mail: everything on disk.
    crate::support::root_cmd("sync", &["-f", &spool.display().to_string()]);
    spool
}

fn message(name: &str) -> Vec<u8> {
    let mut m = format!("From: powercut <pc@{DOMAIN}>\r\nSubject: {name}\r\nMessage-ID: <{name}@{DOMAIN}>\r\n\r\n")
        .into_bytes();
    for i in 0..40 {
        m.extend_from_slice(format!("line {i} of {name}: the quick brown fox jumps over the lazy dog\r\n").as_bytes());
    }
    m
}

/// Recipients of message `i`: plain, `defer.` (451 the first time) or
/// `fail.` (550 before the cut; the boot's relay accepts everything).
fn msg(i: usize, kinds: &[&str]) -> Msg {
    let rcpts = kinds.iter().enumerate().map(|(k, kind)| format!("{kind}m{i}.r{k}@{DOMAIN}")).collect();
    Msg { rcpts, id: None }
}

/// Run `steps` on a fresh `fs`; returns the events and the cut images.
fn live_run(rig: &Rig, fs: Fs, msgs: &mut [Msg], steps: &[(Step, bool)], plan: CutPlan) -> (Vec<Event>, Vec<Cut>) {
    let CutPlan { accept: accept_cuts, keeps, rng, flush_cut } = plan;
    let dir = rig.scratch.path().join("cuts");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = Disk::create(rig.scratch.path(), fs);
    let rec = Arc::new(Recorder {
        disk: disk.cache.contents.clone(),
        keeps: Mutex::new(keeps),
        rng: Mutex::new(rng),
        dir,
        events: Mutex::new(Vec::new()),
        cuts: Mutex::new(Vec::new()),
        accept_cuts: Mutex::new(accept_cuts),
        run_accepted: Mutex::new(None),
        during: Mutex::new(None),
        flush_cut,
    });
    let flush_rec = rec.clone();
    disk.cache.on_flush(Some(Box::new(move |c: &Contents| flush_rec.at_flush(c))));
    let hook_rec = rec.clone();
    let relay = Relay::start(false, Arc::new(move |rcpts: &[String]| hook_rec.accepted(rcpts)));
    let config = rig.config("live.conf", relay.port);
    let spool = init_spool(rig, &disk.mount.dir, &config);
    for &(step, cut) in steps {
        *rec.during.lock().unwrap() = Some(step.during());
        let acked = |op, msg| rec.event(Event::Acked { op, msg });
        let op_on = |op: Op, word: &str, i: usize| {
            if let Some(id) = msgs[i].id.clone() {
                rec.event(Event::Began { op, msg: i });
                if rig.outq(&spool, &config, &[word, &id]).code == Some(0) {
                    acked(op, i);
                }
                rec.event(Event::Ended { msg: i });
            }
        };
        match step {
            Step::Submit(i) => {
                let mut c = rig.cmd("outq-enqueue");
                c.arg("--spool").arg(&spool).arg("--config").arg(&config).args(["-f", "", "--"]);
                c.args(&msgs[i].rcpts);
                let r = run_timeout(c, &message(&format!("m{i}")), TIMEOUT);
                if r.code == Some(0) {
                    msgs[i].id = Some(r.stdout.trim().to_owned());
                    acked(Op::Submit, i);
                }
            }
            Step::Hold(i) => op_on(Op::Hold, "hold", i),
            Step::Release(i) => op_on(Op::Release, "release", i),
            Step::Delete(i) => op_on(Op::Delete, "delete", i),
            Step::Requeue(i) => op_on(Op::Requeue, "requeue", i),
            Step::Flush => {
                if rig.outq(&spool, &config, &["flush"]).code == Some(0) {
                    acked(Op::Flush, 0);
                }
            }
            Step::Run => {
                acked(Op::Run, 0);
                *rec.run_accepted.lock().unwrap() = Some(Vec::new());
                let r = rig.run_once(&spool, &config);
                *rec.run_accepted.lock().unwrap() = None;
                assert_eq!(r.code, Some(0), "outq run --once on the live disk: {}", r.stderr);
            }
        }
        *rec.during.lock().unwrap() = None;
        if cut {
            rec.cut(step.name());
        }
    }
    disk.cache.on_flush(None);
    drop(relay);
    drop(disk);
    let events = std::mem::take(&mut *rec.events.lock().unwrap());
    let cuts = std::mem::take(&mut *rec.cuts.lock().unwrap());
    (events, cuts)
}

// ---------------------------------------------------------------------------
// The boot after a cut, and the accounting

#[derive(Debug, Default, Clone)]
struct Counts {
    cuts: u64,
    acked: u64,
    lost: u64,
    dup_window: u64,
    dup_outside: u64,
    stuck: u64,
    /// In `hold/`, `failed/` or `corrupt/` with an empty reason in `outq list`.
    no_reason: u64,
    undone: u64,
    reported: u64,
    quarantined: u64,
    lost_found: u64,
    fsck_repaired: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.cuts += o.cuts;
        self.acked += o.acked;
        self.lost += o.lost;
        self.dup_window += o.dup_window;
        self.dup_outside += o.dup_outside;
        self.stuck += o.stuck;
        self.no_reason += o.no_reason;
        self.undone += o.undone;
        self.reported += o.reported;
        self.quarantined += o.quarantined;
        self.lost_found += o.lost_found;
        self.fsck_repaired += o.fsck_repaired;
    }

    /// Anything the promise forbids.
    fn bad(&self) -> u64 {
        self.lost + self.dup_outside + self.stuck + self.no_reason + self.undone
    }

    fn row(&self) -> String {
        format!(
            "{:>4} {:>5} {:>4} {:>6} {:>7} {:>5} {:>9} {:>6} {:>8} {:>7} {:>10} {:>4}",
            self.cuts,
            self.acked,
            self.lost,
            self.dup_window,
            self.dup_outside,
            self.stuck,
            self.no_reason,
            self.undone,
            self.reported,
            self.quarantined,
            self.lost_found,
            self.fsck_repaired
        )
    }
}

const HEADER: &str = "cuts acked lost dup-in dup-out stuck no-reason undone reported corrupt lost+found fsck (fs / cache kept / cut point)";

/// Where each queue ID is after the drain, and the reason `outq list` gives.
struct Inventory {
    places: HashMap<String, Vec<&'static str>>,
    reasons: HashMap<String, String>,
    /// The names under which each ID was found (`ID` or `ID.N` in
    /// `corrupt/`, `ID` in `tmp/`), for the notes.
    names: HashMap<String, Vec<String>>,
    /// `outq list --json` failed: its status and standard error.
    list_failed: Option<String>,
}

fn inventory(rig: &Rig, spool: &Path, config: &Path) -> Inventory {
    let mut places: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for q in QUEUES {
        let entries: Vec<std::fs::DirEntry> =
            std::fs::read_dir(spool.join(q)).map(|rd| rd.filter_map(Result::ok).collect()).unwrap_or_default();
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            // A quarantined file may carry a suffix after the ID.
            let id: String = name.chars().take(26).collect();
            places.entry(id.clone()).or_default().push(q);
            names.entry(id).or_default().push(format!("{q}/{name}"));
        }
    }
    let r = rig.outq(spool, config, &["list", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    let list_failed = (r.code != Some(0) || doc.is_null()).then(|| format!("exit {:?}: {}", r.code, r.stderr.trim()));
    let mut reasons: HashMap<String, String> = HashMap::new();
    for v in doc["entries"].as_array().cloned().unwrap_or_default() {
        let id = v["id"].as_str().unwrap_or("").to_owned();
        // A failed entry's reasons are its failed recipients' replies.
        let failed_reply = v["recipients"].as_array().and_then(|rs| {
            rs.iter().filter(|r| r["status"] == "failed").find_map(|r| r["reply"].as_str().filter(|s| !s.is_empty()))
        });
        // A name with a suffix (corrupt/ID.1) counts for its ID.
        let id: String = id.chars().take(26).collect();
        let reason = ["problem", "last_error", "hold_reason"]
            .iter()
            .find_map(|k| v[*k].as_str().filter(|s| !s.is_empty()))
            .or(failed_reply)
            .unwrap_or("")
            .to_owned();
        let known = reasons.entry(id).or_default();
        if known.is_empty() {
            *known = reason;
        }
    }
    Inventory { places, reasons, names, list_failed }
}

/// Boot the image of `cut`, drain it, count; `notes` gets one line per
/// bad finding.
fn recover(
    rig: &Rig,
    fs: Fs,
    cut: &Cut,
    image: &(Keep, PathBuf),
    events: &[Event],
    msgs: &[Msg],
    notes: &mut Vec<String>,
) -> Counts {
    let (keep, image) = image;
    let booted = disk::boot(image, fs, &rig.scratch.path().join("boot"));
    let mut c = Counts { cuts: 1, fsck_repaired: u64::from(booted.fsck != 0), ..Counts::default() };
    c.lost_found = std::fs::read_dir(booted.mount.dir.join("lost+found")).map(|rd| rd.count() as u64).unwrap_or(0);
    let delivered: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = delivered.clone();
    let relay = Relay::start(true, Arc::new(move |r: &[String]| sink.lock().unwrap().extend_from_slice(r)));
    let config = rig.config("boot.conf", relay.port);
    let spool = booted.mount.dir.join("work/spool");
    let mut log = String::new();
    for args in [&["run", "--once", "--log", "stderr"][..], &["flush"], &["run", "--once", "--log", "stderr"]] {
        let r = rig.outq(&spool, &config, args);
        log.push_str(&r.stderr);
        if r.code != Some(0) {
            notes.push(format!(
                "{} / {} #{}: outq {args:?} exited {:?}: {}",
                fs.name(),
                cut.name,
                cut.n,
                r.code,
                r.stderr
            ));
        }
    }
    let inv = inventory(rig, &spool, &config);
    if let Some(why) = &inv.list_failed {
        c.no_reason += 1;
        notes.push(format!(
            "{} / {} / {} #{}: outq list --json failed: {why}",
            fs.name(),
            keep.name(),
            cut.name,
            cut.n
        ));
    }
    drop(relay);
    let after: Vec<String> = delivered.lock().unwrap().clone();
    let intents = ledger::intents(events, msgs, cut.n);
    let mut note = |what: &str, m: &Msg, detail: String| {
        let (f, k, p, n) = (fs.name(), keep.name(), cut.name, cut.n);
        notes.push(format!("{f} / {k} / {p} #{n}: {what}: {} ({detail})", m.rcpts.join(" ")));
    };
    for (m, it) in msgs.iter().zip(&intents) {
        if !it.acked {
            continue;
        }
        c.acked += 1;
        let id = m.id.clone().unwrap_or_default();
        let places = inv.places.get(&id).cloned().unwrap_or_default();
        let reason = inv.reasons.get(&id).cloned().unwrap_or_default();
        let files = inv.names.get(&id).cloned().unwrap_or_default();
        let here = format!("in {places:?} as {files:?}, reason {reason:?}");
        let post = |r: &String| after.iter().filter(|a| *a == r).count();
        let delivered_after: usize = m.rcpts.iter().map(post).sum();
        for r in &m.rcpts {
            let total = it.accepted.get(r).copied().unwrap_or(0) + post(r);
            if total >= 2 {
                if cut.window.contains(r) {
                    c.dup_window += (total - 1) as u64;
                } else {
                    c.dup_outside += (total - 1) as u64;
                    note("delivered twice outside the window", m, here.clone());
                }
            }
        }
        // A command under way at the cut may have taken effect or not.
        if it.in_flight.is_some() {
            continue;
        }
        if it.deleted {
            if delivered_after > 0 || !places.is_empty() {
                c.undone += 1;
                note("delete undone", m, format!("{delivered_after} delivered after the boot, {here}"));
            }
            continue;
        }
        if it.held {
            // Held by the operator: `outq list` says so even when the
            // state file with the reason was lost.
            if delivered_after > 0 {
                c.undone += 1;
                note("hold undone", m, here.clone());
            } else if places.is_empty() {
                c.lost += 1;
                note("LOST (held)", m, here.clone());
            }
            continue;
        }
        let pending = m.rcpts.iter().filter(|r| it.accepted.get(*r).copied().unwrap_or(0) + post(r) == 0).count();
        if pending == 0 {
            continue;
        }
        // tmp/ names are the helper's or a writer's leftovers: they alone
        // deliver nothing.
        let queued: Vec<&str> = places.iter().copied().filter(|q| *q != "tmp").collect();
        match queued.as_slice() {
            [] => {
                if places.is_empty() {
                    c.lost += 1;
                    note("LOST", m, format!("{pending} recipient(s) never delivered"));
                } else {
                    c.stuck += 1;
                    note("stuck in tmp/", m, here.clone());
                }
            }
            ["hold"] if it.released => {
                c.undone += 1;
                note("release undone", m, here.clone());
            }
            ["failed"] if !reason.is_empty() => {
                c.reported += 1;
                if it.requeued {
                    c.undone += 1;
                    note("requeue undone", m, here.clone());
                }
            }
            ["corrupt"] if !reason.is_empty() => {
                c.quarantined += 1;
                note("quarantined", m, here.clone());
            }
            ["failed"] | ["corrupt"] => {
                c.no_reason += 1;
                note("no reason in outq list", m, here.clone());
            }
            _ => {
                c.stuck += 1;
                note("stuck", m, here.clone());
            }
        }
    }
    if c.bad() > 0 {
        notes.push(format!("  runner log of that boot:\n{log}"));
    }
    drop(booted);
    let _ = std::fs::remove_file(image);
    c
}

/// Counts per file system and cut point.
#[derive(Default)]
struct Tally {
    rows: BTreeMap<(Fs, &'static str, &'static str), Counts>,
    notes: Vec<String>,
    /// Cuts taken with writes in the disk's cache, and those writes.
    cached: (u64, u64),
    /// Cut points (each booted once per image).
    points: u64,
}

impl Tally {
    fn run(&mut self, rig: &Rig, fs: Fs, mut msgs: Vec<Msg>, steps: &[(Step, bool)], plan: CutPlan) {
        let (events, cuts) = live_run(rig, fs, &mut msgs, steps, plan);
        self.points += cuts.len() as u64;
        for cut in &cuts {
            if cut.cached > 0 {
                self.cached.0 += 1;
                self.cached.1 += cut.cached as u64;
            }
            for image in &cut.images {
                let c = recover(rig, fs, cut, image, &events, &msgs, &mut self.notes);
                self.rows.entry((fs, image.0.name(), cut.name)).or_default().add(&c);
            }
        }
    }

    fn total(&self) -> Counts {
        let mut t = Counts::default();
        self.rows.values().for_each(|c| t.add(c));
        t
    }

    fn report(&self) -> String {
        let mut s = format!("{HEADER}\n");
        for fs in Fs::ALL {
            let mut sub = Counts::default();
            for ((f, keep, point), c) in self.rows.iter().filter(|((f, _, _), _)| *f == fs) {
                s.push_str(&format!("{} {} / {keep} / {point}\n", c.row(), f.name()));
                sub.add(c);
            }
            s.push_str(&format!("{} {} / all\n", sub.row(), fs.name()));
        }
        s.push_str(&format!("{} all\n", self.total().row()));
        s.push_str(&format!("{} cut points, {} images booted (column cuts)\n", self.points, self.total().cuts));
        s.push_str(&format!(
            "cuts with unflushed writes in the disk's cache: {} ({} writes; \"flushed\" drops them)\n",
            self.cached.0, self.cached.1
        ));
        s
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// The fixed scenario: every protocol, a cut after each step.
fn fixed_scenario() -> (Vec<Msg>, Vec<(Step, bool)>) {
    let msgs = vec![
        msg(0, &["", ""]),
        msg(1, &[""]),
        msg(2, &[""]),
        msg(3, &["defer.", ""]),
        msg(4, &["fail."]),
        msg(5, &[""]),
        msg(6, &["defer."]),
    ];
    use Step::*;
    let steps = [
        Submit(0),
        Submit(1),
        Submit(2),
        Submit(3),
        Submit(4),
        Submit(6),
        Hold(1),
        Delete(2),
        Run,
        Release(1),
        Flush,
        Hold(6),
        Requeue(4),
        Run,
        Delete(6),
        Submit(5),
        Run,
    ];
    (msgs, steps.iter().map(|&s| (s, true)).collect())
}

/// A random scenario of `n` messages; a cut after a step with chance `p`.
fn random_scenario(rng: &mut Rng, n: usize, p: f64) -> (Vec<Msg>, Vec<(Step, bool)>) {
    let kinds = ["", "", "", "defer.", "fail."];
    let msgs: Vec<Msg> = (0..n)
        .map(|i| {
            let k: Vec<&str> = (0..1 + rng.index(3)).map(|_| kinds[rng.index(kinds.len())]).collect();
            msg(i, &k)
        })
        .collect();
    let mut steps = Vec::new();
    let mut submitted = 0;
    while submitted < n || rng.index(4) != 0 {
        let pick = |rng: &mut Rng| rng.index(submitted.max(1));
        let step = match rng.index(10) {
            0..3 if submitted < n => {
                submitted += 1;
                Step::Submit(submitted - 1)
            }
            0..=4 => Step::Run,
            5 => Step::Hold(pick(rng)),
            6 => Step::Release(pick(rng)),
            7 => Step::Delete(pick(rng)),
            8 => Step::Requeue(pick(rng)),
            _ => Step::Flush,
        };
        steps.push((step, rng.chance(p)));
    }
    steps.push((Step::Run, rng.chance(p)));
    (msgs, steps)
}

#[test]
fn powercut() {
    if !privileged("powercut") {
        return;
    }
    if !["mkfs.ext4", "e2fsck", "losetup", "blockdev", "mount"].iter().all(|p| have_program(p, "powercut")) {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !Path::new("/dev/loop-control").exists() {
        crate::support::report_missing("/dev/fuse and /dev/loop-control (modules fuse, loop)", "powercut");
        return;
    }
    let _lock = privileged_lock();
    let started = Instant::now();
    let rig = Rig::new();
    let mut tally = Tally::default();
    match std::env::var("OUTQ_POWERCUT_CUTS").ok().and_then(|v| v.parse::<u64>().ok()) {
        None => {
            for fs in Fs::ALL {
                let (msgs, steps) = fixed_scenario();
                let keeps = vec![Keep::Flushed, Keep::Written];
                tally.run(
                    &rig,
                    fs,
                    msgs,
                    &steps,
                    CutPlan { accept: AcceptCuts::Every, keeps, rng: Rng(1), flush_cut: FLUSH_CUT },
                );
            }
        }
        Some(n) => {
            let seed = std::env::var("OUTQ_POWERCUT_SEED")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| u64::from(std::process::id()) ^ started.elapsed().as_nanos() as u64 ^ 0x5eed);
            say(&format!("powercut: {n} random cuts, OUTQ_POWERCUT_SEED={seed}"));
            let mut rng = Rng(seed);
            let mut round = 0;
            while tally.points < n {
                let fs = Fs::ALL[round % 2];
                round += 1;
                let count = 3 + rng.index(6);
                let (msgs, steps) = random_scenario(&mut rng, count, 0.3);
                let accept = AcceptCuts::Chance(0.3, Rng(rng.next()));
                let keeps = vec![Keep::Flushed, Keep::Written, Keep::Some(0)];
                tally.run(
                    &rig,
                    fs,
                    msgs,
                    &steps,
                    CutPlan { accept, keeps, rng: Rng(rng.next()), flush_cut: FLUSH_CUT },
                );
                say(&format!("powercut: round {round} ({}), {} cuts so far", fs.name(), tally.points));
            }
        }
    }
    say(&format!("powercut: {} s\n{}", started.elapsed().as_secs(), tally.report()));
    // Every finding, with the runner's log of its boot, in a file; the
    // first findings on the terminal.
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("powercut-{}.log", std::process::id()));
    std::fs::write(&log, format!("{}\n{}\n", tally.report(), tally.notes.join("\n"))).unwrap();
    let findings: Vec<&String> = tally.notes.iter().filter(|n| !n.starts_with("  runner log")).collect();
    for n in findings.iter().take(30) {
        say(n);
    }
    // The runner's logs of the first bad boots too: CI keeps only the
    // terminal.
    for l in tally.notes.iter().filter(|n| n.starts_with("  runner log")).take(2) {
        say(&l.lines().take(80).collect::<Vec<_>>().join("\n"));
    }
    say(&format!("powercut: {} findings; all of them, with the runner's logs, in {}", findings.len(), log.display()));
    let total = tally.total();
    assert!(total.cuts > 0 && total.acked > 0, "no cut was examined");
    assert_eq!(total.bad(), 0, "power cuts broke outq's promise:\n{}", tally.report());
}
