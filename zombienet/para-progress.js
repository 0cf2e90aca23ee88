// On a relay chain node: waits until the head of a parachain recorded in the relay chain's
// *finalized* state is N blocks past the head recorded in its *best* state when the script
// starts (every block included so far, which the finalized state may lag behind); returns
// the growth observed. So it counts parachain blocks the relay chain included and finalized
// after the script started.
// args: "PARA_ID,N" (zombienet splits the string on commas).
async function run(nodeName, networkInfo, args) {
  const [para, wanted] = (args.length > 1 ? args : String(args[0]).split(',')).map((a) => parseInt(a, 10));
  if (!Number.isInteger(para) || !Number.isInteger(wanted)) {
    throw new Error(`para-progress.js: expected "PARA_ID,N", got ${JSON.stringify(args)}`);
  }
  const { wsUri, userDefinedTypes } = networkInfo.nodesByName[nodeName];
  const api = await zombie.connect(wsUri, userDefinedTypes);
  const headNumber = async (hash) => {
    const head = await (await api.at(hash)).query.paras.heads(para);
    if (head.isNone) return null;
    return api.createType('Header', head.unwrap().toU8a(true)).number.toNumber();
  };
  const start = await headNumber(await api.rpc.chain.getBlockHash());
  if (start === null) throw new Error(`para-progress.js: para ${para} has no head yet`);
  const growth = await new Promise((resolve, reject) => {
    let unsub = null;
    let done = false;
    api.rpc.chain.subscribeFinalizedHeads((header) => {
      headNumber(header.hash).then((n) => {
        if (done || n === null) return;
        if (n - start >= wanted) {
          done = true;
          if (unsub) unsub();
          resolve(n - start);
        }
      }, reject);
    }).then((u) => { unsub = u; }, reject);
  });
  await api.disconnect();
  return growth;
}

module.exports = { run };
