use serde_json::{Value, json};

use super::*;

fn parse(body: &str) -> Inbound {
    parse_inbound(body.as_bytes()).unwrap_or_else(|e| panic!("{body} does not parse: {e}"))
}

fn single(body: &str) -> Message {
    match parse(body) {
        Inbound::Single(message) => message,
        other => panic!("{body} is not a single message: {other:?}"),
    }
}

fn invalid(body: &str) -> String {
    match parse_inbound(body.as_bytes()) {
        Err(ParseError::NotJsonRpc(reason)) => reason,
        other => panic!("{body} should be invalid JSON-RPC, got {other:?}"),
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes));
    })
}

// --- parsing -------------------------------------------------------------------------------

#[test]
fn a_request_keeps_its_method_params_and_id() {
    let m = single(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"c"}}"#);
    assert_eq!(m.id, Some(json!(7)));
    assert_eq!(m.method(), Some("tools/list"));
    assert_eq!(
        m.kind,
        MessageKind::Request {
            method: "tools/list".into(),
            params: Some(json!({"cursor": "c"}))
        }
    );
    assert!(m.is_request());
    assert_eq!(m.tool_call(), None);
}

#[test]
fn a_request_without_params_has_none() {
    let m = single(r#"{"jsonrpc":"2.0","id":"a-1","method":"ping"}"#);
    assert_eq!(m.id, Some(json!("a-1")));
    assert_eq!(
        m.kind,
        MessageKind::Request {
            method: "ping".into(),
            params: None
        }
    );
}

#[test]
fn a_tool_call_gives_its_name_and_arguments() {
    let m = single(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"send_message","arguments":{"channel_id":"C_GENERAL","text":"hi"}}}"#,
    );
    let (name, args) = m.tool_call().unwrap();
    assert_eq!(name, "send_message");
    assert_eq!(args, &json!({"channel_id": "C_GENERAL", "text": "hi"}));
    assert_eq!(m.method(), Some("tools/call"));
}

#[test]
fn a_tool_call_without_arguments_has_null_arguments() {
    let m = single(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_channels"}}"#,
    );
    assert_eq!(m.tool_call(), Some(("list_channels", &Value::Null)));
}

#[test]
fn a_2026_tool_call_with_meta_still_gives_name_and_arguments() {
    // The shape the SDK's 2026-07-28 client sends: `_meta` beside the arguments.
    let m = single(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"send_message",
            "arguments":{"channel_id":"C_GENERAL","text":"hi"},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
    );
    let (name, args) = m.tool_call().unwrap();
    assert_eq!(name, "send_message");
    assert_eq!(args["channel_id"], "C_GENERAL");
}

#[test]
fn a_notification_has_no_id() {
    let m = single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(m.id, None);
    assert_eq!(
        m.kind,
        MessageKind::Notification {
            method: "notifications/initialized".into()
        }
    );
    assert_eq!(m.method(), Some("notifications/initialized"));
    assert!(!m.is_request());
}

#[test]
fn a_notification_may_carry_params() {
    let m =
        single(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#);
    assert_eq!(m.method(), Some("notifications/cancelled"));
    assert_eq!(m.id, None);
}

#[test]
fn a_null_id_is_kept_as_null() {
    let m = single(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
    assert_eq!(m.id, Some(Value::Null));
    assert!(m.is_request());
}

#[test]
fn responses_from_the_client_are_recognised() {
    let ok = single(r#"{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}"#);
    assert_eq!(ok.kind, MessageKind::Response);
    assert_eq!(ok.id, Some(json!("srv-1")));
    assert_eq!(ok.method(), None);
    let err = single(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"no"}}"#);
    assert_eq!(err.kind, MessageKind::Response);
    assert_eq!(err.id, Some(Value::Null));
}

#[test]
fn a_batch_keeps_its_order_and_kinds() {
    let inbound = parse(
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","method":"notifications/progress","params":{}},
            {"jsonrpc":"2.0","id":"x","result":{}},
            {"jsonrpc":"2.0","id":"2","method":"tools/call","params":{"name":"read_file","arguments":{"path":"/etc"}}}]"#,
    );
    let Inbound::Batch(messages) = &inbound else {
        panic!("not a batch: {inbound:?}");
    };
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0].method(), Some("tools/list"));
    assert_eq!(messages[1].id, None);
    assert_eq!(messages[2].kind, MessageKind::Response);
    assert_eq!(messages[3].tool_call().unwrap().0, "read_file");
    assert_eq!(inbound.messages().len(), 4);
    assert_eq!(inbound.request_ids("tools/list"), vec![json!(1)]);
    assert_eq!(inbound.request_ids("tools/call"), vec![json!("2")]);
}

