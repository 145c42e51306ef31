//! The admission policy: rules on image, digest, runtime, pod namespace and
//! annotations, checked before a container starts.
//!
//! ```toml
//! mode = "enforce"            # or "audit" (report only)
//!
//! [[deny]]
//! name = "only-our-registry"
//! reason = "images must come from registry.example.com"
//! image_not = ["registry.example.com/*"]
//! pod_namespace = ["prod", "prod-*"]
//!
//! [[deny]]
//! name = "no-privileged-annotation"
//! annotations = { "io.podman.annotations.privileged" = "TRUE" }
//! ```
//!
//! A rule matches when every condition it has matches; a condition with a
//! list matches when any pattern does (`*` any run of characters, `?` one).
//! `*_not` conditions match when no pattern does. An image that could not be
//! identified is the empty string, so `image_not` rules deny it. The first
//! matching rule decides.
//!
//! `profile = "baseline"` or `"restricted"` applies the Kubernetes Pod
//! Security Standards to every runtime's containers (see
//! [`ctwatch_security::pss`] for each check and what a node can decide),
//! after the deny rules, with exemptions:
//!
//! ```toml
//! mode = "enforce"
//! profile = "restricted"
//! [scope]                     # optional: the profile applies only to containers matching all of these
//! image = ["registry.example.com/*"]   # (the conditions of a deny rule)
//! [exempt]                    # any one match exempts a container from the profile
//! pod_namespace = ["kube-system"]
//! labels = { "app" = "node-agent" }
//! image = ["registry.example.com/agent:*"]
//! runtime = ["podman"]
//! ```
//!
//! A container failing checks gets a verdict whose `rule` is the first failed
//! check's upstream name (`Privileged Containers`) and whose `reason` lists
//! every failed check with its field and value (`pod security baseline:
//! Privileged Containers: privileged = true; Capabilities: capabilities_added = CAP_SYS_ADMIN`).
//!
//! In enforce mode a container whose OCI config could not be checked
//! (unreadable, larger than the cap, not valid JSON) is a violation of the
//! built-in rule `unverifiable` and is refused, unless the policy says
//! `on_unverifiable = "allow"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ctwatch::hook::PolicyVerdict;
use ctwatch::Container;
pub use ctwatch_security::glob_match;
use ctwatch_security::{Exemptions, Level, Outcome, PssPolicy, SecurityProfile};
use serde::Deserialize;
use thiserror::Error;

/// What happens to a container that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// A `container_policy_violation` event; the container runs.
    #[default]
    Audit,
    /// The runtime's exec is refused (`FAN_DENY`); the container never starts.
    Enforce,
}

impl PolicyMode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Audit => "audit",
            PolicyMode::Enforce => "enforce",
        }
    }
}

/// What enforce mode does with a container it could not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnverifiable {
    /// Refuse it (the default).
    #[default]
    Deny,
    /// Let it run (the violation is still reported).
    Allow,
}

/// The name of the built-in rule a container breaks when it cannot be checked.
pub const UNVERIFIABLE_RULE: &str = "unverifiable";

/// One deny rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Its name (reported; `rule-<n>` when absent).
    pub name: String,
    /// Why, in words (reported; made from the conditions when absent).
    pub reason: String,
    /// The image (as the user named it) matches one of these.
    pub image: Vec<String>,
    /// The image matches none of these.
    pub image_not: Vec<String>,
    /// The digest matches one of these.
    pub digest: Vec<String>,
    /// The digest matches none of these.
    pub digest_not: Vec<String>,
    /// The runtime (`docker`, `containerd`, `podman`, `crio`, `runc`) is one of these.
    pub runtime: Vec<String>,
    /// The pod namespace matches one of these (containers outside pods have "").
    pub pod_namespace: Vec<String>,
    /// The pod namespace matches none of these.
    pub pod_namespace_not: Vec<String>,
    /// Each listed annotation is present and matches its pattern.
    pub annotations: BTreeMap<String, String>,
}

