//! `mcp-chat join`: a person joins the same roulette as the agents, from a
//! terminal or a script (stdin may be a pipe).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use mcp_chat_proto::matching::normalize_interests;
use mcp_chat_proto::{Entry, Kind, Meet, RoomId};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::events::{ChatEvent, EventKind};
use crate::phase::Phase;
use crate::session::{CallError, ChatSession, Entered};
use crate::untrusted::reveal;

/// How often the waiting line is refreshed with the queue figures.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

const HELP: &str = "type a message and press Enter to send it; /next for a new partner, /leave to leave the chat, /block to leave and never meet this partner again, /quit to exit";

/// Whom `join` looks for. You join as a person.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// Interests to share, comma-separated (up to 5; letters, digits, -):
    /// someone who shares one is met first.
    #[arg(long, value_delimiter = ',')]
    pub interests: Vec<String>,
    /// Seconds to hold out for a shared interest before meeting anyone
    /// (0 to 50; default 10).
    #[arg(long, value_name = "SECONDS")]
    pub interest_wait: Option<u64>,
    /// Whom to meet.
    #[arg(long, value_enum, default_value_t = MeetChoice::Anyone)]
    pub meet: MeetChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MeetChoice {
    Anyone,
    Agents,
    People,
}

impl JoinArgs {
    /// The queue options, checked as the broker will check them.
    fn entry(&self) -> anyhow::Result<Entry> {
        let entry = Entry {
            interests: normalize_interests(&self.interests)
                .map_err(|refusal| anyhow::anyhow!(refusal.message))
                .context("--interests")?,
            interest_wait_s: self.interest_wait,
            meet: match self.meet {
                MeetChoice::Anyone => Meet::Anyone,
                MeetChoice::Agents => Meet::Agents,
                MeetChoice::People => Meet::People,
            },
            kind: Kind::Person,
            block_id: crate::identity::installation_id(),
        };
        entry
            .checked()
            .map_err(|refusal| anyhow::anyhow!(refusal.message))?;
        Ok(entry)
    }
}

pub async fn run(socket: &Path, args: JoinArgs) -> anyhow::Result<()> {
    let entry = args.entry()?;
    let session = ChatSession::new(socket.to_owned(), "mcp-chat join", None);
    say(&format!("mcp-chat {}: {HELP}", crate::VERSION));
    enter_queue(&session, &entry).await?;

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
                if !handle_line(&session, &entry, line.trim_end_matches('\r')).await? {
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
async fn handle_line(session: &ChatSession, entry: &Entry, line: &str) -> anyhow::Result<bool> {
    match line.trim() {
        "" => {}
        "/quit" | "/exit" => return Ok(false),
        "/next" => {
            if matches!(session.phase(), Phase::Waiting { .. }) {
                say("already waiting for a partner");
            } else {
                leave_room(session).await;
                enter_queue(session, entry).await?;
            }
        }
        "/block" => match session.phase() {
            Phase::InRoom { room } => match session.leave_with(room, true).await {
                Ok(()) => say(
                    "you left and blocked this partner: you will not be matched again; /next to meet someone new",
                ),
                Err(e) => say(&format!("! not blocked: {}", reveal(&e.to_string()))),
            },
            _ => say("you are not in a chat; /block works while chatting"),
        },
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

async fn enter_queue(session: &ChatSession, entry: &Entry) -> anyhow::Result<()> {
    match session
        .enter_queue_with(Duration::ZERO, entry.clone())
        .await
    {
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
            "matched with a stranger{} (room {}){}. Say hi! Their words are theirs, not instructions.",
            match event.partner_kind.as_deref() {
                Some("agent") => ", an AI agent,",
                Some("person") => ", a person,",
                _ => "",
            },
            event.room_id,
            match event.common_interests.as_deref() {
                Some([]) | None => String::new(),
                Some(common) => format!("; you share: {}", common.join(", ")),
            }
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
