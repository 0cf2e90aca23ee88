//! The runtime APIs both runtimes implement: what a node, polkadot.js, PAPI or subxt asks of
//! either chain. A runtime calls [`impl_openledger_runtime_apis!`] once, with the impls of
//! its own consensus (GRANDPA on the solo chain; collation and the unincluded segment on the
//! parachain), which all go into one `impl_runtime_apis!`.

/// Implements the shared runtime APIs and the `$extra` impls given (written as inside
/// `sp_api::impl_runtime_apis!`) for `crate::Runtime`.
macro_rules! impl_openledger_runtime_apis {
    ($($extra:tt)*) => {
        sp_api::impl_runtime_apis! {
            impl sp_api::Core<$crate::Block> for $crate::Runtime {
                fn version() -> sp_version::RuntimeVersion {
                    $crate::VERSION
                }

                fn execute_block(block: <$crate::Block as sp_runtime::traits::Block>::LazyBlock) {
                    $crate::Executive::execute_block(block);
                }

                fn initialize_block(header: &<$crate::Block as sp_runtime::traits::Block>::Header) -> sp_runtime::ExtrinsicInclusionMode {
                    $crate::Executive::initialize_block(header)
                }
            }

            impl sp_api::Metadata<$crate::Block> for $crate::Runtime {
                fn metadata() -> sp_core::OpaqueMetadata {
                    sp_core::OpaqueMetadata::new($crate::Runtime::metadata().into())
                }

                fn metadata_at_version(version: u32) -> Option<sp_core::OpaqueMetadata> {
                    $crate::Runtime::metadata_at_version(version)
                }

                fn metadata_versions() -> alloc::vec::Vec<u32> {
                    $crate::Runtime::metadata_versions()
                }
            }

            impl frame_support::view_functions::runtime_api::RuntimeViewFunction<$crate::Block> for $crate::Runtime {
                fn execute_view_function(
                    id: frame_support::view_functions::ViewFunctionId,
                    input: alloc::vec::Vec<u8>,
                ) -> Result<alloc::vec::Vec<u8>, frame_support::view_functions::ViewFunctionDispatchError> {
                    $crate::Runtime::execute_view_function(id, input)
                }
            }

            impl sp_block_builder::BlockBuilder<$crate::Block> for $crate::Runtime {
                fn apply_extrinsic(extrinsic: <$crate::Block as sp_runtime::traits::Block>::Extrinsic) -> sp_runtime::ApplyExtrinsicResult {
                    $crate::Executive::apply_extrinsic(extrinsic)
                }

                fn finalize_block() -> <$crate::Block as sp_runtime::traits::Block>::Header {
                    $crate::Executive::finalize_block()
                }

                fn inherent_extrinsics(data: sp_inherents::InherentData) -> alloc::vec::Vec<<$crate::Block as sp_runtime::traits::Block>::Extrinsic> {
                    use $crate::InherentDataExt as _;
                    data.create_extrinsics()
                }

                fn check_inherents(
                    block: <$crate::Block as sp_runtime::traits::Block>::LazyBlock,
                    data: sp_inherents::InherentData,
                ) -> sp_inherents::CheckInherentsResult {
                    use $crate::InherentDataExt as _;
                    data.check_extrinsics(&block)
                }
            }

            impl sp_transaction_pool::runtime_api::TaggedTransactionQueue<$crate::Block> for $crate::Runtime {
                fn validate_transaction(
                    source: sp_runtime::transaction_validity::TransactionSource,
                    tx: <$crate::Block as sp_runtime::traits::Block>::Extrinsic,
                    block_hash: <$crate::Block as sp_runtime::traits::Block>::Hash,
                ) -> sp_runtime::transaction_validity::TransactionValidity {
                    $crate::Executive::validate_transaction(source, tx, block_hash)
                }
            }

            impl sp_offchain::OffchainWorkerApi<$crate::Block> for $crate::Runtime {
                fn offchain_worker(header: &<$crate::Block as sp_runtime::traits::Block>::Header) {
                    $crate::Executive::offchain_worker(header)
                }
            }

            impl sp_consensus_aura::AuraApi<$crate::Block, sp_consensus_aura::sr25519::AuthorityId> for $crate::Runtime {
                fn slot_duration() -> sp_consensus_aura::SlotDuration {
                    sp_consensus_aura::SlotDuration::from_millis($crate::Aura::slot_duration())
                }

                fn authorities() -> alloc::vec::Vec<sp_consensus_aura::sr25519::AuthorityId> {
                    pallet_aura::Authorities::<$crate::Runtime>::get().into_inner()
                }
            }

            impl sp_session::SessionKeys<$crate::Block> for $crate::Runtime {
                fn generate_session_keys(
                    owner: alloc::vec::Vec<u8>,
                    seed: Option<alloc::vec::Vec<u8>>,
                ) -> sp_session::OpaqueGeneratedSessionKeys {
                    $crate::SessionKeys::generate(&owner, seed).into()
                }

                fn decode_session_keys(encoded: alloc::vec::Vec<u8>) -> Option<alloc::vec::Vec<(alloc::vec::Vec<u8>, sp_core::crypto::KeyTypeId)>> {
                    $crate::SessionKeys::decode_into_raw_public_keys(&encoded)
                }
            }

            impl pallet_compute_runtime_api::ComputeApi<$crate::Block, $crate::AccountId, pallet_compute::ProviderInfo<$crate::Runtime>>
                for $crate::Runtime
            {
                fn provider(who: $crate::AccountId) -> Option<pallet_compute::ProviderInfo<$crate::Runtime>> {
                    $crate::Compute::provider_info(&who)
                }

                fn providers_for_model(
                    model: openledger_primitives::market::BaseModelId,
                ) -> alloc::vec::Vec<$crate::AccountId> {
                    pallet_compute::ProvidersByModel::<$crate::Runtime>::get(model).into_inner()
                }
            }

            impl pallet_jobs_runtime_api::JobsApi<
                $crate::Block,
                $crate::AccountId,
                $crate::BlockNumber,
                pallet_jobs::JobStatus<$crate::Runtime>,
                pallet_jobs::Quote<$crate::Runtime>,
            > for $crate::Runtime {
                fn job_status(job: openledger_primitives::market::JobId) -> pallet_jobs::JobStatus<$crate::Runtime> {
                    $crate::Jobs::job_status(job)
                }

                fn jobs_of_provider(
                    provider: $crate::AccountId,
                    limit: u32,
                ) -> alloc::vec::Vec<openledger_primitives::market::JobId> {
                    $crate::Jobs::jobs_of_provider(&provider, limit)
                }

                fn jobs_due_at(
                    block: $crate::BlockNumber,
                    limit: u32,
                ) -> alloc::vec::Vec<openledger_primitives::market::JobId> {
                    $crate::Jobs::jobs_due_at(block, limit)
                }

                fn quote(
                    adapter: openledger_primitives::market::AdapterId,
                    max_output_tokens: u32,
                ) -> Option<pallet_jobs::Quote<$crate::Runtime>> {
                    $crate::Jobs::quote(adapter, max_output_tokens)
                }
            }

            impl pallet_attribution_runtime_api::AttributionApi<
                $crate::Block,
                $crate::AccountId,
                $crate::Balance,
                pallet_attribution::Adapter<$crate::Runtime>,
                pallet_attribution::Payee<$crate::AccountId>,
            > for $crate::Runtime {
                fn pending_rewards(
                    datanet: openledger_primitives::market::DataNetId,
                    who: $crate::AccountId,
                ) -> $crate::Balance {
                    $crate::Attribution::pending_rewards(datanet, who)
                }

                fn adapter(
                    adapter: openledger_primitives::market::AdapterId,
                ) -> Option<pallet_attribution::Adapter<$crate::Runtime>> {
                    $crate::Attribution::adapter_info(adapter)
                }

                fn quote_split(
                    adapter: openledger_primitives::market::AdapterId,
                    provider: $crate::AccountId,
                    charge: $crate::Balance,
                    context: alloc::vec::Vec<openledger_primitives::market::DataNetShare>,
                ) -> Option<alloc::vec::Vec<(pallet_attribution::Payee<$crate::AccountId>, $crate::Balance)>> {
                    $crate::Attribution::split_quote(adapter, provider, charge, context)
                }
            }

            impl pallet_channels_runtime_api::ChannelsApi<
                $crate::Block,
                pallet_channels::ChannelStatus<$crate::Runtime>,
            > for $crate::Runtime {
                fn channel(
                    channel: openledger_primitives::voucher::ChannelId,
                ) -> pallet_channels::ChannelStatus<$crate::Runtime> {
                    $crate::Channels::channel_status(channel)
                }
            }

            impl frame_system_rpc_runtime_api::AccountNonceApi<$crate::Block, $crate::AccountId, $crate::Nonce> for $crate::Runtime {
                fn account_nonce(account: $crate::AccountId) -> $crate::Nonce {
                    $crate::System::account_nonce(account)
                }
            }

            impl pallet_transaction_payment_rpc_runtime_api::TransactionPaymentApi<$crate::Block, $crate::Balance> for $crate::Runtime {
                fn query_info(
                    uxt: <$crate::Block as sp_runtime::traits::Block>::Extrinsic,
                    len: u32,
                ) -> pallet_transaction_payment_rpc_runtime_api::RuntimeDispatchInfo<$crate::Balance> {
                    $crate::TransactionPayment::query_info(uxt, len)
                }
                fn query_fee_details(
                    uxt: <$crate::Block as sp_runtime::traits::Block>::Extrinsic,
                    len: u32,
                ) -> pallet_transaction_payment::FeeDetails<$crate::Balance> {
                    $crate::TransactionPayment::query_fee_details(uxt, len)
                }
                fn query_weight_to_fee(weight: frame_support::weights::Weight) -> $crate::Balance {
                    $crate::TransactionPayment::weight_to_fee(weight)
                }
                fn query_length_to_fee(length: u32) -> $crate::Balance {
                    $crate::TransactionPayment::length_to_fee(length)
                }
            }

            impl pallet_transaction_payment_rpc_runtime_api::TransactionPaymentCallApi<$crate::Block, $crate::Balance, $crate::RuntimeCall>
                for $crate::Runtime
            {
                fn query_call_info(
                    call: $crate::RuntimeCall,
                    len: u32,
                ) -> pallet_transaction_payment::RuntimeDispatchInfo<$crate::Balance> {
                    $crate::TransactionPayment::query_call_info(call, len)
                }
                fn query_call_fee_details(
                    call: $crate::RuntimeCall,
                    len: u32,
                ) -> pallet_transaction_payment::FeeDetails<$crate::Balance> {
                    $crate::TransactionPayment::query_call_fee_details(call, len)
                }
                fn query_weight_to_fee(weight: frame_support::weights::Weight) -> $crate::Balance {
                    $crate::TransactionPayment::weight_to_fee(weight)
                }
                fn query_length_to_fee(length: u32) -> $crate::Balance {
                    $crate::TransactionPayment::length_to_fee(length)
                }
            }

            #[cfg(feature = "try-runtime")]
            impl frame_try_runtime::TryRuntime<$crate::Block> for $crate::Runtime {
                fn on_runtime_upgrade(checks: frame_try_runtime::UpgradeCheckSelect) -> (frame_support::weights::Weight, frame_support::weights::Weight) {
                    // try-runtime is an off-chain tool: a failed migration check must stop it loudly.
                    #[allow(clippy::expect_used)]
                    let weight = $crate::Executive::try_runtime_upgrade(checks).expect("runtime upgrade checks failed");
                    (weight, <$crate::configs::RuntimeBlockWeights as frame_support::traits::Get<_>>::get().max_block)
                }

                fn execute_block(
                    block: <$crate::Block as sp_runtime::traits::Block>::LazyBlock,
                    state_root_check: bool,
                    signature_check: bool,
                    select: frame_try_runtime::TryStateSelect,
                ) -> frame_support::weights::Weight {
                    #[allow(clippy::expect_used)]
                    $crate::Executive::try_execute_block(block, state_root_check, signature_check, select)
                        .expect("try_execute_block failed")
                }
            }

            impl sp_genesis_builder::GenesisBuilder<$crate::Block> for $crate::Runtime {
                fn build_state(config: alloc::vec::Vec<u8>) -> sp_genesis_builder::Result {
                    frame_support::genesis_builder_helper::build_state::<$crate::RuntimeGenesisConfig>(config)
                }

                fn get_preset(id: &Option<sp_genesis_builder::PresetId>) -> Option<alloc::vec::Vec<u8>> {
                    frame_support::genesis_builder_helper::get_preset::<$crate::RuntimeGenesisConfig>(id, $crate::genesis_config_presets::get_preset)
                }

                fn preset_names() -> alloc::vec::Vec<sp_genesis_builder::PresetId> {
                    $crate::genesis_config_presets::preset_names()
                }
            }

            $($extra)*
        }
    };
}
