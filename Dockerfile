# srvdns container image: build with the Rust toolchain, run on a small non-root base.
#   docker build -t srvdns .
#   docker run -p 8600:8600/udp -p 8600:8600/tcp -p 8500:8500 -v srvdns-data:/var/lib/srvdns \
#     -e SRVDNS_TOKEN=… srvdns
# Inside the container srvdns listens on 0.0.0.0 (SRVDNS_* variables below); publish the
# ports you need. An HTTP API on a non-loopback address needs a token (SRVDNS_TOKEN or
# SRVDNS_TOKEN_FILE), or SRVDNS_INSECURE_HTTP=true if every client that can reach it is
# trusted: srvdns refuses to start otherwise. The registry is kept in the /var/lib/srvdns
# volume.

FROM rust:1.90-bookworm AS build
# protoc: for the `etcd` feature (etcd-client compiles protobuf). Harmless without it.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# FEATURES: cargo features to build with; release builds include `etcd` (--store etcd,
# docs/cluster.md). --build-arg FEATURES= builds without it.
ARG FEATURES="etcd"
RUN cargo build --release --locked --bin srvdns --features "${FEATURES}" \
    && install -D target/release/srvdns /out/srvdns \
    && mkdir -p /out/data /out/zones

# distroless/cc: glibc and CA roots (HTTPS health checks), no shell; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/srvdns /usr/local/bin/srvdns
COPY --from=build --chown=65532:65532 /out/data /var/lib/srvdns
COPY --from=build /out/zones /etc/srvdns/zones
ENV SRVDNS_DNS_LISTEN=0.0.0.0:8600 \
    SRVDNS_HTTP_LISTEN=0.0.0.0:8500 \
    SRVDNS_DATA_DIR=/var/lib/srvdns \
    SRVDNS_ZONES=/etc/srvdns/zones \
    SRVDNS_LOG_FORMAT=json
USER 65532:65532
VOLUME /var/lib/srvdns
EXPOSE 8600/udp 8600/tcp 8500/tcp
ENTRYPOINT ["/usr/local/bin/srvdns"]
CMD ["serve"]
