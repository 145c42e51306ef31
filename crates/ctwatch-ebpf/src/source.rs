//! The eBPF source: cgroup mkdir/rmdir from the kernel's tracepoints, through
//! a ring buffer, with lost records detected and repaired by a rescan.
//!
//! Order at start: the programs are attached first, then the tree is scanned
//! (`existing_container`), then the ring buffer is drained; the tracker drops
//! what both report, so nothing falls between the scan and the live events.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use crossbeam_channel::Sender;
use ctwatch::cgroupfs;
use ctwatch::sources::scan::scan;
use ctwatch::sources::{CgroupChange, CgroupEvent, Origin, SourceMessage};
use nix::time::{clock_gettime, ClockId};
use tracing::{debug, warn};

use crate::abi::{parse_record, CgroupRecord};
use crate::loader::{kernel_btf, load_and_attach, preflight, refused, EbpfUnavailable, CGROUP_EVENTS_OBJECT};

/// How the eBPF source is set up.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// The hierarchy the tracker follows (its ID from `/proc/self/cgroup`).
    pub tracked_hierarchy: u32,
    /// Another hierarchy whose changes are reported as mirror events (the
    /// unified one on a hybrid host), if any.
    pub mirror_hierarchy: Option<u32>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig { tracked_hierarchy: 0, mirror_hierarchy: None, ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES }
    }
}

/// The kernel wakes the reader at most once per this interval; records in
/// between are collected by polling on [`BUSY_POLL`] while events flow.
const WAKEUP_INTERVAL: Duration = Duration::from_micros(250);
/// Poll timeout while events flow: bounds the extra latency under churn.
const BUSY_POLL: Duration = Duration::from_micros(500);
/// Poll timeout when quiet (the kernel wakes the reader for the next record).
const IDLE_POLL: Duration = Duration::from_millis(200);

/// The default ring buffer: 4 MiB, about 30k typical records.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;

/// Counters the eBPF source keeps.
#[derive(Debug, Default)]
pub struct EbpfStats {
    /// Records the kernel could not put in the ring buffer.
    pub dropped: AtomicU64,
    /// Rescans made to repair losses.
    pub resyncs: AtomicU64,
    /// Records whose path exceeded PATH_MAX (skipped). Paths deeper than the
    /// kernel walk's 96 levels are found by cgroup ID and not counted here.
    pub truncated: AtomicU64,
    /// Records that could not be parsed.
    pub bad_records: AtomicU64,
}

/// The loaded and attached cgroup event programs.
pub struct EbpfSource {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    config: EbpfConfig,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to turn kernel times into wall times.
    wall_offset_ns: i128,
    stats: Arc<EbpfStats>,
}

impl EbpfSource {
    /// Checks the kernel, loads the programs and attaches them.
    pub fn load(config: EbpfConfig) -> Result<Self, EbpfUnavailable> {
        preflight()?;
        let tracked = config.tracked_hierarchy as i32;
        let mirror = config.mirror_hierarchy.map_or(-1, |h| h as i32);
        let wakeup_interval_ns = WAKEUP_INTERVAL.as_nanos() as u64;
        let btf = kernel_btf()?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .set_global("tracked_hierarchy", &tracked, true)
            .set_global("mirror_hierarchy", &mirror, true)
            .set_global("wakeup_interval_ns", &wakeup_interval_ns, true)
            .set_max_entries("events", config.ring_buffer_bytes);
        let mut ebpf = load_and_attach(
            &mut loader,
            &btf,
            CGROUP_EVENTS_OBJECT,
            &[("ctwatch_cgroup_mkdir", "cgroup_mkdir"), ("ctwatch_cgroup_rmdir", "cgroup_rmdir")],
        )?;
        let missing = |name: &str| EbpfUnavailable::Refused(format!("map {name} missing from the object"));
        let ring = RingBuf::try_from(ebpf.take_map("events").ok_or_else(|| missing("events"))?)
            .map_err(|e| refused("ring buffer", &e))?;
        let dropped = PerCpuArray::try_from(ebpf.take_map("dropped").ok_or_else(|| missing("dropped"))?)
            .map_err(|e| refused("drop counter", &e))?;
        Ok(EbpfSource { _ebpf: ebpf, ring, dropped, config, wall_offset_ns: wall_offset_ns(), stats: Arc::default() })
    }

    /// The source's counters, shared.
    pub fn stats(&self) -> Arc<EbpfStats> {
        self.stats.clone()
    }

