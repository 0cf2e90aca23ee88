// Waits until this node's best or finalized height has grown by N blocks from when the
// script started; returns the growth observed (zombienet compares it with the target).
// args: "best,N" or "finalized,N" (zombienet splits the string on commas).
async function run(nodeName, networkInfo, args) {
  const [which, wanted] = args.length > 1 ? args : String(args[0]).split(',');
  const target = parseInt(wanted, 10);
  if (!Number.isInteger(target) || !['best', 'finalized'].includes(which)) {
    throw new Error(`progress.js: expected "best,N" or "finalized,N", got ${JSON.stringify(args)}`);
  }
  const { wsUri, userDefinedTypes } = networkInfo.nodesByName[nodeName];
  const api = await zombie.connect(wsUri, userDefinedTypes);
  const height = async () => {
    const hash = which === 'finalized' ? await api.rpc.chain.getFinalizedHead() : undefined;
    const header = await api.rpc.chain.getHeader(hash);
    return header.number.toNumber();
  };
  const start = await height();
  let now = start;
  while (now - start < target) {
    await new Promise((r) => setTimeout(r, 1000));
    now = await height();
  }
  await api.disconnect();
  return now - start;
}

module.exports = { run };
