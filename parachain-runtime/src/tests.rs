//! Tests of the parachain runtime: its presets, and that it exposes the marketplace exactly
//! as the solo chain's runtime does (same pallets at the same indices, same calls, storage,
//! events and errors), so clients work against either unchanged.

use super::*;
use crate::common::genesis::build_preset;
use frame_support::traits::{fungible::Inspect, Get};
use sp_keyring::Sr25519Keyring;

type Solo = openledger_runtime::Runtime;

fn aura_of(keys: &[Sr25519Keyring]) -> Vec<sp_consensus_aura::sr25519::AuthorityId> {
    keys.iter().map(|k| k.public().into()).collect()
}

#[test]
fn development_preset_has_alice_as_the_one_collator() {
    build_preset(sp_genesis_builder::DEV_RUNTIME_PRESET).execute_with(|| {
        let alice = Sr25519Keyring::Alice.to_account_id();
        assert_eq!(
            pallet_aura::Authorities::<Runtime>::get().into_inner(),
            aura_of(&[Sr25519Keyring::Alice])
        );
        assert_eq!(
            pallet_collator_selection::Invulnerables::<Runtime>::get().into_inner(),
            vec![alice.clone()]
        );
        assert_eq!(pallet_session::Validators::<Runtime>::get(), vec![alice.clone()]);
        assert_eq!(
            ParachainInfo::parachain_id(),
            cumulus_primitives_core::ParaId::from(genesis_config_presets::PARA_ID)
        );
        assert_eq!(pallet_sudo::Key::<Runtime>::get(), Some(alice));
        for who in genesis_config_presets::endowed_accounts() {
            assert_eq!(Balances::balance(&who), genesis_config_presets::ENDOWMENT);
        }
        // Plus the existential deposits of the attribution pallet's and the treasury's
        // accounts, as on the solo chain.
        assert_eq!(
            Balances::total_issuance(),
            genesis_config_presets::ENDOWMENT
                * genesis_config_presets::endowed_accounts().len() as u128
                + 2 * crate::EXISTENTIAL_DEPOSIT
        );
    });
}

#[test]
fn local_testnet_preset_has_two_collators() {
    build_preset(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET).execute_with(|| {
        use Sr25519Keyring::*;
        // Session hands Aura the collators in account order.
        let mut aura = pallet_aura::Authorities::<Runtime>::get().into_inner();
        let mut expected_aura = aura_of(&[Alice, Bob]);
        aura.sort();
        expected_aura.sort();
        assert_eq!(aura, expected_aura);
        let invulnerables = pallet_collator_selection::Invulnerables::<Runtime>::get();
        // Collator selection keeps its invulnerables sorted.
        let mut expected = vec![Alice.to_account_id(), Bob.to_account_id()];
        expected.sort();
        assert_eq!(invulnerables.into_inner(), expected);
        assert_eq!(
            pallet_collator_selection::CandidacyBond::<Runtime>::get(),
            genesis_config_presets::CANDIDACY_BOND
        );
    });
}

#[test]
fn unknown_preset_is_none() {
    assert!(genesis_config_presets::get_preset(&"mainnet".into()).is_none());
    assert_eq!(genesis_config_presets::preset_names().len(), 2);
}

#[test]
fn open_is_the_same_token_on_both_chains() {
    assert_eq!(token::DECIMALS, 18);
    let ed: Balance = <Runtime as pallet_balances::Config>::ExistentialDeposit::get();
    let solo_ed: Balance = <Solo as pallet_balances::Config>::ExistentialDeposit::get();
    assert_eq!(ed, solo_ed);
    assert_eq!(
        <Runtime as frame_system::Config>::SS58Prefix::get(),
        <Solo as frame_system::Config>::SS58Prefix::get()
    );
    // Periods written in minutes last as long on the parachain's 6-second blocks as on the
    // solo chain's 3-second ones.
    assert_eq!(MINUTES * 2, openledger_runtime::MINUTES);
}

/// A runtime's metadata (V14: what every client reads).
fn metadata_of(prefixed: frame_support::__private::metadata::RuntimeMetadataPrefixed) -> V14 {
    match prefixed.1 {
        frame_support::__private::metadata::RuntimeMetadata::V14(m) => m,
        _ => panic!("not V14 metadata"),
    }
}

