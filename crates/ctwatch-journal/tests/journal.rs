//! The journal against a real file system: reopen, crash, corruption, retention, bad disks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ctwatch_journal::{Clock, Journal, JournalError, JournalRecordInput, Options, Record};

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * SEC;

fn payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"kind":"container_create","id":"c{i}","time":"2027-01-15T08:00:00Z","name":"svc-{i}","image":"registry.example/app:1.{i}","runtime":"docker","seq_hint":{i}}}"#
    )
    .into_bytes()
}

fn append(j: &Journal, i: u64, id: &str, time_ns: i64) -> u64 {
    let p = payload(i);
    j.append(JournalRecordInput { time_ns, container_id: id, kind: "container_create", payload: &p }).unwrap()
}

fn all(j: &Journal) -> Vec<Record> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = j.read_from(after, 1000).unwrap();
        let Some(last) = batch.last() else { break };
        after = last.seq;
        out.extend(batch);
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[derive(Debug)]
struct FakeClock(AtomicI64);
impl Clock for FakeClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn append_read_reopen_keeps_seqs_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let (id, last) = {
        let j = Journal::open(dir.path(), Options::default()).unwrap();
        assert_eq!(j.journal_id().len(), 32);
        for i in 0..1000 {
            assert_eq!(append(&j, i, &format!("c{}", i % 10), T0 + i as i64), i + 1);
        }
        j.flush().unwrap();
        let recs = all(&j);
        assert_eq!(recs.len(), 1000);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.payload, payload(i as u64));
            assert_eq!(r.container_id, format!("c{}", i % 10));
            assert_eq!(r.time_ns, T0 + i as i64);
        }
        assert_eq!(j.first_seq(), 1);
        assert_eq!(j.last_seq(), 1000);
        let st = j.stats();
        assert_eq!(st.synced_seq, 1000);
        assert!(st.fsync_latency.count() >= 1);
        (j.journal_id().to_owned(), j.last_seq())
    };
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.journal_id(), id);
    assert_eq!(j.last_seq(), last);
    // A clean close leaves no gap.
    assert_eq!(append(&j, 1000, "c0", T0 + 1000), last + 1);
    j.flush().unwrap();
    assert_eq!(all(&j).len(), 1001);
    // Reads from the middle, limits.
    let mid = j.read_from(500, 3).unwrap();
    assert_eq!(mid.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![501, 502, 503]);
    assert!(j.read_from(1001, 10).unwrap().is_empty());
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::open(dir.path(), Options::default()).unwrap();
    let err = Journal::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}

#[test]
fn oversized_record_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_record_bytes: 1000, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    let big = vec![b'x'; 2000];
    let err = j.append(JournalRecordInput { time_ns: T0, container_id: "c", kind: "k", payload: &big }).unwrap_err();
    assert!(matches!(err, JournalError::RecordTooLarge { .. }), "{err}");
    assert_eq!(j.stats().append_errors, 1);
    // No seq was used.
    assert_eq!(append(&j, 0, "c", T0), 1);
}

/// Run as a child process by `crash_never_reuses_a_seq`: appends, syncs some, then SIGKILLs itself.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CTWATCH_JOURNAL_CRASH_DIR") else {
        return;
    };
    let j = Journal::open(&dir, Options::default()).unwrap();
    for i in 0..500 {
        append(&j, i, "c", T0 + i as i64);
    }
    j.flush().unwrap();
    let mut last = 0;
    for i in 500..700 {
        last = append(&j, i, "c", T0 + i as i64);
    }
    println!("LAST={last}");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    unsafe { libc_kill() };
}

unsafe fn libc_kill() {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(std::process::id() as i32, 9);
}

#[test]
fn crash_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CTWATCH_JOURNAL_CRASH_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: u64 = stdout
        .lines()
        .find_map(|l| l.split("LAST=").nth(1))
        .unwrap_or_else(|| panic!("child said: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(last, 700);
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    let recs = all(&j);
    // Everything synced is there, in order, nothing corrupt.
    assert!(recs.len() >= 500, "{}", recs.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.payload, payload(i as u64));
    }
    // The next seq is above every seq the dead process handed out.
    let next = append(&j, 9999, "c", T0);
    assert!(next > last, "next {next} reuses a seq <= {last}");
    j.flush().unwrap();
    assert_eq!(j.read_from(next - 1, 10).unwrap()[0].payload, payload(9999));
}

fn fill(dir: &Path, n: u64) -> Vec<Record> {
    let j = Journal::open(dir, Options::default()).unwrap();
    for i in 0..n {
        append(&j, i, "c", T0 + i as i64);
    }
    j.flush().unwrap();
    all(&j)
}

