#!/usr/bin/env python3
"""Browser tests of the chat page (`mcp-chat web`), in Debian's Chromium, headless,
driven by Playwright for Python (launched with `executable_path`: Playwright's own
browser download is never used).

Usage: web_page.py SCENARIO, one of
  pages      two pages (a desktop and a phone-sized one) match and chat both ways, by
             keyboard and buttons; leaving on one side reaches the other; skip finds a
             new stranger; screenshots of the conversation are saved
  agent      a page and a stdio agent (official Python MCP SDK) chat; markup, `</script>`,
             ANSI and bidi escapes sent by the agent show as text and run nothing
  origin     a page on another origin cannot open the chat socket or log in; the raw
             handshake with a foreign Origin is refused with 403
  reconnect  the page says when the server is gone and when it is back
  token      a server with a token: the page trades the token in its address for a cookie;
             without it the page and the API are refused
  interests  two pages sharing an interest are matched and each is told the shared interest and
             that the other is a person; the waiting page shows the busiest interests; bad
             interests and too many are refused with a clear error, and the page does not look
  meet       a page that meets only agents is not matched with another page, and is matched
             with a stdio agent (official Python MCP SDK), who is told it met a person
  block      a page blocks its partner (Alt+B) and the partner's page says the stranger left;
             both look again, only the two of them waiting, and are not matched; a third page
             is matched with one of them

Environment:
  MCP_CHAT_BIN        the `mcp-chat` binary (required)
  MCP_CHAT_SOCKET     the broker socket, of a broker the caller runs (required)
  MCP_CHAT_CHROMIUM   the browser (default /usr/bin/chromium)
  MCP_CHAT_ARTIFACTS  where screenshots go (default: a temporary directory)

Every wait is on an event (a line on the page, a phase, a notification), bounded by
WAIT_S; nothing sleeps. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

WAIT_S = 15.0
CALL_TIMEOUT_S = 15.0


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str, detail: Any = None) -> None:
    if not cond:
        raise CheckFailed(what if detail is None else f"{what}: {detail!r}")


def passed(what: str) -> None:
    print(f"PASS {what}", flush=True)


# --- the server ------------------------------------------------------------------------


class Server:
    """`mcp-chat web --no-open`, running; `url` is the address it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    @classmethod
    async def start(cls, port: int = 0, token: str | None = None) -> "Server":
        env = dict(os.environ)
        env.pop("MCP_CHAT_TOKEN", None)
        if token is not None:
            env["MCP_CHAT_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            os.environ["MCP_CHAT_BIN"], "web", "--no-open", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, env=env,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while True:
                line = (await proc.stdout.readline()).decode()
                check(line != "", "mcp-chat web exited before printing its address")
                if "the chat page is at " in line:
                    return cls(proc, line.split("the chat page is at ", 1)[1].strip())

    @property
    def port(self) -> int:
        return int(self.target.split(":")[1])

    @property
    def target(self) -> str:
        """host:port"""
        return self.url.split("/")[2]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                await self.proc.wait()


# --- a page ----------------------------------------------------------------------------

# Runs before the page's own script: records anything that would mean markup from a
# stranger ran (an alert, a blocked inline handler).
WATCH = """
window.__alerts = [];
window.alert = (m) => { window.__alerts.push(String(m)); };
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective));
"""


class ChatPage:
    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.name = name
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        asyncio.ensure_future(dialog.dismiss())

    @classmethod
    async def open(cls, context: BrowserContext, url: str, name: str) -> "ChatPage":
        page = await context.new_page()
        await page.add_init_script(WATCH)
        chat = cls(page, name)
        await page.goto(url)
        await chat.connection("connected")
        return chat

    async def connection(self, state: str) -> None:
        await self.page.wait_for_selector(f'#connection[data-state="{state}"]', timeout=WAIT_S * 1000)

    async def phase(self, phase: str) -> None:
        await self.page.wait_for_selector(f'body[data-phase="{phase}"]', timeout=WAIT_S * 1000)

    async def line(self, kind: str, text: str, exact: bool = True) -> None:
        """Waits for a line of `kind` (you, stranger, event, notice) whose text is `text`
        (or contains it)."""
        try:
            await self.page.wait_for_function(
                """([kind, text, exact]) => [...document.querySelectorAll(`#log li.${kind} .text`)]
                     .some((e) => exact ? e.textContent === text : e.textContent.includes(text))""",
                arg=[kind, text, exact],
                timeout=WAIT_S * 1000,
            )
        except Exception:
            shown = await self.page.eval_on_selector_all("#log li", "els => els.map(e => e.className + ': ' + e.textContent)")
            raise CheckFailed(f"{self.name}: no {kind} line {text!r}; the page shows {shown}") from None

    async def figure(self, element: str, text: str) -> None:
        """Waits for the figure `#element` to read `text`."""
        try:
            await self.page.wait_for_function(
                "([id, text]) => document.getElementById(id).textContent === text",
                arg=[element, text], timeout=WAIT_S * 1000,
            )
        except Exception:
            shown = await self.page.text_content(f"#{element}")
            raise CheckFailed(f"{self.name}: #{element} never read {text!r}; it reads {shown!r}") from None

    async def find(self, interests: str = "", meet: str = "anyone") -> None:
        """Types the choices and presses Enter in the interests box."""
        await self.page.fill("#interests", interests)
        await self.page.select_option("#meet", meet)
        await self.page.press("#interests", "Enter")

    async def say(self, text: str) -> None:
        await self.page.fill("#text", text)
        await self.page.press("#text", "Enter")

    async def nothing_ran(self) -> None:
        ran = await self.page.evaluate("({alerts: window.__alerts, csp: window.__csp})")
        check(not self.dialogs and not ran["alerts"], f"{self.name}: a dialog opened", (self.dialogs, ran))
        check(not ran["csp"], f"{self.name}: markup tried to run and was blocked by the CSP", ran["csp"])
        count = await self.page.eval_on_selector_all("#log img, #log script, #log a, #log iframe", "els => els.length")
        check(count == 0, f"{self.name}: elements made from a stranger's text", count)


async def launch(playwright: Any) -> Browser:
    return await playwright.chromium.launch(
        executable_path=os.environ.get("MCP_CHAT_CHROMIUM", "/usr/bin/chromium"),
        headless=True,
        # Containers often run as root, where Chromium's sandbox cannot start.
        chromium_sandbox=False,
    )


def artifacts() -> Path:
    path = Path(os.environ.get("MCP_CHAT_ARTIFACTS") or tempfile.mkdtemp(prefix="mcp-chat-web-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- scenarios -------------------------------------------------------------------------


async def pages(browser: Browser) -> None:
    server = await Server.start()
    try:
        desk = await browser.new_context(viewport={"width": 900, "height": 640})
        phone = await browser.new_context(
            viewport={"width": 390, "height": 700}, device_scale_factor=2, is_mobile=True, has_touch=True
        )
        a = await ChatPage.open(desk, server.url, "A (desktop)")
        b = await ChatPage.open(phone, server.url, "B (phone)")
        passed("two pages load and connect")

        # A looks for a stranger from the keyboard: Enter in the empty box.
        await a.page.press("#text", "Enter")
        await a.phase("waiting")
        await a.page.wait_for_function("document.getElementById('waiting').textContent === '1'", timeout=WAIT_S * 1000)
        passed("A: Enter looks for a stranger; the page shows it waiting, and 1 waiting")
        await b.page.click("#find")
        await a.phase("chatting")
        await b.phase("chatting")
        for p in (a, b):
            await p.line("event", "You are chatting with a stranger", exact=False)
        passed("B: 'Find a stranger' matches it with A; both pages say so")

        await a.say("hello from A")
        await b.line("stranger", "hello from A")
        await a.line("you", "hello from A")
        await b.say("hi A! B here, on a phone")
        await a.line("stranger", "hi A! B here, on a phone")
        await b.line("you", "hi A! B here, on a phone")
        check(await a.page.input_value("#text") == "", "A: the box is emptied after sending")
        passed("A and B chat both ways (Enter sends); each sees its own lines as 'you'")

        long_line = ("Nice to meet you! I'm trying out mcp-chat from a desktop browser; the strangers here "
                     "are agents or people, and you can't tell which until you ask. Which are you?")
        await a.say(long_line)
        await b.line("stranger", long_line)
        await b.say("A person, on a train. An agent would say that too, though.")
        await a.line("stranger", "A person, on a train. An agent would say that too, though.")
        overflow = await b.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        check(overflow <= 0, "B: the phone-sized page scrolls sideways", overflow)
        out = artifacts()
        await b.page.screenshot(path=str(out / "conversation-phone.png"))
        await a.page.screenshot(path=str(out / "conversation-desktop.png"))
        passed(f"the phone-sized page fits its width; screenshots in {out}")

        # A's tab goes to the background: lines from B are counted in its title.
        await a.page.evaluate("""() => {
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
            document.dispatchEvent(new Event('visibilitychange'));
        }""")
        await b.say("are you still there?")
        await a.line("stranger", "are you still there?")
        check(await a.page.title() == "(1) mcp-chat", "A: the title counts the unseen line", await a.page.title())
        await a.page.evaluate("""() => {
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
            document.dispatchEvent(new Event('visibilitychange'));
        }""")
        check(await a.page.title() == "mcp-chat", "A: the count goes when the tab is looked at", await a.page.title())
        passed("a tab in the background counts the stranger's new lines in its title")

        # A leaves with Escape; B is told.
        started = time.monotonic()
        await a.page.keyboard.press("Escape")
        await b.line("event", "The stranger left", exact=False)
        took = time.monotonic() - started
        await a.line("event", "You left the chat; the stranger was told.")
        await a.phase("idle")
        await b.phase("idle")
        passed(f"A: Escape leaves; B's page says the stranger left, {took * 1000:.0f} ms after the key press")

        # Skip: matched again, then B skips to the next stranger.
        await b.page.press("#text", "Enter")
        await b.phase("waiting")
        await a.page.click("#find")
        await a.phase("chatting")
        await b.phase("chatting")
        await b.page.click("#next")
        await a.line("event", "The stranger left", exact=False)
        await b.phase("waiting")
        await a.phase("idle")
        # Escape while looking stops looking.
        await b.page.keyboard.press("Escape")
        await b.line("event", "You stopped looking for a stranger.")
        await b.phase("idle")
        passed("B: 'Next stranger' leaves A (who is told) and looks for someone new; Escape stops looking")

        for p in (a, b):
            await p.nothing_ran()
        await desk.close()
        await phone.close()
    finally:
        await server.stop()


HOSTILE = [
    ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
    ("</script><script>alert(2)</script>", "</script><script>alert(2)</script>"),
    ("\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J", "\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 \\x1b[2J"),
    ("abc\u202edcba \u200bzero-width\nnext line", "abc\\u{202e}dcba \\u{200b}zero-width\\nnext line"),
    ("[a link](javascript:alert(3)) **bold**", "[a link](javascript:alert(3)) **bold**"),
]


class Agent:
    """A stdio MCP agent, through the official Python SDK; events are pulled."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []

    async def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await self.client.call_tool(tool, args, read_timeout_seconds=CALL_TIMEOUT_S)
        sc = result.structured_content or {}
        check(not result.is_error, f"agent {tool}", sc)
        self.events.extend(sc.get("events", []))
        return sc

    async def event(self, what: str, wanted: Any) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            hit = next((e for e in self.events if wanted(e)), None)
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            check(left > 0, f"agent: no {what}", self.events)
            await self.call("wait_for_events", {"timeout_s": max(1, int(left))})


async def agent(browser: Browser) -> None:
    server = await Server.start()
    env = {"MCP_CHAT_SOCKET": os.environ["MCP_CHAT_SOCKET"], "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    params = StdioServerParameters(command=os.environ["MCP_CHAT_BIN"], args=[], env=env)
    try:
        context = await browser.new_context()
        p = await ChatPage.open(context, server.url, "page")
        await p.page.press("#text", "Enter")
        await p.phase("waiting")
        async with Client(params, read_timeout_seconds=CALL_TIMEOUT_S) as client:
            bot = Agent(client)
            entered = await bot.call("enter_queue", {})
            if entered.get("status") == "matched":
                room = entered["room_id"]
            else:
                room = (await bot.event("chatroom.found", lambda e: e["type"] == "chatroom.found"))["room_id"]
            await p.phase("chatting")
            passed("a page and a stdio agent (official Python SDK) are matched")

            await p.say("hello agent, from a page <b>not bold</b>")
            got = await bot.event("the page's message", lambda e: e["type"] == "message.received")
            check(got["message"] == "hello agent, from a page <b>not bold</b>", "agent: the page's text", got)
            await bot.call("send_message", {"room_id": room, "message": "hello page, from an agent"})
            await p.line("stranger", "hello page, from an agent")
            passed("page -> agent and agent -> page, text exact both ways")

            for sent, shown in HOSTILE:
                await bot.call("send_message", {"room_id": room, "message": sent})
                await p.line("stranger", shown)
            await p.nothing_ran()
            passed("markup, </script>, Markdown links, ANSI, bidi and zero-width characters from the agent "
                   "show as text (escapes visible) and run nothing: no dialog, no CSP report, no element")

            await bot.call("leave_chat", {"room_id": room})
            await p.line("event", "The stranger left", exact=False)
            await p.phase("idle")
            passed("the agent leaves; the page says so")
        await context.close()
    finally:
        await server.stop()


# Tries what a hostile page would: open the chat socket and log in. Run on another
# origin it must fail; run on the page's own origin (the control) it must succeed.
PROBE = """async (target) => {
  const ws = await new Promise((done) => {
    const s = new WebSocket(`ws://${target}/api/chat`);
    s.onopen = () => { done("open"); s.close(); };
    s.onclose = () => done("closed");
  });
  let login;
  try {
    const r = await fetch(`http://${target}/api/session`, {method: "POST", credentials: "include"});
    login = String(r.status);
  } catch (e) { login = "failed"; }
  return {ws, login};
}"""


class ForeignSite:
    """A real web server on another loopback port: a site the chat server must not trust
    (the browser sees a loopback page talking to loopback, so only our checks stand)."""

    def __enter__(self) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<!doctype html><title>another site</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def raw_handshake(
    host: str, port: int, origin: str | None, path: str = "/api/chat", method: str = "GET",
    extra: dict[str, str] | None = None,
) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    headers = {
        **(extra or {}),
        "Host": f"{host}:{port}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if origin is not None:
        headers["Origin"] = origin
    conn.request(method, path, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


async def origin(browser: Browser) -> None:
    server = await Server.start()
    try:
        target = server.url.split("/")[2]
        host, port = target.split(":")
        for foreign in ["http://evil.example", f"http://localhost:{port}", f"http://{host}:{int(port) + 1}", "null"]:
            status = raw_handshake(host, int(port), foreign)
            check(status == 403, f"a WebSocket handshake with Origin {foreign}", status)
            status = raw_handshake(host, int(port), foreign, "/api/session", "POST")
            check(status == 403, f"POST /api/session with Origin {foreign}", status)
        check(raw_handshake(host, int(port), None) == 403, "a handshake without Origin")
        check(raw_handshake(host, int(port), f"http://{target}") == 101, "the page's own origin opens the socket")
        passed("raw handshakes: every foreign, missing or opaque Origin gets 403; the page's own gets 101")

        # A page on another port of this machine, in a real browser: the browser sends its
        # Origin, and the server refuses it.
        with ForeignSite() as site:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(site)
            result = await page.evaluate(PROBE, target)
            # The socket has no CORS: only the server's Origin check closes it. A cross-origin
            # fetch hides the status from the page (no CORS headers), so the login shows as
            # failed; the raw requests above prove the server answers it 403.
            check(result == {"ws": "closed", "login": "failed"}, f"a page on {site} used the chat API", result)
            await context.close()
        passed(f"a page on another origin ({site}) cannot open the chat socket or log in")

        # The control: the same probe from the page's own origin succeeds.
        context = await browser.new_context()
        own = await ChatPage.open(context, server.url, "page")
        result = await own.page.evaluate(PROBE, target)
        check(result == {"ws": "open", "login": "204"}, "the probe from the page's own origin", result)
        await context.close()
        passed("the same probe from the page's own origin opens the socket and logs in")
    finally:
        await server.stop()


async def reconnect(browser: Browser) -> None:
    server = await Server.start()
    port = server.port
    context = await browser.new_context()
    p = await ChatPage.open(context, server.url, "page")
    await server.stop()
    await p.connection("lost")
    await p.line("notice", "Connection to the server lost", exact=False)
    passed("the page says the connection is lost when the server stops")
    server = await Server.start(port)
    try:
        await p.connection("connected")
        await p.line("event", "Connection back", exact=False)
        await p.page.press("#text", "Enter")
        await p.phase("waiting")
        passed("it reconnects by itself when the server is back, and works again")
    finally:
        await context.close()
        await server.stop()


async def token(browser: Browser) -> None:
    secret = "web-page-test-token-0123456789abcdef"
    server = await Server.start(token=secret)
    try:
        check(server.url.endswith(f"/#token={secret}"), "the printed address carries the token in its fragment",
              server.url)
        host, port = server.target.split(":")
        own = f"http://{server.target}"
        bearer = {"Authorization": f"Bearer {secret}"}
        wrong = {"Authorization": f"Bearer {secret}x"}
        check(raw_handshake(host, int(port), own, "/api/session", "POST", wrong) == 401, "a wrong token")
        check(raw_handshake(host, int(port), own, "/api/session", "POST") == 401, "no token")
        check(raw_handshake(host, int(port), own) == 401, "a socket without the cookie")
        check(raw_handshake(host, int(port), "http://evil.example", "/api/session", "POST", bearer) == 403,
              "the right token from another origin")
        passed("without the token (or its cookie) the API answers 401, and the token is no use from another origin")

        context = await browser.new_context()
        p = await ChatPage.open(context, server.url, "with the token")
        check("token" not in p.page.url, "the token is taken out of the address bar", p.page.url)
        await p.page.press("#text", "Enter")
        await p.phase("waiting")
        cookies = await context.cookies()
        check(len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
              and secret not in cookies[0]["value"], "the page's cookie", cookies)
        await p.page.reload()
        await p.connection("connected")
        passed("the page trades the token from its address for an HttpOnly, SameSite=Strict cookie (not the "
               "token), drops it from the address bar, and chats; a reload logs in with the cookie")

        bare = await browser.new_context()
        page = await bare.new_page()
        await page.goto(f"http://{server.target}/")
        await page.wait_for_selector('#connection[data-state="refused"]', timeout=WAIT_S * 1000)
        text = await page.text_content("#connection")
        check("token" in (text or ""), "the refusal says what to do", text)
        passed("the page opened without the token says it needs it, and does not chat")
        await context.close()
        await bare.close()
    finally:
        await server.stop()


async def interests(browser: Browser) -> None:
    server = await Server.start()
    try:
        context = await browser.new_context()
        a = await ChatPage.open(context, server.url, "A")
        b = await ChatPage.open(context, server.url, "B")

        await a.find("c++")
        await a.line("notice", 'Not looking yet: interest "c++" has the character \'+\'; use letters a-z, digits and -')
        check(await a.page.get_attribute("#interests", "aria-invalid") == "true", "A: the box is marked invalid")
        check(await a.page.input_value("#interests") == "c++", "A: what was typed is kept")
        await a.find("a, b, c, d, e, f")
        await a.line("notice", "Not looking yet: 6 interests given; at most 5 are allowed")
        await a.figure("phase", "Not chatting")
        check(await a.page.get_attribute("body", "data-phase") == "idle", "A: still idle after refusals")
        passed("a bad interest and six interests are refused with a clear error; nothing is cut, the page does "
               "not look, and the typed text stays")

        await a.find(" Chess, RUST")
        await a.phase("waiting")
        await a.figure("busiest", "chess 1 · rust 1")
        await a.figure("waiting", "1")
        passed("A looks with interests; its page shows 1 waiting and the busiest interests (chess 1 · rust 1)")

        await b.find("go, chess", "people")
        await a.phase("chatting")
        await b.phase("chatting")
        for p in (a, b):
            await p.line("event", "You are chatting with a stranger (a person; you share: chess). Say hi!")
        passed("B (meeting people, sharing chess) is matched with A; each page says: a person, you share chess")
        await context.close()
    finally:
        await server.stop()


async def meet(browser: Browser) -> None:
    server = await Server.start()
    env = {"MCP_CHAT_SOCKET": os.environ["MCP_CHAT_SOCKET"], "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    params = StdioServerParameters(command=os.environ["MCP_CHAT_BIN"], args=[], env=env)
    try:
        context = await browser.new_context()
        a = await ChatPage.open(context, server.url, "A (agents only)")
        b = await ChatPage.open(context, server.url, "B")
        await a.find(meet="agents")
        await a.phase("waiting")
        await b.find()
        await b.phase("waiting")
        # B's search was answered "waiting": the broker matches on entering, so the two
        # were not matched; both pages show the two of them waiting.
        await a.figure("waiting", "2")
        await b.figure("waiting", "2")
        passed("A (meeting agents only) and B (a page, meeting anyone) both wait: pages do not meet A")

        async with Client(params, read_timeout_seconds=CALL_TIMEOUT_S) as client:
            bot = Agent(client)
            # Both accept an agent; the earliest arrival, A, wins.
            entered = await bot.call("enter_queue", {"meet": "anyone"})
            # Matched at once, or (when the broker first pings A, quiet for two seconds on a
            # loaded machine) told waiting and matched a moment later: chatroom.found is what counts.
            found = await bot.event("chatroom.found", lambda e: e["type"] == "chatroom.found")
            check(entered.get("status") == "waiting" or entered.get("room_id") == found["room_id"],
                  "agent: matched with A (A waits first)", {"entered": entered, "found": found})
            check(found.get("partner_kind") == "person", "agent: its partner is a person", found)
            entered = {"room_id": found["room_id"]}
            await a.phase("chatting")
            await a.line("event", "You are chatting with a stranger (an AI agent). Say hi!")
            await b.figure("waiting", "1")
            await b.phase("waiting")
            passed("a stdio agent is matched with A, the page that meets agents (FIFO: A waited first); A's page "
                   "says an AI agent, the agent is told a person; B still waits")
            await bot.call("leave_chat", {"room_id": entered["room_id"]})
            await a.line("event", "The stranger left", exact=False)
        await context.close()
    finally:
        await server.stop()


async def block(browser: Browser) -> None:
    server = await Server.start()
    try:
        context = await browser.new_context()
        a = await ChatPage.open(context, server.url, "A")
        b = await ChatPage.open(context, server.url, "B")
        await a.find()
        await a.phase("waiting")
        await b.find()
        await a.phase("chatting")
        await b.phase("chatting")
        check(await a.page.is_visible("#block"), "A: the Block button shows while chatting")
        await a.page.keyboard.press("Alt+b")
        await a.line("event", "You left and blocked this stranger: you will not be matched again.")
        await b.line("event", "The stranger left. Press Enter to meet someone new.")
        await a.phase("idle")
        await b.phase("idle")
        check(not await a.page.is_visible("#block"), "A: no Block button when not chatting")
        passed("A blocks B with Alt+B: A's page says it blocked, B's page says the stranger left")

        await a.find()
        await a.phase("waiting")
        await b.find()
        # B's search was answered "waiting" although A waits: blocked pairs are skipped.
        await b.phase("waiting")
        await a.figure("waiting", "2")
        await b.figure("waiting", "2")
        passed("both look again, the only two waiting, and are not matched")

        c = await ChatPage.open(context, server.url, "C")
        await c.find()
        await c.phase("chatting")
        await a.phase("chatting")
        await b.figure("waiting", "1")
        await b.phase("waiting")
        passed("a third page is matched with A (first in line); B still waits")

        # The Block button (by click) works the same.
        await c.page.click("#block")
        await c.line("event", "You left and blocked this stranger: you will not be matched again.")
        await a.line("event", "The stranger left. Press Enter to meet someone new.")
        passed("the Block button blocks too")
        await context.close()
    finally:
        await server.stop()


SCENARIOS = {"pages": pages, "agent": agent, "origin": origin, "reconnect": reconnect, "token": token,
             "interests": interests, "meet": meet, "block": block}


async def main(name: str) -> None:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            await SCENARIOS[name](browser)
        finally:
            await browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS or "MCP_CHAT_BIN" not in os.environ:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(sys.argv[1]))
    except CheckFailed as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)
