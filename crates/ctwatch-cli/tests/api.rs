//! The agent's API end to end: a real `ctwatch serve`, real Docker and CRI
//! containers, real gRPC clients over the unix socket.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::serve::{free_port, metric, scrape, watch_until, Serve, Watched};
use common::*;
use ctwatch_api::pb;
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn docker(args: &[&str]) -> String {
    run("/usr/bin/docker", args)
}

/// A docker-layout cgroup (a container as far as the kernel can tell) with this ID.
fn fake_docker_cgroup(tree: &mut CgroupTree, id: &str) -> std::path::PathBuf {
    tree.mkdir_p(&default_hierarchy(), &format!("docker/{id}"))
}

fn mount_ns(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).unwrap().ino()
}

#[test]
fn every_method_answers_for_docker_and_cri_containers() {
    require_root();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(&["--metrics-addr", &metrics_addr]);
    let rt = runtime();
    let mut client = rt.block_on(serve.client());
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut watched = Watched::default();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(10), "synced", |w| w.synced));

    // A Docker container with labels, and two cgroups whose IDs share a prefix.
    let name = unique("api");
    let id = docker(&["run", "-d", "--name", &name, "--label", "team=blue", "local/busybox:1", "sleep", "300"]);
    let base = hex_id(&name);
    let (twin_a, twin_b) = (format!("{}0{}", &base[..40], &base[41..]), format!("{}1{}", &base[..40], &base[41..]));
    let mut tree = CgroupTree::new();
    fake_docker_cgroup(&mut tree, &twin_a);
    fake_docker_cgroup(&mut tree, &twin_b);
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(20), "the creates", |w| {
        w.has("container_create", &id) && w.has("container_create", &twin_a) && w.has("container_create", &twin_b)
    }));
    assert!(!watched.current_after_synced);
    let created = watched.find("container_create", &id).unwrap().clone();
    let c = created.container.as_ref().unwrap();
    assert_eq!(
        (c.container_name.as_str(), c.container_image.as_str(), c.runtime.as_str()),
        (name.as_str(), "local/busybox:1", "docker")
    );
    assert_eq!(c.labels.get("team").map(String::as_str), Some("blue"), "{c:?}");
    assert_eq!(created.enriched, Some(true));

    // Get: full ID, prefix, name; errors.
    let for_get = client.clone();
    let get =
        |key: &str| rt.block_on(for_get.clone().get(pb::GetRequest { id: key.to_string() })).map(|r| r.into_inner());
    for key in [id.as_str(), &id[..12], name.as_str()] {
        let got = get(key).unwrap_or_else(|e| panic!("Get {key}: {e}"));
        assert_eq!(got.container_id, id);
        assert_eq!(got.container_image_digest.len(), 71, "sha256:<64 hex>");
        assert_eq!(got.state, pb::ContainerState::Created as i32);
    }
    assert_eq!(get(&base[..40]).unwrap_err().code(), Code::InvalidArgument, "ambiguous prefix");
    assert_eq!(get("feedfacefeedface").unwrap_err().code(), Code::NotFound);
    assert_eq!(get("").unwrap_err().code(), Code::InvalidArgument);

    // By cgroup ID, PID and mount namespace.
    let by_cgroup = rt.block_on(client.get_by_cgroup_id(pb::GetByCgroupIdRequest { cgroup_id: c.cgroup_id })).unwrap();
    assert_eq!(by_cgroup.into_inner().container_id, id);
    let missing = rt.block_on(client.get_by_cgroup_id(pb::GetByCgroupIdRequest { cgroup_id: 1 })).unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id]).parse().unwrap();
    let by_pid = rt.block_on(client.get_by_pid(pb::GetByPidRequest { pid })).unwrap().into_inner();
    assert_eq!((by_pid.container_id.as_str(), by_pid.init_pid), (id.as_str(), Some(pid)));
    assert_eq!(by_pid.mount_ns, Some(mount_ns(pid)));
    let host_pid = rt.block_on(client.get_by_pid(pb::GetByPidRequest { pid: 1 })).unwrap_err();
    assert_eq!(host_pid.code(), Code::NotFound, "PID 1 is not in a container");
    let no_pid = rt.block_on(client.get_by_pid(pb::GetByPidRequest { pid: 0x7fff_fff0 })).unwrap_err();
    assert_eq!(no_pid.code(), Code::NotFound);
    let by_ns = rt.block_on(client.get_by_mount_ns(pb::GetByMountNsRequest { mount_ns: mount_ns(pid) })).unwrap();
    assert_eq!(by_ns.into_inner().container_id, id);

    // List with filters.
    let for_list = client.clone();
    let list = |r: pb::ListRequest| rt.block_on(for_list.clone().list(r)).map(|r| r.into_inner().containers);
    let labelled = list(pb::ListRequest { labels: vec!["team=blue".into()], ..Default::default() }).unwrap();
    assert!(labelled.iter().any(|c| c.container_id == id));
    assert!(labelled.iter().all(|c| c.labels.get("team").map(String::as_str) == Some("blue")));
    let named = list(pb::ListRequest { name: name.clone(), runtime: "docker".into(), ..Default::default() }).unwrap();
    assert_eq!(named.iter().map(|c| c.container_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    let bad = list(pb::ListRequest { runtime: "rocket".into(), ..Default::default() }).unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // A CRI pod: its containers listed by pod, with pod data.
    let mut cri = rt.block_on(cri::connect());
    let pod = rt.block_on(cri::run_pod(&mut cri, "apipod"));
    let app = pod.containers[0].1.clone();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(30), "the pod's creates", |w| {
        w.has("container_create", &pod.sandbox_id) && pod.containers.iter().all(|(_, id)| w.has("container_create", id))
    }));
    let in_pod = list(pb::ListRequest {
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(in_pod.len(), 3, "sandbox + 2 containers: {in_pod:#?}");
    assert!(in_pod.iter().all(|c| c.runtime == "containerd" && c.k8s_pod_id == pod.uid));
    assert_eq!(in_pod.iter().filter(|c| c.k8s_pod_sandbox).count(), 1);
    let app_record = get(&app).unwrap();
    assert_eq!((app_record.container_name.as_str(), app_record.k8s_pod_name.as_str()), ("app", pod.name.as_str()));
    assert!(app_record.init_pid.is_some(), "a started CRI container has an init PID");

    // ResolvePath.
    let resolved = rt
        .block_on(client.resolve_path(pb::ResolvePathRequest { container: id.clone(), path: "/etc/hostname".into() }))
        .unwrap()
        .into_inner();
    assert_eq!(resolved.host_path, format!("/proc/{pid}/root/etc/hostname"));
    assert_eq!(std::fs::read_to_string(&resolved.host_path).unwrap().trim(), &id[..12]);

    // Removal arrives after the create, on the same stream.
    docker(&["rm", "-f", &id]);
    rt.block_on(cri::remove_pod(&mut cri, &pod.sandbox_id));
    tree.remove_all();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(30), "the removes", |w| {
        w.has("container_remove", &id) && w.has("container_remove", &app) && w.has("container_remove", &twin_a)
    }));
    let position = |kind: &str| {
        watched.events.iter().position(|e| e.event == kind && e.container.as_ref().unwrap().container_id == id)
    };
    assert!(position("container_create") < position("container_remove"));
    // Within the grace period the removed container is still found, marked removed.
    let gone = get(&id).unwrap();
    assert_eq!(gone.state, pb::ContainerState::Removed as i32);

    // Metrics.
    let text = scrape(&metrics_addr);
    assert!(metric(&text, "ctwatch_api_requests_total{method=\"Get\",code=\"OK\"}").unwrap() >= 3.0, "{text}");
    assert!(metric(&text, "ctwatch_api_requests_total{method=\"Get\",code=\"NOT_FOUND\"}").unwrap() >= 1.0);
    assert!(metric(&text, "ctwatch_events_total{kind=\"container_create\"}").unwrap() >= 6.0);
    assert!(metric(&text, "ctwatch_enrichment_duration_seconds_count{runtime=\"docker\"}").unwrap() >= 1.0);
    assert!(text.contains("ctwatch_containers{runtime=\"docker\"}"));
    assert!(text.contains("ctwatch_ring_buffer_dropped_total") && text.contains("ctwatch_resyncs_total"));
}

