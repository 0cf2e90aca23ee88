//! GPU benchmark of the engine (issue 8, `docs/benchmarks.md` "Engine on GPU"): a model of
//! Llama-3-8B's shape with random bf16 weights generated on the device, served through the
//! tensor path (cuBLAS projections, CUDA SGMV, paged decode attention).
//!
//! Prints one JSON object per measurement:
//! - `copy`: device-to-device copy bandwidth (1 GiB, read + write), the yardstick;
//! - `decode`: one decode step of the model for B sequences at a fixed context, with A
//!   distinct rank-16 adapters on q/k/v/o (and one configuration on all seven projections):
//!   median step time, tokens/s, bytes of weights (base + distinct adapters) and KV read per
//!   step, the floor those bytes set at the copy bandwidth, and the weight-read bandwidth
//!   achieved;
//! - `prefill`: one 512-token prompt through the model, without and with an adapter;
//! - `engine_*`: the same through the whole engine (scheduler, logits to the host, sampling,
//!   streaming): prefill, time to first token with a cold adapter (on disk), one in host
//!   memory and a hot one (on the GPU), alone and arriving beside 8 decoding sequences,
//!   the parts of a cold adapter's cost (`adapter_load_parts`), and aggregate decode;
//! - `memory`: GPU memory in use (driver's view: total - free) at each phase.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{CudaDevice, DType, Device};
use clap::Parser;
use openledger_bench::harness::{median, phases_json};
use openledger_bench::shapes::LlamaShape;
use openledger_engine::{
    write_random_adapter, AdapterCacheConfig, BlockTable, Engine, EngineConfig, KvCache,
    KvCacheConfig, LoraAdapter, LoraSlots, Model, ModelConfig, Projection, SamplingParams,
    SeqChunk, StepPhases, StreamEvent,
};

