//! The payer's and provider's halves of a channel against each other: every voucher the
//! gateway issues is one the worker accepts, every bad receipt or voucher is refused by name
//! with nothing changed, and both survive a restart through their stores.

use ed25519_dalek::SigningKey;
use openledger_channel::{
    merkle, ChannelError, ContextShare, PayerChannel, ProviderChannel, ServiceReceipt,
    SignedReceipt, SignedVoucher, Store,
};

const GENESIS: [u8; 32] = [0x47; 32];
const CHANNEL: u64 = 4;
const DEPOSIT: u128 = 1_000_000;

struct Sides {
    worker: SigningKey,
    signer: SigningKey,
    payer: PayerChannel,
    provider: ProviderChannel,
}

fn sides(credit_limit: u128) -> Sides {
    let worker = SigningKey::from_bytes(&[1; 32]);
    let signer = SigningKey::from_bytes(&[2; 32]);
    let payer = PayerChannel::new(CHANNEL, worker.verifying_key().to_bytes(), DEPOSIT);
    let provider =
        ProviderChannel::new(CHANNEL, signer.verifying_key().to_bytes(), DEPOSIT, credit_limit);
    Sides { worker, signer, payer, provider }
}

fn receipt(request: u64, adapter: u32, charge: u128, contexts: &[(u32, u32)]) -> ServiceReceipt {
    ServiceReceipt {
        channel: CHANNEL,
        request,
        adapter,
        input_hash: [request as u8; 32],
        output_hash: [!(request as u8); 32],
        input_tokens: 10,
        output_tokens: 20,
        charge,
        contexts: contexts.iter().map(|&(datanet, ppm)| ContextShare { datanet, ppm }).collect(),
        commitment_hash: Some([request as u8 ^ 0x5a; 32]),
    }
}

impl Sides {
    /// One request end to end: admitted, served, vouched, accepted.
    fn serve(&mut self, r: ServiceReceipt) -> SignedVoucher {
        self.provider.admit(r.charge).unwrap();
        let request = r.request;
        let signed = r.sign(&self.worker, GENESIS);
        self.provider.served(signed.clone()).unwrap();
        let voucher =
            self.payer.vouch(&signed, signed.receipt.charge, &self.signer, GENESIS).unwrap();
        self.provider.accept(request, voucher.clone(), GENESIS).unwrap();
        voucher
    }
}

#[test]
fn every_voucher_covers_the_receipts_since_the_last_redemption() {
    let mut s = sides(10_000);
    let receipts = [
        receipt(1, 7, 1_000, &[(3, 250_000)]),
        receipt(2, 8, 2_000, &[]),
        receipt(3, 7, 3_001, &[(3, 500_000), (4, 100_000)]),
    ];
    let mut last = None;
    for r in receipts.clone() {
        last = Some(s.serve(r));
    }
    let v = last.unwrap().voucher;
    assert_eq!((v.sequence, v.cumulative, v.inferences), (3, 6_001, 3));
    let adapters: Vec<(u32, u128)> = v.adapters.iter().map(|a| (a.adapter, a.amount)).collect();
    assert_eq!(adapters, [(7, 4_001), (8, 2_000)]);
    let contexts: Vec<(u32, u32, u128)> =
        v.contexts.iter().map(|c| (c.adapter, c.datanet, c.amount)).collect();
    // 1,000 x 25% + 3,001 x 50% (rounded down per receipt), and 3,001 x 10%.
    assert_eq!(contexts, [(7, 3, 250 + 1_500), (7, 4, 300)]);
    let leaves: Vec<[u8; 32]> = receipts.iter().map(|r| r.leaf(GENESIS)).collect();
    assert_eq!(v.receipts_root.0, merkle::root(&leaves));
    for (i, leaf) in leaves.iter().enumerate() {
        let path = merkle::proof(&leaves, i).unwrap();
        assert!(merkle::verify(&v.receipts_root.0, *leaf, i as u64, leaves.len() as u64, &path));
    }
    assert_eq!(s.provider.redeemable().map(|v| v.voucher.sequence), Some(3));
    assert!(s.provider.unvouched.is_empty());

    // The chain redeems voucher 3: its receipts leave the breakdown; the next voucher is of
    // the new increment only, and the worker accepts it.
    assert_eq!(s.payer.on_redeemed(6_001, 3), vec![1, 2, 3]);
    s.provider.on_redeemed(6_001, 3);
    assert!(s.provider.redeemable().is_none());
    let v = s.serve(receipt(4, 9, 500, &[])).voucher;
    assert_eq!((v.sequence, v.cumulative, v.inferences), (4, 6_501, 1));
    assert_eq!(v.adapters.iter().map(|a| (a.adapter, a.amount)).collect::<Vec<_>>(), [(9, 500)]);
    assert_eq!(v.receipts_root.0, receipt(4, 9, 500, &[]).leaf(GENESIS));
}