type V14 = frame_support::__private::metadata::v14::RuntimeMetadataV14;

/// What a client sees of a pallet in the metadata, by name: its index, and the names and
/// indices of its calls, events and errors with their fields' names, and its storage items'
/// names.
fn surface(metadata: &V14, name: &str) -> String {
    use scale_info::TypeDef;
    let pallet =
        metadata.pallets.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no {name}"));
    let variants = |id: u32| match metadata.types.resolve(id).map(|t| &t.type_def) {
        Some(TypeDef::Variant(v)) => v
            .variants
            .iter()
            .map(|v| {
                let fields: Vec<_> =
                    v.fields.iter().map(|f| f.name.clone().unwrap_or_default()).collect();
                format!("{}={}({})", v.name, v.index, fields.join(","))
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => format!("{other:?}"),
    };
    let storage = pallet
        .storage
        .as_ref()
        .map(|s| s.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "index {} | calls {} | events {} | errors {} | storage {}",
        pallet.index,
        pallet.calls.as_ref().map(|c| variants(c.ty.id)).unwrap_or_default(),
        pallet.event.as_ref().map(|e| variants(e.ty.id)).unwrap_or_default(),
        pallet.error.as_ref().map(|e| variants(e.ty.id)).unwrap_or_default(),
        storage,
    )
}

#[test]
fn the_marketplace_is_the_same_on_both_chains() {
    // (Some pallets read storage to describe their constants.)
    let para = build_preset(sp_genesis_builder::DEV_RUNTIME_PRESET)
        .execute_with(|| metadata_of(Runtime::metadata()));
    let solo = sp_io::TestExternalities::default().execute_with(|| metadata_of(Solo::metadata()));
    for name in [
        "Balances",
        "TransactionPayment",
        "Sudo",
        "Utility",
        "Compute",
        "Jobs",
        "Attribution",
        "Channels",
        "Verification",
    ] {
        assert_eq!(surface(&para, name), surface(&solo, name), "{name} differs");
    }
    // And transactions are signed with the same extensions, in the same order.
    let extensions = |m: &V14| {
        m.extrinsic.signed_extensions.iter().map(|e| e.identifier.clone()).collect::<Vec<_>>()
    };
    assert_eq!(extensions(&para), extensions(&solo));
    assert!(extensions(&para).len() >= 9);
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
    // polkadot-omni-node runs this blob; `SKIP_WASM_BUILD` would leave it out.
    if std::env::var_os("SKIP_WASM_BUILD").is_none() {
        assert!(WASM_BINARY.map(|b| b.len() > 100_000).unwrap_or(false));
    }
}

/// The names a WASM module exports as functions (its export section, id 7).
fn exported_functions(wasm: &[u8]) -> Vec<String> {
    fn leb(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let b = *bytes.get(*at)?;
            *at += 1;
            v |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
        }
    }
    let mut names = Vec::new();
    let mut at = 8; // magic and version
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let Some(len) = leb(wasm, &mut at) else { break };
        let end = at + len;
        if id == 7 {
            let mut p = at;
            let count = leb(wasm, &mut p).unwrap_or(0);
            for _ in 0..count {
                let Some(n) = leb(wasm, &mut p) else { break };
                let name = String::from_utf8_lossy(&wasm[p..p + n]).into_owned();
                p += n;
                let kind = wasm[p];
                p += 1;
                let _index = leb(wasm, &mut p);
                if kind == 0 {
                    names.push(name);
                }
            }
        }
        at = end;
    }
    names
}

#[test]
fn the_wasm_exports_validate_block_for_the_relay_chain() {
    // Without it every candidate is invalid on the relay chain ("Exported method
    // validate_block is not found") and no block is ever included.
    let blob = WASM_BINARY.expect("the WASM runtime is built");
    let wasm = sp_maybe_compressed_blob::decompress(blob, 64 << 20).expect("a WASM blob");
    let exports = exported_functions(&wasm);
    assert!(exports.iter().any(|e| e == "Core_version"), "not a runtime? {exports:?}");
    assert!(exports.iter().any(|e| e == "validate_block"), "{exports:?}");
}
