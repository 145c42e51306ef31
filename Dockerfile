# The ctwatch agent's image, built from this repository.
#
#   docker build -t ctwatch:0.1.0 .
#
# Stages: `build` compiles ctwatch with Rust on Debian bookworm; `runtime`
# (the default, last) is debian:bookworm-slim with the binary only. A binary
# built elsewhere (same glibc or older: Debian 12) can be packed without the
# Rust stage, for hosts that cannot pull the Rust image:
#
#   cargo build --release --bin ctwatch
#   docker build --target prebuilt -t ctwatch:0.1.0 .
#
# The base images are arguments, so a mirror or local images can stand in:
#   --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=...
# Written for the classic builder and BuildKit alike (no RUN --mount), so the
# `prebuilt` target needs nothing but the runtime image.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# The runtime image without the binary. util-linux (nsenter, for the
# DaemonSet's host cgroup namespace) is part of every Debian base image.
FROM ${RUNTIME_IMAGE} AS runtime-base
LABEL org.opencontainers.image.title="ctwatch" \
      org.opencontainers.image.description="Tracks every container on a Linux host" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ctwatch/ctwatch"
ENV CTWATCH_LOG=info
# root: cgroupfs, eBPF, fanotify and the runtimes' state need it (see SECURITY.md).
USER 0:0
ENTRYPOINT ["/usr/local/bin/ctwatch"]
CMD ["serve"]

# A binary built on the host: `--target prebuilt`, optionally
# `--build-arg PREBUILT=path/in/the/context/ctwatch`. Comes before the Rust
# stage so that the classic builder, which builds every stage up to the
# target, does not need the Rust image for it. For the same reason the
# classic builder passes through here on a default build, when there may be
# no binary: LICENSE keeps the COPY valid then, and the stage says so.
FROM runtime-base AS prebuilt
ARG PREBUILT=target/release/ctwatch
COPY LICENSE ${PREBUILT}* /usr/share/doc/ctwatch/
RUN if [ -f /usr/share/doc/ctwatch/ctwatch ]; then \
      mv /usr/share/doc/ctwatch/ctwatch /usr/local/bin/ctwatch && /usr/local/bin/ctwatch --version; \
    else \
      echo "no ${PREBUILT} in the build context: the prebuilt target needs one (cargo build --release)"; \
    fi

# Compile: Rust alone (the .proto files are compiled by protox, in Rust; the
# eBPF objects are committed, so no clang either).
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ctwatch \
 && install -D -m 0755 target/release/ctwatch /out/ctwatch

FROM runtime-base AS runtime
COPY LICENSE /usr/share/doc/ctwatch/
COPY --from=build /out/ctwatch /usr/local/bin/ctwatch
RUN ["/usr/local/bin/ctwatch", "--version"]