#[test]
fn the_cli_asks_the_agent_and_not_found_exits_1() {
    require_root();
    let serve = Serve::start(&[]);
    let socket = serve.socket.to_str().unwrap();
    let name = unique("cli");
    let id = docker(&["run", "-d", "--name", &name, "local/busybox:1", "sleep", "300"]);
    let ctwatch = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--socket", socket]);
        output(ctwatch_bin().to_str().unwrap(), &all)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Listed by name once enrichment has answered (the store has it from the mkdir on).
    let by_name = format!("name={name}");
    while !String::from_utf8_lossy(&ctwatch(&["ls", "-q", "--no-trunc", "-f", &by_name]).stdout).contains(&id) {
        assert!(Instant::now() < deadline, "ls never listed the container");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = ctwatch(&["get", &id[..10]]);
    assert!(got.status.success(), "{got:?}");
    let record: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(record["container_name"], name.as_str());
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let by_pid: serde_json::Value = serde_json::from_slice(&ctwatch(&["pid", &pid]).stdout).unwrap();
    assert_eq!(by_pid["container_id"], id.as_str());
    let by_key: serde_json::Value = serde_json::from_slice(&ctwatch(&["get", &format!("pid:{pid}")]).stdout).unwrap();
    assert_eq!(by_key["container_id"], id.as_str());
    let filtered = ctwatch(&["ls", "-q", "--no-trunc", "--filter", &format!("name={name}")]);
    assert_eq!(String::from_utf8_lossy(&filtered.stdout).trim(), id);

    // Without the agent, the same answers from a scan made by the command itself.
    let alone: serde_json::Value = serde_json::from_slice(&ctwatch(&["pid", "--standalone", &pid]).stdout).unwrap();
    assert_eq!(
        (&alone["container_id"], &alone["container_name"]),
        (&by_pid["container_id"], &by_pid["container_name"])
    );
    let host = ctwatch(&["pid", "1"]);
    assert_eq!(host.status.code(), Some(1), "{host:?}");
    assert!(String::from_utf8_lossy(&host.stderr).starts_with("ctwatch: no container matches PID 1"));
    let unknown = ctwatch(&["get", "nosuchcontainer"]);
    assert_eq!(unknown.status.code(), Some(1));
    let bad_key = ctwatch(&["get", "inode:5"]);
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("unsupported key type \"inode\""), "{bad_key:?}");
    docker(&["rm", "-f", &id]);
}

