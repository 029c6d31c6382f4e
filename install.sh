#!/usr/bin/env bash
# Builds mcp-chat and mcp-chat-broker from this checkout, installs them with
# `cargo install`, registers mcp-chat with the MCP clients found here, and
# checks the result with `mcp-chat doctor`. Run it again at any time: it
# rebuilds, replaces the binaries, and registering twice changes nothing.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./install.sh [--prefix DIR] [--no-register]

Builds mcp-chat (the MCP server that clients launch) and mcp-chat-broker from
this checkout and installs both into one bin directory: DIR/bin with --prefix,
else cargo's own (usually ~/.cargo/bin). Never needs sudo.

Then it registers mcp-chat with Claude Desktop and Claude Code, where they are
installed (`mcp-chat register all`), and checks the setup (`mcp-chat doctor`).

Options:
  --prefix DIR    install into DIR/bin
  --no-register   leave every client's configuration alone
  -h, --help      show this help

Safe to run twice: the binaries are rebuilt and replaced, and registering
again changes nothing.
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
  warn "$*"
  exit 1
}

prefix=""
register=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix)
      if [[ $# -lt 2 || -z "$2" ]]; then
        warn "--prefix needs a directory"
        exit 2
      fi
      prefix="$2"
      shift 2
      ;;
    --prefix=*)
      prefix="${1#--prefix=}"
      if [[ -z "$prefix" ]]; then
        warn "--prefix needs a directory"
        exit 2
      fi
      shift
      ;;
    --no-register)
      register=0
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      warn "unknown option: $1"
      usage >&2
      exit 2
      ;;
  esac
done

# Everything is relative to this script, wherever it is run from.
src_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"

# Under sudo, cargo would build as root into root's home and the clients of
# root would be registered: neither is what anyone wants.
if [[ ${EUID:-$(id -u)} -eq 0 && -n "${SUDO_USER:-}" ]]; then
  die "do not run this with sudo: it installs into your own home (or --prefix DIR) as you"
fi

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
if ! command -v cargo >/dev/null 2>&1; then
  # Installed by rustup but not on this shell's PATH yet.
  if [[ -x "$cargo_home/bin/cargo" ]]; then
    PATH="$cargo_home/bin:$PATH"
    export PATH
  else
    cat >&2 <<'EOF'
install.sh: cargo (the Rust toolchain) was not found.
Install Rust from https://rustup.rs, open a new terminal (or run
`. "$HOME/.cargo/env"`), then run ./install.sh again.
EOF
    exit 1
  fi
fi

case "$(uname -s 2>/dev/null || true)" in
  MINGW* | MSYS* | CYGWIN*) exe=".exe" ;;
  *) exe="" ;;
esac

root_args=()
if [[ -n "$prefix" ]]; then
  mkdir -p -- "$prefix" || die "cannot create $prefix"
  prefix="$(cd -- "$prefix" && pwd -P)"
  root_args=(--root "$prefix")
  bin_dir="$prefix/bin"
else
  # Where `cargo install` puts binaries when not told otherwise.
  bin_dir="${CARGO_INSTALL_ROOT:-$cargo_home}/bin"
fi

# --force: a rebuild of the same version still replaces the binaries.
# ${root_args[@]+...}: an empty array under `set -u` in bash 3.2 (macOS).
for crate in broker mcp-shim; do
  say "==> cargo install --locked --force ${root_args[*]+${root_args[*]} }--path $crate"
  cargo install --locked --force ${root_args[@]+"${root_args[@]}"} --path "$src_dir/$crate"
done

mcp_chat="$bin_dir/mcp-chat$exe"
broker="$bin_dir/mcp-chat-broker$exe"
for bin in "$mcp_chat" "$broker"; do
  if [[ ! -x "$bin" ]]; then
    die "cargo install finished, but $bin is not there (is install.root set in a cargo config?); run again with --prefix DIR"
  fi
done

say ""
say "Installed into $bin_dir:"
say "  $mcp_chat"
say "  $broker"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *)
    say ""
    say "$bin_dir is not on your PATH. MCP clients do not need it (they are given"
    say "the full path, and mcp-chat finds mcp-chat-broker next to itself), but to"
    say "run these commands yourself, add this line to your shell's startup file:"
    say "  export PATH=\"$bin_dir:\$PATH\""
    ;;
esac

status=0
if [[ $register -eq 1 ]]; then
  say ""
  say "==> $mcp_chat register all"
  if ! "$mcp_chat" register all --command "$mcp_chat"; then
    warn "registering with the MCP clients failed (see above); fix that and run: $mcp_chat register all"
    status=1
  fi
else
  say ""
  say "Not registering (--no-register). Later: $mcp_chat register all"
fi

# The doctor's report is the last thing shown. Problems it finds are for the
# user to read; the install itself has succeeded.
say ""
say "==> $mcp_chat doctor"
if ! "$mcp_chat" doctor; then
  warn "mcp-chat doctor reported problems (see above)"
fi
exit "$status"
