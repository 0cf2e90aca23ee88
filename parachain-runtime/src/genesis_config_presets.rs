//! Genesis presets of the parachain: the shared endowed accounts, and collators instead of
//! validators.
//!
//! - `development`: Alice is the only collator (invulnerable, her Aura key in her session);
//!   the well-known dev accounts are endowed; Alice is sudo. What `polkadot-omni-node --dev`
//!   runs alone.
//! - `local_testnet`: Alice and Bob collate, so the chain goes on with one of them down.
//!   Zombienet's parachain uses this preset.
//!
//! Both use para id [`PARA_ID`].

use alloc::{vec, vec::Vec};
use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_keyring::Sr25519Keyring;

pub use crate::common::genesis::{
    base_models, endowed_accounts, get_preset, preset_names, ENDOWMENT,
};
use crate::{
    token::OPEN, AccountId, BalancesConfig, CollatorSelectionConfig, ComputeConfig,
    ParachainInfoConfig, RuntimeGenesisConfig, SessionConfig, SessionKeys, SudoConfig,
};

/// The para id the presets register under (the first id a local relay chain hands out to a
/// parachain that is not a system chain).
pub const PARA_ID: u32 = 2000;

/// The bond a collator candidate (not invulnerable) locks.
pub const CANDIDACY_BOND: u128 = 1_000 * OPEN;

fn genesis(collators: Vec<Sr25519Keyring>, root: AccountId) -> Value {
    build_struct_json_patch!(RuntimeGenesisConfig {
        balances: BalancesConfig {
            balances: endowed_accounts().into_iter().map(|a| (a, ENDOWMENT)).collect::<Vec<_>>(),
        },
        parachain_info: ParachainInfoConfig { parachain_id: PARA_ID.into() },
        collator_selection: CollatorSelectionConfig {
            invulnerables: collators.iter().map(|k| k.to_account_id()).collect::<Vec<_>>(),
            candidacy_bond: CANDIDACY_BOND,
        },
        session: SessionConfig {
            keys: collators
                .iter()
                .map(|k| {
                    let account = k.to_account_id();
                    (account.clone(), account, SessionKeys { aura: k.public().into() })
                })
                .collect::<Vec<_>>(),
        },
        sudo: SudoConfig { key: Some(root) },
        compute: ComputeConfig { base_models: base_models() },
    })
}

/// The `development` preset.
pub fn development() -> Value {
    genesis(vec![Sr25519Keyring::Alice], Sr25519Keyring::Alice.to_account_id())
}

/// The `local_testnet` preset.
pub fn local_testnet() -> Value {
    genesis(vec![Sr25519Keyring::Alice, Sr25519Keyring::Bob], Sr25519Keyring::Alice.to_account_id())
}