#[test]
fn truncated_tail_recovers_to_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 100);
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut the last record in the middle.
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 50).unwrap();
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    let after = all(&j);
    assert_eq!(after, before[..99]);
    let st = j.stats();
    assert!(st.recovered_truncated_bytes > 0);
    // The file was cut back to the last whole record, and appends continue above seq 100.
    assert!(append(&j, 1, "c", T0) > 100);
    j.flush().unwrap();
    let again = all(&j);
    assert_eq!(again.len(), 100);
    assert_eq!(again[..99], before[..99]);
}

#[test]
fn flipped_byte_and_garbage_tail_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 100);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip one payload byte of a record about two thirds in.
    let framed = |r: &Record| 8 + 20 + r.container_id.len() + r.kind.len() + r.payload.len();
    let victim = 66;
    let start: usize = 8 + before[..victim].iter().map(framed).sum::<usize>();
    let at = start + framed(&before[victim]) / 2;
    bytes[at] ^= 0x20;
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&seg, &bytes).unwrap();
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    let after = all(&j);
    assert_eq!(after, before[..victim], "only records before the flipped one survive");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), start as u64);
}

#[test]
fn garbage_only_segment_and_zero_length_segment_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seg-00000000000000000001.log"), b"not a journal at all").unwrap();
    std::fs::write(dir.path().join("seg-00000000000000000002.log"), b"").unwrap();
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    assert!(all(&j).is_empty());
    let s = append(&j, 0, "c", T0);
    j.flush().unwrap();
    assert_eq!(all(&j)[0].seq, s);
}

#[test]
fn retention_by_bytes_drops_oldest_and_says_expired() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 64 << 10, segment_bytes: 8 << 10, ..Options::default() };
    let j = Journal::open(dir.path(), opts.clone()).unwrap();
    for i in 0..2000 {
        append(&j, i, &format!("c{}", i % 7), T0 + i as i64);
        if i % 100 == 0 {
            j.flush().unwrap();
        }
    }
    j.enforce_retention().unwrap();
    let st = j.stats();
    let on_disk: u64 = segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(st.bytes, on_disk);
    assert!(on_disk <= 64 << 10, "{on_disk} bytes on disk");
    assert!(st.dropped_by_retention > 0 && st.segments_dropped > 0);
    let oldest = j.first_seq();
    assert!(oldest > 1);
    assert_eq!(st.dropped_by_retention, oldest - 1);
    match j.read_from(0, 10) {
        Err(JournalError::Expired { after_seq: 0, oldest_seq }) => assert_eq!(oldest_seq, oldest),
        other => panic!("{other:?}"),
    }
    let kept = all_from(&j, oldest - 1);
    assert_eq!(kept.first().unwrap().seq, oldest);
    assert_eq!(kept.last().unwrap().seq, 2000);
    assert_eq!(kept.len() as u64, 2000 - oldest + 1);
    // History no longer lists dropped records.
    let h = j.history("c3").unwrap();
    assert!(h.iter().all(|r| r.seq >= oldest && r.container_id == "c3"));
    assert_eq!(h.len(), kept.iter().filter(|r| r.container_id == "c3").count());
    drop(j);
    // The floor survives a reopen.
    let j = Journal::open(dir.path(), opts).unwrap();
    assert!(matches!(j.read_from(0, 1), Err(JournalError::Expired { .. })));
    assert_eq!(j.first_seq(), oldest);
}

fn all_from(j: &Journal, mut after: u64) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = j.read_from(after, 500).unwrap();
        let Some(last) = batch.last() else { break };
        after = last.seq;
        out.extend(batch);
    }
    out
}

