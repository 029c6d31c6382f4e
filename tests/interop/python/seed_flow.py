#!/usr/bin/env python3
"""Seed-flow interop test: two `mcp-chat` servers driven by the official Python MCP SDK.

Connects with the initialize handshake (`mode="legacy"`: the SDK's default mode now
finds MCP 2026-07-28 on `server/discover` and takes it, and that revision has no custom
notifications; see modern_flow.py) and receives the server's custom notifications through a
`ClientExtension` with one `NotificationBinding` per method.

Flow: A enter_queue -> waiting #1; B enter_queue -> matched; both get
`chatroom.found`; A -> B and B -> A messages arrive as `message.received`;
A leave_chat -> B gets `partner.disconnected` (reason "left"). Each event is also
expected as `notifications/claude/channel`.

The SDK may hand over near-simultaneous notifications out of wire order, so every
wait looks for a matching notification among everything received so far rather
than assuming the next one is it.

Environment:
  MCP_CHAT_BIN     path to the `mcp-chat` binary (required)
  MCP_CHAT_SOCKET  broker socket path, e.g. <fresh tmp dir>/sock/broker.sock (required)
  MCP_CHAT_BROKER  broker binary for the auto-start (optional; default: next to mcp-chat)
  MCP_CHAT_SOCKET_B  a second broker's socket for client B (optional): two brokers
                   federated over NATS, started beforehand (tests/federation.rs)

Exit status 0 when every check passed, 1 on a failed check, 2 on bad usage.
A broker auto-started during the run (pid in `<socket stem>.lock` beside the
socket) is sent SIGTERM at exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mcp.client import Client, ClientExtension, NotificationBinding
from mcp.client.stdio import StdioServerParameters

OVERALL_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 15.0


class CheckFailed(Exception):
    """A contract check failed; the message says which and why."""


def check(cond: bool, what: str, detail: Any = None) -> None:
    if not cond:
        msg = what if detail is None else f"{what}: {detail!r}"
        raise CheckFailed(msg)


def passed(what: str) -> None:
    print(f"PASS {what}", flush=True)


# --- notification param models ---------------------------------------------------------
# extra="allow" so an unexpected key reaches us (and fails the exact-keys check loudly)
# instead of being dropped by the SDK as a validation failure.


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatroomFound(_Params):
    room_id: str
    common_interests: list[str]
    partner_kind: str | None = None

# Across two brokers of a realm the same flow holds: the realm carries each
# waiter's profile, so the match names the partner's kind there too.
ACROSS_BROKERS = bool(os.environ.get("MCP_CHAT_SOCKET_B"))
FOUND_KEYS = {"room_id", "common_interests", "partner_kind"}
PARTNER_KIND = "agent"


class MessageReceived(_Params):
    room_id: str
    message: str


class PartnerDisconnected(_Params):
    room_id: str
    reason: str


class ChannelMeta(_Params):
    room_id: str
    event: str


class ClaudeChannel(_Params):
    content: str
    meta: ChannelMeta


SEED_METHODS: dict[str, type[_Params]] = {
    "chatroom.found": ChatroomFound,
    "message.received": MessageReceived,
    "partner.disconnected": PartnerDisconnected,
}
CHANNEL_METHOD = "notifications/claude/channel"


class Inbox:
    """Everything one client received, per method, with order-independent waits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: dict[str, list[_Params]] = {}
        self.changed = asyncio.Condition()

    def handler(self, method: str) -> Callable[[_Params], Awaitable[None]]:
        async def on_notification(params: _Params) -> None:
            async with self.changed:
                self.received.setdefault(method, []).append(params)
                self.changed.notify_all()

        return on_notification

    async def wait_for(
        self, method: str, predicate: Callable[[Any], bool], what: str, timeout: float = WAIT_TIMEOUT_S
    ) -> Any:
        def find() -> Any:
            return next((p for p in self.received.get(method, []) if predicate(p)), None)

        try:
            async with asyncio.timeout(timeout):
                async with self.changed:
                    while (hit := find()) is None:
                        await self.changed.wait()
                    return hit
        except TimeoutError:
            got = {m: [p.model_dump() for p in ps] for m, ps in self.received.items()}
            raise CheckFailed(
                f"{self.name}: no {method!r} notification {what} within {timeout:.0f}s; received so far: {got}"
            ) from None


