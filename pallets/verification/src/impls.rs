//! Drawing audits, verdicts, contests, deadlines and slashing, and the storage invariants.
// The pallet's logic never panics: no unwrap, expect, indexing or unchecked arithmetic. (The
// crate as a whole cannot deny them: FRAME's macros expand to code that uses them.)
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::{pallet::*, Assignment, Audit, BalanceOf, Stage, Verdict, MAX_VERIFIERS};
use alloc::vec::Vec;
use codec::Encode;
use frame_support::{
    ensure,
    pallet_prelude::{BoundedVec, DispatchResult},
    traits::{Get, Randomness},
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::{AdapterCatalog, JobId, ProviderRegistry, SettledWork};
use sp_runtime::{
    traits::{CheckedDiv, Saturating, Zero},
    PerThing, Perbill,
};

/// Domain tags of the random draws, so that no two draws share a subject.
const DRAW_SAMPLE: &[u8] = b"openledger/verification/sample";
const DRAW_REPLACE: &[u8] = b"openledger/verification/replace";
const DRAW_CONTEST: &[u8] = b"openledger/verification/contest";

impl<T: Config> Pallet<T> {
    /// Two 32-bit words of the chain's randomness for `subject`.
    fn draw(tag: &[u8], job: JobId, round: u32) -> (u32, u32) {
        let (seed, _) = T::Randomness::random(&(tag, job, round).encode());
        let bytes = seed.as_ref();
        let word = |at: usize| {
            bytes
                .get(at..at.saturating_add(4))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes)
        };
        (word(0), word(4))
    }

    /// Providers that may verify `audit` now: registered with a bond for its base model and
    /// serving its adapter (so they hold the same weights), neither the provider itself nor
    /// one already assigned or dismissed.
    fn eligible_verifiers(audit: &Audit<T>) -> Vec<T::AccountId> {
        T::Providers::candidates(audit.base_model)
            .into_iter()
            .filter(|c| {
                *c != audit.provider
                    && !audit.verifiers.iter().any(|a| a.verifier == *c)
                    && !audit.dismissed.contains(c)
                    && T::Providers::serves(c, audit.adapter)
                    && !T::Providers::bond_of(c).is_zero()
            })
            .collect()
    }

    /// One of `eligible`, chosen by `word`.
    fn pick(eligible: &[T::AccountId], word: u32) -> Option<T::AccountId> {
        let len = u32::try_from(eligible.len()).ok().filter(|l| *l > 0)?;
        eligible.get(usize::try_from(word.checked_rem(len)?).ok()?).cloned()
    }

    /// Draw the jobs settled in the last block: each is audited with the sample share's
    /// probability. Returns how many were drawn.
    pub(crate) fn draw_offered() -> u32 {
        let offered = Offered::<T>::take();
        let share = SampleShare::<T>::get();
        let drawn = u32::try_from(offered.len()).unwrap_or(u32::MAX);
        for work in offered {
            let (sample, choice) = Self::draw(DRAW_SAMPLE, work.job, 0);
            let parts = sample.checked_rem(Perbill::ACCURACY).unwrap_or(0);
            if Perbill::from_parts(parts) >= share {
                continue;
            }
            Self::open_audit(work, choice);
        }
        drawn
    }

    /// Open an audit of `work` with a verifier chosen by `choice`, or say why not.
    fn open_audit(work: SettledWork<T::AccountId, BalanceOf<T>>, choice: u32) {
        let skipped = Event::<T>::AuditSkipped { job: work.job, provider: work.provider.clone() };
        let Some(terms) = T::Adapters::adapter(work.adapter) else {
            return Self::deposit_event(skipped);
        };
        if Audits::<T>::count() >= T::MaxOpenAudits::get() || Audits::<T>::contains_key(work.job) {
            return Self::deposit_event(skipped);
        }
        let now = frame_system::Pallet::<T>::block_number();
        let deadline = now.saturating_add(T::VerdictTimeout::get());
        let mut audit = Audit::<T> {
            provider: work.provider,
            payer: work.payer,
            adapter: work.adapter,
            base_model: terms.base_model,
            charged: work.charged,
            commitment_hash: work.commitment_hash,
            verifiers: BoundedVec::new(),
            dismissed: BoundedVec::new(),
            stage: Stage::Open,
            wake: deadline.saturating_add(1u32.into()),
        };
        let Some(verifier) = Self::pick(&Self::eligible_verifiers(&audit), choice) else {
            return Self::deposit_event(skipped);
        };
        let assignment = Assignment::<T> { verifier: verifier.clone(), deadline, verdict: None };
        if audit.verifiers.try_push(assignment).is_err() {
            return Self::deposit_event(skipped);
        }
        AuditsByVerifier::<T>::insert(&verifier, work.job, ());
        AuditsByProvider::<T>::insert(&audit.provider, work.job, ());
        AuditsByWake::<T>::insert(audit.wake, work.job, ());
        Self::deposit_event(Event::AuditOpened {
            job: work.job,
            provider: audit.provider.clone(),
            verifier,
            commitment_hash: audit.commitment_hash,
            deadline,
        });
        Audits::<T>::insert(work.job, audit);
    }

    /// Look at every audit due at `now`: a contest window that ended, or verdicts not given
    /// in time. Returns how many.
    pub(crate) fn wake_audits(now: BlockNumberFor<T>) -> u32 {
        let due: Vec<JobId> = AuditsByWake::<T>::drain_prefix(now).map(|(job, ())| job).collect();
        let woken = u32::try_from(due.len()).unwrap_or(u32::MAX);
        for job in due {
            if let Some(audit) = Audits::<T>::get(job) {
                Self::wake(job, audit, now);
            }
        }
        woken
    }

    fn wake(job: JobId, mut audit: Audit<T>, now: BlockNumberFor<T>) {
        match audit.stage {
            Stage::Accused { until } if until < now => {
                let finders = Self::verifiers_with(&audit, true);
                return Self::find_at_fault(job, audit, finders);
            },
            Stage::Accused { .. } => {},
            Stage::Open | Stage::Contested => {
                // Replace each verifier that let its deadline pass, after slashing it.
                let late: Vec<usize> = audit
                    .verifiers
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.verdict.is_none() && a.deadline < now)
                    .map(|(i, _)| i)
                    .collect();
                for (round, index) in late.into_iter().enumerate() {
                    let Some(late) = audit.verifiers.get(index).map(|a| a.verifier.clone()) else {
                        continue;
                    };
                    Self::slash_verifier(job, &late);
                    AuditsByVerifier::<T>::remove(&late, job);
                    let (_, choice) = Self::draw(
                        DRAW_REPLACE,
                        job,
                        u32::try_from(audit.dismissed.len().saturating_add(round)).unwrap_or(0),
                    );
                    let replacement = if audit.dismissed.try_push(late.clone()).is_ok() {
                        Self::pick(&Self::eligible_verifiers(&audit), choice)
                    } else {
                        None
                    };
                    let (Some(replacement), Some(slot)) =
                        (replacement, audit.verifiers.get_mut(index))
                    else {
                        return Self::abandon(job, audit);
                    };
                    let deadline = now.saturating_add(T::VerdictTimeout::get());
                    *slot = Assignment { verifier: replacement.clone(), deadline, verdict: None };
                    AuditsByVerifier::<T>::insert(&replacement, job, ());
                    Self::deposit_event(Event::VerifierReplaced {
                        job,
                        dismissed: late,
                        replacement,
                        deadline,
                    });
                }
            },
        }
        let wake = Self::next_wake(&audit, now);
        Self::reschedule(job, audit, wake);
    }

    /// The block after the earliest pending deadline (or the end of the contest window).
    fn next_wake(audit: &Audit<T>, now: BlockNumberFor<T>) -> BlockNumberFor<T> {
        let last = match audit.stage {
            Stage::Accused { until } => until,
            Stage::Open | Stage::Contested => audit
                .verifiers
                .iter()
                .filter(|a| a.verdict.is_none())
                .map(|a| a.deadline)
                .min()
                .unwrap_or(now),
        };
        last.max(now).saturating_add(1u32.into())
    }

    fn reschedule(job: JobId, mut audit: Audit<T>, wake: BlockNumberFor<T>) {
        AuditsByWake::<T>::remove(audit.wake, job);
        audit.wake = wake;
        AuditsByWake::<T>::insert(wake, job, ());
        Audits::<T>::insert(job, audit);
    }

    /// Delete `audit` and its index entries.
    fn close(job: JobId, audit: &Audit<T>) {
        Audits::<T>::remove(job);
        AuditsByProvider::<T>::remove(&audit.provider, job);
        AuditsByWake::<T>::remove(audit.wake, job);
        for a in audit.verifiers.iter().filter(|a| a.verdict.is_none()) {
            AuditsByVerifier::<T>::remove(&a.verifier, job);
        }
    }

    fn abandon(job: JobId, audit: Audit<T>) {
        Self::close(job, &audit);
        Self::deposit_event(Event::AuditAbandoned { job, provider: audit.provider });
    }

    /// The verifiers whose verdict found against the provider (`faulting`) or for it.
    fn verifiers_with(audit: &Audit<T>, faulting: bool) -> Vec<T::AccountId> {
        audit
            .verifiers
            .iter()
            .filter(|a| a.verdict.is_some_and(|(v, _)| v.faults() == faulting))
            .map(|a| a.verifier.clone())
            .collect()
    }

    /// Slash a verifier's bond by `VerifierSlash` to the treasury.
    fn slash_verifier(job: JobId, verifier: &T::AccountId) {
        let due = T::VerifierSlash::get().mul_floor(T::Providers::bond_of(verifier));
        let slashed =
            T::Providers::slash_bond(verifier, due, &T::Treasury::get()).unwrap_or_default();
        Self::deposit_event(Event::VerifierSlashed { job, verifier: verifier.clone(), slashed });
    }

    /// The work was found wrong: slash the provider's bond by `FaultSlash`, refund the payer
    /// its charge from it, reward `finders` from what is left and give the rest to the
    /// treasury; close the audit.
    fn find_at_fault(job: JobId, audit: Audit<T>, finders: Vec<T::AccountId>) {
        Self::close(job, &audit);
        let provider = &audit.provider;
        let due = T::FaultSlash::get().mul_floor(T::Providers::bond_of(provider));
        let refunded = T::Providers::slash_bond(provider, audit.charged.min(due), &audit.payer)
            .unwrap_or_default();
        let rest = due.saturating_sub(refunded);
        let reward = T::VerifierReward::get().mul_floor(rest);
        let each = u32::try_from(finders.len())
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| CheckedDiv::checked_div(&reward, &n.into()))
            .unwrap_or_default();
        let mut rewarded = BalanceOf::<T>::zero();
        for finder in &finders {
            let paid = T::Providers::slash_bond(provider, each, finder).unwrap_or_default();
            rewarded = rewarded.saturating_add(paid);
        }
        let left = due.saturating_sub(refunded).saturating_sub(rewarded);
        let to_treasury =
            T::Providers::slash_bond(provider, left, &T::Treasury::get()).unwrap_or_default();
        Self::deposit_event(Event::ProviderSlashed {
            job,
            provider: audit.provider.clone(),
            refunded,
            rewarded,
            to_treasury,
        });
    }

    pub(crate) fn do_submit_verdict(
        who: &T::AccountId,
        job: JobId,
        verdict: Verdict,
        evidence: sp_core::H256,
    ) -> DispatchResult {
        let mut audit = Audits::<T>::get(job).ok_or(Error::<T>::UnknownAudit)?;
        ensure!(
            matches!(audit.stage, Stage::Open | Stage::Contested),
            Error::<T>::NotAwaitingVerdicts
        );
        let now = frame_system::Pallet::<T>::block_number();
        let slot = audit
            .verifiers
            .iter_mut()
            .find(|a| {
                a.verdict.is_none()
                    && now <= a.deadline
                    && T::Providers::is_worker(&a.verifier, who)
            })
            .ok_or(Error::<T>::NotAssignedVerifier)?;
        slot.verdict = Some((verdict, evidence));
        let verifier = slot.verifier.clone();
        AuditsByVerifier::<T>::remove(&verifier, job);
        Self::deposit_event(Event::VerdictGiven { job, verifier, verdict, evidence });

        if audit.verifiers.iter().any(|a| a.verdict.is_none()) {
            Audits::<T>::insert(job, audit);
            return Ok(());
        }
        let faulting = Self::verifiers_with(&audit, true);
        let clearing = Self::verifiers_with(&audit, false);
        match audit.stage {
            Stage::Open if faulting.is_empty() => Self::confirm(job, audit),
            Stage::Open => {
                let until = now.saturating_add(T::ContestWindow::get());
                audit.stage = Stage::Accused { until };
                Self::deposit_event(Event::ProviderAccused {
                    job,
                    provider: audit.provider.clone(),
                    until,
                });
                let wake = Self::next_wake(&audit, now);
                Self::reschedule(job, audit, wake);
            },
            // Contested: the majority decides, a tie clears the provider; the verifiers it
            // overturned are slashed.
            _ if faulting.len() > clearing.len() => {
                for v in &clearing {
                    Self::slash_verifier(job, v);
                }
                Self::find_at_fault(job, audit, faulting);
            },
            _ => {
                for v in &faulting {
                    Self::slash_verifier(job, v);
                }
                Self::confirm(job, audit);
            },
        }
        Ok(())
    }

    fn confirm(job: JobId, audit: Audit<T>) {
        Self::close(job, &audit);
        Self::deposit_event(Event::WorkConfirmed { job, provider: audit.provider });
    }

    pub(crate) fn do_contest(who: &T::AccountId, job: JobId) -> DispatchResult {
        let mut audit = Audits::<T>::get(job).ok_or(Error::<T>::UnknownAudit)?;
        ensure!(T::Providers::is_worker(&audit.provider, who), Error::<T>::NotTheProvider);
        ensure!(matches!(audit.stage, Stage::Accused { .. }), Error::<T>::NotContestable);
        let now = frame_system::Pallet::<T>::block_number();
        let deadline = now.saturating_add(T::VerdictTimeout::get());
        let mut added = BoundedVec::new();
        let (first, second) = Self::draw(DRAW_CONTEST, job, 0);
        for choice in [first, second] {
            let Some(verifier) = Self::pick(&Self::eligible_verifiers(&audit), choice) else {
                break;
            };
            let assignment =
                Assignment::<T> { verifier: verifier.clone(), deadline, verdict: None };
            if audit.verifiers.try_push(assignment).is_err() || added.try_push(verifier).is_err() {
                break;
            }
        }
        ensure!(!added.is_empty(), Error::<T>::NoVerifierAvailable);
        for v in added.iter() {
            AuditsByVerifier::<T>::insert(v, job, ());
        }
        audit.stage = Stage::Contested;
        Self::deposit_event(Event::Contested { job, verifiers: added, deadline });
        let wake = Self::next_wake(&audit, now);
        Self::reschedule(job, audit, wake);
        Ok(())
    }

    /// Open audits of `provider`'s work, at most `limit`.
    pub fn audits_of_provider(provider: &T::AccountId, limit: u32) -> Vec<JobId> {
        AuditsByProvider::<T>::iter_key_prefix(provider)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    }

    /// Audits `verifier` must answer now, at most `limit` (for its worker and the runtime API).
    pub fn audits_of_verifier(verifier: &T::AccountId, limit: u32) -> Vec<JobId> {
        AuditsByVerifier::<T>::iter_key_prefix(verifier)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    }

    /// The pallet's invariants:
    /// - every audit has between one and [`MAX_VERIFIERS`] verifiers, is indexed under its
    ///   `wake` and nowhere else, and its `wake` is after the current block;
    /// - an accused audit has every verdict; an open one has one verifier;
    /// - `AuditsByVerifier` holds exactly the verifiers still owing a verdict, and
    ///   `AuditsByProvider` each open audit under its provider;
    /// - at most `MaxOpenAudits` audits are open.
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        let now = frame_system::Pallet::<T>::block_number();
        let mut owing = 0usize;
        for (job, audit) in Audits::<T>::iter() {
            let n = audit.verifiers.len();
            ensure!(n >= 1 && n <= MAX_VERIFIERS as usize, "audit without verifiers");
            ensure!(AuditsByWake::<T>::contains_key(audit.wake, job), "audit not indexed");
            ensure!(
                AuditsByProvider::<T>::contains_key(&audit.provider, job),
                "audit not indexed under its provider"
            );
            ensure!(audit.wake > now, "audit wakes in the past");
            match audit.stage {
                Stage::Open => ensure!(n == 1, "open audit with several verifiers"),
                Stage::Accused { .. } => ensure!(
                    audit.verifiers.iter().all(|a| a.verdict.is_some()),
                    "accused before every verdict"
                ),
                Stage::Contested => {},
            }
            for a in audit.verifiers.iter().filter(|a| a.verdict.is_none()) {
                ensure!(
                    AuditsByVerifier::<T>::contains_key(&a.verifier, job),
                    "pending verifier not indexed"
                );
                owing = owing.saturating_add(1);
            }
        }
        for (wake, job, ()) in AuditsByWake::<T>::iter() {
            let audit = Audits::<T>::get(job).ok_or("wake entry of no audit")?;
            ensure!(audit.wake == wake, "audit indexed under another block");
        }
        ensure!(
            AuditsByVerifier::<T>::iter().count() == owing,
            "verifier index names a verdict not owed"
        );
        ensure!(
            AuditsByProvider::<T>::iter().count() == Audits::<T>::count() as usize,
            "provider index names a closed audit"
        );
        ensure!(Audits::<T>::count() <= T::MaxOpenAudits::get(), "too many audits");
        ensure!(
            Audits::<T>::count() as usize == Audits::<T>::iter().count(),
            "audit counter is off"
        );
        Ok(())
    }
}
