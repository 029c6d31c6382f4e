//! The mcp-chat binary a client is told to launch.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

/// The absolute path of the mcp-chat binary, as UTF-8 (a JSON config holds
/// nothing else). The directory is canonicalized but a symlink in the last
/// component is kept, so `/opt/homebrew/bin/mcp-chat` stays valid across
/// upgrades instead of pinning one versioned Cellar directory.
pub(super) fn resolve_command(explicit: Option<&Path>) -> anyhow::Result<String> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find the path of this executable; pass --command PATH")?,
    };
    let checked = absolute_path(&path).and_then(|absolute| {
        let meta = fs::metadata(&absolute)?;
        Ok((absolute, meta))
    });
    let (absolute, meta) = match checked {
        Ok(found) => found,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            bail!("{} does not exist", path.display())
        }
        Err(error) => {
            return Err(anyhow!(error).context(format!("cannot check {}", path.display())));
        }
    };
    if !meta.is_file() {
        bail!(
            "{} is not a file; --command takes the path of the mcp-chat binary",
            absolute.display()
        );
    }
    if !is_executable(&meta) {
        bail!("{} is not executable", absolute.display());
    }
    let text = absolute.to_str().with_context(|| {
        format!(
            "{} is not valid UTF-8, which a client config cannot hold",
            absolute.display()
        )
    })?;
    Ok(text.to_owned())
}

fn absolute_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let absolute = fs::canonicalize(dir)?.join(name);
    Ok(if cfg!(windows) {
        without_verbatim_prefix(&absolute).unwrap_or(absolute)
    } else {
        absolute
    })
}

/// `\\?\C:\dir\mcp-chat.exe` → `C:\dir\mcp-chat.exe`: Windows' canonical
/// form is a verbatim path, which some clients cannot launch. Paths too long
/// for the short form keep the prefix.
fn without_verbatim_prefix(path: &Path) -> Option<PathBuf> {
    let rest = path.to_str()?.strip_prefix(r"\\?\")?;
    let is_disk =
        matches!(rest.as_bytes(), [drive, b':', b'\\', ..] if drive.is_ascii_alphabetic());
    (is_disk && rest.len() < 260).then(|| PathBuf::from(rest))
}

#[cfg(unix)]
pub(super) fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
pub(super) fn is_executable(meta: &fs::Metadata) -> bool {
    meta.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::register::test_support::temp;

    #[test]
    fn command_is_made_absolute_and_must_exist() {
        let dir = temp();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let exe = bin.join("mcp-chat");
        fs::write(&exe, "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let canonical_bin = fs::canonicalize(&bin).unwrap();
        let canonical_bin = without_verbatim_prefix(&canonical_bin).unwrap_or(canonical_bin);

        // `..` and symlinked directories are resolved.
        let roundabout = bin.join("..").join("bin").join("mcp-chat");
        let resolved = resolve_command(Some(&roundabout)).unwrap();
        assert_eq!(Path::new(&resolved), canonical_bin.join("mcp-chat"));
        assert!(Path::new(&resolved).is_absolute());

        let missing = bin.join("nope");
        let error = resolve_command(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("does not exist"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");
        let error = resolve_command(Some(&dir.path().join("no/such/dir/mcp-chat")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not exist"), "{error}");

        let error = resolve_command(Some(&bin)).unwrap_err().to_string();
        assert!(error.contains("not a file"), "{error}");

        // The default is this executable.
        let own = resolve_command(None).unwrap();
        assert!(Path::new(&own).is_absolute());
    }

    #[cfg(unix)]
    #[test]
    fn command_symlink_in_last_component_is_kept() {
        let dir = temp();
        let target = dir.path().join("mcp-chat-0.1.0");
        fs::write(&target, "").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let link = dir.path().join("mcp-chat");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let resolved = resolve_command(Some(&link)).unwrap();
        assert_eq!(
            Path::new(&resolved),
            fs::canonicalize(dir.path()).unwrap().join("mcp-chat")
        );

        let plain = dir.path().join("not-executable");
        fs::write(&plain, "").unwrap();
        let error = resolve_command(Some(&plain)).unwrap_err().to_string();
        assert!(error.contains("not executable"), "{error}");
    }

    #[test]
    fn verbatim_prefix_is_removed_from_disk_paths_only() {
        assert_eq!(
            without_verbatim_prefix(Path::new(r"\\?\C:\Users\me\mcp-chat.exe")),
            Some(PathBuf::from(r"C:\Users\me\mcp-chat.exe"))
        );
        assert_eq!(
            without_verbatim_prefix(Path::new(r"\\?\UNC\server\share\x.exe")),
            None
        );
        assert_eq!(without_verbatim_prefix(Path::new("/usr/bin/x")), None);
    }
}