/// A loaded policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Audit or enforce.
    #[serde(default)]
    pub mode: PolicyMode,
    /// What enforce mode does with a container whose config could not be checked.
    #[serde(default)]
    pub on_unverifiable: OnUnverifiable,
    /// The deny rules, in order.
    #[serde(default)]
    pub deny: Vec<Rule>,
    /// The Pod Security Standards level applied after the deny rules (`None`: none).
    #[serde(default)]
    pub profile: Option<Level>,
    /// Who the profile does not apply to.
    #[serde(default)]
    pub exempt: Exemptions,
    /// When present, the profile applies only to containers matching all its
    /// conditions (those of a deny rule; `name` and `reason` unused).
    #[serde(default)]
    pub scope: Option<Rule>,
}

/// Why a policy file could not be loaded.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// It could not be read.
    #[error("cannot read the policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML for a policy.
    #[error("the policy {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
}

/// What the policy checks a container against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The container (image, digest, runtime, pod).
    pub container: &'a Container,
    /// Its OCI annotations.
    pub annotations: &'a std::collections::HashMap<String, String>,
    /// What it may do (`None`: its config could not be read).
    pub security: Option<&'a SecurityProfile>,
}

impl Policy {
    /// Loads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.into(), source })?;
        Policy::parse(&text).map_err(|message| PolicyError::Invalid { path: path.into(), message })
    }

    /// Parses a policy from TOML text.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, rule) in policy.deny.iter_mut().enumerate() {
            if rule.name.is_empty() {
                rule.name = format!("rule-{}", i + 1);
            }
            if rule.conditions() == 0 {
                return Err(format!("deny rule {:?} has no condition (it would deny every container)", rule.name));
            }
            if let Some(r) = rule.runtime.iter().find(|r| ctwatch::Runtime::from_name(r).is_none()) {
                return Err(format!("deny rule {:?}: unknown runtime {r:?}", rule.name));
            }
        }
        if let Some(r) = policy.exempt.runtime.iter().find(|r| ctwatch::Runtime::from_name(r).is_none()) {
            return Err(format!("[exempt]: unknown runtime {r:?}"));
        }
        if policy.profile.is_none() && (!policy.exempt.is_empty() || policy.scope.is_some()) {
            return Err("[exempt] or [scope] without a profile (profile = \"baseline\" or \"restricted\")".to_string());
        }
        if let Some(scope) = &mut policy.scope {
            scope.name = "scope".into();
            if scope.conditions() == 0 {
                return Err("[scope] has no condition (leave it out to check every container)".to_string());
            }
        }
        Ok(policy)
    }

    /// The verdict for a container, or `None` when no rule matches and it
    /// passes the profile (or is exempt from it).
    pub fn check(&self, subject: Subject<'_>) -> Option<PolicyVerdict> {
        let verdict = |rule: String, reason: String| PolicyVerdict {
            mode: self.mode.as_str().to_string(),
            denied: self.mode == PolicyMode::Enforce,
            rule,
            reason,
        };
        if let Some(rule) = self.deny.iter().find(|rule| rule.matches(subject)) {
            let reason = if rule.reason.is_empty() { rule.describe(subject) } else { rule.reason.clone() };
            return Some(verdict(rule.name.clone(), reason));
        }
        let (level, profile) = (self.profile?, subject.security?);
        if self.scope.as_ref().is_some_and(|scope| !scope.matches(subject)) {
            return None;
        }
        let c = subject.container;
        let who = ctwatch_security::Subject {
            pod_namespace: &c.pod.namespace,
            labels: &c.labels,
            annotations: subject.annotations,
            image: &c.image,
            runtime: c.runtime.as_str(),
        };
        match (PssPolicy { level, exempt: self.exempt.clone() }).check(profile, who) {
            Outcome::Violations(v) => Some(verdict(v[0].check.clone(), ctwatch_security::policy::describe(level, &v))),
            Outcome::Exempt(why) => {
                tracing::debug!(container = %c.id, %why, "exempt from the pod security profile");
                None
            }
            _ => None,
        }
    }
}

impl Policy {
    /// The verdict for a container that could not be checked (`why`), or
    /// `None` in audit mode: enforce never passes what it could not check,
    /// except under `on_unverifiable = "allow"`.
    pub fn unverifiable(&self, why: &str) -> Option<PolicyVerdict> {
        if self.mode != PolicyMode::Enforce {
            return None;
        }
        let denied = self.on_unverifiable == OnUnverifiable::Deny;
        Some(PolicyVerdict {
            mode: self.mode.as_str().to_string(),
            denied,
            rule: UNVERIFIABLE_RULE.to_string(),
            reason: format!(
                "unverifiable: {why}{}",
                if denied { "" } else { " (allowed by on_unverifiable = \"allow\")" }
            ),
        })
    }
}

