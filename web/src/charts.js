// Charts (uPlot): OPEN paid per adapter and per DataNet by block, tokens served per provider,
// and the latency of this page's answers.
import uPlot from 'uplot';
import { payeeLabel } from './chain.js';

const $ = (id) => document.getElementById(id);
const COLORS = ['#4fb3ff', '#3ecf8e', '#f5b94a', '#ff6b6b', '#b38cff', '#5ce1e6', '#ff9ff3', '#c8d6e5'];

/** Cumulative series by block: `points` are {block, key, value}; returns uPlot data and keys. */
function cumulative(points) {
  const keys = [...new Set(points.map((p) => p.key))].sort();
  const blocks = [...new Set(points.map((p) => p.block))].sort((a, b) => a - b);
  const totals = new Map(keys.map((k) => [k, 0]));
  const series = keys.map(() => []);
  for (const b of blocks) {
    for (const p of points.filter((q) => q.block === b)) totals.set(p.key, totals.get(p.key) + p.value);
    keys.forEach((k, i) => series[i].push(totals.get(k)));
  }
  return { keys, data: [blocks, ...series] };
}

export class Charts {
  constructor(chain) {
    this.chain = chain;
    this.latency = [];
    this.plots = new Map();
    this.visible = false;
  }

  /** Re-draws when the tab is open and a settlement came (at most once a second). */
  start() {
    const redraw = () => { if (this.visible) this.draw(); };
    let timer = null;
    this.chain.addEventListener('record', () => { clearTimeout(timer); timer = setTimeout(redraw, 1000); });
  }

  show(visible) { this.visible = visible; if (visible) this.draw(); }

  answered({ at, ttft, total }) {
    this.latency.push({ at: at / 1000, ttft: ttft ?? null, total });
    if (this.visible) this.draw();
  }

  get #unit() { return 10 ** this.chain.decimals; }

  draw() {
    const records = this.chain.records;
    const splits = records.filter((r) => r.kind === 'split');
    const adapters = cumulative(splits.map((r) => ({ block: r.block, key: `adapter-${r.adapter}`, value: Number(r.charge) / this.#unit })));
    this.#plot('chart-adapters', adapters, 'OPEN', 'block');
    const datanet = [];
    for (const r of splits) {
      for (const { payee, amount } of r.payouts) {
        const p = payeeLabel(payee);
        if (p.datanet !== undefined) datanet.push({ block: r.block, key: `DataNet #${p.datanet}`, value: Number(amount) / this.#unit });
      }
    }
    this.#plot('chart-datanets', cumulative(datanet), 'OPEN', 'block');
    const tokens = records.filter((r) => r.kind === 'jobSettled')
      .map((r) => ({ block: r.block, key: `${r.provider.slice(0, 8)}…`, value: r.tokens }));
    this.#plot('chart-tokens', cumulative(tokens), 'tokens (per-job path)', 'block');
    const lat = this.latency;
    const data = lat.length ? { keys: ['first token (ms)', 'whole answer (ms)'], data: [lat.map((l) => l.at), lat.map((l) => l.ttft), lat.map((l) => l.total)] } : { keys: [], data: [[]] };
    this.#plot('chart-latency', data, 'ms', 'time');
  }

  #plot(id, { keys, data }, yLabel, xKind) {
    const el = $(id);
    this.plots.get(id)?.destroy();
    this.plots.delete(id);
    el.replaceChildren();
    if (!keys.length || !data[0].length) {
      el.innerHTML = '<div class="empty">Nothing yet: it fills as answers are settled.</div>';
      return;
    }
    const opts = {
      width: Math.max(320, el.clientWidth - 16),
      height: 220,
      scales: { x: { time: xKind === 'time' } },
      axes: [
        xKind === 'time'
          ? { stroke: '#8d97a5', grid: { stroke: '#2a313b' } }
          : { stroke: '#8d97a5', grid: { stroke: '#2a313b' }, label: 'block', incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000],
            values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? `#${t}` : '')) },
        { stroke: '#8d97a5', grid: { stroke: '#2a313b' }, label: yLabel, size: 70,
          values: (u, ticks) => ticks.map((t) => (t === 0 ? '0' : Number(t.toPrecision(3)).toString())) },
      ],
      series: [{ label: xKind }, ...keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length], width: 2, points: { show: data[0].length < 40 } }))],
    };
    this.plots.set(id, new uPlot(opts, data, el));
  }
}
