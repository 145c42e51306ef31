//! `ctwatch ls`: the containers on this host now, from one scan.

use std::io::{self, Write};

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
    let events = scan::scan(&tree.hierarchy.mount_point, &tree.start, Origin::Existing);
    tracker.apply(&events, &mut Vec::new());
    let store = store.read();
    let mut containers: Vec<_> = store.live().map(|c| c.as_ref()).collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.ctime_ns));
    let mut out = io::BufWriter::new(io::stdout().lock());
    output::write_containers(
        &mut out,
        &containers,
        args.format,
        args.no_trunc,
        args.quiet,
    )?;
    out.flush()?;
    Ok(())
}
