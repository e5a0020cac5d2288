#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo-fuzz on the stable toolchain
# (RUSTC_BOOTSTRAP lets cargo-fuzz use the sanitizer flags). Exits non-zero on a crash or hang.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
# Every target of Cargo.toml, so a new one is never left out.
targets=$(cargo fuzz list)
for t in $targets; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048
done
