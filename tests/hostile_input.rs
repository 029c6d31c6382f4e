//! Hostile bytes against one live broker: random bytes, truncated frames,
//! lying length prefixes (up to `u32::MAX`), deeply nested JSON, strings
//! filling the frame cap, invalid UTF-8. Each case gets its own connection,
//! sometimes before and sometimes after a valid `Hello`. After every case the
//! broker must still be running and rooms opened at the start must still
//! relay a message; at the end its peak memory must show that no lying
//! length prefix was honoured.
//!
//! The cases come from a fixed proptest seed, so every run sends the same
//! bytes; `MCP_CHAT_HOSTILE_CASES` sets how many (default 96). The fuzz
//! target `fuzz/fuzz_targets/decode_frames.rs` explores the same decoder
//! without a seed.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mcp_chat_proto::{
    BrokerMsg, ClientCodec, ErrorCode, Event, MAX_FRAME_BYTES, PROTOCOL_VERSION, Reply, RoomId,
};
use mcp_chat_testkit::sys::{Memory, mib};
use mcp_chat_tests::proto_client::{hello, matched_pair};
use mcp_chat_tests::{BrokerProcess, ProtoClient, TestSocket, within};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Rooms opened before the first case and checked after every one. Several,
/// so that no sender comes near the per-session rate limit (a burst of 40):
/// with 4 rooms and both directions, 128 cases are 16 messages per sender.
/// (Many more cases do meet it; the witnesses then wait as told.)
const WITNESS_ROOMS: usize = 4;

/// Bytes streamed behind each oversized length prefix in the memory check.
const BODY_BEHIND_HUGE_PREFIX: usize = 96 * 1024 * 1024;

/// How far the broker's peak RSS may rise during the whole test. Honest
/// traffic here peaks at a few 1 MiB frames in flight (the read buffer, the
/// parsed string, the reply), so a few MiB. The memory check streams
/// [`BODY_BEHIND_HUGE_PREFIX`] (96 MiB) behind a `u32::MAX` prefix and
/// behind a prefix one byte over the cap: a decoder that honoured either
/// would keep buffering that body while waiting for the rest of its frame,
/// and the peak would rise by about 96 MiB, past this bound. Staying under
/// it proves the prefixes were refused from the header alone.
const PEAK_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

const ROOM: &str = "6f1c2a52-8b44-4c8e-9d57-0c1f9d3f5a10";

/// A message the broker would accept, as a JSON payload without the prefix.
#[derive(Debug, Clone, Copy)]
enum Sample {
    Hello,
    EnterQueue,
    SendMessage,
    Status,
    Ping,
    Unknown,
}

impl Sample {
    fn json(self) -> Vec<u8> {
        match self {
            Self::Hello => serde_json::to_vec(&hello(PROTOCOL_VERSION)).unwrap(),
            Self::EnterQueue => br#"{"type":"request","id":1,"request":{"op":"enter_queue"}}"#.to_vec(),
            Self::SendMessage => format!(
                r#"{{"type":"request","id":2,"request":{{"op":"send_message","room_id":"{ROOM}","message":"hi"}}}}"#
            )
            .into_bytes(),
            Self::Status => br#"{"type":"request","id":3,"request":{"op":"status"}}"#.to_vec(),
            Self::Ping => br#"{"type":"request","id":4,"request":{"op":"ping"}}"#.to_vec(),
            Self::Unknown => br#"{"type":"teleport","to":"mars"}"#.to_vec(),
        }
    }
}

/// Where a hostile JSON string sits inside an otherwise valid message.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// `send_message`'s text.
    Message,
    /// `Hello`'s `client_name` (a valid `Hello` if the string is).
    ClientName,
    /// An extra field nobody reads.
    Extra,
}

impl Place {
    /// The JSON before and after the string's contents (quotes included).
    fn envelope(self) -> (String, String) {
        match self {
            Self::Message => (
                format!(
                    r#"{{"type":"request","id":9,"request":{{"op":"send_message","room_id":"{ROOM}","message":""#
                ),
                r#""}}"#.to_owned(),
            ),
            Self::ClientName => (
                format!(r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"client_name":""#),
                r#"","client_version":"0","pid":1}"#.to_owned(),
            ),
            Self::Extra => (
                r#"{"type":"request","id":9,"request":{"op":"status"},"padding":""#.to_owned(),
                r#""}"#.to_owned(),
            ),
        }
    }

    fn wrap(self, contents: &[u8]) -> Vec<u8> {
        let (before, after) = self.envelope();
        [before.as_bytes(), contents, after.as_bytes()].concat()
    }
}

/// What fills a huge string: plain, multi-byte, or escaped characters.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Ascii,
    TwoByte,
    Escape,
    UnicodeEscape,
}

