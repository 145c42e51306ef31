//! Counts exec()s per container for a few seconds, using the map that a
//! running `ctwatch watch` pins: how another tool's eBPF program tells
//! container processes apart.
//!
//! ```sh
//! ctwatch watch > /dev/null &          # pins /sys/fs/bpf/ctwatch/ctwatch_containers
//! cargo run -p ctwatch-ebpf --example count_container_execs -- 10
//! ```

use std::time::Duration;

use aya::maps::HashMap;
use aya::programs::BtfTracePoint;
use aya::{Btf, EbpfLoader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let btf = Btf::from_sys_fs()?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_pin_path("/sys/fs/bpf/ctwatch") // reuse ctwatch's pinned map
        .load(aya::include_bytes_aligned!("../bpf/count_container_execs.bpf.o"))?;
    let program: &mut BtfTracePoint = ebpf.program_mut("count_container_execs").ok_or("program missing")?.try_into()?;
    program.load("sched_process_exec", &btf)?;
    program.attach()?;
    std::thread::sleep(Duration::from_secs(seconds));
    let counts: HashMap<_, u64, u64> = HashMap::try_from(ebpf.map("execs_by_container").ok_or("map missing")?)?;
    for entry in counts.iter() {
        let (handle, execs) = entry?;
        println!("container handle {handle:#018x}: {execs} exec(s)");
    }
    Ok(())
}
