//! Vouchers: a payment channel signer's signed statement of what a channel's payer owes its
//! provider, and the exact bytes it signs.
//!
//! A payer opens a channel to a provider in `pallet-channels` with a deposit and names an
//! ed25519 *signer* (a key the gateway holds, never the payer's account key). For every
//! request the provider's worker serves on the channel, the gateway answers with a new
//! [`Voucher`]: the cumulative amount the channel owes, the breakdown of what is new since the
//! channel's last redemption by adapter and by retrieval-context DataNet, the Merkle root of
//! the receipts that make up that new part, and a sequence number. The provider redeems the
//! latest voucher now and then; older ones are worthless once a later one is redeemed.
//!
//! # What the amounts mean
//!
//! - `cumulative`: everything the channel owes the provider since it was opened (never more
//!   than the deposit). A redemption pays `cumulative - redeemed`, the *increment*.
//! - `adapters`: the increment by adapter: one [`AdapterCharge`] per adapter, whose `amount` is
//!   the sum of the charges of the covered receipts that ran it. The amounts sum to exactly the
//!   increment. No adapter appears twice.
//! - `contexts`: for each (adapter, DataNet) pair, the part of that adapter's amount whose
//!   receipts retrieved records of the DataNet as context, weighted by each receipt's share:
//!   `amount = sum over receipts of charge x share`. For each adapter they sum to at most its
//!   amount. On redemption each adapter's amount is split as one receipt's charge is, with each
//!   of its context DataNets at share `amount / adapter amount` (rounded down to the ppm), so
//!   a context DataNet gets its share of the DataNet portion of the adapter's charge exactly as
//!   the receipts would have given it, up to a ppm. No (adapter, DataNet) pair appears twice.
//! - `receipts_root`: the root of the Merkle tree of the receipts the increment covers (their
//!   hashes as the gateway and worker agree; the chain records it and does not interpret it).
//! - `inferences`: how many inferences (receipts) the increment covers.
//!
//! The breakdown is of the increment over the channel's redeemed amount when the voucher was
//! made, so a voucher made before another redemption no longer sums to the increment and is
//! refused; the gateway reads `redeemed` from the chain and issues a fresh one.
//!
//! # Byte layout of the signed message (157 bytes)
//!
//! The message is the SCALE encoding of [`VoucherPayload`] for OpenLedger's types (`Balance =
//! u128`, `Hash = H256`): fixed-width fields, little-endian integers, no length prefixes,
//! concatenated in this order. It is signed as is (ed25519 hashes internally; do not
//! pre-hash).
//!
//! | offset | size | field            | encoding                                         |
//! |-------:|-----:|------------------|--------------------------------------------------|
//! |      0 |   21 | `domain`         | ASCII `openledger/voucher/v1` ([`VOUCHER_DOMAIN`]) |
//! |     21 |   32 | `genesis_hash`   | the chain's genesis block hash                   |
//! |     53 |    8 | `channel`        | `u64` little-endian                              |
//! |     61 |    8 | `sequence`       | `u64` little-endian                              |
//! |     69 |   16 | `cumulative`     | `u128` little-endian                             |
//! |     85 |    8 | `inferences`     | `u64` little-endian                              |
//! |     93 |   32 | `receipts_root`  | 32 raw bytes                                     |
//! |    125 |   32 | `breakdown_hash` | BLAKE2b-256 of the SCALE-encoded breakdown       |
//!
//! The breakdown is encoded as SCALE encodes the pair (`Vec<(u32, u128)>`,
//! `Vec<(u32, u32, u128)>`): the adapter list (a compact length prefix, `4 x n` as one byte for
//! n < 64, then each adapter id as `u32` and amount as `u128`, little-endian) followed by the
//! context list (compact length, then each adapter id `u32`, DataNet id `u32`, amount `u128`).
//! Two empty lists encode as `0x00 0x00`.
//!
//! A JavaScript client builds it with
//! `u8aConcat(stringToU8a('openledger/voucher/v1'), genesisHash, u64(channel), u64(sequence),
//! u128(cumulative), u64(inferences), receiptsRoot, blake2AsU8a(u8aConcat(
//! compactToU8a(adapters.length), ...adapters.flatMap((a) => [u32(a.adapter), u128(a.amount)]),
//! compactToU8a(contexts.length), ...contexts.flatMap((c) => [u32(c.adapter), u32(c.datanet),
//! u128(c.amount)])), 256))` where `uN(x) = bnToU8a(x, { bitLength: N, isLe: true })`
//! (`scripts/e2e/lib/voucher.js`).
//!
//! Signatures are accepted under the same rules as receipts' (see [`crate::receipt`]): the
//! runtime refuses a non-canonical `s` or a small-order `R`, and a signer key of small order.
//! A voucher is identified by its channel and sequence, not by its signature, so signature
//! malleability cannot pay twice.

