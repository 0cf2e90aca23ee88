// Builds and signs a job receipt in JavaScript, from the byte layout documented in
// primitives/src/receipt.rs: proof that a non-Rust worker can produce one.
import { bnToU8a, compactToU8a, stringToU8a, u8aConcat } from '@polkadot/util';
import { blake2AsU8a, decodeAddress, ed25519Sign } from '@polkadot/util-crypto';

const u32 = (n) => bnToU8a(n, { bitLength: 32, isLe: true });
const u64 = (n) => bnToU8a(n, { bitLength: 64, isLe: true });

/**
 * BLAKE2b-256 of the retrieval context (`{ datanet, share }` entries, the share in parts per
 * million) as SCALE encodes it: compact length, then each DataNet id and share as two
 * little-endian u32.
 */
export function contextHash(context = []) {
  const parts = [compactToU8a(context.length)];
  for (const { datanet, share } of context) parts.push(u32(datanet), u32(share));
  return blake2AsU8a(u8aConcat(...parts), 256);
}

/** A receipt's `commitmentHash` when the worker committed no activations. */
export const NO_COMMITMENT = new Uint8Array(32);

/**
 * The 201 bytes a worker signs for a receipt. `commitmentHash` is the BLAKE2b-256 of the
 * answer's activation commitment (32 zero bytes: none).
 */
export function receiptPayload({ genesisHash, job, provider, adapter, outputHash, inputTokens, outputTokens, context = [], commitmentHash = NO_COMMITMENT }) {
  const bytes = u8aConcat(
    stringToU8a('openledger/receipt/v3'),
    genesisHash,
    u64(job),
    decodeAddress(provider),
    u32(adapter),
    outputHash,
    u32(inputTokens),
    u32(outputTokens),
    contextHash(context),
    commitmentHash,
  );
  if (bytes.length !== 201) throw new Error(`receipt payload is ${bytes.length} bytes, expected 201`);
  return bytes;
}

/** A receipt as `jobs.submitReceipts` takes it, signed by `workerPair` (ed25519). */
export function signReceipt(workerPair, fields) {
  const signature = ed25519Sign(receiptPayload(fields), workerPair);
  return {
    job: fields.job,
    outputHash: fields.outputHash,
    inputTokens: fields.inputTokens,
    outputTokens: fields.outputTokens,
    context: fields.context ?? [],
    commitmentHash: fields.commitmentHash ?? NO_COMMITMENT,
    signature,
  };
}
