# syntax=docker/dockerfile:1
#
# The project's image for those who build with Docker (or Podman, Buildah) elsewhere:
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t image-catalog:0.1.0 .
#
# The same content as the image of scripts/image: the release binary at
# /usr/local/bin/image-catalog (the entrypoint; no shell needed), the Debian libraries it
# links, the CA bundle, user and group 65532 (nonroot). scripts/image builds it without a
# Docker daemon and reproducibly; this file is not tested on the project's machines, which
# have no Docker engine.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_SUITE} AS build
# cmake for aws-lc-sys; OpenSSL and zlib headers for libgit2 (https) and libssh2.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin image-catalog \
    && install -D -m 0755 target/release/image-catalog /out/image-catalog

FROM docker.io/library/debian:${DEBIAN_SUITE}-slim
# The packages of what `ldd image-catalog` shows (libc6, libgcc-s1, libssl3, zlib1g), as
# scripts/image finds them, and the CA bundle; the user the Deployment runs as.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgcc-s1 libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY --from=build /out/image-catalog /usr/local/bin/image-catalog
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title=image-catalog \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION \
      org.opencontainers.image.licenses=Apache-2.0
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# The pod runs with a read-only root file system: the daemon writes only to /tmp, /spool
# and /git-cache, emptyDirs of the Deployment.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/image-catalog"]
