//! One task per client connection: check who it is, shake hands, then shuttle
//! frames between the socket and the hub. It holds no chat state.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use mcp_chat_proto::{BrokerMsg, ClientMsg, CodecError, ErrorCode, PROTOCOL_VERSION, Refusal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Liveness;
use crate::hub::{Command, Hub};
use crate::ledger::{CountingCodec, Ledger};
use crate::state::{Admitted, SessionHandle};

/// Frames written per flush at most, so one busy session cannot starve its
/// own reader.
const MAX_BATCH: usize = 64;
/// Initial read buffer per connection; it grows for larger frames.
const READ_BUFFER: usize = 1024;
/// Bytes written before a flush is forced.
const WRITE_BATCH_BYTES: usize = 8 * 1024;

type Transport = Framed<Stream, CountingCodec>;

pub(crate) struct ConnectionSettings {
    pub(crate) handshake_timeout: Duration,
    pub(crate) outbox_capacity: usize,
    pub(crate) liveness: Liveness,
    /// This broker process's instance id, for `Welcome`.
    pub(crate) instance: Arc<str>,
}

/// Serves one connection until it closes, the hub drops it, or `hard_stop`.
pub(crate) async fn serve(
    stream: Stream,
    hub: Hub,
    settings: ConnectionSettings,
    hard_stop: CancellationToken,
) {
    if let Err(refusal) = check_peer(&stream) {
        tracing::warn!(reason = %refusal.message, "refusing connection");
        turn_away(stream, refusal).await;
        return;
    }
    // A small read buffer: it stays resident for every idle connection, and
    // 10,000 sessions of the default 8 KiB add up. The write side still
    // batches up to 8 KiB before it pushes back, so throughput is unchanged.
    let mut transport = Framed::with_capacity(stream, CountingCodec::default(), READ_BUFFER);
    transport.set_backpressure_boundary(WRITE_BATCH_BYTES);
    let hello = tokio::select! {
        () = hard_stop.cancelled() => return,
        hello = tokio::time::timeout(settings.handshake_timeout, transport.next()) => hello,
    };
    let (client_name, resume) = match check_hello(hello) {
        Ok(hello) => hello,
        Err(refusal) => {
            tracing::warn!(code = %refusal.code, reason = %refusal.message, "handshake refused");
            refuse(&mut transport, refusal).await;
            return;
        }
    };
    let (outbox, inbox) = mpsc::channel(settings.outbox_capacity);
    let kick = hard_stop.child_token();
    let handle = SessionHandle {
        outbox,
        kick: kick.clone(),
    };
    let admitted = match hub.register(handle, resume).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::warn!(code = %refusal.code, "session refused");
            refuse(&mut transport, refusal).await;
            return;
        }
    };
    let Admitted {
        session,
        connection,
        resume_token,
        resumed,
        written,
    } = admitted;
    let mut ledger = Ledger::new(written);
    let span = tracing::debug_span!("session", session, client = %client_name);
    let welcome = BrokerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        broker_version: crate::VERSION.to_owned(),
        session_id: session,
        resume_token,
        resumed,
        instance: settings.instance.to_string(),
    };
    let link = Link {
        session,
        connection,
        hub: &hub,
        kick: &kick,
        liveness: settings.liveness,
    };
    // Instrumented rather than entered: the span must follow this task
    // across awaits, not leak onto whatever else runs on the thread.
    async {
        tracing::debug!(resumed, "session started");
        let ended = match transport.send(welcome).await {
            Ok(()) => pump(&mut transport, &link, inbox, &mut ledger).await,
            Err(e) => Ended::Failed(e),
        };
        // Before the hub hears that this connection ended: its notice is
        // the hub's sign that `written` is final.
        ledger.finish(transport.codec().encoded(), transport.write_buffer().len());
        let notice = match ended {
            Ended::Unresponsive => {
                tracing::warn!("client stopped answering pings; dropping its connection");
                Command::Unresponsive {
                    session,
                    connection,
                }
            }
            other => {
                report(&mut transport, other).await;
                Command::Disconnected {
                    session,
                    connection,
                }
            }
        };
        hub.send(notice).await;
    }
    .instrument(span)
    .await;
}

async fn report(transport: &mut Transport, ended: Ended) {
    match ended {
        Ended::Unresponsive => {}
        Ended::ClientClosed => tracing::debug!("client closed the connection"),
        Ended::Dropped => tracing::debug!("broker dropped the session"),
        Ended::Failed(e) => tracing::warn!(error = %e, "connection failed"),
        Ended::BadFrame(e) => {
            tracing::warn!(error = %e, "closing connection after a bad frame");
            refuse(transport, Refusal::new(ErrorCode::BadFrame, e.to_string())).await;
        }
    }
}

