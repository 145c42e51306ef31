//! The Prometheus text exposition format (version 0.0.4), made from the
//! OpenMetrics text that prometheus-client writes.
//!
//! prometheus-client only encodes OpenMetrics, whose metadata differs from the
//! older text format that Prometheus (and `promtool check metrics`) read under
//! `text/plain; version=0.0.4`: OpenMetrics names a counter's family without its
//! `_total` suffix and an info metric's without `_info`, has `# UNIT` lines,
//! `_created` samples, exemplars, timestamps in seconds and a closing `# EOF`.
//! The samples themselves (names, label sets, values) are the same in both, so
//! the conversion rewrites the metadata lines and leaves the samples alone,
//! except for dropping exemplars and `_created` and turning timestamps into
//! milliseconds.

/// A family's metadata, held until its first sample (HELP comes before TYPE).
struct Header<'a> {
    name: &'a str,
    help: Option<&'a str>,
    kind: Option<&'a str>,
}

/// The family whose samples are being copied.
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
}

/// `om`, OpenMetrics text (with or without `# EOF`), in the Prometheus text format 0.0.4.
pub(crate) fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut header: Option<Header> = None;
    let mut family: Option<Family> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(h) = header.take() {
                family = Some(write_header(&mut out, h));
            }
            header = Some(Header { name, help: Some(help), kind: None });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            match &mut header {
                Some(h) if h.name == name && h.kind.is_none() => h.kind = Some(kind),
                _ => {
                    if let Some(h) = header.take() {
                        family = Some(write_header(&mut out, h));
                    }
                    header = Some(Header { name, help: None, kind: Some(kind) });
                }
            }
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT` (the unit is already the name's suffix), `# EOF`, comments.
        } else {
            if let Some(h) = header.take() {
                family = Some(write_header(&mut out, h));
            }
            write_sample(&mut out, line, family.as_ref());
        }
    }
    if let Some(h) = header.take() {
        write_header(&mut out, h);
    }
    out
}

/// Writes HELP and TYPE under the text format's family name and type.
fn write_header<'a>(out: &mut String, h: Header<'a>) -> Family<'a> {
    let kind = h.kind.unwrap_or("unknown");
    let (suffix, text_kind) = match kind {
        "counter" => ("_total", "counter"),
        "info" => ("_info", "gauge"),
        "gauge" | "histogram" | "summary" => ("", kind),
        "stateset" => ("", "gauge"),
        _ => ("", "untyped"),
    };
    if let Some(help) = h.help {
        // OpenMetrics escapes `"` in HELP; the text format has no such escape.
        out.push_str(&format!("# HELP {}{suffix} {}\n", h.name, help.replace("\\\"", "\"")));
    }
    out.push_str(&format!("# TYPE {}{suffix} {text_kind}\n", h.name));
    Family { name: h.name, kind }
}

/// Copies one sample line, without exemplar, timestamp in milliseconds; drops `_created`.
fn write_sample(out: &mut String, line: &str, family: Option<&Family>) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if let Some(f) = family {
        let created = name.strip_prefix(f.name) == Some("_created");
        if created && matches!(f.kind, "counter" | "histogram" | "summary" | "gaugehistogram") {
            return;
        }
    }
    let labels_end =
        if line[name_end..].starts_with('{') { name_end + label_set_len(&line[name_end..]) } else { name_end };
    let rest = &line[labels_end..];
    // An exemplar starts with " # " after the value (and timestamp).
    let rest = rest.find(" # ").map_or(rest, |i| &rest[..i]);
    let mut fields = rest.split_whitespace();
    let Some(value) = fields.next() else { return };
    out.push_str(&line[..labels_end]);
    out.push(' ');
    out.push_str(value);
    if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
        out.push(' ');
        out.push_str(&format!("{}", (ts * 1000.0).round() as i64));
    }
    out.push('\n');
}

