// The chain foundation as a polkadot.js user sees it: token properties and a signed transfer.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { merkleizeMetadata } from '@polkadot-api/merkleize-metadata';
import { u8aToHex } from '@polkadot/util';
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

  test('a signed transfer moves exactly the amount, and the sender pays exactly the reported fee', async (t) => {
    const { alice, bob } = devAccounts(api);
    const amount = 12_345n * OPEN / 1000n; // 12.345 OPEN
    const aliceBefore = await freeBalance(api, alice.address);
    const bobBefore = await freeBalance(api, bob.address);

    const tx = api.tx.balances.transferKeepAlive(bob.address, amount);
    // What a wallet shows before signing (TransactionPaymentApi.query_info).
    const estimate = (await tx.paymentInfo(alice)).partialFee.toBigInt();
    const { events, blockHash } = await sendAndWait(api, tx, alice);

    const feeEvent = events.find(({ event }) => api.events.transactionPayment.TransactionFeePaid.is(event));
    assert.ok(feeEvent, 'TransactionFeePaid event emitted');
    const [who, actualFee, tip] = feeEvent.event.data;
    assert.equal(who.toString(), alice.address);
    assert.equal(tip.toBigInt(), 0n);
    const fee = actualFee.toBigInt();
    assert.ok(fee > 0n, 'a transfer is not free');
    assert.ok(fee < OPEN / 1000n, `fee ${fee} under 0.001 OPEN`);
    assert.equal(fee, estimate, 'the fee paid is the fee the wallet was shown');
    // The figure the README gives (its section "The chain").
    t.diagnostic(`transfer_keep_alive fee: ${fee} planck = ${Number(fee) / 1e18} OPEN`);

    const transfer = events.find(({ event }) => api.events.balances.Transfer.is(event));
    assert.ok(transfer, 'Transfer event emitted');
    assert.equal(transfer.event.data.amount.toBigInt(), amount);

    const aliceAfter = await freeBalance(api, alice.address, blockHash);
    const bobAfter = await freeBalance(api, bob.address, blockHash);
    assert.equal(bobAfter - bobBefore, amount);
    assert.equal(aliceBefore - aliceAfter, amount + fee);
  });

  test('a transfer carrying the metadata hash (CheckMetadataHash, as offline signers send it) is accepted; a wrong hash is not', async () => {
    const { alice, bob } = devAccounts(api);
    // The RFC-78 digest of the node's metadata, computed by a library other than the runtime's
    // build (PAPI's merkleizer), from the metadata and the token's symbol and decimals alone.
    const metadata = (await api.call.metadata.metadataAtVersion(15)).unwrap().toU8a(true);
    const digest = merkleizeMetadata(metadata, { decimals: 18, tokenSymbol: 'OPEN' }).digest();
    const amount = OPEN / 100n;
    const bobBefore = await freeBalance(api, bob.address);
    const { events, blockHash } = await sendAndWait(
      api, api.tx.balances.transferKeepAlive(bob.address, amount), alice, { mode: 1, metadataHash: u8aToHex(digest) });
    assert.ok(events.some(({ event }) => api.events.balances.Transfer.is(event)));
    assert.equal(await freeBalance(api, bob.address, blockHash) - bobBefore, amount);
    // The signature covers the hash the runtime holds: any other hash invalidates it.
    const wrong = new Uint8Array(digest);
    wrong[0] ^= 1;
    await assert.rejects(
      sendAndWait(api, api.tx.balances.transferKeepAlive(bob.address, amount), alice, { mode: 1, metadataHash: u8aToHex(wrong) }),
      /Invalid Transaction|bad signature|BadProof|1010/i,
    );
  });

  test('every type of our pallets and primitives in the metadata is documented, with each field and variant', () => {
    const ours = /^(pallet_(compute|jobs|attribution|channels)|openledger_primitives)::/;
    const missing = [];
    for (const { id, type } of api.runtimeMetadata.asLatest.lookup.types) {
      const path = type.path.map((s) => s.toString()).join('::');
      if (!ours.test(path)) continue;
      const name = `${path} (#${id.toNumber()})`;
      const generated = /::pallet::(Call|Event|Error)$/.test(path);
      if (!generated && type.docs.length === 0) missing.push(name);
      const def = type.def;
      const fieldsOf = (fields, where) => {
        for (const f of fields) {
          if (f.name.isSome && f.docs.length === 0) missing.push(`${where}.${f.name.unwrap()}`);
        }
      };
      if (def.isComposite) fieldsOf(def.asComposite.fields, name);
      if (def.isVariant) {
        for (const v of def.asVariant.variants) {
          if (v.docs.length === 0) missing.push(`${name}::${v.name}`);
          // A call's arguments are described in the call's docs.
          if (!/::pallet::Call$/.test(path)) fieldsOf(v.fields, `${name}::${v.name}`);
        }
      }
    }
    assert.deepEqual(missing, [], `undocumented in the metadata:\n${missing.join('\n')}`);
    // The pallets' overviews reach the metadata too.
    for (const pallet of ['Compute', 'Jobs', 'Attribution', 'Channels']) {
      const p = api.runtimeMetadata.asLatest.pallets.find((x) => x.name.toString() === pallet);
      const text = p.docs.map((d) => d.toString()).join('\n');
      assert.ok(text.length > 1000 && text.includes(`# ${pallet} pallet`), `${pallet} has its overview in the metadata`);
    }
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