#[derive(Parser)]
#[command(about = "Engine GPU benchmark on a Llama-3-8B-shaped random bf16 model")]
struct Args {
    #[command(flatten)]
    shape: LlamaShape,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64,128")]
    batch: Vec<usize>,
    /// Distinct adapters per decode batch (capped at the batch size).
    #[arg(long, value_delimiter = ',', default_value = "0,1,8,32,128")]
    adapters: Vec<usize>,
    /// The all-seven-projections configuration: batch and distinct adapters.
    #[arg(long, default_value_t = 64)]
    all7_batch: usize,
    #[arg(long, default_value_t = 32)]
    all7_adapters: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Cached positions of every sequence in the decode runs.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Timed decode steps per configuration (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Prompt tokens of the prefill and first-token runs.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Prefill runs per configuration (the first is a warm-up, the median of the rest is
    /// reported).
    #[arg(long, default_value_t = 6)]
    prefill_runs: usize,
    /// Only the prefill: no decode configurations, no engine-level runs. With it the run
    /// also times the prefill's GEMMs alone at its row count and an 8192^3 bf16 GEMM, the
    /// rate its FLOP floor is taken at.
    #[arg(long)]
    prefill_only: bool,
    /// Before each prefill run and after a configuration's last, and around each decode
    /// configuration's timed steps, launch one f64 kernel (`affine_f64`, which nothing else
    /// here launches): markers that split a profiler's kernel list into the runs.
    #[arg(long)]
    mark_runs: bool,
    /// Also time every decode configuration without adapters with the step replayed from
    /// a CUDA graph (`Model::forward_graphed`), after its eager run.
    #[arg(long)]
    graphs: bool,
    /// Batch sizes of the engine decode runs without adapters (the largest of them, at least
    /// 64, is also run with 32 adapters and sets the engine's running limit).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    engine_batch: Vec<usize>,
    /// Skip the engine-level runs.
    #[arg(long)]
    no_engine: bool,
    /// Only the engine-level runs (no model-step decode or prefill configurations).
    #[arg(long)]
    engine_only: bool,
    /// The engine without activation commitments (the final-norm rows of every step are
    /// then neither copied to the host nor hashed): what they cost a decode step.
    #[arg(long)]
    no_commit: bool,
    /// The engine without decode steps launched ahead of the previous step's read
    /// (`EngineConfig::overlap_decode`, on here unless this flag): what the overlap gains.
    #[arg(long)]
    no_overlap: bool,
    /// The engine's decode runs with activation commitments on and off in turn, this many
    /// rounds of each per configuration, in this one process (on the same engine, its CUDA
    /// graphs already captured): what commitments cost a decode step, measured side by side.
    #[arg(long, default_value_t = 0)]
    commit_ab: usize,
    /// Run everything on the CPU in f32 (a check of the benchmark's own logic on a machine
    /// without a GPU; use tiny shapes).
    #[arg(long)]
    cpu_dry_run: bool,
}

/// GPU memory in use (total - free), in bytes (0 on the CPU).
fn used_memory(dev: Option<&CudaDevice>) -> Result<usize> {
    let Some(dev) = dev else { return Ok(0) };
    let (free, total) = dev.cuda_stream().context().mem_get_info()?;
    Ok(total - free)
}

fn report_memory(dev: Option<&CudaDevice>, phase: &str, peak: &mut usize) -> Result<()> {
    let used = used_memory(dev)?;
    *peak = (*peak).max(used);
    println!(
        "{{\"measure\":\"memory\",\"phase\":\"{phase}\",\"used_gib\":{:.2}}}",
        used as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

/// Device-to-device copy of 1 GiB: bytes read + written per second (median of 20).
fn copy_bandwidth(dev: &CudaDevice) -> Result<f64> {
    let stream = dev.cuda_stream();
    let n = 1usize << 30;
    let src = stream.alloc_zeros::<u8>(n)?;
    let mut dst = stream.alloc_zeros::<u8>(n)?;
    for _ in 0..3 {
        stream.memcpy_dtod(&src, &mut dst)?;
    }
    stream.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        stream.memcpy_dtod(&src, &mut dst)?;
        stream.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * n as f64 / median(&mut times))
}

/// Median time of one decode step of `slots.len()` sequences at `context` cached positions,
/// and the median time the host took to enqueue it (the step is host-bound when the two
/// are close). With `mark`, a marker kernel before the first timed step and one after the
/// last (`Args::mark_runs`): a profiler's kernels between them are the timed steps'.
#[allow(clippy::too_many_arguments)]
fn decode_step(
    model: &Model,
    lora: &LoraSlots,
    cache: &mut KvCache,
    slots: &[Option<u32>],
    context: usize,
    steps: usize,
    device: &Device,
    (graphed, mark): (bool, bool),
) -> Result<(f64, f64)> {
    let vocab = model.config().vocab_size;
    let mut tables = vec![BlockTable::default(); slots.len()];
    for t in &mut tables {
        cache.reserve(t, context + steps + 4)?;
    }
    let tokens: Vec<[u32; 1]> =
        (0..slots.len()).map(|i| [((i * 7919 + 11) % vocab) as u32]).collect();
    let (mut times, mut enqueue) = (Vec::new(), Vec::new());
    let mut run = || -> Result<()> {
        for s in 0..steps + 3 {
            if mark && s == 3 {
                marker(device)?;
            }
            let chunks: Vec<SeqChunk<'_>> = (0..slots.len())
                .map(|i| SeqChunk {
                    tokens: &tokens[i],
                    table: &tables[i],
                    start: context + s,
                    adapter: slots[i],
                })
                .collect();
            device.synchronize()?;
            let t = Instant::now();
            let logits = if graphed {
                model.forward_graphed(&chunks, cache, lora)?
            } else {
                model.forward(&chunks, cache, lora)?
            };
            let queued = t.elapsed().as_secs_f64();
            device.synchronize()?;
            if s >= 3 {
                times.push(t.elapsed().as_secs_f64());
                enqueue.push(queued);
            }
            drop(logits);
        }
        if mark {
            marker(device)?;
        }
        Ok(())
    };
    // The blocks go back to the cache whether the steps ran or failed.
    let ran = run();
    for t in &mut tables {
        cache.release(t);
    }
    ran?;
    Ok((median(&mut times), median(&mut enqueue)))
}

/// Median time of one prefill of `prompt` tokens as a single chunk (`runs` runs, the first
/// a warm-up; with `mark`, a marker kernel before each, `Args::mark_runs`).
fn prefill_time(
    model: &Model,
    lora: &LoraSlots,
    cache: &mut KvCache,
    prompt: &[u32],
    slot: Option<u32>,
    device: &Device,
    (runs, mark): (usize, bool),
) -> Result<f64> {
    let mut times = Vec::new();
    for run in 0..runs.max(2) {
        if mark {
            marker(device)?;
        }
        let mut table = BlockTable::default();
        cache.reserve(&mut table, prompt.len())?;
        let chunk = SeqChunk { tokens: prompt, table: &table, start: 0, adapter: slot };
        device.synchronize()?;
        let t = Instant::now();
        let logits = model.forward(&[chunk], cache, lora)?;
        device.synchronize()?;
        if run > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        drop(logits);
        cache.release(&mut table);
    }
    if mark {
        marker(device)?;
    }
    Ok(median(&mut times))
}

/// One f64 kernel (`affine_f64`, which nothing else here launches): a profiler's marker.
fn marker(device: &Device) -> Result<()> {
    candle_core::Tensor::ones(1, DType::F64, device)?.affine(2.0, 1.0)?;
    Ok(())
}

fn tokens_streamed(rx: &Receiver<StreamEvent>) -> usize {
    rx.try_iter().filter(|e| matches!(e, StreamEvent::Token { .. })).count()
}

/// Seconds from submitting `prompt` (with `adapter`) to its first streamed token.
fn first_token(engine: &mut Engine, prompt: &[u32], adapter: Option<&str>) -> Result<f64> {
    let params = SamplingParams { max_tokens: 1, ignore_eos: true, ..Default::default() };
    let t = Instant::now();
    let (_, rx) = engine.submit_tokens(prompt.to_vec(), adapter.map(str::to_string), params)?;
    while tokens_streamed(&rx) == 0 {
        if engine.is_idle() {
            bail!("the request finished without a token");
        }
        engine.step()?;
    }
    let secs = t.elapsed().as_secs_f64();
    engine.run_until_idle()?;
    Ok(secs)
}

/// What a request for a cold adapter meets when it arrives beside a decoding batch.
struct BesideDecode {
    /// Submit to its first token.
    ttft: f64,
    /// Median decode step of the batch before the request came.
    step_before: f64,
    /// The batch's steps while the request waited for its adapter (it was not in them).
    waiting_steps: Vec<f64>,
    /// The step that prefilled it (beside the batch's decode tokens).
    admitted_step: f64,
}

/// `running` sequences without adapters decode; a request for `adapter` (not on the GPU)
/// arrives; the batch's steps are timed until the request's first token.
fn first_token_beside_decode(
    engine: &mut Engine,
    prompt: &[u32],
    adapter: &str,
    running: usize,
) -> Result<BesideDecode> {
    let vocab = engine.model().config().vocab_size as u32;
    let params = SamplingParams { max_tokens: 64, ignore_eos: true, ..Default::default() };
    let batch: Vec<Receiver<StreamEvent>> = (0..running)
        .map(|s| {
            let p: Vec<u32> = (0..32u32).map(|i| (i * 131 + s as u32 * 7) % vocab).collect();
            Ok(engine.submit_tokens(p, None, params.clone())?.1)
        })
        .collect::<Result<_>>()?;
    let mut got = vec![0usize; running];
    // Until every sequence decodes, then a few decode steps timed.
    while got.contains(&0) {
        engine.step()?;
        for (g, r) in got.iter_mut().zip(&batch) {
            *g += tokens_streamed(r);
        }
    }
    let mut before = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        engine.step()?;
        before.push(t.elapsed().as_secs_f64());
    }
    let one = SamplingParams { max_tokens: 1, ignore_eos: true, ..Default::default() };
    let t = Instant::now();
    let (_, rx) = engine.submit_tokens(prompt.to_vec(), Some(adapter.to_string()), one)?;
    let mut waiting = Vec::new();
    let admitted_step = loop {
        let s = Instant::now();
        let report = engine.step()?;
        let secs = s.elapsed().as_secs_f64();
        if tokens_streamed(&rx) > 0 {
            break secs;
        }
        if report.tokens > running {
            bail!("the request was prefilled without streaming a token");
        }
        waiting.push(secs);
        if waiting.len() > 1000 {
            bail!("the request for {adapter} was never admitted");
        }
    };
    let ttft = t.elapsed().as_secs_f64();
    engine.run_until_idle()?;
    Ok(BesideDecode {
        ttft,
        step_before: median(&mut before),
        waiting_steps: waiting,
        admitted_step,
    })
}

/// The parts of a cold adapter's cost, each timed alone (median of 5): reading the file,
/// the one-pass check and conversion into CPU tensors and into page-locked memory, and the
/// copy of the page-locked adapter to the GPU (one slot install, to its end).
fn adapter_load_parts(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<()> {
    let file = dir.join("adapter_model.safetensors");
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_secs_f64());
        }
        Ok(median(&mut v) * 1e3)
    };
    let read = time(&mut || {
        std::fs::read(&file)?;
        Ok(())
    })?;
    let tensors = time(&mut || {
        LoraAdapter::load(dir, cfg, &Device::Cpu)?;
        Ok(())
    })?;
    let packed = time(&mut || {
        LoraAdapter::load_for(dir, cfg, device)?;
        Ok(())
    })?;
    let adapter = LoraAdapter::load_for(dir, cfg, device)?;
    let mut slots = LoraSlots::new(cfg, device, 1, false);
    let install = time(&mut || {
        slots.install(0, &adapter)?;
        Ok(device.synchronize()?)
    })?;
    let cpu_adapter = LoraAdapter::load(dir, cfg, &Device::Cpu)?;
    let install_tensors = time(&mut || {
        slots.install(0, &cpu_adapter)?;
        Ok(device.synchronize()?)
    })?;
    println!(
        "{{\"measure\":\"adapter_load_parts\",\"file_mb\":{:.1},\"weight_mb\":{:.1},\"read_file_ms\":{read:.2},\"check_convert_to_tensors_ms\":{tensors:.2},\"check_convert_to_pinned_ms\":{packed:.2},\"install_pinned_ms\":{install:.2},\"install_from_tensors_ms\":{install_tensors:.2}}}",
        file_size(dir) as f64 / 1e6,
        adapter.weight_bytes() as f64 / 1e6,
    );
    Ok(())
}