impl Fill {
    fn unit(self) -> &'static [u8] {
        match self {
            Self::Ascii => b"a",
            Self::TwoByte => "é".as_bytes(),
            Self::Escape => br"\n",
            Self::UnicodeEscape => br"\u00e9",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Nesting {
    Array,
    Object,
}

/// What follows a lying length prefix.
#[derive(Debug, Clone)]
enum Body {
    Random(Vec<u8>),
    Valid(Sample),
    /// Exactly one byte more than the cap, of a valid JSON string.
    JustOverCap,
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Random(bytes) => bytes.clone(),
            Self::Valid(sample) => sample.json(),
            Self::JustOverCap => {
                let mut body = b"\"".to_vec();
                body.resize(MAX_FRAME_BYTES, b'x');
                body.extend_from_slice(b"\"");
                body
            }
        }
    }
}

/// One hostile input, described by parameters so a failure prints small.
#[derive(Debug, Clone)]
enum Hostile {
    /// Bytes with no structure at all.
    Random(Vec<u8>),
    /// Well-formed frames cut short; the connection then closes.
    Truncated { sample: Sample, keep: Index },
    /// A length prefix that lies about what follows.
    LyingPrefix { claimed: u32, body: Body },
    /// A document nested `depth` deep, bare or as a request's message.
    Nested {
        depth: usize,
        nesting: Nesting,
        in_request: bool,
    },
    /// A string that makes the frame `MAX_FRAME_BYTES + over` bytes long:
    /// at or just under the cap it is read, just over it is refused.
    HugeString { over: i64, fill: Fill, place: Place },
    /// Bytes that are not UTF-8 (or a lone surrogate escape) in a string.
    BadUtf8 { bad: Vec<u8>, place: Place },
    /// A valid frame and then garbage, in one write.
    ValidThenGarbage { sample: Sample, garbage: Vec<u8> },
}

impl Hostile {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Random(bytes) => bytes.clone(),
            Self::Truncated { sample, keep } => {
                let whole = frame(&sample.json());
                whole[..keep.index(whole.len())].to_vec()
            }
            Self::LyingPrefix { claimed, body } => {
                [&claimed.to_be_bytes()[..], &body.bytes()].concat()
            }
            Self::Nested {
                depth,
                nesting,
                in_request,
            } => {
                let (open, close): (&[u8], &[u8]) = match nesting {
                    Nesting::Array => (b"[", b"]"),
                    Nesting::Object => (br#"{"a":"#, b"}"),
                };
                let mut doc = open.repeat(*depth);
                doc.extend_from_slice(b"0");
                doc.extend_from_slice(&close.repeat(*depth));
                if *in_request {
                    let before = format!(
                        r#"{{"type":"request","id":9,"request":{{"op":"send_message","room_id":"{ROOM}","message":"#
                    );
                    doc = [before.as_bytes(), &doc, b"}}"].concat();
                }
                frame(&doc)
            }
            Self::HugeString { over, fill, place } => {
                let (before, after) = place.envelope();
                let target = usize::try_from(i64::try_from(MAX_FRAME_BYTES).unwrap() + over)
                    .unwrap()
                    - before.len()
                    - after.len();
                let unit = fill.unit();
                let mut contents = unit.repeat(target / unit.len());
                contents.resize(target, b'a');
                let payload = place.wrap(&contents);
                assert_eq!(
                    i64::try_from(payload.len()).unwrap(),
                    i64::try_from(MAX_FRAME_BYTES).unwrap() + over
                );
                frame(&payload)
            }
            Self::BadUtf8 { bad, place } => {
                let contents = [&b"hello "[..], bad, b" world"].concat();
                frame(&place.wrap(&contents))
            }
            Self::ValidThenGarbage { sample, garbage } => {
                [frame(&sample.json()), garbage.clone()].concat()
            }
        }
    }
}

