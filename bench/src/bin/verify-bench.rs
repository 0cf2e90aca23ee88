//! Verifiable inference on the CPU (issue 23, `docs/benchmarks.md`, "Verifiable inference"):
//! how often a verifier's prefill pass catches each way of cheating, how often it wrongly
//! refuses an honest worker, and what verifying costs next to the generation it checks.
//!
//! Every job is a random prompt (16 to 64 token ids) with one of `--adapters` random rank-16
//! adapters, generating `--tokens` tokens (greedily, or at `--temperature` with top-p 0.95
//! and the job's own seed). Honest jobs are generated in batches of
//! 1, 8 and 32 on `--threads` threads and verified on `--verifier-threads`; each cheat
//! generates the same jobs its own way and claims the honest model and adapter:
//! - `adapter-skipped`: the base model alone, its commitment laid out as an adapted one with
//!   a zero delta row per token (what the adapter it skipped contributes; a claim without
//!   delta entries is refused for its layout alone);
//! - `other-adapter`: the next adapter;
//! - `adapter-at-delta-layer`: the smarter skip: the job's adapter applied only where the
//!   commitment looks (the first projection it targets at [`delta_layer`]), every other
//!   layer and projection served without it (a copy of the adapter with those weights
//!   zeroed), so the committed deltas are computed, on inputs that lack the adapter's effect
//!   on the layers before;
//! - `lower-precision`: the registered Q4_1 weights served as Q4_0;
//! - `layers-skipped`: the last `--skip-layers` layers dropped (no adapter, claimed none);
//! - `other-model`: another checkpoint of the same shape (every weight moved by noise of
//!   `--perturb` x its matrix's RMS, requantized to Q4_1), with the job's adapter;
//! - any of these with `+commit`: the cheater generates that way, then runs the registered
//!   model and adapter over the prompt and its output once (a prefill, far cheaper than
//!   generating on a GPU) to commit honest activations; only replaying the request's sampling
//!   over the verifier's logits can tell.
//!
//! `--device cuda` (a `--features cuda` build) runs every engine, the verifier's too, on
//! the GPU's bf16 tensor path (the GGUF's weights, and each cheat's, dequantized to bf16),
//! judged by the tolerance fitted to that format (`Tolerance::for_format`); honest jobs are
//! then served at `--batches` (add 64), and scenario `honest-base` serves and claims the
//! same jobs without adapters, whose decode steps replay CUDA graphs (unless
//! `OPENLEDGER_CUDA_GRAPHS=0`). `--reports FILE` writes every job's findings, one JSON
//! object per line, for fitting the tolerance.
//! `--save-served` writes what the honest scenario served and `--load-served` verifies such
//! a file instead of generating: honest work from one CPU (or kernel path: AMX, AVX-512
//! VNNI, AVX2, portable) checked on another.
//!
//! Prints one JSON object per scenario and a table.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use clap::Parser;
use openledger_engine::{
    commitment::delta_layer, write_random_adapter, ActivationCommitment, Engine, EngineConfig,
    KvCacheConfig, Model, ModelSource, NumericFormat, Projection, SamplingParams, StreamEvent,
    Tolerance, VerifyReport, GPU_DTYPE,
};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Verifiable inference: detection rates, false positives, verification cost")]
struct Args {
    /// GGUF model (default: the embedded SmolLM2-135M-Instruct Q4_1).
    #[arg(long, env = "OPENLEDGER_MODEL")]
    model: PathBuf,
    /// Jobs per scenario.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Tokens generated per job.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Distinct adapters the jobs use.
    #[arg(long, default_value_t = 8)]
    adapters: usize,
    /// Threads of the generating engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Threads of the verifier's engine.
    #[arg(long, default_value_t = 1)]
    verifier_threads: usize,
    /// Layers the `layers-skipped` cheat drops.
    #[arg(long, default_value_t = 2)]
    skip_layers: usize,
    /// Noise of the `other-model` cheat's weights, relative to each matrix's RMS.
    #[arg(long, default_value_t = 0.05)]
    perturb: f32,
    /// Sampling temperature of every job (0: greedy; above 0, top-p 0.95 and a seed per job).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Only these scenarios.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "honest,adapter-skipped,other-adapter,lower-precision,layers-skipped,other-model"
    )]
    only: Vec<String>,
    /// Where every engine runs: `cpu`, or `cuda` (the bf16 tensor path; a `cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch sizes the honest jobs are generated at (a share of the jobs each).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Judge verifications by this format's tolerance (`host`, `host-vnni`, `cuda-bf16`)
    /// instead of the verifier's own format's (on the VNNI / AMX path `host-vnni`, exact
    /// replays: use `host` to verify work from another kernel path).
    #[arg(long)]
    tolerance: Option<String>,
    /// Write each verified job's findings here, one JSON object per line.
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Write what the honest scenario served (job, output tokens, commitment), one JSON
    /// object per line, for another machine or kernel path to verify (`--load-served`).
    #[arg(long)]
    save_served: Option<PathBuf>,
    /// Verify what a `--save-served` file holds instead of generating the honest jobs (same
    /// model, `--jobs`, `--tokens`, `--adapters` and `--temperature` as the run that wrote it).
    #[arg(long)]
    load_served: Option<PathBuf>,
}

