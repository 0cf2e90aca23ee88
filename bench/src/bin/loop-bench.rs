//! Benchmark of the full loop through a running gateway and workers (issue 10,
//! `docs/benchmarks.md`): for each number of concurrent clients, requests per second and the
//! p50 / p99 latency of OpenAI-style completions spread over several adapters; and the
//! chain-side overhead per job: submission to assignment (measured by the gateway, reported
//! in each response) and last token to settlement (from the response until the job's record
//! leaves the chain). `scripts/bench-loop.sh` starts a node, a gateway and a worker and runs
//! it. Prints one JSON object per concurrency level.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use std::collections::HashMap;

use openledger_bench::harness::percentile;
use openledger_chain_client::{ChainClient, JobSettled};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Full-loop benchmark: gateway + workers + chain")]
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
}

struct Sample {
    latency: Duration,
    assign_ms: f64,
    job: u64,
    answered: Instant,
}

fn one_request(args: &Args, adapter: u32, i: usize) -> Result<Sample> {
    let started = Instant::now();
    let body = json!({
        "model": format!("adapter-{adapter}"),
        "prompt": format!("Request {i}: write one sentence about shared GPUs."),
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
    });
    let response: Value = ureq::post(&format!("{}/completions", args.http))
        .set("Authorization", &format!("Bearer {}", args.api_key))
        .timeout(Duration::from_secs(300))
        .send_json(body)
        .map_err(|e| anyhow::anyhow!("request failed: {e}"))?
        .into_json()
        .context("response is not JSON")?;
    let answered = Instant::now();
    let job = response["openledger"]["job"].as_u64().context("no job in the response")?;
    let assign_ms = response["openledger"]["assigned_after_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(Sample { latency: answered - started, assign_ms, job, answered })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let chain = ChainClient::connect(&args.chain_url, Duration::from_secs(30)).await?;
    // When each job's JobSettled event arrived in a best block.
    let settled_at = std::sync::Arc::new(tokio::sync::Mutex::new(HashMap::new()));
    let mut blocks = chain.subxt().stream_best_blocks().await?;
    let record = std::sync::Arc::clone(&settled_at);
    tokio::spawn(async move {
        while let Some(Ok(block)) = blocks.next().await {
            let arrived = Instant::now();
            let Ok(at) = block.at().await else { continue };
            let Ok(events) = at.events().fetch().await else { continue };
            for ev in events.iter().flatten() {
                if ev.pallet_name() == "Jobs" && ev.event_name() == "JobSettled" {
                    if let Ok(s) = ev.decode_fields_unchecked_as::<JobSettled>() {
                        record.lock().await.entry(s.job).or_insert(arrived);
                    }
                }
            }
        }
    });
    for &clients in &args.clients {
        let started = Instant::now();
        let mut threads = Vec::new();
        for c in 0..clients {
            let args = std::sync::Arc::clone(&args);
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
        // Last token to settlement: the best block whose events settle each job.
        let mut settle_ms = Vec::new();
        for s in &samples {
            let settled = loop {
                if let Some(at) = settled_at.lock().await.get(&s.job) {
                    break *at;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            settle_ms.push(settled.saturating_duration_since(s.answered).as_secs_f64() * 1e3);
        }
        let mut latency: Vec<f64> = samples.iter().map(|s| s.latency.as_secs_f64() * 1e3).collect();
        latency.sort_by(|a, b| a.total_cmp(b));
        let mut assign: Vec<f64> = samples.iter().map(|s| s.assign_ms).collect();
        assign.sort_by(|a, b| a.total_cmp(b));
        settle_ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{}",
            json!({
                "clients": clients,
                "requests": samples.len(),
                "adapters": args.adapters.len(),
                "max_tokens": args.max_tokens,
                "req_per_s": samples.len() as f64 / wall.as_secs_f64(),
                "latency_ms_p50": percentile(&latency, 50.0),
                "latency_ms_p99": percentile(&latency, 99.0),
                "submit_to_assignment_ms_p50": percentile(&assign, 50.0),
                "last_token_to_settlement_ms_p50": percentile(&settle_ms, 50.0),
                "last_token_to_settlement_ms_max": settle_ms.last().copied().unwrap_or(f64::NAN),
            })
        );
    }
    Ok(())
}
