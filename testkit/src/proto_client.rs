//! The tests' face of [`Client`]: the same client, where anything
//! unexpected panics, which is how a test fails.

use std::path::Path;

use mcp_chat_proto::{BrokerMsg, CodecError, Event, Reply, Request, RoomId, StatusInfo};

use crate::client::{Client, Reader, Writer};
pub use crate::client::{connect_raw, hello};
use crate::within_or_panic as within;

pub struct ProtoClient {
    client: Client,
    pub session_id: u64,
}

/// Ends a test with `what` and the error's whole chain.
fn expect<T>(result: anyhow::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

impl ProtoClient {
    pub async fn connect(socket: &Path) -> Self {
        let client = expect(Client::connect(socket).await, "connecting to the broker");
        Self {
            session_id: client.session_id,
            client,
        }
    }

    /// Sends a request and returns its reply; events that arrive first are
    /// kept for [`Self::next_event`].
    pub async fn request(&mut self, request: Request) -> Reply {
        expect(self.client.request(request).await, "a request")
    }

    /// Sends without waiting: for pipelining.
    pub async fn send_request(&mut self, request: Request) -> u64 {
        expect(self.client.send(request).await, "sending a request")
    }

    pub async fn next_event(&mut self) -> Event {
        expect(self.client.next_event().await, "an event")
    }

    /// The next frame other than a heartbeat ping (which is answered, as
    /// a live client does), or `None` at a clean close.
    pub async fn next_frame(&mut self) -> Option<Result<BrokerMsg, CodecError>> {
        expect(self.client.next_frame().await, "a frame")
    }

    /// Acknowledges every event read so far; returns the last one's seq.
    pub async fn ack_read(&mut self) -> u64 {
        expect(self.client.ack_read().await, "acknowledging events")
    }

    pub async fn enter(&mut self) -> Reply {
        expect(self.client.enter().await, "entering the queue")
    }

    pub async fn say(&mut self, room_id: RoomId, message: &str) -> Reply {
        expect(self.client.say(room_id, message).await, "sending a message")
    }

    pub async fn status(&mut self) -> StatusInfo {
        expect(self.client.status().await, "status")
    }

    /// The framed halves, for tests that write raw bytes (`writer.get_mut()`)
    /// or drive the protocol themselves.
    pub fn into_parts(self) -> (Reader, Writer) {
        let (reader, writer, _) = self.client.into_parts();
        (reader, writer)
    }
}

/// Two clients matched into one room.
pub async fn matched_pair(socket: &Path) -> (ProtoClient, ProtoClient, RoomId) {
    let (a, b, room_id) = expect(Client::pair(socket).await, "a matched pair");
    let wrap = |client: Client| ProtoClient {
        session_id: client.session_id,
        client,
    };
    (wrap(a), wrap(b), room_id)
}

/// How often [`wait_for_status`] asks: well inside the broker's default
/// request budget (50 a second), so polling is never refused.
const STATUS_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// Asks the broker on `socket` for its status until `until` holds, from a
/// session of its own, and returns that status. For states a test cannot
/// otherwise observe, such as a session held for a resume
/// (`StatusInfo::detached`): each answer is a real round trip, and the
/// broker pushes no event for these, so asking again is the only way.
pub async fn wait_for_status(
    socket: &Path,
    what: &str,
    until: impl Fn(&StatusInfo) -> bool,
) -> StatusInfo {
    let mut observer = ProtoClient::connect(socket).await;
    within(what, async {
        loop {
            let status = observer.status().await;
            if until(&status) {
                return status;
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    })
    .await
}
