//! Service receipts: a worker's signed statement that it served one request on a channel.
//!
//! A receipt never goes on chain by itself. The gateway checks it, adds its charge to the
//! channel's next voucher and its hash to the voucher's Merkle tree ([`crate::merkle`]); the
//! worker keeps it until the voucher that covers it is redeemed, as its evidence.
//!
//! # Byte layout of the signed message
//!
//! The SCALE encoding of the domain, the genesis hash and the receipt's fields: fixed-width
//! little-endian integers, raw hashes, and the context list as a SCALE vector (compact length,
//! then each DataNet id `u32` and share `u32` in parts per million), then the hash of the
//! answer's activation commitment. Signed with the worker's ed25519 key as is (not pre-hashed).
//!
//! | offset | size | field | encoding |
//! |-------:|-----:|-------|----------|
//! | 0 | 29 | `domain` | ASCII `openledger/service-receipt/v2` ([`SERVICE_RECEIPT_DOMAIN`]) |
//! | 29 | 32 | `genesis_hash` | the chain's genesis block hash |
//! | 61 | 8 | `channel` | `u64` |
//! | 69 | 8 | `request` | `u64`, the gateway's id of the request, unique per channel |
//! | 77 | 4 | `adapter` | `u32` |
//! | 81 | 32 | `input_hash` | BLAKE2b-256 of the job payload the worker ran |
//! | 113 | 32 | `output_hash` | BLAKE2b-256 of the output text |
//! | 145 | 4 | `input_tokens` | `u32` |
//! | 149 | 4 | `output_tokens` | `u32` |
//! | 153 | 16 | `charge` | `u128`, planck |
//! | 169 | 1 + 8n | `contexts` | compact `n`, then `n` x (`u32` DataNet, `u32` ppm) |
//! | 170 + 8n | 32 | `commitment_hash` | BLAKE2b-256 of the activation commitment, zeros for none |
//!
//! A version 1 receipt (domain `openledger/service-receipt/v1`, signed before receipts carried
//! commitments) is the same without the last field; one a worker kept from then still verifies
//! and keeps its leaf ([`ServiceReceipt::commitment_hash`] is `None`).
//!
//! The receipt's leaf in a voucher's Merkle tree is the BLAKE2b-256 of these bytes.

use codec::{Decode, Encode};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use openledger_primitives::market::{AdapterId, DataNetId};
use openledger_primitives::voucher::ChannelId;

use crate::error::ChannelError;

/// Domain separation tag: the first bytes of every signed service receipt (the chain decodes
/// revealed receipts with the same tag).
pub use openledger_primitives::service_receipt::SERVICE_RECEIPT_DOMAIN;

/// The tag of version 1 receipts, which carried no commitment hash.
pub const SERVICE_RECEIPT_DOMAIN_V1: [u8; 29] = *b"openledger/service-receipt/v1";

/// Retrieval-context DataNets a receipt may name (as many as a voucher's context list holds).
pub const MAX_RECEIPT_CONTEXTS: usize =
    openledger_primitives::receipt::MAX_RECEIPT_CONTEXT as usize;

/// A DataNet whose records were retrieved as context for the answer, and its share of the
/// DataNet part of the charge (parts per million).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ContextShare {
    pub datanet: DataNetId,
    pub ppm: u32,
}

/// What the worker served for one request, and what it charges for it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ServiceReceipt {
    pub channel: ChannelId,
    /// The gateway's id of the request (unique per channel).
    pub request: u64,
    pub adapter: AdapterId,
    pub input_hash: [u8; 32],
    pub output_hash: [u8; 32],
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Planck the request costs the channel.
    pub charge: u128,
    pub contexts: Vec<ContextShare>,
    /// BLAKE2b-256 of the answer's activation commitment, which the worker keeps for
    /// verifiers (zeros: it committed none). `None` only for a version 1 receipt, signed
    /// before receipts carried it.
    pub commitment_hash: Option<[u8; 32]>,
}

/// The fields every receipt version signs, in their order (see the module documentation).
#[derive(Encode)]
struct SignedFields<'r> {
    channel: ChannelId,
    request: u64,
    adapter: AdapterId,
    input_hash: &'r [u8; 32],
    output_hash: &'r [u8; 32],
    input_tokens: u32,
    output_tokens: u32,
    charge: u128,
    contexts: &'r [ContextShare],
}

