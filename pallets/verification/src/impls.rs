//! Drawing audits, verdicts, contests, deadlines and slashing, and the storage invariants.
// The pallet's logic never panics: no unwrap, expect, indexing or unchecked arithmetic. (The
// crate as a whole cannot deny them: FRAME's macros expand to code that uses them.)
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::{
    pallet::*, Assignment, Audit, BalanceOf, Leaf, Offer, PendingReveal, Score, Stage, Subject,
    Verdict, Work, MAX_DRIFT_WINDOW, MAX_VERIFIERS,
};
use alloc::vec::Vec;
use codec::Encode;
use frame_support::{
    ensure,
    pallet_prelude::{BoundedVec, ConstU32, DispatchResult},
    traits::{Get, Randomness},
};
use frame_system::pallet_prelude::BlockNumberFor;
use openledger_primitives::market::{AdapterCatalog, ProviderRegistry, RedeemedWork, SettledWork};
use openledger_primitives::service_receipt::{self, ServiceReceiptMessage};
use sp_core::H256;
use sp_runtime::{
    traits::{CheckedDiv, SaturatedConversion, Saturating, Zero},
    DispatchError, PerThing, Perbill,
};

/// Domain tags of the random draws, so that no two draws share a subject.
const DRAW_SAMPLE: &[u8] = b"openledger/verification/sample";
const DRAW_REPLACE: &[u8] = b"openledger/verification/replace";
const DRAW_CONTEST: &[u8] = b"openledger/verification/contest";
const DRAW_LEAF: &[u8] = b"openledger/verification/leaf";

impl<AccountId, Balance> From<SettledWork<AccountId, Balance>> for Work<AccountId, Balance> {
    fn from(w: SettledWork<AccountId, Balance>) -> Self {
        Self {
            subject: Subject::Job(w.job),
            payer: w.payer,
            provider: w.provider,
            adapter: w.adapter,
            charged: w.charged,
            commitment_hash: w.commitment_hash,
        }
    }
}

