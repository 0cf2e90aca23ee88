//! Decode steps launched before the previous step's picks are read
//! (`EngineConfig::overlap_decode`, `OVERLAP_BY_DEFAULT` on a CUDA device). Forced on here, on the
//! host, where the steps still run one after another, the engine takes the bookkeeping path
//! a GPU takes: every request streams exactly the events (tokens, text, finish, activation
//! commitment) it streams without overlap, through finishes by length, end token and stop
//! string, with adapters, cancellations and arrivals while a step is in flight, and a failed
//! step fails only its own requests.

use openledger_testkit as common;

use std::sync::mpsc::Receiver;

use candle_core::Device;
use common::{write_adapter, write_model_with, AdapterSpec};
use openledger_engine::{
    Engine, EngineConfig, FinishReason, GenerationRequest, KvCacheConfig, ModelSource, Projection,
    SamplingParams, StreamEvent,
};

/// The test model (seed 11), its end token `eos`, with two adapters registered.
fn engine(dir: &std::path::Path, overlap: bool, eos: u32) -> Engine {
    engine_with(dir, eos, EngineConfig { overlap_decode: Some(overlap), ..config() })
}

fn config() -> EngineConfig {
    EngineConfig {
        kv_cache: KvCacheConfig { block_size: 4, num_blocks: 512 },
        threads: 2,
        ..Default::default()
    }
}

fn engine_with(dir: &std::path::Path, eos: u32, config: EngineConfig) -> Engine {
    let mut json = common::config_json();
    json["eos_token_id"] = eos.into();
    let cfg = write_model_with(dir, &json, 11);
    let mut e = Engine::load(&ModelSource::HuggingFace(dir.into()), config, &Device::Cpu).unwrap();
    for i in 0..2 {
        let spec = AdapterSpec { r: 2 + i, alpha: 4.0, rslora: false, targets: &Projection::ALL };
        let a = write_adapter(&dir.join(format!("a{i}")), &cfg, &spec, 30 + i as u64);
        e.register_adapter(&format!("a{i}"), &a).unwrap();
    }
    e
}

/// The test model's own end token, which its greedy outputs here never pick.
const NO_EOS: u32 = 255;

fn request(i: usize, stop: Option<&str>) -> GenerationRequest {
    GenerationRequest {
        prompt: format!("request {i} {}", "xy".repeat(i % 5)),
        adapter: match i % 3 {
            0 => None,
            k => Some(format!("a{}", k - 1)),
        },
        params: SamplingParams {
            max_tokens: 3 + (i * 7) % 19,
            stop: stop.map(String::from).into_iter().collect(),
            ..Default::default()
        },
    }
}

fn events(rx: &Receiver<StreamEvent>) -> Vec<StreamEvent> {
    rx.try_iter().collect()
}

fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn finish_of(events: &[StreamEvent]) -> Option<FinishReason> {
    events.iter().find_map(|e| match e {
        StreamEvent::Finished { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// Runs `reqs` submitted together to the end; returns each one's events and the steps the
/// engine launched ahead.
fn run_all(overlap: bool, eos: u32, reqs: &[GenerationRequest]) -> (Vec<Vec<StreamEvent>>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), overlap, eos);
    let rxs: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap().1).collect();
    e.run_until_idle().unwrap();
    let status = e.status();
    assert_eq!((status.running, status.waiting, status.adapter_pins), (0, 0, 0));
    assert_eq!(status.kv_free_blocks, status.kv_blocks, "every KV block is back");
    (rxs.iter().map(events).collect(), status.overlapped_steps)
}

#[test]
fn overlapped_decode_streams_every_request_as_without() {
    // Stop strings taken from each third request's own text without them.
    let free: Vec<GenerationRequest> = (0..24).map(|i| request(i, None)).collect();
    let (plain, _) = run_all(false, NO_EOS, &free);
    // The end token: the token most often generated after the first (a few requests then
    // end on it).
    let mut counts = std::collections::HashMap::new();
    for ev in &plain {
        for e in ev.iter().skip(1) {
            if let StreamEvent::Token { id, .. } = e {
                *counts.entry(*id).or_insert(0) += 1;
            }
        }
    }
    let eos = counts.into_iter().max_by_key(|&(id, n)| (n, id)).map(|(id, _)| id).unwrap();
    let stops: Vec<Option<String>> = plain
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let chars: Vec<char> = text_of(ev).chars().collect();
            (i % 3 == 1 && chars.len() >= 6)
                .then(|| chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect())
        })
        .collect();
    let reqs: Vec<GenerationRequest> = (0..24).map(|i| request(i, stops[i].as_deref())).collect();
    let (without, none) = run_all(false, eos, &reqs);
    let (with, overlapped) = run_all(true, eos, &reqs);
    assert_eq!(none, 0, "no step launched ahead with overlap off");
    // Each finish (here every few steps) leaves one step unfollowed.
    assert!(overlapped > 0, "no step launched ahead");
    let reasons: Vec<_> = without.iter().map(|ev| finish_of(ev)).collect();
    for want in [FinishReason::Length, FinishReason::Stop, FinishReason::Eos] {
        assert!(reasons.contains(&Some(want)), "no request finished by {want:?}: {reasons:?}");
    }
    for (i, (a, b)) in without.iter().zip(&with).enumerate() {
        assert!(matches!(a.last(), Some(StreamEvent::Finished { activations: Some(_), .. })));
        assert_eq!(a, b, "request {i}");
    }
}

