// polkadot.js helpers shared by the end-to-end tests.
import { ApiPromise, WsProvider } from '@polkadot/api';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';

/** Connects polkadot.js to a node; everything it knows comes from the node's metadata. */
export async function connect(wsUrl) {
  await cryptoWaitReady();
  const provider = new WsProvider(wsUrl, 1000, {}, 30_000);
  const api = await ApiPromise.create({ provider, throwOnConnect: true, noInitWarn: true });
  return api;
}

/** The well-known dev accounts (sr25519), with the chain's SS58 prefix. */
export function devAccounts(api) {
  const keyring = new Keyring({ type: 'sr25519', ss58Format: api.registry.chainSS58 });
  const names = ['alice', 'bob', 'charlie', 'dave', 'eve', 'ferdie'];
  return Object.fromEntries(names.map((n) => [n, keyring.addFromUri(`//${n[0].toUpperCase()}${n.slice(1)}`)]));
}

/**
 * Signs and sends `tx` (with polkadot.js signer `options`: nonce, tip, `mode` and `metadataHash`),
 * resolving once it is in a block with its events and the block hash.
 * Rejects with the decoded module error (`pallet.Error`) if the dispatch failed.
 */
export function sendAndWait(api, tx, signer, options = {}) {
  return new Promise((resolve, reject) => {
    let unsub = null;
    tx.signAndSend(signer, options, (result) => {
      const { status, events, dispatchError } = result;
      // A node that imports each block as final (polkadot-omni-node's dev mode, manual seal)
      // reports Finalized without InBlock first.
      if (status.isInBlock || status.isFinalized) {
        const blockHash = status.isInBlock ? status.asInBlock : status.asFinalized;
        if (unsub) unsub();
        if (dispatchError) {
          let name = dispatchError.toString();
          if (dispatchError.isModule) {
            const meta = api.registry.findMetaError(dispatchError.asModule);
            name = `${meta.section}.${meta.name}`;
          }
          const err = new Error(`dispatch failed: ${name}`);
          err.dispatchError = name;
          err.events = events;
          err.blockHash = blockHash;
          reject(err);
        } else {
          resolve({ events, blockHash });
        }
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        if (unsub) unsub();
        reject(new Error(`transaction ${status.type}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}

/**
 * An account's balances at a block (latest when `at` is omitted): free, reserved (held) and
 * their sum, as bigints.
 */
export async function account(api, who, at) {
  const q = at ? await api.at(at) : api;
  const { data } = await q.query.system.account(who);
  const free = data.free.toBigInt();
  const reserved = data.reserved.toBigInt();
  return { free, reserved, total: free + reserved };
}

/** Free balance of an account at a block (latest when `at` is omitted). */
export async function freeBalance(api, who, at) {
  return (await account(api, who, at)).free;
}
