// Open Chat in a real browser (Debian's chromium through puppeteer-core) against the real
// system that `scripts/start.sh --then` runs: a dev node, the gateway serving the page, one
// CPU worker. Run by scripts/test-web.sh (part of scripts/test.sh).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { ApiPromise, WsProvider } from '@polkadot/api';
import { Keyring } from '@polkadot/keyring';
import { blake2AsU8a, cryptoWaitReady } from '@polkadot/util-crypto';

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this suite through scripts/test-web.sh`);
  return v;
};
const origin = need('OPENLEDGER_HTTP').replace(/\/v1\/?$/, '');
const ws = need('OPENLEDGER_WS');
const nodePid = Number(need('OPENLEDGER_NODE_PID'));
const gatewayPid = Number(need('OPENLEDGER_GATEWAY_PID'));
const shots = process.env.OPEN_CHAT_SCREENSHOTS
  ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');
mkdirSync(shots, { recursive: true });

let browser;
let page;
let api;
let keys;
/** A DataNet made for this suite (Eve's approved record in it), used as an answer's context. */
let datanet;
const consoleErrors = [];
const pageLog = [];

/** Signs and sends `tx`, resolving with its events once it is in a block (rejects on failure). */
function send(tx, signer) {
  return new Promise((resolve, reject) => {
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      if (!status.isInBlock) return;
      if (dispatchError) reject(new Error(`dispatch failed: ${dispatchError.toString()}`));
      else resolve(events);
    }).catch(reject);
  });
}

before(async () => {
  api = await ApiPromise.create({ provider: new WsProvider(ws), noInitWarn: true });
  await cryptoWaitReady();
  const keyring = new Keyring({ type: 'sr25519', ss58Format: api.registry.chainSS58 });
  keys = { dave: keyring.addFromUri('//Dave'), eve: keyring.addFromUri('//Eve') };
  const created = await send(api.tx.attribution.createDatanet('0x' + Buffer.from('open chat docs').toString('hex')), keys.dave);
  datanet = created.find(({ event }) => api.events.attribution.DataNetCreated.is(event)).event.data.datanet.toNumber();
  const record = blake2AsU8a('open chat record 1');
  await send(api.tx.attribution.contribute(datanet, record, 3), keys.eve);
  await send(api.tx.attribution.approveContribution(datanet, record), keys.dave);
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,1000'],
    defaultViewport: { width: 1400, height: 1000 },
  });
  page = await browser.newPage();
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  // The page's warnings, printed at the end: what a failing check needs to be understood.
  page.on('console', (m) => { if (['warn', 'error'].includes(m.type())) pageLog.push(`${m.type()}: ${m.text()}`); });
  await page.goto(`${origin}/`, { waitUntil: 'load' });
});

after(async () => {
  if (pageLog.length) console.log(`the page's warnings:\n${pageLog.join('\n')}`);
  // A stopped process left stopped would hang the rest of the run.
  for (const pid of [nodePid, gatewayPid]) { try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ } }
  await browser?.close();
  await api?.disconnect();
});

/** The last answer in the conversation, as the page shows it. */
function lastAnswer() {
  return page.evaluate(() => {
    const all = document.querySelectorAll('#messages li.assistant');
    const li = all[all.length - 1];
    if (!li) return null;
    const rows = [...li.querySelectorAll('table.split tr')].map((tr) => ({
      role: tr.dataset.role, who: tr.dataset.who, planck: tr.dataset.planck,
    }));
    return {
      ...li.dataset,
      text: li.querySelector('.text').textContent,
      error: li.querySelector('.error')?.textContent ?? null,
      settlement: li.querySelector('.settlement')?.textContent ?? null,
      meta: li.querySelector('.meta')?.textContent ?? null,
      rows,
    };
  });
}