#[test]
fn retention_by_age_uses_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock(AtomicI64::new(T0)));
    let opts = Options {
        max_age: Some(Duration::from_secs(3600)),
        segment_bytes: 8 << 10,
        clock: clock.clone(),
        ..Options::default()
    };
    let j = Journal::open(dir.path(), opts).unwrap();
    // 300 records two hours ago, 300 records now.
    for i in 0..300 {
        append(&j, i, "old", T0 + i as i64);
    }
    j.flush().unwrap();
    clock.0.store(T0 + 2 * 3600 * SEC, Ordering::SeqCst);
    for i in 300..600 {
        append(&j, i, "new", T0 + 2 * 3600 * SEC + i as i64);
    }
    j.enforce_retention().unwrap();
    // Whole segments go: every segment holding only old records, none holding a new one.
    let dropped = j.stats().dropped_by_retention;
    let per_segment = (8 << 10) / 200;
    assert!(dropped <= 300 && dropped >= 300 - per_segment, "{dropped} dropped");
    let kept = all_from(&j, j.first_seq() - 1);
    assert_eq!(kept.len() as u64, 600 - dropped);
    assert_eq!(kept.iter().filter(|r| r.container_id == "new").count(), 300);
    assert_eq!(j.history("old").unwrap().len() as u64, 300 - dropped);
    // An hour and a half later everything is old, the active segment too.
    clock.0.store(T0 + 3 * 3600 * SEC + SEC, Ordering::SeqCst);
    j.enforce_retention().unwrap();
    assert_eq!(j.first_seq(), 0);
    assert!(matches!(j.read_from(0, 1), Err(JournalError::Expired { oldest_seq: 601, .. })));
    assert!(j.read_from(600, 1).unwrap().is_empty());
    // Seqs go on.
    assert_eq!(append(&j, 0, "x", T0 + 3 * 3600 * SEC), 601);
}

#[test]
fn history_with_index_and_by_scan_agree_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("{i:064x}")).collect();
    let expected =
        |id: &str| -> Vec<u64> { (0..3000u64).filter(|i| ids[(*i as usize * 7) % 50] == id).map(|i| i + 1).collect() };
    {
        let opts = Options { segment_bytes: 64 << 10, ..Options::default() };
        let j = Journal::open(dir.path(), opts).unwrap();
        for i in 0..3000u64 {
            append(&j, i, &ids[(i as usize * 7) % 50], T0 + i as i64 * SEC);
        }
        j.flush().unwrap();
        let h: Vec<u64> = j.history(&ids[3]).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(h, expected(&ids[3]));
        assert!(j.history("nope").unwrap().is_empty());
        assert_eq!(j.stats().history_scans, 0);
    }
    // Reopened with an index too small: the same answers, by scan.
    let opts = Options { max_history_entries: 100, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    for id in [&ids[0], &ids[49]] {
        let h = j.history(id).unwrap();
        assert_eq!(h.iter().map(|r| r.seq).collect::<Vec<_>>(), expected(id));
        assert!(h.iter().all(|r| &r.container_id == id));
    }
    assert_eq!(j.stats().history_scans, 2);
}

#[test]
fn find_by_time_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 16 << 10, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    for i in 0..2000u64 {
        append(&j, i, "c", T0 + i as i64 * SEC);
    }
    j.flush().unwrap();
    assert_eq!(j.find_by_time(0).unwrap(), Some(1));
    assert_eq!(j.find_by_time(T0 + 1234 * SEC).unwrap(), Some(1235));
    assert_eq!(j.find_by_time(T0 + 1234 * SEC + 1).unwrap(), Some(1236));
    assert_eq!(j.find_by_time(T0 + 1999 * SEC).unwrap(), Some(2000));
    assert_eq!(j.find_by_time(T0 + 2000 * SEC).unwrap(), None);
}

#[test]
fn cursors_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), Options::default()).unwrap();
        assert_eq!(j.cursor("nats"), None);
        j.set_cursor("nats", 41).unwrap();
        j.set_cursor("nats", 42).unwrap();
        j.set_cursor("other", 7).unwrap();
        j.set_cursor("gone", 1).unwrap();
        j.remove_cursor("gone");
        assert!(matches!(j.set_cursor("", 1), Err(JournalError::InvalidCursor { .. })));
        assert!(matches!(j.set_cursor(&"x".repeat(200), 1), Err(JournalError::InvalidCursor { .. })));
        for i in 0..62 {
            j.set_cursor(&format!("c{i}"), i).unwrap();
        }
        assert!(matches!(j.set_cursor("one-too-many", 1), Err(JournalError::InvalidCursor { .. })));
        j.set_cursor("c0", 99).unwrap();
        j.flush().unwrap();
        // Durable after flush, before close: read what is on disk.
        let meta = std::fs::read_to_string(dir.path().join("meta.json")).unwrap();
        assert!(meta.contains("\"nats\": 42"), "{meta}");
    }
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.cursor("nats"), Some(42));
    assert_eq!(j.cursor("other"), Some(7));
    assert_eq!(j.cursor("c0"), Some(99));
    assert_eq!(j.cursor("gone"), None);
}

