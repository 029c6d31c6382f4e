//! The chat page for people: `GET /` on the `serve --http` server (and on
//! `mcp-chat web`, which runs that server on a free loopback port).
//!
//! The page is three static files compiled into the binary (no build step).
//! It is not an MCP client: it speaks a small JSON protocol over one
//! WebSocket (`/api/chat`, see [`chat`]), and each socket is one
//! [`crate::session::ChatSession`], in the same queue as every agent.
//!
//! - [`access`]: who may use the API (Host, Origin, same user, token →
//!   cookie), as pure functions.
//! - [`chat`]: one page's chat: its messages both ways, and the session
//!   behind it.
//!
//! These routes sit beside the MCP endpoint with a gate of their own
//! ([`gate`]), so the two can change apart.

mod access;
pub mod chat;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN,
    REFERRER_POLICY, RETRY_AFTER, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use super::guard;

/// Largest message the page may send on its socket: a chat message is at
/// most 16 KiB of text, and JSON escaping can at most sextuple it.
const MAX_PAGE_MESSAGE: usize = 128 * 1024;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Scripts and styles from this server only, no inline script or handler
/// (so even markup that slipped into the page could run nothing), no
/// framing (clickjacking), sockets and fetches to this server only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page's routes need to know about the server they run in.
pub struct Web {
    /// The broker socket each page's chat session connects to.
    pub socket: PathBuf,
    /// The address the server listens on.
    pub local: SocketAddr,
    /// The names a loopback server answers to; `None` off loopback.
    pub hosts: Option<Vec<String>>,
    /// Our uid, when only connections it owns are served.
    pub same_user: Option<u32>,
    /// The bearer token, when the server has one.
    pub token: Option<String>,
    /// The cookie key a page gets for the token (see [`access`]).
    key: String,
    /// Page sessions at once (`--max-sessions`).
    slots: Arc<Semaphore>,
}

impl Web {
    pub fn new(
        socket: PathBuf,
        local: SocketAddr,
        hosts: Option<Vec<String>>,
        same_user: Option<u32>,
        token: Option<String>,
        max_sessions: usize,
    ) -> Self {
        Self {
            socket,
            local,
            hosts,
            same_user,
            token,
            // Random per run, like the generated bearer token.
            key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            slots: Arc::new(Semaphore::new(max_sessions)),
        }
    }

    /// The address to open: with the token in the fragment when the server
    /// has one (the browser never sends the fragment anywhere).
    pub fn page_url(&self) -> String {
        match &self.token {
            Some(token) => format!("http://{}/#token={}", self.local, fragment_encoded(token)),
            None => format!("http://{}/", self.local),
        }
    }
}

/// `text` percent-encoded but for unreserved characters, so the page's
/// `decodeURIComponent` gets it back whatever visible ASCII it holds.
fn fragment_encoded(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The page's routes, behind their own gate.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/api/session", post(session))
        .route("/api/chat", get(chat_socket))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&web), gate))
        .with_state(web)
}

/// Refuses a foreign `Host` (403), another user's connection (403), and,
/// on the API, any `Origin` but this page's own (403).
async fn gate(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(hosts) = &web.hosts {
        let host = headers.get(HOST).and_then(access::host_name);
        if !host.is_some_and(|h| hosts.contains(&h)) {
            tracing::warn!(host = ?headers.get(HOST), "refused a page request for a foreign host");
            return refuse(
                StatusCode::FORBIDDEN,
                "Forbidden: this server answers only to localhost, 127.0.0.1 or [::1]\n",
            );
        }
    }
    if let Some(uid) = web.same_user
        && let Some(refusal) = super::other_user(request.extensions().get().cloned(), uid).await
    {
        return refusal;
    }
    if request.uri().path().starts_with("/api/")
        && !access::same_origin(headers.get(ORIGIN), headers.get(HOST))
    {
        tracing::warn!(origin = ?headers.get(ORIGIN), "refused a chat API request from another origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden: the chat API answers only this server's own page (the Origin must be this server)\n",
        );
    }
    next.run(request).await
}

fn refuse(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// Whether the request may chat: no token on this server, or the page's
/// cookie.
fn authorized(web: &Web, headers: &HeaderMap) -> bool {
    web.token.is_none()
        || access::cookie_matches(
            access::cookies(headers),
            &access::cookie_name(web.local.port()),
            &web.key,
        )
}

/// `POST /api/session`: the page asks whether it may chat, trading the
/// token from its URL for the cookie when the server has one (see
/// [`access`]). 204 yes, 401 with the fix otherwise.
async fn session(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if authorized(&web, &headers) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let token = web.token.as_deref().unwrap_or_default();
    if guard::bearer_matches(headers.get(AUTHORIZATION), token) {
        let cookie = access::set_cookie(web.local.port(), &web.key);
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
        return response;
    }
    tracing::warn!("refused a page without the token");
    refuse(
        StatusCode::UNAUTHORIZED,
        "this server needs its token: open the address it printed (it ends in #token=...)",
    )
}

/// `GET /api/chat`: the page's WebSocket, one chat session each.
async fn chat_socket(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !authorized(&web, &headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: POST /api/session with the token first\n",
        );
    }
    let Ok(slot) = Arc::clone(&web.slots).try_acquire_owned() else {
        tracing::warn!("refused a page: the server is full");
        let mut response = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: this server has as many chat pages open as --max-sessions allows\n",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let socket = web.socket.clone();
    upgrade
        .max_message_size(MAX_PAGE_MESSAGE)
        .on_upgrade(move |ws| async move {
            chat::run(ws, socket).await;
            drop(slot);
        })
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_TYPE, content_type),
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
        // The page changes with the binary; never serve an old one.
        (CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_in_the_address_is_percent_encoded() {
        assert_eq!(fragment_encoded("abc-._~09"), "abc-._~09");
        assert_eq!(fragment_encoded("a#b%c\"&"), "a%23b%25c%22%26");
    }

    /// The page builds every line from text nodes; none of the ways a
    /// script can turn a string into markup or code may appear in it.
    #[test]
    fn the_page_script_never_parses_strings_as_markup_or_code() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout(\"",
            "DOMParser",
            "createContextualFragment",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
        assert!(APP_JS.contains(".textContent = text"));
    }

    /// Everything the page runs comes from `/app.js`, which the CSP allows;
    /// inline script or handlers would be blocked by it.
    #[test]
    fn the_page_has_no_inline_script() {
        assert!(!INDEX_HTML.contains("<script>"));
        // An inline handler is an attribute ` on<event>=`.
        let html = INDEX_HTML.to_ascii_lowercase();
        let handler = html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "inline handler in index.html");
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
    }
}
