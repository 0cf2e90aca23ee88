// The GPU marketplace as users reach it through polkadot.js: a DataNet collects curated
// contributions, an adapter trained on it is registered, a provider registers and bonds, a user
// submits a job, the worker acknowledges and settles it with a receipt signed in JavaScript,
// and the fee is split between provider, adapter owner, the DataNet's contributors and the
// treasury; contributors claim. The failure paths are rejected with named errors and move no
// OPEN.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomAsU8a, ed25519PairFromSeed, ed25519Sign, blake2AsU8a, xxhashAsU8a } from '@polkadot/util-crypto';
import { bnToU8a, stringToU8a, u8aToHex } from '@polkadot/util';
import { startDevNode } from '../lib/node.js';
import { account, connect, devAccounts, sendAndWait } from '../lib/chain.js';
import { NO_COMMITMENT, receiptPayload, signReceipt } from '../lib/receipt.js';
import { callView } from '../lib/view.js';

const OPEN = 10n ** 18n;
const MILLI = OPEN / 1000n;
let ADAPTER;
let DATANET;

function feePaid(api, events) {
  const e = events.find(({ event }) => api.events.transactionPayment.TransactionFeePaid.is(event));
  return e ? e.event.data[1].toBigInt() : 0n;
}

function find(api, events, ev) {
  return events.filter(({ event }) => ev.is(event)).map(({ event }) => event.data);
}