impl Rule {
    /// How many conditions it has.
    fn conditions(&self) -> usize {
        self.image.len()
            + self.image_not.len()
            + self.digest.len()
            + self.digest_not.len()
            + self.runtime.len()
            + self.pod_namespace.len()
            + self.pod_namespace_not.len()
            + self.annotations.len()
    }

    fn matches(&self, s: Subject<'_>) -> bool {
        let c = s.container;
        let any = |patterns: &[String], value: &str| patterns.iter().any(|p| glob_match(p, value));
        (self.image.is_empty() || any(&self.image, &c.image))
            && (self.image_not.is_empty() || !any(&self.image_not, &c.image))
            && (self.digest.is_empty() || any(&self.digest, &c.image_digest))
            && (self.digest_not.is_empty() || !any(&self.digest_not, &c.image_digest))
            && (self.runtime.is_empty() || self.runtime.iter().any(|r| r.eq_ignore_ascii_case(c.runtime.as_str())))
            && (self.pod_namespace.is_empty() || any(&self.pod_namespace, &c.pod.namespace))
            && (self.pod_namespace_not.is_empty() || !any(&self.pod_namespace_not, &c.pod.namespace))
            && self.annotations.iter().all(|(k, p)| s.annotations.get(k).is_some_and(|v| glob_match(p, v)))
    }

