//! Who may talk to the HTTP server, per the MCP transport security rules:
//! loopback by default, no cross-origin browser requests, and a bearer
//! token for anything reachable from other machines.
//!
//! Everything here is a pure function of the request's headers or the
//! command line, so it is unit-tested without a socket.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderValue, Uri};

/// Shortest `--token` accepted: a guessable token on a reachable port is
/// no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// How the server may be reached, decided once from the bind address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Bound to a loopback address: only this machine can connect. The
    /// `Host` header must then name a loopback host (DNS rebinding defence).
    Loopback,
    /// Bound to an address other machines may reach; every request must
    /// carry the bearer token.
    Network,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    #[error(
        "refusing to serve MCP on {addr} without a token: that address may be reachable from other machines, and anyone who reaches it could chat as you. Bind a loopback address (127.0.0.1:PORT), or give a secret of at least {MIN_TOKEN_LEN} characters with --token-file FILE or MCP_CHAT_TOKEN, e.g. `openssl rand -hex 32 > FILE`"
    )]
    NeedsToken { addr: SocketAddr },
    #[error(
        "the token must be at least {MIN_TOKEN_LEN} characters of visible ASCII (no spaces); generate one with `openssl rand -hex 32`"
    )]
    WeakToken,
}

/// Decides whether serving on `addr` with `token` is allowed.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<Exposure, BindError> {
    if let Some(token) = token
        && (token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(BindError::WeakToken);
    }
    if is_loopback(addr.ip()) {
        Ok(Exposure::Loopback)
    } else if token.is_some() {
        Ok(Exposure::Network)
    } else {
        Err(BindError::NeedsToken { addr })
    }
}

/// How a loopback server tells this user's processes from other users'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackCheck {
    /// The OS lists each local socket's owner (Linux): the connection's
    /// owner must be the server's user.
    SocketOwner,
    /// No such list: a bearer token is required, generated if none was
    /// given.
    Token,
}

/// Which check serves `exposure` on an OS that can (or cannot) name a
/// local socket's owner; `None` off loopback, where the bearer token that
/// [`check_bind`] demanded is the check.
pub fn loopback_check(exposure: &Exposure, owners_listed: bool) -> Option<LoopbackCheck> {
    match (exposure, owners_listed) {
        (Exposure::Network, _) => None,
        (Exposure::Loopback, true) => Some(LoopbackCheck::SocketOwner),
        (Exposure::Loopback, false) => Some(LoopbackCheck::Token),
    }
}

/// `127.0.0.0/8`, `::1`, and `::ffff:127.x.y.z`.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Hosts a loopback server answers to: anything else in `Host` is a DNS
/// rebinding attempt (a foreign name that resolved to 127.0.0.1).
pub fn loopback_hosts(bound: IpAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let bound = bound.to_string();
    if !hosts.contains(&bound) {
        hosts.push(bound);
    }
    hosts
}

/// A browser's `Origin` is accepted only from this machine's own pages:
/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, any port. A page anywhere
/// else (or an opaque `null` origin) must not drive a local chat session.
pub fn origin_allowed(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Ok(uri) = origin.parse::<Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let Some(authority) = uri.authority() else {
        return false;
    };
    // An origin is scheme://host[:port]: no user info, no path.
    let bare =
        !authority.as_str().contains('@') && uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    let host = authority.host().to_ascii_lowercase();
    scheme_ok && bare && matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

/// Whether an `Authorization` header carries `Bearer <token>`. The token is
/// compared in constant time, so response timing does not leak how much of
/// a guess was right.
pub fn bearer_matches(authorization: Option<&HeaderValue>, token: &str) -> bool {
    let Some(value) = authorization.map(HeaderValue::as_bytes) else {
        return false;
    };
    let Some((scheme, credentials)) = value.split_first_chunk::<7>() else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(credentials, token.as_bytes())
}

/// Compares every byte whatever the first difference (the length is not
/// secret: it is at least [`MIN_TOKEN_LEN`] and fixed per server).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn loopback_origins_pass_any_port() {
        for origin in [
            "http://localhost",
            "http://localhost:5173",
            "https://localhost:8443",
            "http://127.0.0.1:8931",
            "http://[::1]:3000",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(origin_allowed(&header(origin)), "{origin}");
        }
    }

    #[test]
    fn foreign_and_opaque_origins_fail() {
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://127.0.0.2",
            "null",
            "file://",
            "chrome-extension://abcdef",
            "ws://localhost",
            "http://user@localhost",
            "http://localhost/path",
            "",
            "localhost",
        ] {
            assert!(!origin_allowed(&header(origin)), "{origin}");
        }
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = "0123456789abcdef0123";
        assert!(bearer_matches(
            Some(&header(&format!("Bearer {token}"))),
            token
        ));
        assert!(bearer_matches(
            Some(&header(&format!("bearer {token}"))),
            token
        ));
        for wrong in [
            format!("Bearer {token}x"),
            format!("Bearer {}", &token[1..]),
            format!("Basic {token}"),
            format!("Bearer  {token}"),
            token.to_owned(),
            "Bearer".to_owned(),
            String::new(),
        ] {
            assert!(!bearer_matches(Some(&header(&wrong)), token), "{wrong:?}");
        }
        assert!(!bearer_matches(None, token));
    }

    #[test]
    fn non_loopback_needs_a_strong_token() {
        let lan: SocketAddr = "0.0.0.0:8931".parse().unwrap();
        assert_eq!(
            check_bind(lan, None),
            Err(BindError::NeedsToken { addr: lan })
        );
        assert_eq!(check_bind(lan, Some("short")), Err(BindError::WeakToken));
        assert_eq!(
            check_bind(lan, Some("has a space in it, sadly")),
            Err(BindError::WeakToken)
        );
        assert_eq!(
            check_bind(lan, Some("0123456789abcdef")),
            Ok(Exposure::Network)
        );
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert!(check_bind(v6, None).is_err());
    }

    #[test]
    fn loopback_needs_no_token() {
        for addr in [
            "127.0.0.1:0",
            "127.1.2.3:8931",
            "[::1]:8931",
            "[::ffff:127.0.0.1]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(check_bind(addr, None), Ok(Exposure::Loopback), "{addr}");
        }
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(check_bind(addr, Some("tiny")), Err(BindError::WeakToken));
    }

    #[test]
    fn loopback_falls_back_to_a_token_where_owners_are_not_listed() {
        assert_eq!(
            loopback_check(&Exposure::Loopback, true),
            Some(LoopbackCheck::SocketOwner)
        );
        assert_eq!(
            loopback_check(&Exposure::Loopback, false),
            Some(LoopbackCheck::Token)
        );
        assert_eq!(loopback_check(&Exposure::Network, true), None);
        assert_eq!(loopback_check(&Exposure::Network, false), None);
    }

    #[test]
    fn hosts_include_the_bound_loopback_address() {
        assert_eq!(
            loopback_hosts("127.0.0.1".parse().unwrap()),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert!(loopback_hosts("127.0.0.5".parse().unwrap()).contains(&"127.0.0.5".to_owned()));
    }
}
