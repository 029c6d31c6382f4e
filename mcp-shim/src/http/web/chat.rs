//! One chat page's conversation: its WebSocket on one side, its
//! [`ChatSession`] on the other.
//!
//! The page sends [`FromPage`] requests as JSON text frames; the server
//! answers with [`ToPage`] messages, and pushes the session's events as
//! they come. Partner text goes out already [`reveal`]ed (control and bidi
//! characters as visible escapes, exactly as `mcp-chat join` prints it), and
//! the page puts it on screen as text only (`textContent`), so it can
//! neither run nor hide anything.
//!
//! The page is a person (`Kind::Person`), like `mcp-chat join`; before
//! each search it may name interests and whom to meet ([`Choices`]), which
//! are checked here exactly as `join` checks its options.
//!
//! Leaving the queue has no broker request: the page's session is dropped
//! (its connection closes, and the broker forgets it) and a fresh one is
//! made for the next search.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use mcp_chat_proto::matching::normalize_interests;
use mcp_chat_proto::{Entry, InterestCount, Kind, Meet, RoomId};
use serde::{Deserialize, Serialize};

use crate::events::{ChatEvent, EventKind};
use crate::phase::Phase;
use crate::session::{CallError, ChatSession, Entered};
use crate::untrusted::reveal;

/// How often the page's figures (online, waiting) are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// The broker session's client name, for `status` and the broker log.
const CLIENT_NAME: &str = "mcp-chat page";

/// What the page asks for.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromPage {
    /// Enter the queue.
    Find(Choices),
    /// Leave the current chat, if any, and enter the queue.
    Next(Choices),
    /// Leave the chat, or the queue.
    Leave,
    /// Leave the chat and never be matched with this partner again.
    Block,
    Send {
        text: String,
    },
    #[serde(other)]
    Unknown,
}

/// Whom the person looks for, as typed on the page; both optional, so a
/// page that sends neither meets anyone, with no interests.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Choices {
    /// Interests, comma-separated, as typed: checked as `join --interests`.
    #[serde(default)]
    interests: String,
    /// `anyone` (the default), `agents` or `people`.
    #[serde(default)]
    meet: Option<String>,
}

impl Choices {
    /// The queue entry, or why not (a sentence for the person).
    fn entry(&self) -> Result<Entry, String> {
        let interests = if self.interests.trim().is_empty() {
            Vec::new()
        } else {
            let typed: Vec<String> = self.interests.split(',').map(str::to_owned).collect();
            normalize_interests(&typed).map_err(|refusal| refusal.message)?
        };
        let meet = match self.meet.as_deref() {
            None | Some("anyone") => Meet::Anyone,
            Some("agents") => Meet::Agents,
            Some("people") => Meet::People,
            Some(other) => {
                return Err(format!(
                    "cannot meet {:?}: choose anyone, agents or people",
                    other.chars().take(20).collect::<String>()
                ));
            }
        };
        let entry = Entry {
            interests,
            interest_wait_s: None,
            meet,
            kind: Kind::Person,
            // No installation id: one server serves many people, who must
            // not share one identity (a block by one would bind them all),
            // as `serve --http` sends none for its agents either. A block
            // from the page binds this page's broker session, which it keeps
            // from search to search while the page stays open.
            block_id: None,
        };
        entry.checked().map_err(|refusal| refusal.message)?;
        Ok(entry)
    }
}

/// Who wrote a message the page shows.
#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    You,
    Stranger,
}

/// What the server tells the page.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToPage {
    /// Where this page stands, and the broker's figures when it answered.
    Status {
        /// `idle`, `waiting` or `chatting`.
        phase: &'static str,
        position: Option<usize>,
        online: Option<usize>,
        waiting: Option<usize>,
        /// The ten busiest interests among those waiting, busiest first.
        busiest_interests: Option<Vec<InterestCount>>,
    },
    /// A stranger was found: what they are (`agent` or `person`, when the
    /// broker says) and the interests the two share.
    Matched {
        partner_kind: Option<&'static str>,
        common_interests: Vec<String>,
    },
    /// A chat line; `text` is revealed (see the module docs).
    Message { from: Author, text: String },
    /// The stranger is gone: `left`, `disconnected`, `broker_restart`, ...
    PartnerLeft { reason: String },
    /// This page left: `chat` (the stranger is told) or `queue`.
    YouLeft { from: &'static str },
    /// This page left the chat and blocked the stranger.
    Blocked,
    /// The choices were refused; the page was not put in the queue.
    Refused { text: String },
    /// Something for the person to read (a message not sent, a refusal).
    Notice { text: String },
}

