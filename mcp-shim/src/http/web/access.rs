//! Who may use the chat page's API: pure functions of the request's
//! headers, unit-tested without a socket. The rules are the MCP endpoint's
//! (see [`crate::http::guard`]), made to fit a browser:
//!
//! - **Host**: on loopback, a loopback name only (DNS rebinding defence).
//! - **Origin**: the API (`/api/…`) answers only this server's own page.
//!   Browsers always send `Origin` on a WebSocket handshake and on a
//!   `POST`, and a page cannot forge it, so a page on another site (or on
//!   another port of this machine) cannot open the socket or log in. This
//!   is stricter than the MCP endpoint, which accepts any loopback origin
//!   because MCP clients are not pages served by us.
//! - **same user** (Linux loopback): as for MCP, the connection's owner must
//!   be the server's uid; a browser runs as its user.
//! - **token** (network exposure, or loopback where owners are not listed):
//!   a browser cannot put `Authorization` on a WebSocket handshake, so the
//!   page URL carries the token in its fragment (`/#token=…`, which the
//!   browser never sends to any server, never puts in a `Referer`, and
//!   which the page removes from the address bar at once). The page trades
//!   it, once, on a same-origin `POST /api/session` with
//!   `Authorization: Bearer`, for a cookie holding a random key made for
//!   this server run (never the token itself). The cookie is `HttpOnly`
//!   (page scripts cannot read it), `SameSite=Strict` (no other site's
//!   request carries it) and limited to `/api`; and even a request that
//!   carried it would still need this page's `Origin`.

use axum::http::HeaderValue;
use axum::http::header::COOKIE;

use crate::http::guard;

/// The host part of a `Host` header (`127.0.0.1:8931` → `127.0.0.1`,
/// `[::1]:80` → `::1`), lowercased; `None` when it does not parse.
pub fn host_name(host: &HeaderValue) -> Option<String> {
    let authority: axum::http::uri::Authority = host.to_str().ok()?.parse().ok()?;
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some(name.to_ascii_lowercase())
}

/// Whether `origin` is this server's own page, reached as `host` (the
/// request's `Host` header): `http(s)://` followed by exactly that host and
/// port. A missing `Origin` is refused too: every browser sends one here,
/// and a program that is not a browser has no page to speak for.
pub fn same_origin(origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    // Ports and names compare as written: a browser writes the Origin from
    // the URL it loaded, and the Host header from the same URL.
    authority.is_some_and(|a| !host.is_empty() && a.eq_ignore_ascii_case(host))
}

/// The name of the page's cookie on the server listening on `port`. Cookies
/// are shared by every port of a host, so the port is in the name: two
/// servers on one machine do not overwrite each other's.
pub fn cookie_name(port: u16) -> String {
    format!("mcp_chat_page_{port}")
}

/// The `Set-Cookie` value that gives the page its key.
pub fn set_cookie(port: u16, key: &str) -> String {
    format!(
        "{}={key}; Path=/api; HttpOnly; SameSite=Strict",
        cookie_name(port)
    )
}

/// Whether the request's cookies include `name=key` (compared in constant
/// time).
pub fn cookie_matches<'a>(
    cookies: impl IntoIterator<Item = &'a HeaderValue>,
    name: &str,
    key: &str,
) -> bool {
    let mut found = false;
    for header in cookies {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((n, v)) = pair.trim().split_once('=')
                && n == name
            {
                found |= guard::constant_time_eq(v.as_bytes(), key.as_bytes());
            }
        }
    }
    found
}

/// The cookies of a request, for [`cookie_matches`].
pub fn cookies(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &HeaderValue> {
    headers.get_all(COOKIE).iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn only_the_pages_own_origin_is_same_origin() {
        let host = h("127.0.0.1:8931");
        assert!(same_origin(Some(&h("http://127.0.0.1:8931")), Some(&host)));
        assert!(same_origin(Some(&h("https://127.0.0.1:8931")), Some(&host)));
        for foreign in [
            "http://127.0.0.1:8932",
            "http://127.0.0.1",
            "http://localhost:8931",
            "https://evil.example",
            "http://127.0.0.1:8931.evil.example",
            "null",
            "ws://127.0.0.1:8931",
            "",
        ] {
            assert!(!same_origin(Some(&h(foreign)), Some(&host)), "{foreign}");
        }
        assert!(!same_origin(None, Some(&host)), "no Origin");
        assert!(!same_origin(Some(&h("http://")), Some(&h(""))), "no Host");
        assert!(!same_origin(Some(&h("http://x")), None));
    }

    #[test]
    fn host_names_drop_the_port_and_brackets() {
        assert_eq!(
            host_name(&h("127.0.0.1:8931")).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host_name(&h("LOCALHOST")).as_deref(), Some("localhost"));
        assert_eq!(host_name(&h("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(host_name(&h("a b")), None);
    }

    #[test]
    fn the_cookie_must_carry_the_key_under_this_ports_name() {
        let name = cookie_name(8931);
        let key = "0123456789abcdef0123456789abcdef";
        let good = h(&format!("other=1; {name}={key}"));
        assert!(cookie_matches([&good], &name, key));
        let other_port = h(&format!("{}={key}", cookie_name(8932)));
        assert!(!cookie_matches([&other_port], &name, key));
        let wrong = h(&format!("{name}={key}0"));
        assert!(!cookie_matches([&wrong], &name, key));
        assert!(!cookie_matches([], &name, key));
        assert!(set_cookie(8931, key).contains("HttpOnly; SameSite=Strict"));
    }
}
