# edgeq node image: LiteFS + the edgeq server. Deploying it: docs/operations.md.
#
#   docker build -t edgeq .
#   # FUSE needs the device and CAP_SYS_ADMIN outside Fly.io (Fly Machines provide both):
#   docker run --device /dev/fuse --cap-add SYS_ADMIN -v edgeq-data:/var/lib/litefs ... edgeq
#
# The entrypoint is `litefs mount`: it reads /etc/litefs.yml (this repo's litefs.yml),
# mounts /litefs, joins the cluster, and starts `edgeq serve` from that file's `exec`.
#
# A single node without LiteFS (a plain SQLite file, runs as a non-root user):
#   docker build --target single -t edgeq-single .
#   docker run -p 50051:50051 -v edgeq-single:/data edgeq-single

# ---- build: a virtualenv with the client package and the server -----------------------
FROM python:3.12-slim-bookworm AS builder

# Wheels exist for every dependency (grpcio, apsw, protobuf) on this platform, so no
# compiler is needed. The venv is copied whole into the final image.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the two packages are built from: the client (clients/python, import name
# `edgeq`) and the server (repo-root pyproject.toml, package in server/edgeq_server;
# hatchling also reads README.md). Tests, benchmarks and docs stay out (.dockerignore).
COPY clients/python ./clients/python
COPY pyproject.toml README.md ./
COPY server ./server
# One resolver run over both local paths: the server's dependency "edgeq" is satisfied by
# ./clients/python and never looked up on a package index.
RUN pip install --no-cache-dir ./clients/python .

# ---- single: one node on a plain SQLite file, as a non-root user -----------------------
FROM python:3.12-slim-bookworm AS single
LABEL org.opencontainers.image.title="edgeq (single node)" \
      org.opencontainers.image.description="A durable gRPC job queue on SQLite: one node, no LiteFS" \
      org.opencontainers.image.source="https://github.com/edgeq/edgeq" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --uid 10001 --home-dir /data --create-home edgeq
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEQ_HOST=0.0.0.0 \
    EDGEQ_DB_PATH=/data/edgeq.db
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9464
# grpc.health.v1 through the CLI: exit 0 only when SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["edgeq", "--server", "127.0.0.1:50051", "--timeout", "4", "health"]
ENTRYPOINT ["edgeq", "serve"]

# ---- runtime (the default target): a LiteFS cluster node -----------------------------
FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="edgeq" \
      org.opencontainers.image.description="A durable gRPC job queue on SQLite, replicated by LiteFS" \
      org.opencontainers.image.source="https://github.com/edgeq/edgeq" \
      org.opencontainers.image.licenses="Apache-2.0"

# fuse3: LiteFS mounts through the setuid helper fusermount3 (and unmounts with it).
# ca-certificates: LiteFS talks to Fly's Consul (FLY_CONSUL_URL) over HTTPS.
# iproute2: `ss`, which edgeq's LiteFS watchdog uses to close LiteFS connections to a peer
# that went silent (needs root or CAP_NET_ADMIN; docs/operations.md, "Failover timing").
# Versions are not pinned: Debian's archive keeps only the current version of a package
# in bookworm (and bookworm-security), so a pinned version stops installing as soon as a
# point release or security update supersedes it (ca-certificates did exactly that). The
# python:3.12-slim-bookworm base already fixes the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates fuse3 iproute2 \
    && rm -rf /var/lib/apt/lists/*

# The LiteFS binary from its official image, same version as the tests build (v0.5.14).
COPY --from=flyio/litefs:0.5.14 /usr/local/bin/litefs /usr/local/bin/litefs
COPY --from=builder /opt/venv /opt/venv
# LiteFS looks for ./litefs.yml, then ~/litefs.yml, then /etc/litefs.yml; the working
# directory below holds no litefs.yml, so this one is used.
COPY litefs.yml /etc/litefs.yml

# `edgeq` on PATH for `fly ssh console` (edgeq stats, edgeq jobs ...); unbuffered output
# so log lines reach Fly's log stream at once.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /

# 50051: gRPC (edgeq). 20202: LiteFS HTTP API, private network only. 9464: /metrics.
EXPOSE 50051 20202 9464
# Live while edgeq works (grpc.health.v1 "edgeq.live"; readiness by role is for the
# orchestrator: "" = ready, "edgeq.primary" = applies writes). Fly and Kubernetes use their
# own checks (fly.toml, deploy/kubernetes).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["edgeq", "--server", "127.0.0.1:50051", "--timeout", "4", "health", "--service", "edgeq.live"]

# No USER in this target (the `single` target above runs as a non-root user): a LiteFS node
# runs as root, on purpose. LiteFS must mount FUSE, which needs
# root (CAP_SYS_ADMIN and /dev/fuse; Fly's LiteFS docs say to run it as root). LiteFS
# v0.5.14 starts its `exec` child with its own user: the exec config has no user or
# uid setting (cmd/litefs/mount_linux.go), so edgeq runs as root as well. Running edgeq
# as another user would need a wrapper (su/setpriv) in litefs.yml plus
# `fuse.allow-other: true` so that user can see the mount; that is untested here.
ENTRYPOINT ["litefs", "mount"]
