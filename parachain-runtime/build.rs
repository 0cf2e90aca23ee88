// The same build as the solo runtime's: its WASM blob, embedded as `WASM_BINARY`.
include!("../runtime/build.rs");