/// The length of the label set `{...}` at the start of `s` (quotes and escapes respected).
fn label_set_len(s: &str) -> usize {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return i + 1,
            _ => {}
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::from_openmetrics;

    #[test]
    fn counters_are_named_with_total_and_eof_units_created_go() {
        let om = "# HELP app_events Events, by kind.\n\
                  # TYPE app_events counter\n\
                  app_events_total{kind=\"a\"} 0\n\
                  app_events_created{kind=\"a\"} 1700000000.5\n\
                  app_events_total{kind=\"b\"} 3\n\
                  # HELP app_cpu_seconds CPU time.\n\
                  # TYPE app_cpu_seconds counter\n\
                  # UNIT app_cpu_seconds seconds\n\
                  app_cpu_seconds_total 1.25\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP app_events_total Events, by kind.\n\
             # TYPE app_events_total counter\n\
             app_events_total{kind=\"a\"} 0\n\
             app_events_total{kind=\"b\"} 3\n\
             # HELP app_cpu_seconds_total CPU time.\n\
             # TYPE app_cpu_seconds_total counter\n\
             app_cpu_seconds_total 1.25\n"
        );
    }

    #[test]
    fn gauges_histograms_and_info_metrics() {
        let om = "# HELP app_up Up.\n\
                  # TYPE app_up gauge\n\
                  app_up 1\n\
                  # HELP app_wait_seconds Wait.\n\
                  # TYPE app_wait_seconds histogram\n\
                  # UNIT app_wait_seconds seconds\n\
                  app_wait_seconds_sum 0.5\n\
                  app_wait_seconds_count 1\n\
                  app_wait_seconds_bucket{le=\"0.1\"} 0\n\
                  app_wait_seconds_bucket{le=\"+Inf\"} 1\n\
                  # HELP app_build Build.\n\
                  # TYPE app_build info\n\
                  app_build_info{version=\"1.0\"} 1\n\
                  # HELP app_mystery Unknown.\n\
                  # TYPE app_mystery unknown\n\
                  app_mystery 7\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP app_up Up.\n\
             # TYPE app_up gauge\n\
             app_up 1\n\
             # HELP app_wait_seconds Wait.\n\
             # TYPE app_wait_seconds histogram\n\
             app_wait_seconds_sum 0.5\n\
             app_wait_seconds_count 1\n\
             app_wait_seconds_bucket{le=\"0.1\"} 0\n\
             app_wait_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP app_build_info Build.\n\
             # TYPE app_build_info gauge\n\
             app_build_info{version=\"1.0\"} 1\n\
             # HELP app_mystery Unknown.\n\
             # TYPE app_mystery untyped\n\
             app_mystery 7\n"
        );
    }

    #[test]
    fn exemplars_go_timestamps_become_milliseconds_label_values_stay() {
        let om = "# HELP app_req Requests.\n\
                  # TYPE app_req counter\n\
                  app_req_total{path=\"/a # b}\\\"\"} 2 # {trace_id=\"x\"} 1 1700000000.0\n\
                  app_req_total{path=\"/c\"} 5 1700000000.25\n\
                  # HELP app_quoted Says \\\"hi\\\".\n\
                  # TYPE app_quoted gauge\n\
                  app_quoted -1.5e-3\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP app_req_total Requests.\n\
             # TYPE app_req_total counter\n\
             app_req_total{path=\"/a # b}\\\"\"} 2\n\
             app_req_total{path=\"/c\"} 5 1700000000250\n\
             # HELP app_quoted Says \"hi\".\n\
             # TYPE app_quoted gauge\n\
             app_quoted -1.5e-3\n"
        );
    }

    #[test]
    fn families_without_samples_keep_their_metadata() {
        let om = "# HELP app_empty Nothing yet.\n# TYPE app_empty counter\n# EOF\n";
        assert_eq!(from_openmetrics(om), "# HELP app_empty_total Nothing yet.\n# TYPE app_empty_total counter\n");
        assert_eq!(from_openmetrics(""), "");
    }
}
