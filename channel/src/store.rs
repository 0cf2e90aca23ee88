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
