//! Process events of containers from the kernel (`process_events.bpf.c`):
//! the first exec in each container (or every exec), the exits of thread
//! group leaders with their exit code, and OOM kills, for tasks whose cgroup
//! (in the default, unified hierarchy) is a key of ctwatch's pinned map of
//! container cgroups.
//!
//! The programs open the pinned map by name: [`ProcessEventSource::load`]
//! needs the map pinned first (by [`crate::ContainersMap::open`]), and sees
//! the containers that map holds.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use nix::time::{clock_gettime, ClockId};
use tracing::debug;

use crate::abi::parse_process_record;
pub use crate::abi::{exit_signal, exit_status, ProcessEvent};
use crate::loader::{kernel_btf, load_and_attach, preflight, refused, EbpfUnavailable, PROCESS_EVENTS_OBJECT};
use crate::pinned_map::MAP_NAME;

/// The default ring buffer: 1 MiB, about 1900 records.
pub const DEFAULT_PROCESS_RING_BYTES: u32 = 1 << 20;

/// How the process events are set up.
#[derive(Debug, Clone)]
pub struct ProcessEventsConfig {
    /// Where ctwatch's map of container cgroups is pinned.
    pub pin_dir: PathBuf,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Report every exec in a container cgroup, not only each container's first.
    pub every_exec: bool,
}

impl Default for ProcessEventsConfig {
    fn default() -> Self {
        ProcessEventsConfig {
            pin_dir: PathBuf::from(crate::pinned_map::DEFAULT_PIN_DIR),
            ring_buffer_bytes: DEFAULT_PROCESS_RING_BYTES,
            every_exec: false,
        }
    }
}

/// The loaded and attached process event programs.
pub struct ProcessEventSource {
    /// Keeps the programs attached (behind a lock only so the source is `Sync`).
    _ebpf: Mutex<Ebpf>,
    ring: RingBuf<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to turn kernel times into wall times.
    wall_offset_ns: i128,
}

impl ProcessEventSource {
    /// Loads the programs with the map pinned under `config.pin_dir` and attaches them.
    pub fn load(config: &ProcessEventsConfig) -> Result<Self, EbpfUnavailable> {
        preflight()?;
        let pinned = config.pin_dir.join(MAP_NAME);
        if !pinned.exists() {
            return Err(EbpfUnavailable::Refused(format!(
                "no map of container cgroups pinned at {} (process events need it)",
                pinned.display()
            )));
        }
        let every_exec = u8::from(config.every_exec);
        let btf = kernel_btf()?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .map_pin_path(&config.pin_dir)
            .set_global("every_exec", &every_exec, true)
            .set_max_entries("process_events", config.ring_buffer_bytes);
        let mut ebpf = load_and_attach(
            &mut loader,
            &btf,
            PROCESS_EVENTS_OBJECT,
            &[
                ("ctwatch_process_exec", "sched_process_exec"),
                ("ctwatch_process_exit", "sched_process_exit"),
                ("ctwatch_oom_kill", "mark_victim"),
            ],
        )?;
        let missing = |name: &str| EbpfUnavailable::Refused(format!("map {name} missing from the object"));
        let ring = RingBuf::try_from(ebpf.take_map("process_events").ok_or_else(|| missing("process_events"))?)
            .map_err(|e| refused("process ring buffer", &e))?;
        let dropped =
            PerCpuArray::try_from(ebpf.take_map("process_dropped").ok_or_else(|| missing("process_dropped"))?)
                .map_err(|e| refused("process drop counter", &e))?;
        Ok(ProcessEventSource { _ebpf: Mutex::new(ebpf), ring, dropped, wall_offset_ns: wall_offset_ns() })
    }

    /// Waits up to `timeout` for records, then returns all that are ready
    /// (possibly none). Records that cannot be parsed are skipped.
    pub fn poll(&mut self, timeout: Duration) -> io::Result<Vec<ProcessEvent>> {
        let mut events = self.drain();
        if events.is_empty() && wait_readable(self.ring.as_raw_fd(), timeout)? {
            events = self.drain();
        }
        Ok(events)
    }

    fn drain(&mut self) -> Vec<ProcessEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            match parse_process_record(&item) {
                Ok(e) => events.push(e),
                Err(e) => debug!(%e, "bad process record"),
            }
        }
        events
    }

    /// Records the kernel could not put in the ring buffer since loading.
    pub fn dropped(&self) -> u64 {
        self.dropped.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// The wall-clock time of a kernel time (`bpf_ktime_get_ns()`).
    pub fn wall_time(&self, ktime_ns: u64) -> SystemTime {
        let wall = (ktime_ns as i128 + self.wall_offset_ns).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(wall)
    }
}

fn wait_readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: the ring buffer owns this fd for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn wall_offset_ns() -> i128 {
    let ns = |id| clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0);
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}
