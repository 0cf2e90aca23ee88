//! Setting up the marketplace for tests against a real node: a demo adapter registered on
//! chain, short job deadlines, waiting for blocks.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_chain_client::{blake2_256, ChainClient, Endpoint, GpuSpec, ProviderTerms};
use openledger_engine::{write_random_adapter, Engine, EngineConfig, ModelSource, Projection};
use subxt_signer::sr25519::dev;

use crate::procs::model;

pub use openledger_chain_client::{MILLI_OPEN as MILLI, OPEN};

/// Terms of a provider whose worker runs in the test itself (no endpoint to dial): an H200
/// in France serving base model 0 at `price_per_1k`, with `worker_key` signing its receipts.
pub fn idle_terms(worker_key: [u8; 32], price_per_1k: u128) -> ProviderTerms {
    ProviderTerms {
        spec: GpuSpec {
            model: b"NVIDIA H200".to_vec(),
            memory_gib: 141,
            gpu_count: 1,
            bf16_tflops: None,
        },
        region: *b"FR",
        endpoint: Endpoint { peer_id: vec![1; 38], multiaddrs: vec![] },
        worker_key,
        worker_account: None,
        base_models: vec![0],
        price_per_1k,
        max_concurrent: 4,
    }
}

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
    set_block_parameters(chain, &["JobAckTimeout", "JobReceiptTimeout"], blocks).await;
}

/// Set the runtime's storage-backed parameters `names` (each a `u32` number of blocks at
/// `twox128(":<name>:")`) to `blocks`, through sudo.
pub async fn set_block_parameters(chain: &ChainClient, names: &[&str], blocks: u32) {
    let key = |name: &str| sp_crypto_hashing::twox_128(format!(":{name}:").as_bytes()).to_vec();
    let items = names.iter().map(|n| (key(n), blocks.to_le_bytes().to_vec())).collect();
    chain.sudo_set_storage(&dev::alice(), items).await.expect("sudo sets the parameters");
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
