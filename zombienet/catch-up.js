// Returns 1 once this node's finalized height has reached the finalized height another node
// (args[0]) had when the script started, and its best block is at least that high.
async function run(nodeName, networkInfo, args) {
  const other = networkInfo.nodesByName[args[0]];
  const me = networkInfo.nodesByName[nodeName];
  const otherApi = await zombie.connect(other.wsUri, other.userDefinedTypes);
  const finalizedOf = async (api) =>
    (await api.rpc.chain.getHeader(await api.rpc.chain.getFinalizedHead())).number.toNumber();
  const target = await finalizedOf(otherApi);
  await otherApi.disconnect();

  // The node may still be restarting: retry the connection.
  let api;
  for (;;) {
    try {
      api = await zombie.connect(me.wsUri, me.userDefinedTypes);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  for (;;) {
    const fin = await finalizedOf(api);
    const best = (await api.rpc.chain.getHeader()).number.toNumber();
    if (fin >= target && best >= target) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  await api.disconnect();
  return 1;
}

module.exports = { run };
