//! One task per client connection: check who it is, shake hands, then shuttle
//! frames between the socket and the hub. It holds no chat state.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use mcp_chat_proto::{BrokerCodec, BrokerMsg, ClientMsg, CodecError, ErrorCode, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::hub::{Command, Hub};
use crate::state::SessionHandle;

/// Frames written per flush at most, so one busy session cannot starve its
/// own reader.
const MAX_BATCH: usize = 64;

type Transport = Framed<Stream, BrokerCodec>;

pub(crate) struct ConnectionSettings {
    pub(crate) handshake_timeout: Duration,
    pub(crate) outbox_capacity: usize,
}

/// Serves one connection until it closes, the hub drops it, or `hard_stop`.
pub(crate) async fn serve(
    stream: Stream,
    hub: Hub,
    settings: ConnectionSettings,
    hard_stop: CancellationToken,
) {
    if let Err(refusal) = check_peer(&stream) {
        tracing::warn!(reason = %refusal.1, "refusing connection");
        refuse(&mut Framed::new(stream, BrokerCodec::new()), refusal).await;
        return;
    }
    let mut transport = Framed::new(stream, BrokerCodec::new());
    let hello = tokio::select! {
        () = hard_stop.cancelled() => return,
        hello = tokio::time::timeout(settings.handshake_timeout, transport.next()) => hello,
    };
    let client_name = match check_hello(hello) {
        Ok(name) => name,
        Err(refusal) => {
            tracing::warn!(code = %refusal.0, reason = %refusal.1, "handshake refused");
            refuse(&mut transport, refusal).await;
            return;
        }
    };
    let (outbox, inbox) = mpsc::channel(settings.outbox_capacity);
    let kick = hard_stop.child_token();
    let session = match hub
        .register(SessionHandle {
            outbox,
            kick: kick.clone(),
        })
        .await
    {
        Ok(session) => session,
        Err(refusal) => {
            tracing::warn!(code = %refusal.0, "session refused");
            refuse(&mut transport, refusal).await;
            return;
        }
    };
    let span = tracing::debug_span!("session", session, client = %client_name);
    let _entered = span.enter();
    tracing::debug!("session started");
    let welcome = BrokerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        broker_version: crate::VERSION.to_owned(),
        session_id: session,
    };
    let ended = match transport.send(welcome).await {
        Ok(()) => pump(&mut transport, session, &hub, inbox, &kick).await,
        Err(e) => Ended::Failed(e),
    };
    match ended {
        Ended::ClientClosed => tracing::debug!("client closed the connection"),
        Ended::Dropped => tracing::debug!("broker dropped the session"),
        Ended::Failed(e) => tracing::warn!(error = %e, "connection failed"),
        Ended::BadFrame(e) => {
            tracing::warn!(error = %e, "closing connection after a bad frame");
            refuse(&mut transport, (ErrorCode::BadFrame, e.to_string())).await;
        }
    }
    hub.send(Command::Disconnected { session }).await;
}

enum Ended {
    ClientClosed,
    Dropped,
    Failed(CodecError),
    BadFrame(CodecError),
}

async fn pump(
    transport: &mut Transport,
    session: u64,
    hub: &Hub,
    mut inbox: mpsc::Receiver<BrokerMsg>,
    kick: &CancellationToken,
) -> Ended {
    loop {
        tokio::select! {
            () = kick.cancelled() => return Ended::Dropped,
            outgoing = inbox.recv() => {
                // The hub releasing the outbox means: flush and close.
                let Some(first) = outgoing else { return Ended::Dropped };
                let written = tokio::select! {
                    () = kick.cancelled() => return Ended::Dropped,
                    written = write_batch(transport, first, &mut inbox) => written,
                };
                if let Err(e) = written {
                    return Ended::Failed(e);
                }
            }
            incoming = transport.next() => match incoming {
                None => return Ended::ClientClosed,
                Some(Ok(ClientMsg::Request { id, request })) => {
                    if !hub.send(Command::Request { session, id, request }).await {
                        return Ended::Dropped;
                    }
                }
                // Without an id there is nobody to answer; a newer client's
                // notice we do not understand is safe to skip.
                Some(Ok(ClientMsg::Unknown | ClientMsg::Hello { .. })) => {
                    tracing::debug!("ignoring a frame that is not a request");
                }
                Some(Err(CodecError::Io(e))) => return Ended::Failed(CodecError::Io(e)),
                Some(Err(e)) => return Ended::BadFrame(e),
            },
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    transport: &mut Transport,
    first: BrokerMsg,
    inbox: &mut mpsc::Receiver<BrokerMsg>,
) -> Result<(), CodecError> {
    transport.feed(first).await?;
    for _ in 1..MAX_BATCH {
        match inbox.try_recv() {
            Ok(msg) => transport.feed(msg).await?,
            Err(_) => break,
        }
    }
    transport.flush().await
}

fn check_hello(
    hello: Result<Option<Result<ClientMsg, CodecError>>, tokio::time::error::Elapsed>,
) -> Result<String, (ErrorCode, String)> {
    match hello {
        Err(_) => Err((
            ErrorCode::BadHandshake,
            "no hello within the handshake timeout".into(),
        )),
        Ok(None) => Err((ErrorCode::BadHandshake, "closed before hello".into())),
        Ok(Some(Err(e))) => Err((
            ErrorCode::BadHandshake,
            format!("first frame unreadable: {e}"),
        )),
        Ok(Some(Ok(ClientMsg::Hello {
            protocol,
            client_name,
            client_version,
            ..
        }))) => {
            if protocol == PROTOCOL_VERSION {
                Ok(client_name)
            } else {
                Err((
                    ErrorCode::ProtocolMismatch,
                    format!(
                        "{client_name} {client_version} speaks protocol {protocol}, but broker {} speaks protocol {PROTOCOL_VERSION}; install matching versions of mcp-chat and mcp-chat-broker, then stop the old broker",
                        crate::VERSION
                    ),
                ))
            }
        }
        Ok(Some(Ok(_))) => Err((
            ErrorCode::BadHandshake,
            "the first frame must be hello".into(),
        )),
    }
}

#[cfg(unix)]
fn check_peer(stream: &Stream) -> Result<(), (ErrorCode, String)> {
    use interprocess::local_socket::traits::StreamCommon;
    let ours = mcp_chat_proto::socket_path::current_uid();
    match stream.peer_creds().map(|c| c.euid()) {
        Ok(Some(uid)) if uid == ours => Ok(()),
        Ok(Some(uid)) => Err((
            ErrorCode::WrongUser,
            format!("this broker serves uid {ours} only; peer is uid {uid}"),
        )),
        Ok(None) | Err(_) => Err((
            ErrorCode::WrongUser,
            "could not determine the peer's uid".into(),
        )),
    }
}

#[cfg(not(unix))]
fn check_peer(_stream: &Stream) -> Result<(), (ErrorCode, String)> {
    // Named pipes are created per user; the pipe's default ACL is the fence.
    Ok(())
}

/// Best effort: tell the peer why before closing. It may already be gone.
async fn refuse(transport: &mut Transport, (code, message): (ErrorCode, String)) {
    let refusal = BrokerMsg::Refused { code, message };
    let _ = tokio::time::timeout(Duration::from_secs(1), transport.send(refusal)).await;
}
