//! Calls and reads only tests and testnet tooling need (feature `testing`): root storage
//! writes through `sudo`, transfers, balances, and a job's closing event found by scanning
//! recent blocks. Services never use them: a worker or gateway learns a job's outcome from
//! the runtime APIs and its own calls' events.

use std::collections::{BTreeMap, BTreeSet};

use subxt::utils::{AccountId32, MultiAddress};
use subxt_signer::sr25519::Keypair;

use crate::types::*;
use crate::verification::{AuditOutcome, ProviderDrifted, ProviderSlashed, Subject};
use crate::{fetch_entry, rpc_err, AtBlock, ChainClient, ChainError, SETTLEMENT_LOOKBACK};

impl ChainClient {
    /// Set raw storage items through `sudo` (root): how a testnet's governance changes the
    /// runtime's storage-backed parameters (`:JobReceiptTimeout:` and the like).
    pub async fn sudo_set_storage(
        &self,
        sudo: &Keypair,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), ChainError> {
        use subxt::ext::scale_value::Value;
        let items =
            Value::unnamed_composite(items.iter().map(|(k, v)| {
                Value::unnamed_composite([Value::from_bytes(k), Value::from_bytes(v)])
            }));
        let call = Value::unnamed_variant(
            "System",
            [Value::named_variant("set_storage", [("items", items)])],
        );
        self.sudo(sudo, call, "System.set_storage").await
    }

    /// Transfer `amount` to `dest`, keeping the sender alive.
    pub async fn transfer(
        &self,
        signer: &Keypair,
        dest: &AccountId32,
        amount: Balance,
    ) -> Result<(), ChainError> {
        let dest: MultiAddress<AccountId32, ()> = MultiAddress::Id(*dest);
        self.submit("Balances", "transfer_keep_alive", (dest, amount), signer).await?;
        Ok(())
    }

    /// The `JobSettled` events of `jobs`, looked up in the best chain's last
    /// [`SETTLEMENT_LOOKBACK`] blocks (newest first).
    pub async fn settlements(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<BTreeMap<JobId, JobSettled>, ChainError> {
        self.job_events("JobSettled", jobs, |e: &JobSettled| e.job).await
    }

    /// The `JobRefused` events of `jobs`, looked up like [`Self::settlements`].
    pub async fn refusals(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<BTreeMap<JobId, JobRefused>, ChainError> {
        self.job_events("JobRefused", jobs, |e: &JobRefused| e.job).await
    }

    /// The `JobExpired` events of `jobs`, looked up like [`Self::settlements`].
    pub async fn expiries(
        &self,
        jobs: BTreeSet<JobId>,
    ) -> Result<BTreeMap<JobId, JobExpired>, ChainError> {
        self.job_events("JobExpired", jobs, |e: &JobExpired| e.job).await
    }

    /// The `Jobs.<event>` events of `jobs` in the best chain's last [`SETTLEMENT_LOOKBACK`]
    /// blocks, newest first; `job_of` names an event's job.
    async fn job_events<E: subxt::ext::scale_decode::DecodeAsFields>(
        &self,
        event: &str,
        jobs: BTreeSet<JobId>,
        job_of: impl Fn(&E) -> JobId,
    ) -> Result<BTreeMap<JobId, E>, ChainError> {
        let best = self.best().await?.block_number();
        let mut found = BTreeMap::new();
        let oldest = best.saturating_sub(SETTLEMENT_LOOKBACK);
        let mut number = best;
        while number > oldest && found.len() < jobs.len() {
            let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
            let events = at.events().fetch().await.map_err(rpc_err("reading a block's events"))?;
            for ev in events.iter() {
                let ev = ev.map_err(rpc_err("decoding an event"))?;
                if ev.pallet_name() == "Jobs" && ev.event_name() == event {
                    let decoded = ev
                        .decode_fields_unchecked_as::<E>()
                        .map_err(rpc_err(&format!("decoding Jobs.{event}")))?;
                    if jobs.contains(&job_of(&decoded)) {
                        found.entry(job_of(&decoded)).or_insert(decoded);
                    }
                }
            }
            number -= 1;
        }
        Ok(found)
    }

    /// What became of the audits of `subjects` (`Verification.WorkConfirmed`,
    /// `ProviderSlashed`, `ProviderDrifted` or `AuditAbandoned`) in the best chain's last
    /// [`SETTLEMENT_LOOKBACK`] blocks; work not yet decided is absent.
    pub async fn audit_outcomes(
        &self,
        jobs: BTreeSet<Subject>,
    ) -> Result<BTreeMap<Subject, AuditOutcome>, ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct Closed {
            subject: Subject,
        }
        let best = self.best().await?.block_number();
        let mut found = BTreeMap::new();
        let oldest = best.saturating_sub(SETTLEMENT_LOOKBACK);
        let mut number = best;
        while number > oldest && found.len() < jobs.len() {
            let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
            let events = at.events().fetch().await.map_err(rpc_err("reading a block's events"))?;
            for ev in events.iter() {
                let ev = ev.map_err(rpc_err("decoding an event"))?;
                if ev.pallet_name() != "Verification" {
                    continue;
                }
                let outcome = match ev.event_name() {
                    "ProviderSlashed" => AuditOutcome::Slashed(
                        ev.decode_fields_unchecked_as::<ProviderSlashed>()
                            .map_err(rpc_err("decoding Verification.ProviderSlashed"))?,
                    ),
                    "ProviderDrifted" => AuditOutcome::Drifted(
                        ev.decode_fields_unchecked_as::<ProviderDrifted>()
                            .map_err(rpc_err("decoding Verification.ProviderDrifted"))?,
                    ),
                    "WorkConfirmed" => AuditOutcome::Confirmed,
                    "AuditAbandoned" => AuditOutcome::Abandoned,
                    _ => continue,
                };
                let Closed { subject: job } = ev
                    .decode_fields_unchecked_as::<Closed>()
                    .map_err(rpc_err("decoding a Verification event's subject"))?;
                if jobs.contains(&job) {
                    found.entry(job).or_insert(outcome);
                }
            }
            number -= 1;
        }
        Ok(found)
    }

    /// Free balance of `who` at the best block.
    pub async fn free_balance(&self, who: &AccountId32) -> Result<Balance, ChainError> {
        let at = self.best().await?;
        Ok(Self::balances_in(&at, who).await?.0)
    }

    /// Free and held (escrow, bonds, deposits) balance of `who` at the best block.
    pub async fn balances(&self, who: &AccountId32) -> Result<(Balance, Balance), ChainError> {
        let at = self.best().await?;
        Self::balances_in(&at, who).await
    }

    /// Free balance of `who` at block `number` of the best chain.
    pub async fn free_balance_at(
        &self,
        who: &AccountId32,
        number: u64,
    ) -> Result<Balance, ChainError> {
        let at = self.client.at_block(number).await.map_err(rpc_err("opening a block"))?;
        Ok(Self::balances_in(&at, who).await?.0)
    }

    /// `who`'s free and reserved (held) balance at `at`.
    async fn balances_in(
        at: &AtBlock,
        who: &AccountId32,
    ) -> Result<(Balance, Balance), ChainError> {
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountInfo {
            data: AccountData,
        }
        #[derive(subxt::ext::scale_decode::DecodeAsType)]
        #[decode_as_type(crate_path = "subxt::ext::scale_decode")]
        struct AccountData {
            free: u128,
            reserved: u128,
        }
        let info: Option<AccountInfo> = fetch_entry(at, "System", "Account", *who).await?;
        Ok(info.map_or((0, 0), |i| (i.data.free, i.data.reserved)))
    }
}
