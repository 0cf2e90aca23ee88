//! `openledger-worker`: serves the jobs the chain assigns to one GPU provider.
//!
//! It loads the base model and the adapters found in `--adapters` (each a PEFT directory,
//! served under the on-chain adapter whose content hash equals the BLAKE2b-256 of its
//! `adapter_model.safetensors`), registers or updates the provider when asked, then runs the
//! job loop (see `openledger_worker::service`). `--config worker.toml` takes the same keys
//! as the flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use openledger_chain_client::cli;
use openledger_chain_client::{ss58, AdapterId, ChainClient, Endpoint, GpuSpec, ProviderTerms};
use openledger_channel::RedeemPolicy;
use openledger_engine::{
    scan_adapter_dirs, validate_adapter_dir, write_random_adapter, AdapterCacheConfig, Engine,
    EngineConfig, KvCacheConfig, ModelConfig, ModelSource, Projection, StreamEvent, Tolerance,
};
use openledger_model::ChatTemplate;
use openledger_p2p::{keypair_from_ed25519_secret, Multiaddr, P2pConfig};
use openledger_worker::answers::{AnswerRecord, AnswerStore};
use openledger_worker::base_model;
use openledger_worker::channels::ChannelSettings;
use openledger_worker::engine_host::EngineHost;
use openledger_worker::keeper::{Keeper, KeeperConfig};
use openledger_worker::metrics::WorkerMetrics;
use openledger_worker::service::{Worker, WorkerConfig};
use subxt::utils::AccountId32;

use openledger_chain_client::OPEN;

