//! Why NATS refuses this broker, in words a user can act on. async-nats
//! reports a failed (re)connect attempt by its error kind alone ("nats: IO
//! error"), dropping the cause: an unknown certificate issuer, a refused
//! connection. One attempt of our own, with the same settings and no
//! retries, returns the whole error, which `status` and `doctor` then show
//! in place of the bare kind.

use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

use super::FederationConfig;

/// How long the explaining attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every connection to the realm's server takes (credentials
/// and TLS), and its addresses.
pub async fn settings(
    config: &FederationConfig,
) -> Result<(ConnectOptions, Vec<ServerAddr>), String> {
    let mut options = ConnectOptions::new().name("mcp-chat-broker");
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("reading credentials {}: {e}", path.display()))?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs = config
        .urls
        .iter()
        .map(|u| u.parse::<ServerAddr>().map_err(|e| format!("{u}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((options, addrs))
}

/// One connection attempt: the whole error if it fails, `None` if it
/// connects (the failure was passing).
pub async fn explain(config: FederationConfig) -> Option<String> {
    let (options, addrs) = match settings(&config).await {
        Ok(settings) => settings,
        Err(e) => return Some(e),
    };
    let attempt = options.connection_timeout(ATTEMPT_TIMEOUT).connect(addrs);
    match tokio::time::timeout(ATTEMPT_TIMEOUT * 2, attempt).await {
        Ok(Ok(client)) => {
            drop(client);
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {:?}", ATTEMPT_TIMEOUT * 2)),
    }
}

/// Which bare error the last attempt explained, so that the next reports
/// of the same kind show the explanation rather than the bare kind.
#[derive(Debug, Default)]
pub struct Explainer {
    probing: bool,
    explained: Option<(String, String)>,
}

impl Explainer {
    /// What to show for the client's error `bare`, and whether to start an
    /// attempt ([`explain`]) to explain it.
    pub fn shown(&mut self, bare: String) -> (String, bool) {
        match &self.explained {
            Some((known, why)) if *known == bare => (why.clone(), false),
            _ => {
                let start = !self.probing;
                self.probing = true;
                (bare, start)
            }
        }
    }

    /// The attempt for `bare` ended with `why`; what to show now, if the
    /// error shown is still `bare`.
    pub fn explained(&mut self, bare: String, why: Option<String>) -> Option<String> {
        self.probing = false;
        let why = why?;
        self.explained = Some((bare, why.clone()));
        Some(why)
    }

    /// Connected: what failed before says nothing about the next failure.
    pub fn reset(&mut self) {
        self.explained = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_error_is_explained_once_then_shown_explained() {
        let bare = || "nats: IO error".to_owned();
        let why = "IO error: invalid peer certificate: UnknownIssuer".to_owned();
        let mut e = Explainer::default();
        assert_eq!(e.shown(bare()), (bare(), true));
        // One attempt at a time.
        assert_eq!(e.shown(bare()), (bare(), false));
        assert_eq!(e.explained(bare(), Some(why.clone())), Some(why.clone()));
        assert_eq!(e.shown(bare()), (why, false));
        // Another error is explained anew; a passing one explains nothing.
        let other = || "nats: timed out".to_owned();
        assert_eq!(e.shown(other()), (other(), true));
        assert_eq!(e.explained(other(), None), None);
        // Once connected, the next failure is looked at afresh.
        e.reset();
        assert_eq!(e.shown(bare()), (bare(), true));
    }
}
