//! A Pod Security Standards policy for a node: a level and its exemptions,
//! as a `--policy` file says them:
//!
//! ```toml
//! profile = "restricted"        # or "baseline" ("privileged": nothing checked)
//!
//! [exempt]                      # any one match exempts a container
//! pod_namespace = ["kube-system", "monitoring-*"]
//! labels = { "security.example.com/exempt" = "true" }
//! image = ["registry.example.com/node-agent:*"]
//! runtime = ["podman"]
//! ```
//!
//! Exemptions work as upstream's (namespaces, runtime classes, users): a
//! container matching any of them is not checked at all. Patterns take `*`
//! (any run of characters) and `?` (one). `labels` are matched against the
//! container's labels, then its OCI annotations (all a CRI container's
//! config carries of its pod).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::profile::SecurityProfile;
use crate::pss::{evaluate, Level, Violation};

/// Who is exempted from the profile. Empty: nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exemptions {
    /// Pod namespaces (patterns). Containers outside pods have "" (never matched by a non-empty pattern).
    pub pod_namespace: Vec<String>,
    /// Labels: key = value pattern.
    pub labels: BTreeMap<String, String>,
    /// Images as the user named them (patterns).
    pub image: Vec<String>,
    /// Runtimes: docker, containerd, podman, crio, runc.
    pub runtime: Vec<String>,
}

/// What exemptions and checks are evaluated against, besides the profile.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The pod namespace ("" outside pods).
    pub pod_namespace: &'a str,
    /// The container's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its OCI annotations.
    pub annotations: &'a HashMap<String, String>,
    /// Its image as named ("" unknown).
    pub image: &'a str,
    /// Its runtime's name.
    pub runtime: &'a str,
}

/// A node's Pod Security Standards policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PssPolicy {
    /// The level enforced.
    pub level: Level,
    /// Who is not checked.
    pub exempt: Exemptions,
}

/// What the policy says of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passes every decidable check.
    Allowed,
    /// An exemption matched (which one, in words).
    Exempt(String),
    /// It fails these checks (never empty).
    Violations(Vec<Violation>),
}

impl Exemptions {
    /// Whether nothing is exempted.
    pub fn is_empty(&self) -> bool {
        self.pod_namespace.is_empty() && self.labels.is_empty() && self.image.is_empty() && self.runtime.is_empty()
    }

    /// The exemption `s` matches, in words, if any.
    pub fn matching(&self, s: Subject<'_>) -> Option<String> {
        let any = |patterns: &[String], value: &str| patterns.iter().find(|p| glob_match(p, value)).cloned();
        if !s.pod_namespace.is_empty() {
            if let Some(p) = any(&self.pod_namespace, s.pod_namespace) {
                return Some(format!("pod namespace {:?} matches {p:?}", s.pod_namespace));
            }
        }
        for (key, pattern) in &self.labels {
            let value = s.labels.get(key).or_else(|| s.annotations.get(key));
            if let Some(v) = value.filter(|v| glob_match(pattern, v)) {
                return Some(format!("label {key}={v:?} matches {pattern:?}"));
            }
        }
        if !s.image.is_empty() {
            if let Some(p) = any(&self.image, s.image) {
                return Some(format!("image {:?} matches {p:?}", s.image));
            }
        }
        self.runtime.iter().find(|r| r.eq_ignore_ascii_case(s.runtime)).map(|r| format!("runtime {r}"))
    }
}

impl PssPolicy {
    /// The outcome for a container.
    pub fn check(&self, profile: &SecurityProfile, subject: Subject<'_>) -> Outcome {
        if let Some(why) = self.exempt.matching(subject) {
            return Outcome::Exempt(why);
        }
        let violations = evaluate(profile, self.level);
        if violations.is_empty() {
            Outcome::Allowed
        } else {
            Outcome::Violations(violations)
        }
    }
}

/// The reason line of a verdict: `pod security restricted: Check: field = value; ...`.
pub fn describe(level: Level, violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(Violation::to_string).collect();
    format!("pod security {}: {}", level.as_str(), parts.join("; "))
}

/// Shell-style matching: `*` any run of characters (including `/`), `?` one character.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