#[test]
fn only_root_and_the_socket_group_may_connect() {
    require_root();
    let group = "ctwatch-test-api";
    ensure_group(group);
    ensure_user("ctwatch-test-member", Some(group));
    ensure_user("ctwatch-test-outsider", None);
    let serve = Serve::start(&["--socket-group", group]);
    let meta = std::fs::metadata(&serve.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    let as_user = |user: &str| {
        output(
            "setpriv",
            &[
                &format!("--reuid={user}"),
                &format!("--regid={}", run("id", &["-g", user])),
                "--init-groups",
                ctwatch_bin().to_str().unwrap(),
                "ls",
                "--socket",
                serve.socket.to_str().unwrap(),
            ],
        )
    };
    let outsider = as_user("ctwatch-test-outsider");
    assert_eq!(outsider.status.code(), Some(2), "{outsider:?}");
    let why = String::from_utf8_lossy(&outsider.stderr);
    let expected = format!("permission denied on {}: run as root or join group {group}", serve.socket.display());
    assert!(why.contains(&expected), "{why}");
    let member = as_user("ctwatch-test-member");
    assert!(member.status.success(), "a member of {group} may list: {member:?}");
    assert!(String::from_utf8_lossy(&member.stdout).starts_with("CONTAINER ID"));
}

fn ensure_group(group: &str) {
    if !output("getent", &["group", group]).status.success() {
        run("groupadd", &["-f", group]);
    }
}

fn ensure_user(user: &str, group: Option<&str>) {
    if !output("id", &["-u", user]).status.success() {
        run("useradd", &["-M", "-N", "-s", "/usr/sbin/nologin", user]);
    }
    if let Some(group) = group {
        run("usermod", &["-a", "-G", group, user]);
    }
}

#[test]
fn a_slow_client_is_dropped_and_the_others_go_on() {
    require_root();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(&["--no-enrich", "--client-buffer", "16", "--metrics-addr", &metrics_addr]);
    let rt = runtime();
    let client = rt.block_on(serve.client());
    let open = |skip_current| {
        let mut c = rt.block_on(serve.client());
        rt.block_on(async move {
            c.watch(pb::WatchRequest { skip_current, buffer: 0, ..Default::default() }).await.unwrap().into_inner()
        })
    };
    // Separate connections: a stalled stream must not hold up another's HTTP/2 window.
    let open_with = |buffer| {
        let mut c = rt.block_on(serve.client());
        rt.block_on(async move {
            c.watch(pb::WatchRequest { skip_current: true, buffer, ..Default::default() }).await.unwrap().into_inner()
        })
    };
    let mut reader = open_with(1 << 20); // asks for room for the whole burst
    let mut stalled = open(true); // the agent's --client-buffer (16); never read until the end
    drop(open(true)); // abandoned at once

    let tag = unique("slow");
    let ids: Vec<String> = (0..1500).map(|i| hex_id(&format!("{tag}-{i}"))).collect();
    let reader_task = {
        let ids: std::collections::HashSet<String> = ids.iter().cloned().collect();
        rt.spawn(async move {
            let mut watched = Watched::default();
            // Its own removes only: other tests' containers come and go on this host too.
            watch_until(&mut reader, &mut watched, Duration::from_secs(120), "every remove", |w| {
                let ours = |e: &&pb::Event| e.container.as_ref().is_some_and(|c| ids.contains(&c.container_id));
                w.events.iter().filter(|e| e.event == "container_remove").filter(ours).count() >= ids.len()
            })
            .await;
            watched
        })
    };
    let mut tree = CgroupTree::new();
    let dirs: Vec<_> = ids.iter().map(|id| fake_docker_cgroup(&mut tree, id)).collect();
    for dir in &dirs {
        tree.rmdir(dir);
    }
    let watched = rt.block_on(reader_task).unwrap();
    for id in &ids {
        assert!(watched.has("container_create", id) && watched.has("container_remove", id), "{id} missed");
    }
    // The stalled client was told why it was cut off.
    let ended = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, stalled.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => return Some(status),
                Err(_) => panic!("the stalled client was never dropped"),
            }
        }
    });
    let status = ended.expect("an error status, not a silent end");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let text = scrape(&metrics_addr);
    assert!(metric(&text, "ctwatch_subscribers_dropped_total").unwrap() >= 1.0, "{text}");
    // The agent still answers.
    let mut c = client.clone();
    let missing = rt.block_on(async move { c.get(pb::GetRequest { id: ids[0].clone() }).await });
    assert!(matches!(missing.map(|r| r.into_inner().state), Ok(3) | Err(_)));
}

