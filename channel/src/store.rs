//! The channel store: an embedded redb database that both sides write before they answer, so
//! a restarted gateway or worker continues its channels where it left them.
//!
//! A gateway writes a channel's state and the receipt it vouched for in one transaction before
//! it sends the voucher; a worker writes the receipt before it sends it and the voucher before
//! it acknowledges it. A crash between two transactions leaves the earlier state, which is
//! always one the protocol can continue from (a receipt resent, a voucher reissued).

use std::path::Path;

use codec::{Decode, Encode};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::ChannelError;
use crate::payer::{Entry, PayerChannel};
use crate::provider::ProviderChannel;
use crate::receipt::{SignedReceipt, SignedReceiptV1};

/// A gateway's channels, without their entries.
const PAYER: TableDefinition<u64, &[u8]> = TableDefinition::new("payer_channels");
/// A gateway's vouched receipts not yet paid: (channel, request) -> entry.
const PAYER_ENTRIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("payer_entries");
/// A worker's channels.
const PROVIDER: TableDefinition<u64, &[u8]> = TableDefinition::new("provider_channels");
/// Every receipt a worker signed: (channel, request) -> signed receipt, its evidence.
const RECEIPTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("provider_receipts_v2");
/// Receipts a worker signed before they carried a commitment hash (version 1), read only.
const RECEIPTS_V1: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("provider_receipts");
/// A worker's receipts vouched for and not yet redeemed: (channel, request) -> (the sequence
/// of the voucher that answered it, its leaf).
const VOUCHED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("provider_vouched");
/// The receipts each redeemed voucher paid for, in tree order: (channel, sequence) ->
/// requests. What a worker reveals from when the chain draws one for an audit.
const TREES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("provider_trees");

/// The receipts a redeemed voucher paid for, as the worker recorded them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedeemedTree {
    /// The requests, in the order of the tree's leaves.
    pub requests: Vec<u64>,
    /// The Merkle root of their leaves.
    pub root: [u8; 32],
}

/// A receipt revealed from a redeemed voucher's tree, with its path to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revealed {
    /// The receipt's signed bytes (its leaf is their hash).
    pub bytes: Vec<u8>,
    /// Its siblings from the bottom up.
    pub proof: Vec<Option<[u8; 32]>>,
    /// The tree's root.
    pub root: [u8; 32],
}

/// The database file of one gateway or worker (a handle: clones share the database).
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
}

