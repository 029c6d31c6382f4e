#!/usr/bin/env node
// Round-trip latency of one `chat_status` call with the official TypeScript
// MCP SDK, over Streamable HTTP and over stdio, in the same run. Not a test:
// BENCHMARKS.md quotes its output. `mcp-chat-bench`'s http section measures
// the same with its own minimal client; this shows what the SDK's users see.
//
// It starts everything itself in a fresh temporary socket directory: a
// foreground broker, `mcp-chat serve --http 127.0.0.1:0`, and a stdio
// `mcp-chat`; and stops them at the end.
//
//   cd tests/interop/node && node http_latency.mjs ../../../target/release
//
// The argument is the directory holding `mcp-chat` and `mcp-chat-broker`.
// ROUNDS (default 1000) sets the calls measured per transport, after a tenth
// as many warm-up calls.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport, getDefaultEnvironment } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const binDir = process.argv[2];
if (!binDir) {
  console.error("usage: node http_latency.mjs BIN_DIR (holding mcp-chat and mcp-chat-broker)");
  process.exit(2);
}
const bin = resolve(binDir, "mcp-chat");
const brokerBin = resolve(binDir, "mcp-chat-broker");
const rounds = Number(process.env.ROUNDS ?? 1000);

const dir = mkdtempSync(join(tmpdir(), "mcp-chat-latency-"));
mkdirSync(join(dir, "sock"), { mode: 0o700 });
const socket = join(dir, "sock", "broker.sock");
const env = { ...process.env, MCP_CHAT_SOCKET: socket, MCP_CHAT_BROKER: brokerBin };
delete env.MCP_CHAT_TOKEN;
delete env.MCP_CHAT_HTTP_TOKEN;
const children = [];

/**
 * Stops the children newest first, each before the next: the HTTP server
 * before the broker, or its sessions would start a new broker when theirs
 * went away. Then removes the directory.
 */
async function cleanUp() {
  for (const child of children.reverse()) {
    await new Promise((done) => {
      if (child.exitCode !== null || child.signalCode !== null) return done();
      child.once("exit", done);
      child.kill();
    });
  }
  rmSync(dir, { recursive: true, force: true });
}

/** Spawns `command` and resolves with the first stderr line matching `pattern`. */
function startAndWait(command, args, pattern) {
  const child = spawn(command, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  children.push(child);
  const lines = createInterface({ input: child.stderr });
  return new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command}: no line matching ${pattern}`)), 10_000);
    lines.on("line", (line) => {
      const match = line.match(pattern);
      if (match) {
        clearTimeout(timer);
        resolveLine(match);
      }
    });
    child.on("exit", (code) => reject(new Error(`${command} exited (${code})`)));
  });
}

try {
  await startAndWait(brokerBin, ["--foreground", "--socket", socket, "--idle-exit", "0"], /broker listening/);
  const [, url] = await startAndWait(bin, ["serve", "--http", "127.0.0.1:0"], /serving MCP over HTTP at (\S+)/);

  async function measure(name, transport) {
    const client = new Client({ name: `latency-${name}`, version: "0" });
    await client.connect(transport);
    const samples = [];
    for (let i = 0; i < rounds + rounds / 10; i++) {
      const start = process.hrtime.bigint();
      const result = await client.callTool({ name: "chat_status", arguments: {} });
      const elapsed = Number(process.hrtime.bigint() - start) / 1e6;
      if (result.isError) throw new Error(`${name}: chat_status failed: ${JSON.stringify(result)}`);
      if (i >= rounds / 10) samples.push(elapsed);
    }
    await client.close();
    samples.sort((a, b) => a - b);
    const at = (q) => samples[Math.min(samples.length - 1, Math.ceil(q * samples.length) - 1)];
    return { p50: at(0.5), p99: at(0.99) };
  }

  const stdio = await measure(
    "stdio",
    new StdioClientTransport({
      command: bin,
      env: { ...getDefaultEnvironment(), MCP_CHAT_SOCKET: socket, MCP_CHAT_BROKER: brokerBin },
      stderr: "inherit",
    }),
  );
  const http = await measure("http", new StreamableHTTPClientTransport(new URL(url)));
  const ratio = http.p50 / stdio.p50;
  console.log(`TypeScript SDK chat_status round trip, ${rounds} calls each:`);
  console.log(`  stdio p50 ${stdio.p50.toFixed(3)} ms, p99 ${stdio.p99.toFixed(3)} ms`);
  console.log(`  HTTP  p50 ${http.p50.toFixed(3)} ms, p99 ${http.p99.toFixed(3)} ms`);
  console.log(`  HTTP / stdio at p50: ${ratio.toFixed(2)}x (target <= 6x): ${ratio <= 6 ? "met" : "MISSED"}`);
} finally {
  await cleanUp();
}
