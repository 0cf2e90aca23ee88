// The rest of Proof of Attribution's calls as a user reaches them through polkadot.js:
// curators removed, contributions withdrawn (deposit back), adapter prices updated and
// adapters retired (deposit back, no new jobs), and the fee split changed by governance
// (sudo), an invalid split refused by name.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { blake2AsU8a } from '@polkadot/util-crypto';
import { stringToU8a, u8aToHex } from '@polkadot/util';
import { startDevNode } from '../lib/node.js';
import { connect, devAccounts, sendAndWait } from '../lib/chain.js';

const OPEN = 10n ** 18n;
const MILLI = OPEN / 1000n;

async function reserved(api, who) {
  return (await api.query.system.account(who)).data.reserved.toBigInt();
}

function find(api, events, ev) {
  return events.filter(({ event }) => ev.is(event)).map(({ event }) => event.data);
}

async function rejectsWith(promise, name) {
  await assert.rejects(promise, (e) => {
    assert.equal(e.dispatchError, name);
    return true;
  });
}

describe('attribution lifecycle through polkadot.js', () => {
  let node;
  let api;
  let keys;

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
    keys = devAccounts(api);
  });

  after(async () => {
    if (api) await api.disconnect();
    if (node) await node.stop();
  });

  test('a removed curator can no longer approve; a withdrawn contribution returns its deposit', async () => {
    const { dave, charlie, ferdie } = keys;
    const created = await sendAndWait(api, api.tx.attribution.createDatanet(u8aToHex(stringToU8a('papers'))), dave);
    const datanet = find(api, created.events, api.events.attribution.DataNetCreated)[0].datanet.toNumber();
    await sendAndWait(api, api.tx.attribution.addCurator(datanet, charlie.address), dave);
    await sendAndWait(api, api.tx.attribution.removeCurator(datanet, charlie.address), dave);
    await rejectsWith(sendAndWait(api, api.tx.attribution.removeCurator(datanet, charlie.address), dave), 'attribution.NotACurator');

    const held = await reserved(api, ferdie.address);
    const record = blake2AsU8a('paper 1');
    await sendAndWait(api, api.tx.attribution.contribute(datanet, record, 2), ferdie);
    const deposit = (await reserved(api, ferdie.address)) - held;
    assert.ok(deposit > 0n, 'a contribution holds a deposit');
    await rejectsWith(sendAndWait(api, api.tx.attribution.approveContribution(datanet, record), charlie), 'attribution.NotCurator');
    await sendAndWait(api, api.tx.attribution.approveContribution(datanet, record), dave);
    const info = (await api.query.attribution.dataNets(datanet)).unwrap();
    assert.equal(info.totalWeight.toBigInt(), 2n);

    // Only the contributor or a curator may remove it; removing returns the deposit and the weight.
    await rejectsWith(sendAndWait(api, api.tx.attribution.removeContribution(datanet, record), charlie), 'attribution.NotContributorOrCurator');
    await sendAndWait(api, api.tx.attribution.removeContribution(datanet, record), ferdie);
    assert.equal(await reserved(api, ferdie.address), held);
    assert.equal((await api.query.attribution.dataNets(datanet)).unwrap().totalWeight.toBigInt(), 0n);
    await rejectsWith(sendAndWait(api, api.tx.attribution.removeContribution(datanet, record), ferdie), 'attribution.UnknownRecord');
  });

  test('an adapter owner updates its price and retires it: deposit back, no new jobs', async () => {
    const { eve, dave, alice } = keys;
    const held = await reserved(api, eve.address);
    const reg = await sendAndWait(api, api.tx.attribution.registerAdapter(0, blake2AsU8a('weights'), 8, 0b101, MILLI, []), eve);
    const adapter = find(api, reg.events, api.events.attribution.AdapterRegistered)[0].adapter.toNumber();
    assert.ok((await reserved(api, eve.address)) > held, 'registration holds a deposit');

    await rejectsWith(sendAndWait(api, api.tx.attribution.updateAdapterPrice(adapter, 5n * MILLI), dave), 'attribution.NotAdapterOwner');
    await sendAndWait(api, api.tx.attribution.updateAdapterPrice(adapter, 5n * MILLI), eve);
    assert.equal((await api.query.attribution.adapters(adapter)).unwrap().pricePer1k.toBigInt(), 5n * MILLI);

    await sendAndWait(api, api.tx.attribution.retireAdapter(adapter), eve);
    assert.equal(await reserved(api, eve.address), held, 'retiring returns the deposit');
    assert.ok((await api.query.attribution.adapters(adapter)).unwrap().retired.isTrue, 'the record stays, retired');
    await rejectsWith(sendAndWait(api, api.tx.attribution.retireAdapter(adapter), eve), 'attribution.AdapterRetired');
    await rejectsWith(
      sendAndWait(api, api.tx.jobs.submitJob(adapter, blake2AsU8a('x'), 8, OPEN, u8aToHex(stringToU8a('gw'))), alice),
      'jobs.UnknownAdapter',
    );
  });

  test('governance sets the fee split; a split not summing to 100% is refused by name', async () => {
    const { alice, bob } = keys;
    const split = { provider: 600000, adapterOwner: 200000, datanets: 150000, treasury: 50000 };
    // Not root: refused.
    await rejectsWith(sendAndWait(api, api.tx.attribution.setSplit(split), bob), 'BadOrigin');
    const res = await sendAndWait(api, api.tx.sudo.sudo(api.tx.attribution.setSplit(split)), alice);
    assert.equal(find(api, res.events, api.events.attribution.SplitUpdated).length, 1);
    const stored = await api.query.attribution.split();
    assert.equal(stored.provider.toNumber(), 600000);
    assert.equal(stored.adapterOwner.toNumber(), 200000);

    const bad = await sendAndWait(api, api.tx.sudo.sudo(api.tx.attribution.setSplit({ ...split, treasury: 60000 })), alice);
    const [sudid] = find(api, bad.events, api.events.sudo.Sudid);
    assert.ok(sudid.sudoResult.isErr);
    const meta = api.registry.findMetaError(sudid.sudoResult.asErr.asModule);
    assert.equal(`${meta.section}.${meta.name}`, 'attribution.BadSplit');
    assert.equal((await api.query.attribution.split()).provider.toNumber(), 600000, 'unchanged');
  });
});
