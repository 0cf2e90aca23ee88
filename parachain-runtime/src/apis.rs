//! The runtime APIs: the ones both chains share ([`crate::common::apis`]) and the ones a
//! collator (polkadot-omni-node) asks of a parachain's runtime.

use sp_runtime::traits::Block as BlockT;

use super::{configs::ConsensusHook, Block, ParachainInfo, ParachainSystem, Runtime};

impl_openledger_runtime_apis! {
    impl cumulus_primitives_core::CollectCollationInfo<Block> for Runtime {
        fn collect_collation_info(
            header: &<Block as BlockT>::Header,
        ) -> cumulus_primitives_core::CollationInfo {
            ParachainSystem::collect_collation_info(header)
        }
    }

    impl cumulus_primitives_core::GetParachainInfo<Block> for Runtime {
        fn parachain_id() -> cumulus_primitives_core::ParaId {
            ParachainInfo::parachain_id()
        }
    }

    impl cumulus_primitives_core::RelayParentOffsetApi<Block> for Runtime {
        fn relay_parent_offset() -> u32 {
            0
        }

        fn max_claim_queue_offset() -> u8 {
            1
        }
    }

    impl cumulus_primitives_aura::AuraUnincludedSegmentApi<Block> for Runtime {
        fn can_build_upon(
            included_hash: <Block as BlockT>::Hash,
            slot: cumulus_primitives_aura::Slot,
        ) -> bool {
            ConsensusHook::can_build_upon(included_hash, slot)
        }
    }
}
