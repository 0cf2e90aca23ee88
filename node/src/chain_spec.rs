//! Chain specifications built into the node, and the token properties wallets read.

use openledger_runtime::{token, WASM_BINARY};
use sc_service::{ChainType, Properties};

/// A chain spec of this node: genesis from a runtime preset, plus client properties.
pub type ChainSpec = sc_service::GenericChainSpec;

/// Properties polkadot.js and other wallets read to show balances in OPEN.
pub fn properties() -> Properties {
    let mut p = Properties::new();
    p.insert("tokenSymbol".into(), token::SYMBOL.into());
    p.insert("tokenDecimals".into(), token::DECIMALS.into());
    p.insert("ss58Format".into(), token::SS58_PREFIX.into());
    p
}

fn runtime_blob() -> Result<&'static [u8], String> {
    WASM_BINARY.ok_or_else(|| {
        "this node was built without its runtime blob (SKIP_WASM_BUILD was set); rebuild without it"
            .to_string()
    })
}

/// Single-validator development chain (Alice).
pub fn development() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(runtime_blob()?, None)
        .with_name("OpenLedger Development")
        .with_id("openledger_dev")
        .with_chain_type(ChainType::Development)
        .with_genesis_config_preset_name(sp_genesis_builder::DEV_RUNTIME_PRESET)
        .with_properties(properties())
        .build())
}

/// Four-validator local testnet (Alice, Bob, Charlie, Dave).
pub fn local_testnet() -> Result<ChainSpec, String> {
    Ok(ChainSpec::builder(runtime_blob()?, None)
        .with_name("OpenLedger Local Testnet")
        .with_id("openledger_local")
        .with_chain_type(ChainType::Local)
        .with_genesis_config_preset_name(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET)
        .with_properties(properties())
        .build())
}

/// A chain spec read from a JSON file, with an error that names the file.
pub fn from_file(path: &str) -> Result<ChainSpec, String> {
    let p = std::path::PathBuf::from(path);
    if !p.is_file() {
        return Err(format!(
            "chain spec `{path}` not found: expected `dev`, `local` or the path of a chain spec JSON file"
        ));
    }
    ChainSpec::from_json_file(p).map_err(|e| format!("chain spec `{path}` is not valid: {e}"))
}
