// The chain as the page sees it: a polkadot.js connection that reconnects by itself, a
// watchdog on new blocks, and the ledger of settlements read from block events.
import { ApiPromise, WsProvider } from '@polkadot/api';

/** Milliseconds without a new block after which the chain counts as stalled. */
const STALL_MS = 20_000;
/** Blocks read back at start so the explorer and charts have a history. */
const BACKFILL_BLOCKS = 60;

/** Formats plancks (bigint) as OPEN with up to `digits` decimals (the exact plancks go in titles). */
export function formatOpen(plancks, decimals, digits = 6) {
  const unit = 10n ** BigInt(decimals);
  const whole = plancks / unit;
  const rest = plancks % unit;
  const frac = rest.toString().padStart(decimals, '0').slice(0, digits).replace(/0+$/, '');
  if (whole === 0n && rest !== 0n && frac === '') return `< 0.${'0'.repeat(digits - 1)}1 OPEN`;
  return `${whole}${frac ? `.${frac}` : ''} OPEN`;
}

/** A payee of `attribution.FeeSplit`, as a label and, where it is an account, the account. */
export function payeeLabel(payee) {
  const [kind, value] = Object.entries(payee)[0];
  switch (kind.toLowerCase()) {
    case 'provider': return { role: 'provider', who: value };
    case 'adapterowner': return { role: 'adapter owner', who: value };
    case 'trainingdatanet': return { role: 'DataNet (training)', who: `#${value}`, datanet: value };
    case 'contextdatanet': return { role: 'DataNet (context)', who: `#${value}`, datanet: value };
    case 'treasury': return { role: 'treasury', who: value };
    default: return { role: kind, who: String(value) };
  }
}

/** A storage map keyed by one numeric id, as `[id, value]` pairs (values unwrapped) by id. */
export async function byId(map) {
  const entries = await map.entries();
  return entries.map(([key, value]) => [key.args[0].toNumber(), value.unwrap()]).sort((a, b) => a[0] - b[0]);
}

/** A DataNet share (`DataNetShare`) as `#id (p%)`. */
export function shareText(share) {
  return `#${share.datanet} (${(share.share.toNumber() / 10_000).toFixed(1)}%)`;
}

/** Decodes bounded bytes that hold text. */
export function text(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes.toU8a(true));
  } catch {
    return bytes.toHex();
  }
}

export class Chain extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.api = null;
    this.best = 0;
    this.lastBlockAt = 0;
    this.connected = false;
    /** Settlement records, oldest first: {kind, block, ...} (see `#record`). */
    this.records = [];
    this.decimals = 12;
  }

  /** Connects (retrying every 2 s for as long as the node is away) and starts following blocks. */
  start() {
    const provider = new WsProvider(this.url, 2000);
    provider.on('connected', () => { this.connected = true; this.#status(); });
    provider.on('disconnected', () => { this.connected = false; this.#status(); });
    provider.on('error', () => { this.connected = false; this.#status(); });
    this.api = new ApiPromise({ provider, noInitWarn: true });
    this.api.on('error', () => {});
    this.ready = this.api.isReady.then(async (api) => {
      this.decimals = api.registry.chainDecimals[0] ?? 12;
      this.live = true;
      await this.#backfill();
      // Heads are read one after the other (a block's events before the next's).
      let queue = Promise.resolve();
      await api.rpc.chain.subscribeNewHeads((header) => {
        queue = queue.then(() => this.#onHead(header)).catch((e) => console.warn('reading a block failed', e));
      });
      this.dispatchEvent(new Event('ready'));
      return api;
    });
    setInterval(() => this.#status(), 2000);
    return this;
  }

  /** Whether the chain answers and produces blocks. */
  health() {
    if (!this.connected) return { ok: false, message: `cannot reach the chain node at ${this.url}; retrying` };
    if (!this.lastBlockAt) return { ok: false, message: `connecting to the chain at ${this.url}…` };
    const quiet = Date.now() - this.lastBlockAt;
    if (quiet > STALL_MS) {
      return { ok: false, message: `no new block from ${this.url} for ${Math.round(quiet / 1000)} s; waiting` };
    }
    return { ok: true, message: `block #${this.best}` };
  }

  #status() { this.dispatchEvent(new Event('status')); }

  async #backfill() {
    const header = await this.api.rpc.chain.getHeader();
    const best = header.number.toNumber();
    for (let n = Math.max(1, best - BACKFILL_BLOCKS); n < best; n++) {
      const hash = await this.api.rpc.chain.getBlockHash(n);
      await this.#readBlock(n, hash);
    }
    // New heads read on from here, those that came meanwhile included.
    this.best = best - 1;
  }

  async #onHead(header) {
    const n = header.number.toNumber();
    this.lastBlockAt = Date.now();
    if (n <= this.best) { this.#status(); return; }
    // Blocks missed while away are read too, in order.
    const from = this.best + 1;
    for (let b = from; b <= n; b++) {
      const hash = b === n ? header.hash : await this.api.rpc.chain.getBlockHash(b);
      await this.#readBlock(b, hash);
    }
    this.best = n;
    this.#status();
    this.dispatchEvent(new CustomEvent('block', { detail: { number: n, hash: header.hash.toHex() } }));
  }

  async #readBlock(number, hash) {
    const at = await this.api.at(hash);
    const events = await at.query.system.events();
    const found = [];
    for (const { event } of events) {
      const r = this.#record(event, number, hash.toHex());
      if (r) found.push(r);
    }
    if (found.length) {
      this.records.push(...found);
      if (this.records.length > 5000) this.records.splice(0, this.records.length - 5000);
      for (const r of found) this.dispatchEvent(new CustomEvent('record', { detail: r }));
    }
  }

  /** A settlement-related event as a plain record, or null. */
  #record(event, block, blockHash) {
    const { section, method } = event;
    const f = (name) => event.data[name];
    const num = (name) => Number(f(name).toString());
    const big = (name) => BigInt(f(name).toString());
    const payouts = () => f('payouts').map(([payee, amount]) => ({
      payee: payee.toJSON(), amount: BigInt(amount.toString()),
    }));
    const base = { section, method, block, blockHash };
    if (section === 'attribution' && method === 'FeeSplit') {
      return { ...base, kind: 'split', job: num('job'), adapter: num('adapter'), charge: big('charge'), payouts: payouts() };
    }
    if (section === 'attribution' && method === 'VoucherFeeSplit') {
      return { ...base, kind: 'split', channel: num('channel'), sequence: num('sequence'), adapter: num('adapter'),
        charge: big('charge'), payouts: payouts() };
    }
    if (section === 'jobs' && method === 'JobSettled') {
      return { ...base, kind: 'jobSettled', job: num('job'), provider: f('provider').toString(),
        tokens: num('inputTokens') + num('outputTokens'), charged: big('charged') };
    }
    if (section === 'channels' && method === 'VoucherRedeemed') {
      return { ...base, kind: 'redeemed', channel: num('channel'), sequence: num('sequence'),
        provider: f('provider').toString(), paid: big('paid'), covered: num('covered') };
    }
    return null;
  }

  /** polkadot.js Apps pointed at this node, on block `n`. */
  appsLink(n) {
    return `https://polkadot.js.org/apps/?rpc=${encodeURIComponent(this.url)}#/explorer/query/${n}`;
  }
}