use crate::market::{AdapterId, DataNetId};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use scale_info::TypeInfo;
use sp_core::{Get, H256};
use sp_runtime::BoundedVec;

/// Identifier of a payment channel, assigned in opening order starting at 0.
pub type ChannelId = u64;

/// Domain separation tag: the first bytes of every signed voucher.
pub const VOUCHER_DOMAIN: [u8; 21] = *b"openledger/voucher/v1";

/// Length of [`VoucherPayload::signing_bytes`] for OpenLedger's `u128` balance and `H256` hash.
pub const VOUCHER_PAYLOAD_LEN: usize = 21 + 32 + 8 + 8 + 16 + 8 + 32 + 32;

/// What the receipts a voucher covers charged for one adapter.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct AdapterCharge<Balance> {
    /// The adapter the receipts ran.
    pub adapter: AdapterId,
    /// The sum of their charges.
    pub amount: Balance,
}

/// The part of one adapter's charge owed to one DataNet retrieved as context (see the module
/// documentation for how it is counted).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    Debug,
    TypeInfo,
    MaxEncodedLen,
)]
pub struct ContextCharge<Balance> {
    /// The adapter whose charge this is part of; it must be in the voucher's adapter list.
    pub adapter: AdapterId,
    /// The DataNet whose records were retrieved.
    pub datanet: DataNetId,
    /// The sum over the adapter's receipts of charge x the DataNet's share.
    pub amount: Balance,
}

/// A signed voucher, as `pallet-channels::redeem` takes it (the signature travels beside it).
///
/// `MaxAdapters` and `MaxContexts` bound the breakdown; the runtime sets them.
#[derive(Encode, Decode, DecodeWithMemTracking, TypeInfo)]
#[scale_info(skip_type_params(MaxAdapters, MaxContexts))]
pub struct Voucher<Balance, MaxAdapters: Get<u32>, MaxContexts: Get<u32>> {
    /// The channel it draws on.
    pub channel: ChannelId,
    /// Its place in the channel's order: a redeemed voucher's sequence must exceed the last.
    pub sequence: u64,
    /// Everything the channel owes since it opened.
    pub cumulative: Balance,
    /// Inferences (receipts) the increment covers.
    pub inferences: u64,
    /// Merkle root of the receipts the increment covers.
    pub receipts_root: H256,
    /// The increment by adapter.
    pub adapters: BoundedVec<AdapterCharge<Balance>, MaxAdapters>,
    /// The context DataNets' parts of the adapters' amounts.
    pub contexts: BoundedVec<ContextCharge<Balance>, MaxContexts>,
}

// Written out rather than derived: a derive would ask the bounds to be `Clone`, `Debug`, ...
impl<Balance: Clone, A: Get<u32>, C: Get<u32>> Clone for Voucher<Balance, A, C> {
    fn clone(&self) -> Self {
        Self {
            channel: self.channel,
            sequence: self.sequence,
            cumulative: self.cumulative.clone(),
            inferences: self.inferences,
            receipts_root: self.receipts_root,
            adapters: self.adapters.clone(),
            contexts: self.contexts.clone(),
        }
    }
}

