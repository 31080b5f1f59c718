# Builds the `sluice` binary and ships it in a slim image with the example inputs.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
WORKDIR /app
COPY sluice.toml ./sluice.toml
COPY examples ./examples
COPY scripts/demo.sh ./scripts/demo.sh
EXPOSE 8080
ENTRYPOINT ["sluice"]
CMD ["up"]