    /// Scans what exists under `start` (sent as `Existing`), then forwards the
    /// kernel's reports until `stop` is set or the receiver is gone.
    pub fn run(
        mut self,
        mount_point: &Path,
        start: &Path,
        tx: Sender<SourceMessage>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<()> {
        let prefix = cgroupfs::relative_path(mount_point, start).unwrap_or_else(|| "/".into());
        let existing = scan(mount_point, start, Origin::Existing);
        if tx.send(SourceMessage::Events(existing)).is_err() || tx.send(SourceMessage::ScanComplete).is_err() {
            return Ok(());
        }
        let mut dropped_seen = self.read_dropped();
        let mut warned_truncated = false;
        let mut flowing = false;
        while !stop.load(Ordering::Relaxed) {
            wait_readable(self.ring.as_fd_borrowed(), if flowing { BUSY_POLL } else { IDLE_POLL })?;
            let mut records = Vec::new();
            while let Some(item) = self.ring.next() {
                match parse_record(&item) {
                    Ok(r) => records.push(r),
                    Err(e) => {
                        self.stats.bad_records.fetch_add(1, Ordering::Relaxed);
                        debug!(%e, "bad ring buffer record");
                    }
                }
            }
            let records_empty = records.is_empty();
            let mut tracked = Vec::new();
            let mut mirror = Vec::new();
            for mut record in records {
                if record.truncated {
                    if record.hierarchy_id != self.config.tracked_hierarchy {
                        continue; // mirror events are matched by path: none to match this deep
                    }
                    match record.change {
                        // The ID names the cgroup: the tracker finds what it knew by it.
                        CgroupChange::Rmdir => record.path = String::new(),
                        CgroupChange::Mkdir => match cgroupfs::path_of_cgroup_id(mount_point, record.cgroup_id) {
                            Ok(path) => record.path = path,
                            Err(e) => {
                                // Gone already (its rmdir follows and pairs by ID with
                                // nothing), or its path does not fit in PATH_MAX.
                                if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
                                    self.stats.truncated.fetch_add(1, Ordering::Relaxed);
                                    if !warned_truncated {
                                        warned_truncated = true;
                                        warn!(
                                            id = record.cgroup_id,
                                            "a cgroup path is longer than PATH_MAX: it cannot be opened by path and is skipped"
                                        );
                                    }
                                } else {
                                    debug!(id = record.cgroup_id, %e, "a deep cgroup vanished before its path was read");
                                }
                                continue;
                            }
                        },
                    }
                    if record.change == CgroupChange::Rmdir {
                        tracked.push(self.to_event(&record));
                        continue;
                    }
                }
                if record.hierarchy_id == self.config.tracked_hierarchy {
                    if is_under(&record.path, &prefix) {
                        tracked.push(self.to_event(&record));
                    }
                } else if Some(record.hierarchy_id) == self.config.mirror_hierarchy {
                    mirror.push(self.to_event(&record));
                }
            }
            flowing = !records_empty;
            if !tracked.is_empty() && tx.send(SourceMessage::Events(tracked)).is_err() {
                return Ok(());
            }
            if !mirror.is_empty() && tx.send(SourceMessage::Mirror(mirror)).is_err() {
                return Ok(());
            }
            let dropped_now = self.read_dropped();
            if dropped_now > dropped_seen {
                let lost = dropped_now - dropped_seen;
                dropped_seen = dropped_now;
                self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                warn!(lost, "the eBPF ring buffer overflowed: rescanning the cgroup tree (raise --ring-buffer-size to avoid this)");
                let present = scan(mount_point, start, Origin::Live);
                if tx.send(SourceMessage::Resync(present)).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn read_dropped(&self) -> u64 {
        self.dropped.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// A record as a cgroup event. The ctime is the kernel's time of the
    /// mkdir: a kernfs directory's own ctime is when its inode was first
    /// looked up, which can be much later (and a stat here would contend with
    /// the mkdirs for kernfs's lock).
    fn to_event(&self, r: &CgroupRecord) -> CgroupEvent {
        let kernel_time = wall_time(r.ktime_ns, self.wall_offset_ns);
        let ctime_ns = match r.change {
            CgroupChange::Mkdir => kernel_time.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
            CgroupChange::Rmdir => 0,
        };
        CgroupEvent {
            change: r.change,
            origin: Origin::Live,
            cgroup_id: r.cgroup_id,
            path: r.path.clone(),
            ctime_ns,
            observed: SystemTime::now(),
            kernel_time: Some(kernel_time),
        }
    }
}

trait AsFdBorrowed {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
}

impl AsFdBorrowed for RingBuf<MapData> {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring buffer owns this fd for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_under(path: &str, prefix: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn wall_offset_ns() -> i128 {
    let ns = |id| clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0);
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

fn wall_time(ktime_ns: u64, offset_ns: i128) -> SystemTime {
    let wall = (ktime_ns as i128 + offset_ns).max(0) as u64;
    UNIX_EPOCH + Duration::from_nanos(wall)
}
