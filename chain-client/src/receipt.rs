//! Receipts signed with the worker key.

use ed25519_dalek::{Signer as _, SigningKey};
use openledger_primitives::{
    market::DataNetShare,
    receipt::{Receipt, ReceiptContext, ReceiptPayload},
};
use sp_core::{ed25519, H256 as SpH256};
use subxt::utils::AccountId32;

use super::ChainError;
use crate::types::*;

/// A receipt's fields before the worker key signs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptDraft {
    /// The job.
    pub job: JobId,
    /// BLAKE2b-256 of the output text the gateway accepted.
    pub output_hash: [u8; 32],
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// Retrieval context: (DataNet, share in parts per million).
    pub context: Vec<(DataNetId, u32)>,
    /// BLAKE2b-256 of the answer's activation commitment (zeros: none; see
    /// [`commitment_hash`]).
    pub commitment_hash: [u8; 32],
}

/// Sign `draft` for a job run by `provider` with `adapter` with the worker key, in the byte
/// layout `openledger_primitives::receipt` documents.
pub fn sign_receipt(
    worker_key: &SigningKey,
    genesis_hash: [u8; 32],
    provider: &AccountId32,
    adapter: AdapterId,
    draft: ReceiptDraft,
) -> Result<ReceiptArg, ChainError> {
    let context_bounded: ReceiptContext = draft
        .context
        .iter()
        .map(|(d, ppm)| DataNetShare::new(*d, sp_runtime::Permill::from_parts(*ppm)))
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| ChainError::Invalid("a receipt names at most 8 context DataNets".into()))?;
    let receipt = Receipt {
        job: draft.job,
        output_hash: SpH256(draft.output_hash),
        input_tokens: draft.input_tokens,
        output_tokens: draft.output_tokens,
        context: context_bounded,
        commitment_hash: SpH256(draft.commitment_hash),
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    let payload = ReceiptPayload::new(SpH256(genesis_hash), provider.0, adapter, &receipt);
    let signature = worker_key.sign(&payload.signing_bytes()).to_bytes();
    Ok(ReceiptArg {
        job: draft.job,
        output_hash: draft.output_hash,
        input_tokens: draft.input_tokens,
        output_tokens: draft.output_tokens,
        context: draft.context,
        commitment_hash: draft.commitment_hash,
        signature,
    })
}

/// The hash of an activation commitment's bytes that a receipt carries.
pub fn commitment_hash(commitment: &[u8]) -> [u8; 32] {
    blake2_256(commitment)
}

/// The BLAKE2b-256 hash the chain uses for payloads and outputs.
pub fn blake2_256(bytes: &[u8]) -> [u8; 32] {
    sp_crypto_hashing::blake2_256(bytes)
}
