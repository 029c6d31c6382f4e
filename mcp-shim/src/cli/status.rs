//! `mcp-chat status`: what the running broker is doing. It never starts one.

use std::path::Path;

use anyhow::{Context, bail};
use mcp_chat_proto::{Reply, Request, StatusInfo};
use serde::Serialize;

use crate::broker_client::{BrokerConnection, ConnectError, handshake};
use crate::phase::SessionFeed;

#[derive(Debug, Serialize)]
struct StatusReport<'a> {
    socket: &'a Path,
    broker_pid: u32,
    broker_version: &'a str,
    uptime_s: u64,
    /// Sessions connected, not counting this status query.
    sessions: usize,
    waiting: usize,
    rooms: usize,
    /// The ten busiest interests among those waiting.
    busiest_interests: &'a [mcp_chat_proto::InterestCount],
    #[serde(skip_serializing_if = "Option::is_none")]
    federation: Option<mcp_chat_proto::FederationStatus>,
}

/// Asks the broker on `socket` for its figures.
pub async fn query(socket: &Path) -> Result<StatusInfo, QueryError> {
    let (transport, welcome) = handshake(socket, "mcp-chat status", None).await?;
    let feed = std::sync::Arc::new(SessionFeed::new(None));
    let connection = BrokerConnection::start(transport, welcome, feed, 0);
    match connection.request(Request::Status).await {
        Ok(Reply::Status(info)) => Ok(*info),
        Ok(other) => Err(QueryError::Unexpected(format!("{other:?}"))),
        Err(_) => Err(QueryError::Unexpected("connection lost".into())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the broker answered the status request with {0}")]
    Unexpected(String),
}

pub async fn run(socket: &Path, json: bool) -> anyhow::Result<()> {
    let info = match query(socket).await {
        Ok(info) => info,
        Err(QueryError::Connect(ConnectError::NotRunning { .. })) => {
            bail!(
                "no broker running at {} (one starts when an MCP client or `mcp-chat join` needs it)",
                socket.display()
            )
        }
        Err(e) => return Err(e).context("asking the broker for its status"),
    };
    let report = StatusReport {
        socket,
        broker_pid: info.pid,
        broker_version: &info.broker_version,
        uptime_s: info.uptime_s,
        sessions: info.sessions.saturating_sub(1),
        waiting: info.waiting,
        rooms: info.rooms,
        busiest_interests: &info.interests,
        federation: info.federation,
    };
    let text = if json {
        serde_json::to_string_pretty(&report)?
    } else {
        let mut text = format!(
            "socket:   {}\nbroker:   pid {}, version {}, up {}\nsessions: {} online, {} waiting, {} rooms",
            report.socket.display(),
            report.broker_pid,
            report.broker_version,
            uptime(report.uptime_s),
            report.sessions,
            report.waiting,
            report.rooms
        ) + &busiest(report.busiest_interests);
        if let Some(f) = &report.federation {
            text.push('\n');
            text.push_str(&federation(f));
        }
        text
    };
    println!("{text}"); // stdout-ok
    Ok(())
}

/// `\nwaiting by interest: chess 3, rust 2`, or nothing.
fn busiest(interests: &[mcp_chat_proto::InterestCount]) -> String {
    if interests.is_empty() {
        return String::new();
    }
    let counts: Vec<String> = interests
        .iter()
        .map(|c| format!("{} {}", c.interest, c.waiting))
        .collect();
    format!("\nwaiting by interest: {}", counts.join(", "))
}

/// The federation lines: server, realm, state and since when, the realm's
/// queue, rooms across machines, and what went wrong last.
fn federation(f: &mcp_chat_proto::FederationStatus) -> String {
    let state = if f.connected {
        "connected"
    } else {
        "NOT connected"
    };
    let mut text = format!(
        "realm:    {} on {}, {state} since {} (Unix time)\n          {} waiting in the realm, {} rooms across machines, {} inbound messages rejected",
        f.realm, f.server, f.since, f.waiting_in_realm, f.remote_rooms, f.rejected
    );
    if let Some(e) = &f.last_error {
        text.push_str(&format!("\n          last error: {e}"));
    }
    if let Some(note) = &f.realm_key_note {
        text.push_str(&format!("\n          realm key: {note}"));
    }
    text
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}
