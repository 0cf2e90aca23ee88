// The chat: pick an adapter, talk to it with streaming through the gateway's OpenAI route,
// and under each answer show what it cost and whom it paid, read from the chain.
import { byId, formatOpen, payeeLabel, shareText, text } from './chain.js';

const $ = (id) => document.getElementById(id);

/** Reads server-sent events from a fetch response, calling `onData` with each JSON payload. */
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data || data === '[DONE]') continue;
      onData(JSON.parse(data));
    }
  }
}

/** The message of an error response (OpenAI shape) or its status line. */
async function errorOf(response) {
  const body = await response.text();
  try {
    const { error } = JSON.parse(body);
    if (error?.message) return `${error.message} (HTTP ${response.status}${error.code ? `, ${error.code}` : ''})`;
  } catch { /* not JSON */ }
  return `the gateway answered HTTP ${response.status}: ${body.slice(0, 300) || response.statusText}`;
}

export class Chat {
  constructor({ config, chain, onAnswer }) {
    this.config = config;
    this.chain = chain;
    this.onAnswer = onAnswer;
    this.history = [];
    this.adapters = new Map();
    this.running = null;
    $('ask').addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    $('prompt').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); this.send(); }
    });
    $('stop').addEventListener('click', () => this.running?.abort());
    $('new-chat').addEventListener('click', () => { this.history = []; $('messages').replaceChildren(); });
    $('adapter').addEventListener('change', () => this.describe());
    $('key-panel').hidden = config.server_key;
    if (!config.channels) {
      $('settle').value = 'job';
      $('settle').disabled = true;
    }
    const saved = sessionStorage.getItem('openledger-api-key');
    if (saved) $('api-key').value = saved;
  }

  /** Fills the adapter picker from the gateway's model list (and the chain, when it answers). */
  async loadAdapters() {
    const response = await fetch('/v1/models', { signal: AbortSignal.timeout(10_000) });
    if (!response.ok) throw new Error(await errorOf(response));
    const { data } = await response.json();
    const select = $('adapter');
    const chosen = select.value;
    select.replaceChildren();
    for (const m of data) {
      this.adapters.set(m.id, m);
      const option = document.createElement('option');
      option.value = m.id;
      option.textContent = m.id;
      select.append(option);
    }
    if (chosen && this.adapters.has(chosen)) select.value = chosen;
    await this.describe();
    return data;
  }

  /** Fills the context picker with the chain's DataNets (keeping the choice). */
  async loadDataNets() {
    const ids = await byId(this.chain.api.query.attribution.dataNets);
    const select = $('context');
    const chosen = new Set([...select.selectedOptions].map((o) => o.value));
    if (ids.map(([id]) => String(id)).join() === [...select.options].map((o) => o.value).join()) return;
    select.replaceChildren(...ids.map(([id, d]) => {
      const option = document.createElement('option');
      option.value = String(id);
      option.textContent = `#${id} ${text(d.metadata)}`;
      option.selected = chosen.has(option.value);
      return option;
    }));
  }

  /** Shows the chosen adapter's base model, owner, price and training DataNets. */
  async describe() {
    const m = this.adapters.get($('adapter').value);
    const info = $('adapter-info');
    if (!m) { info.textContent = 'No adapter is registered on chain yet.'; return; }
    const price = formatOpen(BigInt(m.price_per_1k_tokens), this.chain.decimals);
    let owner = m.owned_by;
    try {
      // The chain's own address format (its SS58 prefix).
      if (this.chain.live) owner = this.chain.api.createType('AccountId', m.owned_by).toString();
    } catch { /* shown as the gateway wrote it */ }
    const lines = [
      `<div>base model <b>#${m.base_model}</b> · rank <b>${m.rank}</b></div>`,
      `<div>owner <span class="addr" title="${owner}">${owner.slice(0, 10)}…</span></div>`,
      `<div>adapter price <b>${price}</b> per 1k tokens (plus the provider's)</div>`,
    ];
    const id = Number(m.id.replace(/^adapter-/, ''));
    try {
      const api = this.chain.api;
      if (api?.isConnected) {
        const onChain = await api.query.attribution.adapters(id);
        if (onChain.isSome) {
          const training = onChain.unwrap().training.map(shareText);
          lines.push(`<div>trained on ${training.length ? training.join(', ') : 'no DataNet'}</div>`);
        }
      }
    } catch { /* the chain is away: the gateway's part is shown */ }
    info.innerHTML = lines.join('');
  }

  #endpoint() {
    const headers = { 'content-type': 'application/json' };
    if (this.config.server_key) return { url: '/chat/v1/chat/completions', headers };
    const key = $('api-key').value.trim();
    sessionStorage.setItem('openledger-api-key', key);
    if (key) headers.authorization = `Bearer ${key}`;
    return { url: '/v1/chat/completions', headers };
  }

  #bubble(role, content) {
    const li = document.createElement('li');
    li.className = role;
    const body = document.createElement('div');
    body.className = 'text';
    body.textContent = content;
    li.append(body);
    $('messages').append(li);
    li.scrollIntoView({ block: 'end' });
    return li;
  }

  async send() {
    const prompt = $('prompt').value.trim();
    if (!prompt || this.running) return;
    const model = $('adapter').value;
    if (!model) { this.#bubble('assistant', '').querySelector('.text').textContent = 'Pick an adapter first.'; return; }
    $('prompt').value = '';
    this.#bubble('user', prompt);
    const messages = [...this.history, { role: 'user', content: prompt }];
    const li = this.#bubble('assistant', '');
    li.dataset.state = 'waiting';
    const textEl = li.querySelector('.text');
    const controller = new AbortController();
    this.running = controller;
    $('send').disabled = true;
    $('stop').disabled = false;
    const { url, headers } = this.#endpoint();
    const body = { model, messages, stream: true, max_tokens: Number($('max-tokens').value) || 64 };
    if ($('settle').value) body.settle = $('settle').value;
    const context = [...$('context').selectedOptions].map((o) => Number(o.value));
    if (context.length) {
      // Equal shares of a million parts, the rest to the first.
      const share = Math.floor(1_000_000 / context.length);
      body.context = context.map((datanet, i) => ({ datanet, share_ppm: i === 0 ? 1_000_000 - share * (context.length - 1) : share }));
    }
    const sent = performance.now();
    let first = 0;
    let answer = '';
    let last = null;
    let error = null;
    try {
      const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body), signal: controller.signal });
      if (!response.ok) throw new Error(await errorOf(response));
      li.dataset.state = 'streaming';
      await readEvents(response, (event) => {
        if (event.error) { error = `${event.error.message} (${event.error.code ?? event.error.type})`; return; }
        const delta = event.choices?.[0]?.delta?.content ?? '';
        if (delta && !first) first = performance.now();
        answer += delta;
        textEl.textContent = answer;
        last = event;
        li.scrollIntoView({ block: 'end' });
      });
    } catch (e) {
      error = controller.signal.aborted ? null : (e.name === 'TypeError'
        ? `cannot reach the gateway (${e.message}); nothing was sent, try again when it is back`
        : e.message);
      if (controller.signal.aborted) li.dataset.stopped = 'true';
    } finally {
      this.running = null;
      $('send').disabled = false;
      $('stop').disabled = true;
    }
    const ended = performance.now();
    if (error) {
      const p = document.createElement('div');
      p.className = 'error';
      p.textContent = error;
      li.append(p);
      li.dataset.state = 'error';
      if (!answer) return;
    }
    this.history = [...messages, { role: 'assistant', content: answer }];
    li.dataset.state = li.dataset.stopped ? 'stopped' : 'done';
    const usage = last?.usage;
    const info = last?.openledger;
    const meta = document.createElement('div');
    meta.className = 'meta';
    const tokens = usage ? usage.completion_tokens : null;
    const ttft = first ? first - sent : null;
    const rate = tokens && first && ended > first ? (tokens - 1) / ((ended - first) / 1000) : null;
    meta.innerHTML = [
      usage ? `<span class="tokens">${usage.prompt_tokens} + ${usage.completion_tokens} tokens</span>` : '',
      ttft !== null ? `<span class="ttft">first token ${ttft.toFixed(0)} ms</span>` : '',
      rate ? `<span class="rate">${rate.toFixed(1)} tokens/s</span>` : '',
      li.dataset.stopped ? '<span>stopped: charged only for what arrived</span>' : '',
    ].join('');
    li.append(meta);
    this.onAnswer?.({ at: Date.now(), ttft, total: ended - sent, tokens: usage ? usage.prompt_tokens + usage.completion_tokens : 0, provider: info?.provider });
    if (info) this.#settlement(li, info, usage).catch((e) => this.#note(li, `settlement not shown: ${e.message}`));
  }

  #note(li, html) {
    let el = li.querySelector('.settlement');
    if (!el) { el = document.createElement('div'); el.className = 'settlement'; li.append(el); }
    el.innerHTML = html;
    return el;
  }

  /** The payout table of an answer. */
  #split(li, payouts, caption) {
    li.querySelector('table.split')?.remove();
    const table = document.createElement('table');
    table.className = 'split';
    const dec = this.chain.decimals;
    table.innerHTML = `<caption>${caption}</caption>` + payouts.map(({ payee, amount }) => {
      const { role, who } = payeeLabel(payee);
      const short = who.length > 14 ? `${who.slice(0, 10)}…` : who;
      return `<tr data-role="${role}" data-who="${who}" data-planck="${amount}"><td>${role}</td>`
        + `<td class="addr" title="${who}">${short}</td><td class="amount" title="${amount} plancks">${formatOpen(amount, dec, 9)}</td></tr>`;
    }).join('');
    li.append(table);
  }

  /** Waits for the chain to settle the answer and shows the split (or the quoted split on a channel). */
  async #settlement(li, info, usage) {
    const chain = this.chain;
    await chain.ready;
    if (info.job !== undefined) {
      li.dataset.job = info.job;
      this.#note(li, `job #${info.job}: waiting for its receipt to settle on chain…`);
      const split = await this.#await((r) => r.kind === 'split' && r.job === info.job, 120_000);
      if (!split) { this.#note(li, `job #${info.job}: not settled within two minutes (see the explorer)`); return; }
      const settled = chain.records.find((r) => r.kind === 'jobSettled' && r.job === info.job);
      li.dataset.block = split.block;
      li.dataset.charge = split.charge;
      this.#note(li, `settled by job #${info.job} in block <a href="${chain.appsLink(split.block)}" target="_blank" rel="noopener">#${split.block}</a>`
        + ` · charged ${formatOpen(split.charge, chain.decimals, 9)}`
        + (settled ? ` · ${settled.tokens} tokens metered` : ''));
      this.#split(li, split.payouts, 'paid to (attribution.FeeSplit)');
      return;
    }
    // The channel path: the gateway vouched for the answer's receipt; the chain pays when the
    // worker redeems a voucher that covers it.
    li.dataset.channel = info.channel;
    li.dataset.request = info.request;
    this.#note(li, `channel #${info.channel}, request ${info.request}: waiting for the worker's receipt…`);
    let status = null;
    for (let i = 0; i < 60 && !(status?.state === 'vouched'); i++) {
      const r = await fetch(`/v1/channels/${info.channel}/requests/${info.request}`, { signal: AbortSignal.timeout(5000) }).catch(() => null);
      if (r?.ok) status = await r.json();
      if (status?.state !== 'vouched') await new Promise((res) => setTimeout(res, 500));
    }
    if (status?.state !== 'vouched') { this.#note(li, `channel #${info.channel}: no receipt vouched for yet`); return; }
    const charge = BigInt(status.charge);
    li.dataset.charge = charge;
    li.dataset.sequence = status.sequence;
    const context = status.context.map((c) => ({ datanet: c.datanet, share: c.share_ppm }));
    const quoted = await chain.api.call.attributionApi.quoteSplit(Number(status.adapter), status.provider, charge, context);
    const payouts = quoted.isSome ? quoted.unwrap().map(([payee, amount]) => ({ payee: payee.toJSON(), amount: BigInt(amount.toString()) })) : [];
    const where = `on channel #${info.channel}, vouched in voucher #${status.sequence}`;
    this.#note(li, `${where} · charged ${formatOpen(charge, chain.decimals, 9)} · paid when the worker redeems it`);
    this.#split(li, payouts, 'its split (the runtime\'s quote_split)');
    const redeemed = await this.#await((r) => r.kind === 'redeemed' && r.channel === info.channel && r.sequence >= status.sequence, 600_000);
    if (redeemed) {
      li.dataset.block = redeemed.block;
      this.#note(li, `${where} · charged ${formatOpen(charge, chain.decimals, 9)} · redeemed with voucher #${redeemed.sequence}`
        + ` (${redeemed.covered} answer${redeemed.covered === 1 ? "" : "s"}, ${formatOpen(redeemed.paid, chain.decimals, 9)}) in block `
        + `<a href="${chain.appsLink(redeemed.block)}" target="_blank" rel="noopener">#${redeemed.block}</a>`);
    }
  }

  /** The first settlement record (already seen or to come) matching `test`, or null after `ms`. */
  #await(test, ms) {
    const seen = this.chain.records.find(test);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const onRecord = (e) => { if (test(e.detail)) { done(e.detail); } };
      const timer = setTimeout(() => done(null), ms);
      const done = (r) => { clearTimeout(timer); this.chain.removeEventListener('record', onRecord); resolve(r); };
      this.chain.addEventListener('record', onRecord);
    });
  }
}