impl Store {
    /// Opens the store at `path`, creating it if it does not exist.
    pub fn open(path: &Path) -> Result<Self, ChannelError> {
        let db = Database::create(path)
            .map_err(|e| ChannelError::Store(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write()?;
        txn.open_table(PAYER)?;
        txn.open_table(PAYER_ENTRIES)?;
        txn.open_table(PROVIDER)?;
        txn.open_table(RECEIPTS)?;
        txn.open_table(RECEIPTS_V1)?;
        txn.open_table(VOUCHED)?;
        txn.open_table(TREES)?;
        txn.commit()?;
        Ok(Self { db: std::sync::Arc::new(db) })
    }

    /// Runs `work` on this store on tokio's blocking threads. A write commits durably (it
    /// waits for the disk: tens of milliseconds on some), which must not stall an async
    /// runtime's threads, where the chain client's and libp2p's tasks run.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, ChannelError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ChannelError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| ChannelError::Store(format!("the store's writer stopped: {e}")))?
    }

    /// Writes a gateway channel's state with the entries `added` and without those of the
    /// requests `removed` (paid by a redemption), in one transaction.
    pub fn save_payer(
        &self,
        channel: &PayerChannel,
        added: &[Entry],
        removed: &[u64],
    ) -> Result<(), ChannelError> {
        let header = PayerChannel { entries: Vec::new(), ..channel.clone() };
        let txn = self.db.begin_write()?;
        {
            txn.open_table(PAYER)?.insert(channel.channel, header.encode().as_slice())?;
            let mut entries = txn.open_table(PAYER_ENTRIES)?;
            for e in added {
                entries.insert((channel.channel, e.request), e.encode().as_slice())?;
            }
            for r in removed {
                entries.remove((channel.channel, *r))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every gateway channel, with its entries in the order they were vouched for.
    pub fn payer_channels(&self) -> Result<Vec<PayerChannel>, ChannelError> {
        let txn = self.db.begin_read()?;
        let (headers, entries) = (txn.open_table(PAYER)?, txn.open_table(PAYER_ENTRIES)?);
        let mut out = Vec::new();
        for row in headers.iter()? {
            let (id, bytes) = row?;
            let mut channel = PayerChannel::decode(&mut bytes.value())?;
            for row in entries.range((id.value(), 0)..=(id.value(), u64::MAX))? {
                channel.entries.push(Entry::decode(&mut row?.1.value())?);
            }
            channel.entries.sort_by_key(|e| e.sequence);
            out.push(channel);
        }
        Ok(out)
    }

    /// Writes a worker channel's state, and `receipt` into the archive, in one transaction.
    pub fn save_provider(
        &self,
        channel: &ProviderChannel,
        receipt: Option<&SignedReceipt>,
    ) -> Result<(), ChannelError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(PROVIDER)?.insert(channel.channel, channel.encode().as_slice())?;
            if let Some(r) = receipt {
                txn.open_table(RECEIPTS)?
                    .insert((r.receipt.channel, r.receipt.request), r.encode().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every worker channel.
    pub fn provider_channels(&self) -> Result<Vec<ProviderChannel>, ChannelError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PROVIDER)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(ProviderChannel::decode(&mut row?.1.value())?);
        }
        Ok(out)
    }

    /// Records that the gateway's voucher `sequence` answered the receipt of `request` on
    /// `channel` (whose leaf is `leaf`): the gateway's tree orders receipts by that sequence.
    pub fn note_vouched(
        &self,
        channel: u64,
        request: u64,
        sequence: u64,
        leaf: [u8; 32],
    ) -> Result<(), ChannelError> {
        let txn = self.db.begin_write()?;
        txn.open_table(VOUCHED)?
            .insert((channel, request), (sequence, leaf).encode().as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The chain redeemed voucher `upto` of `channel`, the one before having been `after`: the
    /// receipts vouched between them, ordered by the voucher that answered each, are the
    /// redeemed tree's leaves. Keeps their requests under `(channel, upto)`, forgets them as
    /// vouched, and returns the tree.
    pub fn seal_tree(
        &self,
        channel: u64,
        after: u64,
        upto: u64,
    ) -> Result<RedeemedTree, ChannelError> {
        let txn = self.db.begin_write()?;
        let tree = {
            let mut vouched = txn.open_table(VOUCHED)?;
            let mut covered: Vec<(u64, u64, [u8; 32])> = Vec::new();
            for row in vouched.range((channel, 0)..=(channel, u64::MAX))? {
                let (key, value) = row?;
                let (sequence, leaf) = <(u64, [u8; 32])>::decode(&mut value.value())?;
                if sequence > after && sequence <= upto {
                    covered.push((sequence, key.value().1, leaf));
                }
            }
            covered.sort_unstable();
            for (_, request, _) in &covered {
                vouched.remove((channel, *request))?;
            }
            let leaves: Vec<[u8; 32]> = covered.iter().map(|c| c.2).collect();
            let requests: Vec<u64> = covered.iter().map(|c| c.1).collect();
            txn.open_table(TREES)?.insert((channel, upto), requests.encode().as_slice())?;
            RedeemedTree { requests, root: crate::merkle::root(&leaves) }
        };
        txn.commit()?;
        Ok(tree)
    }

    /// The receipt at `index` of redeemed voucher `sequence`'s tree on `channel`, with its
    /// path, for the chain with `genesis_hash`.
    pub fn reveal(
        &self,
        channel: u64,
        sequence: u64,
        index: u64,
        genesis_hash: [u8; 32],
    ) -> Result<Revealed, ChannelError> {
        let missing = |what: String| ChannelError::Store(what);
        let requests = {
            let txn = self.db.begin_read()?;
            let trees = txn.open_table(TREES)?;
            let bytes = trees.get((channel, sequence))?.ok_or_else(|| {
                missing(format!("no tree of voucher {sequence} on channel {channel}"))
            })?;
            Vec::<u64>::decode(&mut bytes.value())?
        };
        let mut leaves = Vec::with_capacity(requests.len());
        let mut found = None;
        for (i, request) in requests.iter().enumerate() {
            let receipt = self.receipt(channel, *request)?.ok_or_else(|| {
                missing(format!("receipt {request} of channel {channel} is gone"))
            })?;
            let bytes = receipt.receipt.signing_bytes(genesis_hash);
            leaves.push(sp_crypto_hashing::blake2_256(&bytes));
            if i as u64 == index {
                found = Some(bytes);
            }
        }
        let bytes = found.ok_or_else(|| {
            missing(format!(
                "voucher {sequence} of channel {channel} has {} receipts, not {}",
                requests.len(),
                index + 1
            ))
        })?;
        let proof = crate::merkle::proof(&leaves, index as usize)
            .ok_or_else(|| missing(format!("no path to leaf {index}")))?;
        Ok(Revealed { bytes, proof, root: crate::merkle::root(&leaves) })
    }

    /// A receipt the worker signed, from the archive.
    pub fn receipt(
        &self,
        channel: u64,
        request: u64,
    ) -> Result<Option<SignedReceipt>, ChannelError> {
        let txn = self.db.begin_read()?;
        let current = txn.open_table(RECEIPTS)?;
        if let Some(bytes) = current.get((channel, request))? {
            return Ok(Some(SignedReceipt::decode(&mut bytes.value())?));
        }
        let version_1 = txn.open_table(RECEIPTS_V1)?;
        let found = version_1.get((channel, request))?;
        Ok(match found {
            Some(bytes) => Some(SignedReceiptV1::decode(&mut bytes.value())?.into()),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::{ContextShare, ServiceReceipt};
    use ed25519_dalek::SigningKey;

    fn receipt(request: u64, commitment_hash: Option<[u8; 32]>) -> ServiceReceipt {
        ServiceReceipt {
            channel: 4,
            request,
            adapter: 2,
            input_hash: [1; 32],
            output_hash: [2; 32],
            input_tokens: 30,
            output_tokens: 12,
            charge: 9_000,
            contexts: vec![ContextShare { datanet: 1, ppm: 100_000 }],
            commitment_hash,
        }
    }

    #[test]
    fn a_redeemed_voucher_seals_its_tree_in_voucher_order_and_reveals_any_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("worker.redb")).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let genesis = [9; 32];
        let mut channel = ProviderChannel::new(4, [5; 32], 1_000_000, 100_000);
        // Requests 10..15 signed; their vouchers came back in another order than they were
        // sent (voucher sequences 3, 1, 2, 5, 4), and 15 was vouched after the redemption.
        let order = [(10, 3), (11, 1), (12, 2), (13, 5), (14, 4), (15, 7)];
        for (request, sequence) in order {
            let signed = receipt(request, Some([request as u8; 32])).sign(&key, genesis);
            channel.unvouched.push(signed.clone());
            store.save_provider(&channel, Some(&signed)).unwrap();
            store.note_vouched(4, request, sequence, signed.receipt.leaf(genesis)).unwrap();
        }
        // Voucher 5 was redeemed, after voucher 0 (none before).
        let tree = store.seal_tree(4, 0, 5).unwrap();
        assert_eq!(tree.requests, [11, 12, 10, 14, 13]);
        let leaves: Vec<[u8; 32]> = tree
            .requests
            .iter()
            .map(|r| store.receipt(4, *r).unwrap().unwrap().receipt.leaf(genesis))
            .collect();
        assert_eq!(tree.root, crate::merkle::root(&leaves));
        for index in 0..5u64 {
            let revealed = store.reveal(4, 5, index, genesis).unwrap();
            assert_eq!(revealed.root, tree.root);
            let leaf = sp_crypto_hashing::blake2_256(&revealed.bytes);
            assert!(crate::merkle::verify(&tree.root, leaf, index, 5, &revealed.proof));
            let message = openledger_primitives::service_receipt::ServiceReceiptMessage::decode_v2(
                &revealed.bytes,
            )
            .expect("a version 2 receipt the chain decodes");
            assert_eq!(message.request, tree.requests[index as usize]);
            assert_eq!(message.commitment_hash.0, [message.request as u8; 32]);
        }
        let e = store.reveal(4, 5, 5, genesis).unwrap_err();
        assert!(e.to_string().contains("has 5 receipts, not 6"), "{e}");
        assert!(store.reveal(4, 6, 0, genesis).is_err(), "no tree of an unredeemed voucher");
        // Request 15 stays vouched for the next redemption.
        assert_eq!(store.seal_tree(4, 5, 9).unwrap().requests, [15]);
    }

    #[test]
    fn receipts_kept_before_commitments_existed_are_still_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.redb");
        let key = SigningKey::from_bytes(&[3; 32]);
        let genesis = [9; 32];
        // What an older worker's store holds: version 1 receipts in the first receipts table.
        let old = receipt(1, None).sign(&key, genesis);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let bytes = old.version_1_bytes();
            txn.open_table(RECEIPTS_V1).unwrap().insert((4, 1), bytes.as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let channel = ProviderChannel::new(4, [5; 32], 1_000_000, 100_000);
        let new = receipt(2, Some([7; 32])).sign(&key, genesis);
        store.save_provider(&channel, Some(&new)).unwrap();

        let read_old = store.receipt(4, 1).unwrap().expect("the version 1 receipt is kept");
        assert_eq!(read_old, old);
        read_old.verify(&key.verifying_key(), genesis).unwrap();
        assert_eq!(read_old.receipt.leaf(genesis), old.receipt.leaf(genesis));
        let read_new = store.receipt(4, 2).unwrap().expect("the new receipt is kept");
        assert_eq!(read_new.receipt.commitment_hash, Some([7; 32]));
        read_new.verify(&key.verifying_key(), genesis).unwrap();
        assert_eq!(store.receipt(4, 3).unwrap(), None);
    }
}