class ChatNotifications(ClientExtension):
    identifier = "dev.mcp-chat/seed-interop"

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def notifications(self) -> Sequence[NotificationBinding[Any]]:
        bindings: list[NotificationBinding[Any]] = [
            NotificationBinding(method=m, params_type=model, handler=self.inbox.handler(m))
            for m, model in SEED_METHODS.items()
        ]
        bindings.append(
            NotificationBinding(method=CHANNEL_METHOD, params_type=ClaudeChannel, handler=self.inbox.handler(CHANNEL_METHOD))
        )
        return bindings


# --- helpers -------------------------------------------------------------------------------


async def matched_room(res: dict[str, Any], first: "Inbox", what: str, known: tuple[str, ...] = ()) -> str:
    """The room of the second entrant's enter_queue result. Usually it says
    `matched`; on a loaded machine the broker may ping a quiet first waiter
    before matching it, so the result says `waiting` and the match follows,
    announced by chatroom.found to the first entrant (`first`)."""
    if res.get("status") == "matched":
        check(set(res) == {"status"} | FOUND_KEYS, what, res)
        return res["room_id"]
    check(res.get("status") == "waiting", what, res)
    p = await first.wait_for("chatroom.found", lambda p: p.room_id not in known, f"{what}: the delayed match")
    return p.room_id


def exact_keys(params: _Params, keys: set[str], what: str) -> None:
    wire = set(params.model_dump(exclude_unset=True).keys())
    check(wire == keys, f"{what}: params keys must be exactly {sorted(keys)}", sorted(wire))


def tool_payload(result: Any, tool: str) -> dict[str, Any]:
    """Structured content of a successful tool result, cross-checked against its text JSON."""
    check(not result.is_error, f"{tool}: is_error", [getattr(c, "text", c) for c in result.content])
    sc = result.structured_content
    check(isinstance(sc, dict), f"{tool}: result must carry structured content (dict)", sc)
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    check(len(texts) >= 1, f"{tool}: result must carry a text content block", result.content)
    try:
        text_json = json.loads(texts[0])
    except json.JSONDecodeError as e:
        raise CheckFailed(f"{tool}: text content is not JSON ({e}): {texts[0]!r}") from None
    check(text_json == sc, f"{tool}: text JSON must equal structured content", {"text": text_json, "structured": sc})
    return sc


def without_events(payload: dict[str, Any], tool: str) -> dict[str, Any]:
    """Drop the optional piggy-backed `events` list (checked for shape only)."""
    out = dict(payload)
    events = out.pop("events", None)
    if events is not None:
        check(isinstance(events, list), f"{tool}: `events` must be a list", events)
        for ev in events:
            check(
                isinstance(ev, dict) and {"seq", "type", "room_id"} <= set(ev),
                f"{tool}: each event needs seq/type/room_id",
                ev,
            )
    return out


async def call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    return await client.call_tool(tool, args, read_timeout_seconds=CALL_TIMEOUT_S)


def check_handshake(client: Client, name: str) -> None:
    session = client.session
    check(
        session.initialize_result is not None,
        f"{name}: mode='legacy' should have used initialize",
        {"protocol_version": client.protocol_version},
    )
    info = client.server_info
    check(info is not None and info.name == "mcp-chat", f"{name}: serverInfo.name", info)
    check(client.protocol_version == "2025-11-25", f"{name}: protocol version", client.protocol_version)
    exp = client.server_capabilities.experimental or {}
    check(exp.get("claude/channel") == {}, f"{name}: capabilities.experimental['claude/channel'] == {{}}", exp)
    check(bool(client.instructions), f"{name}: instructions must be non-empty", client.instructions)


async def expect_channel(inbox: Inbox, room_id: str, event: str) -> None:
    p = await inbox.wait_for(
        CHANNEL_METHOD,
        lambda p: p.meta.room_id == room_id and p.meta.event == event,
        f"with meta.room_id={room_id!r}, meta.event={event!r}",
    )
    exact_keys(p, {"content", "meta"}, f"{inbox.name} {CHANNEL_METHOD}")
    exact_keys(p.meta, {"room_id", "event"}, f"{inbox.name} {CHANNEL_METHOD} meta")
    check(bool(p.content), f"{inbox.name} {CHANNEL_METHOD}: content must be non-empty", p.content)


