#!/usr/bin/env python3
"""Streamable HTTP interop test: the official Python MCP SDK's HTTP client chats with a
stdio `mcp-chat` user (the same SDK's stdio client) through one broker.

H connects to `mcp-chat serve --http` by URL with the initialize handshake
(`mode="legacy"`; 2026-07-28 is tested by modern_flow.py); S launches `mcp-chat` over stdio. Both use
the broker at MCP_CHAT_SOCKET, so they are matched with each other.

Flow: H enter_queue -> waiting #1; S enter_queue -> matched; H receives `chatroom.found`
on its event stream; S -> H and H -> S messages (`message.received`); H also pulls its
events (`events` in results, `wait_for_events`) with seq 1, 2, ...; S leave_chat -> H
receives `partner.disconnected` (reason "left"); every event also arrives as a Claude Code
channel notification. Then both queue again, and H closes its session (the SDK sends HTTP
DELETE): S receives `partner.disconnected` (reason "disconnected").

Environment:
  MCP_CHAT_URL     the HTTP endpoint, http://127.0.0.1:PORT/mcp (required)
  MCP_CHAT_BIN     path to the `mcp-chat` binary, for the stdio user (required)
  MCP_CHAT_SOCKET  broker socket path, the one the HTTP server uses (required)
  MCP_CHAT_BROKER  broker binary for the auto-start (optional)

Exit status 0 when every check passed, 1 on a failed check, 2 on bad usage. The caller
owns the broker and the HTTP server.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

# The seed-flow script's checks and notification plumbing, shared as is.
from seed_flow import (
    CALL_TIMEOUT_S,
    CHANNEL_METHOD,
    ChatNotifications,
    FOUND_KEYS,
    CheckFailed,
    Inbox,
    call,
    check,
    check_handshake,
    exact_keys,
    matched_room,
    expect_channel,
    flatten,
    passed,
    tool_payload,
)

OVERALL_TIMEOUT_S = 90.0


class Puller:
    """H's events as pulled from tool results: each once, seq 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def take(self, payload: dict[str, Any], tool: str) -> dict[str, Any]:
        out = dict(payload)
        for event in out.pop("events", None) or []:
            expected = len(self.events) + 1
            check(event.get("seq") == expected, f"{tool}: pulled events run 1, 2, 3... (want seq {expected})", event)
            self.events.append(event)
        return out

    async def call(self, client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.take(tool_payload(await call(client, tool, args), f"H {tool}"), f"H {tool}")

    async def until(self, client: Client, kind: str, room_id: str) -> dict[str, Any]:
        for _ in range(5):
            hit = next((e for e in self.events if e["type"] == kind and e["room_id"] == room_id), None)
            if hit is not None:
                return hit
            res = await call(client, "wait_for_events", {"timeout_s": 10})
            payload = tool_payload(res, "H wait_for_events")
            events = payload.get("events")
            check(isinstance(events, list), "H wait_for_events: `events` list", payload)
            self.take({"events": events}, "H wait_for_events")
        raise CheckFailed(f"H: never pulled a {kind!r} event for room {room_id}; pulled {self.events}")


async def http_flow(url: str, bin_path: str, socket: str) -> None:
    env = {"MCP_CHAT_SOCKET": socket, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if broker := os.environ.get("MCP_CHAT_BROKER"):
        env["MCP_CHAT_BROKER"] = broker
    stdio = StdioServerParameters(command=bin_path, args=[], env=env)
    inbox_h, inbox_s = Inbox("H"), Inbox("S")
    pulled = Puller()

    async with Client(stdio, mode="legacy", extensions=[ChatNotifications(inbox_s)],
                      read_timeout_seconds=CALL_TIMEOUT_S) as s:
        async with Client(url, mode="legacy", extensions=[ChatNotifications(inbox_h)],
                          read_timeout_seconds=CALL_TIMEOUT_S) as h:
            check_handshake(h, "H (HTTP)")
            check_handshake(s, "S (stdio)")
            passed("HTTP client connected by URL with initialize (mode='legacy'): protocol "
                   "2025-11-25, serverInfo 'mcp-chat', instructions, experimental['claude/channel']")

            res = await pulled.call(h, "enter_queue", {})
            check(res == {"status": "waiting", "position": 1}, "H enter_queue", res)
            res = tool_payload(await call(s, "enter_queue", {}), "S enter_queue")
            res.pop("events", None)
            room = await matched_room(res, inbox_h, "S enter_queue")
            uuid.UUID(room)
            passed(f"H (HTTP) waiting #1, S (stdio) matched with it in room {room}")

            for inbox in (inbox_h, inbox_s):
                p = await inbox.wait_for("chatroom.found", lambda p: p.room_id == room, f"for room {room}")
                exact_keys(p, FOUND_KEYS, f"{inbox.name} chatroom.found")
            passed("H received chatroom.found on its HTTP event stream (and S over stdio)")

            msg_s = "hello over stdio"
            tool_payload(await call(s, "send_message", {"room_id": room, "message": msg_s}), "S send_message")
            p = await inbox_h.wait_for(
                "message.received", lambda p: p.room_id == room and p.message == msg_s, f"with {msg_s!r}"
            )
            exact_keys(p, {"room_id", "message", "untrusted"}, "H message.received")
            passed("S -> H: H received message.received over HTTP")

            msg_h = "hello over HTTP"
            res = await pulled.call(h, "send_message", {"room_id": room, "message": msg_h})
            check(res == {"status": "sent"}, "H send_message", res)
            await inbox_s.wait_for(
                "message.received", lambda p: p.room_id == room and p.message == msg_h, f"with {msg_h!r}"
            )
            passed("H -> S: S received message.received over stdio")

            found = await pulled.until(h, "chatroom.found", room)
            got = await pulled.until(h, "message.received", room)
            check(got.get("message") == msg_s, "H pulled message.received: message", got)
            check(found["seq"] < got["seq"], "H pulled events in order", pulled.events)
            passed("H pulled the same events (events field / wait_for_events) with contiguous seq")

            tool_payload(await call(s, "leave_chat", {"room_id": room}), "S leave_chat")
            p = await inbox_h.wait_for("partner.disconnected", lambda p: p.room_id == room, f"for room {room}")
            exact_keys(p, {"room_id", "reason", "undelivered", "unconfirmed"}, "H partner.disconnected")
            check(p.reason == "left", "H partner.disconnected: reason", p.reason)
            passed("S leave_chat -> H received partner.disconnected {reason: 'left'} over HTTP")

            for event in ("chatroom_found", "message_received", "partner_disconnected"):
                await expect_channel(inbox_h, room, event)
            passed(f"H received each event as {CHANNEL_METHOD} too")

            # A second room, which H leaves by closing its HTTP session.
            res = await pulled.call(h, "enter_queue", {})
            check(res == {"status": "waiting", "position": 1}, "H enter_queue again", res)
            res = tool_payload(await call(s, "enter_queue", {}), "S enter_queue again")
            res.pop("events", None)
            room2 = await matched_room(res, inbox_h, "S enter_queue again", known=(room,))
            await inbox_h.wait_for("chatroom.found", lambda p: p.room_id == room2, f"for room {room2}")
            await inbox_s.wait_for("chatroom.found", lambda p: p.room_id == room2, f"for room {room2}")
        # Leaving the `async with` closes the HTTP session: the SDK sends DELETE.
        p = await inbox_s.wait_for("partner.disconnected", lambda p: p.room_id == room2, f"for room {room2}")
        check(p.reason == "disconnected", "S partner.disconnected after H closed: reason", p.reason)
        passed("H closed its HTTP session (DELETE) -> S received partner.disconnected {reason: 'disconnected'}")


def main() -> int:
    url = os.environ.get("MCP_CHAT_URL")
    bin_path = os.environ.get("MCP_CHAT_BIN")
    socket = os.environ.get("MCP_CHAT_SOCKET")
    if not url or not bin_path or not socket:
        print("usage: MCP_CHAT_URL=http://127.0.0.1:PORT/mcp MCP_CHAT_BIN=/path/to/mcp-chat "
              "MCP_CHAT_SOCKET=<tmp>/sock/broker.sock http_flow.py", file=sys.stderr)
        return 2

    async def bounded() -> None:
        async with asyncio.timeout(OVERALL_TIMEOUT_S):
            await http_flow(url, bin_path, socket)

    try:
        asyncio.run(bounded())
    except BaseException as top:  # noqa: BLE001 - report everything
        if isinstance(top, KeyboardInterrupt):
            raise
        for exc in flatten(top):
            if isinstance(exc, CheckFailed):
                print(f"FAIL {exc}", file=sys.stderr, flush=True)
            elif isinstance(exc, TimeoutError):
                print(f"FAIL whole run exceeded {OVERALL_TIMEOUT_S:.0f}s", file=sys.stderr, flush=True)
            else:
                print(f"FAIL {type(exc).__module__}.{type(exc).__qualname__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("http flow: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
