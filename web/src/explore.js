// The explorer: providers, adapters, DataNets and recent settlements, read from the chain and
// refreshed as blocks come.
import { byId, formatOpen, payeeLabel, shareText, text } from './chain.js';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));
const addr = (a) => `<span class="addr" title="${esc(a)}">${esc(a.slice(0, 10))}…</span>`;
/** Seconds per block of the dev chain (Aura slot); read from the runtime when it says. */
let blockSecs = 3;

export class Explorer {
  constructor(chain) {
    this.chain = chain;
    this.busy = false;
    this.pending = false;
  }

  start() {
    const api = this.chain.api;
    // Aura's slot is twice the timestamp pallet's minimum period.
    const min = api.consts.timestamp?.minimumPeriod;
    if (min) blockSecs = (Number(min.toString()) * 2) / 1000;
    this.chain.addEventListener('block', () => this.refresh());
    this.chain.addEventListener('record', () => this.settlements());
    this.settlements();
    return this.refresh();
  }

  /** Re-reads the tables (one refresh at a time; one more queued if blocks came meanwhile). */
  async refresh() {
    if (this.busy) { this.pending = true; return; }
    this.busy = true;
    try {
      await Promise.all([this.providers(), this.adapters(), this.datanets()]);
    } catch (e) {
      console.warn('explorer refresh failed', e);
    } finally {
      this.busy = false;
      if (this.pending) { this.pending = false; this.refresh(); }
    }
  }

  get dec() { return this.chain.decimals; }

  async providers() {
    const api = this.chain.api;
    const best = this.chain.best;
    const rows = [];
    for (const [key, terms] of await api.query.compute.providers.entries()) {
      const who = key.args[0].toString();
      const t = terms.unwrap();
      const [state, hot] = await Promise.all([api.query.compute.providerStates(who), api.query.compute.hotAdapters(who)]);
      const s = state.isSome ? state.unwrap() : null;
      const beat = s ? best - s.lastHeartbeat.toNumber() : null;
      const region = String.fromCharCode(...t.region);
      const gpu = `${esc(text(t.spec.model))} · ${t.spec.memoryGib} GiB × ${t.spec.gpuCount}`;
      rows.push(`<tr data-provider="${esc(who)}"><td>${addr(who)}</td><td>${gpu}</td><td>${esc(region)}</td>`
        + `<td class="num">${formatOpen(t.pricePer1k.toBigInt(), this.dec, 6)}</td>`
        + `<td class="num">${beat === null ? '–' : `${beat} blocks (${Math.round(beat * blockSecs)} s) ago`}</td>`
        + `<td>${hot.map((a) => `adapter-${a}`).join(', ') || '–'}</td>`
        + `<td class="num">${s ? esc(s.reputation.toString()) : '–'}</td>`
        + `<td class="num">${s ? formatOpen(s.bond.toBigInt(), this.dec, 2) : '–'}</td>`
        + `<td>${s ? esc(s.status.type) : '–'}</td></tr>`);
    }
    $('providers').tBodies[0].innerHTML = rows.join('') || '<tr><td colspan="9">No provider is registered.</td></tr>';
  }

  async adapters() {
    const rows = [];
    for (const [id, a] of await byId(this.chain.api.query.attribution.adapters)) {
      const training = a.training.map(shareText).join(', ') || '–';
      rows.push(`<tr data-adapter="${id}"${a.retired.isTrue ? ' class="retired"' : ''}><td>adapter-${id}${a.retired.isTrue ? ' (retired)' : ''}</td>`
        + `<td>${addr(a.owner.toString())}</td><td class="num">#${a.baseModel}</td><td class="num">${a.rank}</td>`
        + `<td class="num">${formatOpen(a.pricePer1k.toBigInt(), this.dec, 6)}</td><td>${training}</td>`
        + `<td class="num">${formatOpen(a.deposit.toBigInt(), this.dec, 2)}</td></tr>`);
    }
    $('adapters').tBodies[0].innerHTML = rows.join('') || '<tr><td colspan="7">No adapter is registered.</td></tr>';
  }

  async datanets() {
    const api = this.chain.api;
    const rows = [];
    for (const [id, d] of await byId(api.query.attribution.dataNets)) {
      const stakes = await api.query.attribution.stakes.entries(id);
      const contributors = await Promise.all(stakes.map(async ([k, stake]) => {
        const who = k.args[1].toString();
        const pending = await api.call.attributionApi.pendingRewards(id, who);
        return `${addr(who)} ${stake.unwrap().weight.toString()} · ${formatOpen(pending.toBigInt(), this.dec, 9)}`;
      }));
      rows.push(`<tr data-datanet="${id}"><td>#${id}</td><td>${addr(d.owner.toString())}</td><td>${esc(text(d.metadata))}</td>`
        + `<td class="num">${d.records}</td><td>${contributors.join('<br>') || '–'}</td>`
        + `<td class="num">${formatOpen(d.balance.toBigInt(), this.dec, 9)}</td></tr>`);
    }
    $('datanets').tBodies[0].innerHTML = rows.join('') || '<tr><td colspan="6">No DataNet exists yet.</td></tr>';
  }

  settlements() {
    const splits = this.chain.records.filter((r) => r.kind === 'split').slice(-25).reverse();
    $('settlements').tBodies[0].innerHTML = splits.map((r) => {
      const by = r.job !== undefined ? `job #${r.job}` : `channel #${r.channel}, voucher #${r.sequence}`;
      const paid = r.payouts.map(({ payee, amount }) => {
        const { role, who } = payeeLabel(payee);
        return `${role} ${who.length > 14 ? `${esc(who.slice(0, 8))}…` : esc(who)}: ${formatOpen(amount, this.dec, 9)}`;
      }).join('<br>');
      return `<tr><td><a href="${this.chain.appsLink(r.block)}" target="_blank" rel="noopener">#${r.block}</a></td>`
        + `<td>${by}</td><td>adapter-${r.adapter}</td><td class="num">${formatOpen(r.charge, this.dec, 9)}</td><td>${paid}</td></tr>`;
    }).join('') || `<tr><td colspan="5">No settlement in the last blocks.</td></tr>`;
  }
}
