//! Setting up the marketplace for tests against a real node: a demo adapter registered on
//! chain, short job deadlines, waiting for blocks.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_chain_client::{blake2_256, ChainClient};
use openledger_engine::{write_random_adapter, Engine, EngineConfig, ModelSource, Projection};
use subxt_signer::sr25519::dev;

use crate::procs::model;

pub use openledger_chain_client::{MILLI_OPEN as MILLI, OPEN};

/// Write the demo adapter into `dir/adapters/demo` and register it (owner Dave).
pub async fn demo_adapter(chain: &ChainClient, dir: &Path) -> u32 {
    let engine = Engine::load(&ModelSource::Gguf(model()), EngineConfig::default(), &Device::Cpu)
        .expect("the model loads");
    let path = dir.join("adapters").join("demo");
    write_random_adapter(&path, engine.model().config(), 8, &[Projection::Q, Projection::V], 3)
        .expect("adapter written");
    let weights = std::fs::read(path.join("adapter_model.safetensors")).expect("weights");
    chain
        .register_adapter(&dev::dave(), 0, blake2_256(&weights), 8, 0b101, MILLI, &[])
        .await
        .expect("adapter registers")
}

/// Shorten the acknowledgement and receipt deadlines (root-settable runtime parameters).
pub async fn short_deadlines(chain: &ChainClient, blocks: u32) {
    let key = |name: &str| sp_crypto_hashing::twox_128(format!(":{name}:").as_bytes()).to_vec();
    chain
        .sudo_set_storage(
            &dev::alice(),
            vec![
                (key("JobAckTimeout"), blocks.to_le_bytes().to_vec()),
                (key("JobReceiptTimeout"), blocks.to_le_bytes().to_vec()),
            ],
        )
        .await
        .expect("sudo sets the deadlines");
}

pub async fn wait_past(chain: &ChainClient, deadline: u32) {
    let started = Instant::now();
    while chain.best().await.expect("best block").block_number() <= u64::from(deadline) {
        assert!(started.elapsed() < Duration::from_secs(120), "block {deadline} never came");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The account of a dev key.
pub fn account(key: &subxt_signer::sr25519::Keypair) -> subxt::utils::AccountId32 {
    subxt::utils::AccountId32(key.public_key().0)
}

/// The best block's number.
pub async fn best(chain: &ChainClient) -> u64 {
    chain.best().await.expect("best block").block_number()
}

/// Wait until `job` is closed on chain (settled, refused or expired), at most `secs`.
pub async fn closed(chain: &ChainClient, job: u64, secs: u64) {
    let started = Instant::now();
    while chain.job(job).await.expect("reads").is_some() {
        assert!(started.elapsed() < Duration::from_secs(secs), "job {job} stayed open");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
