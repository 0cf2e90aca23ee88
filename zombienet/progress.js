// Waits until this node's best or finalized height has grown by N blocks from the first head
// it reports; returns the growth observed (zombienet compares it with the target).
// args: "best,N" or "finalized,N" (zombienet splits the string on commas).
async function run(nodeName, networkInfo, args) {
  const [which, wanted] = args.length > 1 ? args : String(args[0]).split(',');
  const target = parseInt(wanted, 10);
  if (!Number.isInteger(target) || !['best', 'finalized'].includes(which)) {
    throw new Error(`progress.js: expected "best,N" or "finalized,N", got ${JSON.stringify(args)}`);
  }
  const { wsUri, userDefinedTypes } = networkInfo.nodesByName[nodeName];
  const api = await zombie.connect(wsUri, userDefinedTypes);
  const subscribe = which === 'finalized' ? api.rpc.chain.subscribeFinalizedHeads : api.rpc.chain.subscribeNewHeads;
  // Subscriptions, not polling: repeated identical queries may be answered from a cache.
  const growth = await new Promise((resolve, reject) => {
    let start = null;
    let unsub = null;
    subscribe((header) => {
      const n = header.number.toNumber();
      if (start === null) start = n;
      if (n - start >= target) {
        if (unsub) unsub();
        resolve(n - start);
      }
    }).then((u) => { unsub = u; }, reject);
  });
  await api.disconnect();
  return growth;
}

module.exports = { run };