/// The same calls on two engines, overlap off and on: `step` the given number of times
/// between cancelling and submitting.
#[test]
fn cancellations_and_arrivals_while_a_step_is_in_flight() {
    let run = |overlap: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path(), overlap, NO_EOS);
        let mut rxs = Vec::new();
        let mut ids = Vec::new();
        for i in 0..8 {
            let (id, rx) = e.submit(request(i + 40, None)).unwrap();
            ids.push(id);
            rxs.push(rx);
        }
        for _ in 0..4 {
            e.step().unwrap();
        }
        assert!(e.cancel(ids[2]), "request 2 is running");
        for _ in 0..2 {
            e.step().unwrap();
        }
        for i in 8..11 {
            rxs.push(e.submit(request(i + 40, None)).unwrap().1);
        }
        e.step().unwrap();
        assert!(e.cancel(ids[5]), "request 5 is running");
        e.run_until_idle().unwrap();
        let status = e.status();
        assert_eq!(status.kv_free_blocks, status.kv_blocks, "every KV block is back");
        assert_eq!(status.adapter_pins, 0);
        (rxs.iter().map(events).collect::<Vec<_>>(), status.overlapped_steps)
    };
    let (without, _) = run(false);
    let (with, overlapped) = run(true);
    assert!(overlapped > 0);
    for (i, (a, b)) in without.iter().zip(&with).enumerate() {
        if i == 2 || i == 5 {
            // Cancelled: the same tokens streamed before, and no final event.
            assert!(finish_of(b).is_none(), "request {i}");
        } else {
            assert!(finish_of(a).is_some(), "request {i} finished");
        }
        assert_eq!(a, b, "request {i}");
    }
}

#[test]
fn a_failed_step_with_a_step_in_flight_fails_its_requests_and_the_engine_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), true, NO_EOS);
    let long = |i: usize| {
        let mut r = request(i, None);
        r.params.max_tokens = 30;
        r.params.ignore_eos = true;
        r
    };
    let rxs: Vec<_> = (0..6).map(|i| e.submit(long(i)).unwrap().1).collect();
    for _ in 0..5 {
        e.step().unwrap();
    }
    assert!(e.status().overlapped_steps > 0, "a step is in flight");
    e.fail_next_step();
    // The step in flight is read (its tokens streamed); the next one fails.
    let mut failed = false;
    for _ in 0..3 {
        if e.step().is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the injected failure surfaced");
    for rx in &rxs {
        let ev = events(rx);
        assert!(matches!(ev.last(), Some(StreamEvent::Failed(_))), "{ev:?}");
        let tokens = ev.iter().filter(|e| matches!(e, StreamEvent::Token { .. })).count();
        assert!(tokens >= 5, "{tokens} tokens before the failure");
    }
    let status = e.status();
    assert_eq!((status.running, status.adapter_pins), (0, 0));
    assert_eq!(status.kv_free_blocks, status.kv_blocks);
    // The engine serves the next request as a fresh one would.
    let rx = e.submit(long(9)).unwrap().1;
    e.run_until_idle().unwrap();
    let (alone, _) = run_all(false, NO_EOS, &[long(9)]);
    assert_eq!(events(&rx), alone[0]);
}

/// A steady batch (no finish before the last step, nothing arriving) has every decode step
/// but its first and last launched ahead, and streams what it does without overlap.
#[test]
fn a_steady_batch_launches_every_decode_step_ahead() {
    let reqs: Vec<GenerationRequest> = (0..6)
        .map(|i| {
            let mut r = request(i, None);
            r.params.max_tokens = 24;
            r.params.ignore_eos = true;
            r
        })
        .collect();
    let (without, _) = run_all(false, NO_EOS, &reqs);
    let (with, overlapped) = run_all(true, NO_EOS, &reqs);
    // One prefill step picks each first token; 23 decode steps follow, the first launched
    // from the host, the 22 after it each ahead of its predecessor's read.
    assert_eq!(overlapped, 22);
    assert_eq!(without, with);
}

/// A full running budget with requests queued behind it: the batch keeps launching ahead
/// (the queue could not be admitted anyway), each finish lets the next request in, and
/// every request streams what it does without overlap.
#[test]
fn a_queue_behind_a_full_batch_does_not_stop_the_overlap() {
    let run = |overlap: bool| {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { overlap_decode: Some(overlap), max_running: 4, ..config() };
        let mut e = engine_with(dir.path(), NO_EOS, config);
        let mut reqs = Vec::new();
        for i in 0..10 {
            let mut r = request(i + 60, None);
            r.params.max_tokens = 12 + 3 * i;
            r.params.ignore_eos = true;
            reqs.push(r);
        }
        let rxs: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap().1).collect();
        let mut widest = 0;
        while !e.is_idle() {
            widest = widest.max(e.step().unwrap().sequences);
        }
        assert_eq!(widest, 4, "the running budget holds");
        (rxs.iter().map(events).collect::<Vec<_>>(), e.status().overlapped_steps)
    };
    let (without, _) = run(false);
    let (with, overlapped) = run(true);
    // 10 requests of 12-39 tokens, 4 at a time: most decode steps are launched ahead.
    assert!(overlapped >= 60, "only {overlapped} steps launched ahead");
    assert_eq!(without, with);
}
