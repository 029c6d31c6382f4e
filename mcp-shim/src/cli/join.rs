//! `mcp-chat join`: a person joins the same roulette as the agents, from a
//! terminal or a script (stdin may be a pipe).
//!
//! In a terminal, a line editor keeps what you type on the bottom line and
//! prints everything else above it (see [`super::line_editor`]), with
//! history of your lines and your sent lines shown like the stranger's
//! (`[time] you: …`). From a pipe, plain lines in and out, as scripts and
//! tests expect.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use mcp_chat_proto::matching::normalize_interests;
use mcp_chat_proto::{Entry, Kind, Meet, RoomId};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::line_editor::{LineEditor, Read, Screen};
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
    let mut join = Join {
        entry: args.entry()?,
        session: ChatSession::new(socket.to_owned(), "mcp-chat join", None),
        screen: Screen::default(),
    };
    join.say(&format!("mcp-chat {}: {HELP}", crate::VERSION));
    join.enter_queue().await?;
    // Only now: should the broker be unreachable, we exit above, and the
    // line editor never had the terminal in raw mode.
    let mut input = Input::for_stdin();
    join.screen = input.screen();

    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    refresh.tick().await;
    let mut last_waiting_line = String::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = input.next() => {
                let Some(line) = line? else { break };
                if !join.handle_line(line.trim_end_matches('\r')).await? {
                    break;
                }
                input.resume();
            }
            arrived = join.session.events().wait_pending(Duration::from_secs(3600)) => {
                for event in arrived {
                    join.show_event(&event);
                }
            }
            _ = refresh.tick() => {
                if matches!(join.session.phase(), Phase::Waiting { .. }) {
                    let line = join.waiting_line().await;
                    if line != last_waiting_line {
                        join.say(&line);
                        last_waiting_line = line;
                    }
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    join.leave_room().await;
    join.say("bye");
    Ok(())
}

/// Where typed lines come from.
enum Input {
    Plain(Lines<BufReader<Stdin>>),
    Editor(LineEditor),
}

impl Input {
    /// A line editor when stdin is a terminal; plain lines otherwise.
    fn for_stdin() -> Self {
        match LineEditor::for_terminal() {
            Some(Ok(editor)) => Self::Editor(editor),
            Some(Err(e)) => {
                eprintln!("mcp-chat: no line editing on this terminal ({e}); reading plain lines");
                Self::plain()
            }
            None => Self::plain(),
        }
    }

    fn plain() -> Self {
        Self::Plain(BufReader::new(tokio::io::stdin()).lines())
    }

    fn screen(&self) -> Screen {
        match self {
            Self::Plain(_) => Screen::default(),
            Self::Editor(editor) => editor.screen(),
        }
    }

    /// The next line, `None` at the end of input (or Ctrl-D, Ctrl-C).
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Self::Plain(lines) => Ok(lines.next_line().await?),
            Self::Editor(editor) => match editor.next().await {
                Read::Line(line) => Ok(Some(line)),
                Read::Quit => Ok(None),
                Read::Failed(e) => Err(anyhow!("reading the terminal: {e}")),
            },
        }
    }

    /// Ready for the next line.
    fn resume(&self) {
        if let Self::Editor(editor) = self {
            editor.resume();
        }
    }
}

/// One person's chat: the session, and where its lines are printed.
struct Join {
    /// Whom this person looks for, each time they enter the queue.
    entry: Entry,
    session: ChatSession,
    screen: Screen,
}

impl Join {
    /// Acts on one typed line. `false` means quit.
    async fn handle_line(&self, line: &str) -> anyhow::Result<bool> {
        match line.trim() {
            "" => {}
            "/quit" | "/exit" => return Ok(false),
            "/next" => {
                if matches!(self.session.phase(), Phase::Waiting { .. }) {
                    self.say("already waiting for a partner");
                } else {
                    self.leave_room().await;
                    self.enter_queue().await?;
                }
            }
            "/block" => match self.session.phase() {
                Phase::InRoom { room } => match self.session.leave_with(room, true).await {
                    Ok(()) => self.say(
                        "you left and blocked this partner: you will not be matched again; /next to meet someone new",
                    ),
                    Err(e) => self.say(&format!("! not blocked: {}", reveal(&e.to_string()))),
                },
                _ => self.say("you are not in a chat; /block works while chatting"),
            },
            "/leave" => match self.session.phase() {
                Phase::InRoom { .. } => {
                    self.leave_room().await;
                    self.say("you left the chat; /next to meet someone new, /quit to exit");
                }
                Phase::Waiting { .. } => self.say("you are waiting in the queue; /quit to stop"),
                Phase::Idle => self.say("you are not in a chat; /next to find a partner"),
            },
            "/help" => self.say(HELP),
            _ if line.starts_with('/') => self.say(&format!("unknown command {line:?}; {HELP}")),
            _ => match self.session.phase() {
                Phase::InRoom { room } => self.send(room, line).await,
                _ => self.say(
                    "you are not in a chat yet; your message was not sent (/next to find a partner)",
                ),
            },
        }
        Ok(true)
    }

    async fn enter_queue(&self) -> anyhow::Result<()> {
        match self
            .session
            .enter_queue_with(Duration::ZERO, self.entry.clone())
            .await
        {
            // The chatroom.found event that came with the match announces it.
            Ok(Entered::Matched { .. }) => {}
            Ok(Entered::Queued { .. }) => self.say(&self.waiting_line().await),
            Err(CallError::Broker { code, message, .. }) => {
                self.say(&format!("! {code}: {}", reveal(&message)));
            }
            Err(CallError::Session(e)) => return Err(e.into()),
            Err(e) => self.say(&format!("! {}", reveal(&e.to_string()))),
        }
        Ok(())
    }

    async fn waiting_line(&self) -> String {
        let status = self.session.status().await.ok();
        let phase = status.as_ref().map_or(self.session.phase(), |s| s.phase);
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

    async fn send(&self, room: RoomId, text: &str) {
        match self.session.send(room, text.to_owned()).await {
            // In a terminal the typed line was taken off the prompt; it
            // comes back as a transcript line. A script knows what it sent.
            Ok(()) if self.screen.is_editor() => self.say(&format!("you: {}", reveal(text))),
            Ok(()) => {}
            Err(CallError::Broker { code, message, .. }) => {
                self.say(&format!("! not sent ({code}): {}", reveal(&message)));
            }
            Err(e) => self.say(&format!("! not sent: {}", reveal(&e.to_string()))),
        }
    }

    /// Leaves the current room, if any, so the partner is told at once.
    async fn leave_room(&self) {
        if let Phase::InRoom { room } = self.session.phase() {
            let _ = self.session.leave(room).await;
        }
    }

    fn show_event(&self, event: &ChatEvent) {
        match event.kind {
            EventKind::ChatroomFound => self.say(&format!(
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
            EventKind::MessageReceived => self.say(&format!(
                "stranger: {}",
                reveal(event.message.as_deref().unwrap_or_default())
            )),
            EventKind::PartnerDisconnected => self.say(&format!(
                "the stranger is gone ({}); /next to meet someone new, /quit to exit",
                event.reason.as_deref().unwrap_or("unknown")
            )),
        }
    }

    /// One timestamped line. Every line is whole, so a script can read it.
    fn say(&self, text: &str) {
        let now = chrono::Local::now().format("%H:%M:%S");
        self.screen.line(&format!("[{now}] {text}"));
    }
}
