//! Matching, settlement and expiry, the default settlement and randomness, queries for the
//! runtime API, and the storage invariants.

use crate::{pallet::*, BalanceOf, Job, JobPhase, JobStatus, Quote, RefusalReason};
use codec::Encode;
use core::marker::PhantomData;
use frame_support::{
    pallet_prelude::*,
    storage::with_storage_layer,
    traits::{
        fungible::{Mutate, MutateHold},
        tokens::{Precision, Preservation},
        Randomness,
    },
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::{
    market::{
        AdapterCatalog, AdapterId, AdapterTerms, BaseModelId, JobId, ProviderRegistry, SettledWork,
        Settlement, WorkAudit,
    },
    receipt::{Receipt, ReceiptFields, ReceiptPayload},
};
use sp_runtime::{
    traits::{Bounded, Hash, Saturating, UniqueSaturatedInto, Zero},
    DispatchError, DispatchErrorWithPostInfo,
};

use crate::weights::WeightInfo;

pub(crate) use openledger_primitives::receipt::is_canonical_signature;
#[cfg(test)]
pub(crate) use openledger_primitives::receipt::GROUP_ORDER;

/// `ceil(tokens * price_per_1k / 1000)`, saturating.
pub fn fee_for<Balance: sp_runtime::traits::AtLeast32BitUnsigned + Copy>(
    tokens: u64,
    price_per_1k: Balance,
) -> Balance {
    let tokens: Balance = tokens.unique_saturated_into();
    let thousand: Balance = 1000u32.into();
    let gross = tokens.saturating_mul(price_per_1k);
    let fee = gross / thousand;
    if (gross % thousand).is_zero() {
        fee
    } else {
        fee.saturating_add(1u32.into())
    }
}

impl<T: Config> Pallet<T> {
    /// The provider a job with these terms would be assigned to now, with its price per 1,000
    /// tokens (provider plus adapter).
    pub(crate) fn select_provider(
        job: JobId,
        terms: &AdapterTerms<BalanceOf<T>>,
        adapter: AdapterId,
        max_output_tokens: u32,
        max_fee: BalanceOf<T>,
    ) -> Option<(T::AccountId, BalanceOf<T>)> {
        let (seed, _) = T::Randomness::random(&(b"openledger/match", job).encode());
        let mut best: Option<((bool, u128, [u8; 32]), T::AccountId, BalanceOf<T>)> = None;
        for candidate in T::Providers::candidates(terms.base_model) {
            let Some(offer) = T::Providers::offer(&candidate, terms.base_model, adapter) else {
                continue;
            };
            let price = offer.price_per_1k.saturating_add(terms.price_per_1k);
            if fee_for(max_output_tokens.into(), price) > max_fee {
                continue;
            }
            let bond: u128 = offer.bond.unique_saturated_into();
            let key = (
                offer.adapter_hot,
                bond.saturating_mul(offer.reputation.into()),
                sp_io::hashing::blake2_256(&(seed, &candidate).encode()),
            );
            if best.as_ref().is_none_or(|(best_key, _, _)| key > *best_key) {
                best = Some((key, candidate, price));
            }
        }
        best.map(|(_, provider, price)| (provider, price))
    }

    /// The open job `job`, or the error saying why there is none.
    pub(crate) fn open_job(job: JobId) -> Result<Job<T>, DispatchError> {
        Jobs::<T>::get(job).ok_or_else(|| {
            if job < NextJobId::<T>::get() {
                Error::<T>::JobClosed.into()
            } else {
                Error::<T>::UnknownJob.into()
            }
        })
    }

    /// Release all of `record`'s escrow to its submitter's free balance; returns the amount.
    fn release_escrow(record: &Job<T>) -> Result<BalanceOf<T>, DispatchError> {
        T::Currency::release(
            &HoldReason::JobEscrow.into(),
            &record.submitter,
            record.escrow,
            Precision::Exact,
        )
    }

    /// Delete `job`'s record and index entries.
    fn close(job: JobId, record: &Job<T>) {
        Jobs::<T>::remove(job);
        JobsByDeadline::<T>::remove(record.deadline, job);
        JobsByProvider::<T>::remove(&record.provider, job);
        TotalEscrow::<T>::mutate(|total| *total = total.saturating_sub(record.escrow));
    }

    /// The exact bytes the worker of open job `fields.job` signs for a receipt with `fields`
    /// (the `receipt_signing_payload` view function), or `None` when the job is not open.
    pub(crate) fn receipt_payload_of(fields: &ReceiptFields) -> Option<alloc::vec::Vec<u8>> {
        let record = Jobs::<T>::get(fields.job)?;
        let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        Some(
            ReceiptPayload::for_fields(genesis_hash, record.provider, record.adapter, fields)
                .signing_bytes(),
        )
    }

    /// Settle each receipt in its own storage layer, so a rejected one leaves no trace.
    ///
    /// The call's actual weight is its own measured cost for `n` receipts plus what each
    /// settlement reported using; a rejected receipt is charged the settlement's worst case
    /// (it may have failed anywhere inside it).
    pub(crate) fn settle_batch(
        receipts: BoundedVec<Receipt, T::MaxReceiptsPerBatch>,
    ) -> DispatchResultWithPostInfo {
        let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        let mut settled = 0u32;
        let mut first_error = None;
        let mut used = T::WeightInfo::submit_receipts(receipts.len() as u32);
        for receipt in receipts {
            match with_storage_layer(|| Self::settle(&genesis_hash, &receipt)) {
                Ok(weight) => {
                    settled = settled.saturating_add(1);
                    used = used.saturating_add(weight);
                },
                Err(error) => {
                    used = used
                        .saturating_add(T::Settlement::settle_weight())
                        .saturating_add(T::Audit::offer_weight());
                    first_error.get_or_insert(error);
                    Self::deposit_event(Event::ReceiptRejected { job: receipt.job, error });
                },
            }
        }
        match first_error {
            Some(error) if settled == 0 => {
                Err(DispatchErrorWithPostInfo { post_info: Some(used).into(), error })
            },
            _ => Ok(Some(used).into()),
        }
    }

    /// Check `receipt` and settle its job; returns the weight the settlement reported.
    fn settle(genesis_hash: &T::Hash, receipt: &Receipt) -> Result<Weight, DispatchError> {
        let record = Self::open_job(receipt.job)?;
        let now = frame_system::Pallet::<T>::block_number();
        ensure!(now <= record.deadline, Error::<T>::DeadlinePassed);
        ensure!(receipt.output_tokens <= record.max_output_tokens, Error::<T>::OutputTooLong);
        ensure!(is_canonical_signature(&receipt.signature), Error::<T>::MalformedSignature);
        let key = T::Providers::worker_key(&record.provider).ok_or(Error::<T>::UnknownProvider)?;
        let payload =
            ReceiptPayload::new(*genesis_hash, record.provider.clone(), record.adapter, receipt);
        ensure!(
            sp_io::crypto::ed25519_verify(&receipt.signature, &payload.signing_bytes(), &key),
            Error::<T>::BadSignature
        );

        let tokens = u64::from(receipt.input_tokens).saturating_add(receipt.output_tokens.into());
        let charged = fee_for(tokens, record.price_per_1k).min(record.escrow);
        let refunded = record.escrow.saturating_sub(charged);
        // Release the whole escrow: the refund stays with the user, the charge is paid on.
        Self::release_escrow(&record)?;
        let weight = if charged.is_zero() {
            Weight::zero()
        } else {
            T::Settlement::settle(
                receipt.job,
                &record.submitter,
                &record.provider,
                record.adapter,
                charged,
                &receipt.context,
            )?
        };
        T::Providers::job_settled(&record.provider);
        let offered = T::Audit::offer(SettledWork {
            job: receipt.job,
            payer: record.submitter.clone(),
            provider: record.provider.clone(),
            adapter: record.adapter,
            charged,
            commitment_hash: receipt.commitment_hash,
        });
        Self::close(receipt.job, &record);
        Self::deposit_event(Event::JobSettled {
            job: receipt.job,
            provider: record.provider,
            output_hash: receipt.output_hash,
            input_tokens: receipt.input_tokens,
            output_tokens: receipt.output_tokens,
            charged,
            refunded,
            commitment_hash: receipt.commitment_hash,
        });
        Ok(weight.saturating_add(offered))
    }

    /// Expire `job` if its deadline has passed.
    pub(crate) fn do_expire(job: JobId) -> DispatchResult {
        let record = Self::open_job(job)?;
        ensure!(
            frame_system::Pallet::<T>::block_number() > record.deadline,
            Error::<T>::NotExpired
        );
        let refunded = Self::release_escrow(&record)?;
        let slashed = match record.phase {
            JobPhase::Acknowledged => {
                T::Providers::job_expired(&record.provider, &record.submitter)?
            },
            JobPhase::Assigned => {
                T::Providers::job_abandoned(&record.provider);
                Zero::zero()
            },
        };
        Self::close(job, &record);
        Self::deposit_event(Event::JobExpired {
            job,
            provider: record.provider,
            refunded,
            slashed,
        });
        Ok(())
    }

    /// Refuse `job` for `reason` on behalf of its provider's worker `who`.
    pub(crate) fn do_refuse(
        who: &T::AccountId,
        job: JobId,
        reason: RefusalReason,
    ) -> DispatchResult {
        let record = Self::open_job(job)?;
        ensure!(T::Providers::is_worker(&record.provider, who), Error::<T>::NotAssignedWorker);
        ensure!(
            frame_system::Pallet::<T>::block_number() <= record.deadline,
            Error::<T>::DeadlinePassed
        );
        let refunded = Self::release_escrow(&record)?;
        T::Providers::job_refused(&record.provider);
        Self::close(job, &record);
        Self::deposit_event(Event::JobRefused { job, provider: record.provider, reason, refunded });
        Ok(())
    }

    /// What is known about job id `job` (the `job_status` view function and runtime API).
    pub(crate) fn status_of(job: JobId) -> JobStatus<T> {
        match Jobs::<T>::get(job) {
            Some(record) => JobStatus::Open(record),
            None if job < NextJobId::<T>::get() => JobStatus::Closed,
            None => JobStatus::Unknown,
        }
    }

    /// Open jobs assigned to `provider`, at most `limit`, for the runtime API.
    pub fn jobs_of_provider(provider: &T::AccountId, limit: u32) -> alloc::vec::Vec<JobId> {
        JobsByProvider::<T>::iter_key_prefix(provider).take(limit as usize).collect()
    }

    /// Open jobs whose deadline is block `at`, at most `limit`: expirable from the next block.
    pub fn jobs_due_at(at: BlockNumberFor<T>, limit: u32) -> alloc::vec::Vec<JobId> {
        JobsByDeadline::<T>::iter_key_prefix(at).take(limit as usize).collect()
    }

    /// The provider `submit_job` would pick now for `adapter` and `max_output_tokens` with an
    /// unlimited budget, and the smallest `max_fee` it would accept (the `quote` view function
    /// and runtime API).
    pub(crate) fn quote_for(adapter: AdapterId, max_output_tokens: u32) -> Option<Quote<T>> {
        let terms = T::Adapters::adapter(adapter)?;
        let job = NextJobId::<T>::get();
        let unlimited = BalanceOf::<T>::max_value();
        let (provider, price_per_1k) =
            Self::select_provider(job, &terms, adapter, max_output_tokens, unlimited)?;
        Some(Quote {
            provider,
            price_per_1k,
            min_max_fee: fee_for(max_output_tokens.into(), price_per_1k),
        })
    }

    /// Check the pallet's invariants:
    /// - `TotalEscrow` is the sum of open jobs' escrow;
    /// - every submitter has exactly the escrow of its open jobs on hold;
    /// - every open job is in both indexes, and the indexes hold nothing else.
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::traits::fungible::InspectHold;
        let mut total = BalanceOf::<T>::zero();
        let mut per_submitter = alloc::collections::btree_map::BTreeMap::new();
        for (job, record) in Jobs::<T>::iter() {
            ensure!(job < NextJobId::<T>::get(), "open job with an unassigned id");
            total = total.saturating_add(record.escrow);
            let held = per_submitter.entry(record.submitter.clone()).or_insert_with(Zero::zero);
            *held = record.escrow.saturating_add(*held);
            ensure!(
                JobsByDeadline::<T>::contains_key(record.deadline, job),
                "open job missing from the deadline index"
            );
            ensure!(
                JobsByProvider::<T>::contains_key(&record.provider, job),
                "open job missing from the provider index"
            );
        }
        ensure!(total == TotalEscrow::<T>::get(), "TotalEscrow is not the sum of open escrow");
        for (who, escrow) in per_submitter {
            let held = T::Currency::balance_on_hold(&HoldReason::JobEscrow.into(), &who);
            ensure!(held == escrow, "held escrow differs from the submitter's open jobs");
        }
        ensure!(
            JobsByDeadline::<T>::iter().all(|(deadline, job, ())| {
                Jobs::<T>::get(job).is_some_and(|record| record.deadline == deadline)
            }),
            "deadline index lists a closed job or a stale deadline"
        );
        ensure!(
            JobsByProvider::<T>::iter().all(|(provider, job, ())| {
                Jobs::<T>::get(job).is_some_and(|record| record.provider == provider)
            }),
            "provider index lists a closed job or the wrong provider"
        );
        Ok(())
    }
}

