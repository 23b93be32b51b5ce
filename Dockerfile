FROM rust:1.89-bookworm AS build
# libxml2 for XSD validation; bindgen makes its bindings with libclang.
RUN apt-get update && apt-get install -y --no-install-recommends libxml2-dev libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libxml2 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/amtsbote /usr/local/bin/amtsbote
COPY mappings /app/mappings
COPY examples /app/examples
WORKDIR /app
ENTRYPOINT ["amtsbote"]
CMD ["serve", "--config", "/app/amtsbote.yaml"]
