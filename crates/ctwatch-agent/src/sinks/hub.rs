//! The hub as a sink: events to Watch and `watch` subscribers (see
//! [`crate::hub`] for the per-subscriber bounded queues and their policy).

use crate::datasource::DataSource;

use super::{Output, Sink};

/// Publishes events to the data source's hub.
pub struct HubSink {
    data_source: DataSource,
}

impl HubSink {
    /// A sink publishing to `data_source`'s hub.
    pub fn new(data_source: DataSource) -> Self {
        HubSink { data_source }
    }
}

impl Sink for HubSink {
    fn name(&self) -> &'static str {
        "hub"
    }

    fn take(&mut self, output: Output<'_>) {
        match output {
            Output::Events(events) if !events.is_empty() => self.data_source.hub().publish(events),
            Output::ScanComplete => self.data_source.set_scanned(),
            _ => {}
        }
    }

    fn close(&mut self) {
        self.data_source.hub().close();
    }
}
