//! The 2026-07-28 path over HTTP: requests name their chat with a `chat_id`
//! (see `chats` for what it is and how long a chat lives), tools take it as
//! an argument, and each chat's events are the resource
//! `chat://events/{chat_id}` (see [`crate::modern`] for the resource and its
//! subscription).

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, DiscoverResult,
    JsonObject, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestMethod, ReadResourceRequestParams,
    ReadResourceResponse, ResourceTemplate, SubscriptionFilter, Tool,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::chats::Chat;
use super::handler::HttpChatServer;
use super::sessions::Full;
use crate::modern;
use crate::server::{discovered, modern_instructions, only_modern};

/// The tool argument (and result field) that names a chat.
const CHAT_ID: &str = "chat_id";
/// A chat's events resource is this followed by its `chat_id`.
const EVENTS_PREFIX: &str = "chat://events/";

impl HttpChatServer {
    /// How events reach a 2026-07-28 client over HTTP, for the instructions.
    fn events_on_http(&self) -> String {
        format!(
            "How events reach you on this connection (MCP 2026-07-28 over HTTP): no chat notifications are sent, and there is no session, so each chat is named by a chat_id. Call enter_queue without chat_id to start a chat; its result carries the chat_id. Pass chat_id to every later call (every tool takes it). Your pending events are the resource chat://events/{{chat_id}}: reading it (resources/read) takes them, oldest first, as wait_for_events returns them ({{events, events_dropped, more_pending}}; every event has a seq). Open subscriptions/listen with a resource subscription to that URI to be sent notifications/resources/updated as soon as an event is pending, then read it. wait_for_events and the events field of every tool result work as well; each event is delivered once. A chat ends after {} seconds with no call naming it and no listen stream open on it; your partner is then told partner.disconnected.",
            self.chats.timeout_s()
        )
    }

    pub(super) fn discovered(&self) -> DiscoverResult {
        discovered(
            self.inner.get_info(),
            &modern_instructions(&self.events_on_http()),
        )
    }

    /// The tools as a 2026-07-28 client over HTTP calls them: each takes a
    /// `chat_id` (required but by `enter_queue`, which starts a chat without
    /// one) and returns it.
    pub(super) fn modern_tools(&self, tools: ListToolsResult) -> ListToolsResult {
        let timeout_s = self.chats.timeout_s();
        let tools = tools
            .tools
            .into_iter()
            .map(|tool| with_chat_id(tool, timeout_s))
            .collect();
        modern::with_cache_hints(ListToolsResult::with_all_items(tools))
    }

    pub(super) async fn call_tool_modern(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.inner.get_tool(&request.name).is_none() {
            // An unknown tool is a protocol error, answered as on stdio.
            return self.inner.call_tool(request, context).await;
        }
        let named = match take_chat_id(request.arguments.as_mut()) {
            Ok(named) => named,
            Err(message) => return Ok(failure("invalid_arguments", message)),
        };
        let chat = match named {
            Some(id) => match self.chats.find(&id) {
                Some(chat) => chat,
                None => return Ok(failure("unknown_chat", self.unknown_chat(&id))),
            },
            None if request.name == "enter_queue" => match self.chats.start() {
                Ok(chat) => chat,
                Err(Full { max }) => {
                    return Ok(failure(
                        "server_full",
                        format!(
                            "this server already has {max} chats and sessions (--max-sessions); try again when one ends"
                        ),
                    ));
                }
            },
            None => {
                return Ok(failure(
                    "chat_id_required",
                    "pass the chat_id that enter_queue returned; to start a chat, call enter_queue without chat_id".to_owned(),
                ));
            }
        };
        let cancelled = context.ct.clone();
        let mut response = tokio::select! {
            response = chat.server.call_tool(request, context) => response?,
            () = cancelled.cancelled() => return Err(ErrorData::internal_error("the call was cancelled", None)),
            () = chat.end.cancelled() => return Err(ErrorData::internal_error("the chat has ended", None)),
        };
        if let CallToolResponse::Complete(result) = &mut response {
            name_chat(result, &chat.id);
        }
        Ok(response)
    }

