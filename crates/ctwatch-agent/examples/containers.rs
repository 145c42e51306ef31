//! The containers data source from Rust: start an agent in this process,
//! print what runs now, then every event with the container's record, the
//! way a detection rule would look containers up. Run as root:
//!
//! ```sh
//! sudo cargo run -p ctwatch-agent --example containers
//! ```

use ctwatch_agent::{Agent, AgentConfig, ContainerFilter, LookupKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agent = Agent::start(AgentConfig::for_host()?)?;
    let containers = agent.data_source();

    // Current state, then events: nothing is missed between the two.
    let mut events = containers.subscribe();
    containers.wait_scanned(std::time::Duration::from_secs(30));
    for c in containers.list(&ContainerFilter::default()) {
        println!("running  {} {:<10} {:<20} pid={:?}", &c.container_id[..12], c.runtime, c.container_name, c.init_pid);
    }
    while let Some(event) = events.blocking_next()? {
        let id = &event.container.id;
        // A rule would look a container up by what its event carries: the
        // cgroup ID (from bpf_get_current_cgroup_id), a PID, or the ID.
        let record = containers.lookup(&LookupKey::CgroupId(event.cgroup_id)).or_else(|_| containers.get(id));
        match record {
            Ok(r) => println!(
                "{:<18} {} image={:?} pod={:?}",
                event.kind.as_str(),
                &id[..12.min(id.len())],
                r.container_image,
                r.k8s_pod_name
            ),
            Err(e) => println!("{:<18} {} ({e})", event.kind.as_str(), id),
        }
    }
    agent.stop();
    agent.join()?;
    Ok(())
}