#[test]
fn bad_receipts_are_refused_by_name_and_change_nothing() {
    let mut s = sides(10_000);
    s.serve(receipt(1, 7, 1_000, &[]));
    let before = s.payer.clone();
    let vouch = |s: &mut Sides, signed: &SignedReceipt, max: u128| {
        s.payer.vouch(signed, max, &s.signer.clone(), GENESIS).unwrap_err()
    };
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let forged = receipt(2, 7, 10, &[]).sign(&stranger, GENESIS);
    assert!(matches!(vouch(&mut s, &forged, 10), ChannelError::BadSignature(_)));
    let other_chain = receipt(2, 7, 10, &[]).sign(&s.worker, [0; 32]);
    assert!(matches!(vouch(&mut s, &other_chain, 10), ChannelError::BadSignature(_)));
    let mut wrong = receipt(2, 7, 10, &[]);
    wrong.channel = 5;
    let wrong = wrong.sign(&s.worker, GENESIS);
    assert!(matches!(vouch(&mut s, &wrong, 10), ChannelError::WrongChannel { got: 5, .. }));
    let dear = receipt(2, 7, 11, &[]).sign(&s.worker, GENESIS);
    assert!(matches!(vouch(&mut s, &dear, 10), ChannelError::Overcharge { charge: 11, max: 10 }));
    let again = receipt(1, 7, 10, &[]).sign(&s.worker, GENESIS);
    assert!(matches!(vouch(&mut s, &again, 10), ChannelError::Duplicate(1)));
    let huge = receipt(2, 7, DEPOSIT, &[]).sign(&s.worker, GENESIS);
    assert!(matches!(vouch(&mut s, &huge, DEPOSIT), ChannelError::InsufficientDeposit { .. }));
    let shares = receipt(2, 7, 10, &[(1, 700_000), (2, 700_000)]).sign(&s.worker, GENESIS);
    assert!(matches!(vouch(&mut s, &shares, 10), ChannelError::BadReceipt(_)));
    assert_eq!(s.payer, before, "a refused receipt moved the channel");
    // A 17th adapter does not fit one voucher: refused until a redemption.
    for a in 0..15 {
        s.serve(receipt(10 + a, 100 + a as u32, 1, &[]));
    }
    let before = s.payer.clone();
    let one_more = receipt(99, 999, 1, &[]).sign(&s.worker, GENESIS);
    let err = vouch(&mut s, &one_more, 1);
    assert!(matches!(err, ChannelError::BreakdownFull { what: "adapters", .. }), "{err}");
    assert_eq!(s.payer, before);
}

#[test]
fn bad_vouchers_are_refused_by_name_and_change_nothing() {
    let mut s = sides(10_000);
    s.serve(receipt(1, 7, 1_000, &[]));
    let signed = receipt(2, 7, 500, &[]).sign(&s.worker, GENESIS);
    s.provider.served(signed.clone()).unwrap();
    let good = s.payer.vouch(&signed, 500, &s.signer, GENESIS).unwrap();
    let before = s.provider.clone();
    let accept =
        |s: &mut Sides, v: SignedVoucher, genesis| s.provider.accept(2, v, genesis).unwrap_err();

    // Signed by another key, or for another chain.
    let mut p = s.payer.clone();
    p.sequence -= 1;
    p.cumulative -= 500;
    p.entries.pop();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let forged = p.clone().vouch(&signed, 500, &stranger, GENESIS).unwrap();
    assert!(matches!(accept(&mut s, forged, GENESIS), ChannelError::BadSignature(_)));
    assert!(matches!(accept(&mut s, good.clone(), [0; 32]), ChannelError::BadSignature(_)));
    // Paying less than the receipt's charge.
    let cheap_receipt = receipt(2, 7, 400, &[]).sign(&s.worker, GENESIS);
    let cheap = p.clone().vouch(&cheap_receipt, 500, &s.signer, GENESIS).unwrap();
    assert!(matches!(
        accept(&mut s, cheap, GENESIS),
        ChannelError::Underpaid { request: 2, paid: 400, charge: 500 }
    ));
    assert_eq!(s.provider, before, "a refused voucher moved the channel");

    s.provider.accept(2, good.clone(), GENESIS).unwrap();
    // The same voucher again, or an older one: stale.
    let replay = s.provider.refresh(good, GENESIS).unwrap_err();
    assert!(matches!(replay, ChannelError::StaleVoucher { latest: 2, got: 2 }), "{replay}");
    // A voucher made before a redemption no longer sums to the increment: refused as the
    // chain would; the gateway reissues after it sees the redemption.
    let stale_payer = s.payer.clone();
    s.provider.on_redeemed(1_500, 2);
    let old = stale_payer.clone().reissue(&s.signer, GENESIS).unwrap();
    assert!(matches!(
        s.provider.refresh(old, GENESIS).unwrap_err(),
        ChannelError::BadBreakdown { sum: 1_500, increment: 0 }
    ));
    s.payer.on_redeemed(1_500, 2);
    let fresh = s.payer.reissue(&s.signer, GENESIS).unwrap();
    assert_eq!(fresh.voucher.adapters.len(), 0);
    s.provider.refresh(fresh, GENESIS).unwrap();
}