# --- the flow ---------------------------------------------------------------------------


async def seed_flow(bin_path: str, socket: str) -> None:
    env = {"MCP_CHAT_SOCKET": socket, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if broker := os.environ.get("MCP_CHAT_BROKER"):
        env["MCP_CHAT_BROKER"] = broker  # optional override of the broker binary the shim auto-starts
    params = StdioServerParameters(command=bin_path, args=[], env=env)
    params_b = params
    if socket_b := os.environ.get("MCP_CHAT_SOCKET_B"):
        params_b = StdioServerParameters(command=bin_path, args=[], env={**env, "MCP_CHAT_SOCKET": socket_b})
    inbox_a, inbox_b = Inbox("A"), Inbox("B")

    # The initialize era, where the seed's notifications live.
    client_a = Client(params, mode="legacy", extensions=[ChatNotifications(inbox_a)],
                      read_timeout_seconds=CALL_TIMEOUT_S)
    client_b = Client(params_b, mode="legacy", extensions=[ChatNotifications(inbox_b)],
                      read_timeout_seconds=CALL_TIMEOUT_S)

    async with client_a as a, client_b as b:
        check_handshake(a, "A")
        check_handshake(b, "B")
        passed("connect with initialize (mode='legacy'): protocol 2025-11-25, serverInfo.name "
               "'mcp-chat', instructions, experimental['claude/channel'] == {} (both clients)")

        # A enters first: waiting, position 1.
        res = without_events(tool_payload(await call(a, "enter_queue", {}), "A enter_queue"), "A enter_queue")
        check(res == {"status": "waiting", "position": 1}, "A enter_queue", res)
        passed("A enter_queue -> {status: waiting, position: 1} (structured content == text JSON)")

        # B enters: matched with a room id.
        res = without_events(tool_payload(await call(b, "enter_queue", {}), "B enter_queue"), "B enter_queue")
        room_id = await matched_room(res, inbox_a, "B enter_queue")
        try:
            uuid.UUID(room_id)
        except (ValueError, TypeError, AttributeError):
            raise CheckFailed(f"B enter_queue: room_id is not a UUID: {room_id!r}") from None
        passed(f"B enter_queue -> {{status: matched, room_id: {room_id}}}")

        # Both receive chatroom.found for that room (in whatever order the SDK hands them over).
        for inbox in (inbox_a, inbox_b):
            p = await inbox.wait_for("chatroom.found", lambda p: p.room_id == room_id, f"for room {room_id}")
            exact_keys(p, FOUND_KEYS, f"{inbox.name} chatroom.found")
            check(p.common_interests == [] and p.partner_kind == PARTNER_KIND, f"{inbox.name} chatroom.found", p)
        passed(f"A and B both received chatroom.found {{room_id, common_interests: [], partner_kind: {PARTNER_KIND}}}")

        # A -> B.
        msg_a = "hello from A"
        res = without_events(
            tool_payload(await call(a, "send_message", {"room_id": room_id, "message": msg_a}), "A send_message"),
            "A send_message",
        )
        check(res == {"status": "sent"}, "A send_message", res)
        p = await inbox_b.wait_for(
            "message.received", lambda p: p.room_id == room_id and p.message == msg_a, f"with message {msg_a!r}"
        )
        exact_keys(p, {"room_id", "message", "untrusted"}, "B message.received")
        passed(f"A send_message -> sent; B received message.received {{room_id, message: {msg_a!r}}}")

        # B -> A.
        msg_b = "hello from B"
        res = without_events(
            tool_payload(await call(b, "send_message", {"room_id": room_id, "message": msg_b}), "B send_message"),
            "B send_message",
        )
        check(res == {"status": "sent"}, "B send_message", res)
        p = await inbox_a.wait_for(
            "message.received", lambda p: p.room_id == room_id and p.message == msg_b, f"with message {msg_b!r}"
        )
        exact_keys(p, {"room_id", "message", "untrusted"}, "A message.received")
        passed(f"B send_message -> sent; A received message.received {{room_id, message: {msg_b!r}}}")

        # A leaves: B is told the partner left.
        res = without_events(tool_payload(await call(a, "leave_chat", {"room_id": room_id}), "A leave_chat"), "A leave_chat")
        check(res == {"status": "left"}, "A leave_chat", res)
        p = await inbox_b.wait_for("partner.disconnected", lambda p: p.room_id == room_id, f"for room {room_id}")
        exact_keys(p, {"room_id", "reason", "undelivered", "unconfirmed"}, "B partner.disconnected")
        check(p.reason == "left", "B partner.disconnected: reason", p.reason)
        passed("A leave_chat -> left; B received partner.disconnected {room_id, reason: 'left'}")

        # A's own inbox must not claim its partner left, and nobody got notifications for other rooms.
        check(not inbox_a.received.get("partner.disconnected"), "A must not get partner.disconnected for its own leave",
              [x.model_dump() for x in inbox_a.received.get("partner.disconnected", [])])
        for inbox in (inbox_a, inbox_b):
            for method in SEED_METHODS:
                for x in inbox.received.get(method, []):
                    check(x.room_id == room_id, f"{inbox.name} {method}: unexpected room_id", x.model_dump())
        passed("no stray seed notifications (A got no partner.disconnected; every room_id matches)")

        # Claude Code channel mirror of each event.
        for event in ("chatroom_found", "message_received"):
            await expect_channel(inbox_a, room_id, event)
        for event in ("chatroom_found", "message_received", "partner_disconnected"):
            await expect_channel(inbox_b, room_id, event)
        passed(f"{CHANNEL_METHOD} {{content, meta: {{room_id, event}}}} mirrored every event on both sides")

        # Domain error shape.
        bogus = str(uuid.uuid4())
        r = await call(a, "send_message", {"room_id": bogus, "message": "anyone?"})
        check(r.is_error, "send_message to an unknown room must be isError", r)
        texts = [c.text for c in r.content if getattr(c, "type", None) == "text"]
        check(len(texts) >= 1, "unknown_room error: text content", r.content)
        err = json.loads(texts[0])
        check(isinstance(err, dict) and err.get("error") == "unknown_room" and isinstance(err.get("message"), str),
              "unknown_room error JSON", err)
        passed("send_message to an unknown room -> isError with {error: 'unknown_room', message}")

        await interests_and_blocking(a, b, inbox_a, inbox_b, known=(room_id,))


async def interests_and_blocking(a: Client, b: Client, inbox_a: Inbox, inbox_b: Inbox, known: tuple[str, ...]) -> None:
    """Interests, `meet`, argument errors and blocking, through the same SDK."""
    # B holds out for a shared interest; A shares "go" and meets agents only.
    res = without_events(
        tool_payload(await call(b, "enter_queue", {"interests": [" Chess", "GO"], "interest_wait_s": 50}), "B enter_queue"),
        "B enter_queue",
    )
    check(res == {"status": "waiting", "position": 1}, "B enter_queue with interests", res)
    res = without_events(
        tool_payload(await call(a, "enter_queue", {"interests": ["go"], "meet": "agents"}), "A enter_queue"),
        "A enter_queue",
    )
    room_id = await matched_room(res, inbox_b, "A enter_queue with interests", known)
    if res.get("status") == "matched":
        check(res["common_interests"] == ["go"] and res["partner_kind"] == "agent", "A matched", res)
    p = await inbox_b.wait_for("chatroom.found", lambda p: p.room_id == room_id, f"for room {room_id}")
    exact_keys(p, FOUND_KEYS, "B chatroom.found")
    check(p.common_interests == ["go"] and p.partner_kind == "agent", "B chatroom.found", p.model_dump())
    passed("interests: B (chess, go; waiting up to 50 s) met A (go) at once; both told common_interests ['go']")

    # Bad arguments are tool errors naming the mistake, never a silent truncation.
    for args, says in (
        ({"interests": ["a", "b", "c", "d", "e", "f"]}, "at most 5"),
        ({"interests": ["x" * 33]}, "at most 32"),
        ({"interests": ["c++"]}, "'+'"),
        ({"meet": "robots"}, "robots"),
        ({"interest_wait_s": 51}, "50-second"),
    ):
        r = await call(a, "enter_queue", args)
        check(r.is_error, f"enter_queue {args} must be isError", r)
        err = json.loads([c.text for c in r.content if getattr(c, "type", None) == "text"][0])
        check(err.get("error") == "invalid_arguments" and says in err.get("message", ""), f"enter_queue {args}", err)
    passed("too many interests, a long one, a bad character, an unknown meet, a long wait: invalid_arguments")

    # A blocks B: even as the only two waiting, they are not matched again.
    res = without_events(
        tool_payload(await call(a, "leave_chat", {"room_id": room_id, "block": True}), "A leave_chat"), "A leave_chat"
    )
    check(res == {"status": "left"}, "A leave_chat block", res)
    p = await inbox_b.wait_for("partner.disconnected", lambda p: p.room_id == room_id, f"for room {room_id}")
    check(p.reason == "left", "B is told only that A left", p.model_dump())
    res = without_events(tool_payload(await call(a, "enter_queue", {}), "A enter_queue"), "A enter_queue")
    check(res == {"status": "waiting", "position": 1}, "A enter_queue after blocking", res)
    res = without_events(tool_payload(await call(b, "enter_queue", {}), "B enter_queue"), "B enter_queue")
    check(res == {"status": "waiting", "position": 2}, "B, blocked, waits behind A", res)
    # Across brokers, A's broker counts the realm's waiters from its mirror
    # of the realm's queue, which follows B's entry a moment later.
    for _ in range(100):
        status = without_events(tool_payload(await call(a, "chat_status", {}), "A chat_status"), "A chat_status")
        if status.get("waiting") == 2 or not ACROSS_BROKERS:
            break
        await asyncio.sleep(0.05)
    check(status.get("state") == "waiting" and status.get("waiting") == 2, "both wait", status)
    passed("A leave_chat {block: true}; A and B, the only two waiting, are not matched again")


# --- broker cleanup ----------------------------------------------------------------------


def broker_lock_path(socket: str) -> Path:
    p = Path(socket)
    return p.with_name(f"{p.stem or 'broker'}.lock")


def live_broker_pid(socket: str) -> int | None:
    """Pid recorded in the broker lock file, if that process is alive and is a broker."""
    try:
        pid = int(broker_lock_path(socket).read_text().strip())
    except (OSError, ValueError):
        return None
    if not process_running(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"mcp-chat-broker" not in cmdline and os.fsencode(socket) not in cmdline:
            return None  # the lock file names a recycled pid
    except OSError:
        pass  # no /proc (macOS): trust the lock file
    return pid


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned broker is reaped by init, not by us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_broker(socket: str, preexisting: int | None) -> None:
    pid = live_broker_pid(socket)
    if pid is None:
        return
    if pid == preexisting:
        print(f"note: broker pid {pid} was running before this test; left alone", flush=True)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not process_running(pid):
            print(f"stopped auto-started broker pid {pid}", flush=True)
            return
        time.sleep(0.05)
    print(f"warning: broker pid {pid} still alive 5s after SIGTERM", file=sys.stderr, flush=True)


# --- main --------------------------------------------------------------------------------


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in flatten(sub)]
    return [exc]


def main() -> int:
    bin_path = os.environ.get("MCP_CHAT_BIN")
    socket = os.environ.get("MCP_CHAT_SOCKET")
    if not bin_path or not socket:
        print("usage: MCP_CHAT_BIN=/path/to/mcp-chat MCP_CHAT_SOCKET=<tmp>/sock/broker.sock seed_flow.py",
              file=sys.stderr)
        return 2
    if not os.access(bin_path, os.X_OK):
        print(f"FAIL MCP_CHAT_BIN is not executable: {bin_path}", file=sys.stderr)
        return 2

    preexisting = live_broker_pid(socket)

    async def bounded() -> None:
        async with asyncio.timeout(OVERALL_TIMEOUT_S):
            await seed_flow(bin_path, socket)

    try:
        asyncio.run(bounded())
    except BaseException as top:  # noqa: BLE001 - report everything, then clean up
        if isinstance(top, KeyboardInterrupt):
            stop_broker(socket, preexisting)
            raise
        failures = flatten(top)
        for exc in failures:
            if isinstance(exc, CheckFailed):
                print(f"FAIL {exc}", file=sys.stderr, flush=True)
            elif isinstance(exc, TimeoutError):
                print(f"FAIL whole run exceeded {OVERALL_TIMEOUT_S:.0f}s", file=sys.stderr, flush=True)
            else:
                print(f"FAIL {type(exc).__module__}.{type(exc).__qualname__}: {exc}", file=sys.stderr, flush=True)
        stop_broker(socket, preexisting)
        return 1
    stop_broker(socket, preexisting)
    print("seed flow: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
