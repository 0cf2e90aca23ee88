//! The runtime APIs: what a node, polkadot.js or subxt can ask of this runtime.

use alloc::vec::Vec;
use frame_support::{
    genesis_builder_helper::{build_state, get_preset},
    weights::Weight,
};
use pallet_grandpa::AuthorityId as GrandpaId;
use sp_api::impl_runtime_apis;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_core::{crypto::KeyTypeId, OpaqueMetadata};
use sp_runtime::{
    traits::{Block as BlockT, NumberFor},
    transaction_validity::{TransactionSource, TransactionValidity},
    ApplyExtrinsicResult,
};
use sp_version::RuntimeVersion;

use super::{
    AccountId, Attribution, Aura, Balance, Block, BlockNumber, Channels, Compute, Executive,
    Grandpa, InherentDataExt, Jobs, Nonce, Runtime, RuntimeCall, RuntimeGenesisConfig, SessionKeys,
    System, TransactionPayment, VERSION,
};

impl_runtime_apis! {
    impl sp_api::Core<Block> for Runtime {
        fn version() -> RuntimeVersion {
            VERSION
        }

        fn execute_block(block: <Block as BlockT>::LazyBlock) {
            Executive::execute_block(block);
        }

        fn initialize_block(header: &<Block as BlockT>::Header) -> sp_runtime::ExtrinsicInclusionMode {
            Executive::initialize_block(header)
        }
    }

    impl sp_api::Metadata<Block> for Runtime {
        fn metadata() -> OpaqueMetadata {
            OpaqueMetadata::new(Runtime::metadata().into())
        }

        fn metadata_at_version(version: u32) -> Option<OpaqueMetadata> {
            Runtime::metadata_at_version(version)
        }

        fn metadata_versions() -> Vec<u32> {
            Runtime::metadata_versions()
        }
    }

    impl frame_support::view_functions::runtime_api::RuntimeViewFunction<Block> for Runtime {
        fn execute_view_function(
            id: frame_support::view_functions::ViewFunctionId,
            input: Vec<u8>,
        ) -> Result<Vec<u8>, frame_support::view_functions::ViewFunctionDispatchError> {
            Runtime::execute_view_function(id, input)
        }
    }

    impl sp_block_builder::BlockBuilder<Block> for Runtime {
        fn apply_extrinsic(extrinsic: <Block as BlockT>::Extrinsic) -> ApplyExtrinsicResult {
            Executive::apply_extrinsic(extrinsic)
        }

        fn finalize_block() -> <Block as BlockT>::Header {
            Executive::finalize_block()
        }

        fn inherent_extrinsics(data: sp_inherents::InherentData) -> Vec<<Block as BlockT>::Extrinsic> {
            data.create_extrinsics()
        }

        fn check_inherents(
            block: <Block as BlockT>::LazyBlock,
            data: sp_inherents::InherentData,
        ) -> sp_inherents::CheckInherentsResult {
            data.check_extrinsics(&block)
        }
    }

    impl sp_transaction_pool::runtime_api::TaggedTransactionQueue<Block> for Runtime {
        fn validate_transaction(
            source: TransactionSource,
            tx: <Block as BlockT>::Extrinsic,
            block_hash: <Block as BlockT>::Hash,
        ) -> TransactionValidity {
            Executive::validate_transaction(source, tx, block_hash)
        }
    }

    impl sp_offchain::OffchainWorkerApi<Block> for Runtime {
        fn offchain_worker(header: &<Block as BlockT>::Header) {
            Executive::offchain_worker(header)
        }
    }

    impl sp_consensus_aura::AuraApi<Block, AuraId> for Runtime {
        fn slot_duration() -> sp_consensus_aura::SlotDuration {
            sp_consensus_aura::SlotDuration::from_millis(Aura::slot_duration())
        }

        fn authorities() -> Vec<AuraId> {
            pallet_aura::Authorities::<Runtime>::get().into_inner()
        }
    }

    impl sp_session::SessionKeys<Block> for Runtime {
        fn generate_session_keys(
            owner: Vec<u8>,
            seed: Option<Vec<u8>>,
        ) -> sp_session::OpaqueGeneratedSessionKeys {
            SessionKeys::generate(&owner, seed).into()
        }

        fn decode_session_keys(encoded: Vec<u8>) -> Option<Vec<(Vec<u8>, KeyTypeId)>> {
            SessionKeys::decode_into_raw_public_keys(&encoded)
        }
    }

    impl sp_consensus_grandpa::GrandpaApi<Block> for Runtime {
        fn grandpa_authorities() -> sp_consensus_grandpa::AuthorityList {
            Grandpa::grandpa_authorities()
        }

        fn current_set_id() -> sp_consensus_grandpa::SetId {
            Grandpa::current_set_id()
        }

        fn submit_report_equivocation_unsigned_extrinsic(
            _equivocation_proof: sp_consensus_grandpa::EquivocationProof<
                <Block as BlockT>::Hash,
                NumberFor<Block>,
            >,
            _key_owner_proof: sp_consensus_grandpa::OpaqueKeyOwnershipProof,
        ) -> Option<()> {
            // No session pallet: equivocations cannot be proven against key ownership.
            None
        }

        fn generate_key_ownership_proof(
            _set_id: sp_consensus_grandpa::SetId,
            _authority_id: GrandpaId,
        ) -> Option<sp_consensus_grandpa::OpaqueKeyOwnershipProof> {
            None
        }
    }

    impl pallet_compute_runtime_api::ComputeApi<Block, AccountId, pallet_compute::ProviderInfo<Runtime>>
        for Runtime
    {
        fn provider(who: AccountId) -> Option<pallet_compute::ProviderInfo<Runtime>> {
            Compute::provider_info(&who)
        }

        fn providers_for_model(
            model: openledger_primitives::market::BaseModelId,
        ) -> alloc::vec::Vec<AccountId> {
            pallet_compute::ProvidersByModel::<Runtime>::get(model).into_inner()
        }
    }

    impl pallet_jobs_runtime_api::JobsApi<
        Block,
        AccountId,
        BlockNumber,
        pallet_jobs::JobStatus<Runtime>,
        pallet_jobs::Quote<Runtime>,
    > for Runtime {
        fn job_status(job: openledger_primitives::market::JobId) -> pallet_jobs::JobStatus<Runtime> {
            Jobs::job_status(job)
        }

        fn jobs_of_provider(
            provider: AccountId,
            limit: u32,
        ) -> alloc::vec::Vec<openledger_primitives::market::JobId> {
            Jobs::jobs_of_provider(&provider, limit)
        }

        fn jobs_due_at(
            block: BlockNumber,
            limit: u32,
        ) -> alloc::vec::Vec<openledger_primitives::market::JobId> {
            Jobs::jobs_due_at(block, limit)
        }

        fn quote(
            adapter: openledger_primitives::market::AdapterId,
            max_output_tokens: u32,
        ) -> Option<pallet_jobs::Quote<Runtime>> {
            Jobs::quote(adapter, max_output_tokens)
        }
    }

    impl pallet_attribution_runtime_api::AttributionApi<
        Block,
        AccountId,
        Balance,
        pallet_attribution::Adapter<Runtime>,
        pallet_attribution::Payee<AccountId>,
    > for Runtime {
        fn pending_rewards(
            datanet: openledger_primitives::market::DataNetId,
            who: AccountId,
        ) -> Balance {
            Attribution::pending_rewards(datanet, who)
        }

        fn adapter(
            adapter: openledger_primitives::market::AdapterId,
        ) -> Option<pallet_attribution::Adapter<Runtime>> {
            Attribution::adapter_info(adapter)
        }

        fn quote_split(
            adapter: openledger_primitives::market::AdapterId,
            provider: AccountId,
            charge: Balance,
            context: alloc::vec::Vec<openledger_primitives::market::DataNetShare>,
        ) -> Option<alloc::vec::Vec<(pallet_attribution::Payee<AccountId>, Balance)>> {
            Attribution::split_quote(adapter, provider, charge, context)
        }
    }

    impl pallet_channels_runtime_api::ChannelsApi<
        Block,
        pallet_channels::ChannelStatus<Runtime>,
    > for Runtime {
        fn channel(
            channel: openledger_primitives::voucher::ChannelId,
        ) -> pallet_channels::ChannelStatus<Runtime> {
            Channels::channel_status(channel)
        }
    }

    impl frame_system_rpc_runtime_api::AccountNonceApi<Block, AccountId, Nonce> for Runtime {
        fn account_nonce(account: AccountId) -> Nonce {
            System::account_nonce(account)
        }
    }

    impl pallet_transaction_payment_rpc_runtime_api::TransactionPaymentApi<Block, Balance> for Runtime {
        fn query_info(
            uxt: <Block as BlockT>::Extrinsic,
            len: u32,
        ) -> pallet_transaction_payment_rpc_runtime_api::RuntimeDispatchInfo<Balance> {
            TransactionPayment::query_info(uxt, len)
        }
        fn query_fee_details(
            uxt: <Block as BlockT>::Extrinsic,
            len: u32,
        ) -> pallet_transaction_payment::FeeDetails<Balance> {
            TransactionPayment::query_fee_details(uxt, len)
        }
        fn query_weight_to_fee(weight: Weight) -> Balance {
            TransactionPayment::weight_to_fee(weight)
        }
        fn query_length_to_fee(length: u32) -> Balance {
            TransactionPayment::length_to_fee(length)
        }
    }

    impl pallet_transaction_payment_rpc_runtime_api::TransactionPaymentCallApi<Block, Balance, RuntimeCall>
        for Runtime
    {
        fn query_call_info(
            call: RuntimeCall,
            len: u32,
        ) -> pallet_transaction_payment::RuntimeDispatchInfo<Balance> {
            TransactionPayment::query_call_info(call, len)
        }
        fn query_call_fee_details(
            call: RuntimeCall,
            len: u32,
        ) -> pallet_transaction_payment::FeeDetails<Balance> {
            TransactionPayment::query_call_fee_details(call, len)
        }
        fn query_weight_to_fee(weight: Weight) -> Balance {
            TransactionPayment::weight_to_fee(weight)
        }
        fn query_length_to_fee(length: u32) -> Balance {
            TransactionPayment::length_to_fee(length)
        }
    }

    #[cfg(feature = "runtime-benchmarks")]
    impl frame_benchmarking::Benchmark<Block> for Runtime {
        fn benchmark_metadata(extra: bool) -> (
            Vec<frame_benchmarking::BenchmarkList>,
            Vec<frame_support::traits::StorageInfo>,
        ) {
            crate::benchmarks::metadata(extra)
        }

        fn dispatch_benchmark(
            config: frame_benchmarking::BenchmarkConfig,
        ) -> Result<Vec<frame_benchmarking::BenchmarkBatch>, alloc::string::String> {
            crate::benchmarks::dispatch(config)
        }
    }

    #[cfg(feature = "try-runtime")]
    impl frame_try_runtime::TryRuntime<Block> for Runtime {
        fn on_runtime_upgrade(checks: frame_try_runtime::UpgradeCheckSelect) -> (Weight, Weight) {
            // try-runtime is an off-chain tool: a failed migration check must stop it loudly.
            #[allow(clippy::expect_used)]
            let weight = Executive::try_runtime_upgrade(checks).expect("runtime upgrade checks failed");
            (weight, super::configs::RuntimeBlockWeights::get().max_block)
        }

        fn execute_block(
            block: <Block as BlockT>::LazyBlock,
            state_root_check: bool,
            signature_check: bool,
            select: frame_try_runtime::TryStateSelect,
        ) -> Weight {
            #[allow(clippy::expect_used)]
            Executive::try_execute_block(block, state_root_check, signature_check, select)
                .expect("try_execute_block failed")
        }
    }

    impl sp_genesis_builder::GenesisBuilder<Block> for Runtime {
        fn build_state(config: Vec<u8>) -> sp_genesis_builder::Result {
            build_state::<RuntimeGenesisConfig>(config)
        }

        fn get_preset(id: &Option<sp_genesis_builder::PresetId>) -> Option<Vec<u8>> {
            get_preset::<RuntimeGenesisConfig>(id, crate::genesis_config_presets::get_preset)
        }

        fn preset_names() -> Vec<sp_genesis_builder::PresetId> {
            crate::genesis_config_presets::preset_names()
        }
    }
}