#[derive(Parser)]
#[command(
    name = "openledger-worker",
    version,
    about = "OpenLedger GPU worker",
    args_override_self = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The chain node's WebSocket RPC endpoint.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:9944")]
    chain_url: String,
    /// The operator account's secret URI (`//Bob` on a dev chain).
    #[arg(long, global = true, env = "OPENLEDGER_OPERATOR")]
    operator: Option<String>,
    /// A file holding the operator's secret URI (instead of --operator).
    #[arg(long, global = true)]
    operator_file: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The worker's ed25519 key file (64 hex digits); created when missing.
    #[arg(long, default_value = "worker.key")]
    worker_key: PathBuf,
    /// Base model: a GGUF file or a Hugging Face directory.
    #[arg(long, env = "OPENLEDGER_MODEL")]
    model: Option<PathBuf>,
    /// Directory of PEFT adapter directories.
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// libp2p listen address.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: Vec<Multiaddr>,
    /// Gateways to dial at start (`/ip4/.../tcp/.../p2p/<peer id>`).
    #[arg(long)]
    gateway: Vec<Multiaddr>,
    /// Register the provider (or update its terms) at start.
    #[arg(long)]
    register: bool,
    /// Bond for a new registration, in OPEN.
    #[arg(long, default_value_t = 1_000)]
    bond: u128,
    /// Price per 1,000 tokens, in milli-OPEN.
    #[arg(long, default_value_t = 1)]
    price_milli: u128,
    /// Jobs served at once.
    #[arg(long, default_value_t = 8)]
    max_concurrent: u32,
    /// GPU (or CPU) model name declared on chain.
    #[arg(long, default_value = "CPU")]
    gpu_name: String,
    /// Memory per GPU declared on chain, in GiB.
    #[arg(long, default_value_t = 0)]
    memory_gib: u32,
    /// Two-letter region code declared on chain.
    #[arg(long, default_value = "ZZ")]
    region: String,
    /// Base model id on chain.
    #[arg(long, default_value_t = 0)]
    base_model: u32,
    /// Engine threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// KV cache blocks of 16 positions (the memory budget of running sequences).
    #[arg(long, default_value_t = 1024)]
    kv_blocks: usize,
    /// Adapters installed for compute at once (the fast tier).
    #[arg(long, default_value_t = 16)]
    adapter_slots: usize,
    /// Host-memory budget of parsed adapters beyond those installed, in MiB.
    #[arg(long, default_value_t = 1024)]
    adapter_host_mib: usize,
    /// Memory budget of the adapters installed for compute (GPU memory on CUDA), in MiB.
    #[arg(long, default_value_t = 4096)]
    adapter_compute_mib: usize,
    /// Where the model runs: `cpu`, `cuda` or `cuda:N` (CUDA needs a `--features cuda`
    /// build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Prometheus metrics address (`/metrics`), e.g. `127.0.0.1:9616`.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// The payment-channel store (receipts signed and vouchers held), a redb file.
    #[arg(long, default_value = "worker-channels.redb")]
    channel_store: PathBuf,
    /// Serve no payment channels (only on-chain jobs).
    #[arg(long)]
    no_channels: bool,
    /// The most this worker serves one channel ahead of its vouchers, in milli-OPEN (its
    /// credit risk on a payer that stops vouching).
    #[arg(long, default_value_t = 1_000)]
    channel_credit_milli: u128,
    /// Redeem a channel's latest voucher at least every this many blocks after the last
    /// redemption.
    #[arg(long, default_value_t = 100)]
    redeem_every_blocks: u32,
    /// Redeem a channel's latest voucher as soon as this many milli-OPEN are waiting.
    #[arg(long, default_value_t = 1_000)]
    redeem_amount_milli: u128,
    /// Where each answer's tokens and activation commitment are kept for verifiers (one
    /// JSON file per answer; `openledger-worker verify` reads them).
    #[arg(long, default_value = "worker-answers")]
    answers_dir: PathBuf,
    /// How long answers are kept, in seconds (the challenge window).
    #[arg(long, default_value_t = 86_400)]
    answer_retention_secs: u64,
    /// Test only: generate without the job's adapter while claiming it in receipts and kept
    /// answers, a cheat verification must catch (and slash).
    #[arg(long, hide = true)]
    cheat_skip_adapter: bool,
    /// Test only: move N of every ten committed activation values one step of their
    /// encoding, so that every job passes its audit but the scores drift (the chain slashes
    /// on the median of a provider's last audits).
    #[arg(long, hide = true, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=10))]
    cheat_drift: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Register a PEFT adapter directory on chain (content hash of its safetensors), once it
    /// passes the checks a worker's engine makes when loading it.
    RegisterAdapter {
        /// The adapter directory.
        dir: PathBuf,
        /// The base model it adapts (GGUF file or Hugging Face directory; only its
        /// configuration is read).
        #[arg(long, env = "OPENLEDGER_MODEL")]
        model: PathBuf,
        /// Price per 1,000 tokens, in milli-OPEN.
        #[arg(long, default_value_t = 1)]
        price_milli: u128,
        /// Base model id.
        #[arg(long, default_value_t = 0)]
        base_model: u32,
        /// Training DataNets as `id:ppm`, repeated.
        #[arg(long)]
        training: Vec<String>,
    },
    /// Write a demo PEFT adapter with small random weights for the base model (a real
    /// adapter file, not a trained one): rank 8 on the attention projections.
    DemoAdapter {
        /// Where to write it.
        dir: PathBuf,
        /// Base model (GGUF file or Hugging Face directory).
        #[arg(long, env = "OPENLEDGER_MODEL")]
        model: PathBuf,
        /// Seed of its weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run as a keeper: expire jobs past their deadline (signed by `--operator`), so no
    /// escrow stays held. A successful expiry costs no fee.
    Keeper {
        /// Blocks before the best block to scan at start-up.
        #[arg(long, default_value_t = 20_000)]
        lookback_blocks: u32,
        /// Milliseconds between looks at the best block.
        #[arg(long, default_value_t = 1_000)]
        poll_ms: u64,
    },
    /// Verify answers another worker kept (its `--answers-dir` files): recompute each one's
    /// activations with this model and these adapters in prefill passes and compare them
    /// with its commitment. Prints a verdict per answer; exits non-zero when any is refused.
    Verify {
        /// Answer records (`job-<id>.json`, `channel-<c>-<r>.json`).
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// The registered base model (GGUF file or Hugging Face directory), in the same
        /// numeric format as registered.
        #[arg(long, env = "OPENLEDGER_MODEL")]
        model: PathBuf,
        /// Directory of PEFT adapter directories, matched to the records by content hash.
        #[arg(long)]
        adapters: Option<PathBuf>,
        /// Engine threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Print the peer id and public key of a worker key file (creating it when missing).
    KeyInfo {
        /// The key file.
        #[arg(long, default_value = "worker.key")]
        worker_key: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    cli::main(run()).await
}

async fn run() -> Result<()> {
    let args = Args::parse_from(cli::args_with_config_file()?);
    match &args.command {
        Some(Command::Keeper { lookback_blocks, poll_ms }) => {
            let signer = cli::account_key(args.operator.as_deref(), args.operator_file.as_deref())?;
            let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(30)).await?;
            let config = KeeperConfig {
                lookback_blocks: *lookback_blocks,
                poll: Duration::from_millis(*poll_ms),
            };
            println!("keeper ready: expiring jobs past their deadline on {}", args.chain_url);
            Keeper::new(chain, signer, config).run().await;
            return Ok(());
        },
        Some(Command::Verify { records, model, adapters, threads }) => {
            return verify(records, model, adapters.as_deref(), *threads);
        },
        Some(Command::KeyInfo { worker_key }) => {
            let key = cli::worker_key(worker_key, true)?;
            let peer = openledger_p2p::peer_id_of_ed25519_public(&key.verifying_key().to_bytes())?;
            println!("public key: 0x{}", hex::encode(key.verifying_key().to_bytes()));
            println!("peer id:    {peer}");
            return Ok(());
        },
        Some(Command::DemoAdapter { dir, model, seed }) => {
            let engine = Engine::load(&model_source(model), EngineConfig::default(), &Device::Cpu)
                .with_context(|| format!("cannot load the model {}", model.display()))?;
            let targets = [Projection::Q, Projection::K, Projection::V, Projection::O];
            write_random_adapter(dir, engine.model().config(), 8, &targets, *seed)?;
            println!("{}", dir.display());
            return Ok(());
        },
        Some(Command::RegisterAdapter { dir, model, price_milli, base_model, training }) => {
            let signer = cli::account_key(args.operator.as_deref(), args.operator_file.as_deref())?;
            let base = ModelConfig::read(model)
                .with_context(|| format!("cannot read the base model {}", model.display()))?;
            let adapter = validate_adapter_dir(dir, &base)
                .context("the adapter cannot be served; not registering it")?;
            let training = training.iter().map(|t| parse_share(t)).collect::<Result<Vec<_>>>()?;
            let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(10)).await?;
            let id = chain
                .register_adapter(
                    &signer,
                    *base_model,
                    adapter.content_hash,
                    adapter.rank,
                    adapter.target_modules,
                    price_milli * (OPEN / 1_000),
                    &training,
                )
                .await?;
            println!("{id}");
            return Ok(());
        },
        None => {},
    }
    serve(&args).await
}

