//! Policy evaluation time per config: what the hook adds to each create with
//! `profile = "restricted"` (derive the profile, check exemptions, evaluate)
//! against no policy (the config is parsed either way), in the same run, on
//! configs Docker, containerd (`ctr --seccomp`) and Podman wrote.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ctwatch_security::{Config, Exemptions, Level, PssPolicy, SecurityProfile, Subject};

const CONFIGS: [(&str, &[u8]); 3] = [
    ("docker", include_bytes!("../tests/fixtures/docker-default.json")),
    ("ctr", include_bytes!("../tests/fixtures/ctr-seccomp.json")),
    ("podman", include_bytes!("../tests/fixtures/podman-default.json")),
];

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
