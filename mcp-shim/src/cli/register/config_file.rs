//! Reading a client's JSON config file. Both clients keep their servers under
//! a top-level `mcpServers` object.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::SERVER_NAME;

/// Why a client config file could not be read or updated. Every variant names
/// the file; none of them leaves the file changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not valid JSON: {reason} at line {line}, column {column}. \
         It was left unchanged: fix it (or move it away) and run this again",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "in {}, {what} is {found}, not a JSON object. \
         It was left unchanged: fix it (or move it away) and run this again",
        path.display()
    )]
    NotAnObject {
        path: PathBuf,
        what: &'static str,
        found: &'static str,
    },
    #[error("{} is not a file path", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot back up {} to {}; the file was left unchanged", path.display(), backup.display())]
    Backup {
        path: PathBuf,
        backup: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} changed {attempts} times while mcp-chat was updating it, so it was left \
         as it is: close the app that keeps writing it and run this again",
        path.display()
    )]
    KeptChanging { path: PathBuf, attempts: usize },
    #[error("cannot write {}; the old file is still in place", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(super) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a config whose top level must be an object. Returns whether it
/// started with a UTF-8 byte order mark (kept on rewrite). An empty file
/// counts as `{}`: there is nothing in it to lose.
pub(super) fn parse_config(
    path: &Path,
    bytes: &[u8],
) -> Result<(bool, Map<String, Value>), ConfigError> {
    let (bom, body) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (true, rest),
        None => (false, bytes),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((bom, Map::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        let (line, column) = (error.line(), error.column());
        let text = error.to_string();
        let suffix = format!(" at line {line} column {column}");
        ConfigError::Malformed {
            path: path.to_path_buf(),
            line,
            column,
            reason: text.strip_suffix(&suffix).unwrap_or(&text).to_owned(),
        }
    })?;
    match value {
        Value::Object(map) => Ok((bom, map)),
        other => Err(ConfigError::NotAnObject {
            path: path.to_path_buf(),
            what: "the top level",
            found: json_kind(&other),
        }),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `mcp-chat` entry of a config, without judging its shape.
pub(super) fn read_server_entry(config: &Path) -> Result<Option<Value>, ConfigError> {
    let Some(bytes) = read_if_exists(config)? else {
        return Ok(None);
    };
    let (_, mut root) = parse_config(config, &bytes)?;
    Ok(match root.remove("mcpServers") {
        Some(Value::Object(mut servers)) => servers.remove(SERVER_NAME),
        _ => None,
    })
}
