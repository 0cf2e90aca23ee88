use super::*;

/// A Llama-3-Instruct-style template, written for these tests in the shape Meta's uses:
/// BOS first, each turn in header tokens with its content stripped, `<|eot_id|>` after each,
/// tags on their own lines with `-` trimming the layout away, and a refusal of unknown roles
/// through `raise_exception`.
const LLAMA3_STYLE: &str = r#"{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "  What is 2+2? \n"),
    ]
}

fn hf_dir(tokenizer_config: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer_config.json");
    std::fs::write(path, tokenizer_config.to_string()).expect("write tokenizer_config.json");
    dir
}

fn error_text<T>(r: Result<T>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn a_llama3_style_template_from_tokenizer_config_renders_headers_after_bos() {
    let dir = hf_dir(serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>", "special": true},
        "chat_template": LLAMA3_STYLE,
    }));
    let template = ChatTemplate::read(dir.path()).expect("reads").expect("has a template");
    let prompt = template.render(&conversation(), true).expect("renders");
    assert_eq!(
        prompt,
        "<|begin_of_text|>\
         <|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let without = template.render(&conversation(), false).expect("renders");
    assert!(without.ends_with("What is 2+2?<|eot_id|>"), "{without:?}");
}

#[test]
fn raise_exception_fails_the_rendering_with_the_templates_message() {
    let dir = hf_dir(serde_json::json!({"chat_template": LLAMA3_STYLE}));
    let template = ChatTemplate::read(dir.path()).expect("reads").expect("has a template");
    let err = error_text(template.render(&[ChatMessage::new("tool", "42")], true));
    assert!(err.contains("Unknown role: tool"), "{err}");
    assert!(err.starts_with("chat template of ") && err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn the_named_list_form_takes_default_and_chat_template_jinja_wins() {
    let dir = hf_dir(serde_json::json!({
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ messages[0].content }}{{ eos_token }}"},
        ],
    }));
    let template = ChatTemplate::read(dir.path()).expect("reads").expect("has a template");
    assert_eq!(template.render(&conversation(), true).ok().as_deref(), Some("You are terse.</s>"));

    std::fs::write(dir.path().join("chat_template.jinja"), "{{ messages | length }}\n")
        .expect("write chat_template.jinja");
    let template = ChatTemplate::read(dir.path()).expect("reads").expect("has a template");
    assert_eq!(template.render(&conversation(), true).ok().as_deref(), Some("2"));
    assert!(template.origin().ends_with("chat_template.jinja"));
}

#[test]
fn a_named_list_without_default_is_an_error_listing_the_names() {
    let dir = hf_dir(serde_json::json!({"chat_template": [{"name": "rag", "template": "x"}]}));
    let err = error_text(ChatTemplate::read(dir.path()));
    assert!(
        err.ends_with("tokenizer_config.json: chat_template has no `default` among [\"rag\"]"),
        "{err}"
    );
}

#[test]
fn a_directory_without_a_template_has_none() {
    let dir = hf_dir(serde_json::json!({"eos_token": "</s>"}));
    assert!(ChatTemplate::read(dir.path()).expect("reads").is_none());
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(ChatTemplate::read(empty.path()).expect("reads").is_none());
}

#[test]
fn a_template_that_does_not_compile_names_where_it_came_from() {
    let dir = hf_dir(serde_json::json!({"chat_template": "{% for m in messages %}{{ m }"}));
    let err = error_text(ChatTemplate::read(dir.path()));
    assert!(err.contains("tokenizer_config.json (chat_template): syntax error"), "{err}");
}

#[test]
fn chatml_is_the_gateways_chat_prompt() {
    // The text `chat_prompt` in worker/src/job_payload.rs builds for this conversation.
    let expected = "<|im_start|>system\nYou are terse.<|im_end|>\n\
                    <|im_start|>user\n  What is 2+2? \n<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(
        ChatTemplate::chatml().render(&conversation(), true).ok().as_deref(),
        Some(expected)
    );
    let without = ChatTemplate::chatml().render(&conversation(), false).expect("renders");
    assert_eq!(without, expected.trim_end_matches("<|im_start|>assistant\n"));
}

#[test]
fn from_source_gives_templates_their_special_tokens_and_python_string_methods() {
    let source = "{{ bos_token }}{% for m in messages %}{% if m.content.startswith('  ') %}\
                  {{ m.content.strip().upper() }}{% break %}{% endif %}{% endfor %}{{ eos_token }}";
    let template = ChatTemplate::from_source(source, "<s>", "</s>").expect("compiles");
    assert_eq!(
        template.render(&conversation(), false).ok().as_deref(),
        Some("<s>WHAT IS 2+2?</s>")
    );
}

#[test]
fn chat_messages_travel_as_role_and_content() {
    let json = serde_json::to_string(&ChatMessage::new("user", "Hi")).expect("serializes");
    assert_eq!(json, r#"{"role":"user","content":"Hi"}"#);
    let back: ChatMessage = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, ChatMessage::new("user", "Hi"));
}

#[test]
fn block_tags_on_their_own_lines_leave_no_whitespace_as_in_transformers() {
    let source =
        "{% for m in messages %}\n  {% if m.role %}\n{{ m.role }}\n  {% endif %}\n{% endfor %}\n";
    let template = ChatTemplate::from_source(source, "", "").expect("compiles");
    assert_eq!(template.render(&conversation(), false).ok().as_deref(), Some("system\nuser\n"));
}