    fn unknown_chat(&self, id: &str) -> String {
        format!(
            "there is no chat {id}: it has ended (after {} seconds with no call and no listen stream, or when the server restarted) or never existed; call enter_queue without chat_id to start a new chat",
            self.chats.timeout_s()
        )
    }

    pub(super) fn list_resources_modern(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        only_modern::<rmcp::model::ListResourcesRequestMethod>(&context)?;
        // Every resource belongs to one chat (see the template); a list must
        // not vary by client, so it is empty.
        Ok(ListResourcesResult::with_all_items(Vec::new()))
    }

    pub(super) fn list_resource_templates_modern(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        only_modern::<rmcp::model::ListResourceTemplatesRequestMethod>(&context)?;
        let template = ResourceTemplate::new(format!("{EVENTS_PREFIX}{{{CHAT_ID}}}"), "chat-events")
            .with_title("Pending chat events")
            .with_description("The pending events of the chat named by chat_id (which enter_queue returns), oldest first, as wait_for_events returns them. Reading takes them. Subscribe with subscriptions/listen to hear when one is pending.")
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    pub(super) fn read_resource_modern(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        only_modern::<ReadResourceRequestMethod>(&context)?;
        let chat = self.chat_of(&request.uri).map_err(|message| {
            ErrorData::resource_not_found(message, Some(json!({ "uri": request.uri })))
        })?;
        modern::read_events(chat.server.session(), &request.uri).map(Into::into)
    }

    /// The chat whose events `uri` names, or why there is none.
    fn chat_of(&self, uri: &str) -> Result<Chat, String> {
        let Some(id) = uri.strip_prefix(EVENTS_PREFIX) else {
            return Err(format!(
                "no resource {uri}; over HTTP a chat's events are {EVENTS_PREFIX}{{chat_id}}, with the chat_id enter_queue returned"
            ));
        };
        self.chats.find(id).ok_or_else(|| self.unknown_chat(id))
    }

    /// Subscriptions to the events of live chats; others are not honored
    /// (the acknowledgement says which were).
    pub(super) fn accepted_modern(&self, requested: &SubscriptionFilter) -> SubscriptionFilter {
        let live = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| self.chat_of(uri).is_ok());
        SubscriptionFilter::builder()
            .resource_subscriptions(live.cloned())
            .build()
    }

    /// Announces each subscribed chat's events until the client closes the
    /// stream. An open stream keeps its chats alive, as an initialize-era
    /// session's event stream does.
    pub(super) async fn listen_modern(
        &self,
        context: SubscriptionContext,
    ) -> Result<(), ErrorData> {
        let mut held = Vec::new();
        let mut watchers = JoinSet::new();
        for uri in context.accepted().resource_subscriptions.iter().flatten() {
            let Ok(chat) = self.chat_of(uri) else {
                continue;
            };
            let (server, end) = (chat.server.clone(), chat.end.clone());
            let (sink, uri) = (context.sink().clone(), uri.clone());
            watchers.spawn(async move {
                tokio::select! {
                    () = modern::announce_events(server.session(), &sink, &uri) => {}
                    () = end.cancelled() => {}
                }
            });
            held.push(chat);
        }
        context.cancelled().await;
        // Dropping the set stops the watchers; dropping `held` lets the
        // chats' idle clocks run.
        drop(watchers);
        drop(held);
        Ok(())
    }
}

/// Takes the `chat_id` out of a call's arguments, leaving what the tool
/// itself checks.
fn take_chat_id(arguments: Option<&mut JsonObject>) -> Result<Option<String>, String> {
    match arguments.and_then(|a| a.remove(CHAT_ID)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => Ok(Some(id)),
        Some(other) => Err(format!(
            "chat_id must be the string enter_queue returned, not {other}"
        )),
    }
}

