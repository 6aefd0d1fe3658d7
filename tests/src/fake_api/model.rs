//! The fake model: which API a request is for, what the model "says" to it, and how each API
//! streams that on the wire. Pure functions of the request, so a conversation needs no state:
//!
//! - a request whose conversation already holds a tool's result gets [`Api::after_tool`];
//! - otherwise a prompt with a line `RUN: <command>` gets a call of the agent's shell tool
//!   with that command (how a test makes the agent try a host outside its policy);
//! - otherwise the prompt gets [`Api::answer`], which the agent prints.
//!
//! The events are those of the real APIs, as far as the CLIs read them: Anthropic Messages
//! with SSE, OpenAI Responses with SSE or over its WebSocket, Gemini `generateContent` and
//! `streamGenerateContent?alt=sse`.

use serde_json::{Value, json};

/// The model APIs the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Anthropic Messages (Claude Code).
    Anthropic,
    /// OpenAI Responses (Codex).
    OpenAi,
    /// Gemini API (Gemini CLI).
    Gemini,
}

impl Api {
    /// The host name the real API answers under.
    pub fn host(self) -> &'static str {
        match self {
            Api::Anthropic => "api.anthropic.com",
            Api::OpenAi => "api.openai.com",
            Api::Gemini => "generativelanguage.googleapis.com",
        }
    }

    /// What the model answers a plain prompt: the agent must print it.
    pub fn answer(self) -> &'static str {
        match self {
            Api::Anthropic => "Hello from the fake Anthropic API on the test network.",
            Api::OpenAi => "Hello from the fake OpenAI API on the test network.",
            Api::Gemini => "Hello from the fake Gemini API on the test network.",
        }
    }

    /// What the model answers once its tool call's result came back.
    pub fn after_tool(self) -> &'static str {
        match self {
            Api::Anthropic => "The fake Anthropic model read the command's result.",
            Api::OpenAi => "The fake OpenAI model read the command's result.",
            Api::Gemini => "The fake Gemini model read the command's result.",
        }
    }

    /// The shell tool the model calls, as the CLI declares it in its requests.
    pub fn shell_tool(self) -> &'static str {
        match self {
            Api::Anthropic => "Bash",
            Api::OpenAi => "exec_command",
            Api::Gemini => "run_shell_command",
        }
    }
}

/// One model call, by its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/responses`, or a message on the WebSocket of `GET /v1/responses`.
    Responses,
    /// `POST /v1beta/models/MODEL:generateContent` or `:streamGenerateContent`.
    Generate {
        /// `streamGenerateContent` (SSE with `alt=sse`).
        stream: bool,
    },
}

impl Call {
    /// The call a request is, or `None` for anything else (the CLIs' bootstrap, settings and
    /// telemetry calls, which get a 404).
    pub fn of(method: &str, path: &str) -> Option<Call> {
        let post = method.eq_ignore_ascii_case("POST");
        if path == "/v1/messages" && post {
            return Some(Call::Messages);
        }
        if path == "/v1/responses" {
            return Some(Call::Responses);
        }
        let (_, action) = path.strip_prefix("/v1beta/models/")?.rsplit_once(':')?;
        match action {
            "generateContent" if post => Some(Call::Generate { stream: false }),
            "streamGenerateContent" if post => Some(Call::Generate { stream: true }),
            _ => None,
        }
    }

    /// The API it belongs to.
    pub fn api(self) -> Api {
        match self {
            Call::Messages => Api::Anthropic,
            Call::Responses => Api::OpenAi,
            Call::Generate { .. } => Api::Gemini,
        }
    }
}

/// What the model does in its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Answers with text.
    Text(String),
    /// Calls the CLI's shell tool with this command.
    Shell(String),
}

/// The marker of a prompt line whose rest is a command the model runs with its shell tool.
pub const RUN: &str = "RUN: ";

