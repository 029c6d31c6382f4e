//! Where the HTTP server's bearer token comes from.
//!
//! A secret on the command line is readable by every user of the machine
//! (`ps`, `/proc/PID/cmdline`), so besides `--token` there are
//! `--token-file FILE` and the environment (`MCP_CHAT_TOKEN`; the older
//! `MCP_CHAT_HTTP_TOKEN` still works), which other users cannot read.
//!
//! Where the OS does not say who owns a loopback connection (anything but
//! Linux), a loopback server needs a token too. It then generates one and
//! keeps it in the socket directory, `0600`, so every run of `mcp-chat
//! serve` and every client registered with it use the same token.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use mcp_chat_proto::socket_path::prepare_socket_dir;

use super::guard::MIN_TOKEN_LEN;

/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "MCP_CHAT_TOKEN";
/// Its earlier name, still read when [`TOKEN_ENV`] is unset.
pub const LEGACY_TOKEN_ENV: &str = "MCP_CHAT_HTTP_TOKEN";
/// The generated token's file name, in the socket directory.
pub const GENERATED_TOKEN_FILE: &str = "http.token";

/// Where a token came from: said in warnings and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--token`: visible to every user in `ps`.
    Flag,
    File(PathBuf),
    Env(&'static str),
    Generated(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: String,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the token file {} is empty; put a secret of at least {MIN_TOKEN_LEN} characters in it, e.g. `openssl rand -hex 32 > {}`", path.display(), path.display())]
    Empty { path: PathBuf },
    #[error("preparing the socket directory for the generated token: {0}")]
    Dir(#[from] mcp_chat_proto::SocketDirError),
    #[error("writing the generated token to {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("the token file {} does not hold a usable token (at least {MIN_TOKEN_LEN} characters of visible ASCII); delete it and `mcp-chat serve` makes a new one", path.display())]
    Unusable { path: PathBuf },
}

/// The token the user configured, if any: `--token-file`, else `--token`
/// (clap lets only one of the two through), else the environment as read by
/// `env`.
pub fn configured(
    flag: Option<&str>,
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Token>, TokenError> {
    if let Some(path) = file {
        return Ok(Some(Token {
            secret: read_file(path)?,
            source: Source::File(path.to_owned()),
        }));
    }
    if let Some(secret) = flag {
        return Ok(Some(Token {
            secret: secret.to_owned(),
            source: Source::Flag,
        }));
    }
    Ok([TOKEN_ENV, LEGACY_TOKEN_ENV].into_iter().find_map(|name| {
        let secret = env(name).filter(|v| !v.is_empty())?;
        Some(Token {
            secret,
            source: Source::Env(name),
        })
    }))
}

/// A token file's secret: its text less surrounding whitespace, so the
/// newline of `openssl rand -hex 32 > FILE` is no part of it.
pub fn read_file(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}

/// The permission bits of `path` that let others read it, if any.
#[cfg(unix)]
pub fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path).ok()?.mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub fn readable_by_others(_path: &Path) -> Option<u32> {
    None
}

/// Where the generated token lives for the broker at `socket`.
pub fn generated_path(socket: &Path) -> PathBuf {
    socket.with_file_name(GENERATED_TOKEN_FILE)
}

/// The generated token for the broker at `socket`: read from its file, or
/// made and written there (`0600`, in the `0700` socket directory).
pub fn generated(socket: &Path) -> Result<Token, TokenError> {
    prepare_socket_dir(socket)?;
    let path = generated_path(socket);
    Ok(Token {
        secret: load_or_create(&path)?,
        source: Source::Generated(path),
    })
}

/// Reads the token at `path`, or creates it. Two servers starting at once
/// both end up with the one that was linked into place first.
fn load_or_create(path: &Path) -> Result<String, TokenError> {
    match read_file(path) {
        Ok(secret) => return usable(secret, path),
        Err(TokenError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = new_secret();
    let write_error = |source| TokenError::Write {
        path: path.to_owned(),
        source,
    };
    // Written whole under a private name, then linked into place: a reader
    // never sees a half-written file, and an existing token is never replaced.
    let temp = path.with_extension(format!("token.{}.tmp", std::process::id()));
    let written = write_private(&temp, &secret);
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => usable(read_file(path)?, path),
        Err(e) => Err(write_error(e)),
    }
}

fn usable(secret: String, path: &Path) -> Result<String, TokenError> {
    if secret.len() >= MIN_TOKEN_LEN && secret.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(secret)
    } else {
        Err(TokenError::Unusable {
            path: path.to_owned(),
        })
    }
}

fn write_private(path: &Path, secret: &str) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{secret}")?;
    file.sync_all()
}

/// 64 hex digits from the OS's random source: two v4 UUIDs carry 244
/// random bits, and `uuid` is already how this workspace asks for them.
pub(super) fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn file_beats_flag_beats_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-the-file-0123456789\n").unwrap();
        let all = env(&[(TOKEN_ENV, "from-env"), (LEGACY_TOKEN_ENV, "legacy")]);
        let token = configured(Some("flag"), Some(&file), &all)
            .unwrap()
            .unwrap();
        assert_eq!(token.secret, "from-the-file-0123456789");
        assert_eq!(token.source, Source::File(file.clone()));
        let token = configured(Some("flag"), None, &all).unwrap().unwrap();
        assert_eq!(
            (token.secret.as_str(), token.source),
            ("flag", Source::Flag)
        );
        let token = configured(None, None, &all).unwrap().unwrap();
        assert_eq!(token.source, Source::Env(TOKEN_ENV));
        let token = configured(None, None, env(&[(LEGACY_TOKEN_ENV, "legacy")]))
            .unwrap()
            .unwrap();
        assert_eq!(token.source, Source::Env(LEGACY_TOKEN_ENV));
        // An empty variable is unset, as in a shell's `VAR= cmd`.
        assert_eq!(
            configured(None, None, env(&[(TOKEN_ENV, "")])).unwrap(),
            None
        );
        assert_eq!(configured(None, None, env(&[])).unwrap(), None);
    }

    #[test]
    fn a_missing_or_empty_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let error = configured(None, Some(&missing), env(&[])).unwrap_err();
        assert!(matches!(error, TokenError::Read { .. }), "{error}");
        assert!(error.to_string().contains("nope"), "{error}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = configured(None, Some(&empty), env(&[])).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn the_generated_token_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock").join("broker.sock");
        let first = generated(&socket).unwrap();
        let path = generated_path(&socket);
        assert_eq!(first.source, Source::Generated(path.clone()));
        assert_eq!(first.secret.len(), 64);
        assert!(first.secret.bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            assert_eq!(readable_by_others(&path), None);
        }
        // The next run uses the same token, so registered clients keep working.
        assert_eq!(generated(&socket).unwrap().secret, first.secret);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [GENERATED_TOKEN_FILE], "no temporary file left");
    }

    #[test]
    fn an_unusable_generated_token_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock").join("broker.sock");
        prepare_socket_dir(&socket).unwrap();
        std::fs::write(generated_path(&socket), "short\n").unwrap();
        let error = generated(&socket).unwrap_err();
        assert!(error.to_string().contains("delete it"), "{error}");
        assert_eq!(
            std::fs::read_to_string(generated_path(&socket)).unwrap(),
            "short\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_open_token_file_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by_others(&file), Some(0o644));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(readable_by_others(&file), None);
    }
}