impl<Balance: PartialEq, A: Get<u32>, C: Get<u32>> PartialEq for Voucher<Balance, A, C> {
    fn eq(&self, other: &Self) -> bool {
        self.channel == other.channel
            && self.sequence == other.sequence
            && self.cumulative == other.cumulative
            && self.inferences == other.inferences
            && self.receipts_root == other.receipts_root
            && self.adapters == other.adapters
            && self.contexts == other.contexts
    }
}

impl<Balance: Eq, A: Get<u32>, C: Get<u32>> Eq for Voucher<Balance, A, C> {}

impl<Balance: core::fmt::Debug, A: Get<u32>, C: Get<u32>> core::fmt::Debug
    for Voucher<Balance, A, C>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Voucher")
            .field("channel", &self.channel)
            .field("sequence", &self.sequence)
            .field("cumulative", &self.cumulative)
            .field("inferences", &self.inferences)
            .field("receipts_root", &self.receipts_root)
            .field("adapters", &self.adapters)
            .field("contexts", &self.contexts)
            .finish()
    }
}

/// The hash of a voucher's breakdown that its signature covers.
pub fn breakdown_hash<Balance: Encode>(
    adapters: &[AdapterCharge<Balance>],
    contexts: &[ContextCharge<Balance>],
) -> H256 {
    <sp_runtime::traits::BlakeTwo256 as sp_runtime::traits::Hash>::hash(
        &(adapters, contexts).encode(),
    )
}

/// The message a channel's signer signs. See the module documentation for its byte layout.
#[derive(Clone, PartialEq, Eq, Encode, Decode, Debug, TypeInfo)]
pub struct VoucherPayload<Balance, Hash = H256> {
    /// Always [`VOUCHER_DOMAIN`].
    pub domain: [u8; 21],
    /// Genesis hash of the chain the voucher is for.
    pub genesis_hash: Hash,
    /// The channel.
    pub channel: ChannelId,
    /// The voucher's sequence number.
    pub sequence: u64,
    /// Cumulative amount owed.
    pub cumulative: Balance,
    /// Inferences the increment covers.
    pub inferences: u64,
    /// Merkle root of the covered receipts.
    pub receipts_root: H256,
    /// [`breakdown_hash`] of the voucher's adapter and context lists.
    pub breakdown_hash: H256,
}

impl<Balance: Encode + Clone, Hash: Encode> VoucherPayload<Balance, Hash> {
    /// The payload of `voucher` on the chain whose genesis hash is `genesis_hash`.
    pub fn new<A: Get<u32>, C: Get<u32>>(
        genesis_hash: Hash,
        voucher: &Voucher<Balance, A, C>,
    ) -> Self {
        Self {
            domain: VOUCHER_DOMAIN,
            genesis_hash,
            channel: voucher.channel,
            sequence: voucher.sequence,
            cumulative: voucher.cumulative.clone(),
            inferences: voucher.inferences,
            receipts_root: voucher.receipts_root,
            breakdown_hash: breakdown_hash(&voucher.adapters, &voucher.contexts),
        }
    }

    /// The exact bytes to sign and verify.
    pub fn signing_bytes(&self) -> alloc::vec::Vec<u8> {
        self.encode()
    }
}

/// Whether `signature` by `signer` over `voucher` is valid for the chain with `genesis_hash`,
/// under the rules of [`crate::receipt`] (canonical `s`, `R` and key not of small order).
/// What the runtime checks, for off-chain code that wants to check a voucher before using it.
#[cfg(feature = "std")]
pub fn verify<Balance: Encode + Clone, A: Get<u32>, C: Get<u32>>(
    genesis_hash: H256,
    voucher: &Voucher<Balance, A, C>,
    signature: &sp_core::ed25519::Signature,
    signer: &sp_core::ed25519::Public,
) -> bool {
    crate::receipt::is_canonical_signature(signature)
        && !crate::receipt::is_small_order_encoding(&signer.0)
        && sp_io_free_verify(signature, &VoucherPayload::new(genesis_hash, voucher), signer)
}

