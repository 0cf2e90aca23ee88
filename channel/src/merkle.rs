//! The Merkle root a voucher records over the receipts it covers.
//!
//! Leaves are the receipts' hashes ([`ServiceReceipt::leaf`](crate::ServiceReceipt::leaf)),
//! in the order the gateway vouched for them. Each level pairs neighbours, a node being
//! BLAKE2b-256 of the byte `0x01` then the left and right child; a level's last node without a
//! neighbour moves up unchanged. One leaf is its own root; no leaves give 32 zero bytes (the
//! chain's "nothing yet").

/// The root of `leaves` (see the module documentation).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = up(&level);
    }
    level[0]
}

/// The level above `level`: neighbours paired, a last node without one moved up.
fn up(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level.chunks(2).map(|p| if p.len() == 2 { node(&p[0], &p[1]) } else { p[0] }).collect()
}

/// Whether `leaf` at `index` is under `root`, given its siblings from the bottom up (`None`
/// where the node had no neighbour and moved up unchanged).
pub fn verify(
    root_hash: [u8; 32],
    leaf: [u8; 32],
    mut index: usize,
    path: &[Option<[u8; 32]>],
) -> bool {
    let mut acc = leaf;
    for sibling in path {
        if let Some(s) = sibling {
            acc = if index.is_multiple_of(2) { node(&acc, s) } else { node(s, &acc) };
        }
        index /= 2;
    }
    acc == root_hash
}

/// The path [`verify`] takes for the leaf at `index`.
pub fn proof(leaves: &[[u8; 32]], mut index: usize) -> Option<Vec<Option<[u8; 32]>>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let sibling = index ^ 1;
        path.push(level.get(sibling).copied());
        level = up(&level);
        index /= 2;
    }
    Some(path)
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 65];
    bytes[0] = 1;
    bytes[1..33].copy_from_slice(left);
    bytes[33..].copy_from_slice(right);
    sp_crypto_hashing::blake2_256(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| sp_crypto_hashing::blake2_256(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn small_trees_have_the_documented_roots() {
        let l = leaves(3);
        assert_eq!(root(&[]), [0; 32]);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node(&l[0], &l[1]));
        assert_eq!(root(&l), node(&node(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_leaf_proves_and_no_other_hash_does() {
        for n in [1, 2, 3, 5, 8, 13, 100] {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = proof(&l, i).unwrap();
                assert!(verify(r, l[i], i, &p), "leaf {i} of {n}");
                assert!(!verify(r, [9; 32], i, &p), "a foreign leaf at {i} of {n}");
            }
            assert!(proof(&l, n).is_none());
        }
    }
}
