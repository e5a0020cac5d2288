#!/usr/bin/env bash
# The whole test suite: lint, then every test on the io_uring path, then the library and CLI
# tests again on the positioned-I/O fallback path (FREIGHT_IO=fallback), so both engines pass
# the same tests. Tests mount tmpfs and switch users, so run as root (CI does).
set -euo pipefail
cd "$(dirname "$0")"

# Tools the tests use (the ingest benchmark's peer pipeline).
need=()
for tool in zstd tar; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
FREIGHT_IO=fallback cargo nextest run --locked --no-fail-fast -p freight-core -p freight-appliance
