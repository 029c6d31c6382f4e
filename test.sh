#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests against the real
# binaries, and the interop tests with clients this project did not write.
# Installs what the interop tests need into .venv and tests/interop on first run.
set -euo pipefail
cd "$(dirname "$0")"

# End-to-end tests start the binaries from the target directory.
cargo build --workspace --bins

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest (first run only)" >&2
  cargo install --locked cargo-nextest
fi

cargo nextest run --workspace --no-fail-fast "$@"