/// The model's turn for a request body.
pub fn turn(call: Call, body: &Value) -> Turn {
    let api = call.api();
    if tool_output(call, body).is_some() {
        return Turn::Text(api.after_tool().to_owned());
    }
    // Gemini CLI first asks a small model to rate the prompt's complexity, as JSON (its
    // system instruction says so), to pick the model for the turn.
    if call == (Call::Generate { stream: false }) && body.to_string().contains("complexity_score") {
        return Turn::Text(
            json!({"complexity_reasoning": "fake model", "complexity_score": 10}).to_string(),
        );
    }
    let prompt = user_text(call, body);
    let command = prompt
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(RUN))
        .map(str::trim);
    match command {
        Some(command) if offers_tool(call, body) => Turn::Shell(command.to_owned()),
        Some(_) => Turn::Text(format!(
            "The fake model was asked to run a command, but the request offers no {} tool.",
            api.shell_tool()
        )),
        None => Turn::Text(api.answer().to_owned()),
    }
}

/// The text of the conversation's user turns (not tool results), joined by newlines.
fn user_text(call: Call, body: &Value) -> String {
    let mut texts = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str() {
            texts.push(s.to_owned());
        }
    };
    match call {
        Call::Messages => {
            for message in array(&body["messages"]).filter(|m| m["role"] == "user") {
                push(&message["content"]);
                for block in array(&message["content"]).filter(|b| b["type"] == "text") {
                    push(&block["text"]);
                }
            }
        }
        Call::Responses => {
            let items = array(&body["input"]).filter(|i| i["role"] == "user");
            for item in items {
                push(&item["content"]);
                for part in array(&item["content"]) {
                    push(&part["text"]);
                }
            }
        }
        Call::Generate { .. } => {
            for content in array(&body["contents"]).filter(|c| c["role"] == "user") {
                for part in array(&content["parts"]) {
                    push(&part["text"]);
                }
            }
        }
    }
    texts.join("\n")
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// Whether the request declares the CLI's shell tool.
fn offers_tool(call: Call, body: &Value) -> bool {
    let name = call.api().shell_tool();
    match call {
        Call::Messages | Call::Responses => array(&body["tools"]).any(|t| t["name"] == name),
        Call::Generate { .. } => array(&body["tools"])
            .flat_map(|t| array(&t["functionDeclarations"]))
            .any(|f| f["name"] == name),
    }
}

/// The output of the tool call the conversation holds (the last one), as the CLI reported it
/// back to the model.
pub fn tool_output(call: Call, body: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    };
    match call {
        Call::Messages => array(&body["messages"])
            .flat_map(|m| array(&m["content"]))
            .filter(|b| b["type"] == "tool_result")
            .last()
            .map(|b| text(&b["content"])),
        Call::Responses => array(&body["input"])
            .filter(|i| i["type"] == "function_call_output")
            .last()
            .map(|i| text(&i["output"])),
        Call::Generate { .. } => array(&body["contents"])
            .flat_map(|c| array(&c["parts"]))
            .filter_map(|p| p.get("functionResponse"))
            .last()
            .map(|r| r["response"].to_string()),
    }
}

/// An answer streamed in two pieces: the CLI must join the deltas.
fn halves(text: &str) -> [&str; 2] {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    [&text[..middle], &text[middle..]]
}