/// One job: its prompt, the adapter it is claimed to use, and its sampling.
struct Job {
    prompt: Vec<u32>,
    adapter: Option<String>,
    params: SamplingParams,
}

/// What a worker returned for a job.
struct Served {
    output: Vec<u32>,
    commitment: ActivationCommitment,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = openledger_engine::device(&args.device)?;
    let load = || -> Result<Engine> {
        Engine::load(&ModelSource::Gguf(args.model.clone()), config(1, 1), &Device::Cpu)
            .with_context(|| format!("loading {}", args.model.display()))
    };
    let base = load()?;
    let tokenizer = base.tokenizer().clone();
    let cfg = base.model().config().clone();
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..args.adapters).map(|i| format!("a{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        write_random_adapter(&dir.path().join(n), &cfg, 16, &Projection::ALL, 100 + i as u64)?;
    }
    // Every model is built on the host (the cheats rework host weights), then moved to the
    // device: dequantized to the tensor path's bf16 on a GPU.
    let engine = |model: Model, threads: usize, batch: usize, adapters: bool| -> Result<Engine> {
        let model = if device.is_cpu() { model } else { model.to_tensors(&device, GPU_DTYPE)? };
        let mut e = Engine::new(model, tokenizer.clone(), config(threads, batch))?;
        if adapters {
            for n in &names {
                e.register_adapter(n, &dir.path().join(n))?;
            }
        }
        Ok(e)
    };
    // The `adapter-at-delta-layer` cheat's adapters: each adapter with every weight zeroed
    // except the first target's at the commitment's layer.
    let cut = |n: &str| format!("{n}-at-delta-layer");
    let kept = format!("layers.{}.{}.", delta_layer(cfg.num_layers), Projection::ALL[0].hf_path());
    for n in &names {
        write_zeroed_except(&dir.path().join(n), &dir.path().join(cut(n)), &kept)?;
    }
    let same = || base.model().without_last_layers(0);
    let mut verifier = engine(same()?, args.verifier_threads, 32, true)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let vocab = cfg.vocab_size as u32;
    let jobs: Vec<Job> = (0..args.jobs)
        .map(|i| Job {
            prompt: (0..rng.random_range(16..=64)).map(|_| rng.random_range(100..vocab)).collect(),
            adapter: Some(names[i % names.len()].clone()),
            params: SamplingParams {
                temperature: args.temperature,
                top_p: if args.temperature > 0.0 { 0.95 } else { 1.0 },
                seed: i as u64,
                max_tokens: args.tokens,
                ignore_eos: true,
                ..Default::default()
            },
        })
        .collect();
    let tol = match args.tolerance.as_deref() {
        None => Tolerance::for_format(verifier.model().numeric_format()),
        Some("host") => Tolerance::for_format(NumericFormat::Host),
        Some("host-vnni") => Tolerance::for_format(NumericFormat::HostVnni),
        Some("cuda-bf16") => Tolerance::for_format(NumericFormat::CudaBf16),
        Some(other) => bail!("--tolerance {other}: expected host, host-vnni or cuda-bf16"),
    };
    let graphs = !device.is_cpu() && openledger_kernels::options::options().cuda_graphs;
    let mut reports_out = match &args.reports {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    println!(
        "{:<24} {:>6} {:>9} {:>9} {:>12} {:>12} {:>10} {:>10}",
        "scenario", "jobs", "refused", "rate", "mean_err", "max_err", "replay_off", "verify/gen"
    );
    for scenario in &args.only {
        let (generator, recommit) = match scenario.strip_suffix("+commit") {
            Some(g) => (g, true),
            None => (scenario.as_str(), false),
        };
        let (mut served, gen_time): (Vec<(usize, Served)>, Duration) = match generator {
            "honest" if args.load_served.is_some() => {
                let path = args.load_served.as_deref().unwrap_or(std::path::Path::new(""));
                (load_served(path, &jobs)?, Duration::ZERO)
            },
            "honest" | "honest-base" => {
                // Each of `--batches` in turn (a share of the jobs each), on its own engine;
                // `honest-base` without adapters.
                let base = generator == "honest-base";
                let mut all = Vec::new();
                let mut time = Duration::ZERO;
                let n = args.batches.len();
                for (k, &b) in args.batches.iter().enumerate() {
                    let mut e = engine(same()?, args.threads, b, !base)?;
                    let part: Vec<usize> = (k..jobs.len()).step_by(n).collect();
                    let (s, t) = serve(&mut e, &jobs, &part, b, |j| {
                        if base {
                            None
                        } else {
                            j.adapter.clone()
                        }
                    })?;
                    all.extend(s);
                    time += t;
                }
                if let (false, Some(path)) = (base, &args.save_served) {
                    save_served(path, &all)?;
                }
                (all, time)
            },
            "adapter-skipped" => {
                let mut e = engine(same()?, args.threads, 32, true)?;
                let (mut served, time) = serve(&mut e, &jobs, &all(&jobs), 32, |_| None)?;
                let zero = openledger_engine::commitment::row_words(&vec![0.0; cfg.hidden_size])?;
                for (_, s) in &mut served {
                    s.commitment = s.commitment.with_every_delta(&s.output, &zero);
                }
                (served, time)
            },
            "other-adapter" => {
                let mut e = engine(same()?, args.threads, 32, true)?;
                serve(&mut e, &jobs, &all(&jobs), 32, |j| {
                    let i = names.iter().position(|n| Some(n) == j.adapter.as_ref())?;
                    Some(names[(i + 1) % names.len()].clone())
                })?
            },
            "adapter-at-delta-layer" => {
                let mut e = engine(same()?, args.threads, 32, true)?;
                for n in &names {
                    e.register_adapter(&cut(n), &dir.path().join(cut(n)))?;
                }
                serve(&mut e, &jobs, &all(&jobs), 32, |j| j.adapter.as_deref().map(cut))?
            },
            "lower-precision" => {
                let mut e =
                    engine(base.model().requantized(GgmlDType::Q4_0)?, args.threads, 32, true)?;
                serve(&mut e, &jobs, &all(&jobs), 32, |j| j.adapter.clone())?
            },
            "layers-skipped" => {
                let mut e = engine(
                    base.model().without_last_layers(args.skip_layers)?,
                    args.threads,
                    32,
                    false,
                )?;
                serve(&mut e, &jobs, &all(&jobs), 32, |_| None)?
            },
            "other-model" => {
                let model = base.model().perturbed(args.perturb, 5, GgmlDType::Q4_1)?;
                let mut e = engine(model, args.threads, 32, true)?;
                serve(&mut e, &jobs, &all(&jobs), 32, |j| j.adapter.clone())?
            },
            other => bail!("unknown scenario {other}"),
        };
        // Claims: the honest adapter, except the layers cheat (which served no adapter).
        let claim = |j: &Job| {
            if matches!(generator, "layers-skipped" | "honest-base") {
                None
            } else {
                j.adapter.clone()
            }
        };
        if recommit {
            // The cheater's honest prefill: the registered model's rows over its own output
            // make the commitment it claims (what a verifier recomputes, so taken from one).
            let rows = verify(&mut verifier, &jobs, &served, &claim, &tol, false)?;
            for ((_, s), r) in served.iter_mut().zip(rows) {
                s.commitment = r.recomputed;
            }
        }
        let t = Instant::now();
        let reports = verify(&mut verifier, &jobs, &served, &claim, &tol, true)?;
        let verify_time = t.elapsed();
        if let Some(out) = reports_out.as_mut() {
            use std::io::Write;
            let n = args.batches.len().max(1);
            for ((i, s), r) in served.iter().zip(&reports) {
                let batch = if generator.starts_with("honest") { args.batches[i % n] } else { 32 };
                let line = serde_json::json!({
                    "scenario": scenario, "job": i, "batch": batch, "graphs": graphs,
                    "entries": r.entries, "value_mismatches": r.value_mismatches,
                    "index_mismatches": r.index_mismatches,
                    "mean_relative_error": r.mean_relative_error(),
                    "max_relative_error": r.max_relative_error,
                    "replayed_tokens": r.replayed_tokens, "replay_mismatches": r.replay_mismatches,
                    "max_replay_gap": r.max_replay_gap,
                    "layout_mismatch": r.layout_mismatch, "delta_entries": r.delta_entries,
                    "delta_value_mismatches": r.delta_value_mismatches,
                    "delta_index_mismatches": r.delta_index_mismatches,
                    "delta_mean_relative_error": r.delta_mean_relative_error(),
                    "delta_max_relative_error": r.delta_max_relative_error,
                    "bytes": s.commitment.as_bytes().len(), "tokens": s.output.len(),
                    "tokens_match": r.committed_tokens == r.recomputed_tokens,
                    "passes": r.passes(&tol),
                });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        let refused = reports.iter().filter(|r| !r.passes(&tol)).count();
        let mean = reports.iter().map(|r| r.mean_relative_error()).sum::<f64>()
            / reports.len().max(1) as f64;
        let max = reports.iter().map(|r| r.max_relative_error).fold(0f32, f32::max);
        let worst_mean = reports.iter().map(|r| r.mean_relative_error()).fold(0f64, f64::max);
        let best_mean =
            reports.iter().map(|r| r.mean_relative_error()).fold(f64::INFINITY, f64::min);
        let rate = refused as f64 / reports.len().max(1) as f64;
        let replayed: usize = reports.iter().map(|r| r.replayed_tokens).sum();
        let replay_off: usize = reports.iter().map(|r| r.replay_mismatches).sum();
        let replay_share = replay_off as f64 / replayed.max(1) as f64;
        let worst_replay = reports
            .iter()
            .map(|r| r.replay_mismatches as f64 / r.replayed_tokens.max(1) as f64)
            .fold(0f64, f64::max);
        let best_replay = reports
            .iter()
            .map(|r| r.replay_mismatches as f64 / r.replayed_tokens.max(1) as f64)
            .fold(f64::INFINITY, f64::min);
        // Loaded jobs were generated elsewhere: no cost to compare (NaN, printed as such).
        let cost = if gen_time.is_zero() {
            f64::NAN
        } else {
            verify_time.as_secs_f64() / gen_time.as_secs_f64()
        };
        println!(
            "{:<24} {:>6} {:>9} {:>8.2}% {:>12.5} {:>12.5} {:>9.1}% {:>9.1}%",
            scenario,
            reports.len(),
            refused,
            rate * 100.0,
            mean,
            max,
            replay_share * 100.0,
            cost * 100.0
        );
        println!(
            "{}",
            serde_json::json!({
                "scenario": scenario, "jobs": reports.len(), "refused": refused, "rate": rate,
                "mean_relative_error": mean, "max_relative_error": max,
                "worst_job_mean_error": worst_mean, "best_job_mean_error": best_mean,
                "replayed_tokens": replayed, "replay_mismatches": replay_off,
                "worst_job_replay_mismatch_share": worst_replay,
                "best_job_replay_mismatch_share": best_replay,
                "temperature": args.temperature,
                "generate_s": gen_time.as_secs_f64(), "verify_s": verify_time.as_secs_f64(),
                "tokens_per_job": args.tokens, "threads": args.threads,
                "verifier_threads": args.verifier_threads,
                "device": args.device, "graphs": graphs, "tolerance": format!("{tol:?}"),
                "verifier_simd": format!("{:?}", openledger_kernels::options::simd()),
                "loaded_from": args.load_served.as_ref().map(|p| p.display().to_string()),
                "bytes_per_32_tokens": openledger_engine::commitment::encoded_len(32, false),
                "bytes_per_32_tokens_adapted": openledger_engine::commitment::encoded_len(32, true),
            })
        );
    }
    Ok(())
}

/// Writes served jobs as JSON lines: `{"job": index, "output": [ids], "commitment": [bytes]}`.
fn save_served(path: &std::path::Path, served: &[(usize, Served)]) -> Result<()> {
    let mut text = String::new();
    for (i, s) in served {
        let line = serde_json::json!({
            "job": i, "output": s.output, "commitment": s.commitment.as_bytes(),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads a `save_served` file, checking each line against the jobs this run defines.
fn load_served(path: &std::path::Path, jobs: &[Job]) -> Result<Vec<(usize, Served)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), n + 1);
        let value: serde_json::Value = serde_json::from_str(raw).with_context(at)?;
        let numbers = |key: &str| -> Result<Vec<u64>> {
            value[key]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64()).collect::<Option<Vec<_>>>())
                .with_context(|| format!("{}: `{key}` is not a list of numbers", at()))
        };
        let job = value["job"].as_u64().with_context(|| format!("{}: no `job`", at()))? as usize;
        let output = numbers("output")?.into_iter().map(|t| t as u32).collect::<Vec<_>>();
        let bytes = numbers("commitment")?.into_iter().map(|b| b as u8).collect::<Vec<_>>();
        if job >= jobs.len() {
            bail!("{}: job {job} but this run defines {} jobs (--jobs)", at(), jobs.len());
        }
        let adapted = jobs[job].adapter.is_some();
        let commitment = ActivationCommitment::from_bytes(bytes, adapted).with_context(at)?;
        if commitment.tokens() != output.len() {
            bail!(
                "{}: the commitment covers {} tokens, the output has {}",
                at(),
                commitment.tokens(),
                output.len()
            );
        }
        out.push((job, Served { output, commitment }));
    }
    if out.len() != jobs.len() {
        bail!(
            "{} holds {} jobs, this run defines {} (--jobs)",
            path.display(),
            out.len(),
            jobs.len()
        );
    }
    Ok(out)
}

/// Copies the PEFT adapter in `from` to `to` with every tensor zeroed except those whose
/// name contains `kept`.
fn write_zeroed_except(from: &std::path::Path, to: &std::path::Path, kept: &str) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json"))
        .with_context(|| format!("copying {}", from.display()))?;
    let file = from.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("reading {}", file.display()))?;
    let mut zeroed = 0;
    for (name, t) in tensors.iter_mut() {
        if !name.contains(kept) {
            *t = t.zeros_like()?;
            zeroed += 1;
        }
    }
    if zeroed + 2 != tensors.len() {
        bail!("{}: expected to keep 2 tensors named *{kept}*", file.display());
    }
    candle_core::safetensors::save(&tensors, to.join("adapter_model.safetensors"))?;
    Ok(())
}

