//! Chats of 2026-07-28 clients over HTTP, each named by a `chat_id`.
//!
//! That revision has no session: every request stands alone, with no
//! `initialize` and no `Mcp-Session-Id`. Cross-call state is what the
//! revision says it is (SEP-2567): a handle the server mints and the client
//! passes back as an ordinary tool argument. Here that handle is the
//! `chat_id`:
//!
//! - `enter_queue` without a `chat_id` starts a chat (its own broker
//!   connection, one chat user, as an initialize-era session is) and returns
//!   the new `chat_id`; every later call names it (the tools take a
//!   `chat_id` argument, the events resource is `chat://events/{chat_id}`).
//! - A `chat_id` is `chat_` and 64 hex digits from the OS's random source
//!   (two v4 UUIDs, 244 random bits; SEP-2567 asks for at least 128), so
//!   one client cannot reach another's chat by guessing. It is a bearer
//!   name *within* the server's access rule: every request, whatever
//!   `chat_id` it carries, first passes the gate (`guard`, `peer`, `token`:
//!   same uid on loopback, else the bearer token), so a `chat_id` that leaks
//!   is of use only to someone who may use this server anyway.
//! - A chat lives like an initialize-era session (see `sessions`): it counts
//!   against `--max-sessions`, and it ends after `--session-timeout` with no
//!   request naming it and no `subscriptions/listen` stream open on it, or
//!   when the server stops. Its broker connection then closes and the
//!   partner is told `partner.disconnected`. A later call with that
//!   `chat_id` is told the chat has ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio_util::sync::CancellationToken;

use super::sessions::{Full, SessionEnd, Sessions, StreamGuard};
use super::token::new_secret;
use crate::ChatServer;

/// The prefix of every `chat_id`, so one is told apart from a room id.
const CHAT_ID_PREFIX: &str = "chat_";

/// The live 2026-07-28 chats of one HTTP server.
#[derive(Debug)]
pub struct Chats {
    socket: PathBuf,
    sessions: Arc<Sessions>,
    live: Mutex<HashMap<String, Live>>,
}

#[derive(Debug, Clone)]
struct Live {
    server: ChatServer,
    end: CancellationToken,
}

/// One chat, held for the length of one request: the guard keeps it from
/// expiring meanwhile.
#[derive(Debug)]
pub struct Chat {
    pub id: String,
    pub server: ChatServer,
    /// Cancelled when the chat ends; calls in flight race it.
    pub end: CancellationToken,
    _guard: StreamGuard,
}

impl Chats {
    pub fn new(socket: PathBuf, sessions: Arc<Sessions>) -> Arc<Self> {
        Arc::new(Self {
            socket,
            sessions,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// How long a chat lives with no request and no listen stream.
    pub fn timeout_s(&self) -> u64 {
        self.sessions.timeout().as_secs()
    }

    /// Starts a chat with a fresh `chat_id`, or says the server is full.
    pub fn start(self: &Arc<Self>) -> Result<Chat, Full> {
        let admission = self.sessions.admit()?;
        let id = format!("{CHAT_ID_PREFIX}{}", new_secret());
        let end = SessionEnd::default();
        let live = Live {
            server: ChatServer::new(self.socket.clone()),
            end: end.0.clone(),
        };
        self.lock().insert(id.clone(), live.clone());
        let guard = self.sessions.register_chat(admission, &id, end);
        tokio::spawn(forget_when_ended(
            Arc::downgrade(self),
            id.clone(),
            live.end.clone(),
        ));
        tracing::info!("2026-07-28 chat started");
        Ok(Chat {
            id,
            server: live.server,
            end: live.end,
            _guard: guard,
        })
    }

    /// The live chat named `id`; `None` when it ended or never was.
    pub fn find(&self, id: &str) -> Option<Chat> {
        // The guard first: a chat it finds cannot expire before the lookup.
        let guard = self.sessions.open(id)?;
        let live = self.lock().get(id).cloned()?;
        Some(Chat {
            id: id.to_owned(),
            server: live.server,
            end: live.end,
            _guard: guard,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        // Every update is one insert or remove.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the chat's server once it ended (expired, or the server stopped),
/// which closes its broker connection: the broker tells the partner.
async fn forget_when_ended(chats: Weak<Chats>, id: String, end: CancellationToken) {
    end.cancelled().await;
    if let Some(chats) = chats.upgrade() {
        chats.lock().remove(&id);
        tracing::info!("2026-07-28 chat ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use std::time::Duration;

    fn chats(max: usize) -> (Arc<Chats>, Arc<Sessions>) {
        let sessions = Sessions::new(
            Duration::from_secs(5),
            max,
            Arc::new(LocalSessionManager::default()),
        );
        let chats = Chats::new(
            PathBuf::from("/nonexistent/broker.sock"),
            Arc::clone(&sessions),
        );
        (chats, sessions)
    }

    #[tokio::test]
    async fn chat_ids_are_long_random_and_found_only_exactly() {
        let (chats, _) = chats(10);
        let a = chats.start().unwrap();
        let b = chats.start().unwrap();
        assert_ne!(a.id, b.id);
        let hex = a.id.strip_prefix(CHAT_ID_PREFIX).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(chats.find(&a.id).is_some());
        assert!(chats.find(&a.id[..a.id.len() - 1]).is_none());
        assert!(chats.find(&a.id.to_uppercase()).is_none());
        assert!(chats.find("chat_").is_none());
    }

    #[tokio::test]
    async fn chats_count_against_the_cap_and_are_forgotten_when_they_end() {
        let (chats, sessions) = chats(1);
        let chat = chats.start().unwrap();
        assert_eq!(chats.start().unwrap_err(), Full { max: 1 });
        let (id, end) = (chat.id.clone(), chat.end.clone());
        drop(chat);
        sessions.end_all();
        assert!(end.is_cancelled());
        // The forgetting task runs once the end is seen.
        while chats.lock().contains_key(&id) {
            tokio::task::yield_now().await;
        }
        assert!(chats.find(&id).is_none());
        assert!(chats.start().is_ok(), "an ended chat frees its place");
    }
}
