//! Receipts: a worker's signed statement that it ran a job, and the exact bytes it signs.
//!
//! A worker signs [`ReceiptPayload::signing_bytes`] with its ed25519 key (the key its provider
//! registered in `pallet-compute`) and submits a [`Receipt`] to `pallet-jobs`. The runtime
//! rebuilds the payload from the job it has on record and checks the signature, so a receipt
//! cannot be moved to another chain, job, provider or adapter, and no field can be altered.
//!
//! A receipt may name the DataNets whose records the answer retrieved as context, each with
//! its share of the DataNets' portion of the charge (parts per million, summing to at most
//! 1,000,000, no DataNet twice, at most [`MAX_RECEIPT_CONTEXT`]). The worker signs a hash of
//! that list, so nobody can add, drop or reweigh a context DataNet after signing.
//!
//! A receipt also carries the BLAKE2b-256 hash of the answer's activation commitment (the
//! engine's `ActivationCommitment` bytes: two 32-bit entries per generated token, see
//! `openledger_engine::commitment`), or all zeros when the worker committed none. The worker
//! keeps the commitment for the challenge window; a verifier sampled to check the job compares
//! what the worker hands over with this hash before recomputing it, so the commitment cannot be
//! chosen after the job was sampled.
//!
//! # Byte layout of the signed message (201 bytes)
//!
//! The message is the SCALE encoding of [`ReceiptPayload`]: fixed-width fields, little-endian
//! integers, no length prefixes, concatenated in this order. It is signed as is (ed25519
//! hashes internally; do not pre-hash).
//!
//! | offset | size | field           | encoding                                        |
//! |-------:|-----:|-----------------|-------------------------------------------------|
//! |      0 |   21 | `domain`        | ASCII `openledger/receipt/v3` ([`RECEIPT_DOMAIN`]) |
//! |     21 |   32 | `genesis_hash`  | the chain's genesis block hash                  |
//! |     53 |    8 | `job`           | `u64` little-endian                             |
//! |     61 |   32 | `provider`      | the provider's operator account (32 raw bytes)  |
//! |     93 |    4 | `adapter`       | `u32` little-endian                             |
//! |     97 |   32 | `output_hash`   | hash of the generated output                    |
//! |    129 |    4 | `input_tokens`  | `u32` little-endian                             |
//! |    133 |    4 | `output_tokens` | `u32` little-endian                             |
//! |    137 |   32 | `context_hash`  | BLAKE2b-256 of the SCALE-encoded context list   |
//! |    169 |   32 | `commitment_hash` | BLAKE2b-256 of the activation commitment, or zeros |
//!
//! The context list is encoded as SCALE encodes a `Vec<(u32, u32)>`: a compact length prefix
//! (`4 x n` as one byte for n < 64), then each (DataNet id, share in ppm) as two `u32`
//! little-endian. The empty list encodes as the single byte `0x00`.
//!
//! A JavaScript client builds it with
//! `u8aConcat(stringToU8a('openledger/receipt/v3'), genesisHash, bnToU8a(job, {bitLength: 64}),
//! decodeAddress(provider), bnToU8a(adapter, {bitLength: 32}), outputHash,
//! bnToU8a(inputTokens, {bitLength: 32}), bnToU8a(outputTokens, {bitLength: 32}),
//! blake2AsU8a(u8aConcat(compactToU8a(ctx.length), ...ctx.flatMap(([d, ppm]) =>
//! [bnToU8a(d, {bitLength: 32}), bnToU8a(ppm, {bitLength: 32})])), 256), commitmentHash)`.
//!
//! # Which signatures are accepted
//!
//! The runtime verifies with `sp_io::crypto::ed25519_verify` (ed25519-zebra, ZIP-215 rules)
//! and additionally rejects what ed25519-dalek's `verify_strict` rejects and ZIP-215 accepts:
//! a small-order `R` ([`is_small_order_encoding`]). Small-order worker keys are refused at
//! registration. A non-canonical `s` (`s >= l`) is rejected by both libraries. The one
//! remaining difference: ZIP-215 accepts a non-canonical encoding of `R` (a y-coordinate
//! `>= p`) where `verify_strict` recomputes `R` and compares bytes; such an `R` cannot come out
//! of an honest signer and does not let anyone but the key holder sign, and since receipts are
//! identified by job id rather than by signature, malleability cannot cause a double payment.

use crate::market::{AdapterId, DataNetShare, JobId};
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use scale_info::TypeInfo;
use sp_core::{ed25519, ConstU32, H256};
use sp_runtime::BoundedVec;

/// Domain separation tag: the first bytes of every signed receipt.
pub const RECEIPT_DOMAIN: [u8; 21] = *b"openledger/receipt/v3";

/// Length of [`ReceiptPayload::signing_bytes`] for a 32-byte account id.
pub const RECEIPT_PAYLOAD_LEN: usize = 21 + 32 + 8 + 32 + 4 + 32 + 4 + 4 + 32 + 32;