/// [`Settlement`] that pays the provider the whole charge: the runtime's choice until
/// `pallet-attribution` splits fees.
pub struct PayProvider<Currency>(PhantomData<Currency>);

impl<AccountId: Eq, Currency: Mutate<AccountId>> Settlement<AccountId, Currency::Balance>
    for PayProvider<Currency>
{
    fn settle(
        _job: JobId,
        payer: &AccountId,
        provider: &AccountId,
        _adapter: AdapterId,
        charge: Currency::Balance,
        _context: &[openledger_primitives::market::DataNetShare],
    ) -> Result<sp_runtime::Weight, DispatchError> {
        Currency::transfer(payer, provider, charge, Preservation::Expendable)?;
        Ok(sp_runtime::Weight::zero())
    }

    fn settle_voucher(
        _channel: openledger_primitives::voucher::ChannelId,
        _sequence: u64,
        payer: &AccountId,
        provider: &AccountId,
        _adapter: AdapterId,
        charge: Currency::Balance,
        _context: &[openledger_primitives::market::DataNetShare],
    ) -> Result<sp_runtime::Weight, DispatchError> {
        Currency::transfer(payer, provider, charge, Preservation::Expendable)?;
        Ok(sp_runtime::Weight::zero())
    }

    /// One transfer, already part of `submit_receipts`' own benchmark.
    fn settle_weight() -> sp_runtime::Weight {
        sp_runtime::Weight::zero()
    }
}

