"""A stock grpcio client of ctwatch's API, generated from proto/ at test time.

Usage: stock_client.py GENERATED_DIR SOCKET CGROUP_DIR CONTAINER_ID

Talks to the agent exactly as a user's script would: `grpc.insecure_channel`
on the unix socket with no channel option (so grpc C-core sends the socket's
percent-encoded path as :authority). Prints one JSON object with what it saw;
the Rust test asserts on it. CGROUP_DIR is made (and removed) while a Watch
is open: a docker-layout cgroup whose container ID is CONTAINER_ID.
"""

import json
import os
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402

from ctwatch.v1 import ctwatch_pb2, ctwatch_pb2_grpc  # noqa: E402

socket, cgroup_dir, container_id = sys.argv[2], sys.argv[3], sys.argv[4]
seen = {}

for target in ("unix://" + socket, "unix:" + socket):
    with grpc.insecure_channel(target) as channel:
        stub = ctwatch_pb2_grpc.ContainersStub(channel)
        listed = stub.List(ctwatch_pb2.ListRequest(), timeout=10)
        seen.setdefault("list_ok", []).append(target)
        seen["listed"] = len(listed.containers)

with grpc.insecure_channel("unix://" + socket) as channel:
    stub = ctwatch_pb2_grpc.ContainersStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    seen["health"] = {
        name or "(server)": health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        )
        for name in ("", "ctwatch.v1.Containers")
    }
    try:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        seen["unknown_service"] = "answered"
    except grpc.RpcError as e:
        seen["unknown_service"] = e.code().name

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for answer in reflection.ServerReflectionInfo(iter([request]), timeout=5):
        seen["services"] = sorted(s.name for s in answer.list_services_response.service)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="ctwatch.v1.Containers")
    for answer in reflection.ServerReflectionInfo(iter([request]), timeout=5):
        seen["descriptor_files"] = len(answer.file_descriptor_response.file_descriptor_proto)

    # Watch: the current state, `synced`, then a create and a remove made now.
    events = []
    stream = stub.Watch(ctwatch_pb2.WatchRequest(), timeout=30)
    for item in stream:
        kind = item.WhichOneof("item")
        if kind == "synced":
            os.makedirs(cgroup_dir)
            continue
        if kind != "event" or item.event.container.container_id != container_id:
            continue
        events.append(item.event.event)
        if item.event.event == "container_create":
            got = stub.Get(ctwatch_pb2.GetRequest(id=container_id[:16]), timeout=5)
            seen["get"] = {"container_id": got.container_id, "runtime": got.runtime}
            os.rmdir(cgroup_dir)
        if item.event.event == "container_remove":
            stream.cancel()
            break
    seen["events"] = events
    try:
        stub.Get(ctwatch_pb2.GetRequest(id="feedfacefeedface"), timeout=5)
    except grpc.RpcError as e:
        seen["missing"] = e.code().name

print(json.dumps(seen))
