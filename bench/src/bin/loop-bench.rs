//! Benchmark of the full loop through a running gateway and workers (`docs/benchmarks.md`,
//! "Full loop"): for each number of concurrent clients, requests per second, the p50 / p99
//! latency and time to first token of streamed OpenAI-style completions spread over several
//! adapters, and the settlement delay: for a job, from its last token until its `JobSettled`
//! event is in a best block; on a channel, until the first `VoucherRedeemed` of its channel
//! in a best block after the answer (the worker's redeem schedule). The chain side of a job
//! (submission to assignment, measured by the gateway) is reported too.
//!
//! With `--engine-adapters DIR` it first runs the same requests on the engine alone, in this
//! process, with the same model and adapter files (the worker is idle meanwhile): the
//! yardstick of what the loop adds. `scripts/bench-loop.sh` runs both paths (channels, then
//! per job) one after the other on one machine. Prints one JSON object per run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use openledger_bench::harness::percentile;
use openledger_chain_client::channels::VoucherRedeemed;
use openledger_chain_client::{ChainClient, JobSettled};
use openledger_engine::{Engine, EngineConfig, ModelSource, SamplingParams, StreamEvent};
use serde_json::{json, Value};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Full-loop benchmark: gateway + workers + chain, beside the engine alone")]
struct Args {
    /// The gateway's API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    http: String,
    /// API key.
    #[arg(long, default_value = "demo-key")]
    api_key: String,
    /// The chain node (to time settlements).
    #[arg(long, default_value = "ws://127.0.0.1:9944")]
    chain_url: String,
    /// Adapter ids to spread requests over.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    adapters: Vec<u32>,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests per client per run.
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// The path's name in the report (`channel` or `job`).
    #[arg(long, default_value = "loop")]
    label: String,
    /// Also run the requests on the engine alone, with the adapter directories in DIR (their
    /// names sorted, in the order of `--adapters`) over `--model`.
    #[arg(long)]
    engine_adapters: Option<PathBuf>,
    /// The base model (for `--engine-adapters`).
    #[arg(long, env = "OPENLEDGER_MODEL")]
    model: Option<PathBuf>,
}

fn prompt(i: usize) -> String {
    format!("Request {i}: write one sentence about shared GPUs.")
}

/// Where a request's answer was paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Paid {
    Job(u64),
    Channel(u64),
}

struct Sample {
    latency: Duration,
    first_token: Duration,
    assign_ms: f64,
    paid: Paid,
    answered: Instant,
    /// 503s (no free slot) retried before it was taken.
    retries: u32,
}

/// How often one request is retried after a 503.
const MAX_RETRIES: u32 = 30;

