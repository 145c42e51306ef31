//! One module per subcommand.

pub mod check;
pub mod cluster;
pub mod docs;
pub mod get;
pub mod health;
pub mod history;
pub mod ls;
pub mod serve;
pub mod watch;

use std::fmt;

/// A lookup found nothing: printed like other errors, but exits with status 1
/// (as `docker inspect` does), so scripts can tell it from a failure.
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// A data source error, with "not found" kept apart.
pub fn lookup_error(e: ctwatch_agent::DataSourceError) -> anyhow::Error {
    if e.is_not_found() {
        NotFound(e.to_string()).into()
    } else {
        e.into()
    }
}
