/*!
The spool's directory layout and the exact owner, group and mode of each part.

This table is the single source of truth: `outq init` creates from it,
`outq check` audits against it, the helper verifies `tmp/` and `new/` against
it before writing, and `outq-spool(5)` documents it.

```text
/var/spool/outq          outq:outq      0755  root of the queue
├── tmp/                 outq:outqdrop  3730  entries being written by the helper
├── new/                 outq:outqdrop  3730  committed entries waiting for pickup
├── active/              outq:outq      0700  entries being delivered
├── deferred/            outq:outq      0700  entries waiting for a retry
├── hold/                outq:outq      0700  entries held by the operator
├── failed/              outq:outq      0700  entries that could not be delivered
├── corrupt/             outq:outq      0700  files that failed validation
├── state/               outq:outq      0700  the runner's per-entry delivery state
└── lock                 outq:outq      0600  the runner's flock(2) lock
```

Why 3730 for `tmp/` and `new/`: the owner (the queue user) may do
everything; the set-group-ID helper, through the group, may create files
(`w`) and reach names it already knows (`x`) but never list the directory
(no `r`), so no caller can learn another caller's queue IDs. The sticky bit
means a group member may only rename or remove files it owns itself. The
set-group-ID bit makes every file created there belong to the helper's
group whatever the caller's groups are. Other users have no access at all.
*/
#![forbid(unsafe_code)]

/// Which configured identity a directory's group must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    /// The queue user's primary group.
    Owner,
    /// The helper's dedicated group (`setgid_group`).
    Drop,
}

/// What kind of file a layout entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// One path in the spool with its required ownership and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Name relative to the spool root; "" is the root itself.
    pub name: &'static str,
    pub kind: Kind,
    pub group: GroupRole,
    /// Permission bits including set-group-ID (0o2000) and sticky (0o1000).
    pub mode: u32,
    /// One line for `outq check` and the manual page.
    pub purpose: &'static str,
}

pub const TMP: &str = "tmp";
pub const NEW: &str = "new";
pub const ACTIVE: &str = "active";
pub const DEFERRED: &str = "deferred";
pub const HOLD: &str = "hold";
pub const FAILED: &str = "failed";
pub const CORRUPT: &str = "corrupt";
pub const STATE: &str = "state";
pub const LOCK: &str = "lock";

/// Mode of `tmp/` and `new/`: set-group-ID, sticky, rwx for the owner,
/// wx for the helper's group, nothing for others.
pub const DROP_DIR_MODE: u32 = 0o3730;
/// Mode of the runner's private directories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the spool root: anyone may see the layout, nobody else may write.
pub const ROOT_DIR_MODE: u32 = 0o755;

/// Mode of a committed entry. The owner is the submitting user, who cannot
/// reach the file (no search permission on `new/`); the group is the
/// helper's, given no access so a holder of the group cannot read entries
/// whose names it learns; "other" read is how the queue user, who is neither
/// owner nor group member, reads it through the directory it owns. Nobody may
/// write it.
pub const ENTRY_MODE: u32 = 0o404;
/// Names in `tmp/` that are not entries but the per-account ledgers of
/// `submit_share` (`tmp/.share.UID`, see outq-enqueue's `share` module).
pub const SHARE_LEDGER_PREFIX: &str = ".share.";

/// Mode of an entry while the helper writes it in `tmp/`: the committed
/// mode from the start, so that the queue owner can open a file in `tmp/`
/// to test the writer's lock (`flock`: held while a writer lives, released
/// by the kernel when it dies). Nobody else can reach `tmp/` to read it:
/// others have no search permission there, and the helper's group gets the
/// file's group bits, which are 0.
pub const TMP_ENTRY_MODE: u32 = 0o404;

/// The spool, in creation order (parents before children).
pub const PARTS: [Part; 10] = [
    Part { name: "", kind: Kind::Dir, group: GroupRole::Owner, mode: ROOT_DIR_MODE, purpose: "spool root" },
    Part {
        name: TMP,
        kind: Kind::Dir,
        group: GroupRole::Drop,
        mode: DROP_DIR_MODE,
        purpose: "entries being written by outq-enqueue",
    },
    Part {
        name: NEW,
        kind: Kind::Dir,
        group: GroupRole::Drop,
        mode: DROP_DIR_MODE,
        purpose: "committed entries waiting for pickup",
    },
    Part {
        name: ACTIVE,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "entries being delivered",
    },
    Part {
        name: DEFERRED,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "entries waiting for a retry",
    },
    Part {
        name: HOLD,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "entries held by the operator",
    },
    Part {
        name: FAILED,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "entries that could not be delivered",
    },
    Part {
        name: CORRUPT,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "files that failed validation",
    },
    Part {
        name: STATE,
        kind: Kind::Dir,
        group: GroupRole::Owner,
        mode: PRIVATE_DIR_MODE,
        purpose: "the runner's per-entry delivery state",
    },
    Part { name: LOCK, kind: Kind::File, group: GroupRole::Owner, mode: 0o600, purpose: "the runner's lock file" },
];

/// Look a part up by name.
pub fn part(name: &str) -> Option<&'static Part> {
    PARTS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_names_are_unique() {
        assert_eq!(PARTS[0].name, "");
        for (i, a) in PARTS.iter().enumerate() {
            for b in PARTS.iter().skip(i + 1) {
                assert_ne!(a.name, b.name);
            }
            assert!(!a.name.contains('/'));
        }
    }

    #[test]
    fn drop_dirs_never_grant_read_to_the_group() {
        for p in PARTS.iter().filter(|p| p.group == GroupRole::Drop) {
            assert_eq!(p.mode & 0o040, 0, "{} must not be listable by the group", p.name);
            assert_eq!(p.mode & 0o007, 0, "{} must be closed to others", p.name);
            assert_ne!(p.mode & 0o1000, 0, "{} needs the sticky bit", p.name);
        }
        assert_eq!(ENTRY_MODE & 0o070, 0);
        assert_eq!(ENTRY_MODE & 0o222, 0);
    }
}
