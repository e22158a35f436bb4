# tapio-collector and tapio-server. Two images from one file:
#   docker build -t tapio-collector .                       (default: the collector)
#   docker build -t tapio-server --target server .
# then: docker run --privileged --network host --pid host tapio-collector --server host:9090
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# clang, libbpf-dev and linux-libc-dev: build.rs compiles the eBPF probes (without clang
# the build fails rather than leave them out).
# Versions are not pinned: the base image's suite pins them, and its security updates
# should flow in at each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libbpf-dev linux-libc-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Stripped (`install -s`): the symbols and line tables are most of an unstripped binary;
# docs/deploy.md gives both sizes.
RUN cargo build --release --locked --bins \
    && install -D -s -m 0755 target/release/tapio-collector /out/tapio-collector \
    && install -D -s -m 0755 target/release/tapio-server /out/tapio-server

FROM ${RUNTIME_IMAGE} AS runtime
# libsystemd0: the journald collector loads it at run time (sd-journal); ca-certificates:
# TLS to the server, OTLP, kubelet.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libsystemd0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/

FROM runtime AS server
RUN useradd --system --uid 10001 --home-dir /var/lib/tapio --create-home tapio
USER 10001
VOLUME ["/var/lib/tapio"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s CMD ["tapio-server", "stats", "--data-dir", "/var/lib/tapio"]
ENTRYPOINT ["tapio-server"]
CMD ["--listen", "0.0.0.0:9090", "--data-dir", "/var/lib/tapio"]

# The default image. It runs as root: loading eBPF probes, reading every process's /proc,
# the host journal and the system bus need it (docs/deploy.md lists each privilege).
FROM runtime AS collector
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s CMD ["tapio-collector", "health", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["tapio-collector", "--metrics-listen", "0.0.0.0:9464"]
CMD ["--server", "none", "--stdout", "--enable-ebpf"]