#[test]
fn a_single_message_is_one_message() {
    let inbound = parse(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#);
    assert_eq!(inbound.messages().len(), 1);
    assert_eq!(inbound.request_ids("tools/list"), vec![json!(9)]);
    assert!(inbound.request_ids("tools/call").is_empty());
}

#[test]
fn surrounding_whitespace_is_fine() {
    single(" \r\n\t{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n ");
}

#[test]
fn unknown_members_are_ignored() {
    let m = single(r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":[1,2]}"#);
    assert_eq!(m.method(), Some("ping"));
}

#[test]
fn large_integer_ids_survive() {
    let m = single(r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#);
    assert_eq!(m.id, Some(json!(u64::MAX)));
    let m = single(r#"{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}"#);
    assert_eq!(m.id, Some(json!(i64::MIN)));
}

// --- malformed bodies, each with its reason -------------------------------------------------

#[test]
fn bodies_that_are_not_json() {
    for body in [
        "",
        "   \n",
        "{",
        "{\"jsonrpc\":",
        "not json",
        "{\"a\":1,}",
        "[1,2",
    ] {
        match parse_inbound(body.as_bytes()) {
            Err(ParseError::NotJson(reason)) => assert!(!reason.is_empty(), "{body:?}"),
            other => panic!("{body:?}: expected NotJson, got {other:?}"),
        }
    }
    let Err(ParseError::NotJson(reason)) = parse_inbound(b"") else {
        panic!()
    };
    assert_eq!(reason, "the body is empty");
    let Err(ParseError::NotJson(reason)) = parse_inbound(b"{\"jsonrpc\" 1}") else {
        panic!()
    };
    assert!(reason.contains("line 1 column"), "{reason}");
}

#[test]
fn invalid_utf8_is_not_json() {
    let body = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}";
    assert!(matches!(parse_inbound(body), Err(ParseError::NotJson(_))));
}

#[test]
fn nesting_too_deep_is_refused() {
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{}{}}}",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    assert!(matches!(
        parse_inbound(body.as_bytes()),
        Err(ParseError::NotJson(reason)) if reason.contains("recursion limit")
    ));
}

#[test]
fn a_missing_or_wrong_jsonrpc_version() {
    assert_eq!(
        invalid(r#"{"id":1,"method":"ping"}"#),
        r#"missing "jsonrpc": "2.0""#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
        r#""jsonrpc" must be "2.0", got "1.0""#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#),
        r#""jsonrpc" must be "2.0", got 2.0"#
    );
}

#[test]
fn a_method_that_is_not_a_string() {
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":42}"#),
        r#""method" must be a string, got a number"#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":null}"#),
        r#""method" must be a string, got null"#
    );
}

#[test]
fn ids_of_the_wrong_type() {
    for (id, kind) in [
        ("{}", "an object"),
        ("[1]", "an array"),
        ("true", "a boolean"),
    ] {
        assert_eq!(
            invalid(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)),
            format!(r#""id" must be a string, a number or null, got {kind}"#)
        );
    }
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#),
        r#""id" must be a string or an integer that fits 64 bits, got 1.5"#
    );
    assert!(
        invalid(r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#)
            .starts_with(r#""id" must be a string or an integer that fits 64 bits"#)
    );
}

#[test]
fn params_must_be_structured() {
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#),
        r#""params" of "ping" must be an object or an array, got a string"#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","method":"notifications/x","params":3}"#),
        r#""params" of "notifications/x" must be an object or an array, got a number"#
    );
}

#[test]
fn an_empty_batch() {
    assert_eq!(invalid("[]"), "the batch is empty");
    assert_eq!(invalid(" [ ] "), "the batch is empty");
}

#[test]
fn a_batch_entry_that_is_wrong_names_its_position() {
    assert_eq!(
        invalid(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2}]"#),
        r#"batch entry 1: missing "method" (or "result"/"error" for a response)"#
    );
    assert_eq!(
        invalid(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},3]"#),
        "batch entry 1: a batch holds message objects, got a number"
    );
    assert_eq!(
        invalid(r#"[{"id":1,"method":"ping"}]"#),
        r#"batch entry 0: missing "jsonrpc": "2.0""#
    );
}

#[test]
fn a_body_that_is_neither_object_nor_array() {
    for (body, kind) in [
        ("1", "a number"),
        ("\"x\"", "a string"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        assert_eq!(
            invalid(body),
            format!("the body must be a JSON-RPC message object or a batch array, got {kind}")
        );
    }
}

#[test]
fn responses_that_are_wrong() {
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#),
        r#"a response cannot carry both "result" and "error""#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","result":{}}"#),
        r#"a response must carry "id""#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"error":"bad"}"#),
        r#""error" must be an object, got a string"#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0"}"#),
        r#"missing "method" (or "result"/"error" for a response)"#
    );
    assert_eq!(
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#),
        r#"a message with "method" ("ping") cannot carry "result" or "error""#
    );
}

