//! What a secured NATS server needs, made fresh in a test: TLS certificates
//! (a CA and a server certificate for loopback, by `rcgen`) and NATS
//! decentralized auth (an operator, an account with JetStream and user
//! `.creds` files, by `nkeys` and hand-signed JWTs, as `nsc` would write
//! them). Nothing here is a secret worth keeping: every run makes new ones.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair as CertKey};
use serde_json::{Value, json};

/// A CA and a server certificate it signed, as PEM files in one directory.
pub struct Tls {
    /// The CA certificate: what a client needs to trust the server.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// A new CA named `name`, and a certificate for `127.0.0.1` and
    /// `localhost` signed by it, written under `dir` (created if needed).
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca_key = CertKey::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a client holding another test's CA must find no
        // issuer, not a same-named one with the wrong key.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("mcp-chat test CA {name}"));
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = CertKey::generate()?;
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, format!("mcp-chat test server {name}"));
        let server_cert = server_params.signed_by(&server_key, &issuer)?;
        let tls = Self {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&tls.ca, ca_cert.pem())?;
        std::fs::write(&tls.cert, server_cert.pem())?;
        std::fs::write(&tls.key, server_key.serialize_pem())?;
        Ok(tls)
    }

    /// The server config block serving TLS with this certificate.
    pub fn server_block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            self.cert, self.key
        )
    }
}

/// NATS decentralized auth: an operator and one account (JetStream
/// enabled) that the server trusts through its config (the memory
/// resolver, preloaded), and users of that account. The server also needs
/// a system account for JetStream; it is another account of the operator.
pub struct Operator {
    operator: KeyPair,
    account: KeyPair,
    system: KeyPair,
}

impl Operator {
    pub fn generate() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
            system: KeyPair::new_account(),
        }
    }

    /// The server config lines (JSON strings are valid NATS config strings).
    pub fn server_block(&self) -> anyhow::Result<String> {
        let operator = jwt(
            &self.operator,
            &self.operator.public_key(),
            "mcp-chat-test-operator",
            json!({"type": "operator", "version": 2}),
        )?;
        let account = jwt(
            &self.operator,
            &self.account.public_key(),
            "CHAT",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1,
                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1,
                    "consumer": -1,
                },
                "type": "account",
                "version": 2,
            }),
        )?;
        let system = jwt(
            &self.operator,
            &self.system.public_key(),
            "SYS",
            json!({"type": "account", "version": 2}),
        )?;
        Ok(format!(
            "operator: {operator:?}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {chat}: {account:?}\n  {sys}: {system:?}\n}}\n",
            chat = self.account.public_key(),
            sys = self.system.public_key(),
        ))
    }

    /// Writes a `.creds` file (the user's JWT and its nkey seed, in the
    /// format `nsc` writes) for a new user of the account; returns the
    /// file's two secrets, the JWT and the seed, for checks.
    pub fn user_creds(&self, path: &Path, name: &str) -> anyhow::Result<(String, String)> {
        let user = KeyPair::new_user();
        let token = jwt(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        )?;
        let seed = user.seed().context("a user's seed")?;
        std::fs::write(
            path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n"
            ),
        )?;
        Ok((token, seed))
    }
}

/// A NATS JWT: `claims` about `subject`, signed by `issuer` (ed25519 nkey).
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = json!({
        // Unique per subject and second, which is all a test needs.
        "jti": format!("{subject}-{now}"),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .context("signing a NATS JWT")?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}