/// A length prefix and `payload`, the way an honest peer frames it.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    [&len.to_be_bytes()[..], payload].concat()
}

fn sample() -> impl Strategy<Value = Sample> {
    prop_oneof![
        Just(Sample::Hello),
        Just(Sample::EnterQueue),
        Just(Sample::SendMessage),
        Just(Sample::Status),
        Just(Sample::Ping),
        Just(Sample::Unknown),
    ]
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        Just(Place::Message),
        Just(Place::ClientName),
        Just(Place::Extra)
    ]
}

fn bad_utf8() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0xff]),
        Just(vec![0x80]),
        Just(vec![0xc3, 0x28]),
        Just(vec![0xc0, 0xaf]),                   // overlong '/'
        Just(vec![0xe2, 0x82]),                   // cut short
        Just(vec![0xed, 0xa0, 0x80]),             // a UTF-16 surrogate
        Just(vec![0xf4, 0x90, 0x80, 0x80]),       // past U+10FFFF
        Just(vec![0xf8, 0x88, 0x80, 0x80, 0x80]), // five-byte form
        Just(br"\ud800".to_vec()),                // lone surrogate escape
        Just(br"\udc00\ud800".to_vec()),
        proptest::collection::vec(0x80u8..=0xff, 1..16),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let cap = u32::try_from(MAX_FRAME_BYTES).unwrap();
    let claimed = prop_oneof![
        Just(u32::MAX),
        Just(cap + 1),
        (cap + 1)..=u32::MAX,
        0u32..8,
        8u32..=cap,
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Body::Random),
        sample().prop_map(Body::Valid),
        Just(Body::JustOverCap),
    ];
    let depth = prop_oneof![1usize..100, 120usize..140, 1_000usize..150_000];
    let nesting = prop_oneof![Just(Nesting::Array), Just(Nesting::Object)];
    let fill = prop_oneof![
        Just(Fill::Ascii),
        Just(Fill::TwoByte),
        Just(Fill::Escape),
        Just(Fill::UnicodeEscape)
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096).prop_map(Hostile::Random),
        (sample(), any::<Index>()).prop_map(|(sample, keep)| Hostile::Truncated { sample, keep }),
        (claimed, body).prop_map(|(claimed, body)| Hostile::LyingPrefix { claimed, body }),
        (depth, nesting, any::<bool>()).prop_map(|(depth, nesting, in_request)| {
            Hostile::Nested {
                depth,
                nesting,
                in_request,
            }
        }),
        (-64i64..=64, fill, place()).prop_map(|(over, fill, place)| Hostile::HugeString {
            over,
            fill,
            place
        }),
        (bad_utf8(), place()).prop_map(|(bad, place)| Hostile::BadUtf8 { bad, place }),
        (sample(), proptest::collection::vec(any::<u8>(), 1..256))
            .prop_map(|(sample, garbage)| Hostile::ValidThenGarbage { sample, garbage }),
    ]
}

/// Sends `bytes` on a fresh connection (after a `Hello` if asked), closes
/// the sending side, and waits until the broker has closed the connection.
/// Every hostile input ends that way: the broker refuses it, or reads to
/// the end of the stream and hangs up. Whatever it answers is discarded.
async fn attack(socket: &Path, bytes: &[u8], after_hello: bool) {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    if after_hello {
        let mut framed = Framed::new(stream, ClientCodec::new());
        framed.send(hello(PROTOCOL_VERSION)).await.unwrap();
        match within("welcome", framed.next()).await {
            Some(Ok(BrokerMsg::Welcome { .. })) => {}
            other => panic!("expected welcome, got {other:?}"),
        }
        stream = framed.into_inner();
    }
    let (mut reader, mut writer) = stream.into_split();
    let write = async move {
        // The broker may hang up as soon as it has seen enough, so a failed
        // write is expected. Dropping the writer shuts our side down.
        let _ = writer.write_all(bytes).await;
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut discard = vec![0u8; 64 * 1024];
        // Ends at the broker's close (0 bytes) or a reset.
        while let Ok(1..) = reader.read(&mut discard).await {}
    };
    within("the broker to close a hostile connection", async {
        tokio::join!(write, read)
    })
    .await;
}

