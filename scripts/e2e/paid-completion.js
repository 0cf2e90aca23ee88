// A paid completion through the gateway and a worker, checked on chain to the planck. Run by
// `scripts/start.sh --then node scripts/e2e/paid-completion.js` (scripts/parachain.sh test
// runs it against the parachain runtime on polkadot-omni-node) with the gateway's jobs path
// (`--no-channels`): one request is one job on chain.
//
// Checks: the answer names its job; the job settles; escrow = charged + refunded; the
// FeeSplit pays out exactly the charge; the payer's balance (free + held) fell by exactly the
// charge plus the transaction fees it paid; every account paid by the split gained exactly its
// payout less the fees it paid meanwhile. Exits non-zero, naming the first check that failed.
import assert from 'node:assert/strict';
import { account, connect, devAccounts } from './lib/chain.js';

const http = process.env.OPENLEDGER_HTTP;
const ws = process.env.OPENLEDGER_WS;
const adapter = (process.env.OPENLEDGER_ADAPTERS || '').split(',')[0];
if (!http || !ws || !adapter) {
  console.error('paid-completion.js: run it through scripts/start.sh --then (OPENLEDGER_HTTP, OPENLEDGER_WS, OPENLEDGER_ADAPTERS)');
  process.exit(2);
}

const api = await connect(ws);
try {
  const { alice } = devAccounts(api);
  const total = async (who, hash) => (await account(api, who, hash)).total;
  const start = (await api.rpc.chain.getHeader()).number.toNumber();
  const startHash = await api.rpc.chain.getBlockHash(start);
  const spec = await api.rpc.state.getRuntimeVersion(startHash);
  console.log(`chain ${(await api.rpc.system.chain()).toString()}, runtime ${spec.specName.toString()}/${spec.specVersion.toNumber()}, from block ${start}`);

  const t0 = Date.now();
  const res = await fetch(`${http}/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer demo-key', 'content-type': 'application/json' },
    body: JSON.stringify({ model: `adapter-${adapter}`, prompt: 'OpenLedger is', max_tokens: 16 }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `completion answered 200: ${JSON.stringify(body)}`);
  const text = body.choices?.[0]?.text ?? '';
  const job = body.openledger?.job;
  assert.ok(Number.isInteger(job), `the answer names its job: ${JSON.stringify(body.openledger)}`);
  const escrow = BigInt(body.openledger.escrow);
  console.log(`answer in ${Date.now() - t0} ms, job ${job}, escrow ${escrow} planck: ${JSON.stringify(text)}`);

  // Every event from the block after `start` up to the one that settles the job.
  const events = [];
  let settledAt = null;
  let next = start + 1;
  const deadline = Date.now() + 180_000;
  while (settledAt === null) {
    assert.ok(Date.now() < deadline, `job ${job} settled within 180 s (last block read: ${next - 1})`);
    const head = (await api.rpc.chain.getHeader()).number.toNumber();
    for (; next <= head && settledAt === null; next += 1) {
      const hash = await api.rpc.chain.getBlockHash(next);
      for (const { event } of await (await api.at(hash)).query.system.events()) {
        events.push(event);
        if (api.events.jobs.JobSettled.is(event) && event.data.job.toNumber() === job) settledAt = { number: next, hash };
      }
    }
    if (settledAt === null) await new Promise((r) => setTimeout(r, 500));
  }
  const settled = events.find((e) => api.events.jobs.JobSettled.is(e) && e.data.job.toNumber() === job);
  const charged = settled.data.charged.toBigInt();
  const refunded = settled.data.refunded.toBigInt();
  assert.equal(charged + refunded, escrow, 'escrow = charged + refunded');
  assert.ok(charged > 0n, 'the job was charged');

  const split = events.find((e) => api.events.attribution.FeeSplit.is(e) && e.data.job.toNumber() === job);
  assert.ok(split, `attribution.FeeSplit for job ${job}`);
  assert.equal(split.data.charge.toBigInt(), charged, 'the split is of the charge');
  const payouts = new Map();
  let sum = 0n;
  for (const [payee, amount] of split.data.payouts) {
    sum += amount.toBigInt();
    const [role, value] = Object.entries(payee.toJSON())[0];
    console.log(`  ${role} ${value}: ${amount.toBigInt()} planck`);
    if (typeof value === 'string') payouts.set(value, (payouts.get(value) ?? 0n) + amount.toBigInt());
  }
  assert.equal(sum, charged, 'the payouts add up to the charge');

  const feesOf = (who) => events
    .filter((e) => api.events.transactionPayment.TransactionFeePaid.is(e) && e.data.who.toString() === who)
    .reduce((s, e) => s + e.data.actualFee.toBigInt() + e.data.tip.toBigInt(), 0n);

  const aliceDelta = (await total(alice.address, settledAt.hash)) - (await total(alice.address, startHash));
  const aliceFees = feesOf(alice.address);
  assert.equal(aliceDelta, (payouts.get(alice.address) ?? 0n) - charged - aliceFees,
    `the payer paid the charge ${charged} and its fees ${aliceFees}, nothing else (moved ${aliceDelta})`);
  for (const [who, paid] of payouts) {
    if (who === alice.address) continue;
    const delta = (await total(who, settledAt.hash)) - (await total(who, startHash));
    assert.equal(delta, paid - feesOf(who), `${who} gained its payout ${paid} less its fees ${feesOf(who)} (moved ${delta})`);
  }
  console.log(`paid completion: job ${job} settled in block ${settledAt.number}, charged ${charged}, refunded ${refunded}, `
    + `payer fees ${aliceFees}; ${payouts.size} accounts paid to the planck`);
} finally {
  await api.disconnect();
}
