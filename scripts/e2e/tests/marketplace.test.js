// The GPU marketplace as users reach it through polkadot.js: a provider registers and bonds,
// a user submits a job, the worker acknowledges and settles it with a receipt signed in
// JavaScript; the failure paths are rejected with named errors and move no OPEN.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomAsU8a, ed25519PairFromSeed, blake2AsU8a } from '@polkadot/util-crypto';
import { stringToU8a, u8aToHex } from '@polkadot/util';
import { startDevNode } from '../lib/node.js';
import { connect, devAccounts, sendAndWait } from '../lib/chain.js';
import { signReceipt } from '../lib/receipt.js';

const OPEN = 10n ** 18n;
const MILLI = OPEN / 1000n;
const ADAPTER = 7;

async function account(api, who, at) {
  const q = at ? await api.at(at) : api;
  const { data } = await q.query.system.account(who);
  return { free: data.free.toBigInt(), reserved: data.reserved.toBigInt() };
}

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

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
    keys = devAccounts(api);
    genesisHash = api.genesisHash.toU8a();
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

    // The worker account (Charlie) reports the adapters it has hot.
    const hb = await sendAndWait(api, api.tx.compute.heartbeat(bob.address, [ADAPTER], 4), charlie);
    assert.equal(find(api, hb.events, api.events.compute.HeartbeatReceived).length, 1);
  });

  test('no provider available: a job whose fee limit is below every price is refused, nothing held', async () => {
    const { dave } = keys;
    const before = await account(api, dave.address);
    const tx = api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('prompt'), 1_000, 1n, u8aToHex(randomAsU8a(38)));
    let failure;
    await assert.rejects(sendAndWait(api, tx, dave), (e) => {
      assert.equal(e.dispatchError, 'jobs.NoProviderAvailable');
      failure = e;
      return true;
    });
    const after = await account(api, dave.address, failure.blockHash);
    assert.equal(after.reserved, before.reserved);
    assert.equal(before.free - after.free, feePaid(api, failure.events), 'only the transaction fee was paid');
  });

  test('insufficient balance: a job whose escrow exceeds the balance is refused, nothing held', async () => {
    const { alice } = keys;
    const poor = ed25519PairFromSeed(randomAsU8a(32));
    const { Keyring } = await import('@polkadot/keyring');
    const kr = new Keyring({ type: 'sr25519', ss58Format: api.registry.chainSS58 });
    const user = kr.addFromUri(`//poor-${Date.now()}`);
    await sendAndWait(api, api.tx.balances.transferKeepAlive(user.address, OPEN), alice);
    const before = await account(api, user.address);
    const tx = api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('prompt'), 100, 50n * OPEN, u8aToHex(poor.publicKey));
    let failure;
    await assert.rejects(sendAndWait(api, tx, user), (e) => {
      assert.match(e.dispatchError, /FundsUnavailable|InsufficientBalance/);
      failure = e;
      return true;
    });
    const after = await account(api, user.address, failure.blockHash);
    assert.equal(after.reserved, 0n);
    assert.equal(before.free - after.free, feePaid(api, failure.events), 'only the transaction fee was paid');
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

    const bobBefore = await account(api, bob.address);
    const aliceMid = await account(api, alice.address);
    const receipt = signReceipt(worker, fields);
    const settled = await sendAndWait(api, api.tx.jobs.submitReceipts([receipt]), eve);
    const [done] = find(api, settled.events, api.events.jobs.JobSettled);
    const expected = (500n * price + 999n) / 1000n;
    assert.equal(done.charged.toBigInt(), expected);
    assert.equal(done.refunded.toBigInt(), maxFee - expected);

    const aliceAfter = await account(api, alice.address, settled.blockHash);
    const bobAfter = await account(api, bob.address, settled.blockHash);
    assert.equal(aliceMid.reserved - aliceAfter.reserved, maxFee);
    assert.equal(aliceAfter.free - aliceMid.free, maxFee - expected);
    assert.equal(bobAfter.free - bobBefore.free, expected);

    // Replaying the same receipt is refused: the job is closed.
    await assert.rejects(sendAndWait(api, api.tx.jobs.submitReceipts([receipt]), eve), (e) => {
      assert.match(e.dispatchError, /jobs\.(JobClosed|UnknownJob)/);
      return true;
    });
  });

  test('a job without a receipt by its deadline expires: full refund and the bond slash go to the user', async () => {
    const { ferdie, eve, bob } = keys;
    const maxFee = OPEN / 2n;
    const sub = await sendAndWait(api, api.tx.jobs.submitJob(ADAPTER, blake2AsU8a('late'), 64, maxFee, u8aToHex(randomAsU8a(38))), ferdie);
    const [assigned] = find(api, sub.events, api.events.jobs.JobAssigned);
    const job = assigned.job.toNumber();
    const deadline = assigned.deadline.toNumber();

    // Too early: refused by name.
    await assert.rejects(sendAndWait(api, api.tx.jobs.expire(job), eve), (e) => {
      assert.equal(e.dispatchError, 'jobs.NotExpired');
      return true;
    });

    for (;;) {
      const head = (await api.rpc.chain.getHeader()).number.toNumber();
      if (head > deadline) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
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
