// Builds the runtime's WASM blob (and embeds it in the native crate as `WASM_BINARY`); the
// parachain runtime's build script is this file too (`include!`).

#[cfg(all(feature = "std", feature = "metadata-hash"))]
fn main() {
    substrate_wasm_builder::WasmBuilder::init_with_defaults()
        .enable_feature("metadata-docs")
        .enable_metadata_hash(openledger_token::SYMBOL, openledger_token::DECIMALS)
        .build();
}

#[cfg(all(feature = "std", feature = "metadata-hash"))]
mod openledger_token {
    // Kept equal to `openledger_primitives::token` (checked by a runtime test).
    pub const SYMBOL: &str = "OPEN";
    pub const DECIMALS: u8 = 18;
}

#[cfg(all(feature = "std", not(feature = "metadata-hash")))]
fn main() {
    substrate_wasm_builder::WasmBuilder::init_with_defaults()
        .enable_feature("metadata-docs")
        .build();
}

// The WASM build compiles this crate without `std`: nothing to do then.
#[cfg(not(feature = "std"))]
fn main() {}
