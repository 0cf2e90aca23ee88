//! The worker signs with ed25519-dalek, the runtime verifies with `sp_io` (ed25519-zebra):
//! both must accept honest receipts and reject the same edge cases.

use crate::{
    impls::{is_canonical_signature, GROUP_ORDER as L},
    mock::*,
    Error, Receipt, ReceiptPayload,
};
use curve25519_dalek::{constants::EIGHT_TORSION, edwards::CompressedEdwardsY, Scalar};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use frame_support::{assert_noop, assert_ok};
use openledger_primitives::receipt::is_small_order_encoding;
use sha2::{Digest, Sha512};
use sp_core::{ed25519, H256};

fn runtime_verifies(signature: &[u8; 64], message: &[u8], key: &[u8; 32]) -> bool {
    sp_io::crypto::ed25519_verify(
        &ed25519::Signature::from_raw(*signature),
        message,
        &ed25519::Public::from_raw(*key),
    )
}

fn dalek_verifies_strict(signature: &[u8; 64], message: &[u8], key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key)
        .and_then(|key| key.verify_strict(message, &Signature::from_bytes(signature)))
        .is_ok()
}

/// Signed payload bytes of a receipt for `job` of `provider`.
fn payload(provider: AccountId, job: u64) -> Vec<u8> {
    let receipt = Receipt {
        job,
        output_hash: H256::repeat_byte(3),
        input_tokens: 5,
        output_tokens: 6,
        context: Default::default(),
        commitment_hash: H256::repeat_byte(4),
        signature: ed25519::Signature::from_raw([0; 64]),
    };
    ReceiptPayload::new(H256::repeat_byte(69), provider, 1, &receipt).signing_bytes()
}

#[test]
fn dalek_signatures_verify_in_the_runtime() {
    build_and_execute(|| {
        for seed in 0..32u8 {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let message = payload(seed.into(), seed.into());
            let signature = key.sign(&message).to_bytes();
            let public = key.verifying_key().to_bytes();
            assert!(runtime_verifies(&signature, &message, &public));
            assert!(dalek_verifies_strict(&signature, &message, &public));
            assert!(is_canonical_signature(&ed25519::Signature::from_raw(signature)));
            // One flipped bit anywhere in the message breaks both.
            let mut altered = message.clone();
            let at = seed as usize % altered.len();
            altered[at] ^= 1;
            assert!(!runtime_verifies(&signature, &altered, &public));
            assert!(!dalek_verifies_strict(&signature, &altered, &public));
        }
    });
}

#[test]
fn group_order_matches_dalek() {
    // L reduces to zero, and it is the only multiple of the order with this top byte.
    assert_eq!(Scalar::from_bytes_mod_order(L), Scalar::ZERO);
    assert_eq!(L[31], 0x10);
}

#[test]
fn small_order_list_is_exactly_the_eight_torsion_points() {
    for point in EIGHT_TORSION {
        let bytes = point.compress().to_bytes();
        assert!(is_small_order_encoding(&bytes), "{bytes:?}");
        // dalek agrees these are weak keys.
        assert!(VerifyingKey::from_bytes(&bytes).map_or(true, |key| key.is_weak()));
    }
    // Non-canonical encodings of y = 0 and y = 1 (p and p + 1).
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p_plus_1 = p;
    p_plus_1[0] = 0xee;
    for bytes in [p, p_plus_1] {
        assert!(is_small_order_encoding(&bytes));
        let decoded = CompressedEdwardsY(bytes).decompress();
        assert!(decoded.is_none_or(|point| point.is_small_order()));
    }
    // Ordinary keys are not on the list.
    for seed in 0..64u8 {
        let public = SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes();
        assert!(!is_small_order_encoding(&public));
    }
}

