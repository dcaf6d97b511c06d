/*!
Crash states built by hand: what a crash (or a power cut on a file system
that keeps some directory changes and loses others) can leave in the
spool, one test each. Every test builds its state from a real submission
(`outq-enqueue`), rearranges the spool as the crash would have, runs `outq
run --once` against an SMTP server of its own, and checks the outcome
against the promise: every recipient accepted by the server exactly once
(or at most twice where the crash fell between the relay's acceptance and
the removal), or the entry quarantined / held with a reason that `outq
list` shows. Never lost, never stuck without a reason.

The server and the spool fixture are the fault matrix's (`faults.rs`).
*/

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::faults::Dev;
use crate::smtp_server::{Opts, Server};
use crate::support::run_timeout;

const A: &str = "a@faults.test";
const B: &str = "b@faults.test";

/// A spool with one submitted entry (still in `new/`) for `rcpts`, and a
/// healthy server it is configured to relay to.
fn setup(rcpts: &[&str]) -> (Dev, Server, String) {
    let server = Server::start(Opts::default());
    let dev = Dev::new(true);
    dev.configure(&server.url(), &[]);
    let rcpts: Vec<String> = rcpts.iter().map(|r| (*r).to_owned()).collect();
    let id = dev.submit(&rcpts, b"Subject: crash\n\nbody\n");
    (dev, server, id)
}

fn path(dev: &Dev, q: &str, name: &str) -> PathBuf {
    dev.spool.join(q).join(name)
}

/// Move the entry as a (root) rename would: owner, group and mode kept.
fn mv(dev: &Dev, id: &str, from: &str, to: &str) {
    std::fs::rename(path(dev, from, id), path(dev, to, id)).unwrap();
}

/// A second name for the entry: what a half-done rename leaves.
fn link(dev: &Dev, id: &str, from: &str, to: &str) {
    std::fs::hard_link(path(dev, from, id), path(dev, to, id)).unwrap();
}

/// Write `state/NAME` as the runner's account would own it.
fn write_state(dev: &Dev, name: &str, bytes: &[u8]) {
    let p = path(dev, "state", name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    dev.own(&p);
}

fn state_text(rcpts: &[(&str, &str)], hold: Option<&str>) -> String {
    let mut s = String::from("outq-state 1\nattempts 1\nrecoveries 0\nnext_attempt 0\n");
    if let Some(h) = hold {
        s.push_str(&format!("hold {h}\n"));
    }
    s.push_str("last_error \n");
    for (addr, status) in rcpts {
        s.push_str(&format!("rcpt <{addr}> {status} \n"));
    }
    s.push_str("end\n");
    s
}

fn set_old(p: &std::path::Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(p).unwrap().set_modified(past).unwrap();
}

/// How many times the server accepted each recipient.
fn accepted(server: &Server) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in server.accepted() {
        for r in t.rcpts {
            *out.entry(r).or_insert(0) += 1;
        }
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(a, n)| ((*a).to_owned(), *n)).collect()
}

/// Nothing of the entry is left anywhere (delivered and removed).
#[track_caller]
fn assert_gone(dev: &Dev, id: &str) {
    for q in ["tmp", "new", "active", "deferred", "hold", "failed", "corrupt", "state"] {
        assert!(!path(dev, q, id).exists(), "{id} still in {q}/");
    }
}

/// `outq list` as the queue owner.
fn list(dev: &Dev) -> String {
    let mut c = dev.cmd("outq");
    c.arg("list").arg("--spool").arg(&dev.spool).arg("--config").arg(&dev.config);
    let r = run_timeout(c, b"", Duration::from_secs(60));
    r.assert_code(0);
    r.stdout
}

/// Every line of `outq list` ends with a reason (nothing empty after the
/// next-attempt column).
#[track_caller]
fn assert_reasons(dev: &Dev) {
    let out = list(dev);
    for line in out.lines().filter(|l| *l != "queue is empty") {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 8, "no reason in: {line:?}");
    }
}