/// One server-sent event.
fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The Messages API's event stream for `turn`.
pub fn messages_events(model: &str, turn: &Turn) -> Vec<String> {
    let mut events = vec![sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": "msg_fake_01", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    )];
    let (block, deltas, stop) = match turn {
        Turn::Text(text) => (
            json!({"type": "text", "text": ""}),
            halves(text)
                .iter()
                .map(|t| json!({"type": "text_delta", "text": t}))
                .collect::<Vec<_>>(),
            "end_turn",
        ),
        Turn::Shell(command) => (
            json!({"type": "tool_use", "id": "toolu_fake_01", "name": Api::Anthropic.shell_tool(),
                   "input": {}}),
            vec![json!({"type": "input_json_delta", "partial_json":
                json!({"command": command, "description": "Run the command"}).to_string()})],
            "tool_use",
        ),
    };
    let start = json!({"type": "content_block_start", "index": 0, "content_block": block});
    events.push(sse(Some("content_block_start"), &start));
    for delta in deltas {
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": delta});
        events.push(sse(Some("content_block_delta"), &delta));
    }
    let stop_block = json!({"type": "content_block_stop", "index": 0});
    events.push(sse(Some("content_block_stop"), &stop_block));
    let delta = json!({"type": "message_delta", "delta": {"stop_reason": stop,
        "stop_sequence": null}, "usage": {"output_tokens": 7}});
    events.push(sse(Some("message_delta"), &delta));
    events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    events
}

/// The Messages API's non-streaming answer for `turn`.
pub fn messages_json(model: &str, turn: &Turn) -> Value {
    let (content, stop) = match turn {
        Turn::Text(text) => (json!([{"type": "text", "text": text}]), "end_turn"),
        Turn::Shell(command) => (
            json!([{"type": "tool_use", "id": "toolu_fake_01",
                    "name": Api::Anthropic.shell_tool(), "input": {"command": command}}]),
            "tool_use",
        ),
    };
    json!({"id": "msg_fake_01", "type": "message", "role": "assistant", "model": model,
           "content": content, "stop_reason": stop, "stop_sequence": null,
           "usage": {"input_tokens": 12, "output_tokens": 7}})
}

/// The Responses API's events for `turn`, as JSON objects (each one SSE `data`, or one
/// WebSocket message). `turn` is `None` for a warm-up request (`"generate": false`), which
/// creates and completes a response without output.
pub fn responses_events(model: &str, turn: Option<&Turn>) -> Vec<Value> {
    let response = |status: &str, output: Value| {
        json!({"id": "resp_fake_01", "object": "response", "created_at": 1_700_000_000,
               "status": status, "model": model, "output": output,
               "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": 19}})
    };
    let mut events = vec![json!({"type": "response.created",
                                 "response": response("in_progress", json!([]))})];
    let Some(turn) = turn else {
        events.push(json!({"type": "response.completed",
                           "response": response("completed", json!([]))}));
        return events;
    };
    let item = match turn {
        Turn::Text(text) => {
            let done = json!({"type": "message", "id": "msg_fake_01", "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]});
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"type": "message", "id": "msg_fake_01", "status": "in_progress",
                         "role": "assistant", "content": []}}),
            );
            for piece in halves(text) {
                events.push(json!({"type": "response.output_text.delta",
                    "item_id": "msg_fake_01", "output_index": 0, "content_index": 0,
                    "delta": piece}));
            }
            done
        }
        Turn::Shell(command) => {
            let arguments = json!({"cmd": command}).to_string();
            let call = |status: &str, arguments: &str| {
                json!({"type": "function_call", "id": "fc_fake_01", "call_id": "call_fake_01",
                       "name": Api::OpenAi.shell_tool(), "arguments": arguments,
                       "status": status})
            };
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0,
                               "item": call("in_progress", "")}),
            );
            events.push(json!({"type": "response.function_call_arguments.delta",
                "item_id": "fc_fake_01", "output_index": 0, "delta": arguments}));
            events.push(json!({"type": "response.function_call_arguments.done",
                "item_id": "fc_fake_01", "output_index": 0, "arguments": arguments}));
            call("completed", &arguments)
        }
    };
    events.push(
        json!({"type": "response.output_item.done", "output_index": 0,
                       "item": item.clone()}),
    );
    events.push(json!({"type": "response.completed",
                       "response": response("completed", json!([item]))}));
    events
}

/// The Responses API's event stream (SSE) for `turn`.
pub fn responses_sse(model: &str, turn: Option<&Turn>) -> Vec<String> {
    responses_events(model, turn)
        .iter()
        .map(|event| sse(event["type"].as_str(), event))
        .collect()
}

/// Gemini's answers for `turn`: one `GenerateContentResponse` per piece (a stream sends each
/// as an SSE event; `generateContent` sends the single whole one).
pub fn gemini_chunks(turn: &Turn, stream: bool) -> Vec<Value> {
    let chunk = |parts: Value, finish: Option<&str>| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = json!(reason);
        }
        json!({"candidates": [candidate], "modelVersion": "gemini-fake",
               "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7,
                                 "totalTokenCount": 19}})
    };
    match turn {
        Turn::Text(text) if stream => {
            let [first, second] = halves(text);
            vec![
                chunk(json!([{"text": first}]), None),
                chunk(json!([{"text": second}]), Some("STOP")),
            ]
        }
        Turn::Text(text) => vec![chunk(json!([{"text": text}]), Some("STOP"))],
        Turn::Shell(command) => vec![chunk(
            json!([{"functionCall": {"name": Api::Gemini.shell_tool(),
                                     "args": {"command": command}}}]),
            Some("STOP"),
        )],
    }
}