#[test]
fn a_hundred_clients_watch_and_ask_at_once() {
    require_root();
    let serve = Serve::start(&["--no-enrich"]);
    let rt = runtime();
    let client = rt.block_on(serve.client());
    let tag = unique("hundred");
    let ids: Vec<String> = (0..20).map(|i| hex_id(&format!("{tag}-{i}"))).collect();
    // 100 clients, each on its own connection (as separate processes would be).
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = rt.block_on(serve.client());
        let mut stream = rt.block_on(async move { c.watch(pb::WatchRequest::default()).await.unwrap().into_inner() });
        let ids = ids.clone();
        tasks.push(rt.spawn(async move {
            let mut watched = Watched::default();
            watch_until(&mut stream, &mut watched, Duration::from_secs(60), "all 20 removes", |w| {
                ids.iter().all(|id| w.has("container_remove", id))
            })
            .await;
            watched
        }));
    }
    let mut tree = CgroupTree::new();
    let dirs: Vec<_> = ids.iter().map(|id| fake_docker_cgroup(&mut tree, id)).collect();
    // 100 concurrent Gets while the containers exist.
    std::thread::sleep(Duration::from_millis(500));
    let gets: Vec<_> = (0..100)
        .map(|i| {
            let mut c = client.clone();
            let id = ids[i % ids.len()].clone();
            rt.spawn(async move {
                c.get(pb::GetRequest { id: id[..16].to_string() }).await.map(|r| r.into_inner().container_id == id)
            })
        })
        .collect();
    for g in gets {
        assert_eq!(rt.block_on(g).unwrap().map_err(|s| s.to_string()), Ok(true));
    }
    for dir in &dirs {
        tree.rmdir(dir);
    }
    for task in tasks {
        let watched = rt.block_on(task).unwrap();
        for id in &ids {
            let at = |kind: &str| {
                watched.events.iter().position(|e| e.event == kind && e.container.as_ref().unwrap().container_id == *id)
            };
            assert!(at("container_create").is_some() && at("container_create") < at("container_remove"));
        }
    }
}