/// Serves one page until its socket closes; a chat still open is left, so
/// the stranger is told at once.
pub async fn run(mut ws: WebSocket, socket: PathBuf) {
    let mut chat = PageChat::new(socket);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'serve: loop {
        let out = tokio::select! {
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Text(text))) => chat.handle(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => vec![notice("the page sends JSON text")],
                Some(Ok(Message::Close(_)) | Err(_)) | None => break 'serve,
                // Pings are answered by the socket itself.
                Some(Ok(_)) => Vec::new(),
            },
            events = chat.session.events().wait_pending(Duration::from_secs(3600)) => {
                let mut out: Vec<ToPage> = events.iter().map(shown).collect();
                if !out.is_empty() {
                    out.push(chat.status().await);
                }
                out
            }
            _ = refresh.tick() => vec![chat.status().await],
        };
        for message in out {
            let Ok(json) = serde_json::to_string(&message) else {
                continue;
            };
            if ws.send(Message::text(json)).await.is_err() {
                break 'serve;
            }
        }
    }
    chat.leave_room().await;
}

/// The page's session, replaced when the page leaves the queue.
struct PageChat {
    socket: PathBuf,
    session: ChatSession,
}

impl PageChat {
    fn new(socket: PathBuf) -> Self {
        let session = session(&socket);
        Self { socket, session }
    }

    /// Acts on one request from the page; returns what to tell it.
    async fn handle(&mut self, text: &str) -> Vec<ToPage> {
        let request = serde_json::from_str(text).unwrap_or(FromPage::Unknown);
        let mut out = Vec::new();
        match (request, self.session.phase()) {
            (FromPage::Find(_) | FromPage::Next(_), Phase::Waiting { .. }) => {
                out.push(notice("already looking for a stranger"));
            }
            (FromPage::Find(_), Phase::InRoom { .. }) => {
                out.push(notice("already chatting; skip to meet someone else"));
            }
            (FromPage::Find(choices) | FromPage::Next(choices), phase) => match choices.entry() {
                // Checked before leaving, so a bad choice costs no chat.
                Err(text) => out.push(ToPage::Refused {
                    text: reveal(&text),
                }),
                Ok(entry) => {
                    if let Phase::InRoom { room } = phase {
                        out.push(self.leave(room).await);
                    }
                    out.extend(self.enter_queue(entry).await);
                }
            },
            (FromPage::Block, Phase::InRoom { room }) => {
                match self.session.leave_with(room, true).await {
                    Ok(()) => out.push(ToPage::Blocked),
                    Err(e) => out.push(failed("not blocked", &e)),
                }
            }
            (FromPage::Block, _) => {
                out.push(notice("you are not in a chat; block works while chatting"))
            }
            (FromPage::Leave, Phase::InRoom { room }) => out.push(self.leave(room).await),
            (FromPage::Leave, Phase::Waiting { .. }) => {
                // Dropping the session closes its connection: the broker
                // takes it out of the queue.
                self.session = session(&self.socket);
                out.push(ToPage::YouLeft { from: "queue" });
            }
            (FromPage::Leave, Phase::Idle) => {}
            (FromPage::Send { text }, Phase::InRoom { room }) => {
                let shown = reveal(&text);
                match self.session.send(room, text).await {
                    Ok(()) => out.push(ToPage::Message {
                        from: Author::You,
                        text: shown,
                    }),
                    Err(e) => out.push(failed("not sent", &e)),
                }
            }
            (FromPage::Send { .. }, _) => {
                out.push(notice("you are not in a chat; your message was not sent"));
            }
            (FromPage::Unknown, _) => out.push(notice("the server did not understand the page")),
        }
        out.push(self.status().await);
        out
    }

    async fn enter_queue(&self, entry: Entry) -> Option<ToPage> {
        match self.session.enter_queue_with(Duration::ZERO, entry).await {
            // The chatroom.found event that came with the match says so.
            Ok(Entered::Matched { .. } | Entered::Queued { .. }) => None,
            Err(e) => Some(failed("could not enter the queue", &e)),
        }
    }

    async fn leave(&self, room: RoomId) -> ToPage {
        match self.session.leave(room).await {
            Ok(()) => ToPage::YouLeft { from: "chat" },
            Err(e) => failed("could not leave", &e),
        }
    }

    /// Leaves the current room, if any, so the stranger is told at once.
    async fn leave_room(&self) {
        if let Phase::InRoom { room } = self.session.phase() {
            let _ = self.session.leave(room).await;
        }
    }

    async fn status(&self) -> ToPage {
        let figures = self.session.status().await.ok().and_then(|s| s.broker);
        let (phase, position) = match self.session.phase() {
            Phase::Idle => ("idle", None),
            Phase::Waiting { position } => ("waiting", Some(position)),
            Phase::InRoom { .. } => ("chatting", None),
        };
        ToPage::Status {
            phase,
            position,
            online: figures.as_ref().map(|f| f.sessions),
            waiting: figures.as_ref().map(|f| f.waiting),
            busiest_interests: figures.map(|f| f.interests),
        }
    }
}

