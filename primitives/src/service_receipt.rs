//! What the chain reads of a payment channel's service receipts: the bytes a worker signs
//! for one request (the layout is documented with the off-chain type, `openledger_channel::
//! ServiceReceipt`), and the Merkle tree a voucher's `receipts_root` is the root of.
//!
//! The chain never sees a receipt unless `pallet-verification` samples one of a redeemed
//! voucher for an audit: the provider then reveals its bytes with the path from its leaf to the
//! voucher's root, and the chain takes its adapter, charge and commitment hash from them.
//!
//! **Tree.** Leaves are BLAKE2b-256 of each receipt's signed bytes, in the order the voucher's
//! signer vouched for them. Each level pairs neighbours, a node being BLAKE2b-256 of the byte
//! `0x01` then the left and the right child; a level's last node without a neighbour moves up
//! unchanged. One leaf is its own root; no leaves give 32 zero bytes.

use crate::market::AdapterId;
use crate::receipt::MAX_RECEIPT_CONTEXT;
use crate::voucher::ChannelId;
use alloc::vec::Vec;
use codec::{Decode, DecodeAll, Encode};
use sp_core::{ConstU32, H256};
use sp_runtime::BoundedVec;

/// Domain separation tag: the first bytes of every signed service receipt (version 2, the
/// first to carry the activation commitment's hash).
pub const SERVICE_RECEIPT_DOMAIN: [u8; 29] = *b"openledger/service-receipt/v2";

/// The longest signed receipt: 170 bytes, 8 per context DataNet, the commitment hash.
pub const MAX_SERVICE_RECEIPT_BYTES: u32 = 170 + 8 * MAX_RECEIPT_CONTEXT + 32;

/// Deepest path from a leaf to the root: trees of up to 2^32 leaves.
pub const MAX_PROOF_DEPTH: u32 = 32;

/// A version 2 service receipt's signed fields: its SCALE encoding is the bytes signed.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode)]
pub struct ServiceReceiptMessage {
    /// [`SERVICE_RECEIPT_DOMAIN`].
    pub domain: [u8; 29],
    /// The chain's genesis hash.
    pub genesis_hash: H256,
    pub channel: ChannelId,
    /// The gateway's id of the request, unique per channel.
    pub request: u64,
    pub adapter: AdapterId,
    pub input_hash: H256,
    pub output_hash: H256,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Planck the request cost the channel.
    pub charge: u128,
    /// Context DataNets and their shares in parts per million.
    pub contexts: BoundedVec<(u32, u32), ConstU32<MAX_RECEIPT_CONTEXT>>,
    /// BLAKE2b-256 of the answer's activation commitment (zeros: none).
    pub commitment_hash: H256,
}

impl ServiceReceiptMessage {
    /// Decodes the signed bytes of a version 2 receipt: exactly its fields, its domain tag
    /// first. `None` for anything else (another version, trailing bytes, too many contexts).
    pub fn decode_v2(bytes: &[u8]) -> Option<Self> {
        let message = Self::decode_all(&mut &bytes[..]).ok()?;
        (message.domain == SERVICE_RECEIPT_DOMAIN).then_some(message)
    }
}

fn blake2_256(bytes: &[u8]) -> [u8; 32] {
    <sp_runtime::traits::BlakeTwo256 as sp_runtime::traits::Hash>::hash(bytes).0
}

/// A receipt's leaf: BLAKE2b-256 of its signed bytes.
pub fn leaf(signed_bytes: &[u8]) -> [u8; 32] {
    blake2_256(signed_bytes)
}

/// The parent of two nodes.
pub fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 65];
    bytes[0] = 1;
    bytes[1..33].copy_from_slice(left);
    bytes[33..].copy_from_slice(right);
    blake2_256(&bytes)
}

/// The root of `leaves` (see the module documentation).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = up(&level);
    }
    level.first().copied().unwrap_or([0; 32])
}

