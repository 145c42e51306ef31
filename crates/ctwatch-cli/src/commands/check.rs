//! `ctwatch check CONFIG.json [--policy FILE]`: what the hook would say of a
//! bundle's config, offline (for CI pipelines and for writing policies).
//!
//! The config is read by the hook's own reader (same caps), the container is
//! identified by the hook's own code (annotations, the bundle path, the
//! runtimes' records on disk, containerd's API), and the policy's `check` is
//! the hook's: the verdict is the one the hook would give.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ctwatch::hook::PolicyVerdict;
use ctwatch::Runtime;
use ctwatch_hook::bundle::read_config;
use ctwatch_hook::identity::{identify, IdentitySources};
use ctwatch_hook::invocation::CreateCall;
use ctwatch_hook::policy::Subject;
use ctwatch_hook::Policy;
use ctwatch_security::pss::{evaluate, Level};
use serde_json::json;

use crate::cli::CheckArgs;

/// The container breaks the policy: exit status 1.
#[derive(Debug)]
pub struct Violates(pub String);

impl std::fmt::Display for Violates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violates {}

/// The container ID a runtime's bundle path implies: the bundle directory's
/// name (Podman's bundle is `<id>/userdata`).
fn id_from_path(config: &Path) -> String {
    let dir = config.parent();
    let name = |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    match name(dir) {
        Some(n) if n == "userdata" => name(dir.and_then(Path::parent)).unwrap_or_default(),
        Some(n) => n,
        None => String::new(),
    }
}

/// Runs `ctwatch check`.
pub fn run(args: &CheckArgs) -> Result<()> {
    let policy = args.policy.as_deref().map(Policy::load).transpose()?;
    let config = read_config(&args.config);
    let id = args.id.clone().unwrap_or_else(|| id_from_path(&args.config));
    let bundle = match &args.bundle {
        Some(b) => b.display().to_string(),
        None => args.config.parent().map(|p| p.display().to_string()).unwrap_or_default(),
    };
    let call = CreateCall { command: "create".into(), id, bundle: Some(bundle.clone()), ..CreateCall::default() };
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
    let mut container = identify(&call, &bundle, config.as_ref().ok(), &IdentitySources::default(), tokio.as_ref());
    if let Some(name) = &args.runtime {
        container.runtime = Runtime::from_name(name).with_context(|| format!("unknown runtime {name:?}"))?;
    }
    if let Some(image) = &args.image {
        container.image = image.clone();
    }
    if let Some(ns) = &args.pod_namespace {
        container.pod.namespace = ns.clone();
    }
    for label in &args.labels {
        let Some((k, v)) = label.split_once('=') else { bail!("--label {label:?} is not KEY=VALUE") };
        container.labels.insert(k.to_string(), v.to_string());
    }
    let who = json!({
        "id": container.id, "runtime": container.runtime.as_str(), "image": container.image,
        "pod_namespace": container.pod.namespace, "labels": container.labels,
    });
    let (output, verdict): (serde_json::Value, Option<PolicyVerdict>) = match &config {
        Ok(c) => {
            let verdict = policy.as_ref().and_then(|p| {
                p.check(Subject { container: &container, annotations: &c.annotations, security: Some(&c.security) })
            });
            let p = &c.security;
            let out = json!({
                "config": args.config.display().to_string(),
                "container": who,
                "security": p,
                "privilege_class": p.privilege_class().as_str(),
                "pss": {
                    "baseline": evaluate(p, Level::Baseline),
                    "restricted": evaluate(p, Level::Restricted),
                },
                "verdict": verdict,
            });
            (out, verdict)
        }
        Err(e) => {
            // As the hook: enforce never passes what it could not check.
            let why = e.to_string();
            let verdict = policy.as_ref().and_then(|p| p.unverifiable(&why));
            if verdict.is_none() {
                return Err(anyhow::Error::new(std::io::Error::other(why)));
            }
            let out = json!({
                "config": args.config.display().to_string(), "container": who, "oci_error": why, "verdict": verdict,
            });
            (out, verdict)
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&output)?);
    match verdict {
        Some(v) => Err(Violates(format!(
            "{} by rule {:?}: {}",
            if v.denied { "denied" } else { "violation (audit)" },
            v.rule,
            v.reason
        ))
        .into()),
        None => Ok(()),
    }
}