/// One streamed completion through the gateway.
fn one_request(args: &Args, adapter: u32, i: usize) -> Result<Sample> {
    let started = Instant::now();
    let body = json!({
        "model": format!("adapter-{adapter}"),
        "prompt": prompt(i),
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "stream": true,
    });
    // A 503 (no provider has a free slot now) is retried after its Retry-After, as a client
    // would; the wait counts in the request's latency.
    let mut retries = 0u32;
    let response = loop {
        let sent = ureq::post(&format!("{}/completions", args.http))
            .set("Authorization", &format!("Bearer {}", args.api_key))
            .timeout(Duration::from_secs(300))
            .send_json(body.clone());
        match sent {
            Ok(r) => break r,
            Err(ureq::Error::Status(503, r)) if retries < MAX_RETRIES => {
                let wait = r.header("Retry-After").and_then(|v| v.parse().ok()).unwrap_or(1);
                retries += 1;
                std::thread::sleep(Duration::from_secs(wait));
            },
            Err(ureq::Error::Status(status, r)) => {
                bail!("the gateway answered {status}: {}", r.into_string().unwrap_or_default())
            },
            Err(e) => bail!("request failed: {e}"),
        }
    };
    let mut first_token = None;
    let mut info = Value::Null;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            break;
        }
        let event: Value = serde_json::from_str(data).context("an event is not JSON")?;
        if let Some(error) = event.get("error") {
            bail!("the gateway answered an error: {error}");
        }
        let text = event["choices"][0]["text"].as_str().unwrap_or_default();
        if first_token.is_none() && !text.is_empty() {
            first_token = Some(started.elapsed());
        }
        info = event["openledger"].clone();
    }
    let answered = Instant::now();
    let paid = match (info["job"].as_u64(), info["channel"].as_u64()) {
        (Some(job), _) => Paid::Job(job),
        (None, Some(channel)) => Paid::Channel(channel),
        _ => bail!("the answer names neither a job nor a channel: {info}"),
    };
    Ok(Sample {
        latency: answered - started,
        first_token: first_token.unwrap_or(answered - started),
        assign_ms: info["assigned_after_ms"].as_f64().unwrap_or(f64::NAN),
        paid,
        answered,
        retries,
    })
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The same requests on the engine alone: `clients` closed-loop clients, each sending its
/// next request when its last is answered.
fn engine_alone(
    engine: &mut Engine,
    names: &[String],
    args: &Args,
    clients: usize,
    requests: usize,
) -> Result<Value> {
    struct Running {
        client: usize,
        sent: Instant,
        first: Option<Duration>,
        events: Receiver<StreamEvent>,
    }
    let total = clients * requests;
    let mut next = vec![0usize; clients];
    let mut running: Vec<Running> = Vec::new();
    let mut latency = Vec::new();
    let mut first_token = Vec::new();
    let submit = |engine: &mut Engine, client: usize, r: usize| -> Result<Running> {
        let i = client * requests + r;
        let tokens = engine.tokenize(&prompt(i))?;
        let params = SamplingParams { max_tokens: args.max_tokens as usize, ..Default::default() };
        let name = names[i % names.len()].clone();
        let (_, events) = engine.submit_tokens(tokens, Some(name), params)?;
        Ok(Running { client, sent: Instant::now(), first: None, events })
    };
    let started = Instant::now();
    for (client, n) in next.iter_mut().enumerate() {
        running.push(submit(engine, client, 0)?);
        *n = 1;
    }
    while latency.len() < total {
        engine.step()?;
        let mut still = Vec::new();
        for mut run in running.drain(..) {
            let mut done = false;
            loop {
                match run.events.try_recv() {
                    Ok(StreamEvent::Token { text, .. }) => {
                        if run.first.is_none() && !text.is_empty() {
                            run.first = Some(run.sent.elapsed());
                        }
                    },
                    Ok(StreamEvent::Finished { .. }) => {
                        done = true;
                        break;
                    },
                    Ok(StreamEvent::Failed(e)) => bail!("the engine failed a request: {e}"),
                    Ok(StreamEvent::Verified(r)) => bail!("a generation answered with {r:?}"),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => bail!("a request vanished"),
                }
            }
            if done {
                latency.push(ms(run.sent.elapsed()));
                first_token.push(ms(run.first.unwrap_or_else(|| run.sent.elapsed())));
                let client = run.client;
                if next[client] < requests {
                    still.push(submit(engine, client, next[client])?);
                    next[client] += 1;
                }
            } else {
                still.push(run);
            }
        }
        running = still;
    }
    let wall = started.elapsed();
    let (latency, first_token) = (sorted(latency), sorted(first_token));
    Ok(json!({
        "path": "engine alone",
        "clients": clients,
        "requests": total,
        "req_per_s": total as f64 / wall.as_secs_f64(),
        "latency_ms_p50": percentile(&latency, 50.0),
        "latency_ms_p99": percentile(&latency, 99.0),
        "first_token_ms_p50": percentile(&first_token, 50.0),
        "first_token_ms_p99": percentile(&first_token, 99.0),
    }))
}

