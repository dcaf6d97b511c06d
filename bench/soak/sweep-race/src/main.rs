//! Reproduction: `recover::sweep` (src/runner/recover.rs), which the daemon
//! runs every `queue_run_interval`, lists the queue directories one after
//! the other (active, deferred, hold, failed, corrupt, new) and then removes
//! every state file whose entry it did not see. An operator command in
//! another process that moves an entry from a directory listed later to one
//! listed earlier (`outq release`: hold/ -> deferred/; `outq requeue`:
//! failed/ -> deferred/; `outq hold` of a new/ entry) between those two
//! listings makes the entry invisible to the sweep, and its state file is
//! removed as an "orphan" although the entry exists.
//!
//! Here the real code of `outq hold` and `outq release`
//! (`ops::control::apply`) runs in one thread while another runs the real
//! `recover::sweep`, as the daemon does. The entry has one recipient sent
//! and one pending; once its state file is gone, the next attempt starts
//! from a fresh state (every recipient pending) and sends the first
//! recipient a second time, a duplicate that outq-spool(5) DUPLICATES does
//! not list.
//!
//! `cargo run -- tmp` shows a second, smaller race in the same sweep:
//! `Store::write_state` (src/queue/store.rs) sets its temporary file
//! `.ID.tmp` to the mtime `next_attempt` before renaming it into place, and
//! the sweep removes `.`-files whose mtime is more than an hour old as
//! leftovers of a crash. A state written with an old `next_attempt` (0 for
//! `State::fresh`, which `outq hold` of a new/ entry writes) can lose its
//! temporary file mid-write, and the write fails with ENOENT (the command
//! reports the failure; nothing is lost).
//!
//! Run as root or as any user (it makes its own spool in a temporary
//! directory): `cargo run` prints how many sweeps it took.
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outq::ops::control::{Action, apply};
use outq::queue::state::{RcptStatus, State};
use outq::queue::store::Store;
use outq::runner::Settings;
use outq_spool::address::Mailbox;
use outq_spool::entry::Limits;

const ID: &str = "069000000000000000000000AA";

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path().join("spool");
    std::fs::create_dir(&root).expect("spool");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for p in outq_spool::layout::PARTS.iter().filter(|p| !p.name.is_empty()) {
        let path = root.join(p.name);
        match p.kind {
            outq_spool::layout::Kind::Dir => std::fs::create_dir(&path).expect("mkdir"),
            outq_spool::layout::Kind::File => drop(std::fs::File::create(&path).expect("create")),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(p.mode)).expect("chmod");
    }
    let store = Arc::new(Store::open(&root).expect("Store::open"));
    // A queue of the usual kind: some deferred entries (their listing is
    // the window), and ours, deferred after a partial delivery.
    for n in 0..200 {
        std::fs::write(root.join("deferred").join(format!("0690000000000000000000{n:04}")), b"x").expect("entry");
    }
    std::fs::write(root.join("deferred").join(ID), b"x").expect("entry");
    let rcpts =
        [Mailbox::parse(b"sent@example.org").expect("addr"), Mailbox::parse(b"later@example.org").expect("addr")];
    let mut st = State::fresh(&rcpts);
    st.attempts = 1;
    // Due now, as after a recent attempt (an old next_attempt would run into
    // the second race, see `tmp`).
    st.next_attempt = outq::queue::store::now();
    st.recipients[0].status = RcptStatus::Sent;
    st.recipients[0].reply = "250 2.0.0 Ok".into();
    store.write_state(ID, &st).expect("state");

    let settings = Settings {
        runner: outq::config::RunnerConfig::default(),
        host: "host.example".into(),
        limits: Limits { max_recipients: 10, max_size: 1000 },
        stop: Arc::new(AtomicBool::new(false)),
        generation: 0,
    };
    if std::env::args().nth(1).as_deref() == Some("tmp") {
        return temporary_state_race(&store, &settings);
    }
    let done = Arc::new(AtomicBool::new(false));
    let (store2, done2) = (store.clone(), done.clone());
    let operator = std::thread::spawn(move || {
        let limits = Limits { max_recipients: 10, max_size: 1000 };
        let mut releases = 0u64;
        while !done2.load(Ordering::SeqCst) {
            // 'outq hold ID' (deferred -> hold: safe), 'outq release ID'
            // (hold -> deferred: the move the sweep can miss).
            if apply(&store2, &limits, ID, Action::Hold).is_err()
                || apply(&store2, &limits, ID, Action::Release).is_err()
            {
                break;
            }
            releases += 1;
        }
        releases
    });
    let t0 = Instant::now();
    let mut sweeps = 0u64;
    let lost = loop {
        outq::runner::recover::sweep(&store, &settings);
        sweeps += 1;
        if store.read_state(ID).ok().flatten().is_none() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    done.store(true, Ordering::SeqCst);
    let releases = operator.join().unwrap_or(0);
    if lost {
        let still_there = ["deferred", "hold"].iter().any(|q| root.join(q).join(ID).exists());
        println!(
            "REPRODUCED: the state file of {ID} was removed as an orphan after {sweeps} sweeps and {releases} \
             hold/release cycles ({:?}); the entry is still queued: {still_there}. Its next attempt starts from \
             a fresh state and sends sent@example.org again.",
            t0.elapsed()
        );
    } else {
        println!("not reproduced in {sweeps} sweeps and {releases} hold/release cycles");
        std::process::exit(1);
    }
}

/// `Store::write_state` of a fresh state (`next_attempt` 0) while sweeping.
fn temporary_state_race(store: &Arc<Store>, settings: &Settings) {
    let done = Arc::new(AtomicBool::new(false));
    let (store2, done2) = (store.clone(), done.clone());
    let writer = std::thread::spawn(move || {
        let fresh = State::fresh(&[Mailbox::parse(b"a@example.org").expect("addr")]);
        let mut writes = 0u64;
        while !done2.load(Ordering::SeqCst) {
            if let Err(e) = store2.write_state(ID, &fresh) {
                return (writes, Some(e));
            }
            writes += 1;
        }
        (writes, None)
    });
    let t0 = Instant::now();
    let mut sweeps = 0u64;
    while !writer.is_finished() && t0.elapsed() < Duration::from_secs(60) {
        outq::runner::recover::sweep(store, settings);
        sweeps += 1;
    }
    done.store(true, Ordering::SeqCst);
    match writer.join() {
        Ok((writes, Some(e))) => println!(
            "REPRODUCED: write_state failed with {e} after {writes} writes and {sweeps} sweeps ({:?}): the sweep \
             removed its temporary file",
            t0.elapsed()
        ),
        _ => {
            println!("not reproduced in {sweeps} sweeps");
            std::process::exit(1);
        }
    }
}
