// Payment channels through polkadot.js: a payer opens a channel to a provider with a deposit
// and an ed25519 signer key held in JavaScript (as a gateway would), tops it up, and the
// provider redeems vouchers signed in JavaScript; each redemption is split per adapter through
// attribution exactly as a job's charge, reconciled to the planck across payer, provider,
// adapter owner, DataNets and treasury. Every bad voucher is refused with a named error and
// moves no OPEN but the sender's fee. The payer rotates the signer and closes through the
// challenge window (the provider redeems within it); a provider closes at once.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { blake2AsU8a, ed25519PairFromSeed, ed25519Sign, encodeAddress, randomAsU8a, xxhashAsU8a } from '@polkadot/util-crypto';
import { bnToU8a, stringToU8a, u8aConcat, u8aToHex } from '@polkadot/util';
import { startDevNode } from '../lib/node.js';
import { account, connect, devAccounts, sendAndWait } from '../lib/chain.js';
import { signVoucher, voucherPayload } from '../lib/voucher.js';
import { callView } from '../lib/view.js';

const OPEN = 10n ** 18n;

function find(api, events, ev) {
  return events.filter(({ event }) => ev.is(event)).map(({ event }) => event.data);
}

function feePaid(api, events) {
  const e = events.find(({ event }) => api.events.transactionPayment.TransactionFeePaid.is(event));
  return e ? e.event.data[1].toBigInt() : 0n;
}

async function datanetBalance(api, id, at) {
  const q = at ? await api.at(at) : api;
  return (await q.query.attribution.dataNets(id)).unwrap().balance.toBigInt();
}