/// The `commitment_hash` of a receipt whose worker committed no activations.
pub const NO_COMMITMENT: H256 = H256::zero();

/// The hash of an activation commitment's bytes that a receipt's signature covers.
pub fn commitment_hash(commitment: &[u8]) -> H256 {
    <sp_runtime::traits::BlakeTwo256 as sp_runtime::traits::Hash>::hash(commitment)
}

/// Most context DataNets one receipt may name.
pub const MAX_RECEIPT_CONTEXT: u32 = 8;

/// The retrieval context of a receipt: each DataNet with its share of the DataNets' portion.
pub type ReceiptContext = BoundedVec<DataNetShare, ConstU32<MAX_RECEIPT_CONTEXT>>;

/// The hash of a context list that a receipt's signature covers.
pub fn context_hash(context: &[DataNetShare]) -> H256 {
    <sp_runtime::traits::BlakeTwo256 as sp_runtime::traits::Hash>::hash(&context.encode())
}

/// What a worker submits on-chain for a finished job.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct Receipt {
    /// The job this receipt settles.
    pub job: JobId,
    /// Hash of the output the worker returned to the gateway.
    pub output_hash: H256,
    /// Prompt tokens processed.
    pub input_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
    /// DataNets whose records the answer retrieved as context, with their shares.
    pub context: ReceiptContext,
    /// [`commitment_hash`] of the answer's activation commitment ([`NO_COMMITMENT`]: none).
    pub commitment_hash: H256,
    /// ed25519 signature by the provider's worker key over the [`ReceiptPayload`].
    pub signature: ed25519::Signature,
}

/// A receipt's fields before it is signed: what a client gives the chain's
/// `Jobs::receipt_signing_payload` view function to get the exact bytes to sign.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, Debug, TypeInfo, MaxEncodedLen,
)]
pub struct ReceiptFields {
    /// The job the receipt settles.
    pub job: JobId,
    /// Hash of the output the worker returned to the gateway.
    pub output_hash: H256,
    /// Prompt tokens processed.
    pub input_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
    /// DataNets whose records the answer retrieved as context, with their shares.
    pub context: ReceiptContext,
    /// [`commitment_hash`] of the answer's activation commitment ([`NO_COMMITMENT`]: none).
    pub commitment_hash: H256,
}

/// The message a worker signs. See the module documentation for its byte layout, which
/// assumes `Hash` is OpenLedger's block hash type, `H256` (32 bytes).
#[derive(Clone, PartialEq, Eq, Encode, Decode, Debug, TypeInfo)]
pub struct ReceiptPayload<AccountId, Hash = H256> {
    /// Always [`RECEIPT_DOMAIN`].
    pub domain: [u8; 21],
    /// Genesis hash of the chain the receipt is for.
    pub genesis_hash: Hash,
    /// The job.
    pub job: JobId,
    /// The provider (operator account) the job was assigned to.
    pub provider: AccountId,
    /// The adapter the job ran.
    pub adapter: AdapterId,
    /// Hash of the output.
    pub output_hash: H256,
    /// Prompt tokens processed.
    pub input_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
    /// [`context_hash`] of the receipt's context list.
    pub context_hash: H256,
    /// The receipt's [`commitment_hash`].
    pub commitment_hash: H256,
}

impl<AccountId: Encode, Hash: Encode> ReceiptPayload<AccountId, Hash> {
    /// The payload for `receipt` of a job run by `provider` with `adapter` on the chain whose
    /// genesis hash is `genesis_hash`.
    pub fn new(
        genesis_hash: Hash,
        provider: AccountId,
        adapter: AdapterId,
        receipt: &Receipt,
    ) -> Self {
        Self::for_fields(
            genesis_hash,
            provider,
            adapter,
            &ReceiptFields {
                job: receipt.job,
                output_hash: receipt.output_hash,
                input_tokens: receipt.input_tokens,
                output_tokens: receipt.output_tokens,
                context: receipt.context.clone(),
                commitment_hash: receipt.commitment_hash,
            },
        )
    }

    /// The payload for a receipt with `fields`, before it is signed.
    pub fn for_fields(
        genesis_hash: Hash,
        provider: AccountId,
        adapter: AdapterId,
        fields: &ReceiptFields,
    ) -> Self {
        Self {
            domain: RECEIPT_DOMAIN,
            genesis_hash,
            job: fields.job,
            provider,
            adapter,
            output_hash: fields.output_hash,
            input_tokens: fields.input_tokens,
            output_tokens: fields.output_tokens,
            context_hash: context_hash(&fields.context),
            commitment_hash: fields.commitment_hash,
        }
    }

    /// The exact bytes to sign and verify.
    pub fn signing_bytes(&self) -> alloc::vec::Vec<u8> {
        self.encode()
    }
}

