// A provider's lifecycle through polkadot.js (update, bond more, unregister, the unbonding
// wait), and bad input through RPC: a malformed extrinsic, an oversize bounded field, a fee the
// sender cannot pay. Each is refused by name, the node keeps producing blocks, no OPEN moves.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomAsU8a, ed25519PairFromSeed, xxhashAsU8a } from '@polkadot/util-crypto';
import { bnToU8a, stringToU8a, u8aToHex } from '@polkadot/util';
import { startDevNode } from '../lib/node.js';
import { account, connect, devAccounts, sendAndWait } from '../lib/chain.js';

const OPEN = 10n ** 18n;
const MILLI = OPEN / 1000n;

function find(api, events, ev) {
  return events.filter(({ event }) => ev.is(event)).map(({ event }) => event.data);
}

async function head(api) {
  return (await api.rpc.chain.getHeader()).number.toNumber();
}

async function waitForBlocks(api, n) {
  const start = await head(api);
  for (;;) {
    if ((await head(api)) >= start + n) return;
    await new Promise((r) => setTimeout(r, 500));
  }
}

describe('provider lifecycle and bad input through polkadot.js', () => {
  let node;
  let api;
  let keys;
  const worker = ed25519PairFromSeed(randomAsU8a(32));

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
    keys = devAccounts(api);
  });

  after(async () => {
    if (api) await api.disconnect();
    if (node) await node.stop();
  });

  const terms = (price) => ({
    spec: { model: 'NVIDIA H200', memoryGib: 141, gpuCount: 1, bf16Tflops: 990 },
    region: u8aToHex(stringToU8a('US')),
    endpoint: { peerId: u8aToHex(randomAsU8a(38)), multiaddrs: [u8aToHex(stringToU8a('/ip4/127.0.0.1/tcp/4002'))] },
    workerKey: u8aToHex(worker.publicKey),
    workerAccount: keys.eve.address,
    baseModels: [0],
    pricePer1k: price,
    maxConcurrent: 2,
  });

  test('register, update terms, bond more, unregister: bonds move exactly, the unbonding wait is enforced', async () => {
    const { ferdie, dave } = keys;
    const bond = 1_500n * OPEN;
    await sendAndWait(api, api.tx.compute.registerProvider(terms(3n * MILLI), bond), ferdie);

    const upd = await sendAndWait(api, api.tx.compute.updateProvider(terms(5n * MILLI)), ferdie);
    assert.equal(find(api, upd.events, api.events.compute.ProviderUpdated).length, 1);
    const stored = (await api.query.compute.providers(ferdie.address)).unwrap();
    assert.equal(stored.pricePer1k.toBigInt(), 5n * MILLI);

    await assert.rejects(sendAndWait(api, api.tx.compute.bondExtra(0), ferdie), (e) => {
      assert.equal(e.dispatchError, 'compute.ZeroAmount');
      return true;
    });
    const before = await account(api, ferdie.address);
    const more = await sendAndWait(api, api.tx.compute.bondExtra(100n * OPEN), ferdie);
    const [bonded] = find(api, more.events, api.events.compute.Bonded);
    assert.equal(bonded.bond.toBigInt(), bond + 100n * OPEN);
    const after = await account(api, ferdie.address, more.blockHash);
    assert.equal(after.reserved - before.reserved, 100n * OPEN);

    // Only the operator or its worker account may send heartbeats.
    await assert.rejects(sendAndWait(api, api.tx.compute.heartbeat(ferdie.address, [], 1), dave), (e) => {
      assert.equal(e.dispatchError, 'compute.NotAuthorised');
      return true;
    });
    // Withdrawing before unregistering, or before the unbonding period ends, is refused.
    await assert.rejects(sendAndWait(api, api.tx.compute.withdrawUnbonded(), ferdie), (e) => {
      assert.equal(e.dispatchError, 'compute.NotLeaving');
      return true;
    });
    // Governance (sudo on the dev chain) shortens the 7-day unbonding period to 4 blocks for
    // providers that unregister from now on: the runtime keeps it under a well-known key.
    const periodKey = xxhashAsU8a(':ProviderUnbondingPeriod:', 128);
    const setPeriod = api.tx.system.setStorage([[u8aToHex(periodKey), u8aToHex(bnToU8a(4, { bitLength: 32, isLe: true }))]]);
    await sendAndWait(api, api.tx.sudo.sudo(setPeriod), keys.alice);
    const un = await sendAndWait(api, api.tx.compute.unregister(), ferdie);
    const [left] = find(api, un.events, api.events.compute.ProviderUnregistered);
    const unbondsAt = left.unbondsAt.toNumber();
    const unregisteredAt = (await api.rpc.chain.getHeader(un.blockHash)).number.toNumber();
    assert.equal(unbondsAt, unregisteredAt + 4);
    await assert.rejects(sendAndWait(api, api.tx.compute.withdrawUnbonded(), ferdie), (e) => {
      assert.equal(e.dispatchError, 'compute.StillUnbonding');
      return true;
    });
    const still = await account(api, ferdie.address);
    assert.equal(still.reserved, after.reserved, 'the bond stays held while unbonding');

    // Once the period has passed the whole bond comes back, and the provider is gone.
    while ((await head(api)) < unbondsAt) await new Promise((r) => setTimeout(r, 500));
    const out = await sendAndWait(api, api.tx.compute.withdrawUnbonded(), ferdie);
    const [withdrawn] = find(api, out.events, api.events.compute.Withdrawn);
    assert.equal(withdrawn.amount.toBigInt(), bond + 100n * OPEN);
    const released = await account(api, ferdie.address, out.blockHash);
    assert.equal(still.reserved - released.reserved, bond + 100n * OPEN);
    assert.ok((await api.query.compute.providers(ferdie.address)).isNone);
    await sendAndWait(api, api.tx.sudo.sudo(api.tx.system.killStorage([u8aToHex(periodKey)])), keys.alice);
  });

  test('a malformed extrinsic is rejected by RPC and the node keeps producing blocks', async () => {
    // Raw JSON-RPC: polkadot.js would refuse to encode these bytes itself.
    const { WsProvider } = await import('@polkadot/api');
    const raw = new WsProvider(node.wsUrl);
    await raw.isReady;
    try {
      await assert.rejects(raw.send('author_submitExtrinsic', ['0x1234deadbeef']), /decode|Invalid|1002/i);
    } finally {
      await raw.disconnect();
    }
    await waitForBlocks(api, 2);
  });

  test('an oversize bounded field is refused before it reaches a block; nothing is charged', async () => {
    const { bob } = keys;
    const before = await account(api, bob.address);
    // DataNet metadata is bounded to 256 bytes: 257 do not decode as the call's argument.
    const tx = api.tx.attribution.createDatanet(u8aToHex(new Uint8Array(257).fill(65)));
    await assert.rejects(sendAndWait(api, tx, bob), /Could not decode|Invalid|1002|decode/i);
    await waitForBlocks(api, 1);
    const after = await account(api, bob.address);
    assert.deepEqual(after, before);
  });

  test('a fee the sender cannot pay is refused by the pool; balances unchanged', async () => {
    const { alice, charlie } = keys;
    const before = await account(api, charlie.address);
    const transfer = api.tx.balances.transferKeepAlive(alice.address, OPEN);
    // A tip above the whole balance: the transaction cannot pay its fee.
    await assert.rejects(
      transfer.signAndSend(charlie, { tip: before.free + OPEN }),
      /Inability to pay some fees|1010|Invalid Transaction/i,
    );
    await waitForBlocks(api, 1);
    assert.deepEqual(await account(api, charlie.address), before);
  });
});