#[test]
fn a_worker_serves_no_further_than_its_credit_limit() {
    let mut s = sides(1_500);
    s.provider.admit(1_000).unwrap();
    let first = receipt(1, 7, 1_000, &[]).sign(&s.worker, GENESIS);
    s.provider.served(first.clone()).unwrap();
    // The gateway has not answered: another 600 would put 1,600 at risk.
    let err = s.provider.admit(600).unwrap_err();
    assert!(matches!(err, ChannelError::CreditLimit { outstanding: 1_600, limit: 1_500, .. }));
    let v = s.payer.vouch(&first, 1_000, &s.signer, GENESIS).unwrap();
    s.provider.accept(1, v, GENESIS).unwrap();
    s.provider.admit(600).unwrap();
    // And never past the deposit, whatever the limit.
    let mut rich = sides(u128::MAX);
    rich.serve(receipt(1, 7, DEPOSIT - 10, &[]));
    assert!(matches!(
        rich.provider.admit(11).unwrap_err(),
        ChannelError::InsufficientDeposit { .. }
    ));
}

#[test]
fn both_sides_continue_after_a_restart_from_their_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_path, worker_path) = (dir.path().join("gateway.redb"), dir.path().join("worker.redb"));
    let mut s = sides(10_000);
    {
        let (gw, wk) = (Store::open(&gw_path).unwrap(), Store::open(&worker_path).unwrap());
        for (i, r) in
            [receipt(1, 7, 100, &[(2, 10)]), receipt(2, 8, 200, &[])].into_iter().enumerate()
        {
            s.provider.admit(r.charge).unwrap();
            let signed = r.sign(&s.worker, GENESIS);
            s.provider.served(signed.clone()).unwrap();
            wk.save_provider(&s.provider, Some(&signed)).unwrap();
            let v = s.payer.vouch(&signed, signed.receipt.charge, &s.signer, GENESIS).unwrap();
            gw.save_payer(&s.payer, &s.payer.entries[i..], &[]).unwrap();
            s.provider.accept(signed.receipt.request, v, GENESIS).unwrap();
            wk.save_provider(&s.provider, None).unwrap();
        }
        assert_eq!(wk.receipt(CHANNEL, 2).unwrap().unwrap().receipt.charge, 200);
    }
    let (gw, wk) = (Store::open(&gw_path).unwrap(), Store::open(&worker_path).unwrap());
    let payers = gw.payer_channels().unwrap();
    let providers = wk.provider_channels().unwrap();
    assert_eq!(payers, vec![s.payer.clone()]);
    assert_eq!(providers, vec![s.provider.clone()]);
    // The restarted worker's redeemable voucher is its latest; the restarted gateway goes on.
    let mut restarted = Sides { payer: payers[0].clone(), provider: providers[0].clone(), ..s };
    assert_eq!(restarted.provider.redeemable().unwrap().voucher.sequence, 2);
    let v = restarted.serve(receipt(3, 7, 300, &[]));
    assert_eq!((v.voucher.sequence, v.voucher.cumulative, v.voucher.inferences), (3, 600, 3));
    // A redemption removes the paid entries from the store too.
    let paid = restarted.payer.on_redeemed(600, 3);
    gw.save_payer(&restarted.payer, &[], &paid).unwrap();
    assert!(gw.payer_channels().unwrap()[0].entries.is_empty());
    // A bad path is named.
    let err = Store::open(&dir.path().join("missing/dir/x.redb")).err().unwrap().to_string();
    assert!(err.contains("missing/dir/x.redb"), "{err}");
}

#[test]
fn a_worker_redeems_on_its_schedule_and_always_during_a_close() {
    let mut s = sides(10_000);
    let policy = openledger_channel::provider::RedeemPolicy { every_blocks: 100, amount: 5_000 };
    use openledger_channel::provider::RedeemReason;
    // Nothing vouched: nothing to redeem, even while closing.
    assert_eq!(s.provider.redeem_due(&policy, 1_000, 0, Some(1_010)), None);
    s.serve(receipt(1, 7, 1_000, &[]));
    assert_eq!(s.provider.redeem_due(&policy, 50, 0, None), None);
    assert_eq!(s.provider.redeem_due(&policy, 100, 0, None), Some(RedeemReason::Interval));
    assert_eq!(
        s.provider.redeem_due(&policy, 50, 0, Some(60)),
        Some(RedeemReason::Closing { until: 60 })
    );
    s.serve(receipt(2, 7, 4_000, &[]));
    assert_eq!(s.provider.redeem_due(&policy, 50, 0, None), Some(RedeemReason::Amount));
    // Once the chain has paid it all, nothing is due.
    s.provider.on_redeemed(5_000, 2);
    assert_eq!(s.provider.redeem_due(&policy, 500, 0, Some(510)), None);
}