#[test]
fn crash_committed_entry_left_in_tmp_is_delivered_once() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "tmp");
    set_old(&path(&dev, "tmp", &id));
    let (log, _) = dev.run_once();
    assert!(log.contains("moved from tmp/ to new/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_committed_entry_in_tmp_while_its_writer_may_live_is_left() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "tmp");
    // A live writer holds the file's lock (the helper between its last
    // write and its rename).
    set_old(&path(&dev, "tmp", &id));
    let file = std::fs::File::open(path(&dev, "tmp", &id)).unwrap();
    let _writer = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let (log, _) = dev.run_once();
    assert!(path(&dev, "tmp", &id).exists(), "{log}");
    assert!(accepted(&server).is_empty());
}

#[test]
fn crash_same_file_in_tmp_and_new_is_delivered_once() {
    let (dev, server, id) = setup(&[A]);
    link(&dev, &id, "new", "tmp");
    let (log, _) = dev.run_once();
    assert!(log.contains("removed from tmp/: the same file is in new/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_incomplete_file_in_tmp_is_removed_with_a_reason() {
    let (dev, server, id) = setup(&[A]);
    let bytes = std::fs::read(path(&dev, "new", &id)).unwrap();
    std::fs::remove_file(path(&dev, "new", &id)).unwrap();
    let p = path(&dev, "tmp", &id);
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o404)).unwrap();
    set_old(&p);
    dev.configure(&server.url(), &[("tmp_max_age", "10m")]);
    let (log, _) = dev.run_once();
    assert!(log.contains("removed from tmp/: never committed"), "{log}");
    assert!(!p.exists());
    assert!(accepted(&server).is_empty());
}

#[test]
fn crash_same_file_in_new_and_active_is_delivered_once() {
    let (dev, server, id) = setup(&[A]);
    link(&dev, &id, "new", "active");
    let (log, _) = dev.run_once();
    assert!(log.contains("removed from new/: the same file is in active/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_same_file_in_active_and_deferred_is_delivered_once() {
    let (dev, server, id) = setup(&[A, B]);
    mv(&dev, &id, "new", "deferred");
    write_state(&dev, &id, state_text(&[(A, "sent"), (B, "pending")], None).as_bytes());
    link(&dev, &id, "deferred", "active");
    let (log, _) = dev.run_once();
    assert!(log.contains("removed from active/: the same file is in deferred/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(B, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_interrupted_release_keeps_the_entry_released() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "hold");
    // release wrote the state (no hold) and crashed within the rename
    write_state(&dev, &id, state_text(&[(A, "pending")], None).as_bytes());
    link(&dev, &id, "hold", "deferred");
    let (log, _) = dev.run_once();
    assert!(log.contains("removed from hold/: the same file is in deferred/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_entries_claimed_but_not_yet_attempted_are_not_counted_as_interrupted() {
    // A runner with 2 delivery threads died with 5 claims in active/: the
    // 2 claimed first may have been under way, the other 3 were waiting.
    let server = Server::start(Opts::default());
    let dev = Dev::new(true);
    dev.configure(&server.url(), &[("connections", "2")]);
    let ids: Vec<String> = (0..5).map(|_| dev.submit(&[A.to_owned()], b"Subject: crash\n\nbody\n")).collect();
    for id in &ids {
        mv(&dev, id, "new", "active");
        // Claims in order: distinct change times even on a coarse clock.
        std::thread::sleep(Duration::from_millis(20));
    }
    let (log, _) = dev.run_once();
    for (n, id) in ids.iter().enumerate() {
        let line = if n < 2 {
            format!("{id}: recovered from an interrupted delivery, moved to deferred/")
        } else {
            format!(
                "{id}: recovered from an interrupted delivery (claimed, not yet attempted: not counted), moved to deferred/"
            )
        };
        assert!(log.lines().any(|l| l.ends_with(&line)), "no {line:?} in\n{log}");
    }
    assert_eq!(accepted(&server), counts(&[(A, 5)]));
}

#[test]
fn crash_entry_left_in_active_without_state_is_recovered_and_delivered() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "active");
    let (log, _) = dev.run_once();
    assert!(log.contains(&format!("{id}: recovered from an interrupted delivery, moved to deferred/")), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_after_acceptance_before_removal_sends_at_most_twice() {
    // The crash fell after the relay accepted and before the removal was
    // on disk: the entry is back in active/ with no record. This is the
    // one window where a second copy is allowed, and only one.
    let (dev, server, id) = setup(&[A]);
    let keep = dev.spool.join("kept");
    let cp = |from: &PathBuf, to: &PathBuf| {
        let ok = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
        assert!(ok);
    };
    cp(&path(&dev, "new", &id), &keep);
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    cp(&keep, &path(&dev, "active", &id));
    std::fs::remove_file(&keep).unwrap();
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 2)]));
    assert_gone(&dev, &id);
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 2)]), "a third copy");
}

#[test]
fn crash_delivered_entry_whose_removal_was_lost_is_not_sent_again() {
    let (dev, server, id) = setup(&[A, B]);
    mv(&dev, &id, "new", "active");
    write_state(&dev, &id, state_text(&[(A, "sent"), (B, "sent")], None).as_bytes());
    let (log, _) = dev.run_once();
    assert!(accepted(&server).is_empty(), "{log}");
    assert_gone(&dev, &id);
}

