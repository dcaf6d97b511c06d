/*!
The spool shared by outq's three programs.

Everything that crosses the privilege boundary is defined here, once: the
directory layout and its modes ([`layout`]), the queue IDs ([`queue_id`]), the
on-disk entry format ([`entry`]), envelope address validation ([`address`]),
the configuration file ([`config`]), the local account files read
without NSS ([`accounts`]), the descriptor-based file primitives that
never follow a symbolic link ([`fs`]), and the process exit codes
([`exit`]).

The set-group-ID helper `outq-enqueue` and the unprivileged runner `outq`
both link this crate, so a change to the format is seen by both sides at once.

All modules forbid `unsafe`; the few libc calls that neither the standard
library nor nix offers live in the private [`sys`] module, each with a
`// SAFETY:` comment.
*/
#![deny(unsafe_code)]

pub mod accounts;
pub mod address;
pub mod config;
pub mod entry;
pub mod exit;
pub mod fs;
pub mod layout;
pub mod log;
pub mod process;
pub mod queue_id;
#[allow(unsafe_code)]
mod sys;
