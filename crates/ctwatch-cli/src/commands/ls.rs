//! `ctwatch ls`: the containers on this host now, from the agent when one
//! runs, else from one scan enriched from the runtimes (within the deadline).

use std::io::{self, Write};

use anyhow::Result;
use ctwatch::Container;
use ctwatch_api::convert::{container_from_message, filter_from_request};
use ctwatch_api::pb;

use crate::cli::LsArgs;
use crate::{host, output, remote};

/// Runs `ctwatch ls`.
pub fn run(args: &LsArgs) -> Result<()> {
    let request = list_request(&args.filter);
    let mut containers: Vec<Container> = match remote::connect(&args.agent)? {
        Some(remote) => {
            let answer =
                remote.call(|mut client| async move { client.list(request).await.map(tonic::Response::into_inner) })?;
            answer.containers.iter().map(container_from_message).collect()
        }
        None => {
            let filter = filter_from_request(&request).map_err(remote::status_error)?;
            let ds = host::snapshot(&args.cgroups)?;
            let live: Vec<_> = ds.store().read().live().cloned().collect();
            host::enrich_now(&ds, &args.enrich, &args.cgroups, &live)?;
            let store = ds.store().read();
            store.iter().filter(|c| filter.matches(c)).map(|c| (**c).clone()).collect()
        }
    };
    containers.sort_by(|a, b| b.ctime_ns.cmp(&a.ctime_ns).then_with(|| a.id.cmp(&b.id)));
    let rows: Vec<&Container> = containers.iter().collect();
    let mut out = io::BufWriter::new(io::stdout().lock());
    output::write_containers(&mut out, &rows, args.format, args.no_trunc, args.quiet)?;
    out.flush()?;
    Ok(())
}

/// `--filter` pairs as the API's list request (one format for both paths).
fn list_request(filters: &[(String, String)]) -> pb::ListRequest {
    let mut request = pb::ListRequest::default();
    for (key, value) in filters {
        let value = value.clone();
        match key.as_str() {
            "name" => request.name = value,
            "image" => request.image = value,
            "runtime" => request.runtime = value,
            "pod" => request.pod_name = value,
            "namespace" => request.pod_namespace = value,
            _ => request.labels.push(value),
        }
    }
    request
}
