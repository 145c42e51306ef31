//! A real `ctwatch serve` on a socket of the test's own, and clients of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ctwatch_api::pb;
use ctwatch_api::pb::containers_client::ContainersClient;
use tonic::transport::Channel;

use super::ctwatch_bin;

/// A running `ctwatch serve`.
pub struct Serve {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Every line it logged.
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Serve {
    /// Starts `ctwatch serve --no-pin` on a fresh socket in a directory anyone may traverse.
    pub fn start(args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("ctwatch.sock");
        let mut serve = Serve::start_at(&socket, args);
        serve._dir = Some(dir);
        serve
    }

    /// Starts `ctwatch serve --no-pin --socket <socket>`; waits until the API listens.
    pub fn start_at(socket: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new(ctwatch_bin())
            .args(["serve", "--no-pin", "--socket"])
            .arg(socket)
            .args(if args.contains(&"--hook") { &[][..] } else { &["--hook", "off"][..] })
            // Its own journal next to the socket (kept across restarts on the same socket).
            .args(if args.iter().any(|a| a.starts_with("--journal") || *a == "--no-journal") {
                Vec::new()
            } else {
                vec![std::ffi::OsString::from("--journal"), socket.with_extension("journal").into_os_string()]
            })
            .args(args)
            .env("CTWATCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctwatch serve");
        let (ready_tx, ready) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        let stderr = child.stderr.take().unwrap();
        let verbose = std::env::var_os("CTWATCH_TEST_VERBOSE").is_some();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[serve] {line}");
                }
                if line.contains("API listening") {
                    let _ = ready_tx.send(());
                }
                writer.lock().unwrap().push(line);
            }
        });
        if ready.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("ctwatch serve did not start; log: {:#?}", log.lock().unwrap());
        }
        Serve { child: Some(child), socket: socket.to_path_buf(), log, _dir: None }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        child.wait().unwrap()
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A client connected to it.
    pub async fn client(&self) -> ContainersClient<Channel> {
        ctwatch_api::client::connect(&self.socket).await.expect("connect to the agent")
    }

    /// Keeps its temporary directory alive after a stop (for a restart on the same socket).
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._dir.take()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a Watch stream sent: the current containers, then events.
#[derive(Default, Debug)]
pub struct Watched {
    /// `current` items, in order.
    pub current: Vec<pb::Event>,
    /// True once `synced` came.
    pub synced: bool,
    /// Whether any `current` came after `synced` (must never happen).
    pub current_after_synced: bool,
    /// Events after `synced`.
    pub events: Vec<pb::Event>,
}

impl Watched {
    /// Takes one message in.
    pub fn take(&mut self, message: pb::WatchResponse) {
        match message.item {
            Some(pb::watch_response::Item::Current(e)) => {
                self.current_after_synced |= self.synced;
                self.current.push(e);
            }
            Some(pb::watch_response::Item::Synced(_)) => self.synced = true,
            Some(pb::watch_response::Item::Event(e)) => {
                assert!(self.synced, "an event before synced");
                self.events.push(e);
            }
            Some(pb::watch_response::Item::Gap(_)) | None => {}
        }
    }

    /// True when an event `kind` about container `id` came.
    pub fn has(&self, kind: &str, id: &str) -> bool {
        self.events.iter().any(|e| e.event == kind && e.container.as_ref().is_some_and(|c| c.container_id == id))
    }

    /// The first event `kind` about `id`.
    pub fn find(&self, kind: &str, id: &str) -> Option<&pb::Event> {
        self.events.iter().find(|e| e.event == kind && e.container.as_ref().is_some_and(|c| c.container_id == id))
    }
}

/// Reads `stream` into `watched` until `done` holds (panics after `timeout`).
pub async fn watch_until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    watched: &mut Watched,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Watched) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(watched) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => watched.take(m),
            Ok(Ok(None)) => panic!("the stream ended while waiting for {what}"),
            Ok(Err(status)) => panic!("the stream failed while waiting for {what}: {status}"),
            Err(_) => panic!("timed out waiting for {what}; got {} events", watched.events.len()),
        }
    }
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` from `addr`, the body.
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(text)
}

/// An HTTP answer: status code, headers (names lower-cased) and body.
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub body: String,
}

impl HttpAnswer {
    /// The first header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `addr` with `headers` ("Name: value").
pub fn http(addr: &str, method: &str, path: &str, headers: &[&str]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {raw:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    HttpAnswer { status, headers, body }
}

/// A `Transfer-Encoding: chunked` body, decoded.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
    out
}

/// The value of a metric line that starts with `name_and_labels`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}
