#!/usr/bin/env node
// Streamable HTTP interop test: the official TypeScript MCP SDK's
// StreamableHTTPClientTransport chats with a stdio `mcp-chat` user (the same
// SDK's StdioClientTransport) through one broker.
//
// H connects to `mcp-chat serve --http` by URL; S launches `mcp-chat` over
// stdio. Both use the broker at MCP_CHAT_SOCKET, so they are matched with each
// other. The SDK drops notifications it has no schema for unless
// `client.fallbackNotificationHandler` takes them, which is how both clients
// receive `chatroom.found`, `message.received` and `partner.disconnected`.
//
// Flow: H enter_queue -> waiting #1; S enter_queue -> matched; H receives
// chatroom.found on its event stream; S -> H and H -> S messages; S leave_chat
// -> H receives partner.disconnected (reason "left"), each event also as a
// Claude Code channel notification. Then both queue again and H ends its HTTP
// session (DELETE): S receives partner.disconnected (reason "disconnected").
//
// Environment:
//   MCP_CHAT_URL     the HTTP endpoint, http://127.0.0.1:PORT/mcp (required)
//   MCP_CHAT_BIN     path to the `mcp-chat` binary, for the stdio user (required)
//   MCP_CHAT_SOCKET  broker socket path, the one the HTTP server uses (required)
//   MCP_CHAT_BROKER  broker binary for the auto-start (optional)
//
// Run it from this folder (ES modules resolve packages from the script's own
// folder). Exit status 0 when every check passed, 1 on a failed check, 2 on
// bad usage.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport, getDefaultEnvironment } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const WAIT_MS = 10_000;
const OVERALL_MS = 90_000;
const CHANNEL = "notifications/claude/channel";

class CheckFailed extends Error {}

function check(cond, what, detail) {
  if (!cond) {
    throw new CheckFailed(detail === undefined ? what : `${what}: ${JSON.stringify(detail)}`);
  }
}

function passed(what) {
  console.log(`PASS ${what}`);
}

/** Everything one client received, with order-independent waits. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.received = [];
    this.waiters = new Set();
  }

  take(notification) {
    this.received.push({ method: notification.method, params: notification.params ?? {} });
    for (const wake of this.waiters) wake();
  }

  async waitFor(method, predicate, what) {
    const find = () => this.received.find((n) => n.method === method && predicate(n.params));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const hit = find();
      if (hit) return hit.params;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new CheckFailed(
          `${this.name}: no ${method} ${what} within ${WAIT_MS / 1000}s; received ${JSON.stringify(this.received)}`,
        );
      }
      await new Promise((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          inbox.waiters.delete(done);
          resolve();
        }
        const inbox = this;
        this.waiters.add(done);
      });
    }
  }
}

// The room of the second entrant's enter_queue result: usually `matched`;
// on a loaded machine the broker may ping a quiet first waiter before
// matching it, so the result says `waiting` and the match follows, announced
// by chatroom.found to the first entrant.
async function matchedRoom(res, first, what, known = []) {
  if (res.status === "matched") return res.room_id;
  check(res.status === "waiting", what, res);
  const p = await first.waitFor("chatroom.found", (p) => !known.includes(p.room_id), `${what}: the delayed match`);
  return p.room_id;
}

function exactKeys(params, keys, what) {
  const got = Object.keys(params).sort();
  check(JSON.stringify(got) === JSON.stringify([...keys].sort()), `${what}: params keys`, got);
}

/** Structured content of a successful tool result, without piggy-backed events. */
function payload(result, what) {
  check(!result.isError, `${what}: isError`, result.content);
  const structured = result.structuredContent;
  check(structured && typeof structured === "object", `${what}: structured content`, result);
  const text = result.content?.find((c) => c.type === "text")?.text;
  check(JSON.stringify(JSON.parse(text)) === JSON.stringify(structured), `${what}: text JSON equals structured content`, result);
  const { events, ...rest } = structured;
  if (events !== undefined) check(Array.isArray(events), `${what}: events is a list`, events);
  return rest;
}

async function call(client, name, args, what) {
  return payload(await client.callTool({ name, arguments: args }), what);
}

function newClient(name, inbox) {
  const client = new Client({ name, version: "1.0.0" });
  client.fallbackNotificationHandler = async (notification) => inbox.take(notification);
  return client;
}