async function until(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function ask(prompt, settle, maxTokens = 24, context = []) {
  await page.select('#settle', settle);
  if (context.length) {
    await until('the DataNets in the context picker', () => page.$$eval('#context option', (o, want) =>
      want.every((w) => o.some((x) => x.value === w)), context.map(String)));
  }
  await page.select('#context', ...context.map(String));
  await page.$eval('#max-tokens', (el, v) => { el.value = String(v); }, maxTokens);
  await page.$eval('#prompt', (el, v) => { el.value = v; }, prompt);
  const before = await page.$$eval('#messages li.assistant', (l) => l.length);
  await page.click('#send');
  await until('the answer to start', async () => (await page.$$eval('#messages li.assistant', (l) => l.length)) > before);
}

/** The chain's payouts of an `attribution` split event, as the page labels them. */
function payoutsOf(event) {
  return event.data.payouts.map(([payee, amount]) => {
    const [, value] = Object.entries(payee.toJSON())[0];
    return { who: typeof value === 'number' ? `#${value}` : String(value), planck: amount.toString() };
  });
}

async function eventsAt(block) {
  const hash = await api.rpc.chain.getBlockHash(block);
  return (await (await api.at(hash)).query.system.events()).map((r) => r.event);
}

test('the page loads and lists the adapters registered on chain', async () => {
  await until('the adapter list', () => page.evaluate(() => document.body.dataset.adapters));
  const shown = await page.$$eval('#adapter option', (o) => o.map((x) => x.value).sort());
  const onChain = (await api.query.attribution.adapters.entries())
    .filter(([, a]) => a.unwrap().retired.isFalse)
    .map(([k]) => `adapter-${k.args[0].toNumber()}`).sort();
  assert.ok(onChain.length > 0, 'start.sh registers a demo adapter');
  assert.deepEqual(shown, onChain);
  const info = await page.$eval('#adapter-info', (el) => el.textContent);
  assert.match(info, /base model #\d+/);
  assert.match(info, /OPEN per 1k tokens/);
});

test('an answer settled as a job streams, and its payout split is the chain\'s FeeSplit to the planck', async () => {
  await ask('What is a ledger?', 'job', 24, [datanet]);
  // Tokens arrive before the answer ends: the page shows them as they stream.
  await until('streamed text', async () => (await lastAnswer()).text.length > 0);
  const done = await until('the answer to end', async () => {
    const a = await lastAnswer();
    return ['done', 'error'].includes(a.state) && a;
  });
  assert.equal(done.error, null, `no error: ${done.error}`);
  assert.match(done.meta, /tokens/);
  assert.match(done.meta, /first token \d+ ms/);
  const shown = await until('the payout split', async () => {
    const a = await lastAnswer();
    return a.block && a.rows.length > 0 && a;
  }, 120_000);
  const job = Number(shown.job);
  const events = await eventsAt(Number(shown.block));
  const split = events.find((e) => e.section === 'attribution' && e.method === 'FeeSplit' && e.data.job.toNumber() === job);
  assert.ok(split, `attribution.FeeSplit for job ${job} in block ${shown.block}`);
  assert.deepEqual(shown.rows.map(({ who, planck }) => ({ who, planck })), payoutsOf(split));
  assert.equal(BigInt(shown.charge), split.data.charge.toBigInt());
  const sum = shown.rows.reduce((s, r) => s + BigInt(r.planck), 0n);
  assert.equal(sum, split.data.charge.toBigInt(), 'the payouts add up to the charge');
  const settled = events.find((e) => e.section === 'jobs' && e.method === 'JobSettled' && e.data.job.toNumber() === job);
  assert.ok(settled, 'jobs.JobSettled in the same block');
  assert.equal(settled.data.charged.toBigInt(), split.data.charge.toBigInt());
  assert.ok(shown.rows.some((r) => r.role === 'provider'));
  assert.ok(shown.rows.some((r) => r.role === 'adapter owner'));
  assert.ok(shown.rows.some((r) => r.role === 'DataNet (context)' && r.who === `#${datanet}` && BigInt(r.planck) > 0n),
    'the context DataNet is paid');
});

test('an answer on a channel shows its quoted split, and the redemption pays exactly that', async () => {
  await ask('Say hello.', 'channel');
  const shown = await until('the vouched split', async () => {
    const a = await lastAnswer();
    return a.sequence && a.rows.length > 0 && a;
  }, 60_000);
  assert.ok(shown.channel && shown.request, 'the answer names its channel and request');
  const charge = BigInt(shown.charge);
  assert.equal(shown.rows.reduce((s, r) => s + BigInt(r.planck), 0n), charge);
  // The worker redeems every two blocks here: the redemption that covers this answer alone
  // splits exactly its charge.
  const redeemed = await until('the redemption', async () => {
    const a = await lastAnswer();
    return a.block && a;
  }, 90_000);
  const events = await eventsAt(Number(redeemed.block));
  const redemption = events.find((e) => e.section === 'channels' && e.method === 'VoucherRedeemed'
    && e.data.channel.toNumber() === Number(shown.channel));
  assert.ok(redemption, `channels.VoucherRedeemed for channel ${shown.channel} in block ${redeemed.block}`);
  assert.match(redeemed.settlement, new RegExp(`block #${redeemed.block}`));
  assert.equal(redemption.data.covered.toNumber(), 1, 'the first answer on the channel is redeemed alone');
  const split = events.find((e) => e.section === 'attribution' && e.method === 'VoucherFeeSplit'
    && e.data.channel.toNumber() === Number(shown.channel));
  assert.equal(split.data.charge.toBigInt(), charge);
  assert.deepEqual(shown.rows.map(({ who, planck }) => ({ who, planck })), payoutsOf(split));
  await page.screenshot({ path: join(shots, 'chat.png') });
});

test('a generation can be stopped', async () => {
  await ask('Write a long story about a lighthouse keeper and the sea.', 'channel', 400);
  await until('the first tokens', async () => (await lastAnswer()).text.length > 0);
  await page.click('#stop');
  const a = await until('the stop', async () => {
    const x = await lastAnswer();
    return ['stopped', 'done', 'error'].includes(x.state) && x;
  });
  assert.equal(a.state, 'stopped');
  assert.match(a.meta, /stopped/);
});

test('a prompt longer than the model\'s context is refused with the server\'s message', async () => {
  await ask('lorem ipsum dolor sit amet '.repeat(3000), 'job');
  const a = await until('the refusal', async () => {
    const x = await lastAnswer();
    return x.state === 'error' && x;
  });
  assert.match(a.error, /prompt_too_long|context/);
  assert.equal(a.text, '');
});

test('the explorer shows the provider, the adapters and the settlements; the charts draw', async () => {
  await page.click('nav button[data-tab="explore"]');
  await until('the explorer', () => page.evaluate(() => document.body.dataset.explorer === 'ready'));
  const providers = (await api.query.compute.providers.keys()).map((k) => k.args[0].toString());
  assert.ok(providers.length > 0);
  const rows = await page.$$eval('#providers tbody tr', (r) => r.map((x) => x.dataset.provider));
  for (const p of providers) assert.ok(rows.includes(p), `provider ${p} listed`);
  // The suite's DataNet, with Eve's weight and the reward the job's context share left her.
  const pending = (await api.call.attributionApi.pendingRewards(datanet, keys.eve.address)).toBigInt();
  assert.ok(pending > 0n, 'Eve has a reward pending from the answer that used her DataNet');
  const row = await until('the DataNet row', () => page.$eval(`#datanets tr[data-datanet="${datanet}"]`, (r) => r.textContent).catch(() => null));
  assert.match(row, /open chat docs/);
  assert.ok(row.includes(keys.eve.address.slice(0, 10)), `Eve listed: ${row}`);
  const settlements = await page.$$eval('#settlements tbody tr', (r) => r.length);
  assert.ok(settlements >= 1, 'the settlements of this test are listed');
  await page.screenshot({ path: join(shots, 'explore.png'), fullPage: true });
  await page.click('nav button[data-tab="charts"]');
  await until('a chart', () => page.evaluate(() => document.querySelectorAll('#chart-adapters canvas').length > 0));
  await page.screenshot({ path: join(shots, 'charts.png'), fullPage: true });
  await page.click('nav button[data-tab="chat"]');
});

test('an unreachable gateway is named on the page, and the page recovers when it is back', async () => {
  process.kill(gatewayPid, 'SIGSTOP');
  try {
    await until('the gateway banner', () => page.evaluate(() => document.body.dataset.gateway === 'down'), 15_000);
    const banner = await page.$eval('#banner', (b) => !b.hidden && b.textContent);
    assert.match(banner, /cannot reach the gateway/);
  } finally {
    process.kill(gatewayPid, 'SIGCONT');
  }
  await until('the gateway back', () => page.evaluate(() => document.body.dataset.gateway === 'up'), 15_000);
  assert.equal(await page.$eval('#banner', (b) => b.hidden), true);
});

test('a stalled chain is named on the page, and the page recovers when it is back', async () => {
  process.kill(nodePid, 'SIGSTOP');
  try {
    await until('the chain banner', () => page.evaluate(() => document.body.dataset.chain === 'down'), 40_000);
    const banner = await page.$eval('#banner', (b) => !b.hidden && b.textContent);
    assert.match(banner, /no new block|cannot reach the chain/);
  } finally {
    process.kill(nodePid, 'SIGCONT');
  }
  await until('the chain back', () => page.evaluate(() => document.body.dataset.chain === 'up'), 40_000);
  assert.deepEqual(consoleErrors, [], 'no uncaught error in the page');
});
