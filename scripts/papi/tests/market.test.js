// The whole marketplace through polkadot-api, written from the metadata alone (the descriptors
// PAPI's CLI generated from the running node; names and shapes as PAPI exposes them): a DataNet
// collects curated contributions, an adapter trained on it is registered, a provider registers
// and bonds, a user asks for a quote and submits a job, the worker acknowledges it, gets the
// bytes to sign from the chain, signs them and settles the job; every payee's balance moves by
// exactly its share of the charge and contributors claim their rewards. The view functions
// agree with the runtime APIs; a channel voucher signed over the bytes the chain hands out is
// redeemed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Binary } from 'polkadot-api';
import { ed25519 } from '@noble/curves/ed25519.js';
import { devAccounts, hash256, startChain, submit } from '../lib/papi.js';

const OPEN = 10n ** 18n;
const MILLI = OPEN / 1000n;
/** ceil(tokens x price per 1,000 tokens / 1,000), as `Jobs.JobSettled` documents the charge. */
const charge = (tokens, pricePer1k) => (BigInt(tokens) * pricePer1k + 999n) / 1000n;

describe('GPU marketplace through polkadot-api (descriptors from the running node)', () => {
  let chain;
  let api;
  let keys;
  let datanet;
  let adapter;
  // The worker's ed25519 key, registered as the provider's `worker_key`.
  const workerSecret = ed25519.utils.randomSecretKey();
  const workerKey = Binary.toHex(ed25519.getPublicKey(workerSecret));
  const providerPrice = 2n * MILLI;
  const adapterPrice = MILLI;

  /** Free and reserved balance of `who` at block `at` (a hash, or the best block). */
  const account = async (who, at = 'best') => {
    const { data } = await api.query.System.Account.getValue(who, { at });
    return { free: data.free, reserved: data.reserved };
  };
  const rejectsWith = (promise, name) => assert.rejects(promise, (e) => {
    assert.equal(e.dispatchError, name);
    return true;
  });

  before(async () => {
    chain = await startChain();
    api = chain.api;
    keys = devAccounts(chain.ss58);
  });

  after(async () => {
    if (chain) await chain.stop();
  });

  test('a DataNet takes contributions a curator approves; an adapter trained on it registers', async () => {
    const { dave, charlie, ferdie, eve } = keys;
    const created = await submit(api.tx.Attribution.create_datanet({ metadata: Binary.fromText('support tickets') }), dave.signer);
    [{ datanet }] = api.event.Attribution.DataNetCreated.filter(created.events).map((e) => e.payload);
    await submit(api.tx.Attribution.add_curator({ datanet, curator: charlie.address }), dave.signer);
    // Ferdie contributes weight 1 and Eve weight 3, each approved by the curator.
    for (const [who, n, weight] of [[ferdie, 1, 1n], [eve, 2, 3n]]) {
      const record = hash256(`record ${n}`);
      await submit(api.tx.Attribution.contribute({ datanet, record, weight }), who.signer);
      const ok = await submit(api.tx.Attribution.approve_contribution({ datanet, record }), charlie.signer);
      assert.equal(api.event.Attribution.ContributionApproved.filter(ok.events).map((e) => e.payload).length, 1);
    }
    // A contributor cannot approve its own record: refused by name.
    const own = hash256('record 3');
    await submit(api.tx.Attribution.contribute({ datanet, record: own, weight: 5n }), ferdie.signer);
    await rejectsWith(submit(api.tx.Attribution.approve_contribution({ datanet, record: own }), ferdie.signer), 'Attribution.NotCurator');
    await submit(api.tx.Attribution.reject_contribution({ datanet, record: own }), charlie.signer);
    assert.equal((await api.query.Attribution.DataNets.getValue(datanet, { at: 'best' })).total_weight, 4n);

    const reg = await submit(api.tx.Attribution.register_adapter({
      base_model: 0,
      content_hash: hash256('adapter weights'),
      rank: 16,
      target_modules: 0x7f,
      price_per_1k: adapterPrice,
      training: [{ datanet, share: 1_000_000 }],
    }), dave.signer);
    [{ adapter }] = api.event.Attribution.AdapterRegistered.filter(reg.events).map((e) => e.payload);
    const info = await api.query.Attribution.Adapters.getValue(adapter, { at: reg.block.hash });
    assert.equal(info.owner, dave.address);
    assert.equal(info.price_per_1k, adapterPrice);
    // The runtime API reads the same record.
    assert.equal((await api.apis.AttributionApi.adapter(adapter, { at: reg.block.hash })).price_per_1k, adapterPrice);
  });

  test('a provider registers with its bond held to the planck, declares its adapters and heartbeats', async () => {
    const { bob, charlie } = keys;
    const bond = 2_000n * OPEN;
    const terms = {
      spec: { model: Binary.fromText('NVIDIA H100 80GB HBM3'), memory_gib: 80, gpu_count: 1, bf16_tflops: 760 },
      region: Binary.toHex(Binary.fromText('EU')),
      endpoint: { peer_id: new Uint8Array(randomBytes(38)), multiaddrs: [Binary.fromText('/ip4/127.0.0.1/tcp/4001')] },
      worker_key: workerKey,
      worker_account: charlie.address,
      base_models: [0],
      price_per_1k: providerPrice,
      max_concurrent: 4,
    };
    const before = await account(bob.address);
    const reg = await submit(api.tx.Compute.register_provider({ terms, bond }), bob.signer);
    const [registered] = api.event.Compute.ProviderRegistered.filter(reg.events).map((e) => e.payload);
    assert.equal(registered.provider, bob.address);
    assert.equal(registered.bond, bond);
    const after = await account(bob.address, reg.block.hash);
    assert.equal(after.reserved - before.reserved, bond);
    assert.equal(before.free - after.free, bond + reg.fee);

    // The worker account declares the adapters it serves and reports those it has loaded.
    const served = await submit(api.tx.Compute.set_served_adapters({ provider: bob.address, adapters: [adapter] }), charlie.signer);
    assert.equal(api.event.Compute.AdaptersServed.filter(served.events).map((e) => e.payload)[0].served, 1);
    const hb = await submit(api.tx.Compute.heartbeat({ provider: bob.address, hot_adapters: [adapter], free_slots: 4 }), charlie.signer);
    assert.equal(api.event.Compute.HeartbeatReceived.filter(hb.events).map((e) => e.payload).length, 1);

    // Eligibility through the view functions, and the runtime API agreeing.
    const at = { at: hb.block.hash };
    const info = await api.view.Compute.provider(bob.address, at);
    assert.ok(info, 'Bob is a provider');
    assert.equal(info.eligible, true);
    assert.equal((await api.apis.ComputeApi.provider(bob.address, at))?.eligible, true);
    const offer = await api.view.Compute.provider_offer(bob.address, 0, adapter, at);
    assert.equal(offer.price_per_1k, providerPrice);
    assert.equal(await api.view.Compute.provider(keys.ferdie.address, at), undefined, 'Ferdie is no provider');
  });

  test('quote, submit, acknowledge, sign the bytes the chain hands out, settle: every balance reconciled to the planck', async () => {
    const { alice, bob, charlie, dave, eve } = keys;
    const best = { at: 'best' };
    const outputTokens = 200;
    const inputTokens = 300;
    // The quote (view function and runtime API agree): Bob, at provider plus adapter price.
    const quote = await api.view.Jobs.quote(adapter, outputTokens, best);
    assert.deepEqual(quote, await api.apis.JobsApi.quote(adapter, outputTokens, best));
    assert.equal(quote.provider, bob.address);
    assert.equal(quote.price_per_1k, providerPrice + adapterPrice);
    assert.equal(quote.min_max_fee, charge(outputTokens, quote.price_per_1k));

    // A fee limit one planck under the quote finds no provider: refused by name, nothing held.
    const refusedBefore = await account(alice.address);
    let refused;
    await assert.rejects(submit(api.tx.Jobs.submit_job({
      adapter, input_hash: hash256('prompt'), max_output_tokens: outputTokens, max_fee: quote.min_max_fee - 1n, gateway: new Uint8Array(randomBytes(38)),
    }), alice.signer), (e) => {
      assert.equal(e.dispatchError, 'Jobs.NoProviderAvailable');
      refused = e.result;
      return true;
    });
    const refusedAfter = await account(alice.address, refused.block.hash);
    assert.equal(refusedAfter.reserved, refusedBefore.reserved);
    assert.equal(refusedBefore.free - refusedAfter.free, refused.fee, 'only the transaction fee was paid');

    // Submit: the escrow (max_fee) is held from Alice.
    const maxFee = OPEN;
    const aliceBefore = await account(alice.address);
    const sub = await submit(api.tx.Jobs.submit_job({
      adapter, input_hash: hash256('What is OpenLedger?'), max_output_tokens: outputTokens, max_fee: maxFee, gateway: new Uint8Array(randomBytes(38)),
    }), alice.signer);
    const [assigned] = api.event.Jobs.JobAssigned.filter(sub.events).map((e) => e.payload);
    assert.equal(assigned.provider, bob.address);
    assert.equal(assigned.escrow, maxFee);
    const { job } = assigned;
    const aliceHeld = await account(alice.address, sub.block.hash);
    assert.equal(aliceHeld.reserved - aliceBefore.reserved, maxFee);
    assert.equal(aliceBefore.free - aliceHeld.free, maxFee + sub.fee);
    const open = await api.view.Jobs.job_status(job, { at: sub.block.hash });
    assert.equal(open.type, 'Open');
    assert.equal(open.value.provider, bob.address);
    assert.equal(open.value.phase.type, 'Assigned');

    // Only the provider's worker acknowledges.
    await rejectsWith(submit(api.tx.Jobs.acknowledge({ job }), eve.signer), 'Jobs.NotAssignedWorker');
    const ack = await submit(api.tx.Jobs.acknowledge({ job }), charlie.signer);
    assert.equal(api.event.Jobs.JobAcknowledged.filter(ack.events).map((e) => e.payload)[0].job, job);
    assert.equal((await api.view.Jobs.job_status(job, { at: ack.block.hash })).value.phase.type, 'Acknowledged');

    // The worker asks the chain for the bytes to sign and signs them with its ed25519 key.
    const outputHash = hash256('a decentralized AI chain');
    // The hash of the answer's activation commitment, which the worker keeps for verifiers.
    const commitmentHash = hash256(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    const fields = { job, output_hash: outputHash, input_tokens: inputTokens, output_tokens: outputTokens, context: [], commitment_hash: commitmentHash };
    const payload = await api.view.Jobs.receipt_signing_payload(job, outputHash, inputTokens, outputTokens, [], commitmentHash, { at: ack.block.hash });
    assert.ok(payload instanceof Uint8Array && payload.length === 201);
    // The bytes start with the domain the view function's docs name, then this chain's genesis
    // hash, and end with the commitment's hash.
    const domain = Binary.fromText('openledger/receipt/v3');
    assert.deepEqual(payload.slice(0, domain.length), domain);
    const { genesisHash: genesis } = await chain.client.getChainSpecData();
    assert.equal(Binary.toHex(payload.slice(domain.length, domain.length + 32)), genesis);
    assert.equal(Binary.toHex(payload.slice(169)), commitmentHash);
    // No open job, nothing to sign.
    assert.equal(await api.view.Jobs.receipt_signing_payload(job + 1000n, outputHash, 1, 1, [], commitmentHash), undefined);

    const signature = Binary.toHex(ed25519.sign(payload, workerSecret));
    // Anyone holding the receipt verifies it the way the chain will: the same bytes, the
    // worker key the job's provider registered.
    const { terms } = await api.view.Compute.provider(open.value.provider, { at: ack.block.hash });
    assert.ok(ed25519.verify(Binary.fromHex(signature), payload, Binary.fromHex(terms.worker_key)));
    // A signature by another key, or over other fields, is refused by name and settles nothing.
    const stranger = ed25519.utils.randomSecretKey();
    await rejectsWith(submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...fields, signature: Binary.toHex(ed25519.sign(payload, stranger)) }] }), eve.signer), 'Jobs.BadSignature');
    await rejectsWith(submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...fields, output_tokens: 1, signature }] }), eve.signer), 'Jobs.BadSignature');
    await rejectsWith(submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...fields, commitment_hash: hash256('another commitment'), signature }] }), eve.signer), 'Jobs.BadSignature');

    const treasury = await api.constants.Attribution.Treasury();
    const pot = await api.constants.Attribution.PalletAccount();
    const watched = { alice: alice.address, bob: bob.address, dave: dave.address, eve: eve.address, treasury, pot };
    const snapshot = async (at) => Object.fromEntries(await Promise.all(Object.entries(watched).map(async ([k, who]) => [k, await account(who, at)])));
    const before = await snapshot('best');
    const settled = await submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...fields, signature }] }), eve.signer);
    const after = await snapshot(settled.block.hash);
    const [done] = api.event.Jobs.JobSettled.filter(settled.events).map((e) => e.payload);
    assert.equal(done.job, job);
    const charged = charge(inputTokens + outputTokens, quote.price_per_1k);
    assert.equal(done.charged, charged);
    assert.equal(done.refunded, maxFee - charged);
    assert.equal(done.commitment_hash, commitmentHash);
    assert.equal((await api.view.Jobs.job_status(job, { at: settled.block.hash })).type, 'Closed');

    // The split names every payee; the amounts sum to the charge, the quote_split view function
    // (asked before settling) said the same, and each balance moved by exactly its amount.
    const [split] = api.event.Attribution.FeeSplit.filter(settled.events).map((e) => e.payload);
    const payouts = split.payouts;
    assert.equal(payouts.reduce((s, [, amount]) => s + amount, 0n), charged);
    const quoted = await api.view.Attribution.quote_split(adapter, bob.address, charged, [], { at: ack.block.hash });
    assert.deepEqual(quoted, payouts);
    const paid = (kind) => payouts.filter(([payee]) => payee.type === kind).reduce((s, [, a]) => s + a, 0n);
    assert.ok(paid('Provider') > 0n && paid('AdapterOwner') > 0n && paid('TrainingDataNet') > 0n && paid('Treasury') > 0n);
    assert.equal(paid('Provider') + paid('AdapterOwner') + paid('TrainingDataNet') + paid('ContextDataNet') + paid('Treasury'), charged);
    assert.ok(payouts.filter(([p]) => p.type === 'Treasury').every(([p]) => p.value === treasury));

    assert.equal(before.alice.reserved - after.alice.reserved, maxFee, 'the escrow is released');
    assert.equal(after.alice.free - before.alice.free, maxFee - charged, 'the rest of the escrow is back');
    assert.equal(after.bob.free - before.bob.free, paid('Provider'));
    assert.equal(after.dave.free - before.dave.free, paid('AdapterOwner'));
    assert.equal(after.treasury.free - before.treasury.free, paid('Treasury'));
    assert.equal(after.pot.free - before.pot.free, paid('TrainingDataNet') + paid('ContextDataNet'), 'the DataNets\' share is held for their contributors');
    assert.equal(before.eve.free - after.eve.free, settled.fee, 'the receipt\'s submitter paid only its fee');
    for (const k of ['bob', 'dave', 'eve', 'treasury', 'pot']) assert.equal(after[k].reserved, before[k].reserved, `${k}: nothing held or released`);

    // Replaying the receipt is refused: the job is closed.
    await assert.rejects(submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...fields, signature }] }), eve.signer), (e) => {
      assert.match(e.dispatchError, /^Jobs\.(JobClosed|UnknownJob)$/);
      return true;
    });

    // Contributors are owed pro rata to their approved weights (1 : 3) and claim it.
    const at = { at: settled.block.hash };
    const owed = async (who) => {
      const viaView = await api.view.Attribution.pending_rewards(datanet, who, at);
      assert.equal(viaView, await api.apis.AttributionApi.pending_rewards(datanet, who, at));
      return viaView;
    };
    const [ferdieOwed, eveOwed] = [await owed(keys.ferdie.address), await owed(eve.address)];
    const toDataNet = paid('TrainingDataNet');
    assert.ok(ferdieOwed > 0n && ferdieOwed + eveOwed <= toDataNet && toDataNet - (ferdieOwed + eveOwed) <= 1n);
    assert.ok(eveOwed >= 3n * ferdieOwed && eveOwed <= 3n * ferdieOwed + 3n);

    const claim = await submit(api.tx.Attribution.claim_rewards({ datanet }), eve.signer);
    // Balances in the block before the claim's: the claim's own effect.
    const claimBefore = await snapshot(await api.query.System.ParentHash.getValue({ at: claim.block.hash }));
    const [claimed] = api.event.Attribution.RewardsClaimed.filter(claim.events).map((e) => e.payload);
    assert.equal(claimed.amount, eveOwed);
    const claimAfter = await snapshot(claim.block.hash);
    assert.equal(claimAfter.eve.free - claimBefore.eve.free, eveOwed - claim.fee);
    assert.equal(claimBefore.pot.free - claimAfter.pot.free, eveOwed);
    assert.equal(await api.view.Attribution.pending_rewards(datanet, eve.address, { at: claim.block.hash }), 0n);
    await rejectsWith(submit(api.tx.Attribution.claim_rewards({ datanet }), eve.signer), 'Attribution.NothingToClaim');
  });

  test('a receipt with retrieval context: the context DataNet is paid its share of the DataNet part', async () => {
    const { alice, bob, charlie, eve, ferdie } = keys;
    const created = await submit(api.tx.Attribution.create_datanet({ metadata: Binary.fromText('faq') }), ferdie.signer);
    const [{ datanet: faq }] = api.event.Attribution.DataNetCreated.filter(created.events).map((e) => e.payload);
    const record = hash256('faq record');
    await submit(api.tx.Attribution.contribute({ datanet: faq, record, weight: 5n }), alice.signer);
    await submit(api.tx.Attribution.approve_contribution({ datanet: faq, record }), ferdie.signer);
    await submit(api.tx.Compute.heartbeat({ provider: bob.address, hot_adapters: [adapter], free_slots: 4 }), charlie.signer);

    const sub = await submit(api.tx.Jobs.submit_job({
      adapter, input_hash: hash256('rag question'), max_output_tokens: 512, max_fee: OPEN / 4n, gateway: new Uint8Array(randomBytes(38)),
    }), eve.signer);
    const [{ job }] = api.event.Jobs.JobAssigned.filter(sub.events).map((e) => e.payload);
    const ack = await submit(api.tx.Jobs.acknowledge({ job }), charlie.signer);
    const context = [{ datanet: faq, share: 400_000 }];
    const outputHash = hash256('an answer from the FAQ');
    const none = Binary.toHex(new Uint8Array(32));
    const payload = await api.view.Jobs.receipt_signing_payload(job, outputHash, 4000, 500, context, none, { at: ack.block.hash });
    const receipt = { job, output_hash: outputHash, input_tokens: 4000, output_tokens: 500, context, commitment_hash: none, signature: Binary.toHex(ed25519.sign(payload, workerSecret)) };
    // Context signed as 40% and submitted as 60%: the signature no longer matches.
    await rejectsWith(submit(api.tx.Jobs.submit_receipts({ receipts: [{ ...receipt, context: [{ datanet: faq, share: 600_000 }] }] }), eve.signer), 'Jobs.BadSignature');

    const quoted = await api.view.Attribution.quote_split(adapter, bob.address, 1_000_000n, context, { at: ack.block.hash });
    assert.ok(quoted.some(([p]) => p.type === 'ContextDataNet' && p.value === faq));
    const settled = await submit(api.tx.Jobs.submit_receipts({ receipts: [receipt] }), eve.signer);
    const [done] = api.event.Jobs.JobSettled.filter(settled.events).map((e) => e.payload);
    const [split] = api.event.Attribution.FeeSplit.filter(settled.events).map((e) => e.payload);
    assert.equal(split.payouts.reduce((s, [, a]) => s + a, 0n), done.charged);
    const toContext = split.payouts.filter(([p]) => p.type === 'ContextDataNet' && p.value === faq).reduce((s, [, a]) => s + a, 0n);
    const toTraining = split.payouts.filter(([p]) => p.type === 'TrainingDataNet' && p.value === datanet).reduce((s, [, a]) => s + a, 0n);
    // 40% of the DataNet part to the FAQ, the rest to the training DataNet (Permill rounding).
    const part = toContext + toTraining;
    assert.ok(toContext > 0n && toTraining > 0n);
    assert.ok(toContext * 10n >= part * 4n - 10n && toContext * 10n <= part * 4n + 10n, `context ${toContext} of ${part}`);
    // Alice, the FAQ's only contributor, is owed the context share (less under a planck of dust).
    const pending = await api.view.Attribution.pending_rewards(faq, alice.address, { at: settled.block.hash });
    assert.ok(pending <= toContext && toContext - pending <= 1n, `pending ${pending} of ${toContext}`);
    const aliceBefore = await account(alice.address, settled.block.hash);
    const claim = await submit(api.tx.Attribution.claim_rewards({ datanet: faq }), alice.signer);
    assert.equal(api.event.Attribution.RewardsClaimed.filter(claim.events).map((e) => e.payload)[0].amount, pending);
    const aliceAfter = await account(alice.address, claim.block.hash);
    assert.equal(aliceAfter.free - aliceBefore.free, pending - claim.fee);
  });

  test('a channel voucher signed over the bytes the chain hands out is redeemed', async () => {
    const { ferdie, bob } = keys;
    const signerSecret = ed25519.utils.randomSecretKey();
    const deposit = 2n * OPEN;
    const opened = await submit(api.tx.Channels.open({ provider: bob.address, deposit, signer: Binary.toHex(ed25519.getPublicKey(signerSecret)) }), ferdie.signer);
    const [{ channel }] = api.event.Channels.ChannelOpened.filter(opened.events).map((e) => e.payload);
    const status = await api.view.Channels.channel_status(channel, { at: opened.block.hash });
    assert.equal(status.type, 'Open');
    assert.equal(status.value.deposit, deposit);

    const voucher = {
      channel, sequence: 1n, cumulative: OPEN, inferences: 42n, receipts_root: hash256('receipts'),
      adapters: [{ adapter, amount: OPEN }], contexts: [],
    };
    const payload = await api.view.Channels.voucher_signing_payload(voucher, { at: opened.block.hash });
    const domain = Binary.fromText('openledger/voucher/v1');
    assert.deepEqual(payload.slice(0, domain.length), domain);
    const signature = Binary.toHex(ed25519.sign(payload, signerSecret));
    await rejectsWith(submit(api.tx.Channels.redeem({ voucher: { ...voucher, inferences: 43n }, signature }), bob.signer), 'Channels.BadSignature');

    const bobBefore = await account(bob.address);
    const redeemed = await submit(api.tx.Channels.redeem({ voucher, signature }), bob.signer);
    const [ev] = api.event.Channels.VoucherRedeemed.filter(redeemed.events).map((e) => e.payload);
    assert.equal(ev.channel, channel);
    assert.equal(ev.paid, OPEN);
    const after = await api.view.Channels.channel_status(channel, { at: redeemed.block.hash });
    assert.equal(after.value.redeemed, OPEN);
    // The redemption is split as a receipt's charge is: the provider gets its share of it.
    const [split] = api.event.Attribution.VoucherFeeSplit.filter(redeemed.events).map((e) => e.payload);
    assert.equal(split.payouts.reduce((s, [, a]) => s + a, 0n), OPEN);
    const toBob = split.payouts.filter(([p]) => p.type === 'Provider').reduce((s, [, a]) => s + a, 0n);
    const bobAfter = await account(bob.address, redeemed.block.hash);
    assert.equal(bobAfter.free - bobBefore.free, toBob - redeemed.fee);
  });
});