/// Decode tokens/s of `n` sequences through the engine: aggregate (from the step that gave
/// every sequence its first token to the end, the batch shrinking as sequences finish a few
/// at a time, as they were admitted) and full-batch (over the steps that decoded all `n`
/// sequences and nothing else, the figure to set beside the model step at batch `n`), and
/// the phases of those full-batch steps summed.
fn engine_decode(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    adapters: &[Option<String>],
    generate: usize,
) -> Result<(f64, f64, FullSteps)> {
    let params = SamplingParams { max_tokens: generate, ignore_eos: true, ..Default::default() };
    let rx = prompts
        .iter()
        .zip(adapters)
        .map(|(p, a)| Ok(engine.submit_tokens(p.clone(), a.clone(), params.clone())?.1))
        .collect::<Result<Vec<_>>>()?;
    let mut got = vec![0usize; rx.len()];
    let mut start = None;
    let (mut full_steps, mut full_secs) = (0usize, 0f64);
    let mut phases = StepPhases::default();
    while !engine.is_idle() {
        let t = Instant::now();
        let report = engine.step()?;
        for (g, r) in got.iter_mut().zip(&rx) {
            *g += tokens_streamed(r);
        }
        if start.is_some() && report.sequences == rx.len() && report.tokens == rx.len() {
            full_steps += 1;
            full_secs += t.elapsed().as_secs_f64();
            phases += report.phases;
        }
        if start.is_none() && got.iter().all(|&g| g >= 1) {
            start = Some((Instant::now(), got.iter().sum::<usize>()));
        }
    }
    let Some((t0, base)) = start else { bail!("no sequence produced a token") };
    let total: usize = got.iter().sum();
    if total != rx.len() * generate {
        bail!("{total} tokens generated, {} expected", rx.len() * generate);
    }
    let aggregate = (total - base) as f64 / t0.elapsed().as_secs_f64();
    let full = if full_steps > 0 { (full_steps * rx.len()) as f64 / full_secs } else { 0.0 };
    Ok((aggregate, full, FullSteps { steps: full_steps, phases }))
}