/// Order of the ed25519 base point, little-endian: a signature's `s` must be below it.
pub const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Whether the little-endian scalar `s` is fully reduced (`s < l`).
fn is_canonical_scalar(s: &[u8]) -> bool {
    // Compare from the most significant byte down.
    for (a, b) in s.iter().rev().zip(GROUP_ORDER.iter().rev()) {
        if a != b {
            return a < b;
        }
    }
    false
}

/// Whether `signature` is in the canonical form both ed25519 libraries accept: `s` reduced
/// and `R` not of small order (see the module documentation). Receipts and vouchers are
/// checked with it before the signature is verified.
pub fn is_canonical_signature(signature: &ed25519::Signature) -> bool {
    let bytes: &[u8; 64] = &signature.0;
    let (r, s) = bytes.split_at(32);
    let r: [u8; 32] = r.try_into().unwrap_or([0; 32]);
    is_canonical_scalar(s) && !is_small_order_encoding(&r)
}

/// Whether the 32-byte point encoding `p` is one of the eight points of small order on
/// edwards25519, in canonical or non-canonical form (the sign bit is ignored).
///
/// A signature whose `R` is such a point, or a public key that is one, is accepted by some
/// verifiers (ZIP-215) and refused by others (`verify_strict`); OpenLedger refuses both.
pub fn is_small_order_encoding(p: &[u8; 32]) -> bool {
    let mut y = *p;
    if let Some(sign_byte) = y.last_mut() {
        *sign_byte &= 0x7f;
    }
    SMALL_ORDER_Y.contains(&y)
}

/// Encodings (sign bit cleared) of the small-order points: their canonical y-coordinates and
/// the non-canonical ones (`p` for 0, `p + 1` for 1) that some decoders accept.
const SMALL_ORDER_Y: [[u8; 32]; 7] = [
    // y = 0 (order 4).
    [0; 32],
    // y = 1: the identity (order 1).
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    // Order 8.
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    // Order 8.
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    // y = p - 1 (order 2).
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p, non-canonical 0 (order 4).
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p + 1, non-canonical 1 (order 1).
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

#[cfg(test)]
mod tests {
    use super::*;
    use sp_runtime::{traits::Hash as _, Permill};

    #[test]
    fn payload_layout_is_fixed() {
        let receipt = Receipt {
            job: 0x0102_0304_0506_0708,
            output_hash: H256::repeat_byte(0xbb),
            input_tokens: 0x11223344,
            output_tokens: 0x55667788,
            context: ReceiptContext::default(),
            commitment_hash: H256::repeat_byte(0xdd),
            signature: ed25519::Signature::from_raw([0; 64]),
        };
        let payload =
            ReceiptPayload::new(H256::repeat_byte(0xaa), [0xcc_u8; 32], 0x0a0b0c0d, &receipt);
        let bytes = payload.signing_bytes();
        assert_eq!(bytes.len(), RECEIPT_PAYLOAD_LEN);
        assert_eq!(&bytes[0..21], b"openledger/receipt/v3");
        assert_eq!(&bytes[21..53], &[0xaa; 32]);
        assert_eq!(&bytes[53..61], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[61..93], &[0xcc; 32]);
        assert_eq!(&bytes[93..97], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&bytes[97..129], &[0xbb; 32]);
        assert_eq!(&bytes[129..133], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[133..137], &[0x88, 0x77, 0x66, 0x55]);
        // The empty list encodes as one zero byte.
        assert_eq!(&bytes[137..169], context_hash(&[]).as_bytes());
        assert_eq!(context_hash(&[]), sp_runtime::traits::BlakeTwo256::hash(&[0]));
        assert_eq!(&bytes[169..201], &[0xdd; 32]);
    }

    #[test]
    fn context_is_hashed_as_a_scale_list_of_u32_pairs() {
        let context = [
            DataNetShare::new(7, Permill::from_parts(250_000)),
            DataNetShare::new(0x0102_0304, Permill::from_percent(1)),
        ];
        let mut expected = alloc::vec![2 << 2];
        for (d, ppm) in [(7u32, 250_000u32), (0x0102_0304, 10_000)] {
            expected.extend_from_slice(&d.to_le_bytes());
            expected.extend_from_slice(&ppm.to_le_bytes());
        }
        assert_eq!(context_hash(&context), sp_runtime::traits::BlakeTwo256::hash(&expected));
        assert_ne!(context_hash(&context), context_hash(&context[..1]));
        // The named struct encodes exactly as the (DataNet, share) pair it replaced.
        assert_eq!(context[0].encode(), (7u32, Permill::from_parts(250_000)).encode());
    }

    #[test]
    fn small_order_check_ignores_sign_bit() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(is_small_order_encoding(&identity));
        identity[31] |= 0x80;
        assert!(is_small_order_encoding(&identity));
        assert!(!is_small_order_encoding(&[7; 32]));
    }
}
