//! Genesis presets: the initial state of a development chain and of a local testnet.
//!
//! - `development`: Alice is the only Aura and GRANDPA authority (one node produces and
//!   finalizes alone); the well-known dev accounts are endowed; Alice is sudo.
//! - `local_testnet`: Alice, Bob, Charlie and Dave are authorities of both; four validators
//!   tolerate one offline (GRANDPA needs more than two thirds). Zombienet uses this preset.

use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{self, PresetId};
use sp_keyring::{Ed25519Keyring, Sr25519Keyring};

use crate::{token::OPEN, AccountId, Balance, BalancesConfig, RuntimeGenesisConfig, SudoConfig};

/// What each endowed development account starts with: one million OPEN.
pub const ENDOWMENT: Balance = 1_000_000 * OPEN;

/// The accounts endowed in both presets: the well-known dev keys and their stashes.
pub fn endowed_accounts() -> Vec<AccountId> {
    use Sr25519Keyring::*;
    [Alice, Bob, Charlie, Dave, Eve, Ferdie, AliceStash, BobStash, CharlieStash, DaveStash]
        .into_iter()
        .map(|k| k.to_account_id())
        .collect()
}

fn authority(key: Sr25519Keyring, finality: Ed25519Keyring) -> (AuraId, GrandpaId) {
    (key.public().into(), finality.public().into())
}

fn genesis(authorities: Vec<(AuraId, GrandpaId)>, root: AccountId) -> Value {
    build_struct_json_patch!(RuntimeGenesisConfig {
        balances: BalancesConfig {
            balances: endowed_accounts().into_iter().map(|a| (a, ENDOWMENT)).collect::<Vec<_>>(),
        },
        aura: pallet_aura::GenesisConfig {
            authorities: authorities.iter().map(|(aura, _)| aura.clone()).collect::<Vec<_>>(),
        },
        grandpa: pallet_grandpa::GenesisConfig {
            authorities: authorities.iter().map(|(_, gran)| (gran.clone(), 1)).collect::<Vec<_>>(),
        },
        sudo: SudoConfig { key: Some(root) },
    })
}

/// The `development` preset.
pub fn development() -> Value {
    genesis(
        vec![authority(Sr25519Keyring::Alice, Ed25519Keyring::Alice)],
        Sr25519Keyring::Alice.to_account_id(),
    )
}

/// The `local_testnet` preset.
pub fn local_testnet() -> Value {
    genesis(
        vec![
            authority(Sr25519Keyring::Alice, Ed25519Keyring::Alice),
            authority(Sr25519Keyring::Bob, Ed25519Keyring::Bob),
            authority(Sr25519Keyring::Charlie, Ed25519Keyring::Charlie),
            authority(Sr25519Keyring::Dave, Ed25519Keyring::Dave),
        ],
        Sr25519Keyring::Alice.to_account_id(),
    )
}

/// The JSON patch of the preset named `id`, if there is one.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
    let patch = match id.as_ref() {
        sp_genesis_builder::DEV_RUNTIME_PRESET => development(),
        sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => local_testnet(),
        _ => return None,
    };
    serde_json::to_vec(&patch).ok()
}

/// Names of the presets this runtime provides.
pub fn preset_names() -> Vec<PresetId> {
    vec![
        PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
        PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
    ]
}
