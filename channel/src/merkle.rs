//! The Merkle root a voucher records over the receipts it covers, and the paths that prove a
//! receipt under it (what a provider reveals when the chain samples one for an audit).
//!
//! The tree is defined once, in `openledger_primitives::service_receipt`, where the chain
//! checks revealed receipts with the same functions: leaves are the receipts' hashes
//! ([`ServiceReceipt::leaf`](crate::ServiceReceipt::leaf)), in the order the gateway vouched
//! for them; each level pairs neighbours; a level's last node without a neighbour moves up
//! unchanged. One leaf is its own root; no leaves give 32 zero bytes (the chain's "nothing
//! yet").

pub use openledger_primitives::service_receipt::{node, proof, root, verify};

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| sp_crypto_hashing::blake2_256(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_larger_trees_proves_and_no_other_hash_does() {
        for n in [13usize, 100] {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = proof(&l, i).unwrap();
                assert!(verify(&r, l[i], i as u64, n as u64, &p), "leaf {i} of {n}");
                assert!(!verify(&r, [9; 32], i as u64, n as u64, &p), "a foreign leaf at {i}");
            }
        }
    }
}