/// A tool error in the shape of every other (`{error, message}`).
fn failure(code: &str, message: String) -> CallToolResponse {
    let text = json!({ "error": code, "message": message }).to_string();
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

/// Puts `chat_id` into a result, so the model has it at hand: first in the
/// structured content and in the text (whose JSON is already escaped for
/// the model, so it is spliced in rather than re-encoded; a chat id is
/// `chat_` and hex digits, which need no escaping).
fn name_chat(result: &mut CallToolResult, id: &str) {
    if let Some(Value::Object(structured)) = &mut result.structured_content {
        structured.insert(CHAT_ID.to_owned(), Value::String(id.to_owned()));
    }
    if let Some(ContentBlock::Text(text)) = result.content.first_mut()
        && let Some(rest) = text.text.strip_prefix('{')
    {
        let separator = if rest.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        text.text = format!("{{\"{CHAT_ID}\":\"{id}\"{separator}{rest}");
    }
}

/// `tool` with a `chat_id` argument and result field.
fn with_chat_id(mut tool: Tool, timeout_s: u64) -> Tool {
    let starts = tool.name == "enter_queue";
    let description = if starts {
        "The chat this call belongs to. Omit it to start a new chat: the result then carries a new chat_id, which every later call must pass."
    } else {
        "The chat this call belongs to: the chat_id enter_queue returned."
    };
    let mut input = (*tool.input_schema).clone();
    add_property(&mut input, description, !starts);
    tool.input_schema = input.into();
    if let Some(output) = &tool.output_schema {
        let mut output = (**output).clone();
        add_property(&mut output, "The chat this result belongs to.", false);
        tool.output_schema = Some(output.into());
    }
    if starts {
        let text = tool.description.as_deref().unwrap_or_default();
        tool.description = Some(
            format!(
                "{text}\n\nOver this connection a chat is named by its chat_id: call enter_queue without one to start a chat, then pass the chat_id it returns to every call. A chat ends after {timeout_s} seconds with no call and no listen stream open on it."
            )
            .into(),
        );
    }
    tool
}

fn add_property(schema: &mut JsonObject, description: &str, required: bool) {
    let properties = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(JsonObject::new()));
    if let Value::Object(properties) = properties {
        properties.insert(
            CHAT_ID.to_owned(),
            json!({ "type": "string", "description": description }),
        );
    }
    if required {
        let list = schema
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            list.push(Value::String(CHAT_ID.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_id_is_taken_out_of_the_arguments() {
        let mut args = json!({"chat_id": "chat_ab", "room_id": "x"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(take_chat_id(Some(&mut args)), Ok(Some("chat_ab".into())));
        assert_eq!(args, *json!({"room_id": "x"}).as_object().unwrap());
        assert_eq!(take_chat_id(None), Ok(None));
        let mut bad = json!({"chat_id": 7}).as_object().cloned().unwrap();
        assert!(take_chat_id(Some(&mut bad)).unwrap_err().contains("string"));
    }

    #[test]
    fn results_name_their_chat_in_text_and_structure() {
        let mut result = CallToolResult::success(vec![ContentBlock::text(
            r#"{"status":"sent","events":[{"message":"\u003cb\u003e"}]}"#,
        )]);
        result.structured_content = Some(json!({"status": "sent"}));
        name_chat(&mut result, "chat_00ff");
        let Some(ContentBlock::Text(text)) = result.content.first() else {
            panic!("text");
        };
        assert_eq!(
            text.text,
            r#"{"chat_id":"chat_00ff","status":"sent","events":[{"message":"\u003cb\u003e"}]}"#
        );
        let parsed: Value = serde_json::from_str(&text.text).unwrap();
        assert_eq!(parsed["chat_id"], "chat_00ff");
        assert_eq!(
            result.structured_content,
            Some(json!({"status": "sent", "chat_id": "chat_00ff"}))
        );
    }

    #[test]
    fn every_tool_takes_a_chat_id_and_only_enter_queue_may_omit_it() {
        for tool in crate::server::tool_list() {
            let name = tool.name.to_string();
            let tool = with_chat_id(tool, 300);
            assert!(
                tool.input_schema["properties"][CHAT_ID].is_object(),
                "{name}"
            );
            let required = tool.input_schema.get("required").and_then(Value::as_array);
            let needs = required.is_some_and(|r| r.contains(&json!(CHAT_ID)));
            assert_eq!(needs, name != "enter_queue", "{name}");
        }
    }
}
