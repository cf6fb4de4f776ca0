# Portcullis container image: the `portcullis` binary on distroless, as a non-root user.
#   docker build -t ghcr.io/portcullis/portcullis:0.1.0 .
# Listeners default to an owner-only Unix socket (unix:/run/portcullis/grpc.sock: mount a
# volume there, shared with Envoy running as the same user) and 127.0.0.1:9901; the Helm
# chart passes --grpc-listen/--admin-listen, and `docker run` users pass them too (or
# PORTCULLIS_GRPC_LISTEN / PORTCULLIS_ADMIN_LISTEN). TCP needs server.grpc_tls (mutual TLS).

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, built against stub sources: this layer is reused until Cargo.toml or
# Cargo.lock change. (aws-lc-sys builds with the image's C compiler; no cmake needed.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs \
 && cargo build --release --locked \
 && rm -rf src benches

COPY src ./src
COPY benches ./benches
# The `grpc` transform's client is generated from Portcullis's own proto by build.rs.
COPY build.rs ./
COPY proto ./proto
# The store's migrations are compiled into the binary (sqlx::migrate!).
COPY migrations ./migrations
# COPY keeps the context's modification times, which may be older than the stubs' build:
# touch the crate roots so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs build.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/portcullis /out/portcullis

# glibc and CA certificates, no shell: nothing in the image but the binary runs.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/portcullis /portcullis
USER nonroot
EXPOSE 50051 9901
ENTRYPOINT ["/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/config/portcullis.yaml"]