/// A version 1 receipt as a worker's store kept it before receipts carried a commitment hash.
#[derive(Decode)]
pub(crate) struct SignedReceiptV1 {
    channel: ChannelId,
    request: u64,
    adapter: AdapterId,
    input_hash: [u8; 32],
    output_hash: [u8; 32],
    input_tokens: u32,
    output_tokens: u32,
    charge: u128,
    contexts: Vec<ContextShare>,
    signature: [u8; 64],
}

impl SignedReceipt {
    /// The bytes a version 1 worker stored for this receipt: its fields and signature, no
    /// commitment hash (for tests of reading them back).
    #[cfg(test)]
    pub(crate) fn version_1_bytes(&self) -> Vec<u8> {
        let r = &self.receipt;
        let mut bytes = (
            r.channel,
            r.request,
            r.adapter,
            r.input_hash,
            r.output_hash,
            r.input_tokens,
            r.output_tokens,
            r.charge,
            &r.contexts,
        )
            .encode();
        bytes.extend_from_slice(&self.signature);
        bytes
    }
}

impl From<SignedReceiptV1> for SignedReceipt {
    fn from(v1: SignedReceiptV1) -> Self {
        SignedReceipt {
            receipt: ServiceReceipt {
                channel: v1.channel,
                request: v1.request,
                adapter: v1.adapter,
                input_hash: v1.input_hash,
                output_hash: v1.output_hash,
                input_tokens: v1.input_tokens,
                output_tokens: v1.output_tokens,
                charge: v1.charge,
                contexts: v1.contexts,
                commitment_hash: None,
            },
            signature: v1.signature,
        }
    }
}

/// A receipt with the worker's signature.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedReceipt {
    pub receipt: ServiceReceipt,
    pub signature: [u8; 64],
}

impl ServiceReceipt {
    /// The exact bytes the worker signs for the chain with `genesis_hash`.
    pub fn signing_bytes(&self, genesis_hash: [u8; 32]) -> Vec<u8> {
        let fields = SignedFields {
            channel: self.channel,
            request: self.request,
            adapter: self.adapter,
            input_hash: &self.input_hash,
            output_hash: &self.output_hash,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            charge: self.charge,
            contexts: &self.contexts,
        };
        match &self.commitment_hash {
            Some(commitment) => (SERVICE_RECEIPT_DOMAIN, genesis_hash, fields, commitment).encode(),
            None => (SERVICE_RECEIPT_DOMAIN_V1, genesis_hash, fields).encode(),
        }
    }

    /// The receipt's leaf in a voucher's Merkle tree.
    pub fn leaf(&self, genesis_hash: [u8; 32]) -> [u8; 32] {
        sp_crypto_hashing::blake2_256(&self.signing_bytes(genesis_hash))
    }

    /// Signs it with the worker key.
    pub fn sign(self, worker: &SigningKey, genesis_hash: [u8; 32]) -> SignedReceipt {
        let signature = worker.sign(&self.signing_bytes(genesis_hash)).to_bytes();
        SignedReceipt { receipt: self, signature }
    }

    /// Refuses a receipt no voucher could carry: too many context DataNets, shares over one
    /// million parts in all, or a DataNet named twice.
    pub fn check_shape(&self) -> Result<(), ChannelError> {
        if self.contexts.len() > MAX_RECEIPT_CONTEXTS {
            return Err(ChannelError::BadReceipt(format!(
                "{} context DataNets, at most {MAX_RECEIPT_CONTEXTS}",
                self.contexts.len()
            )));
        }
        let total: u64 = self.contexts.iter().map(|c| u64::from(c.ppm)).sum();
        if total > 1_000_000 {
            return Err(ChannelError::BadReceipt(format!(
                "context shares sum to {total} ppm, over one million"
            )));
        }
        for (i, c) in self.contexts.iter().enumerate() {
            if self.contexts[..i].iter().any(|d| d.datanet == c.datanet) {
                return Err(ChannelError::BadReceipt(format!(
                    "DataNet {} named twice as context",
                    c.datanet
                )));
            }
        }
        Ok(())
    }
}