fn model_source(model: &Path) -> ModelSource {
    if model.is_dir() {
        ModelSource::HuggingFace(model.to_path_buf())
    } else {
        ModelSource::Gguf(model.to_path_buf())
    }
}

fn parse_share(text: &str) -> Result<(u32, u32)> {
    let (d, ppm) = text.split_once(':').context("a training share is `datanet:ppm`")?;
    Ok((d.parse().context("DataNet id")?, ppm.parse().context("share in ppm")?))
}

/// Checks every adapter folder in `dir` and loads into the engine those registered on chain
/// (matched by content hash); a folder that cannot be served is skipped with a warning
/// naming it and why. Fails when none is left: a worker would otherwise declare capacity for
/// jobs it can only refuse.
async fn serve_adapters(
    engine: &EngineHost,
    chain: &ChainClient,
    dir: &Path,
    base: &ModelConfig,
) -> Result<(HashMap<AdapterId, String>, HashMap<AdapterId, [u8; 32]>)> {
    let scan = scan_adapter_dirs(dir, base)
        .with_context(|| format!("cannot read the adapter directory {}", dir.display()))?;
    for (path, reason) in &scan.skipped {
        tracing::warn!(dir = %path.display(), %reason, "adapter folder skipped");
    }
    let on_chain = chain.adapters().await?;
    let mut adapters = HashMap::new();
    let mut hashes = HashMap::new();
    for (path, summary) in scan.adapters {
        let Some((id, _)) =
            on_chain.iter().find(|(_, a)| a.content_hash.0 == summary.content_hash && !a.retired)
        else {
            tracing::warn!(dir = %path.display(), "no registered adapter has this content hash; not served");
            continue;
        };
        let name = id.to_string();
        if let Err(reason) = engine.register_adapter(&name, path.clone()).await {
            tracing::warn!(dir = %path.display(), %reason, "adapter folder skipped");
            continue;
        }
        tracing::info!(adapter = id, dir = %path.display(), "serving adapter");
        adapters.insert(*id, name);
        hashes.insert(*id, summary.content_hash);
    }
    if adapters.is_empty() {
        bail!(
            "nothing to serve: no adapter in {} is loadable and registered on chain; not registering capacity",
            dir.display()
        );
    }
    Ok((adapters, hashes))
}

