//! `ctwatch ls`: the containers on this host now, from the agent when one
//! runs, else from one scan enriched from the runtimes (within the deadline).

use std::io::{self, Write};

use anyhow::Result;
use ctwatch_agent::ContainerRecord;
use ctwatch_api::convert::{filter_from_request, record_from_message};

use crate::cli::LsArgs;
use crate::filter::list_request;
use crate::{host, output, remote};

/// Runs `ctwatch ls`.
pub fn run(args: &LsArgs) -> Result<()> {
    let request = list_request(&args.filter);
    let mut containers: Vec<ContainerRecord> = match remote::connect(&args.agent)? {
        Some(remote) => {
            let answer =
                remote.call(|mut client| async move { client.list(request).await.map(tonic::Response::into_inner) })?;
            answer.containers.iter().map(record_from_message).collect()
        }
        None => {
            let filter = filter_from_request(&request).map_err(remote::status_error)?;
            let ds = host::snapshot(&args.cgroups)?;
            let live: Vec<_> = ds.store().read().live().cloned().collect();
            host::enrich_now(&ds, &args.enrich, &args.cgroups, &live)?;
            ds.list(&filter)
        }
    };
    containers
        .sort_by(|a, b| b.container_ctime.cmp(&a.container_ctime).then_with(|| a.container_id.cmp(&b.container_id)));
    let mut out = io::BufWriter::new(io::stdout().lock());
    output::write_containers(&mut out, &containers, args.format, args.no_trunc, args.quiet)?;
    out.flush()?;
    Ok(())
}
