use std::path::Path;

use super::testing::{string, strings, GgufWriter};
use super::*;

fn parse(bytes: &[u8]) -> Result<Gguf> {
    Gguf::from_reader(Path::new("test.gguf"), bytes, bytes.len() as u64)
}

fn error_of(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("the bytes parsed"),
        Err(e) => e.to_string(),
    }
}

fn sample() -> GgufWriter {
    GgufWriter::default()
        .kv("general.architecture", string("llama"))
        .kv("u32", Value::U32(7))
        .kv("u64", Value::U64(9))
        .kv("i32", Value::I32(11))
        .kv("negative", Value::I32(-1))
        .kv("huge", Value::U64(1 << 40))
        .kv("f32", Value::F32(1e-5))
        .kv("f64", Value::F64(0.25))
        .kv("flag", Value::Bool(true))
        .kv("tokens", strings(&["a", "b", "ab"]))
        .kv("types", Value::Array(vec![Value::I32(1), Value::I32(3)]))
        .kv("nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])]))
        .tensor("output.weight", &[64, 256])
}

#[test]
fn every_value_type_reads_back_through_the_typed_accessors() {
    let g = parse(&sample().bytes()).expect("parses");
    assert_eq!(g.version(), 3);
    assert_eq!(g.string("general.architecture").ok(), Some("llama"));
    assert_eq!(g.u32("u32").ok(), Some(7));
    assert_eq!(g.u32("u64").ok(), Some(9));
    assert_eq!(g.u32("i32").ok(), Some(11));
    assert_eq!(g.f32("f32").ok(), Some(1e-5));
    assert_eq!(g.f32("f64").ok(), Some(0.25));
    assert_eq!(g.get("flag"), Some(&Value::Bool(true)));
    assert_eq!(g.strings("tokens").ok(), Some(vec!["a", "b", "ab"]));
    assert_eq!(g.i32s("types").ok(), Some(vec![1, 3]));
    assert_eq!(g.get("nested"), Some(&Value::Array(vec![Value::Array(vec![Value::U8(1)])])));
    assert!(g.has_tensor("output.weight"));
    assert_eq!(g.tensors()[0].dims, vec![64, 256]);
}

#[test]
fn accessors_name_the_file_and_key_of_a_missing_or_mistyped_value() {
    let g = parse(&sample().bytes()).expect("parses");
    let err = |r: Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(err(g.u32("absent").map(drop)), "test.gguf: missing metadata key `absent`");
    assert_eq!(
        err(g.u32("general.architecture").map(drop)),
        "test.gguf: metadata `general.architecture`: expected an integer, found string"
    );
    assert!(err(g.u32("negative").map(drop)).contains("-1 is not a u32"));
    assert!(err(g.u32("huge").map(drop)).contains("1099511627776 is not a u32"));
    assert!(err(g.strings("types").map(drop)).contains("expected an array of strings"));
    assert!(err(g.f32("u32").map(drop)).contains("expected a float, found u32"));
}

#[test]
fn a_truncated_file_is_an_error_at_every_length() {
    let bytes = sample().bytes();
    for cut in 0..bytes.len() {
        let err = error_of(&bytes[..cut]);
        assert!(err.starts_with("test.gguf: "), "cut at {cut}: {err}");
        assert!(err.contains("truncated"), "cut at {cut}: {err}");
    }
}

#[test]
fn wrong_magic_says_it_is_not_gguf() {
    let mut bytes = sample().bytes();
    bytes[..4].copy_from_slice(b"PK\x03\x04");
    assert!(error_of(&bytes).starts_with("test.gguf: not a GGUF file"), "{}", error_of(&bytes));
}

#[test]
fn unsupported_versions_and_byte_orders_are_named() {
    let mut bytes = sample().bytes();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(error_of(&bytes).contains("version 1 is not supported"));
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(error_of(&bytes).contains("big-endian"));
    bytes[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert!(error_of(&bytes).contains("version 99 is not supported"));
}

/// A header with one metadata entry `key` whose value is `tag` then `payload`.
fn one_entry(key: &str, tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key.as_bytes());
    bytes.extend(tag.to_le_bytes());
    bytes.extend(payload);
    bytes
}

#[test]
fn an_absurd_array_length_is_refused_before_allocating() {
    let mut payload = 8u32.to_le_bytes().to_vec();
    payload.extend((1u64 << 40).to_le_bytes());
    let err = error_of(&one_entry("tokenizer.ggml.tokens", 9, &payload));
    assert!(
        err.starts_with(
            "test.gguf: metadata `tokenizer.ggml.tokens`: array length 1099511627776 is absurd"
        ),
        "{err}"
    );
    // Below the ceiling but more than the file could hold.
    let mut payload = 4u32.to_le_bytes().to_vec();
    payload.extend(1000u64.to_le_bytes());
    let err = error_of(&one_entry("llama.rope.dims", 9, &payload));
    assert!(err.contains("array length 1000 cannot fit"), "{err}");
}

#[test]
fn an_absurd_string_length_or_count_is_refused() {
    let err = error_of(&one_entry("tokenizer.chat_template", 8, &u64::MAX.to_le_bytes()));
    assert!(err.contains("`tokenizer.chat_template`: string length"), "{err}");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    assert!(error_of(&bytes).contains("metadata count 18446744073709551615 is absurd"));
}

#[test]
fn unknown_types_bad_bools_and_deep_nesting_are_errors() {
    assert!(error_of(&one_entry("k", 13, &[0; 8])).contains("unknown value type 13"));
    assert!(error_of(&one_entry("k", 7, &[2])).contains("bool byte 2"));
    let mut nested = Vec::new();
    for _ in 0..6 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend([0u8; 64]);
    assert!(error_of(&one_entry("k", 9, &nested)).contains("nested deeper"));
}

#[test]
fn a_duplicate_key_is_an_error() {
    let bytes = GgufWriter::default().kv("a", Value::U32(1)).kv("a", Value::U32(2)).bytes();
    assert_eq!(error_of(&bytes), "test.gguf: metadata `a`: appears twice");
}