#[test]
fn clients_reconnect_after_an_agent_restart_and_nothing_is_lost() {
    require_root();
    let mut serve = Serve::start(&["--no-enrich"]);
    let dir = serve.take_dir().unwrap();
    let socket = serve.socket.clone();
    let rt = runtime();

    // A second serve on the same socket is refused, and the first is untouched.
    let second = output(ctwatch_bin().to_str().unwrap(), &["serve", "--no-pin", "--socket", socket.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another ctwatch serve is running"), "{second:?}");

    let mut client = rt.block_on(serve.client());
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut watched = Watched::default();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(10), "synced", |w| w.synced));

    let tag = unique("restart");
    let before = hex_id(&format!("{tag}-before"));
    let during = hex_id(&format!("{tag}-during"));
    let mut tree = CgroupTree::new();
    fake_docker_cgroup(&mut tree, &before);
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(10), "before", |w| {
        w.has("container_create", &before)
    }));

    // Clean stop: the stream ends, the socket is removed.
    assert!(serve.stop().success());
    // Events still queued (other tests make cgroups too) may come first; then the end.
    let end = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_queued)) => continue,
                    other => return other,
                }
            }
        })
        .await
    });
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "the stream ends with the agent: {end:?}");
    assert!(!socket.exists(), "the socket is removed on SIGTERM");
    let down = output(ctwatch_bin().to_str().unwrap(), &["ls", "--socket", socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&down.stderr).contains("no ctwatch agent answers"), "{down:?}");

    // A container made while the agent is down is there after the restart.
    fake_docker_cgroup(&mut tree, &during);
    let mut serve = Serve::start_at(&socket, &["--no-enrich"]);
    let mut client = rt.block_on(serve.client());
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut watched = Watched::default();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(10), "synced", |w| w.synced));
    let current: Vec<&str> =
        watched.current.iter().map(|e| e.container.as_ref().unwrap().container_id.as_str()).collect();
    assert!(current.contains(&before.as_str()) && current.contains(&during.as_str()), "{current:?}");

    // Killed outright: the stale socket is replaced by the next start.
    serve.kill();
    assert!(socket.exists());
    let mut serve = Serve::start_at(&socket, &["--no-enrich"]);
    let mut client = rt.block_on(serve.client());
    let got = rt.block_on(client.get(pb::GetRequest { id: during.clone() })).unwrap().into_inner();
    assert_eq!(got.state, pb::ContainerState::Existing as i32);
    assert!(serve.stop().success());
    drop(dir);
}