/// [`AdapterCatalog`] for a chain without an adapter registry yet: every adapter id exists,
/// runs on base model `Model` and costs nothing on top of the provider's price. Replace it with
/// `pallet-attribution` once that exists.
pub struct AnyAdapterOn<Model>(PhantomData<Model>);

impl<Balance: Zero, Model: Get<BaseModelId>> AdapterCatalog<Balance> for AnyAdapterOn<Model> {
    fn adapter(_adapter: AdapterId) -> Option<AdapterTerms<Balance>> {
        Some(AdapterTerms { base_model: Model::get(), price_per_1k: Zero::zero() })
    }
}

/// [`Randomness`] from the parent block hash mixed with the subject: known to the block author
/// one block ahead, so only good for tie-breaking among otherwise equal providers, which is all
/// matching uses it for.
pub struct ParentHashRandomness<T>(PhantomData<T>);

impl<T: frame_system::Config> Randomness<T::Hash, BlockNumberFor<T>> for ParentHashRandomness<T> {
    fn random(subject: &[u8]) -> (T::Hash, BlockNumberFor<T>) {
        let parent = frame_system::Pallet::<T>::parent_hash();
        let block = frame_system::Pallet::<T>::block_number();
        (T::Hashing::hash_of(&(parent, subject)), block.saturating_sub(1u32.into()))
    }
}