impl SignedReceipt {
    /// Checks the worker's signature for the chain with `genesis_hash`.
    pub fn verify(
        &self,
        worker: &VerifyingKey,
        genesis_hash: [u8; 32],
    ) -> Result<(), ChannelError> {
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        worker
            .verify(&self.receipt.signing_bytes(genesis_hash), &signature)
            .map_err(|_| ChannelError::BadSignature("service receipt (worker key)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn receipt() -> ServiceReceipt {
        ServiceReceipt {
            channel: 0x0102_0304_0506_0708,
            request: 9,
            adapter: 3,
            input_hash: [0x11; 32],
            output_hash: [0x22; 32],
            input_tokens: 40,
            output_tokens: 16,
            charge: 1_234_567,
            contexts: vec![ContextShare { datanet: 5, ppm: 250_000 }],
            commitment_hash: Some([0x33; 32]),
        }
    }

    #[test]
    fn payload_layout_is_fixed() {
        let r = receipt();
        let bytes = r.signing_bytes([0xaa; 32]);
        assert_eq!(bytes.len(), 169 + 1 + 8 + 32);
        assert_eq!(&bytes[0..29], b"openledger/service-receipt/v2");
        assert_eq!(&bytes[29..61], &[0xaa; 32]);
        assert_eq!(&bytes[61..69], &r.channel.to_le_bytes());
        assert_eq!(&bytes[69..77], &9u64.to_le_bytes());
        assert_eq!(&bytes[77..81], &3u32.to_le_bytes());
        assert_eq!(&bytes[81..113], &[0x11; 32]);
        assert_eq!(&bytes[113..145], &[0x22; 32]);
        assert_eq!(&bytes[145..149], &40u32.to_le_bytes());
        assert_eq!(&bytes[149..153], &16u32.to_le_bytes());
        assert_eq!(&bytes[153..169], &1_234_567u128.to_le_bytes());
        assert_eq!(bytes[169], 1 << 2);
        assert_eq!(&bytes[170..174], &5u32.to_le_bytes());
        assert_eq!(&bytes[174..178], &250_000u32.to_le_bytes());
        assert_eq!(&bytes[178..210], &[0x33; 32]);
        // Version 1: its own tag, no commitment hash.
        let v1 = ServiceReceipt { commitment_hash: None, ..r };
        let old = v1.signing_bytes([0xaa; 32]);
        assert_eq!(&old[0..29], b"openledger/service-receipt/v1");
        assert_eq!(old[29..], bytes[29..178]);
    }

    #[test]
    fn a_version_1_receipt_kept_by_an_older_worker_still_verifies() {
        // The bytes an older worker's store holds: the receipt's fields and signature, no
        // commitment hash, signed over the version 1 layout.
        let key = SigningKey::from_bytes(&[7; 32]);
        let kept = ServiceReceipt { commitment_hash: None, ..receipt() }.sign(&key, [1; 32]);
        let bytes = kept.version_1_bytes();
        let signed = SignedReceipt::from(SignedReceiptV1::decode(&mut &bytes[..]).unwrap());
        assert_eq!(signed, kept);
        assert_eq!(signed.receipt.commitment_hash, None);
        signed.verify(&key.verifying_key(), [1; 32]).unwrap();
        // A commitment added afterwards breaks the signature.
        let mut changed = signed.clone();
        changed.receipt.commitment_hash = Some([0; 32]);
        assert!(changed.verify(&key.verifying_key(), [1; 32]).is_err());
    }

    #[test]
    fn a_signature_holds_for_its_receipt_and_chain_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let signed = receipt().sign(&key, [1; 32]);
        signed.verify(&key.verifying_key(), [1; 32]).unwrap();
        assert!(signed.verify(&key.verifying_key(), [2; 32]).is_err(), "another chain");
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(signed.verify(&other.verifying_key(), [1; 32]).is_err(), "another key");
        let mut changed = signed.clone();
        changed.receipt.charge += 1;
        assert!(changed.verify(&key.verifying_key(), [1; 32]).is_err(), "a changed charge");
        let mut changed = signed.clone();
        changed.receipt.commitment_hash = Some([0x34; 32]);
        assert!(changed.verify(&key.verifying_key(), [1; 32]).is_err(), "another commitment");
    }

    #[test]
    fn malformed_contexts_are_named() {
        let mut r = receipt();
        r.contexts = vec![ContextShare { datanet: 1, ppm: 600_000 }; 2];
        let err = r.check_shape().unwrap_err().to_string();
        assert!(err.contains("1200000 ppm"), "{err}");
        r.contexts[1].datanet = 1;
        r.contexts[1].ppm = 1;
        assert!(r.check_shape().unwrap_err().to_string().contains("named twice"));
        r.contexts = (0..9).map(|d| ContextShare { datanet: d, ppm: 1 }).collect();
        assert!(r.check_shape().unwrap_err().to_string().contains("at most 8"));
    }
}