/// Gemini's event stream (`alt=sse`) for `turn`.
pub fn gemini_sse(turn: &Turn) -> Vec<String> {
    gemini_chunks(turn, true)
        .iter()
        .map(|chunk| sse(None, chunk))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_by_method_and_path() {
        let table = [
            ("POST", "/v1/messages", Some(Call::Messages)),
            ("GET", "/v1/messages", None),
            ("POST", "/v1/responses", Some(Call::Responses)),
            ("GET", "/v1/responses", Some(Call::Responses)),
            (
                "POST",
                "/v1beta/models/gemini-3:streamGenerateContent",
                Some(Call::Generate { stream: true }),
            ),
            (
                "POST",
                "/v1beta/models/gemini-3:generateContent",
                Some(Call::Generate { stream: false }),
            ),
            ("POST", "/v1beta/models/gemini-3:countTokens", None),
            ("POST", "/api/event_logging/v2/batch", None),
        ];
        for (method, path, expected) in table {
            assert_eq!(Call::of(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn turns_for_each_api() {
        let bash = json!([{"name": "Bash"}]);
        let anthropic = |content: Value| json!({"messages": [{"role": "user", "content": content}], "tools": bash});
        let openai = |input: Value| json!({"input": input, "tools": [{"type": "function", "name": "exec_command"}]});
        let gemini = |parts: Value| {
            json!({"contents": [{"role": "user", "parts": parts}],
            "tools": [{"functionDeclarations": [{"name": "run_shell_command"}]}]})
        };
        let shell = |c: &str| Turn::Shell(c.to_owned());
        let text = |t: &str| Turn::Text(t.to_owned());
        let table = [
            (
                Call::Messages,
                anthropic(json!("say hi")),
                text(Api::Anthropic.answer()),
            ),
            (
                Call::Messages,
                anthropic(
                    json!([{"type": "text", "text": "do it\nRUN: curl -sS https://x.example/"}]),
                ),
                shell("curl -sS https://x.example/"),
            ),
            (
                Call::Messages,
                json!({"messages": [{"role": "user", "content": "RUN: true"}]}),
                text(
                    "The fake model was asked to run a command, but the request offers no Bash tool.",
                ),
            ),
            (
                Call::Messages,
                anthropic(json!([{"type": "tool_result", "content": "403"}])),
                text(Api::Anthropic.after_tool()),
            ),
            (
                Call::Responses,
                openai(json!([{"type": "message", "role": "user",
                               "content": [{"type": "input_text", "text": "RUN: id"}]}])),
                shell("id"),
            ),
            (
                Call::Responses,
                openai(json!([{"type": "function_call_output", "output": "ok"}])),
                text(Api::OpenAi.after_tool()),
            ),
            (
                Call::Generate { stream: true },
                gemini(json!([{"text": "hi"}])),
                text(Api::Gemini.answer()),
            ),
            (
                Call::Generate { stream: true },
                gemini(json!([{"text": "RUN: ls"}])),
                shell("ls"),
            ),
            (
                Call::Generate { stream: true },
                gemini(json!([{"functionResponse": {"response": {"output": "x"}}}])),
                text(Api::Gemini.after_tool()),
            ),
        ];
        for (call, body, expected) in table {
            assert_eq!(turn(call, &body), expected, "{call:?} {body}");
        }
        let classifier = gemini(json!([{"text": "rate it; answer with complexity_score"}]));
        let Turn::Text(rating) = turn(Call::Generate { stream: false }, &classifier) else {
            panic!("the complexity rating is text");
        };
        let rating: Value = serde_json::from_str(&rating).expect("JSON rating");
        assert_eq!(rating["complexity_score"], 10);
    }

    #[test]
    fn streamed_text_joins_to_the_answer() {
        let turn = Turn::Text(Api::Anthropic.answer().to_owned());
        let joined: String = messages_events("m", &turn)
            .iter()
            .filter_map(|e| e.split_once("data: ").map(|(_, d)| d))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|d| d["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(joined, Api::Anthropic.answer());
        let turn = Turn::Text(Api::OpenAi.answer().to_owned());
        let events = responses_events("m", Some(&turn));
        let joined: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
        assert_eq!(joined, Api::OpenAi.answer());
        assert_eq!(events.last().expect("events")["type"], "response.completed");
    }

    #[test]
    fn tool_output_is_read_back() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "HTTP 403"}]}]}]});
        assert_eq!(
            tool_output(Call::Messages, &body).as_deref(),
            Some("HTTP 403")
        );
    }
}