fn load_engine(args: &Args, dir: &PathBuf) -> Result<(Engine, Vec<String>)> {
    let model = args.model.clone().context("--engine-adapters needs --model")?;
    let source =
        if model.is_dir() { ModelSource::HuggingFace(model) } else { ModelSource::Gguf(model) };
    let mut engine = Engine::load(&source, EngineConfig::default(), &Device::Cpu)?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut names = Vec::new();
    for (i, d) in dirs.iter().enumerate().take(args.adapters.len()) {
        let name = format!("a{i}");
        engine.register_adapter(&name, d)?;
        names.push(name);
    }
    if names.is_empty() {
        bail!("no adapter directory in {}", dir.display());
    }
    Ok((engine, names))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if let Some(dir) = &args.engine_adapters {
        let (mut engine, names) = load_engine(&args, dir)?;
        // One request first, unmeasured: pages in the model.
        engine_alone(&mut engine, &names, &args, 1, 1)?;
        for &clients in &args.clients {
            println!("{}", engine_alone(&mut engine, &names, &args, clients, args.requests)?);
        }
    }
    let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(30)).await?;
    // When each job's JobSettled and each channel's VoucherRedeemed arrived in a best block.
    let settled_at: Arc<Mutex<HashMap<Paid, Vec<Instant>>>> = Arc::default();
    let mut blocks = chain.subxt().stream_best_blocks().await?;
    let record = Arc::clone(&settled_at);
    tokio::spawn(async move {
        while let Some(Ok(block)) = blocks.next().await {
            let arrived = Instant::now();
            let Ok(at) = block.at().await else { continue };
            let Ok(events) = at.events().fetch().await else { continue };
            for ev in events.iter().flatten() {
                let paid = match (ev.pallet_name(), ev.event_name()) {
                    ("Jobs", "JobSettled") => {
                        ev.decode_fields_unchecked_as::<JobSettled>().ok().map(|s| Paid::Job(s.job))
                    },
                    ("Channels", "VoucherRedeemed") => ev
                        .decode_fields_unchecked_as::<VoucherRedeemed>()
                        .ok()
                        .map(|r| Paid::Channel(r.channel)),
                    _ => None,
                };
                if let Some(paid) = paid {
                    record.lock().await.entry(paid).or_default().push(arrived);
                }
            }
        }
    });
    // One request first, unmeasured: opens the channel on the channel path.
    one_request(&args, args.adapters[0], usize::MAX / 2)?;
    for &clients in &args.clients {
        let started = Instant::now();
        let mut threads = Vec::new();
        for c in 0..clients {
            let args = Arc::clone(&args);
            threads.push(std::thread::spawn(move || -> Result<Vec<Sample>> {
                (0..args.requests)
                    .map(|r| {
                        let i = c * args.requests + r;
                        one_request(&args, args.adapters[i % args.adapters.len()], i)
                    })
                    .collect()
            }));
        }
        let mut samples = Vec::new();
        for t in threads {
            samples.extend(t.join().map_err(|_| anyhow::anyhow!("a client panicked"))??);
        }
        let wall = started.elapsed();
        let mut settle_ms = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(900);
        for s in &samples {
            let settled = loop {
                let found = settled_at
                    .lock()
                    .await
                    .get(&s.paid)
                    .and_then(|times| times.iter().copied().find(|t| *t >= s.answered));
                if let Some(at) = found {
                    break Some(at);
                }
                if Instant::now() > give_up {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if let Some(at) = settled {
                settle_ms.push(ms(at.saturating_duration_since(s.answered)));
            }
        }
        let latency = sorted(samples.iter().map(|s| ms(s.latency)).collect());
        let first_token = sorted(samples.iter().map(|s| ms(s.first_token)).collect());
        let assign = sorted(samples.iter().map(|s| s.assign_ms).collect());
        let settle_ms = sorted(settle_ms);
        println!(
            "{}",
            json!({
                "path": args.label,
                "clients": clients,
                "requests": samples.len(),
                "adapters": args.adapters.len(),
                "max_tokens": args.max_tokens,
                "req_per_s": samples.len() as f64 / wall.as_secs_f64(),
                "latency_ms_p50": percentile(&latency, 50.0),
                "latency_ms_p99": percentile(&latency, 99.0),
                "first_token_ms_p50": percentile(&first_token, 50.0),
                "first_token_ms_p99": percentile(&first_token, 99.0),
                "submit_to_assignment_ms_p50": percentile(&assign, 50.0),
                "last_token_to_settlement_ms_p50": percentile(&settle_ms, 50.0),
                "last_token_to_settlement_ms_max": settle_ms.last().copied().unwrap_or(f64::NAN),
                "settled": settle_ms.len(),
                "retried_503": samples.iter().map(|s| u64::from(s.retries)).sum::<u64>(),
            })
        );
    }
    Ok(())
}