#[test]
fn paths_resolve_inside_the_container_never_on_the_host() {
    require_root();
    let serve = Serve::start(&["--no-enrich"]);
    let script = "echo container-shadow > /etc/shadow; ln -s /etc/shadow /evil; \
                  ln -s ../../../../../../../etc/shadow /etc/rel; mkdir -p /a/b; ln -s ../../.. /a/b/up; \
                  ln -s /proc/self/root/etc/shadow /magic; sleep 300";
    let id = docker(&["run", "-d", "local/busybox:1", "sh", "-c", script]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run("/usr/bin/docker", &["exec", &id, "ls", "/"]).contains("magic") {
        assert!(Instant::now() < deadline, "the container never made its links");
        std::thread::sleep(Duration::from_millis(100));
    }
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    for standalone in [false, true] {
        let resolve = |path: &str| {
            let mut args = vec!["resolve", "--socket", serve.socket.to_str().unwrap(), "-o", "json", &id, path];
            if standalone {
                args.push("--standalone");
            }
            output(ctwatch_bin().to_str().unwrap(), &args)
        };
        for path in ["/evil", "/etc/rel", "/../../../etc/shadow", "/a/b/up/a/b/up/etc/shadow", "etc/../../etc/shadow"] {
            let out = resolve(path);
            assert!(out.status.success(), "{path} (standalone: {standalone}): {out:?}");
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(answer["container_path"], "/etc/shadow", "{path}");
            let host_path = answer["host_path"].as_str().unwrap();
            assert!(host_path.starts_with("/proc/") && host_path.ends_with("/root/etc/shadow"), "{host_path}");
            let content = std::fs::read_to_string(host_path).unwrap();
            assert_eq!(content.trim(), "container-shadow", "{path} reached the container's file");
            assert_ne!(content, host_shadow);
        }
        // Magic links are refused; a missing file is "not found" (exit 1), never the host's.
        assert!(!resolve("/magic").status.success());
        assert_eq!(resolve("/no/such/file").status.code(), Some(1));
    }
    docker(&["rm", "-f", &id]);
}

/// A client whose HTTP/2 windows are the protocol's default 64 KiB (not
/// hyper's megabytes), so that a slow reader makes the agent queue.
async fn small_window_client(
    socket: &std::path::Path,
) -> ctwatch_api::pb::containers_client::ContainersClient<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://ctwatch.local")
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    ctwatch_api::pb::containers_client::ContainersClient::new(channel)
}

