//! `ctwatch ls`: the containers on this host now, from one scan, enriched
//! from their runtimes (within the deadline).

use std::io::{self, Write};
use std::time::Instant;

use anyhow::Result;
use ctwatch::sources::{scan, Origin};
use ctwatch::{SharedStore, Store, Tracker};

use crate::cli::LsArgs;
use crate::host;
use crate::output;

/// Runs `ctwatch ls`.
pub fn run(args: &LsArgs) -> Result<()> {
    host::require_root()?;
    let tree = host::watched_tree(&args.cgroups)?;
    let store = SharedStore::new(Store::default());
    let mut tracker = Tracker::new(store.clone(), Box::new(host::state_dirs(&args.cgroups)));
    let mut found = Vec::new();
    tracker.apply(&scan::scan(&tree.hierarchy.mount_point, &tree.start, Origin::Existing), &mut found);

    let (results_tx, results) = crossbeam_channel::unbounded();
    if let Some(enrichment) = host::start_enrichment(&args.enrich, &args.cgroups, results_tx)? {
        for event in &found {
            enrichment.submit(&event.container);
        }
        let deadline = Instant::now() + args.enrich.enrich_deadline;
        for _ in 0..found.len() {
            let Ok(result) = results.recv_deadline(deadline) else {
                break;
            };
            tracker.update_container(&result.container_id, result.cgroup_id, |c| result.metadata.apply_to(c));
        }
    }

    let store = store.read();
    let mut containers: Vec<_> = store.live().map(|c| c.as_ref()).collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.ctime_ns));
    let mut out = io::BufWriter::new(io::stdout().lock());
    output::write_containers(&mut out, &containers, args.format, args.no_trunc, args.quiet)?;
    out.flush()?;
    Ok(())
}
