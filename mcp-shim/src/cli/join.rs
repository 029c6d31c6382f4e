//! `mcp-chat join`: a person joins the same roulette as the agents, from a
//! terminal or a script (stdin may be a pipe).

use std::path::Path;
use std::time::Duration;

use mcp_chat_proto::RoomId;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::events::{ChatEvent, EventKind};
use crate::phase::Phase;
use crate::session::{CallError, ChatSession, Entered};
use crate::untrusted::reveal;

/// How often the waiting line is refreshed with the queue figures.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

const HELP: &str = "type a message and press Enter to send it; /next for a new partner, /leave to leave the chat, /quit to exit";

pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let session = ChatSession::new(socket.to_owned(), "mcp-chat join", None);
    say(&format!("mcp-chat {}: {HELP}", crate::VERSION));
    enter_queue(&session).await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    refresh.tick().await;
    let mut last_waiting_line = String::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if !handle_line(&session, line.trim_end_matches('\r')).await? {
                    break;
                }
            }
            arrived = session.events().wait_pending(Duration::from_secs(3600)) => {
                for event in arrived {
                    show_event(&event);
                }
            }
            _ = refresh.tick() => {
                if matches!(session.phase(), Phase::Waiting { .. }) {
                    let line = waiting_line(&session).await;
                    if line != last_waiting_line {
                        say(&line);
                        last_waiting_line = line;
                    }
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    leave_room(&session).await;
    say("bye");
    Ok(())
}

/// Acts on one typed line. `false` means quit.
async fn handle_line(session: &ChatSession, line: &str) -> anyhow::Result<bool> {
    match line.trim() {
        "" => {}
        "/quit" | "/exit" => return Ok(false),
        "/next" => {
            if matches!(session.phase(), Phase::Waiting { .. }) {
                say("already waiting for a partner");
            } else {
                leave_room(session).await;
                enter_queue(session).await?;
            }
        }
        "/leave" => match session.phase() {
            Phase::InRoom { .. } => {
                leave_room(session).await;
                say("you left the chat; /next to meet someone new, /quit to exit");
            }
            Phase::Waiting { .. } => say("you are waiting in the queue; /quit to stop"),
            Phase::Idle => say("you are not in a chat; /next to find a partner"),
        },
        "/help" => say(HELP),
        _ if line.starts_with('/') => say(&format!("unknown command {line:?}; {HELP}")),
        _ => match session.phase() {
            Phase::InRoom { room } => send(session, room, line).await,
            _ => say(
                "you are not in a chat yet; your message was not sent (/next to find a partner)",
            ),
        },
    }
    Ok(true)
}

async fn enter_queue(session: &ChatSession) -> anyhow::Result<()> {
    match session.enter_queue(Duration::ZERO).await {
        // The chatroom.found event that came with the match announces it.
        Ok(Entered::Matched { .. }) => {}
        Ok(Entered::Queued { .. }) => say(&waiting_line(session).await),
        Err(CallError::Broker { code, message, .. }) => {
            say(&format!("! {code}: {}", reveal(&message)));
        }
        Err(CallError::Session(e)) => return Err(e.into()),
        Err(e) => say(&format!("! {}", reveal(&e.to_string()))),
    }
    Ok(())
}

async fn waiting_line(session: &ChatSession) -> String {
    let status = session.status().await.ok();
    let phase = status.as_ref().map_or(session.phase(), |s| s.phase);
    let position = match phase {
        Phase::Waiting { position } => position,
        _ => 1,
    };
    match status.and_then(|s| s.broker) {
        Some(info) => format!(
            "waiting for a partner (position {position}, {} online)",
            info.sessions
        ),
        None => format!("waiting for a partner (position {position})"),
    }
}

async fn send(session: &ChatSession, room: RoomId, text: &str) {
    match session.send(room, text.to_owned()).await {
        Ok(()) => {}
        Err(CallError::Broker { code, message, .. }) => {
            say(&format!("! not sent ({code}): {}", reveal(&message)));
        }
        Err(e) => say(&format!("! not sent: {}", reveal(&e.to_string()))),
    }
}

/// Leaves the current room, if any, so the partner is told at once.
async fn leave_room(session: &ChatSession) {
    if let Phase::InRoom { room } = session.phase() {
        let _ = session.leave(room).await;
    }
}

fn show_event(event: &ChatEvent) {
    match event.kind {
        EventKind::ChatroomFound => say(&format!(
            "matched with a stranger (room {}). Say hi! Their words are theirs, not instructions.",
            event.room_id
        )),
        EventKind::MessageReceived => say(&format!(
            "stranger: {}",
            reveal(event.message.as_deref().unwrap_or_default())
        )),
        EventKind::PartnerDisconnected => say(&format!(
            "the stranger is gone ({}); /next to meet someone new, /quit to exit",
            event.reason.as_deref().unwrap_or("unknown")
        )),
    }
}

/// One timestamped line. Every line is whole, so a script can read it.
fn say(text: &str) {
    let now = chrono::Local::now().format("%H:%M:%S");
    println!("[{now}] {text}"); // stdout-ok
}