/// The full-batch steps of an engine run and their phases summed.
struct FullSteps {
    steps: usize,
    phases: StepPhases,
}

fn file_size(dir: &Path) -> usize {
    std::fs::metadata(dir.join("adapter_model.safetensors")).map_or(0, |m| m.len() as usize)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (device, dtype) = if args.cpu_dry_run {
        (Device::Cpu, DType::F32)
    } else {
        (Device::new_cuda(0).context("no CUDA device")?, DType::BF16)
    };
    let dev = match &device {
        Device::Cuda(d) => Some(d),
        _ => None,
    };
    let name = dev.map(|d| d.cuda_stream().context().name().unwrap_or_default());
    println!("{{\"measure\":\"device\",\"name\":\"{}\"}}", name.as_deref().unwrap_or("cpu"));
    let mut peak = 0usize;
    report_memory(dev, "start", &mut peak)?;

    let bw = match dev {
        Some(d) => copy_bandwidth(d)?,
        None => 1e10,
    };
    println!("{{\"measure\":\"copy\",\"bytes\":1073741824,\"gb_per_s\":{:.1}}}", bw / 1e9);

    let cfg = args.shape.config();
    let t = Instant::now();
    let model = Model::random_tensors(cfg.clone(), &device, dtype, 7)?;
    device.synchronize()?;
    let base_bytes = model.weight_bytes_per_step().unwrap_or(0);
    println!(
        "{{\"measure\":\"model\",\"layers\":{},\"weight_gib\":{:.2},\"read_per_step_gib\":{:.2},\"generated_s\":{:.1}}}",
        cfg.num_layers,
        model.weight_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64,
        base_bytes as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );
    report_memory(dev, "model", &mut peak)?;

    // Adapters: one random file per target set, installed into many slots (each slot its
    // own device copy, so distinct adapters really are distinct memory).
    let dir = tempfile::tempdir()?;
    let qkvo_dir = dir.path().join("qkvo");
    let all7_dir = dir.path().join("all7");
    let qkvo = [Projection::Q, Projection::K, Projection::V, Projection::O];
    write_random_adapter(&qkvo_dir, &cfg, args.rank, &qkvo, 1)?;
    write_random_adapter(&all7_dir, &cfg, args.rank, &Projection::ALL, 2)?;
    let qkvo_adapter = LoraAdapter::load(&qkvo_dir, &cfg, &Device::Cpu)?;
    let all7_adapter = LoraAdapter::load(&all7_dir, &cfg, &Device::Cpu)?;
    let max_a = args.adapters.iter().copied().max().unwrap_or(0).max(1);
    let mut lora = LoraSlots::new(&cfg, &device, max_a + args.all7_adapters, false);
    let t = Instant::now();
    for s in 0..max_a {
        lora.install(s as u32, &qkvo_adapter)?;
    }
    device.synchronize()?;
    let upload = t.elapsed().as_secs_f64() / max_a as f64;
    for s in 0..args.all7_adapters {
        lora.install((max_a + s) as u32, &all7_adapter)?;
    }
    println!(
        "{{\"measure\":\"adapter\",\"targets\":\"qkvo\",\"rank\":{},\"bytes\":{},\"file_bytes\":{},\"upload_ms\":{:.2}}}",
        args.rank,
        qkvo_adapter.weight_bytes(),
        file_size(&qkvo_dir),
        upload * 1e3
    );
    println!(
        "{{\"measure\":\"adapter\",\"targets\":\"all7\",\"rank\":{},\"bytes\":{}}}",
        args.rank,
        all7_adapter.weight_bytes()
    );

    let max_b = args.batch.iter().copied().max().unwrap_or(1).max(args.all7_batch);
    let per_seq = (args.context + args.steps + 8).max(args.prefill);
    let kv_config = KvCacheConfig { block_size: 16, num_blocks: max_b * per_seq.div_ceil(16) };
    let mut cache = KvCache::for_model(kv_config, &model)?;
    report_memory(dev, "kv_and_adapters", &mut peak)?;
    let kv_per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2;

    let mut decode = |batch: usize,
                      distinct: usize,
                      first_slot: usize,
                      per: usize,
                      targets: &str|
     -> Result<()> {
        let slots: Vec<Option<u32>> = (0..batch)
            .map(|i| (distinct > 0).then(|| (first_slot + i % distinct) as u32))
            .collect();
        let weights = base_bytes + distinct * per;
        let kv = batch * (args.context + args.steps / 2) * kv_per_position;
        let floor = (weights + kv) as f64 / bw;
        for graph in [false, true] {
            if graph && !args.graphs {
                continue;
            }
            let timed = decode_step(
                &model,
                &lora,
                &mut cache,
                &slots,
                args.context,
                args.steps,
                &device,
                (graph, args.mark_runs),
            );
            // A failed graph step is reported and the eager runs go on.
            let (step, enqueue) = match timed {
                Err(e) if graph => {
                    let error = serde_json::to_string(&format!("{e:#}"))?;
                    println!(
                        "{{\"measure\":\"error\",\"batch\":{batch},\"graph\":true,\"error\":{error}}}"
                    );
                    continue;
                },
                other => other?,
            };
            println!(
            "{{\"measure\":\"decode\",\"batch\":{batch},\"adapters\":{distinct},\"targets\":\"{targets}\",\"graph\":{graph},\"context\":{},\"step_ms\":{:.3},\"enqueue_ms\":{:.3},\"tok_per_s\":{:.1},\"weight_bytes\":{weights},\"kv_bytes\":{kv},\"floor_ms\":{:.3},\"x_floor\":{:.2},\"weight_read_gb_per_s\":{:.1},\"weight_read_pct_copy\":{:.1}}}",
            args.context,
            step * 1e3,
            enqueue * 1e3,
            batch as f64 / step,
            floor * 1e3,
            step / floor,
            weights as f64 / step / 1e9,
            100.0 * weights as f64 / step / bw
        );
        }
        Ok(())
    };
    if !args.engine_only && !args.prefill_only {
        let mut seen = HashSet::new();
        for &b in &args.batch {
            for &a in &args.adapters {
                let d = a.min(b);
                if seen.insert((b, d)) {
                    decode(b, d, 0, qkvo_adapter.weight_bytes(), "qkvo")?;
                }
            }
        }
        decode(args.all7_batch, args.all7_adapters, max_a, all7_adapter.weight_bytes(), "all7")?;
        report_memory(dev, "decode", &mut peak)?;
    }

    let vocab = cfg.vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prefill as u32).map(|i| (i * 2654435761u32) % vocab).collect();
    let prefills: &[Option<u32>] = if args.engine_only { &[] } else { &[None, Some(0)] };
    for &slot in prefills {
        let secs = prefill_time(
            &model,
            &lora,
            &mut cache,
            &prompt,
            slot,
            &device,
            (args.prefill_runs, args.mark_runs),
        )?;
        println!(
            "{{\"measure\":\"prefill\",\"tokens\":{},\"adapter\":{},\"ms\":{:.2},\"tok_per_s\":{:.0}}}",
            prompt.len(),
            slot.is_some(),
            secs * 1e3,
            prompt.len() as f64 / secs
        );
    }
    report_memory(dev, "prefill", &mut peak)?;
    drop(cache);
    drop(lora);
    if args.prefill_only {
        prefill_gemms(&cfg, args.prefill, &device)?;
    }

    if !args.no_engine && !args.prefill_only {
        engine_runs(&args, model, &qkvo_dir, &prompt, dev, &mut peak)?;
    }
    println!(
        "{{\"measure\":\"memory\",\"phase\":\"peak_sampled\",\"used_gib\":{:.2}}}",
        peak as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

/// The prefill's FLOP floor and its GEMMs alone: an 8192^3 bf16 GEMM's rate (the floor's
/// rate), each projection's GEMM at the prompt's row count (`x @ W^T`, as the tensor path
/// runs it) and their sum over the layers, which is what the prefill's GEMMs cost at the
/// least; FLOPs: the projections, the causal attention's scores and weighted sums, and the
/// LM head of the last row.
fn prefill_gemms(cfg: &ModelConfig, tokens: usize, device: &Device) -> Result<()> {
    use candle_core::Tensor;
    use openledger_bench::harness::GpuTimer;
    let Device::Cuda(cuda) = device else { return Ok(()) };
    let stream = cuda.cuda_stream();
    let mut timer = GpuTimer::new(device)?;
    let randn = |rows: usize, cols: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, (rows, cols), device)?.to_dtype(DType::BF16)?)
    };
    let n = 8192;
    let (a, b) = (randn(n, n)?, randn(n, n)?);
    let ms = timer.median_ms(&stream, 3, 20, |_| {
        a.matmul(&b)?;
        Ok(())
    })?;
    let peak = 2.0 * (n * n * n) as f64 / (ms * 1e-3);
    println!(
        "{{\"measure\":\"gemm\",\"m\":{n},\"n\":{n},\"k\":{n},\"ms\":{ms:.3},\"tflops\":{:.1}}}",
        peak / 1e12
    );
    let h = cfg.hidden_size;
    let (q, kv, f) =
        (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
    // The tensor path's GEMMs of one layer: q|k|v, o, gate|up, down.
    let shapes = [("qkv", h, q + 2 * kv), ("o", q, h), ("gate_up", h, 2 * f), ("down", f, h)];
    let mut layer_ms = 0.0;
    let mut layer_flops = 0.0;
    for (name, d_in, d_out) in shapes {
        let x = randn(tokens, d_in)?;
        let w = randn(d_out, d_in)?;
        let ms = timer.median_ms(&stream, 3, 20, |_| {
            x.matmul(&w.t()?)?;
            Ok(())
        })?;
        let flops = 2.0 * (tokens * d_in * d_out) as f64;
        println!(
            "{{\"measure\":\"prefill_gemm\",\"proj\":\"{name}\",\"rows\":{tokens},\"d_in\":{d_in},\"d_out\":{d_out},\"ms\":{ms:.4},\"tflops\":{:.1}}}",
            flops / (ms * 1e-3) / 1e12
        );
        layer_ms += ms;
        layer_flops += flops;
    }
    let layers = cfg.num_layers as f64;
    let pairs = (tokens * (tokens + 1) / 2) as f64;
    let attention = 4.0 * pairs * (cfg.num_heads * cfg.head_dim) as f64 * layers;
    let lm_head = 2.0 * (cfg.vocab_size * h) as f64;
    let total = layer_flops * layers + attention + lm_head;
    println!(
        "{{\"measure\":\"prefill_floor\",\"tokens\":{tokens},\"tflop\":{:.3},\"proj_tflop\":{:.3},\"attention_tflop\":{:.4},\"floor_ms\":{:.2},\"gemms_alone_ms\":{:.2}}}",
        total / 1e12,
        layer_flops * layers / 1e12,
        attention / 1e12,
        total / peak * 1e3,
        layer_ms * layers
    );
    Ok(())
}