/// `openledger-worker verify`: the verifier's side of issue 23 for kept answers.
fn verify(
    records: &[PathBuf],
    model: &Path,
    adapters: Option<&Path>,
    threads: usize,
) -> Result<()> {
    let records =
        records.iter().map(|p| Ok((p, AnswerRecord::read(p)?))).collect::<Result<Vec<_>>>()?;
    let longest = records
        .iter()
        .map(|(_, r)| r.prompt_tokens.len() + r.output_tokens.len())
        .max()
        .unwrap_or(1);
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: 64.max(4 * longest.div_ceil(16)) },
        threads,
        commit_activations: false,
        ..EngineConfig::default()
    };
    let mut engine = Engine::load(&model_source(model), config, &Device::Cpu)
        .with_context(|| format!("cannot load the model {}", model.display()))?;
    // The adapters, named by content hash: a record names the weights it was served with.
    if let Some(dir) = adapters {
        let scan = scan_adapter_dirs(dir, engine.model().config())
            .with_context(|| format!("cannot read the adapter directory {}", dir.display()))?;
        for (path, summary) in scan.adapters {
            engine.register_adapter(&hex::encode(summary.content_hash), &path)?;
        }
    }
    // The records may come from any CPU kernel path: the format's general tolerance.
    let tol = Tolerance::for_format(engine.model().numeric_format().general());
    let mut pending = Vec::new();
    for (path, r) in &records {
        let adapter = match r.adapter {
            None => None,
            Some((id, hash)) => {
                let name = hex::encode(hash);
                if !engine.adapters().contains(&name) {
                    bail!(
                        "{}: adapter {id} (content hash 0x{name}) is not among the adapters given \
                         (--adapters); cannot verify like with like",
                        path.display()
                    );
                }
                Some(name)
            },
        };
        let (_, rx) = engine
            .submit_verification(
                &r.prompt_tokens,
                &r.output_tokens,
                adapter,
                r.activations.clone(),
                tol,
                r.sampling.map(|p| p.replay(r.output_tokens.len())),
            )
            .with_context(|| format!("{}: cannot be verified", path.display()))?;
        pending.push((path, r, rx));
    }
    engine.run_until_idle()?;
    let mut refused = 0;
    for (path, r, rx) in pending {
        let report = match rx.try_iter().next() {
            Some(StreamEvent::Verified(report)) => report,
            Some(StreamEvent::Failed(e)) => {
                bail!("{}: the verification failed: {e}", path.display())
            },
            other => bail!("{}: no verification report ({other:?})", path.display()),
        };
        let verdict = if report.passes(&tol) { "verified" } else { "refused" };
        refused += usize::from(!report.passes(&tol));
        println!("{}: {verdict}: {}", r.key, report.summary());
    }
    if refused > 0 {
        bail!("{refused} of {} answers refused", records.len());
    }
    println!("all {} answers verified", records.len());
    Ok(())
}

