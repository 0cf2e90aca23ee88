//! `openledger-gateway`: an OpenAI-compatible HTTP API that turns requests into on-chain
//! jobs and relays them to the assigned workers over libp2p (see
//! `openledger_worker::gateway`). `--config gateway.toml` takes the same keys as the flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use openledger_chain_client::cli;
use openledger_chain_client::ChainClient;
use openledger_gateway::{
    bind, ChannelConfig, Gateway, GatewayConfig, ModelCard, PayerBook, WebConfig,
};
use openledger_p2p::{keypair_from_ed25519_secret, Multiaddr, P2pConfig};

use openledger_chain_client::OPEN;

#[derive(Parser)]
#[command(name = "openledger-gateway", version, about = "OpenLedger OpenAI-compatible gateway")]
struct Args {
    /// The chain node's WebSocket RPC endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:9944")]
    chain_url: String,
    /// HTTP address of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// libp2p listen address (workers dial it).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/4001")]
    listen: Vec<Multiaddr>,
    /// The gateway's libp2p key file (64 hex digits); created when missing.
    #[arg(long, default_value = "gateway.key")]
    key: PathBuf,
    /// An API key and the secret URI of the account that pays for its requests,
    /// `KEY=//Alice`; repeated.
    #[arg(long = "api-key", required = true)]
    api_keys: Vec<String>,
    /// The most escrow one request may hold, in milli-OPEN. Each request holds what the
    /// chain's quote says its prompt and `max_tokens` can cost at most (only the metered
    /// charge is kept); a request that could cost more is refused before anything is paid.
    #[arg(long, default_value_t = 100)]
    max_fee_milli: u128,
    /// Seconds a request may wait for its complete answer.
    #[arg(long, default_value_t = 120)]
    job_timeout_secs: u64,
    /// Requests per second accepted from one worker over libp2p (token chunks of all its
    /// jobs together).
    #[arg(long, default_value_t = 2000)]
    peer_requests_per_sec: u32,
    /// The base model (GGUF file or Hugging Face directory) whose tokenizer counts prompts:
    /// a prompt too long for its context is refused before anything is paid, and escrows are
    /// sized by the exact token count. Without it, workers refuse such prompts (the user pays
    /// the submission's fee) and escrows assume one token per byte.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The on-chain id of `--model`'s base model.
    #[arg(long, default_value_t = 0)]
    base_model: u32,
    /// Seconds a 503 answer (no provider has a free slot) tells the client to wait before
    /// retrying (`Retry-After`).
    #[arg(long, default_value_t = 6)]
    retry_after_secs: u64,
    /// Submit every request as a job on chain (the per-job path) instead of sending it on a
    /// payment channel.
    #[arg(long)]
    no_channels: bool,
    /// The payment-channel store (channels and the receipts vouched for), a redb file.
    #[arg(long, default_value = "gateway-channels.redb")]
    channel_store: PathBuf,
    /// The deposit a new channel to a provider is opened with (and a top-up's amount), in
    /// milli-OPEN, held from the payer until the channel closes.
    #[arg(long, default_value_t = 10_000)]
    channel_deposit_milli: u128,
    /// Serve Open Chat, the web page in this folder (`web/dist`, built by
    /// `scripts/build-web.sh`), at `/`.
    #[arg(long)]
    web: Option<PathBuf>,
    /// The API key (one of `--api-key`'s) that pays for the page's requests; it stays on the
    /// server, and anyone who can load the page spends from its account. Without it the page
    /// asks each visitor for an API key of this gateway.
    #[arg(long)]
    web_key: Option<String>,
    /// The chain RPC the page's browser reads (`--chain-url` when absent); the node must
    /// accept the page's origin (`--rpc-cors`).
    #[arg(long)]
    web_chain_url: Option<String>,
}

#[tokio::main]
async fn main() {
    cli::main(run()).await
}

async fn run() -> Result<()> {
    let args = Args::parse_from(cli::args_with_config_file()?);
    let mut api_keys = HashMap::new();
    for entry in &args.api_keys {
        let (key, uri) =
            entry.split_once('=').context("--api-key takes `KEY=<secret URI of the payer>`")?;
        api_keys.insert(key.to_string(), cli::account_key(Some(uri), None)?);
    }
    if let Some(key) = &args.web_key {
        anyhow::ensure!(
            api_keys.contains_key(key),
            "--web-key {key:?} is not one of the keys given with --api-key"
        );
    }
    let web = match &args.web {
        Some(dir) => {
            anyhow::ensure!(
                dir.join("index.html").is_file(),
                "--web {}: no index.html there (scripts/build-web.sh builds web/dist)",
                dir.display()
            );
            Some(WebConfig {
                dir: dir.clone(),
                key: args.web_key.clone(),
                chain_url: args.web_chain_url.clone().unwrap_or_else(|| args.chain_url.clone()),
            })
        },
        None => None,
    };
    let model = match &args.model {
        Some(path) => Some(ModelCard::read(args.base_model, path)?),
        None => None,
    };
    let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(30)).await?;
    let secret = cli::worker_key(&args.key, true)?;
    let mut p2p_config = P2pConfig::new(keypair_from_ed25519_secret(secret.to_bytes())?);
    p2p_config.listen = args.listen.clone();
    p2p_config.requests_per_second_per_peer = args.peer_requests_per_sec;
    let (p2p, events) = openledger_p2p::spawn(p2p_config)?;
    // The gateway's libp2p key signs its channels' vouchers: workers know who may ask.
    let channels = if args.no_channels {
        None
    } else {
        let config = ChannelConfig {
            store: args.channel_store.clone(),
            deposit: args.channel_deposit_milli * (OPEN / 1_000),
        };
        Some(PayerBook::open(&chain, config, secret.clone()).await?)
    };
    let peer_id = p2p.local_peer_id();
    let listen = p2p.listen_addrs().await?;
    let listener = bind(args.http).await?;
    let http = listener.local_addr()?;
    let gateway = Gateway::new(
        chain,
        p2p,
        events,
        GatewayConfig {
            api_keys,
            max_fee: args.max_fee_milli * (OPEN / 1_000),
            job_timeout: Duration::from_secs(args.job_timeout_secs),
            retry_after: Duration::from_secs(args.retry_after_secs),
            max_payload_bytes: P2pConfig::DEFAULT_MAX_PAYLOAD_BYTES,
            model,
            web: web.clone(),
        },
        channels,
    );
    for addr in &listen {
        println!("gateway p2p: {addr}/p2p/{peer_id}");
    }
    println!("gateway http: http://{http}/v1");
    match &web {
        Some(WebConfig { key: Some(key), .. }) => {
            println!("open chat: http://{http}/ (the page's requests are paid with API key {key})")
        },
        Some(_) => println!(
            "open chat: http://{http}/ (each visitor enters an API key; --web-key KEY pays for \
             the page's requests with one of yours)"
        ),
        None => {},
    }
    gateway.serve(listener).await.context("the HTTP server stopped")?;
    Ok(())
}