fn all(jobs: &[Job]) -> Vec<usize> {
    (0..jobs.len()).collect()
}

fn config(threads: usize, batch: usize) -> EngineConfig {
    EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: 64 * 8 },
        max_running: batch.max(1),
        threads,
        ..EngineConfig::default()
    }
}

/// Generates jobs `which` on `e`, `batch` at a time, with the adapter `pick` chooses;
/// returns what was served (by job index) and the time it took.
fn serve(
    e: &mut Engine,
    jobs: &[Job],
    which: &[usize],
    batch: usize,
    pick: impl Fn(&Job) -> Option<String>,
) -> Result<(Vec<(usize, Served)>, Duration)> {
    let mut out = Vec::new();
    let t = Instant::now();
    for group in which.chunks(batch.max(1)) {
        let rxs = group
            .iter()
            .map(|&i| {
                let j = &jobs[i];
                Ok((i, e.submit_tokens(j.prompt.clone(), pick(j), j.params.clone())?.1))
            })
            .collect::<Result<Vec<_>>>()?;
        e.run_until_idle()?;
        for (i, rx) in rxs {
            out.push((i, finished(&rx)?));
        }
    }
    Ok((out, t.elapsed()))
}

fn finished(rx: &Receiver<StreamEvent>) -> Result<Served> {
    let mut output = Vec::new();
    for ev in rx.try_iter() {
        match ev {
            StreamEvent::Token { id, .. } => output.push(id),
            StreamEvent::Finished { activations: Some(commitment), .. } => {
                return Ok(Served { output, commitment })
            },
            StreamEvent::Finished { activations: None, .. } => bail!("no commitment"),
            StreamEvent::Failed(e) => bail!("a job failed: {e}"),
            StreamEvent::Verified(r) => bail!("a generation answered with {r:?}"),
        }
    }
    bail!("a job did not finish")
}

/// Verifies every served job, 32 at a time, claiming `claim`'s adapter (and the job's
/// sampling, replayed, when `replay`).
fn verify(
    e: &mut Engine,
    jobs: &[Job],
    served: &[(usize, Served)],
    claim: &dyn Fn(&Job) -> Option<String>,
    tol: &Tolerance,
    replay: bool,
) -> Result<Vec<VerifyReport>> {
    let mut reports = Vec::new();
    for group in served.chunks(32) {
        let rxs = group
            .iter()
            .map(|(i, s)| {
                let j = &jobs[*i];
                Ok(e.submit_verification(
                    &j.prompt,
                    &s.output,
                    claim(j),
                    s.commitment.clone(),
                    *tol,
                    replay.then(|| j.params.clone()),
                )?
                .1)
            })
            .collect::<Result<Vec<_>>>()?;
        e.run_until_idle()?;
        for rx in rxs {
            match rx.try_iter().next() {
                Some(StreamEvent::Verified(r)) => reports.push(r),
                other => bail!("expected a verification report, got {other:?}"),
            }
        }
    }
    Ok(reports)
}