/// The engine-level runs: prefill, first token by adapter tier, aggregate decode.
fn engine_runs(
    args: &Args,
    model: Model,
    qkvo_dir: &Path,
    prompt: &[u32],
    dev: Option<&CudaDevice>,
    peak: &mut usize,
) -> Result<()> {
    let file = file_size(qkvo_dir);
    let batch = args.engine_batch.iter().copied().max().unwrap_or(0).max(64);
    let generate = 32usize;
    let batch_prompt = 128usize;
    let config = EngineConfig {
        kv_cache: KvCacheConfig {
            block_size: 16,
            num_blocks: batch * (batch_prompt + generate + 16).div_ceil(16) + 64,
        },
        adapters: AdapterCacheConfig {
            compute_slots: 64,
            compute_bytes: 8 << 30,
            // Three parsed adapters in host memory: the last three registered.
            host_bytes: 3 * file,
            ..AdapterCacheConfig::default()
        },
        max_batch_tokens: args.prefill.max(512),
        max_prefill_chunk: 0,
        max_running: batch,
        threads: 2,
        // Activation commitments on, as a worker serves (unless `--no-commit`).
        commit_activations: !args.no_commit,
        overlap_decode: Some(!args.no_overlap),
    };
    let tokenizer = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    let device = model.device().clone();
    let mut engine = Engine::new(model, tokenizer, config)?;
    // Registered first, so trimmed from host memory by the later ones: on disk only.
    for i in 0..3 {
        engine.register_adapter(&format!("cold{i}"), qkvo_dir)?;
    }
    for i in 0..3 {
        engine.register_adapter(&format!("host{i}"), qkvo_dir)?;
    }
    let short = &prompt[..batch_prompt.min(prompt.len())];
    let mut base = Vec::new();
    for _ in 0..3 {
        base.push(first_token(&mut engine, short, None)?);
    }
    // Host-tier ones first: a cold one read from disk would push one of them out of the
    // three-adapter host budget.
    let mut host = Vec::new();
    for i in 0..3 {
        host.push(first_token(&mut engine, short, Some(&format!("host{i}")))?);
    }
    let mut cold = Vec::new();
    for i in 0..3 {
        cold.push(first_token(&mut engine, short, Some(&format!("cold{i}")))?);
    }
    let mut hot = Vec::new();
    for i in 0..3 {
        hot.push(first_token(&mut engine, short, Some(&format!("cold{i}")))?);
    }
    for (tier, v) in
        [("none", &mut base), ("disk", &mut cold), ("host", &mut host), ("gpu", &mut hot)]
    {
        println!(
            "{{\"measure\":\"engine_first_token\",\"prompt\":{},\"adapter_tier\":\"{tier}\",\"ms\":{:.2},\"runs_ms\":{:?}}}",
            short.len(),
            median(v) * 1e3,
            v.iter().map(|s| (s * 1e4).round() / 10.0).collect::<Vec<_>>()
        );
    }
    // A cold adapter's request arriving while 8 sequences decode: its adapter is read,
    // checked and converted on a background thread and copied on the upload stream while
    // the batch keeps stepping; it joins once the copy has ended.
    for tier in ["disk", "host"] {
        for i in 0..3 {
            let name = format!("{tier}late{i}");
            engine.register_adapter(&name, qkvo_dir)?;
            if tier == "disk" {
                // Registered into host memory: three more push it out (the host budget
                // holds three files), so it is read from disk again.
                for j in 0..3 {
                    engine.register_adapter(&format!("filler{i}_{j}"), qkvo_dir)?;
                }
            }
            let r = first_token_beside_decode(&mut engine, short, &name, 8)?;
            println!(
                "{{\"measure\":\"engine_first_token_beside_decode\",\"adapter_tier\":\"{tier}\",\"running\":8,\"prompt\":{},\"ms\":{:.2},\"steps_while_waiting\":{},\"decode_step_ms_before\":{:.2},\"step_ms_while_waiting\":{:?},\"admitted_step_ms\":{:.2}}}",
                short.len(),
                r.ttft * 1e3,
                r.waiting_steps.len(),
                r.step_before * 1e3,
                r.waiting_steps.iter().map(|s| (s * 1e4).round() / 10.0).collect::<Vec<_>>(),
                r.admitted_step * 1e3,
            );
        }
    }
    adapter_load_parts(qkvo_dir, engine.model().config(), &device)?;

    let mut pre = Vec::new();
    for _ in 0..3 {
        pre.push(first_token(&mut engine, prompt, None)?);
    }
    println!(
        "{{\"measure\":\"engine_prefill\",\"tokens\":{},\"tok_per_s\":{:.0}}}",
        prompt.len(),
        prompt.len() as f64 / median(&mut pre)
    );
    report_memory(dev, "engine_first_token", peak)?;

    let vocab = engine.model().config().vocab_size as u32;
    for i in 0..32 {
        engine.register_adapter(&format!("d{i}"), qkvo_dir)?;
    }
    let runs = args.engine_batch.iter().map(|&n| (n, 0)).chain([(batch, 32usize)]);
    for (n, distinct) in runs {
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| (0..batch_prompt as u32).map(|i| (i * 31 + s as u32 * 977) % vocab).collect())
            .collect();
        let adapters: Vec<Option<String>> =
            (0..n).map(|s| (distinct > 0).then(|| format!("d{}", s % distinct))).collect();
        // Once to load and install the adapters and (with graphs) capture every batch-size
        // bucket the run passes through, as a serving engine has long since done; then
        // measured.
        engine_decode(&mut engine, &prompts, &adapters, generate)?;
        // Commitments as configured, or (--commit-ab) on and off in turn, the first of each
        // round alternating so that neither always runs first.
        let modes: Vec<(usize, bool)> = if args.commit_ab == 0 {
            vec![(0, !args.no_commit)]
        } else {
            (0..args.commit_ab).flat_map(|r| [(r, r % 2 == 0), (r, r % 2 == 1)]).collect()
        };
        for (round, commit) in modes {
            engine.set_commit_activations(commit);
            let (rate, full, steps) = engine_decode(&mut engine, &prompts, &adapters, generate)?;
            println!(
                "{{\"measure\":\"engine_decode\",\"batch\":{n},\"adapters\":{distinct},\"prompt\":{batch_prompt},\"tok_per_s\":{rate:.1},\"full_batch_tok_per_s\":{full:.1},\"full_batch_step_ms\":{:.3},\"graphs\":{},\"commit\":{commit},\"overlap\":{},\"round\":{round},\"phases_us\":{}}}",
                if full > 0.0 { n as f64 / full * 1e3 } else { 0.0 },
                engine.model().decode_graphs(),
                !args.no_overlap,
                phases_json(&steps.phases, steps.steps),
            );
        }
    }
    report_memory(dev, "engine_decode", peak)?;
    Ok(())
}
