//! `--filter KEY=VALUE` for `ls` and `watch`, with docker's rules: values of
//! one key are ORed, different keys ANDed, and labels are all required.

use anyhow::Result;
use ctwatch::{Container, ContainerEvent, EventKind};
use ctwatch_agent::ContainerFilter;
use ctwatch_api::convert::filter_from_request;
use ctwatch_api::pb;

use crate::remote;

/// The event kinds `watch --filter event=` accepts, also without the `container_` prefix.
const EVENT_KINDS: [EventKind; 6] = [
    EventKind::ExistingContainer,
    EventKind::ContainerPrecreate,
    EventKind::ContainerCreate,
    EventKind::ContainerUpdate,
    EventKind::ContainerPolicyViolation,
    EventKind::ContainerRemove,
];

/// The event kind named `name` (`container_create` or `create`).
pub fn event_kind(name: &str) -> Result<EventKind, String> {
    EVENT_KINDS
        .into_iter()
        .find(|k| k.as_str() == name || k.as_str().strip_prefix("container_") == Some(name))
        .ok_or_else(|| {
            let names: Vec<&str> = EVENT_KINDS.iter().map(|k| k.as_str()).collect();
            format!("unknown event {name:?} (one of: {})", names.join(", "))
        })
}

/// The `--filter` keys about a container's security profile (see
/// `ctwatch_security::SecurityProfile::matches_filter`).
pub const SECURITY_KEYS: [&str; 7] = ["privileged", "host_ns", "cap", "run_as_root", "seccomp", "class", "host_mount"];

/// Whether `key=value` is a security filter the profile knows (a bad
/// boolean, for one, is refused before anything is asked).
pub fn check_security(key: &str, value: &str) -> Result<(), String> {
    let filter = ContainerFilter { security: vec![(key.to_string(), value.to_string())], ..ContainerFilter::default() };
    filter.check_security().map_err(|e| e.to_string())
}

/// `--filter` pairs as the API's list request. The request holds one value
/// per key but labels, so a key given more than once is left out of it (the
/// caller applies [`EventFilter`], which ORs such values, to the answer);
/// labels are all kept (ANDed, as docker does).
pub fn list_request(filters: &[(String, String)]) -> pb::ListRequest {
    let once = |key: &str| filters.iter().filter(|(k, _)| k == key).count() == 1;
    let kept: Vec<&(String, String)> = filters.iter().filter(|(k, _)| k == "label" || once(k)).collect();
    let mut request = pb::ListRequest::default();
    for (key, value) in kept {
        let value = value.clone();
        match key.as_str() {
            "name" => request.name = value,
            "image" => request.image = value,
            "runtime" => request.runtime = value,
            "pod" => request.pod_name = value,
            "namespace" => request.pod_namespace = value,
            "label" => request.labels.push(value),
            k if SECURITY_KEYS.contains(&k) => request.security.push(format!("{k}={value}")),
            _ => {}
        }
    }
    request
}

/// `watch --filter`: which events to print.
#[derive(Debug, Default)]
pub struct EventFilter {
    /// Per container key given (per label: each is required), the filters of which one must match.
    groups: Vec<(String, Vec<ContainerFilter>)>,
    /// The event kinds wanted (empty: all).
    kinds: Vec<EventKind>,
}

impl EventFilter {
    /// The filter for `--filter` pairs (already checked by the parser).
    pub fn new(filters: &[(String, String)]) -> Result<EventFilter> {
        let mut filter = EventFilter::default();
        for (key, value) in filters {
            if key == "event" {
                filter.kinds.push(event_kind(value).map_err(anyhow::Error::msg)?);
                continue;
            }
            let mut one =
                filter_from_request(&list_request(&[(key.clone(), value.clone())])).map_err(remote::status_error)?;
            // Removals carry the container as it was: they match like the rest.
            one.include_removed = true;
            // Each label is a group of its own: all are required, as docker's.
            let group = if key == "label" { format!("label={value}") } else { key.clone() };
            match filter.groups.iter_mut().find(|(k, _)| *k == group) {
                Some((_, group)) => group.push(one),
                None => filter.groups.push((group, vec![one])),
            }
        }
        Ok(filter)
    }