async fn serve(args: &Args) -> Result<()> {
    let s = &args.serve;
    // Checked before anything is loaded: a worker with no adapter serves no job.
    let Some(adapters_dir) = s.adapters.clone() else {
        bail!(
            "nothing to serve: pass --adapters <dir> with PEFT adapters registered on chain; \
             not registering capacity"
        )
    };
    let signer = cli::account_key(args.operator.as_deref(), args.operator_file.as_deref())?;
    let provider = AccountId32(signer.public_key().0);
    let worker_key = cli::worker_key(&s.worker_key, true)?;
    let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(30)).await?;
    tracing::info!(url = %args.chain_url, "connected to the chain");

    // The model, with a progress line per stage (loading a large model takes a while).
    let model = s.model.clone().context("no model: pass --model or set OPENLEDGER_MODEL")?;
    let source = model_source(&model);
    let started = Instant::now();
    let progress =
        indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", model.display()));
    progress.enable_steady_tick(Duration::from_millis(120));
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: s.kv_blocks },
        adapters: AdapterCacheConfig {
            compute_slots: s.adapter_slots,
            compute_bytes: s.adapter_compute_mib << 20,
            host_bytes: s.adapter_host_mib << 20,
            ..AdapterCacheConfig::default()
        },
        threads: s.threads,
        ..EngineConfig::default()
    };
    let device = openledger_engine::device(&s.device)?;
    let engine = Engine::load(&source, config, &device)
        .with_context(|| format!("cannot load the model {} on {}", model.display(), s.device))?;
    progress.finish_with_message(format!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    ));
    // Like with like: the model must be what base model --base-model stands for on chain,
    // in the same numeric format, or its verifiers would recompute its work in another.
    let format = base_model::chain_format(engine.model().numeric_format());
    let weights = base_model::weights_digest(&model)?;
    let registered = chain.base_model(s.base_model).await?;
    let tolerance = base_model::audit_tolerance(format, registered);
    if base_model::check(s.base_model, registered, weights, format)? {
        tracing::info!(
            base_model = s.base_model,
            format = format.name(),
            "the model is the registered base model"
        );
    } else {
        tracing::warn!(
            base_model = s.base_model,
            weights = %hex::encode(weights),
            format = format.name(),
            "base model {} is not registered on chain: its verifiers may run another file or format",
            s.base_model
        );
    }
    let base = engine.model().config().clone();
    let (engine, _thread) = EngineHost::spawn(engine);
    let engine = engine.with_tolerance(tolerance);
    // Chat requests arrive as messages, rendered with the template the model ships.
    let chat_template = ChatTemplate::read(&model)
        .with_context(|| format!("cannot read the chat template of {}", model.display()))?
        .unwrap_or_else(|| {
            tracing::warn!("the model ships no chat template; chats are rendered as ChatML");
            ChatTemplate::chatml()
        });

    // Adapters: local directories matched to on-chain registrations by content hash.
    let (adapters, adapter_hashes) = serve_adapters(&engine, &chain, &adapters_dir, &base).await?;
    let answers = AnswerStore::open(&s.answers_dir, Duration::from_secs(s.answer_retention_secs))?;
    {
        let answers = answers.clone();
        tokio::spawn(async move {
            loop {
                let store = answers.clone();
                let gone = tokio::task::spawn_blocking(move || store.prune()).await.unwrap_or(0);
                if gone > 0 {
                    tracing::info!(gone, "answers past the retention deleted");
                }
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
        });
    }

    // The network: the worker key is the libp2p identity, so gateways can check it.
    let mut p2p_config = P2pConfig::new(keypair_from_ed25519_secret(worker_key.to_bytes())?);
    p2p_config.listen = s.listen.clone();
    p2p_config.bootstrap = s.gateway.clone();
    let (p2p, events) = openledger_p2p::spawn(p2p_config)?;
    let peer_id = p2p.local_peer_id();
    let listen = p2p.listen_addrs().await?;
    tracing::info!(%peer_id, ?listen, "libp2p node up");

    if s.register {
        let terms = ProviderTerms {
            spec: GpuSpec {
                model: s.gpu_name.as_bytes().to_vec(),
                memory_gib: s.memory_gib,
                gpu_count: 1,
                bf16_tflops: None,
            },
            region: s
                .region
                .as_bytes()
                .try_into()
                .context("--region must be two letters (ISO 3166-1 alpha-2)")?,
            endpoint: Endpoint {
                peer_id: peer_id.to_bytes(),
                multiaddrs: listen.iter().map(|a| a.to_vec()).collect(),
            },
            worker_key: worker_key.verifying_key().to_bytes(),
            worker_account: None,
            base_models: vec![s.base_model],
            price_per_1k: s.price_milli * (OPEN / 1_000),
            max_concurrent: s.max_concurrent,
        };
        if chain.provider(&provider).await?.is_some() {
            chain.update_provider(&signer, &terms).await?;
            tracing::info!(provider = %ss58(&provider), "provider terms updated");
        } else {
            chain.register_provider(&signer, &terms, s.bond * OPEN).await?;
            tracing::info!(provider = %ss58(&provider), bond = s.bond, "provider registered");
        }
    }

    // Matching gives us only jobs for the adapters we declare.
    let mut served: Vec<AdapterId> = adapters.keys().copied().collect();
    served.sort_unstable();
    chain.set_served_adapters(&signer, &provider, &served).await.with_context(|| {
        format!("declaring the served adapters {served:?} for provider {} failed (is it registered? pass --register)", ss58(&provider))
    })?;
    tracing::info!(adapters = ?served, "declared the adapters this worker serves");

    // A first heartbeat before announcing readiness: jobs can be matched to us from the next
    // block on. It also proves the provider is registered.
    chain.heartbeat(&signer, &provider, &[], s.max_concurrent).await.with_context(|| {
        format!(
            "the first heartbeat for provider {} failed (is it registered? pass --register)",
            ss58(&provider)
        )
    })?;
    let metrics = WorkerMetrics::new();
    if let Some(addr) = s.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        let router = metrics.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        println!("worker metrics: http://{bound}/metrics");
    }
    let provider_name = ss58(&provider);
    let (worker, queue) = Worker::new(
        chain,
        p2p,
        engine,
        WorkerConfig {
            provider,
            signer,
            worker_key,
            adapters,
            max_concurrent: s.max_concurrent,
            heartbeat_every: Duration::from_secs(s.heartbeat_secs),
            receipt_batch: 16,
            receipt_flush: Duration::from_millis(1500),
            fetch_patience: Duration::from_secs(20),
            chat_template,
            adapter_hashes,
            answers: Some(answers),
            cheat_skip_adapter: s.cheat_skip_adapter,
            cheat_drift: usize::from(s.cheat_drift),
        },
        metrics,
        (!s.no_channels).then(|| ChannelSettings {
            store: s.channel_store.clone(),
            credit_limit: s.channel_credit_milli * (OPEN / 1_000),
            policy: RedeemPolicy {
                every_blocks: s.redeem_every_blocks,
                amount: s.redeem_amount_milli * (OPEN / 1_000),
            },
            poll: Duration::from_secs(3),
        }),
    )
    .with_context(|| format!("cannot open the channel store {}", s.channel_store.display()))?;
    println!("worker ready: provider {provider_name}, peer {peer_id}");
    worker.run(queue, events).await;
    Ok(())
}