impl<T: Config> Pallet<T> {
    /// Two 32-bit words of the chain's randomness for `subject`.
    fn draw(tag: &[u8], subject: &impl Encode, round: u32) -> (u32, u32) {
        let (seed, _) = T::Randomness::random(&(tag, subject, round).encode());
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

    /// Draw the work offered in the last block: each settled job is audited with the sample
    /// share's probability, and each request a redeemed voucher paid for too (as many leaves
    /// drawn as the share of its requests, the fraction drawn by chance, at most
    /// `MaxSamplesPerRedemption`). Returns how many jobs and redemptions were drawn.
    /// Queues `offer` for the next block's draw, unless the block's bound is reached.
    pub(crate) fn push_offer(offer: Offer<T::AccountId, BalanceOf<T>>) {
        let count = OfferCount::<T>::get();
        if count < T::MaxOffersPerBlock::get() {
            Offered::<T>::insert(count, offer);
            OfferCount::<T>::put(count.saturating_add(1));
        }
    }

    pub(crate) fn draw_offered() -> (u32, u32) {
        let count = OfferCount::<T>::take();
        let share = SampleShare::<T>::get();
        let (mut jobs, mut redemptions) = (0u32, 0u32);
        for offer in (0..count).filter_map(Offered::<T>::take) {
            match offer {
                Offer::Job(work) => {
                    jobs = jobs.saturating_add(1);
                    let subject = Subject::Job(work.job);
                    let (sample, choice) = Self::draw(DRAW_SAMPLE, &subject, 0);
                    let parts = sample.checked_rem(Perbill::ACCURACY).unwrap_or(0);
                    if Perbill::from_parts(parts) < share {
                        Self::open_audit(work.into(), choice);
                    }
                },
                Offer::Redemption(work) => {
                    redemptions = redemptions.saturating_add(1);
                    Self::draw_leaves(work, share);
                },
            }
        }
        (jobs, redemptions)
    }

    /// How many of `inferences` requests `share` draws: the whole part of `share x
    /// inferences`, one more with the probability of its fraction (`sample` decides), at most
    /// `MaxSamplesPerRedemption` and `inferences`.
    pub(crate) fn leaves_to_draw(inferences: u64, share: Perbill, sample: u32) -> u64 {
        let scaled = u128::from(share.deconstruct()).saturating_mul(u128::from(inferences));
        let accuracy = u128::from(Perbill::ACCURACY);
        let whole = scaled.checked_div(accuracy).unwrap_or(0);
        let fraction = scaled.checked_rem(accuracy).unwrap_or(0);
        let chance = u128::from(sample.checked_rem(Perbill::ACCURACY).unwrap_or(0));
        let drawn = whole.saturating_add(u128::from(chance < fraction));
        let cap = u128::from(T::MaxSamplesPerRedemption::get()).min(u128::from(inferences));
        u64::try_from(drawn.min(cap)).unwrap_or(0)
    }

    /// Draw the leaves of a redeemed voucher whose receipts the provider must reveal.
    fn draw_leaves(work: RedeemedWork<T::AccountId, BalanceOf<T>>, share: Perbill) {
        let voucher = (work.channel, work.sequence);
        let (sample, _) = Self::draw(DRAW_SAMPLE, &voucher, 0);
        let count = Self::leaves_to_draw(work.inferences, share, sample);
        let now = frame_system::Pallet::<T>::block_number();
        let until = now.saturating_add(T::VerdictTimeout::get());
        let mut drawn: Vec<u64> = Vec::new();
        for round in 0..count {
            let (low, high) = Self::draw(DRAW_LEAF, &voucher, u32::try_from(round).unwrap_or(0));
            let word = u64::from(low) | u64::from(high).checked_shl(32).unwrap_or(0);
            let Some(mut index) = word.checked_rem(work.inferences) else { return };
            // Distinct leaves: a leaf drawn already moves on to the next free one (there is
            // one: at most `inferences` are drawn).
            while drawn.contains(&index) {
                index = index.saturating_add(1).checked_rem(work.inferences).unwrap_or(0);
            }
            drawn.push(index);
            let leaf = Leaf { channel: work.channel, sequence: work.sequence, index };
            if Reveals::<T>::contains_key(leaf) || Reveals::<T>::count() >= T::MaxOpenAudits::get()
            {
                continue;
            }
            let reveal = PendingReveal::<T> {
                provider: work.provider.clone(),
                payer: work.payer.clone(),
                receipts_root: work.receipts_root,
                inferences: work.inferences,
                amount: work.amount,
                until,
            };
            RevealsByWake::<T>::insert(until.saturating_add(1u32.into()), leaf, ());
            RevealsByProvider::<T>::insert(&work.provider, leaf, ());
            Reveals::<T>::insert(leaf, reveal);
            Self::deposit_event(Event::RevealRequested {
                leaf,
                provider: work.provider.clone(),
                until,
            });
        }
    }

    /// Check a revealed receipt against its drawn leaf and open the audit of its request.
    pub(crate) fn do_reveal(
        leaf: Leaf,
        receipt: &[u8],
        proof: &[Option<H256>],
    ) -> Result<(), DispatchError> {
        let pending = Reveals::<T>::get(leaf).ok_or(Error::<T>::NoRevealPending)?;
        let path: Vec<Option<[u8; 32]>> = proof.iter().map(|s| s.map(|h| h.0)).collect();
        ensure!(
            service_receipt::verify(
                &pending.receipts_root.0,
                service_receipt::leaf(receipt),
                leaf.index,
                pending.inferences,
                &path,
            ),
            Error::<T>::BadProof
        );
        let message = ServiceReceiptMessage::decode_v2(receipt).ok_or(Error::<T>::BadReceipt)?;
        let genesis = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
        ensure!(
            message.genesis_hash.as_ref() == genesis.as_ref() && message.channel == leaf.channel,
            Error::<T>::BadReceipt
        );
        Self::forget_reveal(leaf, &pending);
        Self::deposit_event(Event::ReceiptRevealed { leaf, request: message.request });
        let subject = Subject::Request { channel: leaf.channel, request: message.request };
        let (_, choice) = Self::draw(DRAW_SAMPLE, &subject, 1);
        let charged = message.charge.saturated_into::<BalanceOf<T>>().min(pending.amount);
        Self::open_audit(
            Work {
                subject,
                payer: pending.payer,
                provider: pending.provider,
                adapter: message.adapter,
                charged,
                commitment_hash: message.commitment_hash,
            },
            choice,
        );
        Ok(())
    }

    fn forget_reveal(leaf: Leaf, pending: &PendingReveal<T>) {
        Reveals::<T>::remove(leaf);
        RevealsByProvider::<T>::remove(&pending.provider, leaf);
        RevealsByWake::<T>::remove(pending.until.saturating_add(1u32.into()), leaf);
    }

    /// Slash every provider that let a reveal due before `now` pass, as for work found wrong
    /// (the payer refunded the redemption's mean charge per request). Returns how many.
    pub(crate) fn wake_reveals(now: BlockNumberFor<T>) -> u32 {
        let due: Vec<Leaf> = RevealsByWake::<T>::drain_prefix(now).map(|(leaf, ())| leaf).collect();
        let missed = u32::try_from(due.len()).unwrap_or(u32::MAX);
        for leaf in due {
            let Some(pending) = Reveals::<T>::take(leaf) else { continue };
            RevealsByProvider::<T>::remove(&pending.provider, leaf);
            let leaves: BalanceOf<T> = pending.inferences.saturated_into();
            let mean = CheckedDiv::checked_div(&pending.amount, &leaves).unwrap_or(pending.amount);
            let (refunded, _, to_treasury) =
                Self::slash_for_fault(&pending.provider, &pending.payer, mean, &[]);
            Self::deposit_event(Event::RevealMissed {
                leaf,
                provider: pending.provider,
                refunded,
                to_treasury,
            });
        }
        missed
    }

    /// Open an audit of `work` with a verifier chosen by `choice`, or say why not.
    fn open_audit(work: Work<T::AccountId, BalanceOf<T>>, choice: u32) {
        let subject = work.subject;
        let skipped = Event::<T>::AuditSkipped { subject, provider: work.provider.clone() };
        let Some(terms) = T::Adapters::adapter(work.adapter) else {
            return Self::deposit_event(skipped);
        };
        if Audits::<T>::count() >= T::MaxOpenAudits::get() || Audits::<T>::contains_key(subject) {
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
        let assignment =
            Assignment::<T> { verifier: verifier.clone(), deadline, verdict: None, score: 0 };
        if audit.verifiers.try_push(assignment).is_err() {
            return Self::deposit_event(skipped);
        }
        AuditsByVerifier::<T>::insert(&verifier, subject, ());
        AuditsByProvider::<T>::insert(&audit.provider, subject, ());
        AuditsByWake::<T>::insert(audit.wake, subject, ());
        Self::deposit_event(Event::AuditOpened {
            subject,
            provider: audit.provider.clone(),
            verifier,
            commitment_hash: audit.commitment_hash,
            deadline,
        });
        Audits::<T>::insert(subject, audit);
    }

    /// Look at every audit due at `now`: a contest window that ended, or verdicts not given
    /// in time. Returns how many.
    pub(crate) fn wake_audits(now: BlockNumberFor<T>) -> u32 {
        let due: Vec<Subject> = AuditsByWake::<T>::drain_prefix(now).map(|(s, ())| s).collect();
        let woken = u32::try_from(due.len()).unwrap_or(u32::MAX);
        for subject in due {
            if let Some(audit) = Audits::<T>::get(subject) {
                Self::wake(subject, audit, now);
            }
        }
        woken
    }

    fn wake(subject: Subject, mut audit: Audit<T>, now: BlockNumberFor<T>) {
        match audit.stage {
            Stage::Accused { until } if until < now => {
                let finders = Self::verifiers_with(&audit, true);
                return Self::find_at_fault(subject, audit, finders);
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
                    Self::slash_verifier(subject, &late);
                    AuditsByVerifier::<T>::remove(&late, subject);
                    let (_, choice) = Self::draw(
                        DRAW_REPLACE,
                        &subject,
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
                        return Self::abandon(subject, audit);
                    };
                    let deadline = now.saturating_add(T::VerdictTimeout::get());
                    *slot = Assignment {
                        verifier: replacement.clone(),
                        deadline,
                        verdict: None,
                        score: 0,
                    };
                    AuditsByVerifier::<T>::insert(&replacement, subject, ());
                    Self::deposit_event(Event::VerifierReplaced {
                        subject,
                        dismissed: late,
                        replacement,
                        deadline,
                    });
                }
            },
        }
        let wake = Self::next_wake(&audit, now);
        Self::reschedule(subject, audit, wake);
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

    fn reschedule(subject: Subject, mut audit: Audit<T>, wake: BlockNumberFor<T>) {
        AuditsByWake::<T>::remove(audit.wake, subject);
        audit.wake = wake;
        AuditsByWake::<T>::insert(wake, subject, ());
        Audits::<T>::insert(subject, audit);
    }

    /// Delete `audit` and its index entries.
    fn close(subject: Subject, audit: &Audit<T>) {
        Audits::<T>::remove(subject);
        AuditsByProvider::<T>::remove(&audit.provider, subject);
        AuditsByWake::<T>::remove(audit.wake, subject);
        for a in audit.verifiers.iter().filter(|a| a.verdict.is_none()) {
            AuditsByVerifier::<T>::remove(&a.verifier, subject);
        }
    }

    fn abandon(subject: Subject, audit: Audit<T>) {
        Self::close(subject, &audit);
        Self::deposit_event(Event::AuditAbandoned { subject, provider: audit.provider });
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
    fn slash_verifier(subject: Subject, verifier: &T::AccountId) {
        let due = T::VerifierSlash::get().mul_floor(T::Providers::bond_of(verifier));
        let slashed =
            T::Providers::slash_bond(verifier, due, &T::Treasury::get()).unwrap_or_default();
        Self::deposit_event(Event::VerifierSlashed {
            subject,
            verifier: verifier.clone(),
            slashed,
        });
    }

    /// The work was found wrong: slash the provider's bond and close the audit (see
    /// [`Self::slash_for_fault`]).
    fn find_at_fault(subject: Subject, audit: Audit<T>, finders: Vec<T::AccountId>) {
        Self::close(subject, &audit);
        let (refunded, rewarded, to_treasury) =
            Self::slash_for_fault(&audit.provider, &audit.payer, audit.charged, &finders);
        Self::deposit_event(Event::ProviderSlashed {
            subject,
            provider: audit.provider.clone(),
            refunded,
            rewarded,
            to_treasury,
        });
    }

    /// Slash `provider`'s bond by `FaultSlash`: `charged` back to `payer` first, then
    /// `VerifierReward` of the rest split evenly among `finders`, and what is left to the
    /// treasury. Returns what each got: (refunded, rewarded in all, to the treasury).
    fn slash_for_fault(
        provider: &T::AccountId,
        payer: &T::AccountId,
        charged: BalanceOf<T>,
        finders: &[T::AccountId],
    ) -> (BalanceOf<T>, BalanceOf<T>, BalanceOf<T>) {
        let due = T::FaultSlash::get().mul_floor(T::Providers::bond_of(provider));
        let refunded =
            T::Providers::slash_bond(provider, charged.min(due), payer).unwrap_or_default();
        let rest = due.saturating_sub(refunded);
        let reward = T::VerifierReward::get().mul_floor(rest);
        let each = u32::try_from(finders.len())
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| CheckedDiv::checked_div(&reward, &n.into()))
            .unwrap_or_default();
        let mut rewarded = BalanceOf::<T>::zero();
        for finder in finders {
            let paid = T::Providers::slash_bond(provider, each, finder).unwrap_or_default();
            rewarded = rewarded.saturating_add(paid);
        }
        let left = due.saturating_sub(refunded).saturating_sub(rewarded);
        let to_treasury =
            T::Providers::slash_bond(provider, left, &T::Treasury::get()).unwrap_or_default();
        (refunded, rewarded, to_treasury)
    }

    pub(crate) fn do_submit_verdict(
        who: &T::AccountId,
        subject: Subject,
        verdict: Verdict,
        evidence: sp_core::H256,
        score: Score,
    ) -> DispatchResult {
        let mut audit = Audits::<T>::get(subject).ok_or(Error::<T>::UnknownAudit)?;
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
        slot.score = score;
        let verifier = slot.verifier.clone();
        AuditsByVerifier::<T>::remove(&verifier, subject);
        Self::deposit_event(Event::VerdictGiven { subject, verifier, verdict, evidence, score });

        if audit.verifiers.iter().any(|a| a.verdict.is_none()) {
            Audits::<T>::insert(subject, audit);
            return Ok(());
        }
        let faulting = Self::verifiers_with(&audit, true);
        let clearing = Self::verifiers_with(&audit, false);
        match audit.stage {
            Stage::Open if faulting.is_empty() => Self::confirm_scored(subject, audit, clearing),
            Stage::Open => {
                let until = now.saturating_add(T::ContestWindow::get());
                audit.stage = Stage::Accused { until };
                Self::deposit_event(Event::ProviderAccused {
                    subject,
                    provider: audit.provider.clone(),
                    until,
                });
                let wake = Self::next_wake(&audit, now);
                Self::reschedule(subject, audit, wake);
            },
            // Contested: the majority decides, a tie clears the provider; the verifiers it
            // overturned are slashed.
            _ if faulting.len() > clearing.len() => {
                for v in &clearing {
                    Self::slash_verifier(subject, v);
                }
                Self::find_at_fault(subject, audit, faulting);
            },
            _ => {
                for v in &faulting {
                    Self::slash_verifier(subject, v);
                }
                Self::confirm_scored(subject, audit, clearing);
            },
        }
        Ok(())
    }

    /// The work of `subject` stands: close the audit and add its score (the median of the
    /// `clearing` verifiers') to the provider's window; when the window is full and its
    /// median is above `DriftLimit`, the provider is slashed as for work found wrong
    /// (`ProviderDrifted`, the clearing verifiers rewarded) and its window emptied.
    fn confirm_scored(subject: Subject, audit: Audit<T>, clearing: Vec<T::AccountId>) {
        Self::close(subject, &audit);
        let window = T::DriftWindow::get().min(MAX_DRIFT_WINDOW) as usize;
        if window == 0 {
            Self::deposit_event(Event::WorkConfirmed { subject, provider: audit.provider });
            return;
        }
        let scores: Vec<Score> = audit
            .verifiers
            .iter()
            .filter(|a| a.verdict.is_some_and(|(v, _)| !v.faults()))
            .map(|a| a.score)
            .collect();
        let mut kept: Vec<Score> = DriftScores::<T>::get(&audit.provider).into_inner();
        kept.extend(median(scores));
        let first = kept.len().saturating_sub(window);
        let scores_window =
            BoundedVec::<Score, ConstU32<MAX_DRIFT_WINDOW>>::truncate_from(kept.split_off(first));
        let judged = (scores_window.len() >= window).then(|| median(scores_window.to_vec()));
        match judged.flatten() {
            Some(m) if m > T::DriftLimit::get() => {
                DriftScores::<T>::remove(&audit.provider);
                let (refunded, rewarded, to_treasury) =
                    Self::slash_for_fault(&audit.provider, &audit.payer, audit.charged, &clearing);
                Self::deposit_event(Event::ProviderDrifted {
                    subject,
                    provider: audit.provider,
                    median: m,
                    refunded,
                    rewarded,
                    to_treasury,
                });
            },
            _ => {
                if !scores_window.is_empty() {
                    DriftScores::<T>::insert(&audit.provider, scores_window);
                }
                Self::deposit_event(Event::WorkConfirmed { subject, provider: audit.provider });
            },
        }
    }

    pub(crate) fn do_contest(who: &T::AccountId, subject: Subject) -> DispatchResult {
        let mut audit = Audits::<T>::get(subject).ok_or(Error::<T>::UnknownAudit)?;
        ensure!(T::Providers::is_worker(&audit.provider, who), Error::<T>::NotTheProvider);
        ensure!(matches!(audit.stage, Stage::Accused { .. }), Error::<T>::NotContestable);
        let now = frame_system::Pallet::<T>::block_number();
        let deadline = now.saturating_add(T::VerdictTimeout::get());
        let mut added = BoundedVec::new();
        let (first, second) = Self::draw(DRAW_CONTEST, &subject, 0);
        for choice in [first, second] {
            let Some(verifier) = Self::pick(&Self::eligible_verifiers(&audit), choice) else {
                break;
            };
            let assignment =
                Assignment::<T> { verifier: verifier.clone(), deadline, verdict: None, score: 0 };
            if audit.verifiers.try_push(assignment).is_err() || added.try_push(verifier).is_err() {
                break;
            }
        }
        ensure!(!added.is_empty(), Error::<T>::NoVerifierAvailable);
        for v in added.iter() {
            AuditsByVerifier::<T>::insert(v, subject, ());
        }
        audit.stage = Stage::Contested;
        Self::deposit_event(Event::Contested { subject, verifiers: added, deadline });
        let wake = Self::next_wake(&audit, now);
        Self::reschedule(subject, audit, wake);
        Ok(())
    }

    /// Receipts `provider` must reveal now, at most `limit`.
    pub fn reveals_of_provider(
        provider: &T::AccountId,
        limit: u32,
    ) -> Vec<(Leaf, PendingReveal<T>)> {
        RevealsByProvider::<T>::iter_key_prefix(provider)
            .filter_map(|leaf| Reveals::<T>::get(leaf).map(|r| (leaf, r)))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    }

    /// Open audits of `provider`'s work, at most `limit`.
    pub fn audits_of_provider(provider: &T::AccountId, limit: u32) -> Vec<Subject> {
        AuditsByProvider::<T>::iter_key_prefix(provider)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
    }

    /// Audits `verifier` must answer now, at most `limit` (for its worker and the runtime API).
    pub fn audits_of_verifier(verifier: &T::AccountId, limit: u32) -> Vec<Subject> {
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
    /// - at most `MaxOpenAudits` audits are open;
    /// - every pending reveal is indexed under the block after its last one (in the future)
    ///   and under its provider, and nothing else is; its leaf is inside its tree; at most
    ///   `MaxOpenAudits` are pending.
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        let now = frame_system::Pallet::<T>::block_number();
        let mut owing = 0usize;
        for (subject, audit) in Audits::<T>::iter() {
            let n = audit.verifiers.len();
            ensure!(n >= 1 && n <= MAX_VERIFIERS as usize, "audit without verifiers");
            ensure!(AuditsByWake::<T>::contains_key(audit.wake, subject), "audit not indexed");
            ensure!(
                AuditsByProvider::<T>::contains_key(&audit.provider, subject),
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
                    AuditsByVerifier::<T>::contains_key(&a.verifier, subject),
                    "pending verifier not indexed"
                );
                owing = owing.saturating_add(1);
            }
        }
        for (wake, subject, ()) in AuditsByWake::<T>::iter() {
            let audit = Audits::<T>::get(subject).ok_or("wake entry of no audit")?;
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
        let offers = OfferCount::<T>::get();
        ensure!(offers <= T::MaxOffersPerBlock::get(), "more offers than a block may hold");
        ensure!(
            Offered::<T>::iter_keys().all(|i| i < offers)
                && Offered::<T>::iter_keys().count() == offers as usize,
            "offers not numbered 0 to their count"
        );
        ensure!(
            Audits::<T>::count() as usize == Audits::<T>::iter().count(),
            "audit counter is off"
        );
        let mut reveals = 0usize;
        for (leaf, pending) in Reveals::<T>::iter() {
            let wake = pending.until.saturating_add(1u32.into());
            ensure!(RevealsByWake::<T>::contains_key(wake, leaf), "reveal not indexed");
            ensure!(wake > now, "reveal due in the past");
            ensure!(
                RevealsByProvider::<T>::contains_key(&pending.provider, leaf),
                "reveal not indexed under its provider"
            );
            ensure!(leaf.index < pending.inferences, "leaf outside its tree");
            reveals = reveals.saturating_add(1);
        }
        ensure!(RevealsByWake::<T>::iter().count() == reveals, "stray reveal wake entry");
        ensure!(RevealsByProvider::<T>::iter().count() == reveals, "stray reveal provider entry");
        ensure!(Reveals::<T>::count() as usize == reveals, "reveal counter is off");
        ensure!(Reveals::<T>::count() <= T::MaxOpenAudits::get(), "too many reveals");
        let window = T::DriftWindow::get().min(MAX_DRIFT_WINDOW) as usize;
        for (_, scores) in DriftScores::<T>::iter() {
            ensure!(!scores.is_empty(), "an empty score window is stored");
            ensure!(scores.len() <= window, "a score window longer than DriftWindow");
            if scores.len() == window {
                let m = median(scores.to_vec()).unwrap_or_default();
                ensure!(m <= T::DriftLimit::get(), "a full window above DriftLimit was not judged");
            }
        }
        Ok(())
    }
}

/// The median of `scores` (the lower middle of an even count), none of none.
pub(crate) fn median(mut scores: Vec<Score>) -> Option<Score> {
    scores.sort_unstable();
    let mid = scores.len().checked_sub(1)? / 2;
    scores.get(mid).copied()
}