#[tokio::test(flavor = "current_thread")]
async fn follower_sees_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(dir.path(), Options::default()).unwrap());
    // Some history before the reader starts.
    for i in 0..300 {
        append(&j, i, "c", T0);
    }
    let mut rx = j.subscribe();
    let writer = {
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            for i in 300..5000 {
                append(&j, i, "c", T0);
                if i % 512 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut after = 0;
    let mut seen = Vec::new();
    while after < 5000 {
        let batch = j.read_from(after, 256).unwrap();
        if batch.is_empty() {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&s| s > after))
                .await
                .expect("no progress in 10 s")
                .unwrap();
            continue;
        }
        after = batch.last().unwrap().seq;
        seen.extend(batch.into_iter().map(|r| r.seq));
    }
    writer.join().unwrap();
    assert_eq!(seen, (1..=5000).collect::<Vec<_>>());
    // The blocking flavour.
    assert_eq!(j.wait_beyond(4999, Duration::from_secs(1)), 5000);
    assert_eq!(j.wait_beyond(5000, Duration::from_millis(10)), 5000);
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn new(opts: &str) -> Tmpfs {
        let d = tempfile::Builder::new().prefix("ctwatch-journal-tmpfs-").tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "ctwatch-journal-test"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs -o {opts} failed (run as root)");
        Tmpfs(d)
    }
    fn remount(&self, opts: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(self.0.path()).status().unwrap();
        assert!(st.success());
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn disk_full_refuses_appends_then_recovers_when_space_returns() {
    let fs = Tmpfs::new("size=1m");
    let dir = fs.path().join("journal");
    let opts = Options {
        retry_interval: Duration::from_secs(3600), // only flush() retries: no timing in the test
        ..Options::default()
    };
    let j = Journal::open(&dir, opts.clone()).unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..10_000u64 {
        let p = payload(i);
        match j.append(JournalRecordInput { time_ns: T0, container_id: "c", kind: "k", payload: &p }) {
            Ok(s) => accepted.push((s, p)),
            Err(JournalError::Unavailable { reason }) => {
                assert!(reason.contains("No space left"), "{reason}");
                refused += 1;
                if refused > 10 {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        if i % 64 == 0 {
            let _ = j.flush();
        }
    }
    assert!(refused > 0, "1 MiB never filled");
    let st = j.stats();
    assert!(st.failing && st.write_errors > 0 && st.append_errors >= refused);
    assert!(matches!(j.flush(), Err(JournalError::Unavailable { .. })));
    // A failing writer waits for its retry interval (an hour here) or a flush: it does not spin.
    let errors = j.stats().write_errors;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(j.stats().write_errors, errors, "the failing writer retried without being asked");
    // Everything readable is good and in order.
    let partial = all(&j);
    for w in partial.windows(2) {
        assert!(w[0].seq < w[1].seq);
    }
    // Space returns.
    fs.remount("size=16m");
    j.flush().unwrap();
    assert!(!j.stats().failing);
    let s = append(&j, 77, "c", T0);
    j.flush().unwrap();
    let recs = all(&j);
    // Every accepted record is there once, in order, then the new one.
    assert_eq!(recs.len(), accepted.len() + 1);
    for (r, (s, p)) in recs.iter().zip(&accepted) {
        assert_eq!((r.seq, &r.payload), (*s, p));
    }
    assert_eq!(recs.last().unwrap().seq, s);
    drop(j);
    let j = Journal::open(&dir, opts).unwrap();
    assert_eq!(all(&j).len(), accepted.len() + 1);
}

#[test]
fn unwritable_directory_is_a_clear_error_until_it_is_writable() {
    let fs = Tmpfs::new("size=1m,ro");
    let err = Journal::open(fs.path().join("journal"), Options::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JournalError::Io { .. }), "{msg}");
    assert!(msg.contains("Read-only file system") && !msg.contains('\n'), "{msg}");

    // Once it is writable, the same directory opens.
    fs.remount("rw");
    let j = Journal::open(fs.path().join("journal"), Options::default()).unwrap();
    let a = append(&j, 0, "c", T0);
    j.flush().unwrap();
    assert_eq!(all(&j)[0].seq, a);
}

#[test]
fn corruption_in_an_older_segment_keeps_every_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 8 << 10, ..Options::default() };
    let before = {
        let j = Journal::open(dir.path(), opts.clone()).unwrap();
        for i in 0..200 {
            append(&j, i, "c", T0);
        }
        j.flush().unwrap();
        all(&j)
    };
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{} segments", segs.len());
    // Flip a byte in the middle of the second segment.
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&segs[1], &bytes).unwrap();
    let j = Journal::open(dir.path(), opts).unwrap();
    let after = all(&j);
    assert!(after.len() < before.len());
    // What is served is a subset of what was written, byte for byte, in order, and the
    // segments after the damaged one are all there.
    let mut it = before.iter();
    for r in &after {
        assert!(it.any(|b| b == r), "record {} was not written like this", r.seq);
    }
    assert_eq!(after.last(), before.last());
    assert!(j.stats().recovered_truncated_bytes > 0);
}

