// Builds and signs a job receipt in JavaScript, from the byte layout documented in
// primitives/src/receipt.rs: proof that a non-Rust worker can produce one.
import { bnToU8a, stringToU8a, u8aConcat } from '@polkadot/util';
import { decodeAddress, ed25519Sign } from '@polkadot/util-crypto';

const u32 = (n) => bnToU8a(n, { bitLength: 32, isLe: true });
const u64 = (n) => bnToU8a(n, { bitLength: 64, isLe: true });

/** The 137 bytes a worker signs for a receipt. */
export function receiptPayload({ genesisHash, job, provider, adapter, outputHash, inputTokens, outputTokens }) {
  const bytes = u8aConcat(
    stringToU8a('openledger/receipt/v1'),
    genesisHash,
    u64(job),
    decodeAddress(provider),
    u32(adapter),
    outputHash,
    u32(inputTokens),
    u32(outputTokens),
  );
  if (bytes.length !== 137) throw new Error(`receipt payload is ${bytes.length} bytes, expected 137`);
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
    signature,
  };
}
