//! Printing events and containers: JSON lines for programs, tables for people.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctwatch::event::rfc3339_nanos;
use ctwatch::{Container, ContainerEvent};
use ctwatch_agent::ContainerRecord;

use crate::cli::Format;

/// Width of a truncated container ID, as `docker ps` prints it.
const SHORT_ID: usize = 12;

/// Writes events in the chosen format.
pub struct EventWriter<W: Write> {
    out: W,
    format: Format,
    no_trunc: bool,
    widths: Widths,
    header_done: bool,
}

impl<W: Write> EventWriter<W> {
    /// A writer of `format` to `out`.
    pub fn new(out: W, format: Format, no_trunc: bool) -> Self {
        EventWriter { out, format, no_trunc, widths: Widths::new(no_trunc), header_done: false }
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
                    cell(&c.name, self.widths.name),
                    cell(&c.image, self.widths.image),
                    cell(&pod_label(c), self.widths.pod),
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

/// Writes a list of containers: JSON lines of the same record `ctwatch get`
/// prints and the API's `Container` carries, or a table.
pub fn write_containers(
    out: &mut impl Write,
    containers: &[ContainerRecord],
    format: Format,
    no_trunc: bool,
    quiet: bool,
) -> io::Result<()> {
    let widths = Widths::new(no_trunc);
    if quiet {
        for c in containers {
            writeln!(out, "{}", cell(&c.container_id, widths.id).trim_end())?;
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            for c in containers {
                serde_json::to_writer(&mut *out, c)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => {
            let rows: Vec<[String; 7]> = containers
                .iter()
                .map(|c| {
                    [
                        cell(&c.container_id, widths.id),
                        c.runtime.as_str().to_string(),
                        name_with_marker(c, widths.name),
                        cell(&c.container_image, widths.image),
                        cell(&pod_text(&c.k8s_pod_namespace, &c.k8s_pod_name, &c.k8s_pod_id), widths.pod),
                        age(c.container_ctime),
                        c.cgroup_id.to_string(),
                    ]
                })
                .collect();
            let header = ["CONTAINER ID", "RUNTIME", "NAME", "IMAGE", "POD", "CREATED", "CGROUP ID"];
            print_rows(out, &header, rows)?;
        }
    }
    Ok(())
}

/// Prints a table with columns as wide as their widest cell, as docker's tables.
pub(crate) fn print_rows<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: Vec<[String; N]>,
) -> io::Result<()> {
    let mut width = [0; N];
    for row in rows.iter().map(|r| r.each_ref().map(|c| c.chars().count())).chain([header.map(str::len)]) {
        for (w, len) in width.iter_mut().zip(row) {
            *w = (*w).max(len);
        }
    }
    for row in std::iter::once(header.map(str::to_string)).chain(rows) {
        let line: Vec<String> = row.iter().zip(width).map(|(cell, w)| format!("{cell:<w$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// The NAME cell, ending in ` [PRIV]` when the container is privileged
/// (its security profile says so; no marker when none was read).
fn name_with_marker(c: &ContainerRecord, width: usize) -> String {
    let name = cell(&c.container_name, width);
    if c.security.as_deref().is_some_and(|s| s.privileged) {
        format!("{} [PRIV]", name.trim_end())
    } else {
        name
    }
}

/// How many characters of each column a table shows.
struct Widths {
    id: usize,
    name: usize,
    image: usize,
    pod: usize,
}

impl Widths {
    fn new(no_trunc: bool) -> Widths {
        if no_trunc {
            Widths { id: usize::MAX, name: usize::MAX, image: usize::MAX, pod: usize::MAX }
        } else {
            Widths { id: SHORT_ID, name: 20, image: 24, pod: 24 }
        }
    }
}

fn pod_label(c: &Container) -> String {
    pod_text(&c.pod.namespace, &c.pod.name, &c.pod.uid)
}

fn pod_text(namespace: &str, name: &str, uid: &str) -> String {
    match (namespace.is_empty(), name.is_empty()) {
        (false, false) => format!("{namespace}/{name}"),
        (true, false) => name.to_string(),
        _ if !uid.is_empty() => format!("pod{uid}"),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ctwatch::{Container, Runtime, SecurityProfile};

    use super::*;

    #[test]
    fn the_table_marks_privileged_containers_only() {
        let privileged = br#"{"process":{"capabilities":{"bounding":[]}},"linux":{"namespaces":[{"type":"pid"}],
            "resources":{"devices":[{"allow":true,"access":"rwm"}]}}}"#;
        let mut profile = SecurityProfile::from_config_bytes(privileged).unwrap();
        profile.privileged = true;
        let mut c = Container::new("a".repeat(64), Runtime::Docker);
        c.name = "a-long-container-name-cut-by-the-table".into();
        let plain = ContainerRecord::new(&c, None);
        c.security = Some(Arc::new(profile.clone()));
        let marked = ContainerRecord::new(&c, None);
        c.security = Some(Arc::new(SecurityProfile { privileged: false, ..profile }));
        let unprivileged = ContainerRecord::new(&c, None);
        let mut out = Vec::new();
        write_containers(&mut out, &[plain, marked, unprivileged], Format::Table, false, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let marks: Vec<bool> = text.lines().skip(1).map(|l| l.contains("[PRIV]")).collect();
        assert_eq!(marks, [false, true, false], "{text}");
        assert!(text.lines().nth(2).unwrap().contains("a-long-container-nam [PRIV]"), "cut, then marked: {text}");
    }
}
