// Calls the chain's view functions (metadata V16) from polkadot.js, knowing only their pallet
// and name: the id, argument types and answer type all come from the node's metadata.
import { compactAddLength, u8aConcat } from '@polkadot/util';

/** The metadata of view function `name` of pallet `pallet` (`Jobs`, `receipt_signing_payload`). */
export function viewFunctionMeta(api, pallet, name) {
  const metadata = api.runtimeMetadata.asLatest;
  const p = metadata.pallets.find((x) => x.name.toString() === pallet);
  if (!p) throw new Error(`no pallet ${pallet} in the metadata`);
  const f = p.viewFunctions.find((x) => x.name.toString() === name);
  if (!f) throw new Error(`no view function ${pallet}.${name} in the metadata`);
  return f;
}

/**
 * Calls view function `pallet.name` with `args` (values polkadot.js can encode as each
 * argument's type) through the `RuntimeViewFunction` runtime API; resolves to the answer
 * decoded as the function's output type.
 */
export async function callView(api, pallet, name, args, at) {
  const f = viewFunctionMeta(api, pallet, name);
  if (f.inputs.length !== args.length) {
    throw new Error(`${pallet}.${name} takes ${f.inputs.length} arguments, got ${args.length}`);
  }
  const typeOf = (ty) => api.registry.createLookupType(ty);
  const input = u8aConcat(...f.inputs.map((param, i) => api.registry.createType(typeOf(param.type), args[i]).toU8a()));
  const q = at ? await api.at(at) : api;
  // A Uint8Array given for a `Vec<u8>` is read as SCALE (length first): add the length.
  const result = await q.call.runtimeViewFunction.executeViewFunction(f.id, compactAddLength(input));
  if (result.isErr) throw new Error(`${pallet}.${name} failed: ${result.asErr.toString()}`);
  return api.registry.createType(typeOf(f.output), result.asOk.toU8a(true));
}