async function waitForBlock(api, number) {
  for (;;) {
    const head = await api.rpc.chain.getHeader();
    if (head.number.toNumber() >= number) return;
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Sends `tx` expecting `error`; returns the fee it cost and the block it failed in. */
async function rejected(api, tx, signer, error) {
  let failure;
  await assert.rejects(sendAndWait(api, tx, signer), (e) => {
    assert.equal(e.dispatchError, error);
    failure = e;
    return true;
  });
  return { fee: feePaid(api, failure.events), blockHash: failure.blockHash };
}

describe('payment channels through polkadot.js', () => {
  let node;
  let api;
  let keys;
  let genesisHash;
  let treasury;
  let adapter;
  let training;
  let context;
  let channel;
  const signer = ed25519PairFromSeed(randomAsU8a(32));
  const nextSigner = ed25519PairFromSeed(randomAsU8a(32));
  const deposit = 10n * OPEN;

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
    keys = devAccounts(api);
    genesisHash = api.genesisHash.toU8a();
    // The treasury: the account of PalletId `ol/trsry` ("modl" ++ id, zero-padded).
    treasury = encodeAddress(u8aConcat(stringToU8a('modl'), stringToU8a('ol/trsry'), new Uint8Array(20)), api.registry.chainSS58);
    // Dave owns a training DataNet and a context DataNet (one approved record each) and an
    // adapter trained on the first.
    const { dave, eve } = keys;
    const ids = [];
    for (const name of ['training set', 'wiki']) {
      const created = await sendAndWait(api, api.tx.attribution.createDatanet(u8aToHex(stringToU8a(name))), dave);
      const id = find(api, created.events, api.events.attribution.DataNetCreated)[0].datanet.toNumber();
      const record = blake2AsU8a(`${name} record`);
      await sendAndWait(api, api.tx.attribution.contribute(id, record, 1), eve);
      await sendAndWait(api, api.tx.attribution.approveContribution(id, record), dave);
      ids.push(id);
    }
    [training, context] = ids;
    const reg = await sendAndWait(api, api.tx.attribution.registerAdapter(
      0, blake2AsU8a('channel adapter'), 16, 0x7f, OPEN / 1000n, [{ datanet: training, share: 1_000_000 }]), dave);
    adapter = find(api, reg.events, api.events.attribution.AdapterRegistered)[0].adapter.toNumber();
  });

  after(async () => {
    if (api) await api.disconnect();
    if (node) await node.stop();
  });

  const sign = (fields, pair = signer) => signVoucher(pair, { genesisHash, channel, inferences: 10_000, receiptsRoot: blake2AsU8a(`root ${fields.sequence}`), ...fields });
  const redeemTx = ({ voucher, signature }) => api.tx.channels.redeem(voucher, u8aToHex(signature));

  test('the voucher payload is the 157 bytes documented in primitives/src/voucher.rs', () => {
    const bytes = voucherPayload({
      genesisHash: new Uint8Array(32).fill(0xaa), channel: 0x0102030405060708n, sequence: 2n,
      cumulative: 5n, inferences: 1_000_000n, receiptsRoot: new Uint8Array(32).fill(0xbb),
      adapters: [{ adapter: 7, amount: 5n }], contexts: [],
    });
    assert.equal(bytes.length, 157);
    assert.deepEqual([...bytes.slice(0, 21)], [...stringToU8a('openledger/voucher/v1')]);
    assert.deepEqual([...bytes.slice(53, 61)], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert.deepEqual([...bytes.slice(69, 85)], [5, ...new Array(15).fill(0)]);
  });

  test('a payer opens a channel with a deposit held from its balance, and tops it up', async () => {
    const { ferdie, bob } = keys;
    const before = await account(api, ferdie.address);
    const opened = await sendAndWait(api, api.tx.channels.open(bob.address, deposit, u8aToHex(signer.publicKey)), ferdie);
    const [ev] = find(api, opened.events, api.events.channels.ChannelOpened);
    channel = ev.channel.toNumber();
    assert.equal(ev.provider.toString(), bob.address);
    assert.equal(ev.deposit.toBigInt(), deposit);
    assert.equal(u8aToHex(ev.signer), u8aToHex(signer.publicKey));
    const mid = await account(api, ferdie.address, opened.blockHash);
    assert.equal(mid.reserved - before.reserved, deposit);
    assert.equal(before.free - mid.free, deposit + feePaid(api, opened.events));

    const topped = await sendAndWait(api, api.tx.channels.topUp(channel, 5n * OPEN), ferdie);
    const [up] = find(api, topped.events, api.events.channels.ChannelToppedUp);
    assert.equal(up.deposit.toBigInt(), deposit + 5n * OPEN);
    const last = await account(api, ferdie.address, topped.blockHash);
    assert.equal(last.reserved - mid.reserved, 5n * OPEN);
    assert.equal(mid.free - last.free, 5n * OPEN + feePaid(api, topped.events));

    // Only the payer tops up.
    await rejected(api, api.tx.channels.topUp(channel, OPEN), bob, 'channels.NotPayer');
    const status = await api.call.channelsApi.channel(channel);
    assert.ok(status.isOpen);
    assert.equal(status.asOpen.deposit.toBigInt(), 15n * OPEN);
    assert.equal(status.asOpen.redeemed.toBigInt(), 0n);
  });

  test('the provider redeems a voucher signed in JavaScript; the split matches a receipt\'s to the planck', async () => {
    const { ferdie, bob, dave } = keys;
    // 3 OPEN for 10,000 inferences on one adapter; a third of it from answers that retrieved
    // the context DataNet.
    const signed = sign({ sequence: 1, cumulative: 3n * OPEN, adapters: [{ adapter, amount: 3n * OPEN }], contexts: [{ adapter, datanet: context, amount: OPEN }] });
    const before = {
      ferdie: await account(api, ferdie.address), bob: await account(api, bob.address),
      dave: await account(api, dave.address), treasury: await account(api, treasury),
      training: await datanetBalance(api, training), context: await datanetBalance(api, context),
    };
    const { events, blockHash } = await sendAndWait(api, redeemTx(signed), bob);
    const [redeemed] = find(api, events, api.events.channels.VoucherRedeemed);
    assert.equal(redeemed.paid.toBigInt(), 3n * OPEN);
    assert.equal(redeemed.inferences.toBigInt(), 10_000n);
    const splits = find(api, events, api.events.attribution.VoucherFeeSplit);
    assert.equal(splits.length, 1, 'one split per adapter, not per inference');
    const payouts = splits[0].payouts.map(([payee, amount]) => [payee.toJSON(), amount.toBigInt()]);
    const paid = (kind) => payouts.filter(([p]) => Object.keys(p)[0] === kind).reduce((s, [, a]) => s + a, 0n);
    assert.equal(payouts.reduce((s, [, a]) => s + a, 0n), 3n * OPEN);

    // The same split the per-job path gives a receipt of 3 OPEN with a 1/3 context share.
    const quote = (await api.call.attributionApi.quoteSplit(adapter, bob.address, 3n * OPEN, [{ datanet: context, share: 333_333 }])).unwrap();
    assert.deepEqual(payouts, quote.map(([payee, amount]) => [payee.toJSON(), amount.toBigInt()]));

    const after = {
      ferdie: await account(api, ferdie.address, blockHash), bob: await account(api, bob.address, blockHash),
      dave: await account(api, dave.address, blockHash), treasury: await account(api, treasury, blockHash),
      training: await datanetBalance(api, training, blockHash), context: await datanetBalance(api, context, blockHash),
    };
    assert.equal(before.ferdie.reserved - after.ferdie.reserved, 3n * OPEN, 'paid from the deposit');
    assert.equal(after.ferdie.free, before.ferdie.free, 'the payer\'s free balance is untouched');
    assert.equal(after.bob.free - before.bob.free, paid('provider') - feePaid(api, events));
    assert.equal(after.dave.free - before.dave.free, paid('adapterOwner'));
    assert.equal(after.treasury.free - before.treasury.free, paid('treasury'));
    assert.equal(after.training - before.training, paid('trainingDataNet'));
    assert.equal(after.context - before.context, paid('contextDataNet'));
    assert.ok(paid('contextDataNet') > 0n && paid('trainingDataNet') > 0n);

    const status = (await api.call.channelsApi.channel(channel)).asOpen;
    assert.equal(status.redeemed.toBigInt(), 3n * OPEN);
    assert.equal(status.sequence.toNumber(), 1);
    assert.equal(status.inferences.toBigInt(), 10_000n);
  });

  test('bad vouchers are refused with named errors and move nothing but the sender\'s fee', async () => {
    const { ferdie, bob } = keys;
    const stranger = ed25519PairFromSeed(randomAsU8a(32));
    const increment = (sequence, cumulative) => sign({ sequence, cumulative, adapters: [{ adapter, amount: cumulative - 3n * OPEN }] });
    const cases = [
      ['replayed', sign({ sequence: 1, cumulative: 3n * OPEN, adapters: [{ adapter, amount: 3n * OPEN }], contexts: [{ adapter, datanet: context, amount: OPEN }] }), 'channels.StaleSequence'],
      ['signed by another key', sign({ sequence: 2, cumulative: 4n * OPEN, adapters: [{ adapter, amount: OPEN }] }, stranger), 'channels.BadSignature'],
      ['signed for another genesis', signVoucher(signer, { genesisHash: randomAsU8a(32), channel, sequence: 2, cumulative: 4n * OPEN, inferences: 1, receiptsRoot: randomAsU8a(32), adapters: [{ adapter, amount: OPEN }] }), 'channels.BadSignature'],
      ['below what was redeemed', sign({ sequence: 2, cumulative: 2n * OPEN, adapters: [] }), 'channels.CumulativeBelowRedeemed'],
      ['above the deposit', increment(2, 16n * OPEN), 'channels.ExceedsDeposit'],
      ['adapter amounts not summing to the increment', sign({ sequence: 2, cumulative: 4n * OPEN, adapters: [{ adapter, amount: OPEN - 1n }] }), 'channels.AmountsDoNotSumToIncrement'],
      ['context above its adapter', sign({ sequence: 2, cumulative: 4n * OPEN, adapters: [{ adapter, amount: OPEN }], contexts: [{ adapter, datanet: context, amount: OPEN + 1n }] }), 'channels.ContextExceedsAdapterAmount'],
    ];
    for (const [what, signed, error] of cases) {
      const before = { ferdie: await account(api, ferdie.address), bob: await account(api, bob.address) };
      const { fee, blockHash } = await rejected(api, redeemTx(signed), bob, error);
      const after = { ferdie: await account(api, ferdie.address, blockHash), bob: await account(api, bob.address, blockHash) };
      assert.deepEqual(after.ferdie, before.ferdie, `${what}: the payer is untouched`);
      assert.equal(before.bob.free - after.bob.free, fee, `${what}: the sender lost only its fee`);
    }
    const status = (await api.call.channelsApi.channel(channel)).asOpen;
    assert.equal(status.redeemed.toBigInt(), 3n * OPEN);
  });

  test('a voucher signed over the bytes the chain hands out is redeemed', async () => {
    const { ferdie, bob } = keys;
    const opened = await sendAndWait(api, api.tx.channels.open(bob.address, 2n * OPEN, u8aToHex(signer.publicKey)), ferdie);
    const fresh = find(api, opened.events, api.events.channels.ChannelOpened)[0].channel.toNumber();
    const status = await callView(api, 'Channels', 'channel_status', [fresh]);
    assert.ok(status.isOpen && status.asOpen.deposit.toBigInt() === 2n * OPEN);

    const voucher = {
      channel: fresh, sequence: 1, cumulative: OPEN, inferences: 42, receiptsRoot: blake2AsU8a('from the metadata'),
      adapters: [{ adapter, amount: OPEN }], contexts: [{ adapter, datanet: context, amount: OPEN / 4n }],
    };
    const bytes = (await callView(api, 'Channels', 'voucher_signing_payload', [voucher])).toU8a(true);
    // Exactly the bytes of the documented layout (what lib/voucher.js builds by hand).
    assert.deepEqual(bytes, voucherPayload({ genesisHash, ...voucher }));

    const { events } = await sendAndWait(api, api.tx.channels.redeem(voucher, u8aToHex(ed25519Sign(bytes, signer))), bob);
    const [redeemed] = find(api, events, api.events.channels.VoucherRedeemed);
    assert.equal(redeemed.channel.toNumber(), fresh);
    assert.equal(redeemed.paid.toBigInt(), OPEN);
    const after = (await callView(api, 'Channels', 'channel_status', [fresh])).asOpen;
    assert.equal(after.redeemed.toBigInt(), OPEN);
    await sendAndWait(api, api.tx.channels.closeByProvider(fresh), bob);
    assert.ok((await callView(api, 'Channels', 'channel_status', [fresh])).isClosed);
  });

  test('the payer rotates the signer: the old key\'s vouchers are refused, the new one\'s paid', async () => {
    const { ferdie, bob } = keys;
    await rejected(api, api.tx.channels.rotateSigner(channel, u8aToHex(nextSigner.publicKey)), bob, 'channels.NotPayer');
    const rotated = await sendAndWait(api, api.tx.channels.rotateSigner(channel, u8aToHex(nextSigner.publicKey)), ferdie);
    assert.equal(find(api, rotated.events, api.events.channels.SignerRotated).length, 1);
    const fields = { sequence: 2, cumulative: 4n * OPEN, adapters: [{ adapter, amount: OPEN }] };
    await rejected(api, redeemTx(sign(fields)), bob, 'channels.BadSignature');
    const ok = await sendAndWait(api, redeemTx(sign(fields, nextSigner)), keys.charlie);
    assert.equal(find(api, ok.events, api.events.channels.VoucherRedeemed)[0].redeemed.toBigInt(), 4n * OPEN);
  });

  test('the payer\'s close: the provider redeems within the challenge window, then the rest goes back', async () => {
    const { ferdie, bob, alice } = keys;
    // Governance shortens the challenge window to 4 blocks for closes requested from now on.
    const key = xxhashAsU8a(':ChannelChallengeWindow:', 128);
    await sendAndWait(api, api.tx.sudo.sudo(api.tx.system.setStorage([[u8aToHex(key), u8aToHex(bnToU8a(4, { bitLength: 32, isLe: true }))]])), alice);
    await rejected(api, api.tx.channels.requestClose(channel), bob, 'channels.NotPayer');
    await rejected(api, api.tx.channels.finalizeClose(channel), ferdie, 'channels.NotClosing');
    const req = await sendAndWait(api, api.tx.channels.requestClose(channel), ferdie);
    const until = find(api, req.events, api.events.channels.CloseRequested)[0].until.toNumber();

    // Within the window the provider still redeems its latest voucher, and nobody finalizes.
    const late = sign({ sequence: 3, cumulative: 6n * OPEN, adapters: [{ adapter, amount: 2n * OPEN }] }, nextSigner);
    const redeemed = await sendAndWait(api, redeemTx(late), bob);
    const header = await api.rpc.chain.getHeader(redeemed.blockHash);
    assert.ok(header.number.toNumber() <= until);
    const early = await rejected(api, api.tx.channels.finalizeClose(channel), ferdie, 'channels.ChallengeWindowOpen');
    assert.ok((await api.rpc.chain.getHeader(early.blockHash)).number.toNumber() <= until);
    await rejected(api, api.tx.channels.topUp(channel, OPEN), ferdie, 'channels.ChannelClosing');

    await waitForBlock(api, until + 1);
    const tooLate = sign({ sequence: 4, cumulative: 7n * OPEN, adapters: [{ adapter, amount: OPEN }] }, nextSigner);
    await rejected(api, redeemTx(tooLate), bob, 'channels.ChallengeWindowEnded');

    const before = await account(api, ferdie.address);
    const closed = await sendAndWait(api, api.tx.channels.finalizeClose(channel), bob);
    const [ev] = find(api, closed.events, api.events.channels.ChannelClosed);
    assert.equal(ev.redeemed.toBigInt(), 6n * OPEN);
    assert.equal(ev.refunded.toBigInt(), 9n * OPEN);
    const after = await account(api, ferdie.address, closed.blockHash);
    assert.equal(after.free - before.free, 9n * OPEN);
    assert.equal(before.reserved - after.reserved, 9n * OPEN);
    assert.ok((await api.call.channelsApi.channel(channel)).isClosed);
    // Redeem after close names the closed channel.
    await rejected(api, redeemTx(tooLate), bob, 'channels.ChannelClosed');
  });

  test('a provider closes at once and the whole unredeemed deposit goes back', async () => {
    const { ferdie, bob } = keys;
    const opened = await sendAndWait(api, api.tx.channels.open(bob.address, OPEN, u8aToHex(signer.publicKey)), ferdie);
    const id = find(api, opened.events, api.events.channels.ChannelOpened)[0].channel.toNumber();
    await rejected(api, api.tx.channels.closeByProvider(id), ferdie, 'channels.NotProvider');
    const before = await account(api, ferdie.address);
    const closed = await sendAndWait(api, api.tx.channels.closeByProvider(id), bob);
    assert.equal(find(api, closed.events, api.events.channels.ChannelClosed)[0].refunded.toBigInt(), OPEN);
    const after = await account(api, ferdie.address, closed.blockHash);
    assert.equal(after.free - before.free, OPEN);
    assert.equal(before.reserved - after.reserved, OPEN);
  });

  test('one block settles as many channels as one extrinsic may weigh: 100 x 10,000 receipts (a million inferences) on the solo chain', async () => {
    const { ferdie, bob, eve } = keys;
    const first = (await api.query.channels.nextChannelId()).toNumber();
    const redeems = (n) => Array.from({ length: n }, (_, i) => redeemTx(signVoucher(signer, {
      genesisHash, channel: first + i, sequence: 1, cumulative: OPEN / 10n, inferences: 10_000,
      receiptsRoot: blake2AsU8a(`batch ${i}`), adapters: [{ adapter, amount: OPEN / 10n }], contexts: [],
    })));
    // The most redemptions one batch may carry: its declared weight within the chain's limit
    // for one normal extrinsic in both dimensions (on the parachain the proof of validity's
    // size binds first; the solo chain has no proof-size limit).
    const limit = api.consts.system.blockWeights.perClass.normal.maxExtrinsic.unwrap();
    const fits = async (n) => {
      const { weight } = await api.tx.utility.batchAll(redeems(n)).paymentInfo(eve);
      return weight.refTime.toBigInt() <= limit.refTime.toBigInt() && weight.proofSize.toBigInt() <= limit.proofSize.toBigInt();
    };
    let channels = 100;
    if (!(await fits(channels))) {
      let [lo, hi] = [0, channels]; // fits(lo), !fits(hi)
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (await fits(mid)) lo = mid; else hi = mid;
      }
      channels = lo;
    }
    if (api.runtimeVersion.specName.toString() === 'openledger') {
      assert.equal(channels, 100, 'the solo chain settles 100 channels in one batch');
    }
    assert.ok(channels >= 10, `only ${channels} redemptions fit one extrinsic`);
    const opens = Array.from({ length: channels }, () => api.tx.channels.open(bob.address, OPEN, u8aToHex(signer.publicKey)));
    await sendAndWait(api, api.tx.utility.batchAll(opens), ferdie);
    const before = await account(api, ferdie.address);
    const { events, blockHash } = await sendAndWait(api, api.tx.utility.batchAll(redeems(channels)), eve);
    const redeemed = find(api, events, api.events.channels.VoucherRedeemed);
    assert.equal(redeemed.length, channels);
    const inferences = redeemed.reduce((s, ev) => s + ev.covered.toBigInt(), 0n);
    assert.equal(inferences, BigInt(channels) * 10_000n, `${inferences} inferences settled in one block`);
    const after = await account(api, ferdie.address, blockHash);
    assert.equal(before.reserved - after.reserved, BigInt(channels) * (OPEN / 10n));
    const block = await api.rpc.chain.getBlock(blockHash);
    console.log(`settled ${inferences} inferences (${channels} channels) in block ${block.block.header.number.toNumber()} of ${api.runtimeVersion.specName} (${find(api, events, api.events.attribution.VoucherFeeSplit).length} splits)`);
  });
});
