# syntax=docker/dockerfile:1
# The operator image: `docker build -t overseer .`
#
# Build stage: the workspace's pinned toolchain (rust-toolchain.toml: 1.95.0), a locked release
# build of the `overseer` binary only. TLS is rustls with ring (no OpenSSL), so the binary links
# only against glibc (libc, libm, libgcc_s), which distroless/cc provides; the Debian releases of
# the two stages match (bookworm / debian12).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p operator --bin overseer \
    && install -D -m 0755 target/release/overseer /out/overseer

# Runtime stage: no shell, no package manager, runs as the unprivileged `nonroot` user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/overseer-dev/overseer" \
      org.opencontainers.image.description="Overseer: Kubernetes operators that govern AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/overseer /overseer
USER nonroot:nonroot
# 8080 metrics and 8081 health (`overseer run`), 8181 the decision API (`overseer serve`).
EXPOSE 8080 8081 8181
ENTRYPOINT ["/overseer"]
CMD ["run"]
