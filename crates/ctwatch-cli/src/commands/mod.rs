//! One module per subcommand.

pub mod ls;
pub mod watch;
