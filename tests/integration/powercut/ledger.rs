/*!
What happened before each power cut, in order: acknowledged submissions and
operator commands, the relay's acceptances, and the cuts themselves. The
accounting of a cut reads the events before it, and only those: an
operation acknowledged after the cut never happened in that image's world.
*/

use std::collections::BTreeMap;

/// An operation that printed success (exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Submit,
    Hold,
    Release,
    Delete,
    Requeue,
    Flush,
    /// A queue run started (a requeued entry may fail again from here on).
    Run,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// `op` on message number `msg` exited 0 (Flush, Run: `msg` is unused).
    Acked {
        op: Op,
        msg: usize,
    },
    /// An operator command on message `msg` started; it ends with `Ended`
    /// (after `Acked` when it printed success). A cut in between may see
    /// its change or not.
    Began {
        op: Op,
        msg: usize,
    },
    Ended {
        msg: usize,
    },
    /// The relay accepted these recipients (before its 250 went out).
    Accepted(Vec<String>),
    /// Power cut number `n`.
    Cut(usize),
}

/// One test message: a name and recipients `[prefix.]NAME.rK@powercut.test`.
#[derive(Debug, Clone)]
pub struct Msg {
    pub rcpts: Vec<String>,
    /// The queue ID the helper printed.
    pub id: Option<String>,
}

/// What the world of one cut expects of a message.
#[derive(Debug, Default, Clone)]
pub struct Intent {
    pub acked: bool,
    pub deleted: bool,
    /// Held by an acknowledged `hold` and not released since.
    pub held: bool,
    pub released: bool,
    pub requeued: bool,
    /// An operator command under way at the cut.
    pub in_flight: Option<Op>,
    /// Acceptances before the cut, per recipient.
    pub accepted: BTreeMap<String, usize>,
}

/// The intent of every message in the events before cut `n`.
pub fn intents(events: &[Event], msgs: &[Msg], n: usize) -> Vec<Intent> {
    let mut v = vec![Intent::default(); msgs.len()];
    let owner = |rcpt: &str| msgs.iter().position(|m| m.rcpts.iter().any(|r| r == rcpt));
    for e in events {
        match e {
            Event::Cut(k) if *k == n => break,
            Event::Cut(_) => {}
            Event::Accepted(rcpts) => {
                for r in rcpts {
                    if let Some(i) = owner(r) {
                        *v[i].accepted.entry(r.clone()).or_default() += 1;
                    }
                }
            }
            Event::Began { op, msg } => {
                if let Some(it) = v.get_mut(*msg) {
                    it.in_flight = Some(*op);
                }
            }
            Event::Ended { msg } => {
                if let Some(it) = v.get_mut(*msg) {
                    it.in_flight = None;
                }
            }
            Event::Acked { op: Op::Run, .. } => v.iter_mut().for_each(|it| it.requeued = false),
            Event::Acked { op, msg } => {
                let Some(it) = v.get_mut(*msg) else { continue };
                match op {
                    Op::Submit => it.acked = true,
                    Op::Hold => it.held = true,
                    Op::Release => {
                        it.held = false;
                        it.released = true;
                    }
                    Op::Delete => it.deleted = true,
                    Op::Requeue => it.requeued = true,
                    Op::Flush | Op::Run => {}
                }
            }
        }
    }
    v
}
