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

/// Sign a receipt for `job` (run by `provider` with `adapter`) with the worker key, in the
/// byte layout `openledger_primitives::receipt` documents.
#[allow(clippy::too_many_arguments)]
pub fn sign_receipt(
    worker_key: &SigningKey,
    genesis_hash: [u8; 32],
    provider: &AccountId32,
    adapter: AdapterId,
    job: JobId,
    output_hash: [u8; 32],
    input_tokens: u32,
    output_tokens: u32,
    context: &[(DataNetId, u32)],
) -> Result<ReceiptArg, ChainError> {
    let context_bounded: ReceiptContext = context
        .iter()
        .map(|(d, ppm)| DataNetShare::new(*d, sp_runtime::Permill::from_parts(*ppm)))
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| ChainError::Invalid("a receipt names at most 8 context DataNets".into()))?;
    let receipt = Receipt {
        job,
        output_hash: SpH256(output_hash),
        input_tokens,
        output_tokens,
        context: context_bounded,
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    let payload = ReceiptPayload::new(SpH256(genesis_hash), provider.0, adapter, &receipt);
    let signature = worker_key.sign(&payload.signing_bytes()).to_bytes();
    Ok(ReceiptArg {
        job,
        output_hash,
        input_tokens,
        output_tokens,
        context: context.to_vec(),
        signature,
    })
}

/// The BLAKE2b-256 hash the chain uses for payloads and outputs.
pub fn blake2_256(bytes: &[u8]) -> [u8; 32] {
    sp_crypto_hashing::blake2_256(bytes)
}
