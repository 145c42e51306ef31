//! Policy evaluation time per config: what the hook adds to each create with
//! `profile = "restricted"` (derive the profile, check exemptions, evaluate)
//! against no policy (the config is parsed either way), in the same run, on
//! configs Docker, containerd (`ctr --seccomp`) and Podman wrote. Also the
//! hook's parse before this crate (`before_summary_only`), for the cost of
//! reading the profile's fields in the same parse.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ctwatch_security::{Config, Exemptions, Level, PssPolicy, SecurityProfile, Subject};

const CONFIGS: [(&str, &[u8]); 3] = [
    ("docker", include_bytes!("../tests/fixtures/docker-default.json")),
    ("ctr", include_bytes!("../tests/fixtures/ctr-seccomp.json")),
    ("podman", include_bytes!("../tests/fixtures/podman-default.json")),
];

/// The hook's parse before this crate (its summary's fields only, the rest
/// skipped): what one parse for summary and profile costs over it.
mod before {
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Default, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    pub struct Spec {
        oci_version: String,
        process: Process,
        hostname: String,
        root: Root,
        mounts: Vec<IgnoredAny>,
        linux: Linux,
        annotations: HashMap<String, String>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Process {
        args: Vec<String>,
        cwd: String,
        user: User,
        capabilities: Capabilities,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct User {
        uid: u32,
        gid: u32,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Capabilities {
        bounding: Vec<String>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Root {
        path: String,
        readonly: bool,
    }
    #[derive(Default, Deserialize)]
    #[serde(default, rename_all = "camelCase")]
    struct Linux {
        cgroups_path: String,
        namespaces: Vec<Namespace>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Namespace {
        #[serde(rename = "type")]
        kind: String,
        path: String,
    }

    /// As the hook did: a stream through a 64 KiB buffer.
    pub fn parse(bytes: &[u8]) -> Spec {
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 * 1024, bytes));
        Spec::deserialize(&mut de).unwrap()
    }
}

fn bench(c: &mut Criterion) {
    let policy = PssPolicy {
        level: Level::Restricted,
        exempt: Exemptions { pod_namespace: vec!["kube-system".into()], ..Exemptions::default() },
    };
    let (labels, annotations) = (BTreeMap::new(), HashMap::new());
    let subject = Subject {
        pod_namespace: "",
        labels: &labels,
        annotations: &annotations,
        image: "local/busybox:1",
        runtime: "docker",
    };
    for (name, bytes) in CONFIGS {
        let mut group = c.benchmark_group(name);
        group.bench_function("before_summary_only", |b| b.iter(|| black_box(before::parse(black_box(bytes)))));
        // No policy: the hook parses the config for its summary anyway.
        group.bench_function("no_policy", |b| b.iter(|| black_box(Config::from_slice(black_box(bytes)).unwrap())));
        group.bench_function("restricted", |b| {
            b.iter(|| {
                let config = Config::from_slice(black_box(bytes)).unwrap();
                let profile = SecurityProfile::from_config(&config);
                black_box(policy.check(&profile, subject))
            })
        });
        let config = Config::from_slice(bytes).unwrap();
        group.bench_function("restricted_added_only", |b| {
            b.iter(|| black_box(policy.check(&SecurityProfile::from_config(black_box(&config)), subject)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
