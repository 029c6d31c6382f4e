//! The MCP 2026-07-28 path, served beside the initialize era.
//!
//! A 2026-07-28 client opens with `server/discover` (or no opener at all)
//! and sends self-contained requests; the server may send it nothing of its
//! own outside a `subscriptions/listen` stream, and there only list-changed
//! and resource-updated notifications. So on this path the seed's custom
//! notifications and the Claude Code channel are never sent, and chat events
//! reach the client as a resource instead:
//!
//! - `chat://events` (on HTTP `chat://events/{chat_id}`, see
//!   `crate::http`) holds the session's pending events. Reading it takes the
//!   oldest that fit [`EVENTS_PER_RESULT_BYTES`], exactly as
//!   `wait_for_events` returns them (`{events, events_dropped,
//!   more_pending}`, each event with its `seq`), so a pulled event is
//!   delivered once, whichever way it was pulled.
//! - `subscriptions/listen` with a resource subscription to it gets
//!   `notifications/resources/updated` as soon as an event is pending (and
//!   again whenever another arrives), then reads it.
//! - `wait_for_events` and the `events` field of every tool result work as
//!   on the initialize path, so a client that ignores resources misses
//!   nothing.
//!
//! Which era a request belongs to is the protocol version it carries (its
//! `_meta` on 2026-07-28, the session's handshake before).

use rmcp::model::{
    CacheScope, ListToolsResult, ProtocolVersion, ReadResourceResult, Resource, ResourceContents,
};
use rmcp::service::{RequestContext, SubscriptionSink};
use rmcp::{ErrorData, RoleServer};

use crate::session::ChatSession;
use crate::tools::{EVENTS_PER_RESULT_BYTES, EventsResult};
use crate::untrusted::harden_json;

/// The events resource of a stdio session (one process, one chat user).
pub const EVENTS_URI: &str = "chat://events";
/// How long a client may keep the tool list: it changes only with the
/// binary, and a new binary is a new process.
pub const TOOLS_TTL_MS: u64 = 60 * 60 * 1000;
const EVENTS_MIME: &str = "application/json";

/// How events arrive on this path, for `server/discover`'s instructions.
pub const EVENTS_ON_STDIO: &str = "\
How events reach you on this connection (MCP 2026-07-28): no chat notifications are sent. Your pending events are the resource chat://events: reading it (resources/read) takes them, oldest first, as wait_for_events returns them ({events, events_dropped, more_pending}; every event has a seq). Open subscriptions/listen with a resource subscription to chat://events to be sent notifications/resources/updated as soon as an event is pending, then read it. wait_for_events and the events field of every tool result work as well; each event is delivered once, by whichever comes first.";

/// Whether this request speaks MCP 2026-07-28 or later (no `initialize`).
pub fn is_modern(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|version| !version.has_initialize())
}

/// The versions served: every initialize-era revision, and 2026-07-28.
pub fn supported_versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::known_up_to(&ProtocolVersion::V_2026_07_28)
}

/// The caching hints 2026-07-28 requires on `tools/list` (SEP-2549): the
/// same list for every client of this binary.
pub fn with_cache_hints(mut tools: ListToolsResult) -> ListToolsResult {
    tools.ttl_ms = Some(TOOLS_TTL_MS);
    tools.cache_scope = Some(CacheScope::Public);
    tools
}

/// The events resource as `resources/list` shows it.
pub fn events_resource(uri: &str) -> Resource {
    Resource::new(uri, "chat-events")
        .with_title("Pending chat events")
        .with_description(
            "Your pending chat events, oldest first, as wait_for_events returns them. Reading takes them: each event is delivered once. Subscribe with subscriptions/listen to hear when one is pending.",
        )
        .with_mime_type(EVENTS_MIME)
}

/// Reads (and so takes) the pending events of `session` as resource `uri`.
/// The text is what a model reads, so partner text in it is escaped as in
/// tool results (see [`crate::untrusted`]); never cached, never shared.
pub fn read_events(session: &ChatSession, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let pulled = session.take_events(EVENTS_PER_RESULT_BYTES);
    let result = EventsResult {
        events: pulled.events,
        events_dropped: Some(session.take_dropped()).filter(|&n| n > 0),
        more_pending: (pulled.more_pending > 0).then_some(pulled.more_pending),
    };
    let json = serde_json::to_string(&result)
        .map_err(|e| ErrorData::internal_error(format!("encoding events: {e}"), None))?;
    let contents = ResourceContents::text(harden_json(&json), uri).with_mime_type(EVENTS_MIME);
    let mut read = ReadResourceResult::new(vec![contents]).with_ttl_ms(0);
    read.cache_scope = Some(CacheScope::Private);
    Ok(read)
}

/// Sends `notifications/resources/updated` for `uri` on `sink` whenever
/// `session` has events pending: at once if some already wait, then at each
/// arrival. Returns when the subscription can take no more.
pub async fn announce_events(session: &ChatSession, sink: &SubscriptionSink, uri: &str) {
    let events = session.events();
    loop {
        // Registered before looking, so an event recorded in between
        // still wakes this loop.
        let arrival = events.next_arrival();
        if events.pending_len() > 0
            && let Err(e) = sink.notify_resource_updated(uri).await
        {
            tracing::debug!(error = %e, uri, "subscription closed");
            return;
        }
        arrival.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_eras_are_served() {
        let versions = supported_versions();
        assert!(versions.contains(&ProtocolVersion::V_2025_11_25));
        assert!(versions.contains(&ProtocolVersion::V_2026_07_28));
        assert!(versions.iter().all(|v| v <= &ProtocolVersion::V_2026_07_28));
    }

    #[test]
    fn tool_lists_carry_cache_hints() {
        let tools = with_cache_hints(ListToolsResult::default());
        let json = serde_json::to_value(&tools).unwrap();
        assert_eq!(json["ttlMs"], TOOLS_TTL_MS);
        assert_eq!(json["cacheScope"], "public");
    }
}