#[test]
fn tool_calls_that_the_gateway_could_not_read_are_refused() {
    let cases = [
        (
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_channel"}}"#,
            r#""tools/call" must be a request (with an "id"), not a notification"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#""tools/call" needs "params" with the tool's "name""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_channel"]}"#,
            r#""params" of "tools/call" must be an object, got an array"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            r#""tools/call" is missing "params.name""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_channel"]}}"#,
            r#""params.name" of "tools/call" must be a string, got an array"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":"a=1"}}"#,
            r#""params.arguments" of "tools/call" must be an object, got a string"#,
        ),
    ];
    for (body, reason) in cases {
        assert_eq!(invalid(body), reason, "{body}");
    }
}

#[test]
fn a_repeated_key_is_refused_wherever_it_is() {
    let reason = invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_channels","name":"delete_channel"}}"#,
    );
    assert!(reason.starts_with(r#"duplicate key "name""#), "{reason}");
    assert!(reason.contains("line 1 column"), "{reason}");
    let reason = invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_message","arguments":{"channel_id":"C_GENERAL","channel_id":"C_SECRET"}}}"#,
    );
    assert!(
        reason.starts_with(r#"duplicate key "channel_id""#),
        "{reason}"
    );
    let reason = invalid(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#);
    assert!(reason.starts_with(r#"duplicate key "id""#), "{reason}");
}

#[test]
fn parse_errors_say_what_they_are() {
    let e = ParseError::NotJson("EOF while parsing".into());
    assert_eq!(e.code(), PARSE_ERROR);
    assert_eq!(e.reason(), "EOF while parsing");
    assert_eq!(e.to_string(), "not JSON: EOF while parsing");
    let e = ParseError::NotJsonRpc("the batch is empty".into());
    assert_eq!(e.code(), INVALID_REQUEST);
    assert_eq!(
        e.to_string(),
        "not a JSON-RPC 2.0 message: the batch is empty"
    );
}

// --- recognition by parsing ------------------------------------------------------------------

fn recognised(body: &[u8]) -> Option<Result<Inbound, ParseError>> {
    read_body(body).mcp
}

#[test]
fn what_is_jsonrpc() {
    let is = |body: &[u8]| recognised(body).is_some();
    assert!(is(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#));
    assert!(is(b"  \n[{\"jsonrpc\":\"2.0\"}]"));
    assert!(is(br#"{"method":"x","jsonrpc":"1.0"}"#));
    assert!(is(br#"[{"a":1},{"jsonrpc":"2.0","id":1,"method":"ping"}]"#));
    assert!(!is(b""));
    assert!(!is(b"   "));
    assert!(!is(br#"{"model":"gpt","messages":[]}"#));
    assert!(!is(br#"x{"jsonrpc":"2.0"}"#));
    assert!(!is(br#""jsonrpc""#));
    assert!(!is(br#"[]"#));
    // Nested, it is data, not the message's version.
    assert!(!is(br#"{"data":{"jsonrpc":"2.0"}}"#));
    // Not JSON, but says it is JSON-RPC: malformed.
    assert!(matches!(
        recognised(br#"{"jsonrpc":"2.0",}"#),
        Some(Err(ParseError::NotJson(_)))
    ));
    assert!(!is(br#"{jsonrpc:"2.0"}"#));
}

/// Issue 13, item 1: the key written with an escape is the same key to every server.
#[test]
fn an_escaped_jsonrpc_key_is_still_jsonrpc() {
    let body = br#"{"jsonrp\u0063":"2.0","id":7,"method":"tools\/call","params":{"n\u0061me":"delete_\u0072epo","arguments":{}}}"#;
    let Some(Ok(Inbound::Single(message))) = recognised(body) else {
        panic!("not recognised: {:?}", recognised(body));
    };
    assert_eq!(
        message.tool_call().map(|(name, _)| name),
        Some("delete_repo")
    );
    assert_eq!(message.id, Some(json!(7)));
}

#[test]
fn a_byte_order_mark_or_utf16_does_not_hide_jsonrpc() {
    let message = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}"#;
    let mut with_bom = b"\xef\xbb\xbf".to_vec();
    with_bom.extend_from_slice(message.as_bytes());
    let utf16le: Vec<u8> = message.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf16be: Vec<u8> = message.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut utf16_bom = vec![0xff, 0xfe];
    utf16_bom.extend_from_slice(&utf16le);
    let utf32le: Vec<u8> = message
        .chars()
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    for body in [with_bom, utf16le, utf16be, utf16_bom, utf32le] {
        match recognised(&body) {
            Some(Ok(inbound)) => assert_eq!(
                inbound.messages()[0].tool_call().map(|(name, _)| name),
                Some("rm")
            ),
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn a_repeated_key_makes_jsonrpc_malformed_however_written() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","m\u0065thod":"tools/call"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1,"a":2}}]"#,
    ] {
        match recognised(body.as_bytes()) {
            Some(Err(ParseError::NotJsonRpc(reason))) => {
                assert!(reason.contains("duplicate key"), "{body}: {reason}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    // Any other JSON keeps its last value, as other readers do.
    let read = read_body(br#"{"a":1,"a":2}"#);
    assert!(read.mcp.is_none());
    assert_eq!(read.json, Some(json!({"a": 2})));
}

mod equivalent_encodings {
    //! The recogniser gives the same method, tool and id for every encoding of one message:
    //! keys and strings escaped or not, whitespace anywhere it may go, members in any order,
    //! the message alone or in a batch, nested arguments.

    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::*;

    /// One JSON-RPC message as (key, value) members, values already JSON.
    fn message() -> impl Strategy<Value = (String, Option<String>, Value)> {
        (
            prop_oneof![
                Just("tools/call".to_owned()),
                Just("tools/list".to_owned()),
                "[a-z/_]{1,12}"
            ],
            proptest::option::of("[a-z_*\\-]{1,10}"),
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                "[a-z0-9\\-]{0,8}".prop_map(Value::from),
            ],
        )
    }

    /// Writes a string as JSON, each character escaped or not as `escape` says.
    fn encode_str(text: &str, escape: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in text.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("\\u{:04x}", c as u32));
            } else if c == '/' && escape.get(i + 1).copied().unwrap_or(false) {
                out.push_str("\\/");
            } else {
                out.push(c);
            }
        }
        out.push('"');
        out
    }

    fn space(n: u8) -> &'static str {
        ["", " ", "\n", "\t ", "\r\n  "][usize::from(n) % 5]
    }

    /// An object from members, in `order`, with whitespace and escapes.
    fn encode_object(
        members: &[(String, String)],
        order: &[usize],
        escape: &[bool],
        spaces: &[u8],
    ) -> String {
        let mut out = String::from("{");
        let mut n = 0;
        let mut ws = || {
            n += 1;
            space(spaces.get(n % spaces.len().max(1)).copied().unwrap_or(0))
        };
        for (i, &index) in order.iter().enumerate() {
            let (key, value) = &members[index % members.len()];
            if i > 0 {
                out.push(',');
            }
            out.push_str(ws());
            out.push_str(&encode_str(key, &escape[i % escape.len().max(1)..]));
            out.push_str(ws());
            out.push(':');
            out.push_str(ws());
            out.push_str(value);
            out.push_str(ws());
        }
        out.push('}');
        out
    }

    proptest! {
        #[test]
        fn every_encoding_reads_the_same(
            (method, tool, id) in message(),
            order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
            escape in proptest::collection::vec(any::<bool>(), 1..40),
            spaces in proptest::collection::vec(any::<u8>(), 1..20),
            batch in any::<bool>(),
            bom in any::<bool>(),
        ) {
            let tool_name = tool.clone().unwrap_or_else(|| "t".to_owned());
            let params = encode_object(
                &[
                    ("name".to_owned(), encode_str(&tool_name, &escape)),
                    (
                        "arguments".to_owned(),
                        r#"{"nested":{"list":[1,{"deep":"x"}],"s":"a\u0062"}}"#.to_owned(),
                    ),
                ],
                &[1, 0],
                &escape,
                &spaces,
            );
            let members = [
                ("jsonrpc".to_owned(), encode_str("2.0", &escape)),
                ("id".to_owned(), id.to_string()),
                ("method".to_owned(), encode_str(&method, &escape)),
                ("params".to_owned(), params),
                ("extra".to_owned(), "null".to_owned()),
            ];
            let object = encode_object(&members, &order, &escape, &spaces);
            let mut body = if batch { format!("[{}{object}]", space(spaces[0])) } else { object };
            if bom {
                body.insert(0, '\u{feff}');
            }
            let plain = serde_json::json!({
                "jsonrpc": "2.0", "id": id, "method": method,
                "params": {"name": tool_name, "arguments": {}},
            });
            let expected = inbound(&plain).map(|i| i.messages()[0].clone());
            let read = read_body(body.as_bytes());
            let got = match read.mcp {
                Some(Ok(inbound)) => Ok(inbound.messages()[0].clone()),
                Some(Err(error)) => Err(error),
                None => panic!("not recognised: {body}"),
            };
            match (expected, got) {
                (Ok(want), Ok(got)) => {
                    prop_assert_eq!(want.method(), got.method(), "{}", body);
                    prop_assert_eq!(&want.id, &got.id, "{}", body);
                    prop_assert_eq!(
                        want.tool_call().map(|(name, _)| name),
                        got.tool_call().map(|(name, _)| name),
                        "{}", body
                    );
                }
                // A `tools/call` the parser refuses is refused however it is written.
                (Err(want), Err(got)) => prop_assert_eq!(want.code(), got.code(), "{}", body),
                (want, got) => prop_assert!(false, "{body}: {want:?} vs {got:?}"),
            }
        }
    }
}

// --- error replies --------------------------------------------------------------------------

#[test]
fn an_error_reply_keeps_a_numeric_id_a_number() {
    let inbound = parse(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_channel"}}"#,
    );
    let reply = error_reply(&inbound, -32001, "denied by policy", None).unwrap();
    assert_eq!(
        json_of(&reply),
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32001, "message": "denied by policy"}})
    );
}

#[test]
fn an_error_reply_keeps_a_string_id_a_string() {
    let inbound = parse(
        r#"{"jsonrpc":"2.0","id":"3","method":"tools/call","params":{"name":"delete_channel"}}"#,
    );
    let reply = json_of(&error_reply(&inbound, -32001, "denied", None).unwrap());
    assert_eq!(reply["id"], json!("3"));
    assert!(reply["id"].is_string());
}

#[test]
fn an_error_reply_keeps_null_and_large_ids() {
    let inbound = parse(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
    let reply = json_of(&error_reply(&inbound, -32001, "denied", None).unwrap());
    assert_eq!(reply["id"], Value::Null);
    let inbound = parse(r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#);
    let reply = error_reply(&inbound, -32001, "denied", None).unwrap();
    assert!(
        String::from_utf8(reply)
            .unwrap()
            .contains("\"id\":18446744073709551615")
    );
}

#[test]
fn an_error_reply_carries_data() {
    let inbound = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
    let data = json!({"type": "policy_denied", "policy": "no-deletes", "request_id": "r-1"});
    let reply = json_of(&error_reply(&inbound, -32001, "denied", Some(data.clone())).unwrap());
    assert_eq!(reply["error"]["data"], data);
    assert_eq!(reply["jsonrpc"], "2.0");
}

#[test]
fn a_notification_or_response_gets_no_error_body() {
    let inbound = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(error_reply(&inbound, -32001, "denied", None), None);
    let inbound = parse(r#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#);
    assert_eq!(error_reply(&inbound, -32001, "denied", None), None);
}

#[test]
fn a_batch_reply_has_one_error_per_request_in_order() {
    let inbound = parse(
        r#"[{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"x"}},
            {"jsonrpc":"2.0","method":"notifications/progress"},
            {"jsonrpc":"2.0","id":"srv","result":{}},
            {"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","id":null,"method":"ping"}]"#,
    );
    let reply = json_of(&error_reply(&inbound, -32001, "denied", None).unwrap());
    let ids: Vec<&Value> = reply.as_array().unwrap().iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, [&json!("b"), &json!(1), &Value::Null]);
    for entry in reply.as_array().unwrap() {
        assert_eq!(entry["error"], json!({"code": -32001, "message": "denied"}));
    }
}

#[test]
fn a_batch_of_one_request_is_still_answered_with_an_array() {
    let inbound = parse(r#"[{"jsonrpc":"2.0","id":5,"method":"ping"}]"#);
    let reply = json_of(&error_reply(&inbound, -32001, "denied", None).unwrap());
    assert_eq!(reply.as_array().unwrap().len(), 1);
    assert_eq!(reply[0]["id"], 5);
}

#[test]
fn a_batch_without_requests_gets_no_body() {
    let inbound = parse(
        r#"[{"jsonrpc":"2.0","method":"notifications/a"},{"jsonrpc":"2.0","id":1,"result":{}}]"#,
    );
    assert_eq!(error_reply(&inbound, -32001, "denied", None), None);
}

#[test]
fn parse_error_replies_carry_the_reason() {
    let error = parse_inbound(b"{\"jsonrpc\":").unwrap_err();
    let reply = json_of(&parse_error_reply(&error));
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["code"], -32700);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Parse error: "), "{message}");
    assert_eq!(reply["error"]["data"]["reason"], error.reason());

    let error = parse_inbound(b"[]").unwrap_err();
    let reply = json_of(&parse_error_reply(&error));
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["code"], -32600);
    assert_eq!(
        reply["error"]["message"],
        "Invalid Request: the batch is empty"
    );
    assert_eq!(reply["error"]["data"]["reason"], "the batch is empty");
}

// --- tools/list filtering -------------------------------------------------------------------

fn tools_result(id: Value, names: &[&str]) -> Value {
    let tools: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "description": format!("the {n} tool"), "inputSchema": {"type": "object"}}))
        .collect();
    json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}})
}

fn names_in(response: &Value) -> Vec<String> {
    response["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn no_deletes(name: &str) -> bool {
    !name.starts_with("delete_")
}

const TOOLS: [&str; 4] = [
    "send_message",
    "list_channels",
    "delete_channel",
    "read_file",
];

#[test]
fn a_json_tools_list_loses_the_disallowed_tools() {
    let body = serde_json::to_vec(&tools_result(json!(2), &TOOLS)).unwrap();
    let out = filter_tools_list(&body, "application/json", &[json!(2)], &no_deletes).unwrap();
    let out = json_of(&out);
    assert_eq!(
        names_in(&out),
        ["send_message", "list_channels", "read_file"]
    );
    // Everything else about each tool is kept.
    assert_eq!(
        out["result"]["tools"][0]["description"],
        "the send_message tool"
    );
    assert_eq!(out["id"], 2);
    assert_eq!(out["jsonrpc"], "2.0");
}

#[test]
fn the_content_type_may_carry_parameters_and_any_case() {
    let body = serde_json::to_vec(&tools_result(json!(2), &TOOLS)).unwrap();
    assert!(
        filter_tools_list(
            &body,
            "Application/JSON; charset=utf-8",
            &[json!(2)],
            &no_deletes
        )
        .is_some()
    );
    assert_eq!(
        filter_tools_list(&body, "text/plain", &[json!(2)], &no_deletes),
        None
    );
    assert_eq!(filter_tools_list(&body, "", &[json!(2)], &no_deletes), None);
}

#[test]
fn nothing_to_take_out_is_none() {
    let body = serde_json::to_vec(&tools_result(json!(2), &["send_message", "read_file"])).unwrap();
    assert_eq!(
        filter_tools_list(&body, "application/json", &[json!(2)], &no_deletes),
        None
    );
}

#[test]
fn a_list_answering_other_ids_is_unchanged() {
    let body = serde_json::to_vec(&tools_result(json!(2), &TOOLS)).unwrap();
    for ids in [vec![json!(3)], vec![json!("2")], vec![]] {
        assert_eq!(
            filter_tools_list(&body, "application/json", &ids, &no_deletes),
            None,
            "{ids:?}"
        );
    }
}

#[test]
fn invalid_or_unrelated_payloads_pass_unchanged() {
    for body in [
        "not json",
        r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"result":{"tools":"none"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"result":[]}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"x","result":{"tools":[{"name":"delete_channel"}]}}"#,
        r#"{"jsonrpc":"2.0","id":2,"id":2,"result":{"tools":[{"name":"delete_channel"}]}}"#,
        r#"[1,2,3]"#,
        "",
    ] {
        assert_eq!(
            filter_tools_list(
                body.as_bytes(),
                "application/json",
                &[json!(2)],
                &no_deletes
            ),
            None,
            "{body}"
        );
    }
}

#[test]
fn a_tool_without_a_name_is_taken_out() {
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read_file"},{"description":"anonymous"},{"name":7},"x"]}}"#;
    let out =
        json_of(&filter_tools_list(body, "application/json", &[json!(1)], &|_| true).unwrap());
    assert_eq!(names_in(&out), ["read_file"]);
}

#[test]
fn pagination_and_other_result_members_are_kept() {
    let mut response = tools_result(json!("p"), &TOOLS);
    response["result"]["nextCursor"] = json!("page-2");
    response["result"]["_meta"] = json!({"k": "v"});
    let body = serde_json::to_vec(&response).unwrap();
    let out =
        json_of(&filter_tools_list(&body, "application/json", &[json!("p")], &no_deletes).unwrap());
    assert_eq!(out["result"]["nextCursor"], "page-2");
    assert_eq!(out["result"]["_meta"], json!({"k": "v"}));
}

#[test]
fn a_json_batch_of_responses_is_filtered_where_ids_match() {
    let body = serde_json::to_vec(&json!([
        tools_result(json!(1), &TOOLS),
        {"jsonrpc": "2.0", "id": 2, "result": {}},
        tools_result(json!(3), &TOOLS),
    ]))
    .unwrap();
    let out =
        json_of(&filter_tools_list(&body, "application/json", &[json!(1)], &no_deletes).unwrap());
    assert_eq!(names_in(&out[0]).len(), 3);
    assert_eq!(out[1], json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
    assert_eq!(names_in(&out[2]).len(), 4);
}

fn sse_event(payload: &Value) -> String {
    format!("event: message\r\ndata: {payload}\r\n\r\n")
}

#[test]
fn an_sse_tools_list_is_rewritten_in_place() {
    // The SDK server's framing: CRLF, an `event: message` line, one data line.
    let body = sse_event(&tools_result(json!(2), &TOOLS));
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(2)],
        &no_deletes,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert_eq!(lines[0], "event: message");
    assert_eq!(&lines[2..], ["", ""]);
    let payload = json_of(lines[1].strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(
        names_in(&payload),
        ["send_message", "list_channels", "read_file"]
    );
}

#[test]
fn sse_with_several_events_rewrites_only_the_matching_response() {
    let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":2,"progress":1}}"#;
    let other = serde_json::to_string(&tools_result(json!(9), &TOOLS)).unwrap();
    let target = serde_json::to_string(&tools_result(json!(2), &TOOLS)).unwrap();
    let body = format!(
        ": a comment\n\
         retry: 1000\n\
         \n\
         event: message\nid: ev-1\ndata: {progress}\n\n\
         event: message\nid: ev-2\ndata: {other}\n\n\
         id: ev-3\nevent: message\ndata: {target}\nx-unknown: kept\n\n\
         event: message\ndata: not json at all\n\n"
    );
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(2)],
        &no_deletes,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let filtered = serde_json::to_string(&tools_result(
        json!(2),
        &["send_message", "list_channels", "read_file"],
    ))
    .unwrap();
    let expected = body.replace(&format!("data: {target}"), &format!("data: {filtered}"));
    assert_eq!(
        json_of(filtered.as_bytes()),
        json_of(
            out.lines()
                .find(|l| l.contains("\"id\":2"))
                .unwrap()
                .strip_prefix("data: ")
                .unwrap()
                .as_bytes()
        )
    );
    // Byte for byte the same stream, but for the one rewritten data line.
    assert_eq!(normalize_data_lines(&out), normalize_data_lines(&expected));
    assert!(out.contains(&format!("data: {other}\n")));
    assert!(out.contains(&format!("data: {progress}\n")));
    assert!(out.starts_with(": a comment\nretry: 1000\n\n"));
    assert!(out.ends_with("data: not json at all\n\n"));
    assert!(out.contains("x-unknown: kept\n\n"));
}

/// Each data line's JSON parsed and re-serialized, so that two streams compare regardless of
/// the key order a serializer chose; every other line as it is.
fn normalize_data_lines(stream: &str) -> String {
    stream
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix("data: ") {
            Some(data) => match serde_json::from_str::<Value>(data.trim_end()) {
                Ok(v) => format!("data: {v}{}", &data[data.trim_end().len()..]),
                Err(_) => line.to_owned(),
            },
            None => line.to_owned(),
        })
        .collect()
}

#[test]
fn sse_multi_line_data_is_joined_and_replaced_by_one_line() {
    let body = "event: message\r\n\
                data: {\"jsonrpc\":\"2.0\",\"id\":4,\r\n\
                data: \"result\":{\"tools\":[{\"name\":\"delete_channel\"},\r\n\
                data:{\"name\":\"read_file\"}]}}\r\n\
                id: 7\r\n\
                \r\n";
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(4)],
        &no_deletes,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "event: message");
    assert!(lines[1].starts_with("data: "));
    assert_eq!(lines[2], "id: 7");
    assert_eq!(&lines[3..], ["", ""]);
    let payload = json_of(lines[1].strip_prefix("data: ").unwrap().as_bytes());
    assert_eq!(names_in(&payload), ["read_file"]);
}

#[test]
fn sse_with_lone_cr_line_ends() {
    let payload = serde_json::to_string(&tools_result(json!(1), &TOOLS)).unwrap();
    let body = format!("event: message\rdata: {payload}\r\r");
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(1)],
        &no_deletes,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("event: message\rdata: {"), "{out:?}");
    assert!(out.ends_with("}\r\r"), "{out:?}");
    assert!(!out.contains("delete_channel"));
}

#[test]
fn sse_data_without_a_space_after_the_colon() {
    let payload = serde_json::to_string(&tools_result(json!(1), &TOOLS)).unwrap();
    let body = format!("data:{payload}\n\n");
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(1)],
        &no_deletes,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("data: {") && out.ends_with("}\n\n"),
        "{out:?}"
    );
    assert!(!out.contains("delete_channel"));
}

#[test]
fn sse_a_last_event_without_its_blank_line_is_still_filtered() {
    let payload = serde_json::to_string(&tools_result(json!(1), &TOOLS)).unwrap();
    for body in [
        format!("event: message\ndata: {payload}"),
        format!("event: message\ndata: {payload}\n"),
    ] {
        let out = filter_tools_list(
            body.as_bytes(),
            "text/event-stream",
            &[json!(1)],
            &no_deletes,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("delete_channel"), "{out:?}");
        assert_eq!(out.ends_with('\n'), body.ends_with('\n'), "{out:?}");
        assert!(out.starts_with("event: message\ndata: {"));
    }
}

#[test]
fn sse_a_leading_bom_is_kept() {
    let payload = serde_json::to_string(&tools_result(json!(1), &TOOLS)).unwrap();
    let body = format!("\u{feff}data: {payload}\n\n");
    let out = filter_tools_list(
        body.as_bytes(),
        "text/event-stream",
        &[json!(1)],
        &no_deletes,
    )
    .unwrap();
    assert!(out.starts_with("\u{feff}data: {".as_bytes()));
}

#[test]
fn sse_whose_ids_do_not_match_is_unchanged() {
    let body = sse_event(&tools_result(json!(2), &TOOLS));
    assert_eq!(
        filter_tools_list(
            body.as_bytes(),
            "text/event-stream",
            &[json!(3)],
            &no_deletes
        ),
        None
    );
    assert_eq!(
        filter_tools_list(
            body.as_bytes(),
            "text/event-stream",
            &[json!("2")],
            &no_deletes
        ),
        None
    );
}

#[test]
fn sse_with_only_notifications_comments_and_junk_is_unchanged() {
    let body: &[u8] = b": ping\r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\r\n\r\ndata: \xff\xfe\r\n\r\n\r\n\r\nevent: endpoint\r\n\r\n";
    assert_eq!(
        filter_tools_list(body, "text/event-stream", &[json!(1)], &no_deletes),
        None
    );
    assert_eq!(
        filter_tools_list(b"", "text/event-stream", &[json!(1)], &no_deletes),
        None
    );
}

#[test]
fn sse_a_field_named_like_data_is_not_data() {
    // `datum:` and `data-x:` are other fields; `data` alone (no colon) is an empty data line.
    let payload = serde_json::to_string(&tools_result(json!(1), &TOOLS)).unwrap();
    let body = format!("datum: {payload}\ndata-x: {payload}\n\n");
    assert_eq!(
        filter_tools_list(
            body.as_bytes(),
            "text/event-stream",
            &[json!(1)],
            &no_deletes
        ),
        None
    );
}

#[test]
fn a_large_list_is_filtered_in_order() {
    let names: Vec<String> = (0..20_000).map(|i| format!("tool_{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = serde_json::to_vec(&tools_result(json!(1), &refs)).unwrap();
    let even = |name: &str| name.trim_start_matches("tool_").parse::<u32>().unwrap() % 2 == 0;
    let started = std::time::Instant::now();
    let out = filter_tools_list(&body, "application/json", &[json!(1)], &even).unwrap();
    let json_took = started.elapsed();
    let kept = names_in(&json_of(&out));
    assert_eq!(kept.len(), 10_000);
    assert_eq!(kept[0], "tool_0");
    assert_eq!(kept[1], "tool_2");
    assert_eq!(kept[9_999], "tool_19998");

    let sse = format!(
        "event: message\r\ndata: {}\r\n\r\n",
        String::from_utf8(body).unwrap()
    );
    let started = std::time::Instant::now();
    let out = filter_tools_list(sse.as_bytes(), "text/event-stream", &[json!(1)], &even).unwrap();
    let sse_took = started.elapsed();
    let out = String::from_utf8(out).unwrap();
    let data = out
        .split("\r\n")
        .nth(1)
        .unwrap()
        .strip_prefix("data: ")
        .unwrap();
    assert_eq!(names_in(&json_of(data.as_bytes())), kept);
    // Generous bounds (debug build, shared machine): this is about not being quadratic.
    assert!(
        json_took.as_secs() < 5 && sse_took.as_secs() < 5,
        "{json_took:?} {sse_took:?}"
    );
}

// --- properties -----------------------------------------------------------------------------

mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::*;

    proptest! {
        #[test]
        fn parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_inbound(&body);
            let _ = read_body(&body);
        }

        #[test]
        fn filtering_arbitrary_streams_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = filter_tools_list(&body, "text/event-stream", &[json!(1)], &|_| false);
            let _ = filter_tools_list(&body, "application/json", &[json!(1)], &|_| false);
        }

        /// Streams of events none of which answers the id keep every byte.
        #[test]
        fn unmatched_streams_keep_every_byte(
            events in proptest::collection::vec(
                (
                    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
                    prop_oneof![
                        Just(": comment".to_owned()),
                        Just("event: message".to_owned()),
                        Just("id: 5".to_owned()),
                        "[a-z ]{0,12}".prop_map(|s| format!("data: {s}")),
                        Just(r#"data: {"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"x"}]}}"#.to_owned()),
                    ],
                ),
                0..12,
            )
        ) {
            let body: String = events.iter().map(|(end, line)| format!("{line}{end}")).collect();
            prop_assert_eq!(
                filter_tools_list(body.as_bytes(), "text/event-stream", &[json!(1)], &|_| false),
                None
            );
        }

        /// Any id that parses comes back, of its own type, in the error reply.
        #[test]
        fn error_replies_echo_the_id(id in prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            ".{0,16}".prop_map(|s| json!(s)),
        ]) {
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "t"}});
            let inbound = parse_inbound(body.to_string().as_bytes()).unwrap();
            let reply: serde_json::Value =
                serde_json::from_slice(&error_reply(&inbound, -32001, "denied", None).unwrap()).unwrap();
            prop_assert_eq!(&reply["id"], &id);
        }
    }
}

#[test]
fn an_arguments_digest_ignores_spelling_and_sees_every_value() {
    let digest = |body: &str| single(body).tool_call_digest().unwrap().1;
    let plain = digest(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send","arguments":{"to":"a@x","n":[1,{"b":2,"a":1}]}}}"#,
    );
    let respelled = digest(
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"arguments":{ "n" : [1,{"a":1,"b":2}], "\u0074o":"\u0061@x"},"name":"send"}}"#,
    );
    assert_eq!(plain, respelled);
    assert_eq!(plain.len(), 64);
    for other in [
        r#"{"to":"a@x","n":[1,{"b":2,"a":2}]}"#,
        r#"{"to":"a@x ","n":[1,{"b":2,"a":1}]}"#,
        r#"{"to":"a@x","n":[{"b":2,"a":1},1]}"#,
        r#"{"to":"a@x","n":[1,{"b":2,"a":1}],"cc":"eve@x"}"#,
        r#"{"to":"a@x","n":[1.0,{"b":2,"a":1}]}"#,
    ] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"send","arguments":{other}}}}}"#
        );
        assert_ne!(digest(&body), plain, "{other}");
    }
}
