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
use sp_keyring::{Ed25519Keyring, Sr25519Keyring};

pub use crate::common::genesis::{
    base_models, endowed_accounts, get_preset, preset_names, ENDOWMENT,
};
use crate::{AccountId, BalancesConfig, ComputeConfig, RuntimeGenesisConfig, SudoConfig};

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
        compute: ComputeConfig { base_models: base_models() },
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
