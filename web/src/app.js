// Open Chat's entry point: reads the gateway's page configuration, connects to the chain,
// and wires the three tabs. A gateway or chain that goes away is named in a banner until it
// is back.
import { Chain } from './chain.js';
import { Chat } from './chat.js';
import { Explorer } from './explore.js';
import { Charts } from './charts.js';

const $ = (id) => document.getElementById(id);

const state = { gateway: { ok: false, message: 'contacting the gateway…' }, chain: { ok: false, message: 'connecting to the chain…' } };

function showStatus() {
  const pill = (el, s, name) => {
    el.className = `pill ${s.ok ? 'ok' : 'down'}`;
    el.textContent = s.ok ? `${name} ${s.message}` : `${name} down`;
    el.title = s.message;
  };
  pill($('gateway-status'), state.gateway, 'gateway');
  pill($('chain-status'), state.chain, 'chain');
  const problems = [state.gateway, state.chain].filter((s) => !s.ok).map((s) => s.message);
  $('banner').hidden = problems.length === 0;
  $('banner').textContent = problems.join(' · ');
  document.body.dataset.gateway = state.gateway.ok ? 'up' : 'down';
  document.body.dataset.chain = state.chain.ok ? 'up' : 'down';
}

/** Polls the gateway's /health every 3 s (2-s timeout: a hung gateway counts as away). */
function watchGateway(onBack) {
  const check = async () => {
    const was = state.gateway.ok;
    try {
      const r = await fetch('/health', { signal: AbortSignal.timeout(2000), cache: 'no-store' });
      state.gateway = r.ok ? { ok: true, message: 'up' } : { ok: false, message: `the gateway answers HTTP ${r.status} on /health` };
    } catch {
      state.gateway = { ok: false, message: `cannot reach the gateway at ${location.origin}; retrying` };
    }
    if (state.gateway.ok && !was) onBack();
    showStatus();
  };
  check();
  setInterval(check, 3000);
}

async function loadConfig() {
  for (;;) {
    try {
      const r = await fetch('/chat/config', { signal: AbortSignal.timeout(5000), cache: 'no-store' });
      if (r.ok) return await r.json();
      state.gateway = { ok: false, message: `the gateway's /chat/config answers HTTP ${r.status}` };
    } catch {
      state.gateway = { ok: false, message: `cannot reach the gateway at ${location.origin}; retrying` };
    }
    showStatus();
    await new Promise((res) => setTimeout(res, 2000));
  }
}

async function main() {
  showStatus();
  const config = await loadConfig();
  const chain = new Chain(config.chain_url).start();
  chain.addEventListener('status', () => { state.chain = chain.health(); showStatus(); });
  const charts = new Charts(chain);
  const chat = new Chat({ config, chain, onAnswer: (a) => charts.answered(a) });
  const explorer = new Explorer(chain);
  const loadAdapters = () => chat.loadAdapters().then(
    (list) => { document.body.dataset.adapters = list.length; },
    (e) => { state.gateway = { ok: false, message: `the gateway's model list failed: ${e.message}` }; showStatus(); },
  );
  watchGateway(loadAdapters);
  for (const button of document.querySelectorAll('nav button')) {
    button.addEventListener('click', () => {
      for (const b of document.querySelectorAll('nav button')) b.classList.toggle('active', b === button);
      for (const tab of document.querySelectorAll('.tab')) tab.hidden = tab.id !== `tab-${button.dataset.tab}`;
      charts.show(button.dataset.tab === 'charts');
    });
  }
  chain.ready.then(() => {
    charts.start();
    chat.describe();
    const datanets = () => chat.loadDataNets().catch((e) => console.warn('reading DataNets failed', e));
    datanets();
    chain.addEventListener('block', datanets);
    return explorer.start();
  }).then(() => { document.body.dataset.explorer = 'ready'; });
}

main();