async function flow(url, bin, socket) {
  const env = { ...getDefaultEnvironment(), MCP_CHAT_SOCKET: socket };
  if (process.env.MCP_CHAT_BROKER) env.MCP_CHAT_BROKER = process.env.MCP_CHAT_BROKER;
  const inboxH = new Inbox("H");
  const inboxS = new Inbox("S");
  const h = newClient("interop-http", inboxH);
  const s = newClient("interop-stdio", inboxS);
  const httpTransport = new StreamableHTTPClientTransport(new URL(url));
  await h.connect(httpTransport);
  await s.connect(new StdioClientTransport({ command: bin, args: [], env, stderr: "inherit" }));
  try {
    check(httpTransport.sessionId, "H: the server assigned an Mcp-Session-Id", httpTransport.sessionId);
    check(h.getServerVersion()?.name === "mcp-chat", "H: serverInfo.name", h.getServerVersion());
    const experimental = h.getServerCapabilities()?.experimental ?? {};
    check(JSON.stringify(experimental["claude/channel"]) === "{}", "H: experimental['claude/channel']", experimental);
    check((h.getInstructions() ?? "").includes("untrusted"), "H: instructions", h.getInstructions());
    passed("H connected over Streamable HTTP: session id, serverInfo 'mcp-chat', instructions, claude/channel");

    // The SDK compiles each tool's output schema when it lists tools, and
    // warns through console.warn about formats JSON Schema does not define.
    const warnings = [];
    const warn = console.warn;
    console.warn = (...args) => {
      warnings.push(args.map(String).join(" "));
      warn(...args);
    };
    let tools;
    try {
      ({ tools } = await h.listTools());
      await call(h, "chat_status", {}, "H chat_status");
    } finally {
      console.warn = warn;
    }
    check(tools.length === 5, "H tools/list: five tools", tools.map((t) => t.name));
    for (const tool of tools) {
      check(typeof tool.title === "string" && tool.title.length > 0, `${tool.name}: title`, tool);
      const hints = tool.annotations ?? {};
      const readOnly = tool.name === "chat_status" || tool.name === "wait_for_events";
      check(hints.readOnlyHint === readOnly, `${tool.name}: readOnlyHint`, hints);
      check(hints.destructiveHint === false, `${tool.name}: destructiveHint`, hints);
      check(hints.openWorldHint === !readOnly, `${tool.name}: openWorldHint`, hints);
    }
    check(!warnings.some((w) => w.includes("unknown format")), "H tools/list: no unknown schema formats", warnings);
    passed("H tools/list: titles and annotations on every tool, schemas without unknown formats");

    let res = await call(h, "enter_queue", {}, "H enter_queue");
    check(JSON.stringify(res) === JSON.stringify({ status: "waiting", position: 1 }), "H enter_queue", res);
    res = await call(s, "enter_queue", {}, "S enter_queue");
    const room = await matchedRoom(res, inboxH, "S enter_queue");
    passed(`H (HTTP) waiting #1, S (stdio) matched with it in room ${room}`);

    for (const inbox of [inboxH, inboxS]) {
      const p = await inbox.waitFor("chatroom.found", (p) => p.room_id === room, `for room ${room}`);
      exactKeys(p, ["room_id", "common_interests", "partner_kind"], `${inbox.name} chatroom.found`);
    }
    passed("H received chatroom.found on its HTTP event stream (and S over stdio)");

    const fromS = "hello over stdio";
    await call(s, "send_message", { room_id: room, message: fromS }, "S send_message");
    const got = await inboxH.waitFor("message.received", (p) => p.room_id === room && p.message === fromS, `with ${fromS}`);
    exactKeys(got, ["room_id", "message", "untrusted"], "H message.received");
    check(got.untrusted === true, "H message.received: marked untrusted", got);
    passed("S -> H: H received message.received over HTTP");

    const fromH = "hello over HTTP";
    res = await call(h, "send_message", { room_id: room, message: fromH }, "H send_message");
    check(res.status === "sent", "H send_message", res);
    await inboxS.waitFor("message.received", (p) => p.room_id === room && p.message === fromH, `with ${fromH}`);
    passed("H -> S: S received message.received over stdio");

    await call(s, "leave_chat", { room_id: room }, "S leave_chat");
    const gone = await inboxH.waitFor("partner.disconnected", (p) => p.room_id === room, `for room ${room}`);
    exactKeys(gone, ["room_id", "reason", "undelivered", "unconfirmed"], "H partner.disconnected");
    check(gone.undelivered === 0, "H partner.disconnected: nothing undelivered", gone);
    check(gone.reason === "left", "H partner.disconnected: reason", gone);
    passed("S leave_chat -> H received partner.disconnected {reason: 'left'} over HTTP");

    for (const event of ["chatroom_found", "message_received", "partner_disconnected"]) {
      const p = await inboxH.waitFor(CHANNEL, (p) => p.meta?.room_id === room && p.meta?.event === event, `for ${event}`);
      check(typeof p.content === "string" && p.content.length > 0, `H ${CHANNEL} content`, p);
    }
    passed(`H received each event as ${CHANNEL} too`);

    // A second room, which H leaves by ending its HTTP session.
    res = await call(h, "enter_queue", {}, "H enter_queue again");
    check(res.status === "waiting", "H enter_queue again", res);
    res = await call(s, "enter_queue", {}, "S enter_queue again");
    const room2 = await matchedRoom(res, inboxH, "S enter_queue again", [room]);
    await inboxH.waitFor("chatroom.found", (p) => p.room_id === room2, `for room ${room2}`);
    await httpTransport.terminateSession();
    await h.close();
    const left = await inboxS.waitFor("partner.disconnected", (p) => p.room_id === room2, `for room ${room2}`);
    check(left.reason === "disconnected", "S partner.disconnected after H ended its session: reason", left);
    passed("H ended its HTTP session (DELETE) -> S received partner.disconnected {reason: 'disconnected'}");
  } finally {
    await h.close().catch(() => {});
    await s.close().catch(() => {});
  }
}

async function main() {
  const { MCP_CHAT_URL: url, MCP_CHAT_BIN: bin, MCP_CHAT_SOCKET: socket } = process.env;
  if (!url || !bin || !socket) {
    console.error("usage: MCP_CHAT_URL=http://127.0.0.1:PORT/mcp MCP_CHAT_BIN=/path/to/mcp-chat MCP_CHAT_SOCKET=<tmp>/sock/broker.sock node http_flow.mjs");
    return 2;
  }
  let timer;
  const overall = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`whole run exceeded ${OVERALL_MS / 1000}s`)), OVERALL_MS);
  });
  try {
    await Promise.race([flow(url, bin, socket), overall]);
  } catch (e) {
    console.error(e instanceof CheckFailed ? `FAIL ${e.message}` : `FAIL ${e?.stack ?? e}`);
    return 1;
  } finally {
    clearTimeout(timer);
  }
  console.log("http flow (TypeScript SDK): all checks passed");
  return 0;
}

process.exit(await main());
