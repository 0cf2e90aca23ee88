//! Tests of the runtime's configuration and genesis presets.

use super::*;
use frame_support::traits::{fungible::Inspect, Get};
use sp_keyring::Sr25519Keyring;

use crate::common::genesis::build_preset;

#[test]
fn development_preset_builds_with_alice_as_sole_authority() {
    build_preset(sp_genesis_builder::DEV_RUNTIME_PRESET).execute_with(|| {
        let aura = pallet_aura::Authorities::<Runtime>::get();
        assert_eq!(aura.len(), 1);
        assert_eq!(aura[0], Sr25519Keyring::Alice.public().into());
        assert_eq!(Grandpa::grandpa_authorities().len(), 1);
        assert_eq!(pallet_sudo::Key::<Runtime>::get(), Some(Sr25519Keyring::Alice.to_account_id()));
        for who in genesis_config_presets::endowed_accounts() {
            assert_eq!(Balances::balance(&who), genesis_config_presets::ENDOWMENT);
        }
        // Plus the existential deposits of the attribution pallet's and the treasury's
        // accounts, endowed at genesis so they never fail to receive a fee share.
        assert_eq!(
            Balances::total_issuance(),
            genesis_config_presets::ENDOWMENT
                * genesis_config_presets::endowed_accounts().len() as u128
                + 2 * crate::EXISTENTIAL_DEPOSIT
        );
        assert_eq!(
            Balances::balance(&pallet_attribution::Pallet::<Runtime>::account_id()),
            crate::EXISTENTIAL_DEPOSIT
        );
    });
}

#[test]
fn local_testnet_preset_builds_with_four_authorities() {
    build_preset(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET).execute_with(|| {
        use Sr25519Keyring::*;
        let aura: Vec<_> = pallet_aura::Authorities::<Runtime>::get().into_inner();
        let expected: Vec<sp_consensus_aura::sr25519::AuthorityId> =
            [Alice, Bob, Charlie, Dave].into_iter().map(|k| k.public().into()).collect();
        assert_eq!(aura, expected);
        let grandpa = Grandpa::grandpa_authorities();
        assert_eq!(grandpa.len(), 4);
        assert!(grandpa.iter().all(|(_, weight)| *weight == 1));
    });
}

#[test]
fn unknown_preset_is_none() {
    assert!(genesis_config_presets::get_preset(&"mainnet".into()).is_none());
    assert_eq!(genesis_config_presets::preset_names().len(), 2);
}

#[test]
fn token_and_existential_deposit() {
    assert_eq!(token::DECIMALS, 18);
    let ed: Balance = <Runtime as pallet_balances::Config>::ExistentialDeposit::get();
    assert_eq!(ed, token::OPEN / 1000);
    assert_eq!(<Runtime as frame_system::Config>::SS58Prefix::get(), token::SS58_PREFIX);
}

#[test]
fn a_transfer_costs_a_fraction_of_a_milli_open() {
    crate::common::genesis::check_transfer_fee();
}

#[test]
fn presets_register_the_embedded_model_as_base_model_0() {
    crate::common::genesis::check_base_models();
}

#[test]
fn runtime_blob_is_built() {
    // The node embeds this blob; `SKIP_WASM_BUILD` would leave it out.
    if std::env::var_os("SKIP_WASM_BUILD").is_none() {
        assert!(WASM_BINARY.map(|b| b.len() > 100_000).unwrap_or(false));
    }
}
