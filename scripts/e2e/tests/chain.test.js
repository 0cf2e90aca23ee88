// The chain foundation as a polkadot.js user sees it: token properties and a signed transfer.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDevNode } from '../lib/node.js';
import { connect, devAccounts, freeBalance, sendAndWait } from '../lib/chain.js';

const OPEN = 10n ** 18n;

describe('OpenLedger dev chain through polkadot.js', () => {
  let node;
  let api;

  before(async () => {
    node = await startDevNode();
    api = await connect(node.wsUrl);
  });

  after(async () => {
    if (api) await api.disconnect();
    if (node) await node.stop();
  });

  test('chain properties announce OPEN with 18 decimals and our SS58 prefix', async () => {
    const props = await api.rpc.system.properties();
    assert.equal(props.tokenSymbol.unwrap()[0].toString(), 'OPEN');
    assert.equal(props.tokenDecimals.unwrap()[0].toNumber(), 18);
    assert.equal(props.ss58Format.unwrap().toNumber(), 7011);
    assert.equal(api.registry.chainTokens[0], 'OPEN');
    assert.equal(api.registry.chainDecimals[0], 18);
    assert.equal(api.consts.system.ss58Prefix.toNumber(), 7011);
    assert.equal(api.consts.balances.existentialDeposit.toBigInt(), OPEN / 1000n);
  });

  test('a signed transfer moves exactly the amount, and the sender pays exactly the reported fee', async () => {
    const { alice, bob } = devAccounts(api);
    const amount = 12_345n * OPEN / 1000n; // 12.345 OPEN
    const aliceBefore = await freeBalance(api, alice.address);
    const bobBefore = await freeBalance(api, bob.address);

    const tx = api.tx.balances.transferKeepAlive(bob.address, amount);
    const { events, blockHash } = await sendAndWait(api, tx, alice);

    const feeEvent = events.find(({ event }) => api.events.transactionPayment.TransactionFeePaid.is(event));
    assert.ok(feeEvent, 'TransactionFeePaid event emitted');
    const [who, actualFee, tip] = feeEvent.event.data;
    assert.equal(who.toString(), alice.address);
    assert.equal(tip.toBigInt(), 0n);
    const fee = actualFee.toBigInt();
    assert.ok(fee > 0n, 'a transfer is not free');
    assert.ok(fee < OPEN / 1000n, `fee ${fee} under 0.001 OPEN`);

    const transfer = events.find(({ event }) => api.events.balances.Transfer.is(event));
    assert.ok(transfer, 'Transfer event emitted');
    assert.equal(transfer.event.data.amount.toBigInt(), amount);

    const aliceAfter = await freeBalance(api, alice.address, blockHash);
    const bobAfter = await freeBalance(api, bob.address, blockHash);
    assert.equal(bobAfter - bobBefore, amount);
    assert.equal(aliceBefore - aliceAfter, amount + fee);
  });

  test('blocks are produced and finalized', async () => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const head = await api.rpc.chain.getHeader();
      const fin = await api.rpc.chain.getHeader(await api.rpc.chain.getFinalizedHead());
      if (head.number.toNumber() >= 3 && fin.number.toNumber() >= 1) break;
      assert.ok(Date.now() < deadline, 'chain did not reach block 3 with a finalized block within 60 s');
      await new Promise((r) => setTimeout(r, 500));
    }
  });
});