#[test]
fn small_order_worker_keys_are_refused_at_registration() {
    build_and_execute(|| {
        for point in EIGHT_TORSION {
            let mut terms = pallet_compute::ProviderTerms::<Test> {
                spec: pallet_compute::GpuSpec {
                    model: Default::default(),
                    memory_gib: 1,
                    gpu_count: 1,
                    bf16_tflops: None,
                },
                region: *b"FR",
                endpoint: pallet_compute::Endpoint {
                    peer_id: Default::default(),
                    multiaddrs: Default::default(),
                },
                worker_key: ed25519::Public::from_raw(point.compress().to_bytes()),
                worker_account: None,
                base_models: vec![3].try_into().unwrap(),
                price_per_1k: 1,
                max_concurrent: 1,
            };
            assert_noop!(
                Compute::register_provider(RuntimeOrigin::signed(P1), terms.clone(), MIN_BOND),
                pallet_compute::Error::<Test>::WeakWorkerKey
            );
            terms.worker_key.0[31] ^= 0x80;
            assert_noop!(
                Compute::register_provider(RuntimeOrigin::signed(P1), terms, MIN_BOND),
                pallet_compute::Error::<Test>::WeakWorkerKey
            );
        }
    });
}

/// `s + l` as a 256-bit little-endian integer: the same scalar, not reduced.
fn add_group_order(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

#[test]
fn non_canonical_s_is_rejected_everywhere() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let mut bad = receipt(job, 1, 1);
        let s_plus_l = add_group_order(&bad.signature.0[32..]);
        bad.signature.0[32..].copy_from_slice(&s_plus_l);

        let provider = crate::Jobs::<Test>::get(job).unwrap().provider;
        let key = signing_key(provider).verifying_key().to_bytes();
        let message = ReceiptPayload::new(genesis_hash(), provider, 1, &bad).signing_bytes();
        assert!(!dalek_verifies_strict(&bad.signature.0, &message, &key));
        assert!(!runtime_verifies(&bad.signature.0, &message, &key));
        assert_noop!(submit_receipts(vec![bad]), Error::<Test>::MalformedSignature);
        assert_ok!(Jobs::submit_receipts(
            RuntimeOrigin::signed(BOB),
            vec![receipt(job, 1, 1)].try_into().unwrap()
        ));
    });
}

/// A signature with `R` = the identity point that satisfies the cofactored verification
/// equation: only the key holder can make it (`s = H(R, A, M) * a`).
fn sign_with_identity_r(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    // The secret scalar of RFC 8032: the clamped low half of SHA-512 of the seed.
    let mut a = [0u8; 32];
    a.copy_from_slice(&Sha512::digest(key.to_bytes())[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let secret = Scalar::from_bytes_mod_order(a);
    let mut r = [0u8; 32];
    r[0] = 1;
    let mut hasher = Sha512::new();
    hasher.update(r);
    hasher.update(key.verifying_key().to_bytes());
    hasher.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
    let s = k * secret;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r);
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// The one place the libraries differ: ZIP-215 (the runtime's `ed25519_verify`) accepts a
/// small-order `R`, `verify_strict` does not. The pallet rejects it before verifying.
#[test]
fn small_order_r_is_rejected_by_the_pallet_as_by_verify_strict() {
    build_and_execute(|| {
        register(P1, &[3], 10, 4);
        let job = submit(ALICE, 1, 1_000, 100);
        let provider = crate::Jobs::<Test>::get(job).unwrap().provider;
        let key = signing_key(provider);
        let mut bad = receipt(job, 1, 1);
        let message = ReceiptPayload::new(genesis_hash(), provider, 1, &bad).signing_bytes();
        bad.signature = ed25519::Signature::from_raw(sign_with_identity_r(&key, &message));

        let public = key.verifying_key().to_bytes();
        assert!(runtime_verifies(&bad.signature.0, &message, &public), "ZIP-215 accepts it");
        assert!(!dalek_verifies_strict(&bad.signature.0, &message, &public));
        assert_noop!(submit_receipts(vec![bad]), Error::<Test>::MalformedSignature);
    });
}
