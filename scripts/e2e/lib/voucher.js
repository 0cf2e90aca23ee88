// Builds and signs a payment-channel voucher in JavaScript, from the byte layout documented in
// primitives/src/voucher.rs: what a gateway written in any language signs.
import { bnToU8a, compactToU8a, stringToU8a, u8aConcat } from '@polkadot/util';
import { blake2AsU8a, ed25519Sign } from '@polkadot/util-crypto';

const u32 = (n) => bnToU8a(n, { bitLength: 32, isLe: true });
const u64 = (n) => bnToU8a(n, { bitLength: 64, isLe: true });
const u128 = (n) => bnToU8a(n, { bitLength: 128, isLe: true });

/**
 * BLAKE2b-256 of the breakdown as SCALE encodes (`Vec<(u32, u128)>`, `Vec<(u32, u32, u128)>`):
 * the adapter list (compact length, then adapter id and amount), then the context list
 * (compact length, then adapter id, DataNet id and amount), integers little-endian.
 */
export function breakdownHash(adapters = [], contexts = []) {
  const parts = [compactToU8a(adapters.length)];
  for (const { adapter, amount } of adapters) parts.push(u32(adapter), u128(amount));
  parts.push(compactToU8a(contexts.length));
  for (const { adapter, datanet, amount } of contexts) parts.push(u32(adapter), u32(datanet), u128(amount));
  return blake2AsU8a(u8aConcat(...parts), 256);
}

/** The 157 bytes a channel's signer signs for a voucher. */
export function voucherPayload({ genesisHash, channel, sequence, cumulative, inferences, receiptsRoot, adapters = [], contexts = [] }) {
  const bytes = u8aConcat(
    stringToU8a('openledger/voucher/v1'),
    genesisHash,
    u64(channel),
    u64(sequence),
    u128(cumulative),
    u64(inferences),
    receiptsRoot,
    breakdownHash(adapters, contexts),
  );
  if (bytes.length !== 157) throw new Error(`voucher payload is ${bytes.length} bytes, expected 157`);
  return bytes;
}

/** A voucher as `channels.redeem` takes it, and its signature by `signerPair` (ed25519). */
export function signVoucher(signerPair, fields) {
  const signature = ed25519Sign(voucherPayload(fields), signerPair);
  const voucher = {
    channel: fields.channel,
    sequence: fields.sequence,
    cumulative: fields.cumulative,
    inferences: fields.inferences,
    receiptsRoot: fields.receiptsRoot,
    adapters: fields.adapters ?? [],
    contexts: fields.contexts ?? [],
  };
  return { voucher, signature };
}