/// A `VmRSS:`/`VmHWM:` line of /proc/<pid>/status, in kB.
fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_slow_reader_with_a_huge_buffer_is_dropped_and_a_hang_up_is_not_a_drop() {
    require_root();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // A 64 KiB byte budget per client, so that a burst as small as the other tests' is enough.
    let serve = Serve::start(&["--no-enrich", "--client-buffer-bytes", "65536", "--metrics-addr", &metrics_addr]);
    let rt = runtime();
    let gauge = || metric(&scrape(&metrics_addr), "ctwatch_subscribers ").unwrap();
    let dropped = || metric(&scrape(&metrics_addr), "ctwatch_subscribers_dropped_total").unwrap();

    // A client that hangs up: the gauge goes down at once (no event needed), and it is no drop.
    let mut quitter = rt.block_on(serve.client());
    let stream = rt.block_on(async move { quitter.watch(pb::WatchRequest::default()).await.unwrap().into_inner() });
    assert_eq!(gauge(), 1.0);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge() != 0.0 {
        assert!(Instant::now() < deadline, "the gauge stayed at {} after the hang-up", gauge());
        std::thread::sleep(Duration::from_millis(20));
    }

    // A client asking for the largest buffer there is, reading one message every 20 ms
    // while a burst goes on, then as fast as it can until its stream ends.
    let mut slow = rt.block_on(small_window_client(&serve.socket));
    let mut stream = rt
        .block_on(async move {
            slow.watch(pb::WatchRequest { skip_current: true, buffer: u32::MAX, ..Default::default() }).await
        })
        .unwrap()
        .into_inner();
    let bursting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let bursting = bursting.clone();
        rt.spawn(async move {
            let mut read = 0u64;
            loop {
                if bursting.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                match tokio::time::timeout(Duration::from_secs(120), stream.message()).await {
                    Ok(Ok(Some(_))) => read += 1,
                    Ok(Ok(None)) => return (read, None),
                    Ok(Err(status)) => return (read, Some(status)),
                    Err(_) => panic!("the slow client's stream neither ended nor failed"),
                }
            }
        })
    };
    let rss_before = vm_kb(serve.pid(), "VmRSS:");

    // 1,500 containers created and removed: 3,000 events, far more than 64 KiB (and than
    // HTTP/2's 64 KiB window and the server's 64-message queue on the way).
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), "docker");
    let tag = unique("burst");
    for i in 0..1_500 {
        let dir = parent.join(hex_id(&format!("{tag}-{i}")));
        std::fs::create_dir(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
    bursting.store(false, std::sync::atomic::Ordering::Relaxed);
    let (read, status) = rt.block_on(reader).unwrap();
    let status = status.unwrap_or_else(|| panic!("the slow client's stream ended without a status after {read}"));
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("behind") && status.message().contains("subscribe again"), "{status}");
    assert!(read < 3_000, "dropped only after {read} messages");

    // Its queue was bounded: the agent's peak RSS stayed near where it was.
    let peak = vm_kb(serve.pid(), "VmHWM:");
    eprintln!("agent RSS before the burst {rss_before} kB, peak {peak} kB, slow client read {read}");
    assert!(peak.saturating_sub(rss_before) < 64 * 1024, "RSS grew from {rss_before} kB to a peak of {peak} kB");

    assert_eq!(dropped(), 1.0, "only the slow client was dropped, not the one that hung up");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge() != 0.0 {
        assert!(Instant::now() < deadline, "the gauge stayed at {} after the drop", gauge());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn read_file_reads_the_containers_file_and_dev_ino_catch_a_swapped_link() {
    require_root();
    let serve = Serve::start(&["--no-enrich"]);
    let rt = runtime();
    let client = rt.block_on(serve.client());
    let name = unique("readfile");
    let script = "mkdir -p /data; echo container-secret > /data/f; echo 0123456789 > /data/digits; \
                  busybox dd if=/dev/zero of=/data/big bs=1024 count=1536 2>/dev/null; busybox mkfifo /data/fifo; \
                  echo ready > /data/ready; sleep 300";
    let id = docker(&["run", "-d", "--name", &name, "local/busybox:1", "sh", "-c", script]);
    let _cleanup = Removal(id.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run("/usr/bin/docker", &["exec", &id, "ls", "/data"]).contains("ready") {
        assert!(Instant::now() < deadline, "the container never wrote its files");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id]).parse().unwrap();
    let for_calls = client.clone();
    let resolve = |path: &str| {
        let request = pb::ResolvePathRequest { container: id.clone(), path: path.into() };
        rt.block_on(for_calls.clone().resolve_path(request)).map(|r| r.into_inner())
    };
    let read = |path: &str, offset: u64, max_bytes: u64| {
        let request = pb::ReadFileRequest { container: id.clone(), path: path.into(), offset, max_bytes };
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), for_calls.clone().read_file(request)).await })
            .expect("ReadFile answered")
            .map(|r| r.into_inner())
    };

    // dev and ino are the file's: as fstat of the host path's descriptor and stat inside the container say.
    let resolved = resolve("/data/f").unwrap();
    let opened = std::fs::File::open(&resolved.host_path).unwrap();
    let meta = opened.metadata().unwrap();
    assert_eq!((resolved.dev, resolved.ino), (meta.dev(), meta.ino()));
    let inside = docker(&["exec", &id, "busybox", "stat", "-c", "%d %i", "/data/f"]);
    assert_eq!(inside, format!("{} {}", resolved.dev, resolved.ino));
    assert_eq!(resolved.host_path, format!("/proc/{pid}/root/data/f"));
    // The CLI prints them after the host path.
    let cli =
        run(ctwatch_bin().to_str().unwrap(), &["resolve", "--socket", serve.socket.to_str().unwrap(), &id, "/data/f"]);
    assert_eq!(cli, format!("{}\t{} {}", resolved.host_path, resolved.dev, resolved.ino));

    // ReadFile: the content, bounded, from an offset; capped at 1 MiB.
    let f = read("/data/f", 0, 0).unwrap();
    assert_eq!(
        (f.data.as_slice(), f.eof, f.dev, f.ino),
        (&b"container-secret\n"[..], true, resolved.dev, resolved.ino)
    );
    let digits = read("/data/digits", 3, 4).unwrap();
    assert_eq!((digits.data.as_slice(), digits.size, digits.eof), (&b"3456"[..], 11, false));
    let big = read("/data/big", 0, u64::MAX).unwrap();
    assert_eq!((big.data.len(), big.size, big.eof), (1 << 20, 1536 * 1024, false));
    let rest = read("/data/big", 1 << 20, 0).unwrap();
    assert_eq!((rest.data.len(), rest.eof), (512 * 1024, true));
    // A FIFO is refused at once (never opened, so nothing blocks); a missing file is NOT_FOUND.
    assert_eq!(read("/data/fifo", 0, 10).unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(read("/data/nothing", 0, 10).unwrap_err().code(), Code::NotFound);

    // The container swaps the file for a link to /etc/shadow.
    docker(&["exec", &id, "sh", "-c", "busybox rm /data/f && ln -s /etc/shadow /data/f"]);
    let host_shadow = std::fs::read("/etc/shadow").unwrap();
    // Opening the old host path by name now reaches a host file: dev/ino tell the client so.
    let swapped = std::fs::File::open(&resolved.host_path).unwrap().metadata().unwrap();
    assert_ne!((swapped.dev(), swapped.ino()), (resolved.dev, resolved.ino), "the check catches the swap");
    // ReadFile resolves inside the container: no /etc/shadow there, so NOT_FOUND, never the host's.
    let missing = read("/data/f", 0, 0).unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing}");
    // With a /etc/shadow of the container's own, that one.
    docker(&["exec", &id, "sh", "-c", "echo container-shadow > /etc/shadow"]);
    let shadow = read("/data/f", 0, 0).unwrap();
    assert_eq!((shadow.data.as_slice(), shadow.container_path.as_str()), (&b"container-shadow\n"[..], "/etc/shadow"));
    assert_ne!(shadow.data, host_shadow);
    let resolved_again = resolve("/data/f").unwrap();
    assert_eq!((resolved_again.dev, resolved_again.ino), (shadow.dev, shadow.ino));
    let host_meta = std::fs::metadata("/etc/shadow").unwrap();
    assert_ne!((shadow.dev, shadow.ino), (host_meta.dev(), host_meta.ino()));
    drop(opened);
}

/// Removes a Docker container when dropped (a failing test leaves none).
struct Removal(String);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/bin/docker").args(["rm", "-f", &self.0]).output();
    }
}
