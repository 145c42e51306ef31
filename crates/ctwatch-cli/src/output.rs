//! Printing events and containers: JSON lines for programs, tables for people.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctwatch::event::rfc3339_nanos;
use ctwatch::{Container, ContainerEvent};
use serde::Serialize;

use crate::cli::Format;

/// Width of a truncated container ID, as `docker ps` prints it.
const SHORT_ID: usize = 12;

/// Writes events in the chosen format.
pub struct EventWriter<W: Write> {
    out: W,
    format: Format,
    no_trunc: bool,
    header_done: bool,
}

impl<W: Write> EventWriter<W> {
    /// A writer of `format` to `out`.
    pub fn new(out: W, format: Format, no_trunc: bool) -> Self {
        EventWriter { out, format, no_trunc, header_done: false }
    }

    /// Writes one event.
    pub fn write(&mut self, event: &ContainerEvent) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, event)?;
                self.out.write_all(b"\n")
            }
            Format::Table => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(
                        self.out,
                        "{:<30}  {:<18}  {:<10}  {:<id$}  {:<20}  {:<24}  {:<24}  CGROUP ID",
                        "TIME",
                        "EVENT",
                        "RUNTIME",
                        "CONTAINER ID",
                        "NAME",
                        "IMAGE",
                        "POD",
                        id = self.id_width()
                    )?;
                }
                let c = &event.container;
                writeln!(
                    self.out,
                    "{:<30}  {:<18}  {:<10}  {:<id$}  {:<20}  {:<24}  {:<24}  {}",
                    rfc3339_nanos(event.time),
                    event.kind.as_str(),
                    c.runtime.as_str(),
                    cell(&c.id, self.id_width()),
                    cell(&c.name, 20),
                    cell(&c.image, 24),
                    cell(&pod_label(c), 24),
                    event.cgroup_id,
                    id = self.id_width()
                )
            }
        }
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn id_width(&self) -> usize {
        if self.no_trunc {
            64
        } else {
            SHORT_ID
        }
    }
}

/// A container as `ctwatch ls --format json` prints it (event argument names).
#[derive(Debug, Serialize)]
pub struct ContainerRow<'a> {
    container_id: &'a str,
    runtime: &'a str,
    state: ctwatch::ContainerState,
    cgroup_id: u64,
    cgroup_path: &'a str,
    ctime: u64,
    container_image: &'a str,
    container_image_digest: &'a str,
    container_name: &'a str,
    pod_name: &'a str,
    pod_namespace: &'a str,
    pod_uid: &'a str,
    pod_sandbox: bool,
}

impl<'a> From<&'a Container> for ContainerRow<'a> {
    fn from(c: &'a Container) -> Self {
        ContainerRow {
            container_id: &c.id,
            runtime: c.runtime.as_str(),
            state: c.state,
            cgroup_id: c.cgroup_id,
            cgroup_path: &c.cgroup_path,
            ctime: c.ctime_ns,
            container_image: &c.image,
            container_image_digest: &c.image_digest,
            container_name: &c.name,
            pod_name: &c.pod.name,
            pod_namespace: &c.pod.namespace,
            pod_uid: &c.pod.uid,
            pod_sandbox: c.pod.sandbox,
        }
    }
}

/// Writes a list of containers.
pub fn write_containers(
    out: &mut impl Write,
    containers: &[&Container],
    format: Format,
    no_trunc: bool,
    quiet: bool,
) -> io::Result<()> {
    let id_width = if no_trunc { 64 } else { SHORT_ID };
    if quiet {
        for c in containers {
            writeln!(out, "{}", cell(&c.id, id_width).trim_end())?;
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            for c in containers {
                serde_json::to_writer(&mut *out, &ContainerRow::from(*c))?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<id$}  {:<10}  {:<20}  {:<24}  {:<24}  {:<14}  CGROUP ID",
                "CONTAINER ID",
                "RUNTIME",
                "NAME",
                "IMAGE",
                "POD",
                "CREATED",
                id = id_width
            )?;
            for c in containers {
                writeln!(
                    out,
                    "{:<id$}  {:<10}  {:<20}  {:<24}  {:<24}  {:<14}  {}",
                    cell(&c.id, id_width),
                    c.runtime.as_str(),
                    cell(&c.name, 20),
                    cell(&c.image, 24),
                    cell(&pod_label(c), 24),
                    age(c.ctime_ns),
                    c.cgroup_id,
                    id = id_width
                )?;
            }
        }
    }
    Ok(())
}

fn pod_label(c: &Container) -> String {
    match (c.pod.namespace.is_empty(), c.pod.name.is_empty()) {
        (_, false) if !c.pod.namespace.is_empty() => format!("{}/{}", c.pod.namespace, c.pod.name),
        (_, false) => c.pod.name.clone(),
        _ if !c.pod.uid.is_empty() => format!("pod{}", c.pod.uid),
        _ => String::new(),
    }
}

/// A table cell: control characters replaced, cut to `width` characters.
pub fn cell(value: &str, width: usize) -> String {
    let clean: String = value.chars().map(|ch| if ch.is_control() { '?' } else { ch }).collect();
    if clean.chars().count() <= width {
        return clean;
    }
    clean.chars().take(width).collect()
}

fn age(ctime_ns: u64) -> String {
    if ctime_ns == 0 {
        return "-".to_string();
    }
    let created = UNIX_EPOCH + Duration::from_nanos(ctime_ns);
    let Ok(elapsed) = SystemTime::now().duration_since(created) else {
        return "just now".to_string();
    };
    let secs = elapsed.as_secs();
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}
