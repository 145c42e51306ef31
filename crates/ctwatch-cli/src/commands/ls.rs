//! `ctwatch ls`: the containers on this host now, from the agent when one
//! runs, else from one scan enriched from the runtimes (within the deadline).

use std::collections::HashSet;
use std::io::{self, Write};

use anyhow::Result;
use ctwatch_agent::ContainerRecord;
use ctwatch_api::convert::{container_from_message, filter_from_request, record_from_message};
use ctwatch_api::pb;

use crate::cli::LsArgs;
use crate::filter::{list_request, EventFilter};
use crate::{host, output, remote};

/// Runs `ctwatch ls`.
pub fn run(args: &LsArgs) -> Result<()> {
    // The request narrows what comes back; the filter (values of one key ORed) decides.
    let request = list_request(&args.filter);
    let filter = EventFilter::new(&args.filter)?;
    let mut containers: Vec<ContainerRecord> = match remote::connect(&args.agent)? {
        Some(remote) => {
            let mut answer =
                remote.call(|mut client| async move { client.list(request).await.map(tonic::Response::into_inner) })?;
            if args.all {
                let removed = remote.call(|mut client| async move {
                    client.list_removed(pb::ListRemovedRequest {}).await.map(tonic::Response::into_inner)
                })?;
                let live: HashSet<String> = answer.containers.iter().map(|c| c.container_id.clone()).collect();
                for r in removed.containers {
                    let Some(mut c) = r.last_known.and_then(|e| e.container) else { continue };
                    if !live.contains(&c.container_id) {
                        c.state = pb::ContainerState::Removed as i32;
                        answer.containers.push(c);
                    }
                }
            }
            let wanted = |m: &&pb::Container| filter.matches_container(&container_from_message(m));
            answer.containers.iter().filter(wanted).map(record_from_message).collect()
        }
        None if args.all => anyhow::bail!("--all reads the agent's journal: no agent answers on the socket"),
        None => {
            let narrowed = filter_from_request(&request).map_err(remote::status_error)?;
            let ds = host::snapshot(&args.cgroups)?;
            let live: Vec<_> = ds.store().read().live().cloned().collect();
            host::enrich_now(&ds, &args.enrich, &args.cgroups, &live)?;
            let wanted: HashSet<String> =
                ds.store().read().iter().filter(|c| filter.matches_container(c)).map(|c| c.id.clone()).collect();
            ds.list(&narrowed).into_iter().filter(|r| wanted.contains(&r.container_id)).collect()
        }
    };
    containers
        .sort_by(|a, b| b.container_ctime.cmp(&a.container_ctime).then_with(|| a.container_id.cmp(&b.container_id)));
    let mut out = io::BufWriter::new(io::stdout().lock());
    output::write_containers(&mut out, &containers, args.format, args.no_trunc, args.quiet)?;
    out.flush()?;
    Ok(())
}
