// Starts a real dev chain on free loopback ports for a test, and stops it: `openledger-node
// --dev --tmp` (the solo chain), or, with OPENLEDGER_PARACHAIN_SPEC set (scripts/parachain.sh
// sets it), the parachain runtime on `polkadot-omni-node` in dev mode (blocks sealed and
// finalized every OPENLEDGER_DEV_BLOCK_MS ms, no relay chain).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Path of the node binary: $OPENLEDGER_NODE, or the release build in CARGO_TARGET_DIR. */
export function nodeBinary() {
  if (process.env.OPENLEDGER_NODE) return process.env.OPENLEDGER_NODE;
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/openledger/target');
  const bin = path.join(target, 'release', 'openledger-node');
  if (!existsSync(bin)) {
    throw new Error(`openledger-node not found at ${bin}: build it (scripts/test.sh does) or set OPENLEDGER_NODE`);
  }
  return bin;
}

/**
 * The parachain form, when asked for: { bin, spec, blockMs } of polkadot-omni-node and the
 * parachain's chain spec, or null for the solo chain.
 */
export function parachainTarget() {
  const spec = process.env.OPENLEDGER_PARACHAIN_SPEC;
  if (!spec) return null;
  const bin = process.env.OPENLEDGER_OMNI_NODE;
  if (!bin || !existsSync(bin)) {
    throw new Error(`OPENLEDGER_PARACHAIN_SPEC is set but polkadot-omni-node is not at '${bin}': build it with scripts/polkadot-bins.sh omni-node`);
  }
  if (!existsSync(spec)) {
    throw new Error(`parachain chain spec '${spec}' not found: scripts/parachain.sh spec writes it`);
  }
  return { bin, spec, blockMs: Number(process.env.OPENLEDGER_DEV_BLOCK_MS || 3000) };
}

/** A TCP port that is free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function rpcReady(url, deadline) {
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id: 1, jsonrpc: '2.0', method: 'system_health', params: [] }),
      });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`node RPC at ${url} not ready in time`);
}

/**
 * Starts a dev node. Returns { wsUrl, httpUrl, stop(), logs() }.
 * Extra CLI arguments may be passed in `args`.
 */
export async function startDevNode({ args = [], timeoutMs = 60_000 } = {}) {
  // The node binds its RPC and p2p ports itself (port 0) and logs the RPC address: a port
  // picked here and bound seconds later can be taken in between by another test's
  // listener, and the node then serves on a random port of its own.
  const promPort = await freePort();
  const para = parachainTarget();
  const chainArgs = para
    ? ['--chain', para.spec, '--dev-block-time', String(para.blockMs), '--tmp', '--no-hardware-benchmarks']
    : ['--dev', '--tmp'];
  const child = spawn(
    para ? para.bin : nodeBinary(),
    [
      ...chainArgs,
      '--rpc-port', '0',
      '--prometheus-port', String(promPort),
      '--no-mdns', '--no-telemetry',
      '--listen-addr', '/ip4/127.0.0.1/tcp/0',
      ...args,
    ],
    { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  let rpcPort = null;
  let bound;
  const rpcBound = new Promise((resolve) => { bound = resolve; });
  const keep = (chunk) => {
    output += chunk.toString();
    if (rpcPort === null) {
      const m = /Running JSON-RPC server: addr=[^\n]*?127\.0\.0\.1:(\d+)/.exec(output);
      if (m) {
        rpcPort = Number(m[1]);
        bound(rpcPort);
      }
    }
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const deadline = Date.now() + timeoutMs;
  let httpUrl;
  try {
    await Promise.race([
      (async () => {
        let timer;
        const late = new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`node did not start its RPC server in time:\n${output.slice(-4000)}`)),
            timeoutMs,
          );
        });
        await Promise.race([rpcBound, late]).finally(() => clearTimeout(timer));
        httpUrl = `http://127.0.0.1:${rpcPort}`;
        await rpcReady(httpUrl, deadline);
      })(),
      exited.then(({ code }) => { throw new Error(`node exited early with ${code}:\n${output.slice(-4000)}`); }),
    ]);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }

  return {
    wsUrl: `ws://127.0.0.1:${rpcPort}`,
    httpUrl,
    prometheusUrl: `http://127.0.0.1:${promPort}/metrics`,
    logs: () => output,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