/// `sp_core`'s ed25519 verification, which is what the runtime's host function runs natively.
#[cfg(feature = "std")]
fn sp_io_free_verify<Balance: Encode + Clone>(
    signature: &sp_core::ed25519::Signature,
    payload: &VoucherPayload<Balance>,
    signer: &sp_core::ed25519::Public,
) -> bool {
    <sp_core::ed25519::Pair as sp_core::Pair>::verify(signature, payload.signing_bytes(), signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sp_core::{ed25519, ConstU32, Pair};
    use sp_runtime::traits::Hash as _;

    type TestVoucher = Voucher<u128, ConstU32<4>, ConstU32<4>>;

    fn voucher() -> TestVoucher {
        Voucher {
            channel: 0x0102_0304_0506_0708,
            sequence: 0x1112_1314_1516_1718,
            cumulative: 0x2122_2324_2526_2728_292a_2b2c_2d2e_2f30,
            inferences: 1_000_000,
            receipts_root: H256::repeat_byte(0xbb),
            adapters: alloc::vec![AdapterCharge { adapter: 7, amount: 5u128 }].try_into().unwrap(),
            contexts: alloc::vec![ContextCharge { adapter: 7, datanet: 3, amount: 2u128 }]
                .try_into()
                .unwrap(),
        }
    }

    #[test]
    fn payload_layout_is_fixed() {
        let v = voucher();
        let bytes = VoucherPayload::new(H256::repeat_byte(0xaa), &v).signing_bytes();
        assert_eq!(bytes.len(), VOUCHER_PAYLOAD_LEN);
        assert_eq!(&bytes[0..21], b"openledger/voucher/v1");
        assert_eq!(&bytes[21..53], &[0xaa; 32]);
        assert_eq!(&bytes[53..61], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[61..69], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        assert_eq!(&bytes[69..85], &v.cumulative.to_le_bytes());
        assert_eq!(&bytes[85..93], &1_000_000u64.to_le_bytes());
        assert_eq!(&bytes[93..125], &[0xbb; 32]);
        assert_eq!(&bytes[125..157], breakdown_hash(&v.adapters, &v.contexts).as_bytes());
    }

    #[test]
    fn breakdown_is_hashed_as_two_scale_lists() {
        let v = voucher();
        let mut expected = alloc::vec![1 << 2];
        expected.extend_from_slice(&7u32.to_le_bytes());
        expected.extend_from_slice(&5u128.to_le_bytes());
        expected.push(1 << 2);
        expected.extend_from_slice(&7u32.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&2u128.to_le_bytes());
        assert_eq!(
            breakdown_hash(&v.adapters, &v.contexts),
            sp_runtime::traits::BlakeTwo256::hash(&expected)
        );
        assert_eq!(
            breakdown_hash::<u128>(&[], &[]),
            sp_runtime::traits::BlakeTwo256::hash(&[0, 0])
        );
    }

    #[test]
    fn verify_binds_genesis_and_every_field() {
        let pair = ed25519::Pair::from_seed(&[9; 32]);
        let genesis = H256::repeat_byte(1);
        let v = voucher();
        let signature = pair.sign(&VoucherPayload::new(genesis, &v).signing_bytes());
        assert!(verify(genesis, &v, &signature, &pair.public()));
        assert!(!verify(H256::repeat_byte(2), &v, &signature, &pair.public()));
        let mut other = v.clone();
        other.contexts =
            alloc::vec![ContextCharge { adapter: 7, datanet: 3, amount: 3 }].try_into().unwrap();
        assert!(!verify(genesis, &other, &signature, &pair.public()));
        let mut other = v;
        other.inferences += 1;
        assert!(!verify(genesis, &other, &signature, &pair.public()));
    }
}
