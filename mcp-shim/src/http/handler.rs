//! One HTTP MCP session's handler: the stdio server's [`ChatServer`], plus
//! the session's end signal.
//!
//! rmcp runs each tool call on a task that holds the handler, and it does
//! not abort those tasks when a session closes: it waits up to 5 s for them
//! to finish, then only cancels their token. A `wait_for_events` long poll
//! would keep the [`ChatServer`], and so its broker connection and its seat
//! in the room, for that long. Here every tool call races the request's own
//! cancellation and the session's end, so the handler (and with it the
//! broker connection) is dropped as soon as the session is over.
//!
//! A 2026-07-28 request has no session: it names its chat with a `chat_id`
//! (see `chats`), and is served by that chat's [`ChatServer`]; the rest of
//! the 2026-07-28 path is in `modern_http`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use axum::http::request::Parts;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, DiscoverResult, InitializeRequestParams,
    InitializeResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use super::chats::Chats;
use super::sessions::SessionEnd;
use crate::ChatServer;
use crate::modern::is_modern;

#[derive(Clone)]
pub struct HttpChatServer {
    pub(super) inner: ChatServer,
    end: Arc<OnceLock<SessionEnd>>,
    pub(super) chats: Arc<Chats>,
}

impl std::fmt::Debug for HttpChatServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpChatServer").finish_non_exhaustive()
    }
}

impl HttpChatServer {
    pub fn new(inner: ChatServer, chats: Arc<Chats>) -> Self {
        Self {
            inner,
            end: Arc::new(OnceLock::new()),
            chats,
        }
    }
}

impl ServerHandler for HttpChatServer {
    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    /// Picks up the session's end signal, which the HTTP layer put in the
    /// `initialize` request's extensions.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        if let Some(end) = context
            .extensions
            .get::<Parts>()
            .and_then(|parts| parts.extensions.get::<SessionEnd>())
        {
            let _ = self.end.set(end.clone());
        }
        self.inner.initialize(request, context).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await;
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if is_modern(&context) {
            return self.call_tool_modern(request, context).await;
        }
        let cancelled = context.ct.clone();
        let end = self.end.get().cloned().unwrap_or_default();
        tokio::select! {
            response = self.inner.call_tool(request, context) => response,
            // The client cancelled the call, or rmcp is tearing the session down.
            () = cancelled.cancelled() => Err(ErrorData::internal_error("the call was cancelled", None)),
            () = end.0.cancelled() => Err(ErrorData::internal_error("the MCP session is closed", None)),
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let modern = is_modern(&context);
        let tools = self.inner.list_tools(request, context).await?;
        Ok(if modern {
            self.modern_tools(tools)
        } else {
            tools
        })
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        Ok(self.discovered())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.list_resources_modern(request, context)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.list_resource_templates_modern(request, context)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.read_resource_modern(request, context)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(self.accepted_modern(requested))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.listen_modern(context).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }
}
