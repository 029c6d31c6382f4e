//! Federation over a secured NATS server (issue 12, "Beyond one machine"):
//! TLS with the realm's own CA (`tls_ca`), and NATS decentralized auth with
//! a `.creds` file (`credentials`). Both are set in `config.toml`, as a user
//! sets them; a broker whose settings do not fit the server serves its own
//! sessions on and says why in `status` and `doctor`. The certificates and
//! JWTs are made fresh by the test (`mcp_chat_testkit::nats_auth`).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::path::Path;

use mcp_chat_testkit::nats::NatsServer;
use mcp_chat_testkit::nats_auth::{Operator, Tls};
use mcp_chat_tests::federation::{chat, connected, failed, start_broker, write_config};
use mcp_chat_tests::{ProtoClient, TestSocket, within};

/// `mcp-chat status` and `mcp-chat doctor` against the broker on `socket`:
/// their standard outputs.
async fn human_reports(socket: &Path, home: &Path) -> (String, String) {
    let run = |arg: &'static str| {
        tokio::process::Command::new(mcp_chat_tests::bin_path("mcp-chat"))
            .arg(arg)
            .env("MCP_CHAT_SOCKET", socket)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .stdin(std::process::Stdio::null())
            .output()
    };
    let status = within("mcp-chat status", run("status")).await.unwrap();
    let doctor = within("mcp-chat doctor", run("doctor")).await.unwrap();
    (
        String::from_utf8_lossy(&status.stdout).into_owned(),
        String::from_utf8_lossy(&doctor.stdout).into_owned(),
    )
}

/// A broker that cannot join its realm says why in `status` and `doctor`,
/// and goes on matching and relaying its own sessions.
async fn refused_but_serving_locally(socket: &Path, home: &Path, why: &str) {
    let error = failed(socket, why).await;
    eprintln!("refused as it should be: {error}");
    let (status, doctor) = human_reports(socket, home).await;
    assert!(status.contains("NOT connected"), "{status}");
    assert!(status.contains(&format!("last error: {error}")), "{status}");
    assert!(
        doctor.contains("federation: realm test on") && doctor.contains("(last error: "),
        "{doctor}"
    );
    let mut one = ProtoClient::connect(socket).await;
    let mut two = ProtoClient::connect(socket).await;
    chat(&mut one, &mut two).await;
}

/// A server that speaks TLS only, with a certificate from the realm's own
/// CA: brokers given that CA (`tls_ca`) meet and chat across; a broker
/// without it, or with another CA, is refused (the certificate's issuer is
/// unknown to it) and serves locally.
#[tokio::test]
async fn tls_with_the_realms_ca_and_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::generate(&dir.path().join("tls"), "realm").unwrap();
    let other_ca = Tls::generate(&dir.path().join("tls"), "other").unwrap().ca;
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, tls.server_block()).unwrap();
    let nats = NatsServer::start_with(&dir.path().join("nats"), &["-c", conf.to_str().unwrap()])
        .await
        .unwrap();
    let url = format!("url = \"tls://127.0.0.1:{}\"", nats.port);
    let realm = "realm = \"test\"".to_owned();
    let config = |name: &str, ca: Option<&Path>| {
        let config_dir = dir.path().join(name);
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut lines = vec![url.clone(), realm.clone()];
        if let Some(ca) = ca {
            lines.push(format!("tls_ca = {:?}", ca.to_str().unwrap()));
        }
        write_config(&config_dir, &lines)
    };

    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let with_ca = config("with-ca", Some(&tls.ca));
    let _a = start_broker(&sa.path, &with_ca, 20_000, &[]).await;
    let _b = start_broker(&sb.path, &with_ca, 20_000, &[]).await;
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    chat(&mut a1, &mut b1).await;

    let home = tempfile::tempdir().unwrap();
    let no_ca = TestSocket::new();
    let _c = start_broker(&no_ca.path, &config("no-ca", None), 20_000, &[]).await;
    refused_but_serving_locally(&no_ca.path, home.path(), "UnknownIssuer").await;
    let wrong_ca = TestSocket::new();
    let _d = start_broker(
        &wrong_ca.path,
        &config("wrong-ca", Some(&other_ca)),
        20_000,
        &[],
    )
    .await;
    refused_but_serving_locally(&wrong_ca.path, home.path(), "UnknownIssuer").await;
}

/// NATS decentralized auth: the server trusts an operator, whose account
/// (with JetStream) signed each broker's user; brokers given their `.creds`
/// file by `config.toml` meet and chat across, and neither the file's JWT
/// nor its seed is on their command line. A missing, unreadable or garbled
/// file, or one the server does not trust, leaves a broker serving locally
/// with the reason in `status` and `doctor`.
#[tokio::test]
async fn a_credentials_file_and_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::generate();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, operator.server_block().unwrap()).unwrap();
    let nats = NatsServer::start_with(&dir.path().join("nats"), &["-c", conf.to_str().unwrap()])
        .await
        .unwrap();
    let config = |name: &str, creds: &Path| {
        let config_dir = dir.path().join(name);
        std::fs::create_dir_all(&config_dir).unwrap();
        write_config(
            &config_dir,
            &[
                format!("url = \"{}\"", nats.url()),
                "realm = \"test\"".to_owned(),
                format!("credentials = {:?}", creds.to_str().unwrap()),
            ],
        )
    };
    let creds = |name: &str, operator: &Operator| {
        let path = dir.path().join(format!("{name}.creds"));
        let secrets = operator.user_creds(&path, name).unwrap();
        (path, secrets)
    };

    let (a_creds, (a_jwt, a_seed)) = creds("broker-a", &operator);
    let (b_creds, _) = creds("broker-b", &operator);
    let (sa, sb) = (TestSocket::new(), TestSocket::new());
    let a = start_broker(&sa.path, &config("a", &a_creds), 20_000, &[]).await;
    let _b = start_broker(&sb.path, &config("b", &b_creds), 20_000, &[]).await;
    connected(&sa.path).await;
    connected(&sb.path).await;
    let mut a1 = ProtoClient::connect(&sa.path).await;
    let mut b1 = ProtoClient::connect(&sb.path).await;
    chat(&mut a1, &mut b1).await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(&a_seed) && !cmdline.contains(&a_jwt),
        "{cmdline}"
    );

    let home = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.creds");
    let garbled = dir.path().join("garbled.creds");
    std::fs::write(&garbled, "not a creds file\n").unwrap();
    let (untrusted, _) = creds("stranger", &Operator::generate());
    for (name, path, why) in [
        ("missing", missing.as_path(), "reading credentials"),
        // A directory: unreadable as a file, even for root.
        ("unreadable", dir.path(), "reading credentials"),
        ("garbled", garbled.as_path(), "reading credentials"),
        ("untrusted", untrusted.as_path(), "authorization violation"),
    ] {
        let socket = TestSocket::new();
        let _broker = start_broker(&socket.path, &config(name, path), 20_000, &[]).await;
        refused_but_serving_locally(&socket.path, home.path(), why).await;
    }
}
