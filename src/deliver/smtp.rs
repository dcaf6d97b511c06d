/*!
SMTP and SMTPS delivery: not in this build yet. Until it lands, an `smtp://`
or `smtps://` relay defers every recipient with a reply that says so, so no
mail is lost or wrongly bounced.
*/
#![forbid(unsafe_code)]

use super::{Outcome, Outgoing, Status, Transport};
use crate::config::RunnerConfig;

/// SMTP relays, tried in order.
#[derive(Debug)]
pub struct Smtp {}

impl Smtp {
    pub fn new(_cfg: &RunnerConfig, _myhostname: &str) -> Result<Smtp, String> {
        Ok(Smtp {})
    }
}

impl Transport for Smtp {
    fn deliver(&mut self, msg: &Outgoing<'_>) -> Vec<Outcome> {
        Outcome::all(msg, Status::Deferred, "SMTP delivery is not available in this build", "smtp")
    }
}