/// Streams `body_len` bytes behind a lying prefix, stopping at the first
/// failed write (the broker hung up, as it should, after the header).
async fn prefix_then_flood(socket: &Path, claimed: u32, body_len: usize, after_hello: bool) {
    let mut bytes = claimed.to_be_bytes().to_vec();
    bytes.resize(4 + body_len, b' ');
    attack(socket, &bytes, after_hello).await;
}

struct Witnesses {
    rooms: Vec<(ProtoClient, ProtoClient, RoomId)>,
    checks: usize,
}

impl Witnesses {
    async fn open(socket: &Path) -> Self {
        let mut rooms = Vec::new();
        for _ in 0..WITNESS_ROOMS {
            rooms.push(matched_pair(socket).await);
        }
        Self { rooms, checks: 0 }
    }

    /// One message through one of the rooms, in turn, alternating direction.
    async fn check(&mut self, what: &str) {
        let n = self.checks;
        self.checks += 1;
        let (a, b, room_id) = &mut self.rooms[n % WITNESS_ROOMS];
        let (from, to) = if (n / WITNESS_ROOMS).is_multiple_of(2) {
            (a, b)
        } else {
            (b, a)
        };
        let text = format!("still chatting after case {n}");
        loop {
            match from.say(*room_id, &text).await {
                Reply::Sent => break,
                // More cases than the rate allows (MCP_CHAT_HOSTILE_CASES):
                // the broker's pace, not a synchronisation.
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    retry_after_ms,
                    ..
                } => {
                    let wait = Duration::from_millis(retry_after_ms.unwrap_or(50));
                    tokio::time::sleep(wait).await;
                }
                other => panic!("the witness message was refused after {what}: {other:?}"),
            }
        }
        match within("the witness message", to.next_event()).await {
            Event::MessageReceived {
                room_id: got,
                message,
                ..
            } => {
                assert_eq!(
                    (got, message.as_str()),
                    (*room_id, text.as_str()),
                    "after {what}"
                );
            }
            other => panic!("expected the witness message after {what}, got {other:?}"),
        }
    }
}

#[test]
fn hostile_bytes_never_hurt_the_broker_or_other_rooms() {
    let cases = std::env::var("MCP_CHAT_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = TestSocket::new();
    let mut broker = runtime.block_on(BrokerProcess::start(&socket.path, &[]));
    let pid = broker.child.id().unwrap();
    // Shared by the test closure, which proptest takes as `Fn`.
    let witnesses = tokio::sync::Mutex::new(runtime.block_on(Witnesses::open(&socket.path)));
    let before = Memory::of(pid).unwrap();

    // Fixed seed: every run sends the same cases. Failures are not written
    // to a regressions file; the printed minimal case is the reproduction.
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let result = runner.run(&(hostile(), any::<bool>()), |(hostile, after_hello)| {
        let what = format!("{hostile:?} (after hello: {after_hello})");
        runtime.block_on(async {
            attack(&socket.path, &hostile.bytes(), after_hello).await;
            witnesses.lock().await.check(&what).await;
        });
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }

    // The lying prefixes again, each with 96 MiB behind it, for the memory
    // bound below.
    let cap = u32::try_from(MAX_FRAME_BYTES).unwrap();
    runtime.block_on(async {
        for claimed in [u32::MAX, cap + 1] {
            for after_hello in [false, true] {
                prefix_then_flood(&socket.path, claimed, BODY_BEHIND_HUGE_PREFIX, after_hello)
                    .await;
                witnesses
                    .lock()
                    .await
                    .check(&format!("a {claimed}-byte prefix and 96 MiB"))
                    .await;
            }
        }
    });

    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker is still running"
    );
    let after = Memory::of(pid).unwrap();
    eprintln!(
        "broker memory: RSS {} before the cases, peak {} before and {} after, RSS {} after",
        mib(before.rss),
        mib(before.peak),
        mib(after.peak),
        mib(after.rss)
    );
    assert!(
        after.peak <= before.peak.max(before.rss) + PEAK_GROWTH_BOUND,
        "the broker's peak RSS rose from {} to {}: a lying length prefix was honoured",
        mib(before.peak),
        mib(after.peak)
    );
}