describe('GPU marketplace through polkadot.js', () => {
  let node;
  let api;
  let keys;
  let genesisHash;
  const worker = ed25519PairFromSeed(randomAsU8a(32));
  const stranger = ed25519PairFromSeed(randomAsU8a(32));
  const price = 2n * MILLI; // per 1,000 tokens
  // Bob's worker (Charlie) heartbeats at the start of each test that needs Bob matched: the
  // chain stops matching a provider whose last heartbeat is older than HeartbeatTimeout
  // blocks, which earlier tests' waits can outlast (on the parachain's dev chain, blocks come
  // every 3 s where the runtime counts 6).
  const alive = () => sendAndWait(api, api.tx.compute.heartbeat(keys.bob.address, [ADAPTER], 4), keys.charlie);

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
    keys = devAccounts(api);
    genesisHash = api.genesisHash.toU8a();
  });

  test('a DataNet takes contributions once a curator approves them, and an adapter trained on it registers', async () => {
    const { dave, ferdie, eve, charlie } = keys;
    const created = await sendAndWait(api, api.tx.attribution.createDatanet(u8aToHex(stringToU8a('support tickets'))), dave);
    DATANET = find(api, created.events, api.events.attribution.DataNetCreated)[0].datanet.toNumber();
    await sendAndWait(api, api.tx.attribution.addCurator(DATANET, charlie.address), dave);
    // Ferdie contributes weight 1, Eve weight 3; pending weight earns nothing until approved.
    for (const [who, n, weight] of [[ferdie, 1, 1], [eve, 2, 3]]) {
      const record = blake2AsU8a(`record ${n}`);
      await sendAndWait(api, api.tx.attribution.contribute(DATANET, record, weight), who);
      const ok = await sendAndWait(api, api.tx.attribution.approveContribution(DATANET, record), charlie);
      assert.equal(find(api, ok.events, api.events.attribution.ContributionApproved).length, 1);
    }
    // Only a curator approves: the contributor cannot approve its own record.
    const record = blake2AsU8a('record 3');
    await sendAndWait(api, api.tx.attribution.contribute(DATANET, record, 5), ferdie);
    await assert.rejects(sendAndWait(api, api.tx.attribution.approveContribution(DATANET, record), ferdie), (e) => {
      assert.equal(e.dispatchError, 'attribution.NotCurator');
      return true;
    });
    await sendAndWait(api, api.tx.attribution.rejectContribution(DATANET, record), charlie);
    const net = (await api.query.attribution.dataNets(DATANET)).unwrap();
    assert.equal(net.totalWeight.toBigInt(), 4n);

    const reg = await sendAndWait(api, api.tx.attribution.registerAdapter(
      0, blake2AsU8a('adapter weights'), 16, 0x7f, MILLI, [{ datanet: DATANET, share: 1_000_000 }]), dave);
    ADAPTER = find(api, reg.events, api.events.attribution.AdapterRegistered)[0].adapter.toNumber();
    const terms = (await api.query.attribution.adapters(ADAPTER)).unwrap();
    assert.equal(terms.owner.toString(), dave.address);
    assert.equal(terms.pricePer1k.toBigInt(), MILLI);
  });

  after(async () => {
    if (api) await api.disconnect();
    if (node) await node.stop();
  });

  const terms = () => ({
    spec: { model: 'NVIDIA H100 80GB HBM3', memoryGib: 80, gpuCount: 1, bf16Tflops: 760 },
    region: u8aToHex(stringToU8a('EU')),
    endpoint: { peerId: u8aToHex(randomAsU8a(38)), multiaddrs: [u8aToHex(stringToU8a('/ip4/127.0.0.1/tcp/4001'))] },
    workerKey: u8aToHex(worker.publicKey),
    workerAccount: keys.charlie.address,
    baseModels: [0],
    pricePer1k: price,
    maxConcurrent: 4,
  });

  test('a provider registers with a bond held from its balance, and sends a heartbeat', async () => {
    const { bob, charlie } = keys;
    const bond = 2_000n * OPEN;
    const before = await account(api, bob.address);
    const { events, blockHash } = await sendAndWait(api, api.tx.compute.registerProvider(terms(), bond), bob);
    const [reg] = find(api, events, api.events.compute.ProviderRegistered);
    assert.equal(reg.provider.toString(), bob.address);
    assert.equal(reg.bond.toBigInt(), bond);
    const afterReg = await account(api, bob.address, blockHash);
    assert.equal(afterReg.reserved - before.reserved, bond);
    assert.equal(before.free - afterReg.free, bond + feePaid(api, events));

    // The worker account (Charlie) declares the adapters it serves (matching offers Bob only
    // jobs for these) and reports the ones it has hot.
    const served = await sendAndWait(api, api.tx.compute.setServedAdapters(bob.address, [ADAPTER]), charlie);
    const [declared] = find(api, served.events, api.events.compute.AdaptersServed);
    assert.equal(declared.served.toNumber(), 1);
    assert.ok((await api.query.compute.servedAdapters(bob.address, ADAPTER)).isSome);
    const hb = await sendAndWait(api, api.tx.compute.heartbeat(bob.address, [ADAPTER], 4), charlie);
    assert.equal(find(api, hb.events, api.events.compute.HeartbeatReceived).length, 1);
  });

  test('no provider available: a job whose fee limit is below every price is refused, nothing held', async () => {
    const { dave } = keys;
    // A fee limit of one planck, and of zero.
    for (const maxFee of [1n, 0n]) {
      const before = await account(api, dave.address);
      const tx = api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('prompt'), 1_000, maxFee, u8aToHex(randomAsU8a(38)));
      let failure;
      await assert.rejects(sendAndWait(api, tx, dave), (e) => {
        assert.equal(e.dispatchError, 'jobs.NoProviderAvailable');
        failure = e;
        return true;
      });
      const after = await account(api, dave.address, failure.blockHash);
      assert.equal(after.reserved, before.reserved);
      assert.equal(before.free - after.free, feePaid(api, failure.events), 'only the transaction fee was paid');
    }
  });

  test('insufficient balance: a job whose escrow exceeds the balance is refused, nothing held', async () => {
    const { alice } = keys;
    const poor = ed25519PairFromSeed(randomAsU8a(32));
    const { Keyring } = await import('@polkadot/keyring');
    const kr = new Keyring({ type: 'sr25519', ss58Format: api.registry.chainSS58 });
    const user = kr.addFromUri(`//poor-${Date.now()}`);
    await sendAndWait(api, api.tx.balances.transferKeepAlive(user.address, OPEN), alice);
    // Fifty times the balance, and the largest fee limit the type holds (2^128 - 1).
    for (const maxFee of [50n * OPEN, (1n << 128n) - 1n]) {
      const before = await account(api, user.address);
      const tx = api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('prompt'), 100, maxFee, u8aToHex(poor.publicKey));
      let failure;
      await assert.rejects(sendAndWait(api, tx, user), (e) => {
        assert.match(e.dispatchError, /FundsUnavailable|InsufficientBalance/);
        failure = e;
        return true;
      });
      const after = await account(api, user.address, failure.blockHash);
      assert.equal(after.reserved, 0n);
      assert.equal(before.free - after.free, feePaid(api, failure.events), 'only the transaction fee was paid');
    }
  });

  test('submit, acknowledge and settle with a JS-signed receipt: every payee gets exactly its share', async () => {
    const { alice, bob, charlie, eve } = keys;
    const maxFee = OPEN;
    const inputHash = blake2AsU8a('What is OpenLedger?');

    const aliceBefore = await account(api, alice.address);
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, inputHash, 256, maxFee, u8aToHex(randomAsU8a(38))), alice);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    assert.equal(assigned.provider.toString(), bob.address);
    assert.equal(assigned.escrow.toBigInt(), maxFee);
    const job = assigned.job.toNumber();
    const aliceHeld = await account(api, alice.address, sub.blockHash);
    assert.equal(aliceHeld.reserved - aliceBefore.reserved, maxFee);

    const ack = await sendAndWait(api, api.tx.jobs.acknowledge(job), charlie);
    assert.equal(find(api, ack.events, api.events.jobs.JobAcknowledged).length, 1);

    const fields = {
      genesisHash, job, provider: bob.address, adapter: ADAPTER,
      outputHash: blake2AsU8a('a decentralized AI chain'), inputTokens: 300, outputTokens: 200,
      commitmentHash: blake2AsU8a('the activation commitment'),
    };
    // A receipt signed by a key that is not the provider's worker key is rejected by name.
    const forged = signReceipt(stranger, fields);
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([forged]), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.BadSignature');
      return true;
    });
    // An altered field breaks the signature too.
    const altered = { ...signReceipt(worker, fields), outputTokens: 1 };
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([altered]), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.BadSignature');
      return true;
    });
    // So does a commitment swapped after signing (a worker cannot pick its commitment later).
    const swapped = { ...signReceipt(worker, fields), commitmentHash: blake2AsU8a('another commitment') };
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([swapped]), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.BadSignature');
      return true;
    });

    const bobBefore = await account(api, bob.address);
    const daveBefore = await account(api, keys.dave.address);
    const aliceMid = await account(api, alice.address);
    const receipt = signReceipt(worker, fields);
    const settled = await sendAndWait(api, api.tx.jobs.submitReceipts([receipt]), eve);
    const [done] = find(api, settled.events, api.events.jobs.JobSettled);
    const expected = (500n * (price + MILLI) + 999n) / 1000n; // provider + adapter price
    assert.equal(done.charged.toBigInt(), expected);
    assert.equal(done.refunded.toBigInt(), maxFee - expected);
    assert.deepEqual(done.commitmentHash.toU8a(), fields.commitmentHash, 'the event names the commitment');

    const aliceAfter = await account(api, alice.address, settled.blockHash);
    const bobAfter = await account(api, bob.address, settled.blockHash);
    assert.equal(aliceMid.reserved - aliceAfter.reserved, maxFee);
    assert.equal(aliceAfter.free - aliceMid.free, maxFee - expected);

    // The FeeSplit event names every payee; the amounts sum to the charge and match the
    // balance changes: provider, adapter owner (Dave), the DataNet's contributors, treasury.
    const [split] = find(api, settled.events, api.events.attribution.FeeSplit);
    const payouts = split.payouts.map(([payee, amount]) => [payee.toJSON(), amount.toBigInt()]);
    assert.equal(payouts.reduce((s, [, a]) => s + a, 0n), expected);
    const paid = (kind) => payouts.filter(([p]) => Object.keys(p)[0] === kind).reduce((s, [, a]) => s + a, 0n);
    assert.equal(bobAfter.free - bobBefore.free, paid('provider'));
    const daveAfter = await account(api, keys.dave.address, settled.blockHash);
    assert.equal(daveAfter.free - daveBefore.free, paid('adapterOwner'));
    const toDataNet = paid('trainingDataNet');
    assert.ok(toDataNet > 0n, 'the DataNet got its share');
    // 70% / 10% / 15% / 5% by default (Permill rounding: within a planck).
    assert.ok(paid('provider') * 100n >= expected * 70n - 100n && paid('provider') * 100n <= expected * 70n + 100n);

    // Contributors are owed pro rata to their weights (1 : 3), and claim it.
    const owed = async (who) => (await api.call.attributionApi.pendingRewards(DATANET, who)).toBigInt();
    const [ferdieOwed, eveOwed] = [await owed(keys.ferdie.address), await owed(keys.eve.address)];
    assert.ok(ferdieOwed + eveOwed <= toDataNet && toDataNet - (ferdieOwed + eveOwed) <= 1n);
    assert.ok(eveOwed >= 3n * ferdieOwed && eveOwed <= 3n * ferdieOwed + 3n);
    const eveBefore = await account(api, keys.eve.address);
    const claim = await sendAndWait(api, api.tx.attribution.claimRewards(DATANET), keys.eve);
    const [claimed] = find(api, claim.events, api.events.attribution.RewardsClaimed);
    assert.equal(claimed.amount.toBigInt(), eveOwed);
    const eveAfter = await account(api, keys.eve.address, claim.blockHash);
    assert.equal(eveAfter.free - eveBefore.free, eveOwed - feePaid(api, claim.events));
    assert.equal(await owed(keys.eve.address), 0n);

    // Replaying the same receipt is refused: the job is closed.
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([receipt]), eve), (e) => {
      assert.match(e.dispatchError, /jobs\.(JobClosed|UnknownJob)/);
      return true;
    });
  });

  test('a receipt naming retrieval context pays the context DataNet out of the DataNet portion', async () => {
    const { alice, ferdie, eve, charlie, bob } = keys;
    // Ferdie's DataNet of FAQ records, with one approved contribution by Alice (weight 5).
    const created = await sendAndWait(api, api.tx.attribution.createDatanet(u8aToHex(stringToU8a('faq'))), ferdie);
    const faq = find(api, created.events, api.events.attribution.DataNetCreated)[0].datanet.toNumber();
    const record = blake2AsU8a('faq record');
    await sendAndWait(api, api.tx.attribution.contribute(faq, record, 5), alice);
    await sendAndWait(api, api.tx.attribution.approveContribution(faq, record), ferdie);

    const maxFee = OPEN / 4n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('rag question'), 512, maxFee, u8aToHex(randomAsU8a(38))), eve);
    const job = find(api, sub.events, api.events.jobs.JobAssigned)[0].job.toNumber();
    assert.equal(find(api, sub.events, api.events.jobs.JobAssigned)[0].provider.toString(), bob.address);
    await sendAndWait(api, api.tx.jobs.acknowledge(job), charlie);
    const fields = {
      genesisHash, job, provider: bob.address, adapter: ADAPTER,
      outputHash: blake2AsU8a('an answer from the FAQ'), inputTokens: 4000, outputTokens: 500,
    };
    // Shares above 100% are refused by name; the signature itself is valid.
    const tooMuch = signReceipt(worker, { ...fields, context: [{ datanet: faq, share: 600000 }, { datanet: DATANET, share: 600000 }] });
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([tooMuch]), eve), (e) => {
      assert.equal(e.dispatchError, 'attribution.BadContextShares');
      return true;
    });
    // Context signed as 40% and submitted as 60%: the signature no longer matches.
    const reweighed = { ...signReceipt(worker, { ...fields, context: [{ datanet: faq, share: 400000 }] }), context: [{ datanet: faq, share: 600000 }] };
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([reweighed]), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.BadSignature');
      return true;
    });

    const pendingBefore = (await api.call.attributionApi.pendingRewards(faq, alice.address)).toBigInt();
    assert.equal(pendingBefore, 0n);
    const settled = await sendAndWait(api, api.tx.jobs.submitReceipts([signReceipt(worker, { ...fields, context: [{ datanet: faq, share: 400000 }] })]), eve);
    const [done] = find(api, settled.events, api.events.jobs.JobSettled);
    const charge = done.charged.toBigInt();
    const [split] = find(api, settled.events, api.events.attribution.FeeSplit);
    const payouts = split.payouts.map(([payee, amount]) => [payee.toJSON(), amount.toBigInt()]);
    assert.equal(payouts.reduce((s, [, a]) => s + a, 0n), charge);
    const paidTo = (kind, id) => payouts.filter(([p]) => p[kind] !== undefined && (id === undefined || p[kind] === id)).reduce((s, [, a]) => s + a, 0n);
    // The DataNet portion is 15% of the charge: 40% of it to the FAQ DataNet, the rest to the
    // adapter's training DataNet (100% of what is left), each within Permill rounding.
    const datanetPart = (charge * 15n) / 100n;
    const toContext = paidTo('contextDataNet', faq);
    const toTraining = paidTo('trainingDataNet', DATANET);
    assert.ok(toContext > 0n && toTraining > 0n);
    assert.ok(toContext * 10n >= datanetPart * 4n - 10n && toContext * 10n <= datanetPart * 4n + 10n, `context ${toContext} of ${datanetPart}`);
    assert.ok(toContext + toTraining <= datanetPart + 2n && datanetPart - (toContext + toTraining) <= 2n);
    // Alice, the FAQ's only contributor, is owed the context share (less under a planck of dust).
    const pending = (await api.call.attributionApi.pendingRewards(faq, alice.address)).toBigInt();
    assert.ok(pending <= toContext && toContext - pending <= 1n, `pending ${pending} of ${toContext}`);
  });

  test('a client that knows only the metadata gets the bytes to sign from the chain, and its receipt settles', async () => {
    await alive();
    const { alice, bob, charlie, eve } = keys;
    // The reads a client makes, through the view functions, agree with the runtime APIs.
    const quote = (await callView(api, 'Jobs', 'quote', [ADAPTER, 64])).unwrap();
    const apiQuote = (await api.call.jobsApi.quote(ADAPTER, 64)).unwrap();
    assert.equal(quote.provider.toString(), bob.address);
    assert.equal(quote.minMaxFee.toBigInt(), apiQuote.minMaxFee.toBigInt());
    const offer = (await callView(api, 'Compute', 'provider_offer', [bob.address, 0, ADAPTER])).unwrap();
    assert.equal(offer.pricePer1k.toBigInt(), price);
    assert.ok((await callView(api, 'Compute', 'provider', [bob.address])).unwrap().eligible.isTrue);

    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('sign from metadata'), 64, quote.minMaxFee.toBigInt() * 10n, u8aToHex(randomAsU8a(38))), alice);
    const job = find(api, sub.events, api.events.jobs.JobAssigned)[0].job.toNumber();
    const status = await callView(api, 'Jobs', 'job_status', [job]);
    assert.ok(status.isOpen && status.asOpen.provider.toString() === bob.address);
    await sendAndWait(api, api.tx.jobs.acknowledge(job), charlie);

    const outputHash = blake2AsU8a('an answer signed from the metadata');
    const context = [{ datanet: DATANET, share: 250_000 }];
    const commitmentHash = blake2AsU8a('activations of the answer');
    const bytes = (await callView(api, 'Jobs', 'receipt_signing_payload', [job, outputHash, 12, 34, context, commitmentHash])).unwrap().toU8a(true);
    // Exactly the bytes of the documented layout (what lib/receipt.js builds by hand).
    assert.deepEqual(bytes, receiptPayload({
      genesisHash, job, provider: bob.address, adapter: ADAPTER, outputHash, inputTokens: 12, outputTokens: 34, context, commitmentHash,
    }));
    // A job that does not exist has nothing to sign.
    assert.ok((await callView(api, 'Jobs', 'receipt_signing_payload', [job + 1000, outputHash, 12, 34, [], NO_COMMITMENT])).isNone);

    const receipt = { job, outputHash, inputTokens: 12, outputTokens: 34, context, commitmentHash, signature: ed25519Sign(bytes, worker) };
    const settled = await sendAndWait(api, api.tx.jobs.submitReceipts([receipt]), eve);
    const [done] = find(api, settled.events, api.events.jobs.JobSettled);
    assert.equal(done.job.toNumber(), job);
    assert.equal(done.charged.toBigInt(), (46n * (price + MILLI) + 999n) / 1000n);
    assert.ok((await callView(api, 'Jobs', 'job_status', [job])).isClosed);

    // Pending rewards read through the view function equal the runtime API's.
    const viaView = (await callView(api, 'Attribution', 'pending_rewards', [DATANET, keys.ferdie.address])).toBigInt();
    const viaApi = (await api.call.attributionApi.pendingRewards(DATANET, keys.ferdie.address)).toBigInt();
    assert.equal(viaView, viaApi);
    assert.ok(viaView > 0n);
  });

  test('a receipt or acknowledgement from another provider\'s worker is refused; no OPEN moves', async () => {
    await alive();
    const { alice, eve, bob, charlie } = keys;
    // A second provider with its own worker key and account, priced far above every job here
    // so the matcher never picks it.
    const { Keyring } = await import('@polkadot/keyring');
    const kr = new Keyring({ type: 'sr25519', ss58Format: api.registry.chainSS58 });
    const rival = kr.addFromUri(`//rival-${Date.now()}`);
    const rivalWorker = ed25519PairFromSeed(randomAsU8a(32));
    await sendAndWait(api, api.tx.balances.transferKeepAlive(rival.address, 3_000n * OPEN), alice);
    const rivalTerms = { ...terms(), workerKey: u8aToHex(rivalWorker.publicKey), workerAccount: rival.address, pricePer1k: 1_000n * OPEN };
    await sendAndWait(api, api.tx.compute.registerProvider(rivalTerms, 2_000n * OPEN), rival);

    const maxFee = OPEN / 4n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('whose job?'), 128, maxFee, u8aToHex(randomAsU8a(38))), alice);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    assert.equal(assigned.provider.toString(), bob.address);
    const job = assigned.job.toNumber();
    const watched = [alice, bob, rival].map((k) => k.address);
    const snapshot = async (at) => Promise.all(watched.map((who) => account(api, who, at)));

    // The rival's worker account cannot acknowledge Bob's job; it pays only the fee.
    const rivalBefore = await account(api, rival.address);
    let refused;
    await assert.rejects(sendAndWait(api, api.tx.jobs.acknowledge(job), rival), (e) => {
      assert.equal(e.dispatchError, 'jobs.NotAssignedWorker');
      refused = e;
      return true;
    });
    const rivalAfter = await account(api, rival.address, refused.blockHash);
    assert.equal(rivalBefore.free - rivalAfter.free, feePaid(api, refused.events));
    assert.equal(rivalAfter.reserved, rivalBefore.reserved);
    const ack = await sendAndWait(api, api.tx.jobs.acknowledge(job), charlie);
    const before = await snapshot(ack.blockHash);
    const fields = {
      genesisHash, job, provider: bob.address, adapter: ADAPTER,
      outputHash: blake2AsU8a('not yours'), inputTokens: 10, outputTokens: 20,
    };
    // Signed by the rival's registered worker key, naming Bob or naming the rival: neither
    // verifies against the job's provider's key.
    for (const provider of [bob.address, rival.address]) {
      const wrong = signReceipt(rivalWorker, { ...fields, provider });
      const eveBefore = await account(api, eve.address);
      let failure;
      await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([wrong]), eve), (e) => {
        assert.equal(e.dispatchError, 'jobs.BadSignature');
        failure = e;
        return true;
      });
      const eveAfter = await account(api, eve.address, failure.blockHash);
      assert.equal(eveBefore.free - eveAfter.free, feePaid(api, failure.events), 'the submitter paid only its fee');
      const now = await snapshot(failure.blockHash);
      // Alice's escrow is still held, and neither provider was paid.
      assert.deepEqual(now, before);
    }
    // The job is still open and Bob's worker settles it.
    const settled = await sendAndWait(api, api.tx.jobs.submitReceipts([signReceipt(worker, fields)]), eve);
    assert.equal(find(api, settled.events, api.events.jobs.JobSettled).length, 1);
  });

  async function waitPast(deadline) {
    for (;;) {
      const head = (await api.rpc.chain.getHeader()).number.toNumber();
      if (head > deadline) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  test('a worker refuses a job it cannot serve: the whole escrow comes back, no slash, no fee', async () => {
    await alive();
    const { ferdie, bob, charlie } = keys;
    const maxFee = OPEN / 2n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('too long'), 64, maxFee, u8aToHex(randomAsU8a(38))), ferdie);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    const job = assigned.job.toNumber();
    const [ferdieBefore, bobBefore, charlieBefore] = await Promise.all([ferdie, bob, charlie].map((k) => account(api, k.address)));
    const res = await sendAndWait(api, api.tx.jobs.refuse(job, 'PromptTooLong'), charlie);
    const [refused] = find(api, res.events, api.events.jobs.JobRefused);
    assert.equal(refused.reason.toString(), 'PromptTooLong');
    assert.equal(refused.refunded.toBigInt(), maxFee);
    const [ferdieAfter, bobAfter, charlieAfter] = await Promise.all([ferdie, bob, charlie].map((k) => account(api, k.address, res.blockHash)));
    assert.equal(ferdieBefore.reserved - ferdieAfter.reserved, maxFee);
    assert.equal(ferdieAfter.free - ferdieBefore.free, maxFee, 'every planck of the escrow is back');
    assert.equal(bobAfter.reserved, bobBefore.reserved, 'no slash');
    assert.equal(charlieAfter.free, charlieBefore.free, 'a successful refusal costs the worker no fee');
    assert.equal((await api.call.jobsApi.jobStatus(job)).isClosed, true);
  });

  test('an unacknowledged job past its deadline expires: full refund, reputation lost, no slash', async () => {
    const { ferdie, eve, bob, charlie } = keys;
    await sendAndWait(api, api.tx.compute.heartbeat(bob.address, [ADAPTER], 4), charlie);
    const maxFee = OPEN / 2n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('never taken'), 64, maxFee, u8aToHex(randomAsU8a(38))), ferdie);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    const job = assigned.job.toNumber();

    // Too early: refused by name.
    await assert.rejects(sendAndWait(api, api.tx.jobs.expire(job), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.NotExpired');
      return true;
    });
    await waitPast(assigned.deadline.toNumber());
    const [ferdieBefore, bobBefore, eveBefore] = await Promise.all([ferdie, bob, eve].map((k) => account(api, k.address)));
    const res = await sendAndWait(api, api.tx.jobs.expire(job), eve);
    const [expired] = find(api, res.events, api.events.jobs.JobExpired);
    assert.equal(expired.refunded.toBigInt(), maxFee);
    assert.equal(expired.slashed.toBigInt(), 0n);
    const [ferdieAfter, bobAfter, eveAfter] = await Promise.all([ferdie, bob, eve].map((k) => account(api, k.address, res.blockHash)));
    assert.equal(ferdieAfter.free - ferdieBefore.free, maxFee);
    assert.equal(bobAfter.reserved, bobBefore.reserved, 'no slash for a job never acknowledged');
    assert.equal(eveAfter.free, eveBefore.free, 'a successful expiry costs the keeper no fee');
  });

  test('an acknowledged job without a receipt by its deadline expires: full refund and the bond slash go to the user', async () => {
    const { ferdie, eve, bob, charlie } = keys;
    // Governance shortens the receipt deadline to 4 blocks for jobs acknowledged from now on.
    const key = xxhashAsU8a(':JobReceiptTimeout:', 128);
    const set = api.tx.system.setStorage([[u8aToHex(key), u8aToHex(bnToU8a(4, { bitLength: 32, isLe: true }))]]);
    await sendAndWait(api, api.tx.sudo.sudo(set), keys.alice);
    // Bob's worker is still alive (a heartbeat keeps it eligible after the waits above).
    await sendAndWait(api, api.tx.compute.heartbeat(bob.address, [ADAPTER], 4), charlie);
    const maxFee = OPEN / 2n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('late'), 64, maxFee, u8aToHex(randomAsU8a(38))), ferdie);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    const job = assigned.job.toNumber();
    const ack = await sendAndWait(api, api.tx.jobs.acknowledge(job), charlie);
    const [acked] = find(api, ack.events, api.events.jobs.JobAcknowledged);
    await waitPast(acked.deadline.toNumber());

    const ferdieBefore = await account(api, ferdie.address);
    const bobBefore = await account(api, bob.address);
    const res = await sendAndWait(api, api.tx.jobs.expire(job), eve);
    const [expired] = find(api, res.events, api.events.jobs.JobExpired);
    assert.equal(expired.refunded.toBigInt(), maxFee);
    const slashed = expired.slashed.toBigInt();
    assert.ok(slashed > 0n);
    const ferdieAfter = await account(api, ferdie.address, res.blockHash);
    const bobAfter = await account(api, bob.address, res.blockHash);
    assert.equal(ferdieBefore.reserved - ferdieAfter.reserved, maxFee);
    assert.equal(ferdieAfter.free - ferdieBefore.free, maxFee + slashed);
    assert.equal(bobBefore.reserved - bobAfter.reserved, slashed);
    assert.equal(bobAfter.free, bobBefore.free);
  });
});