#[test]
fn damaged_metadata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path(), Options::default()).unwrap());
    std::fs::write(dir.path().join("meta.json"), b"{\"format\": 1, \"journ").unwrap();
    let err = Journal::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, JournalError::BadMeta { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn append_with_lets_the_payload_carry_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_record_bytes: 4096, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    for _ in 0..3 {
        j.append_with(T0, "c", "container_create", |seq, buf| {
            buf.extend_from_slice(format!(r#"{{"seq":{seq}}}"#).as_bytes())
        })
        .unwrap();
    }
    // Too large once written: refused, nothing kept, no seq used.
    let err = j.append_with(T0, "c", "k", |_, buf| buf.extend_from_slice(&[b'x'; 5000])).unwrap_err();
    assert!(matches!(err, JournalError::RecordTooLarge { .. }), "{err}");
    j.append_with(T0, "c", "k", |seq, buf| buf.extend_from_slice(format!(r#"{{"seq":{seq}}}"#).as_bytes())).unwrap();
    j.flush().unwrap();
    let recs = all(&j);
    assert_eq!(recs.len(), 4);
    for r in recs {
        assert_eq!(r.payload, format!(r#"{{"seq":{}}}"#, r.seq).into_bytes());
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_damage_never_panics_and_never_serves_a_record_that_was_not_written() {
    let src = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 8 << 10, ..Options::default() };
    let written = {
        let j = Journal::open(src.path(), opts.clone()).unwrap();
        for i in 0..300 {
            append(&j, i, &format!("c{}", i % 5), T0 + i as i64);
        }
        j.flush().unwrap();
        all(&j)
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(src.path()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let segs = segments(dir.path());
        // One to three kinds of damage, anywhere.
        for _ in 0..1 + rng.below(3) {
            let seg = &segs[rng.below(segs.len() as u64) as usize];
            let mut bytes = std::fs::read(seg).unwrap();
            match rng.below(4) {
                0 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                1 => {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let at = rng.below(bytes.len() as u64) as usize;
                    let n = (rng.below(64) as usize).min(bytes.len() - at);
                    for b in &mut bytes[at..at + n] {
                        *b = rng.next() as u8;
                    }
                }
                _ => bytes.extend((0..rng.below(600)).map(|_| rng.next() as u8)),
            }
            std::fs::write(seg, &bytes).unwrap();
        }
        let j = Journal::open(dir.path(), opts.clone()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let got = all(&j);
        let mut it = written.iter();
        for r in &got {
            assert!(it.any(|w| w == r), "round {round}: served record {} that was not written", r.seq);
        }
        for w in got.windows(2) {
            assert!(w[0].seq < w[1].seq);
        }
        // And it still works.
        let s = append(&j, 1, "c", T0);
        assert!(s > written.last().unwrap().seq);
        j.flush().unwrap();
        assert_eq!(j.read_from(s - 1, 1).unwrap()[0].seq, s);
        let h = j.history("c1").unwrap();
        assert!(h.iter().all(|r| r.container_id == "c1"));
    }
}

#[test]
fn concurrent_appenders_get_unique_seqs_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { segment_bytes: 64 << 10, ..Options::default() };
    let j = Arc::new(Journal::open(dir.path(), opts).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                (0..2000)
                    .map(|i| {
                        let p = format!("{t}:{i}");
                        let s = j
                            .append(JournalRecordInput {
                                time_ns: T0,
                                container_id: &format!("t{t}"),
                                kind: "k",
                                payload: p.as_bytes(),
                            })
                            .unwrap();
                        (s, p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut expected: Vec<(u64, String)> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    expected.sort();
    j.flush().unwrap();
    let got: Vec<(u64, String)> = all(&j).into_iter().map(|r| (r.seq, String::from_utf8(r.payload).unwrap())).collect();
    assert_eq!(got, expected);
    assert_eq!(got.first().unwrap().0, 1);
    assert_eq!(got.last().unwrap().0, 8000);
    assert_eq!(j.history("t2").unwrap().len(), 2000);
}

#[test]
fn retention_between_reads_says_expired_and_resumes_at_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 32 << 10, segment_bytes: 4 << 10, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    for i in 0..50 {
        append(&j, i, "c", T0);
    }
    j.flush().unwrap();
    // Read the first few, then push the journal far past its size so those segments go.
    let first = j.read_from(0, 5).unwrap();
    assert_eq!(first.len(), 5);
    for i in 50..2000 {
        append(&j, i, "c", T0);
    }
    j.enforce_retention().unwrap();
    match j.read_from(5, 10) {
        Err(JournalError::Expired { after_seq: 5, oldest_seq }) => {
            let rest = all_from(&j, oldest_seq - 1);
            assert_eq!(rest.first().unwrap().seq, oldest_seq);
            assert_eq!(rest.last().unwrap().seq, 2000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_segment_retention_dropped_but_did_not_delete_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 32 << 10, segment_bytes: 4 << 10, ..Options::default() };
    let saved = dir.path().join("saved");
    let oldest = {
        let j = Journal::open(dir.path(), opts.clone()).unwrap();
        for i in 0..20 {
            append(&j, i, "c", T0);
        }
        j.flush().unwrap();
        // Keep a copy of the first segment, as if its unlink had not happened.
        std::fs::copy(&segments(dir.path())[0], &saved).unwrap();
        for i in 20..1000 {
            append(&j, i, "c", T0);
        }
        j.enforce_retention().unwrap();
        j.first_seq()
    };
    std::fs::rename(&saved, dir.path().join("seg-00000000000000000001.log")).unwrap();
    let j = Journal::open(dir.path(), opts).unwrap();
    assert_eq!(j.first_seq(), oldest);
    assert_eq!(j.stats().recovered_truncated_bytes, 0);
    assert!(!dir.path().join("seg-00000000000000000001.log").exists());
    assert!(matches!(j.read_from(0, 1), Err(JournalError::Expired { .. })));
}

#[test]
fn a_record_damaged_after_open_is_an_error_not_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    for i in 0..100 {
        append(&j, i, "c", T0);
    }
    j.flush().unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    // Write in place (same inode: the journal's open handles see it).
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&seg).unwrap(),
        &bytes[at..at + 1],
        at as u64,
    )
    .unwrap();
    let mut after = 0;
    let err = loop {
        match j.read_from(after, 10) {
            Ok(b) if b.is_empty() => panic!("read everything: the flipped record was served"),
            Ok(b) => {
                for r in &b {
                    assert_eq!(r.payload, payload(r.seq - 1));
                }
                after = b.last().unwrap().seq;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

#[test]
fn segments_without_metadata_are_kept_under_a_new_id_without_reusing_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 32 << 10, segment_bytes: 4 << 10, ..Options::default() };
    let (id, oldest) = {
        let j = Journal::open(dir.path(), opts.clone()).unwrap();
        for i in 0..500 {
            append(&j, i, "c", T0);
        }
        j.enforce_retention().unwrap();
        (j.journal_id().to_owned(), j.first_seq())
    };
    assert!(oldest > 1);
    std::fs::remove_file(dir.path().join("meta.json")).unwrap();
    let j = Journal::open(dir.path(), opts).unwrap();
    assert_ne!(j.journal_id(), id);
    assert_eq!(j.first_seq(), oldest);
    assert!(matches!(j.read_from(0, 1), Err(JournalError::Expired { .. })));
    assert_eq!(all_from(&j, oldest - 1).len() as u64, 500 - oldest + 1);
    assert!(append(&j, 0, "c", T0) > 500);
}

#[tokio::test(flavor = "current_thread")]
async fn follower_replays_then_follows_reports_gaps_and_sees_close() {
    use ctwatch_journal::Followed;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 32 << 10, segment_bytes: 4 << 10, ..Options::default() };
    let j = Arc::new(Journal::open(dir.path(), opts).unwrap());
    for i in 0..20 {
        append(&j, i, "c", T0);
    }
    let mut f = j.follow(0);
    let mut seen = Vec::new();
    while seen.len() < 20 {
        match f.next(7).await.unwrap() {
            Followed::Records(rs) => seen.extend(rs.iter().map(|r| r.seq)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    // Live: appended from another thread while the follower waits.
    let writer = {
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            for i in 20..40 {
                append(&j, i, "c", T0);
            }
        })
    };
    while seen.len() < 40 {
        match tokio::time::timeout(Duration::from_secs(10), f.next(100)).await.expect("stalled").unwrap() {
            Followed::Records(rs) => seen.extend(rs.iter().map(|r| r.seq)),
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    assert_eq!(f.position(), 40);
    // A follower left behind by retention gets a gap, then goes on from the oldest.
    let mut slow = j.follow(0);
    for i in 40..1000 {
        append(&j, i, "c", T0);
    }
    j.enforce_retention().unwrap();
    let oldest = j.first_seq();
    assert_eq!(slow.next(10).await.unwrap(), Followed::Gap { after_seq: 0, oldest_seq: oldest });
    match slow.next(1).await.unwrap() {
        Followed::Records(rs) => assert_eq!(rs[0].seq, oldest),
        other => panic!("{other:?}"),
    }
    // The blocking flavour times out at the tail, and close ends a waiting follower.
    let mut tail = j.follow(j.last_seq());
    assert_eq!(tail.next_blocking(10, Duration::from_millis(20)).unwrap(), None);
    let waiter = tokio::spawn(async move { tail.next(10).await });
    tokio::task::yield_now().await;
    j.close();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap(),
        Err(JournalError::Closed)
    ));
}

/// Run as a child process by `sigkill_restarts_lose_only_unsynced_records_and_never_reuse_a_seq`:
/// appends forever, saying on stderr (unbuffered) each seq it got and each seq known synced.
#[test]
fn churn_child() {
    let Ok(dir) = std::env::var("CTWATCH_JOURNAL_CHURN_DIR") else {
        return;
    };
    let run: u64 = std::env::var("CTWATCH_JOURNAL_CHURN_RUN").unwrap().parse().unwrap();
    // After this many syncs, append a burst and SIGKILL itself at once (the burst is then
    // mostly still in memory); without it, the parent kills it from outside.
    let self_kill: Option<u64> = std::env::var("CTWATCH_JOURNAL_CHURN_SELF_KILL").ok().and_then(|v| v.parse().ok());
    let say = |line: String| {
        use std::io::Write;
        // One write per line, so a kill cannot leave half a line.
        let _ = std::io::stderr().write_all(line.as_bytes());
    };
    let j = Journal::open(&dir, Options { segment_bytes: 64 << 10, ..Options::default() }).unwrap();
    let append = |i: u64| {
        j.append_with(T0 + i as i64, &format!("c{}", i % 50), "container_create", |seq, buf| {
            buf.extend_from_slice(format!(r#"{{"seq":{seq},"run":{run},"i":{i}}}"#).as_bytes())
        })
        .unwrap()
    };
    let mut syncs = 0;
    for i in 0u64.. {
        let seq = append(i);
        say(format!("A={seq}\n"));
        if i % 97 == 0 {
            j.flush().unwrap();
            say(format!("S={seq}\n"));
            syncs += 1;
            if self_kill == Some(syncs) {
                let mut last = seq;
                for k in 1..=2000 {
                    last = append(i + k);
                }
                say(format!("A={last}\n"));
                unsafe { libc_kill() };
            }
        }
    }
}

#[test]
fn sigkill_restarts_lose_only_unsynced_records_and_never_reuse_a_seq() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut max_handed_out = 0u64;
    let mut synced = Vec::new();
    let mut kept: Vec<Record> = Vec::new();
    for run in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "churn_child", "--nocapture", "--test-threads=1"])
            .env("CTWATCH_JOURNAL_CHURN_DIR", dir.path())
            .env("CTWATCH_JOURNAL_CHURN_RUN", run.to_string())
            .env("CTWATCH_JOURNAL_CHURN_SELF_KILL", if run % 2 == 0 { (3 + run).to_string() } else { "never".into() })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let prev_max = max_handed_out;
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut first = None;
        let mut syncs = 0;
        // Kill it at a different point of its work each run.
        let target = 3 + run * 2;
        while let Some(Ok(line)) = lines.next() {
            if let Some(Ok(s)) = line.strip_prefix("A=").map(str::parse::<u64>) {
                first.get_or_insert(s);
                max_handed_out = max_handed_out.max(s);
            } else if let Some(Ok(s)) = line.strip_prefix("S=").map(str::parse::<u64>) {
                synced.push(s);
                syncs += 1;
                if run % 2 == 1 && syncs == target {
                    child.kill().unwrap(); // SIGKILL
                }
            }
        }
        child.wait().unwrap();
        let first = first.expect("child appended nothing");
        // No seq handed out before this run (that we heard of, or that was kept) was handed
        // out again.
        assert!(first > prev_max, "run {run}: first seq {first} not above {prev_max}, handed out before");
        let j = Journal::open(dir.path(), Options { segment_bytes: 64 << 10, ..Options::default() }).unwrap();
        let recs = all(&j);
        // What earlier runs left is unchanged; every synced seq is there; seqs only grow; every
        // payload is the one appended with that seq.
        assert_eq!(recs[..kept.len()], kept[..], "run {run}: earlier records changed");
        for w in recs.windows(2) {
            assert!(w[0].seq < w[1].seq);
        }
        for r in &recs {
            let p = String::from_utf8(r.payload.clone()).unwrap();
            assert!(p.starts_with(&format!(r#"{{"seq":{},"#, r.seq)), "{p}");
        }
        let have: std::collections::HashSet<u64> = recs.iter().map(|r| r.seq).collect();
        for s in &synced {
            assert!(have.contains(s), "run {run}: synced seq {s} lost");
        }
        // (A record can be kept whose seq the child had no time to print.)
        max_handed_out = max_handed_out.max(recs.last().unwrap().seq);
        kept = recs;
    }
}

#[test]
fn write_delay_gathers_batches_and_flush_does_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { write_delay: Duration::from_secs(3600), ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    for i in 0..100 {
        append(&j, i, "c", T0);
    }
    // Gathering (for an hour): nothing readable yet, and no write made.
    assert_eq!(j.last_seq(), 0);
    assert_eq!(j.stats().write_latency.count(), 0);
    // A flush writes at once, in one batch.
    j.flush().unwrap();
    assert_eq!(j.last_seq(), 100);
    assert_eq!(j.stats().write_latency.count(), 1);
    assert_eq!(all(&j).len(), 100);
    // And close writes what is gathering.
    for i in 100..150 {
        append(&j, i, "c", T0);
    }
    drop(j);
    let j = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(all(&j).len(), 150);
}

#[test]
fn a_full_backlog_refuses_appends_until_the_writer_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    // The writer gathers for an hour: only a flush makes it write.
    let opts = Options { write_delay: Duration::from_secs(3600), max_pending_bytes: 4000, ..Options::default() };
    let j = Journal::open(dir.path(), opts).unwrap();
    let mut accepted = 0u64;
    let err = loop {
        let p = payload(accepted);
        match j.append(JournalRecordInput { time_ns: T0, container_id: "c", kind: "k", payload: &p }) {
            Ok(s) => {
                accepted += 1;
                assert_eq!(s, accepted);
            }
            Err(e) => break e,
        }
        assert!(accepted < 100, "4000 bytes of backlog never filled");
    };
    assert!(matches!(err, JournalError::Backlog { pending_bytes } if pending_bytes <= 4000), "{err}");
    assert!(accepted >= 5);
    assert_eq!(j.stats().append_errors, 1);
    j.flush().unwrap();
    // Caught up: accepted again, and no seq was used by the refused append.
    assert_eq!(append(&j, 0, "c", T0), accepted + 1);
    j.flush().unwrap();
    assert_eq!(all(&j).len() as u64, accepted + 1);
}

#[test]
fn followers_appenders_and_retention_at_once() {
    use ctwatch_journal::Followed;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { max_bytes: 256 << 10, segment_bytes: 16 << 10, ..Options::default() };
    let j = Arc::new(Journal::open(dir.path(), opts).unwrap());
    const PER_THREAD: u64 = 5000;
    let appenders: Vec<_> = (0..2)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    append(&j, i, &format!("t{t}"), T0);
                    if i % 1000 == 0 {
                        j.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    // A fast follower sees every seq; a slow one may be overtaken by retention and sees gaps,
    // but never a repeat or a seq going back.
    let followers: Vec<_> = [0u64, 3]
        .into_iter()
        .map(|pause_every| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                let mut f = j.follow(0);
                let (mut last, mut seen, mut gaps) = (0u64, 0u64, 0u64);
                let mut expect = 1u64;
                while last < 2 * PER_THREAD {
                    match f.next_blocking(64, Duration::from_secs(10)).unwrap().expect("stalled") {
                        Followed::Records(rs) => {
                            for r in rs {
                                // Every record is the next one, or the oldest after a gap.
                                assert_eq!(r.seq, expect, "after {last}");
                                last = r.seq;
                                expect = last + 1;
                                seen += 1;
                            }
                        }
                        Followed::Gap { after_seq, oldest_seq } => {
                            assert_eq!(after_seq, last);
                            assert!(oldest_seq > last + 1);
                            expect = oldest_seq;
                            gaps += 1;
                        }
                        other => panic!("{other:?}"),
                    }
                    if pause_every > 0 && seen % pause_every == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                (seen, gaps)
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    let results: Vec<(u64, u64)> = followers.into_iter().map(|f| f.join().unwrap()).collect();
    assert!(j.stats().dropped_by_retention > 0);
    let (fast_seen, fast_gaps) = results[0];
    assert!(fast_gaps > 0 || fast_seen == 2 * PER_THREAD);
    assert!(results.iter().all(|&(seen, _)| seen > 0));
}