    /// True when `event` passes.
    pub fn matches(&self, event: &ContainerEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind)) && self.matches_container(&event.container)
    }

    /// True when `container` passes the container keys (`event=` aside).
    pub fn matches_container(&self, container: &Container) -> bool {
        self.groups.iter().all(|(_, group)| group.iter().any(|f| f.matches(container)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use ctwatch::Runtime;

    use super::*;

    fn event(kind: EventKind, name: &str, runtime: Runtime) -> ContainerEvent {
        let mut c = Container::new("a".repeat(64), runtime);
        c.name = name.to_string();
        c.labels.insert("tier".into(), "web".into());
        ContainerEvent {
            time: SystemTime::now(),
            kind,
            cgroup_id: 1,
            container: Arc::new(c),
            kernel_time: None,
            enriched: None,
            seq: 0,
            late: false,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn same_key_ors_and_different_keys_and() {
        let f = EventFilter::new(&pairs(&[("name", "web"), ("name", "db"), ("runtime", "docker")])).unwrap();
        assert!(f.matches(&event(EventKind::ContainerCreate, "shop-web-1", Runtime::Docker)));
        assert!(f.matches(&event(EventKind::ContainerCreate, "db", Runtime::Docker)));
        assert!(!f.matches(&event(EventKind::ContainerCreate, "db", Runtime::Podman)));
        assert!(!f.matches(&event(EventKind::ContainerCreate, "cache", Runtime::Docker)));
    }

    #[test]
    fn security_keys_go_to_the_request_and_match_the_profile() {
        let f = pairs(&[("cap", "SYS_ADMIN"), ("host_ns", "pid"), ("host_ns", "ipc")]);
        assert_eq!(list_request(&f).security, ["cap=SYS_ADMIN"], "a repeated key is ORed by the filter, not sent");
        let filter = EventFilter::new(&f).unwrap();
        let mut e = event(EventKind::ContainerCreate, "x", Runtime::Docker);
        assert!(!filter.matches(&e), "no profile: no match");
        let config = br#"{"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},
            "linux":{"namespaces":[{"type":"mount"},{"type":"pid"},{"type":"network"}]}}"#;
        let mut c = (*e.container).clone();
        c.security = Some(Arc::new(ctwatch::SecurityProfile::from_config_bytes(config).unwrap()));
        e.container = Arc::new(c.clone());
        assert!(filter.matches(&e), "cap and host_ns=ipc");
        assert!(!EventFilter::new(&pairs(&[("privileged", "true")])).unwrap().matches(&e));
        assert!(check_security("privileged", "maybe").unwrap_err().contains("true or false"));
        assert!(crate::cli::parse_filter("colour=red").unwrap_err().contains("host_ns"));
        assert!(crate::cli::parse_filter("privileged=maybe").is_err());
    }

    #[test]
    fn events_by_kind_with_or_without_prefix() {
        let both = EventFilter::new(&pairs(&[("label", "tier=web"), ("label", "team")])).unwrap();
        assert!(!both.matches(&event(EventKind::ContainerCreate, "x", Runtime::Docker)), "labels are ANDed");
        let f = EventFilter::new(&pairs(&[("event", "container_remove"), ("label", "tier=web")])).unwrap();
        assert!(f.matches(&event(EventKind::ContainerRemove, "x", Runtime::Docker)));
        assert!(!f.matches(&event(EventKind::ContainerCreate, "x", Runtime::Docker)));
        assert_eq!(event_kind("create"), Ok(EventKind::ContainerCreate));
        assert!(event_kind("start").unwrap_err().contains("container_create"));
        // ls: a repeated key is left to the client; labels are ANDed in the request as in the filter.
        let request = list_request(&pairs(&[("name", "a"), ("name", "b"), ("runtime", "docker"), ("label", "x")]));
        assert_eq!((request.name.as_str(), request.runtime.as_str()), ("", "docker"));
        assert_eq!(request.labels, ["x"]);
        let none = EventFilter::new(&[]).unwrap();
        assert!(none.matches(&event(EventKind::ExistingContainer, "", Runtime::Unknown)));
    }
}
