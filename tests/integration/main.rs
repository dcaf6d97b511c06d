/*!
outq's integration tests: one binary that runs the real programs.

- `support`: the command builder, spools, and the root-only fixtures (test
  users and groups, a set-group-ID copy of the helper, the configuration
  file lock);
- `enqueue`: the helper in development mode (no privilege needed);
- `privileged`: the helper installed set-group-ID and run as real users,
  hostile callers, and `outq init` / `outq check` on a real installation.
  These skip with a visible message when not root, and fail instead when
  `OUTQ_REQUIRE_PRIVILEGED=1`;
- `smtp_server`: the scriptable SMTP server of `smtp` and `faults`, which
  also checks that a client pipelines when PIPELINING is advertised.
*/
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod bounce;
mod crash;
mod docs;
mod e2e;
mod enqueue;
mod faults;
mod install;
mod ops;
mod powercut;
mod privileged;
mod programs;
mod runner;
mod sendmail;
mod setup;
mod smtp;
mod smtp_server;
mod smtp_submit;
mod soak;
mod support;
mod sysroot;