    /// A reason made from what matched, for rules without one.
    fn describe(&self, s: Subject<'_>) -> String {
        let c = s.container;
        let mut parts = Vec::new();
        if !self.image.is_empty() || !self.image_not.is_empty() {
            parts.push(format!("image {:?}", c.image));
        }
        if !self.digest.is_empty() || !self.digest_not.is_empty() {
            parts.push(format!("digest {:?}", c.image_digest));
        }
        if !self.runtime.is_empty() {
            parts.push(format!("runtime {}", c.runtime.as_str()));
        }
        if !self.pod_namespace.is_empty() || !self.pod_namespace_not.is_empty() {
            parts.push(format!("pod namespace {:?}", c.pod.namespace));
        }
        for k in self.annotations.keys() {
            parts.push(format!("annotation {k}={:?}", s.annotations.get(k).map_or("", String::as_str)));
        }
        format!("denied by rule {:?}: {}", self.name, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwatch::{PodInfo, Runtime};
    use std::collections::HashMap;

    fn container(image: &str, ns: &str) -> Container {
        Container {
            image: image.into(),
            image_digest: "sha256:aa".into(),
            pod: PodInfo { namespace: ns.into(), ..PodInfo::default() },
            ..Container::new("x", Runtime::Docker)
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("registry.example.com/*", "registry.example.com/a/b:1"));
        assert!(!glob_match("registry.example.com/*", "evil.com/registry.example.com/a"));
        assert!(glob_match("*:latest", "nginx:latest"));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(glob_match("*", "") && !glob_match("?", ""));
        assert!(glob_match("*a*b*", "xxaxxbxx") && !glob_match("*a*b", "xxbxxa"));
    }

    #[test]
    fn first_matching_rule_decides_and_enforce_denies() {
        let policy = Policy::parse(
            r#"
            mode = "enforce"
            [[deny]]
            name = "registry"
            image_not = ["registry.example.com/*"]
            pod_namespace = ["prod"]
            [[deny]]
            image = ["*:latest"]
            reason = "no latest"
            [[deny]]
            annotations = { "risk" = "high*" }
            "#,
        )
        .unwrap();
        let none = HashMap::new();
        let check = |c: &Container, a| policy.check(Subject { container: c, annotations: a, security: None });
        let v = check(&container("docker.io/x:1", "prod"), &none).unwrap();
        assert_eq!((v.rule.as_str(), v.denied, v.mode.as_str()), ("registry", true, "enforce"));
        assert!(v.reason.contains("docker.io/x:1"), "{}", v.reason);
        assert!(check(&container("registry.example.com/x:1", "prod"), &none).is_none());
        assert!(check(&container("docker.io/x:1", "dev"), &none).is_none());
        assert_eq!(check(&container("x:latest", ""), &none).unwrap().reason, "no latest");
        let risky = HashMap::from([("risk".to_string(), "higher".to_string())]);
        assert_eq!(check(&container("x:1", ""), &risky).unwrap().rule, "rule-3");
        assert_eq!(check(&container("", "prod"), &none).unwrap().rule, "registry", "unknown image is denied");
    }

    #[test]
    fn enforce_denies_what_it_cannot_check_unless_told_to_allow() {
        let enforce = Policy::parse("mode = \"enforce\"").unwrap();
        let v = enforce.unverifiable("config.json is too large").unwrap();
        assert!(v.denied && v.rule == UNVERIFIABLE_RULE && v.reason.contains("too large"), "{v:?}");
        let allow = Policy::parse("mode = \"enforce\"\non_unverifiable = \"allow\"").unwrap();
        assert!(!allow.unverifiable("x").unwrap().denied);
        assert!(Policy::parse("").unwrap().unverifiable("x").is_none(), "audit mode");
        assert!(Policy::parse("on_unverifiable = \"maybe\"").is_err());
    }

    #[test]
    fn pod_security_profile_after_the_rules_with_exemptions() {
        let policy = Policy::parse(
            r#"
            mode = "enforce"
            profile = "baseline"
            [[deny]]
            name = "no-latest"
            image = ["*:latest"]
            [exempt]
            pod_namespace = ["kube-system"]
            runtime = ["podman"]
            "#,
        )
        .unwrap();
        let host_pid = ctwatch_security::SecurityProfile::from_config_bytes(
            br#"{"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO"},
                "maskedPaths":["/proc/kcore"],"namespaces":[{"type":"mount"},{"type":"network"},{"type":"ipc"}]}}"#,
        )
        .unwrap();
        let none = HashMap::new();
        let check = |c: &Container, p| policy.check(Subject { container: c, annotations: &none, security: p });
        let v = check(&container("x:1", ""), Some(&host_pid)).unwrap();
        assert_eq!((v.rule.as_str(), v.denied), ("Host Namespaces", true));
        assert_eq!(
            v.reason,
            "pod security baseline: Host Namespaces: host_namespaces = pid; Capabilities: capabilities_added = CAP_SYS_ADMIN"
        );
        assert_eq!(check(&container("x:latest", ""), Some(&host_pid)).unwrap().rule, "no-latest", "rules first");
        assert!(check(&container("x:1", "kube-system"), Some(&host_pid)).is_none(), "exempt namespace");
        let podman = Container { runtime: Runtime::Podman, ..container("x:1", "") };
        assert!(check(&podman, Some(&host_pid)).is_none(), "exempt runtime");
        assert!(check(&container("x:1", ""), None).is_none(), "no config: the unverifiable rule's business");
        let scoped = Policy::parse("profile = \"baseline\"\n[scope]\nimage = [\"mine/*\"]").unwrap();
        let check =
            |c: &Container| scoped.check(Subject { container: c, annotations: &none, security: Some(&host_pid) });
        assert_eq!(check(&container("mine/x:1", "")).unwrap().rule, "Host Namespaces");
        assert!(check(&container("other/x:1", "")).is_none(), "out of scope");
        for (text, expect) in [
            ("profile = \"strict\"", "unknown variant"),
            ("[exempt]\npod_namespace = [\"a\"]", "without a profile"),
            ("profile = \"baseline\"\n[scope]\n", "no condition"),
            ("profile = \"baseline\"\n[exempt]\nruntime = [\"rocket\"]", "unknown runtime"),
            ("profile = \"baseline\"\n[exempt]\nnamespaces = [\"a\"]", "unknown field"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn bad_policies_are_clear_errors() {
        for (text, expect) in [
            ("mode = \"block\"", "unknown variant"),
            ("[[deny]]\nname = \"x\"", "no condition"),
            ("[[deny]]\nimagee = [\"x\"]", "unknown field"),
            ("[[deny]]\nruntime = [\"rocket\"]", "unknown runtime"),
            ("[[deny]\n", "expected"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
        assert!(Policy::parse("").unwrap().deny.is_empty());
    }
}
