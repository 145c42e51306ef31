//! `ctwatch get`, `ctwatch pid` and `ctwatch resolve`: one container, from
//! the agent when one runs, else from a scan made here.

use std::io::{self, Write};

use anyhow::{Context, Result};
use ctwatch_agent::{ContainerRecord, DataSource, LookupKey};
use ctwatch_api::convert::record_from_message;
use ctwatch_api::pb;

use crate::cli::{CgroupArgs, EnrichArgs, Format, GetArgs, LookupArgs, PidArgs, ResolveArgs};
use crate::commands::lookup_error;
use crate::{host, remote};

/// Runs `ctwatch get`.
pub fn run_get(args: &GetArgs) -> Result<()> {
    let key: LookupKey = args.key.parse().map_err(lookup_error)?;
    show(&key, &args.from)
}

/// Runs `ctwatch pid`.
pub fn run_pid(args: &PidArgs) -> Result<()> {
    show(&LookupKey::Pid(args.pid), &args.from)
}

fn show(key: &LookupKey, from: &LookupArgs) -> Result<()> {
    let record = match remote::connect(&from.agent)? {
        Some(remote) => {
            let key = key.clone();
            let message = remote.call(|mut client| async move {
                let response = match key {
                    LookupKey::Id(id) => client.get(pb::GetRequest { id }).await,
                    LookupKey::CgroupId(cgroup_id) => {
                        client.get_by_cgroup_id(pb::GetByCgroupIdRequest { cgroup_id }).await
                    }
                    LookupKey::Pid(pid) => client.get_by_pid(pb::GetByPidRequest { pid }).await,
                    LookupKey::MountNs(mount_ns) => client.get_by_mount_ns(pb::GetByMountNsRequest { mount_ns }).await,
                };
                response.map(tonic::Response::into_inner)
            })?;
            record_from_message(&message)
        }
        None => {
            let ds = host::snapshot(&from.cgroups)?;
            let id = find_here(&ds, key, &from.enrich, &from.cgroups)?;
            ds.lookup(&LookupKey::Id(id)).map_err(lookup_error)?
        }
    };
    print_record(&record)
}

/// Finds `key` in a snapshot made here and enriches what it finds; the
/// container's ID. A key that is no ID or prefix may be a name, which only
/// the runtimes know: then every container is enriched and the key tried again.
fn find_here(ds: &DataSource, key: &LookupKey, enrich: &EnrichArgs, cgroups: &CgroupArgs) -> Result<String> {
    let found = match ds.lookup(key) {
        Ok(found) => found.container_id,
        Err(e) if e.is_not_found() && matches!(key, LookupKey::Id(_)) => {
            let live: Vec<_> = ds.store().read().live().cloned().collect();
            host::enrich_now(ds, enrich, cgroups, &live)?;
            return Ok(ds.lookup(key).map_err(lookup_error)?.container_id);
        }
        Err(e) => return Err(lookup_error(e)),
    };
    let container = ds.store().read().get(&found).cloned();
    host::enrich_now(ds, enrich, cgroups, container.as_slice())?;
    Ok(found)
}

fn print_record(record: &ContainerRecord) -> Result<()> {
    let mut out = io::stdout().lock();
    let mut text = serde_json::to_string_pretty(record).context("cannot format the record")?;
    text.push('\n');
    quiet_pipe(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// A closed pipe (`ctwatch get x | head -1`) is not an error.
fn quiet_pipe(written: io::Result<()>) -> Result<()> {
    match written {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// Runs `ctwatch resolve`.
pub fn run_resolve(args: &ResolveArgs) -> Result<()> {
    let (container_path, host_path, dev, ino) = match remote::connect(&args.agent)? {
        Some(remote) => {
            let request = pb::ResolvePathRequest { container: args.container.clone(), path: args.path.clone() };
            let answer = remote.call(|mut client| async move {
                client.resolve_path(request).await.map(tonic::Response::into_inner)
            })?;
            (answer.container_path, answer.host_path, answer.dev, answer.ino)
        }
        None => {
            let ds = host::snapshot(&args.cgroups)?;
            let id = find_here(&ds, &LookupKey::Id(args.container.clone()), &args.enrich, &args.cgroups)?;
            let resolved = ds.resolve_path(&id, &args.path).map_err(lookup_error)?;
            let paths = [&resolved.container_path, &resolved.host_path].map(|p| p.to_string_lossy().into_owned());
            let [container_path, host_path] = paths;
            (container_path, host_path, resolved.dev, resolved.ino)
        }
    };
    let line = match args.format {
        Some(Format::Json) => {
            serde_json::json!({ "container_path": container_path, "host_path": host_path, "dev": dev, "ino": ino })
                .to_string()
        }
        // The path, then what must be found there: `<dev> <ino>` (the kernel's st_dev, and st_ino).
        Some(Format::Table) | None => format!("{host_path}\t{dev} {ino}"),
    };
    let mut out = io::stdout().lock();
    quiet_pipe(writeln!(out, "{line}").and_then(|()| out.flush()))
}
