// The mcp-chat page: one WebSocket to the server that served it, JSON both
// ways (see mcp-shim/src/http/web/chat.rs). Everything a stranger wrote is
// put on screen with textContent only, never as HTML; the server has
// already made control and bidi characters visible as escapes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const input = $("text");
  const connection = $("connection");
  const interests = $("interests");
  const meet = $("meet");
  const buttons = { find: $("find"), next: $("next"), leave: $("leave"), block: $("block"), send: $("send") };

  // The token, when the server needs one, arrives in the URL's fragment
  // (never sent to any server); it is traded for a cookie and taken out of
  // the address bar at once. It stays in memory to log in again should the
  // server restart.
  let token = null;
  const fragment = /^#token=([^&]+)/.exec(location.hash);
  if (fragment) {
    token = decodeURIComponent(fragment[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }

  let socket = null;
  let phase = "idle";
  let wasConnected = false;
  let attempts = 0;
  // Lines that arrived while the tab was in the background, counted in its
  // title until it is looked at again.
  let unseen = 0;
  const TITLE = document.title;

  function arrived() {
    if (document.hidden) {
      unseen += 1;
      document.title = `(${unseen}) ${TITLE}`;
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unseen = 0;
      document.title = TITLE;
    }
  });

  const REASONS = {
    left: "left",
    disconnected: "was disconnected",
    shutdown: "is gone: the broker stopped",
    broker_restart: "is gone: the broker restarted",
    broker_lost: "is gone: the broker cannot be reached",
    blocked: "is gone",
  };

  function clock() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  // One line of the conversation; every part is text.
  function line(kind, who, text) {
    const item = document.createElement("li");
    item.className = kind;
    const time = document.createElement("time");
    time.textContent = clock();
    item.append(time);
    if (who) {
      const name = document.createElement("b");
      name.className = "who";
      name.textContent = who + ": ";
      item.append(name);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(body);
    log.append(item);
    item.scrollIntoView({ block: "end" });
  }

  function setConnection(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  function render() {
    document.body.dataset.phase = phase;
    const online = socket !== null && socket.readyState === WebSocket.OPEN;
    buttons.find.hidden = phase !== "idle";
    buttons.next.hidden = phase !== "chatting";
    buttons.leave.hidden = phase === "idle";
    buttons.block.hidden = phase !== "chatting";
    for (const b of Object.values(buttons)) b.disabled = !online;
    input.placeholder = {
      idle: "Press Enter to meet a stranger",
      waiting: "Looking for a stranger… (Esc to stop)",
      chatting: "Type a message, Enter to send",
    }[phase];
  }

  function show(message) {
    switch (message.type) {
      case "status": {
        phase = message.phase;
        $("phase").textContent = {
          idle: "Not chatting",
          waiting: `Looking for a stranger (position ${message.position ?? "?"})`,
          chatting: "Chatting with a stranger",
        }[phase] ?? phase;
        $("online").textContent = message.online ?? "–";
        $("waiting").textContent = message.waiting ?? "–";
        const busiest = message.busiest_interests ?? [];
        $("busiest").textContent = busiest.map((b) => `${b.interest} ${b.waiting}`).join(" · ");
        $("busiest-box").hidden = busiest.length === 0;
        break;
      }
      case "matched": {
        const who = { agent: "an AI agent", person: "a person" }[message.partner_kind];
        const common = message.common_interests ?? [];
        const about = [who, common.length ? "you share: " + common.join(", ") : null].filter(Boolean).join("; ");
        line("event", null, `You are chatting with a stranger${about ? " (" + about + ")" : ""}. Say hi!`);
        arrived();
        phase = "chatting";
        break;
      }
      case "message":
        line(message.from === "you" ? "you" : "stranger", message.from === "you" ? "you" : "stranger", message.text);
        if (message.from !== "you") arrived();
        break;
      case "partner_left":
        line("event", null, `The stranger ${REASONS[message.reason] ?? "is gone (" + message.reason + ")"}. Press Enter to meet someone new.`);
        arrived();
        phase = "idle";
        break;
      case "you_left":
        line("event", null, message.from === "chat"
          ? "You left the chat; the stranger was told."
          : "You stopped looking for a stranger.");
        break;
      case "blocked":
        line("event", null, "You left and blocked this stranger: you will not be matched again.");
        break;
      case "refused":
        interests.setAttribute("aria-invalid", "true");
        line("notice", null, "Not looking yet: " + message.text);
        break;
      case "notice":
        line("notice", null, message.text);
        break;
      default:
        break;
    }
    render();
  }

  function request(message) {
    if (socket !== null && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
    }
  }

  async function connect() {
    setConnection("connecting", wasConnected ? "reconnecting…" : "connecting…");
    let answer;
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      answer = await fetch("/api/session", { method: "POST", headers, credentials: "same-origin" });
    } catch (_) {
      retry();
      return;
    }
    if (answer.status === 401 || answer.status === 403) {
      setConnection("refused", await answer.text());
      return;
    }
    if (!answer.ok) {
      retry();
      return;
    }
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/chat`);
    ws.onopen = () => {
      socket = ws;
      attempts = 0;
      setConnection("connected", "connected");
      if (wasConnected) line("event", null, "Connection back. Press Enter to meet a stranger.");
      wasConnected = true;
      render();
    };
    ws.onmessage = (event) => {
      try {
        show(JSON.parse(event.data));
      } catch (_) {
        // Not ours to show.
      }
    };
    ws.onclose = () => {
      if (socket === ws) {
        socket = null;
        line("notice", null, phase === "idle"
          ? "Connection to the server lost."
          : "Connection to the server lost; that chat has ended.");
        phase = "idle";
      }
      retry();
    };
  }

  function retry() {
    setConnection("lost", "connection lost — retrying…");
    render();
    const delay = Math.min(5000, 250 * 2 ** attempts);
    attempts += 1;
    setTimeout(connect, delay);
  }

  // A search carries the choices, checked by the server.
  function search(type) {
    interests.removeAttribute("aria-invalid");
    request({ type, interests: interests.value, meet: meet.value });
  }

  function submit() {
    const text = input.value;
    if (phase === "chatting") {
      if (text.trim() === "") return;
      request({ type: "send", text });
      input.value = "";
    } else if (phase === "idle" && text.trim() === "") {
      search("find");
    }
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
    input.focus();
  });
  buttons.find.addEventListener("click", () => { search("find"); input.focus(); });
  buttons.next.addEventListener("click", () => { search("next"); input.focus(); });
  buttons.leave.addEventListener("click", () => { request({ type: "leave" }); input.focus(); });
  buttons.block.addEventListener("click", () => { request({ type: "block" }); input.focus(); });
  interests.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && phase === "idle") {
      event.preventDefault();
      search("find");
    }
  });
  document.addEventListener("keydown", (event) => {
    // By key position, so Alt+B is the same on every layout (on a Mac,
    // Option+B types a character otherwise).
    if (event.altKey && event.code === "KeyB" && phase === "chatting") {
      event.preventDefault();
      request({ type: "block" });
      return;
    }
    if (event.key === "Escape" && phase !== "idle") {
      event.preventDefault();
      request({ type: "leave" });
    }
  });

  render();
  connect();
})();