enum Ended {
    ClientClosed,
    Dropped,
    Unresponsive,
    Failed(CodecError),
    BadFrame(CodecError),
}

/// What the pump needs to know about the session it serves.
struct Link<'a> {
    session: u64,
    connection: u64,
    hub: &'a Hub,
    kick: &'a CancellationToken,
    liveness: Liveness,
}

async fn pump(
    transport: &mut Transport,
    link: &Link<'_>,
    mut inbox: mpsc::Receiver<BrokerMsg>,
    ledger: &mut Ledger,
) -> Ended {
    let (session, connection, hub, kick) = (link.session, link.connection, link.hub, link.kick);
    // Heartbeat: one timer ticks every interval. A tick with no frame since
    // the last one counts as silent; the first silent tick sends a ping, and
    // `missed_heartbeats` silent ticks in a row give up on the connection.
    // Frames only set a flag: reading the clock or re-arming a timer per
    // frame costs measurable throughput.
    let interval = link.liveness.heartbeat;
    let heartbeat = tokio::time::sleep(interval);
    tokio::pin!(heartbeat);
    let mut heard = false;
    let mut silent_ticks = 0;
    loop {
        tokio::select! {
            () = kick.cancelled() => return Ended::Dropped,
            () = &mut heartbeat => {
                heartbeat.as_mut().reset(Instant::now() + interval);
                if std::mem::take(&mut heard) {
                    silent_ticks = 0;
                    continue;
                }
                silent_ticks += 1;
                if silent_ticks >= link.liveness.missed_heartbeats {
                    return Ended::Unresponsive;
                }
                if silent_ticks == 1 {
                    tracing::debug!("heartbeat ping");
                    if let Err(e) = transport.send(BrokerMsg::Ping { nonce: session }).await {
                        return Ended::Failed(e);
                    }
                }
            }
            outgoing = inbox.recv() => {
                // The hub releasing the outbox means: flush and close.
                let Some(first) = outgoing else { return Ended::Dropped };
                let mut write = std::pin::pin!(write_batch(transport, first, &mut inbox, ledger));
                // Usually the socket takes the batch at once; only a write
                // that has to wait gets a timer. A client that stops reading
                // leaves it waiting: past the heartbeat's limit that is a
                // client gone unresponsive, detached like a silent one.
                let written = match futures::poll!(write.as_mut()) {
                    std::task::Poll::Ready(written) => written,
                    std::task::Poll::Pending => tokio::select! {
                        () = kick.cancelled() => return Ended::Dropped,
                        () = tokio::time::sleep(link.liveness.unresponsive_after()) => {
                            return Ended::Unresponsive;
                        }
                        written = write => written,
                    },
                };
                if let Err(e) = written {
                    return Ended::Failed(e);
                }
            }
            incoming = transport.next() => {
                heard = true;
                match incoming {
                None => return Ended::ClientClosed,
                Some(Ok(ClientMsg::Request { id, request })) => {
                    if !hub.send(Command::Request { session, id, request }).await {
                        return Ended::Dropped;
                    }
                }
                Some(Ok(ClientMsg::Pong { .. })) => {
                    if !hub.send(Command::Alive { session, connection }).await {
                        return Ended::Dropped;
                    }
                }
                Some(Ok(ClientMsg::Ack { seq })) => {
                    if !hub.send(Command::Ack { session, connection, seq }).await {
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
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once,
/// noting each event's frame in the ledger.
async fn write_batch(
    transport: &mut Transport,
    first: BrokerMsg,
    inbox: &mut mpsc::Receiver<BrokerMsg>,
    ledger: &mut Ledger,
) -> Result<(), CodecError> {
    feed(transport, first, ledger).await?;
    for _ in 1..MAX_BATCH {
        match inbox.try_recv() {
            Ok(msg) => feed(transport, msg, ledger).await?,
            Err(_) => break,
        }
    }
    transport.flush().await?;
    ledger.flushed();
    Ok(())
}

async fn feed(
    transport: &mut Transport,
    msg: BrokerMsg,
    ledger: &mut Ledger,
) -> Result<(), CodecError> {
    let seq = match &msg {
        BrokerMsg::Event { seq, .. } => Some(*seq),
        _ => None,
    };
    transport.feed(msg).await?;
    if let Some(seq) = seq {
        ledger.fed(transport.codec().encoded(), seq);
    }
    Ok(())
}

/// The client's name and resume claim from a valid `Hello`.
type Hello = (String, Option<mcp_chat_proto::Resume>);

fn check_hello(
    hello: Result<Option<Result<ClientMsg, CodecError>>, tokio::time::error::Elapsed>,
) -> Result<Hello, Refusal> {
    match hello {
        Err(_) => Err(Refusal::new(
            ErrorCode::BadHandshake,
            "no hello within the handshake timeout".into(),
        )),
        Ok(None) => Err(Refusal::new(
            ErrorCode::BadHandshake,
            "closed before hello".into(),
        )),
        Ok(Some(Err(e))) => Err(Refusal::new(
            ErrorCode::BadHandshake,
            format!("first frame unreadable: {e}"),
        )),
        Ok(Some(Ok(ClientMsg::Hello {
            protocol,
            client_name,
            client_version,
            resume,
            ..
        }))) => {
            let client_name = loggable(&client_name);
            if protocol == PROTOCOL_VERSION {
                Ok((client_name, resume))
            } else {
                let client_version = loggable(&client_version);
                Err(Refusal::new(
                    ErrorCode::ProtocolMismatch,
                    format!(
                        "{client_name} {client_version} speaks protocol {protocol}, but broker {} speaks protocol {PROTOCOL_VERSION}; install matching versions of mcp-chat and mcp-chat-broker, then stop the old broker",
                        crate::VERSION
                    ),
                ))
            }
        }
        Ok(Some(Ok(_))) => Err(Refusal::new(
            ErrorCode::BadHandshake,
            "the first frame must be hello".into(),
        )),
    }
}

/// Longest client-supplied name or version that is logged, in characters.
const MAX_LOGGED_CHARS: usize = 64;

/// A client-supplied string made fit for a log line: at most
/// [`MAX_LOGGED_CHARS`] characters (cut on a character boundary, marked
/// with `…`), control and bidi-override characters escaped, so a client can
/// neither flood the log nor forge or hide lines in it.
fn loggable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOGGED_CHARS + 8));
    let mut chars = text.chars();
    for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(unix)]
fn check_peer(stream: &Stream) -> Result<(), Refusal> {
    use interprocess::local_socket::traits::StreamCommon;
    let ours = mcp_chat_proto::socket_path::current_uid();
    match stream.peer_creds().map(|c| c.euid()) {
        Ok(Some(uid)) if uid == ours => Ok(()),
        Ok(Some(uid)) => Err(Refusal::new(
            ErrorCode::WrongUser,
            format!("this broker serves uid {ours} only; peer is uid {uid}"),
        )),
        Ok(None) | Err(_) => Err(Refusal::new(
            ErrorCode::WrongUser,
            "could not determine the peer's uid".into(),
        )),
    }
}

#[cfg(not(unix))]
fn check_peer(_stream: &Stream) -> Result<(), Refusal> {
    // Named pipes are created per user; the pipe's default ACL is the fence.
    Ok(())
}

/// Tells a connection the broker will not serve why, then closes it.
pub(crate) async fn turn_away(stream: Stream, refusal: Refusal) {
    refuse(&mut Framed::new(stream, CountingCodec::default()), refusal).await;
}

/// Best effort: tell the peer why before closing. It may already be gone.
async fn refuse(transport: &mut Transport, Refusal { code, message }: Refusal) {
    let refusal = BrokerMsg::Refused { code, message };
    let _ = tokio::time::timeout(Duration::from_secs(1), transport.send(refusal)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_are_cut_and_escaped_before_logging() {
        assert_eq!(loggable("mcp-chat 0.1.0"), "mcp-chat 0.1.0");
        let long = "é".repeat(MAX_LOGGED_CHARS + 1);
        let cut = loggable(&long);
        assert_eq!(cut, format!("{}…", "é".repeat(MAX_LOGGED_CHARS)));
        assert_eq!(
            loggable(&"é".repeat(MAX_LOGGED_CHARS)).chars().count(),
            MAX_LOGGED_CHARS
        );
        let forged = "x\n2026-01-01T00:00:00Z  INFO forged\u{1b}[2J\u{202e}";
        let safe = loggable(forged);
        assert!(
            !safe.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{safe:?}"
        );
        assert!(safe.starts_with(r"x\n2026"), "{safe:?}");
        assert!(safe.ends_with(r"\u{1b}[2J\u{202e}"), "{safe:?}");
    }

    #[test]
    fn a_huge_client_name_in_a_mismatched_hello_is_not_repeated() {
        let hello = ClientMsg::Hello {
            protocol: PROTOCOL_VERSION + 1,
            client_name: "n".repeat(100_000),
            client_version: "v\n".repeat(100_000),
            pid: 1,
            resume: None,
        };
        let Err(Refusal { code, message }) = check_hello(Ok(Some(Ok(hello)))) else {
            panic!("a protocol mismatch is refused");
        };
        assert_eq!(code, ErrorCode::ProtocolMismatch);
        assert!(message.len() < 1_000, "{} bytes", message.len());
        assert!(!message.contains('\n'));
    }
}
