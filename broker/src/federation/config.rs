//! Where the federation settings come from: `<config dir>/mcp-chat/config.toml`
//! (so a broker auto-started by a shim picks them up without flags), then
//! `--federation URL --realm NAME` over it. Secrets never come from the
//! command line (`ps` shows it to every user): a credentials file named in
//! the config, or user and password from the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment variables holding a NATS user and password.
pub const USER_ENV: &str = "MCP_CHAT_NATS_USER";
pub const PASSWORD_ENV: &str = "MCP_CHAT_NATS_PASSWORD";

/// How long remote rooms are held while the link to NATS is down, and how
/// long a partner broker may stay silent, before the room ends. Below the
/// 35 s a local partner takes to be found gone.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// A realm names NATS subjects, a stream and a bucket: one token of letters,
/// digits, `-` and `_`.
const MAX_REALM_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// One or more `nats://` / `tls://` URLs, comma-separated in the config.
    pub urls: Vec<String>,
    pub realm: String,
    pub credentials: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// See [`DEFAULT_GRACE`]; shorter in tests.
    pub grace: Duration,
    /// Replicas of the realm's stream and bucket (1 for a single server, 3
    /// for a cluster).
    pub replicas: usize,
    /// Where the realm keys first seen are pinned (see `key_pin`); set by
    /// the broker (beside its blocks), none in tests of the library.
    pub key_pins: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("federation needs both a server URL and a realm (got only {0})")]
    Incomplete(&'static str),
    #[error("realm {0:?} is not valid: use 1 to {MAX_REALM_LEN} letters, digits, '-' or '_'")]
    BadRealm(String),
    #[error("federation URL {0:?} is not valid: use nats://host:port or tls://host:port")]
    BadUrl(String),
    #[error("replicas must be 1 to 5 (got {0})")]
    BadReplicas(usize),
}

/// The `[federation]` table of `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    federation: Option<FileFederation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFederation {
    url: Option<String>,
    realm: Option<String>,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    replicas: Option<usize>,
    grace_s: Option<u64>,
}

/// The default config file: `<config dir>/mcp-chat/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|d| d.config_dir().join("mcp-chat").join("config.toml"))
}

/// Command-line overrides, for debugging.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub url: Option<String>,
    pub realm: Option<String>,
    pub grace: Option<Duration>,
    pub replicas: Option<usize>,
}

/// Reads `path` (a missing file is no federation) and applies `overrides`
/// and the environment. `Ok(None)`: federation is off.
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
) -> Result<Option<FederationConfig>, ConfigError> {
    let file = match path {
        Some(path) => read(path)?,
        None => FileFederation::default(),
    };
    let url = overrides.url.clone().or(file.url);
    let realm = overrides.realm.clone().or(file.realm);
    let (url, realm) = match (url, realm) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ConfigError::Incomplete("a server URL")),
        (None, Some(_)) => return Err(ConfigError::Incomplete("a realm")),
        (Some(url), Some(realm)) => (url, realm),
    };
    let urls: Vec<String> = url
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::BadUrl(url));
    }
    for u in &urls {
        if !(u.starts_with("nats://") || u.starts_with("tls://")) {
            return Err(ConfigError::BadUrl(u.clone()));
        }
    }
    check_realm(&realm)?;
    let replicas = overrides.replicas.or(file.replicas).unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err(ConfigError::BadReplicas(replicas));
    }
    Ok(Some(FederationConfig {
        urls,
        realm,
        credentials: file.credentials,
        tls_ca: file.tls_ca,
        user: std::env::var(USER_ENV).ok().filter(|v| !v.is_empty()),
        password: std::env::var(PASSWORD_ENV).ok().filter(|v| !v.is_empty()),
        grace: overrides
            .grace
            .or(file.grace_s.map(Duration::from_secs))
            .unwrap_or(DEFAULT_GRACE),
        replicas,
        key_pins: None,
    }))
}

fn read(path: &Path) -> Result<FileFederation, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileFederation::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Ok(file.federation.unwrap_or_default())
}

pub fn check_realm(realm: &str) -> Result<(), ConfigError> {
    let ok = !realm.is_empty()
        && realm.len() <= MAX_REALM_LEN
        && realm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadRealm(realm.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_and_no_flags_is_off() {
        assert!(load(None, &Overrides::default()).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("config.toml");
        assert!(
            load(Some(&missing), &Overrides::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[federation]\nurl = \"nats://a:4222, nats://b:4222\"\nrealm = \"team\"\ncredentials = \"/x.creds\"\n",
        )
        .unwrap();
        let c = load(Some(&path), &Overrides::default()).unwrap().unwrap();
        assert_eq!(c.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.realm, "team");
        assert_eq!(c.credentials.as_deref(), Some(Path::new("/x.creds")));
        let over = Overrides {
            realm: Some("other".into()),
            ..Overrides::default()
        };
        assert_eq!(load(Some(&path), &over).unwrap().unwrap().realm, "other");
    }

    #[test]
    fn bad_settings_are_named() {
        let only_url = Overrides {
            url: Some("nats://a:1".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            load(None, &only_url),
            Err(ConfigError::Incomplete(_))
        ));
        let bad_realm = Overrides {
            url: Some("nats://a:1".into()),
            realm: Some("a.b".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            load(None, &bad_realm),
            Err(ConfigError::BadRealm(_))
        ));
        let bad_url = Overrides {
            url: Some("http://a:1".into()),
            realm: Some("r".into()),
            ..Overrides::default()
        };
        assert!(matches!(load(None, &bad_url), Err(ConfigError::BadUrl(_))));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // A password in the file is refused: it belongs in the environment
        // or a credentials file with its own permissions.
        std::fs::write(&path, "[federation]\npassword = \"x\"\n").unwrap();
        assert!(matches!(
            load(Some(&path), &Overrides::default()),
            Err(ConfigError::Parse { .. })
        ));
    }
}