fn session(socket: &Path) -> ChatSession {
    ChatSession::new(socket.to_owned(), CLIENT_NAME, None)
}

/// An event as the page shows it.
fn shown(event: &ChatEvent) -> ToPage {
    match event.kind {
        EventKind::ChatroomFound => ToPage::Matched {
            partner_kind: match event.partner_kind.as_deref() {
                Some("agent") => Some("agent"),
                Some("person") => Some("person"),
                _ => None,
            },
            common_interests: event.common_interests.clone().unwrap_or_default(),
        },
        EventKind::MessageReceived => ToPage::Message {
            from: Author::Stranger,
            text: reveal(event.message.as_deref().unwrap_or_default()),
        },
        EventKind::PartnerDisconnected => ToPage::PartnerLeft {
            reason: event.reason.clone().unwrap_or_else(|| "unknown".to_owned()),
        },
    }
}

fn notice(text: &str) -> ToPage {
    ToPage::Notice {
        text: text.to_owned(),
    }
}

fn failed(what: &str, error: &CallError) -> ToPage {
    let text = match error {
        CallError::Broker { code, message, .. } => format!("{what} ({code}): {message}"),
        other => format!("{what}: {other}"),
    };
    ToPage::Notice {
        text: reveal(&text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_requests_parse_and_unknown_ones_are_tolerated() {
        let parse = |json: &str| serde_json::from_str::<FromPage>(json).unwrap();
        assert_eq!(
            parse(r#"{"type":"find"}"#),
            FromPage::Find(Choices::default())
        );
        assert_eq!(
            parse(r#"{"type":"next","interests":"chess","meet":"people"}"#),
            FromPage::Next(Choices {
                interests: "chess".into(),
                meet: Some("people".into())
            })
        );
        assert_eq!(parse(r#"{"type":"leave"}"#), FromPage::Leave);
        assert_eq!(parse(r#"{"type":"block"}"#), FromPage::Block);
        assert_eq!(
            parse(r#"{"type":"send","text":"hi"}"#),
            FromPage::Send { text: "hi".into() }
        );
        assert_eq!(parse(r#"{"type":"dance"}"#), FromPage::Unknown);
        assert!(serde_json::from_str::<FromPage>("not json").is_err());
    }

    fn choices(interests: &str, meet: Option<&str>) -> Result<Entry, String> {
        Choices {
            interests: interests.into(),
            meet: meet.map(str::to_owned),
        }
        .entry()
    }

    #[test]
    fn the_page_enters_as_a_person_with_its_choices_checked_as_join_does() {
        let entry = choices(" Chess, RUST-lang ,chess", Some("agents")).unwrap();
        assert_eq!(entry.interests, vec!["chess", "rust-lang"]);
        assert_eq!(entry.meet, Meet::Agents);
        assert_eq!(entry.kind, Kind::Person);
        assert_eq!(entry.block_id, None);
        assert_eq!(choices("  ", None).unwrap().interests, Vec::<String>::new());
        assert_eq!(choices("", None).unwrap().meet, Meet::Anyone);

        for (interests, meet, says) in [
            ("c++", None, "has the character '+'"),
            ("a,b,c,d,e,f", None, "6 interests given; at most 5"),
            ("chess,,go", None, "an interest is empty"),
            ("chess", Some("robots"), "choose anyone, agents or people"),
        ] {
            let refused = choices(interests, meet).unwrap_err();
            assert!(refused.contains(says), "{interests:?} {meet:?}: {refused}");
        }
    }

    #[test]
    fn a_match_tells_the_page_the_partners_kind_and_shared_interests() {
        let event = ChatEvent {
            seq: 1,
            kind: EventKind::ChatroomFound,
            room_id: "r".into(),
            message: None,
            reason: None,
            undelivered: None,
            unconfirmed: None,
            common_interests: Some(vec!["chess".into()]),
            partner_kind: Some("person".into()),
        };
        let json = serde_json::to_string(&shown(&event)).unwrap();
        assert_eq!(
            json,
            r#"{"type":"matched","partner_kind":"person","common_interests":["chess"]}"#
        );
    }

    #[test]
    fn partner_text_reaches_the_page_revealed() {
        let event = ChatEvent {
            seq: 1,
            kind: EventKind::MessageReceived,
            room_id: "r".into(),
            message: Some("\u{1b}[31mred\u{202e}</script>".into()),
            reason: None,
            undelivered: None,
            unconfirmed: None,
            common_interests: None,
            partner_kind: None,
        };
        let json = serde_json::to_string(&shown(&event)).unwrap();
        assert_eq!(
            json,
            r#"{"type":"message","from":"stranger","text":"\\x1b[31mred\\u{202e}</script>"}"#
        );
    }
}
