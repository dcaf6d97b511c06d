/*!
What an entry looks like to an operator: its envelope, its recipients'
states, its age and next attempt. Reading never changes anything and never
trusts an entry more than the runner does (the same validation).
*/
#![forbid(unsafe_code)]

use serde::Serialize;

use outq_spool::entry::Limits;
use outq_spool::queue_id::QueueId;

use crate::queue::state::{RcptStatus, reconcile};
use crate::queue::store::{Queue, Store};
use crate::queue::validate::{self, Loaded};

/// The queues an operator sees (not `tmp/`: nothing there is committed).
pub const VISIBLE: [Queue; 6] =
    [Queue::New, Queue::Active, Queue::Deferred, Queue::Hold, Queue::Failed, Queue::Corrupt];

/// The name of a queue as the state of its entries.
pub fn state_name(q: Queue) -> &'static str {
    q.name()
}

/// Parse a `--state` value.
pub fn parse_state(s: &str) -> Option<Queue> {
    VISIBLE.iter().copied().find(|q| q.name() == s)
}

#[derive(Debug, Clone, Serialize)]
pub struct RcptView {
    pub address: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reply: String,
}

/// One entry for display.
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    pub id: String,
    pub state: &'static str,
    /// Arrival, seconds since the epoch.
    pub arrival: u64,
    pub size: u64,
    pub sender: String,
    pub recipients: Vec<RcptView>,
    /// Next attempt, seconds since the epoch (deferred entries).
    pub next_attempt: Option<u64>,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_reason: Option<String>,
    /// Why the entry could not be read (corrupt entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl EntryView {
    pub fn count(&self, status: &str) -> usize {
        self.recipients.iter().filter(|r| r.status == status).count()
    }
}

fn status_word(s: RcptStatus) -> &'static str {
    match s {
        RcptStatus::Pending => "pending",
        RcptStatus::Sent => "delivered",
        RcptStatus::Failed => "failed",
    }
}

/// Read entry `name` in `q` for display.
pub fn view(store: &Store, q: Queue, name: &str, limits: &Limits) -> EntryView {
    let size_on_disk = store.stat(q, name).map(|st| u64::try_from(st.st_size).unwrap_or(0)).unwrap_or(0);
    let arrival_from_id = QueueId::parse(name)
        .map(|i| i.arrival_secs())
        .or_else(|| store.stat(q, name).ok().and_then(|st| u64::try_from(st.st_mtime).ok()))
        .unwrap_or(0);
    let state = store.read_state(name).ok().flatten();
    let mut v = EntryView {
        id: outq_spool::log::escape(name.as_bytes()),
        state: state_name(q),
        arrival: arrival_from_id,
        size: size_on_disk,
        sender: String::new(),
        recipients: Vec::new(),
        next_attempt: None,
        last_error: None,
        hold_reason: None,
        problem: None,
    };
    match validate::load(store, q, name, limits) {
        Ok(Loaded { parsed, .. }) => {
            let h = parsed.header;
            v.arrival = h.arrival;
            v.size = h.size;
            v.sender = h.sender.as_str().to_owned();
            // What the runner would do: the state reconciled with the entry.
            let (st, _) = reconcile(Ok(state.clone()), &h.recipients);
            v.recipients = st
                .recipients
                .iter()
                .map(|r| RcptView {
                    address: r.address.to_string(),
                    status: status_word(r.status),
                    reply: r.reply.clone(),
                })
                .collect();
        }
        Err(why) => v.problem = Some(why),
    }
    if let Some(st) = state {
        if q == Queue::Deferred {
            v.next_attempt = Some(store.due_time(name).unwrap_or(st.next_attempt));
        }
        v.last_error = (!st.last_error.is_empty()).then_some(st.last_error);
        v.hold_reason = st.hold;
    }
    v
}

/// Every entry in the given queues, oldest first.
pub fn all(store: &Store, queues: &[Queue], limits: &Limits) -> Vec<EntryView> {
    let mut out = Vec::new();
    for &q in queues {
        let mut names = store.list(q).unwrap_or_default();
        names.sort();
        out.extend(names.iter().map(|n| view(store, q, n, limits)));
    }
    out.sort_by(|a, b| (a.arrival, &a.id).cmp(&(b.arrival, &b.id)));
    out
}

/// Find which queue holds `id` (a name with a `/`, or `.` or `..`, is never an entry).
pub fn locate(store: &Store, id: &str) -> Option<Queue> {
    VISIBLE.iter().copied().find(|&q| !matches!(id, "" | "." | "..") && !id.contains('/') && store.stat(q, id).is_ok())
}
