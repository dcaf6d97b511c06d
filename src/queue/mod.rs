/*!
The runner's view of the spool: the queue directories ([`store`]), the
checks an entry must pass before it is trusted ([`validate`]), and the
per-entry delivery state ([`state`]).
*/
#![forbid(unsafe_code)]

pub mod state;
pub mod store;
pub mod validate;