#[test]
fn crash_deferred_entry_without_state_is_delivered() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "deferred");
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

/// A deferred entry with this state file: delivered to every recipient
/// once, not quarantined, the damage logged.
fn bad_state_is_rebuilt(bytes: &[u8]) {
    let (dev, server, id) = setup(&[A, B]);
    mv(&dev, &id, "new", "deferred");
    write_state(&dev, &id, bytes);
    let (log, _) = dev.run_once();
    assert!(log.contains("state rebuilt from the entry"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1), (B, 1)]));
    assert!(dev.names("corrupt").is_empty());
    assert_gone(&dev, &id);
}

#[test]
fn crash_zero_length_state_is_rebuilt() {
    bad_state_is_rebuilt(b"");
}

#[test]
fn crash_truncated_state_is_rebuilt() {
    let text = state_text(&[(A, "sent"), (B, "pending")], None);
    bad_state_is_rebuilt(&text.as_bytes()[..text.len() / 2]);
}

#[test]
fn crash_garbled_state_is_rebuilt() {
    bad_state_is_rebuilt(b"\x00\xff\x13garbage\nend\n");
}

#[test]
fn crash_unreadable_state_of_an_active_entry_is_rebuilt() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "active");
    write_state(&dev, &id, b"outq-state 1\natt");
    let (log, _) = dev.run_once();
    assert!(log.contains("state rebuilt from the entry"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_state_naming_a_stranger_never_sends_to_it() {
    let (dev, server, id) = setup(&[A, B]);
    mv(&dev, &id, "new", "deferred");
    // A sent, B not mentioned, a stranger pending.
    write_state(&dev, &id, state_text(&[(A, "sent"), ("x@elsewhere.test", "pending")], None).as_bytes());
    let (log, _) = dev.run_once();
    assert!(log.contains("is in the state but not in the entry: dropped"), "{log}");
    assert!(log.contains("missing from the state: pending"), "{log}");
    assert_eq!(accepted(&server), counts(&[(B, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_delete_request_of_an_interrupted_attempt_is_carried_out() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "active");
    write_state(&dev, &format!("{id}.request"), b"delete\n");
    let (log, _) = dev.run_once();
    assert!(log.contains("deleted by the operator"), "{log}");
    assert!(accepted(&server).is_empty());
    assert_gone(&dev, &id);
    assert!(!path(&dev, "state", &format!("{id}.request")).exists());
}

#[test]
fn crash_hold_request_of_an_interrupted_attempt_holds_with_a_reason() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "active");
    write_state(&dev, &format!("{id}.request"), b"hold\n");
    dev.run_once();
    assert!(accepted(&server).is_empty());
    assert_eq!(dev.names("hold"), vec![id.clone()]);
    assert!(list(&dev).contains("held by the operator"));
    assert_reasons(&dev);
}

#[test]
fn crash_hold_without_its_state_still_shows_a_reason() {
    // `outq hold` moved the entry and crashed before writing the state.
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "hold");
    dev.run_once();
    assert!(accepted(&server).is_empty());
    assert!(list(&dev).contains("held (no reason recorded)"));
    assert_reasons(&dev);
}

#[test]
fn crash_quarantine_reason_is_listed() {
    let (dev, server, id) = setup(&[A]);
    // Replace the entry by a copy with a bad mode: quarantined at pickup.
    std::fs::set_permissions(path(&dev, "new", &id), std::fs::Permissions::from_mode(0o444)).unwrap();
    dev.run_once();
    assert!(accepted(&server).is_empty());
    assert_eq!(dev.names("corrupt"), vec![id.clone()]);
    assert!(list(&dev).contains("mode 0444"));
    assert_reasons(&dev);
}

#[test]
fn crash_requeue_of_a_corrupt_entry_with_a_bad_state() {
    let (dev, server, id) = setup(&[A]);
    mv(&dev, &id, "new", "corrupt");
    write_state(&dev, &id, b"\x01garbled");
    let mut c = dev.cmd("outq");
    c.arg("requeue").arg(&id).arg("--spool").arg(&dev.spool).arg("--config").arg(&dev.config);
    let r = run_timeout(c, b"", Duration::from_secs(60));
    r.assert_code(0);
    assert!(r.stdout.contains("unreadable state was removed"), "{}", r.stdout);
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
}

#[test]
fn crash_operator_commands_leave_durable_consistent_states() {
    // hold then release then delete: each prints success once done, and
    // the state agrees with the place after each.
    let (dev, server, id) = setup(&[A]);
    let op = |args: &[&str]| {
        let mut c = dev.cmd("outq");
        c.args(args).arg("--spool").arg(&dev.spool).arg("--config").arg(&dev.config);
        let r = run_timeout(c, b"", Duration::from_secs(60));
        r.assert_code(0);
        r.stdout
    };
    assert!(op(&["hold", &id]).contains("held"));
    assert!(path(&dev, "hold", &id).exists());
    assert!(dev.state(&id).unwrap().contains("hold held by the operator"));
    assert!(op(&["release", &id]).contains("released"));
    assert!(path(&dev, "deferred", &id).exists());
    assert!(!dev.state(&id).unwrap().contains("\nhold "));
    dev.run_once();
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_gone(&dev, &id);
    // No temporary state file is left by any writer.
    let leftovers: Vec<String> = dev.names("state");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn crash_entry_stuck_in_active_is_retried_at_the_next_queue_run() {
    // A state write fails (state/ not writable) after an attempt that
    // deferred: the entry stays in active/. The running runner must take
    // it again at its next queue run, not only at its next start.
    // The server defers until `healed` (checked per command: the runner
    // keeps its connection open).
    let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healed.clone();
    let opts = Opts {
        script: std::sync::Arc::new(move |line: &str| {
            if line.starts_with("RCPT") && !flag.load(std::sync::atomic::Ordering::SeqCst) {
                crate::smtp_server::Act::Reply("451 4.3.0 later".into())
            } else {
                crate::smtp_server::Act::Default
            }
        }),
        ..Opts::default()
    };
    let server = Server::start(opts);
    let dev = Dev::new(true);
    dev.configure(&server.url(), &[("queue_run_interval", "1s"), ("minimal_backoff_time", "1s")]);
    let state_dir = dev.spool.join("state");
    let mode = std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o7777;
    let mut c = dev.cmd("outq");
    c.arg("run").arg("--spool").arg(&dev.spool).arg("--config").arg(&dev.config).args(["--log", "stderr"]);
    c.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut daemon = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let id = dev.submit(&[A.to_owned()], b"Subject: stuck\n\nbody\n");
    let stuck = crate::support::wait_until(Duration::from_secs(20), || {
        !server.accepted().is_empty() || server_saw_rcpt(&server)
    });
    std::thread::sleep(Duration::from_millis(300));
    let was_active = path(&dev, "active", &id).exists();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(mode)).unwrap();
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    let delivered = crate::support::wait_until(Duration::from_secs(30), || {
        accepted(&server) == counts(&[(A, 1)]) && !path(&dev, "active", &id).exists()
    });
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(stuck && was_active, "the attempt did not leave the entry in active/:\n{log}");
    assert!(delivered, "not retried while the runner runs:\n{log}");
    assert!(log.contains("left in active/ by an earlier attempt; retried"), "{log}");
    assert_gone(&dev, &id);
}

fn server_saw_rcpt(server: &Server) -> bool {
    server.conversations().iter().any(|c| c.commands.iter().any(|l| l.starts_with("RCPT")))
}

#[test]
fn crash_state_left_after_a_delivered_entry_is_removed_with_a_reason() {
    // The entry's removal reached the disk, the state's removal did not.
    let (dev, server, id) = setup(&[A]);
    std::fs::remove_file(path(&dev, "new", &id)).unwrap();
    write_state(&dev, &id, state_text(&[(A, "pending")], None).as_bytes());
    let (log, _) = dev.run_once();
    assert!(log.contains(&format!("{id}: removed orphan state file")), "{log}");
    assert!(accepted(&server).is_empty());
    assert_gone(&dev, &id);
}

#[test]
fn crash_committed_entry_in_tmp_whose_id_is_taken_in_new_is_quarantined() {
    // Not the same file: two different entries under one queue ID.
    let (dev, server, id) = setup(&[A]);
    let other = dev.spool.join("other");
    let ok = std::process::Command::new("cp").arg("-a").arg(path(&dev, "new", &id)).arg(&other).status().unwrap();
    assert!(ok.success());
    std::fs::rename(&other, path(&dev, "tmp", &id)).unwrap();
    set_old(&path(&dev, "tmp", &id));
    let (log, _) = dev.run_once();
    assert!(log.contains("whose ID is taken in new/"), "{log}");
    assert_eq!(accepted(&server), counts(&[(A, 1)]));
    assert_eq!(dev.names("corrupt"), vec![id.clone()]);
    assert!(dev.names("tmp").is_empty());
    assert_reasons(&dev);
}