/// The level above `level`: neighbours paired, a last node without one moved up.
fn up(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .filter_map(|pair| match pair {
            [left, right] => Some(node(left, right)),
            [single] => Some(*single),
            _ => None,
        })
        .collect()
}

/// The path [`verify`] takes for the leaf at `index`: its siblings from the bottom up
/// (`None` where the node had no neighbour and moved up unchanged). `None` past the end.
pub fn proof(leaves: &[[u8; 32]], mut index: usize) -> Option<Vec<Option<[u8; 32]>>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        path.push(level.get(index ^ 1).copied());
        level = up(&level);
        index /= 2;
    }
    Some(path)
}

/// Whether `leaf` at `index` is under `root` in a tree of `leaves` leaves, given its siblings
/// from the bottom up (`None` where the node had no neighbour and moved up unchanged). The
/// path must be exactly as long as the tree is deep and name a sibling exactly where the tree
/// has one, so a leaf proves one index only.
pub fn verify(
    root: &[u8; 32],
    leaf: [u8; 32],
    mut index: u64,
    mut leaves: u64,
    path: &[Option<[u8; 32]>],
) -> bool {
    if index >= leaves {
        return false;
    }
    let mut acc = leaf;
    for sibling in path {
        if leaves <= 1 {
            return false;
        }
        let has_sibling = index ^ 1 < leaves;
        match sibling {
            Some(s) if has_sibling => {
                acc = if index.is_multiple_of(2) { node(&acc, s) } else { node(s, &acc) };
            },
            None if !has_sibling => {},
            _ => return false,
        }
        index /= 2;
        leaves = leaves.div_ceil(2);
    }
    leaves == 1 && acc == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_trees_have_the_documented_roots() {
        let l: Vec<[u8; 32]> = (0..3u8).map(|i| leaf(&[i])).collect();
        assert_eq!(root(&[]), [0; 32]);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node(&l[0], &l[1]));
        assert_eq!(root(&l), node(&node(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_leaf_of_every_small_tree_proves_its_index_and_no_other() {
        for n in 1..=9usize {
            let leaves: Vec<[u8; 32]> = (0..n as u8).map(|i| leaf(&[i])).collect();
            assert!(proof(&leaves, n).is_none());
            let r = root(&leaves);
            for (i, l) in leaves.iter().enumerate() {
                let p = proof(&leaves, i).unwrap();
                assert!(verify(&r, *l, i as u64, n as u64, &p), "n {n} leaf {i}");
                for j in (0..n).filter(|&j| j != i) {
                    assert!(!verify(&r, *l, j as u64, n as u64, &p), "n {n} leaf {i} as {j}");
                }
                let mut longer = p.clone();
                longer.push(None);
                assert!(!verify(&r, *l, i as u64, n as u64, &longer), "n {n}: a longer path");
                assert!(!verify(&r, leaf(b"other"), i as u64, n as u64, &p));
            }
        }
    }

    #[test]
    fn a_receipt_decodes_only_as_version_2_and_whole() {
        use codec::Encode;
        let fields = (
            SERVICE_RECEIPT_DOMAIN,
            [9u8; 32],
            4u64,
            7u64,
            2u32,
            [1u8; 32],
            [2u8; 32],
            30u32,
            12u32,
            9_000u128,
            alloc::vec![(1u32, 100_000u32)],
            [7u8; 32],
        );
        let bytes = fields.encode();
        let m = ServiceReceiptMessage::decode_v2(&bytes).unwrap();
        assert_eq!((m.channel, m.request, m.adapter, m.charge), (4, 7, 2, 9_000));
        assert_eq!(m.commitment_hash, H256([7; 32]));
        assert!(bytes.len() <= MAX_SERVICE_RECEIPT_BYTES as usize);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ServiceReceiptMessage::decode_v2(&longer).is_none());
        let mut v1 = bytes.clone();
        v1[28] = b'1';
        assert!(ServiceReceiptMessage::decode_v2(&v1).is_none());
    }
}
