//! The crate's errors.

use crate::outbox::OutboxError;

/// What went wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The options cannot be used (no URL, an unreadable creds file, ...).
    #[error("NATS options: {0}")]
    Options(String),
    /// No NATS server could be reached, or it refused us.
    #[error("cannot connect to NATS at {urls}: {message}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// Why.
        message: String,
    },
    /// A JetStream request failed (stream, bucket or consumer setup, a read).
    #[error("JetStream {what}: {message}")]
    JetStream {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// Nothing has been published to this NATS yet (no stream or bucket).
    #[error("no ctwatch data in this NATS: {0} does not exist (is any agent publishing here?)")]
    NotSetUp(String),
    /// A node name or container ID that cannot be used in a subject or key.
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// The outbox (the journal) failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl NatsError {
    pub(crate) fn js(what: &'static str, e: impl std::fmt::Display) -> NatsError {
        NatsError::JetStream { what, message: one_line(&e.to_string()) }
    }
}

/// An error message on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
