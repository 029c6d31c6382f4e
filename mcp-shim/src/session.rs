//! A chat session as the MCP server sees it: a broker connection that is
//! (re)established on demand, and the session's event log.

use std::path::PathBuf;
use std::sync::Arc;

use mcp_chat_proto::{Reply, Request};
use tokio::sync::Mutex;

use crate::autostart::{StartError, connect_or_start};
use crate::broker_client::{BrokerConnection, RequestError};
use crate::events::EventLog;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("could not reach the mcp-chat broker: {0}")]
    Unreachable(#[from] StartError),
    #[error("the connection to the mcp-chat broker was lost during the call")]
    Lost(#[from] RequestError),
}

#[derive(Debug)]
pub struct ChatSession {
    socket: PathBuf,
    client_name: String,
    connection: Mutex<Option<BrokerConnection>>,
    pub events: Arc<EventLog>,
}

impl ChatSession {
    pub fn new(socket: PathBuf, client_name: impl Into<String>, events: Arc<EventLog>) -> Self {
        Self {
            socket,
            client_name: client_name.into(),
            connection: Mutex::new(None),
            events,
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Sends one request, connecting (and starting a broker) first if there
    /// is no live connection: after a broker restart the next call simply
    /// works again.
    pub async fn request(&self, request: Request) -> Result<Reply, SessionError> {
        let connection = self.connection().await?;
        Ok(connection.request(request).await?)
    }

    /// The live connection, made if needed.
    pub async fn connection(&self) -> Result<BrokerConnection, SessionError> {
        let mut slot = self.connection.lock().await;
        if let Some(live) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(live.clone());
        }
        let (transport, welcome) = connect_or_start(&self.socket, &self.client_name).await?;
        tracing::info!(session = welcome.session_id, broker = %welcome.broker_version, "connected to broker");
        let live = BrokerConnection::start(transport, welcome, Arc::clone(&self.events));
        *slot = Some(live.clone());
        Ok(live)
    }
}
