//! The engine's failure paths on the real SmolLM2-135M-Instruct Q4_1: a request cancelled
//! mid-generation (by `Engine::cancel`, or by its caller dropping the stream) leaves at once
//! with its KV blocks and adapter pin; a failed step fails only its own requests and the
//! engine goes on serving; a refused request says why, in a form the worker can map to a
//! reason code.

use openledger_testkit as common;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use candle_core::Device;
use common::procs::model;
use openledger_engine::{
    write_random_adapter, Engine, EngineConfig, EngineError, EngineStatus, GenerationRequest,
    KvCacheConfig, ModelSource, Projection, Rejection, SamplingParams, StreamEvent,
};
use openledger_worker::engine_host::EngineHost;

const PROMPT: &str =
    "<|im_start|>user\nTell me a long story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n";

/// The real model with one random rank-8 adapter `a` on q, k, v and o.
fn engine(config: EngineConfig) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut e = Engine::load(&ModelSource::Gguf(model()), config, &Device::Cpu).unwrap();
    let targets = [Projection::Q, Projection::K, Projection::V, Projection::O];
    let a = dir.path().join("a");
    write_random_adapter(&a, e.model().config(), 8, &targets, 5).unwrap();
    e.register_adapter("a", &a).unwrap();
    (dir, e)
}

fn req(prompt: &str, adapter: Option<&str>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        adapter: adapter.map(String::from),
        params: SamplingParams { max_tokens, ignore_eos: true, ..Default::default() },
    }
}

/// What an idle engine holds: nothing queued or running, every KV block free, no pin.
fn assert_idle(status: EngineStatus) {
    assert_eq!((status.waiting, status.running), (0, 0), "{status:?}");
    assert_eq!(status.kv_free_blocks, status.kv_blocks, "{status:?}");
    assert_eq!(status.adapter_pins, 0, "{status:?}");
}

/// Every event that has arrived, split into token ids and the final event, if any.
fn drain(rx: &Receiver<StreamEvent>) -> (Vec<u32>, Option<StreamEvent>) {
    let mut ids = Vec::new();
    for ev in rx.try_iter() {
        match ev {
            StreamEvent::Token { id, .. } => ids.push(id),
            last => return (ids, Some(last)),
        }
    }
    (ids, None)
}

#[test]
fn cancelling_a_running_request_gives_back_its_blocks_and_adapter_at_once() {
    let (_dir, mut e) = engine(EngineConfig::default());
    assert_idle(e.status());
    let (id, rx) = e.submit(req(PROMPT, Some("a"), 200)).unwrap();
    let mut streamed = 0;
    while streamed < 3 {
        e.step().unwrap();
        let (ids, last) = drain(&rx);
        assert!(last.is_none(), "{last:?}");
        streamed += ids.len();
    }
    let busy = e.status();
    assert_eq!((busy.running, busy.adapter_pins), (1, 1), "{busy:?}");
    assert!(busy.kv_free_blocks < busy.kv_blocks, "{busy:?}");

    assert!(e.cancel(id));
    assert_idle(e.status());
    assert!(e.is_idle());
    // Nothing more is computed or sent: the channel is closed without a final event.
    let steps = e.status().steps;
    e.run_until_idle().unwrap();
    assert_eq!(e.status().steps, steps);
    assert!(rx.recv_timeout(Duration::from_millis(10)).is_err());
    assert!(!e.cancel(id), "a request is cancelled once");

    // The blocks and the slot given back serve the next request.
    let (_, rx) = e.submit(req(PROMPT, Some("a"), 4)).unwrap();
    e.run_until_idle().unwrap();
    let (ids, last) = drain(&rx);
    assert_eq!(ids.len(), 4);
    assert!(matches!(last, Some(StreamEvent::Finished { completion_tokens: 4, .. })), "{last:?}");
    assert_idle(e.status());
}

#[test]
fn cancelling_a_queued_request_leaves_the_running_one_alone() {
    let config = EngineConfig { max_running: 1, ..Default::default() };
    let (_dir, mut e) = engine(config);
    let (_, first) = e.submit(req(PROMPT, None, 6)).unwrap();
    let (queued, second) = e.submit(req(PROMPT, Some("a"), 6)).unwrap();
    e.step().unwrap();
    assert_eq!((e.status().running, e.status().waiting), (1, 1));
    assert!(e.cancel(queued));
    assert_eq!((e.status().running, e.status().waiting), (1, 0));
    e.run_until_idle().unwrap();
    assert_eq!(drain(&first).0.len(), 6);
    assert_eq!(drain(&second), (Vec::new(), None));
    assert_idle(e.status());
}

#[test]
fn a_failed_step_fails_its_requests_and_the_engine_goes_on() {
    let config = EngineConfig { max_running: 2, ..Default::default() };
    let (_dir, mut e) = engine(config);
    // The tokens a request gets on a fresh engine, to compare with after the failure.
    let (_, rx) = e.submit(req(PROMPT, Some("a"), 8)).unwrap();
    e.run_until_idle().unwrap();
    let (want, _) = drain(&rx);
    assert_eq!(want.len(), 8);

    let (_, a) = e.submit(req(PROMPT, Some("a"), 50)).unwrap();
    let (_, b) = e.submit(req("Once upon a time", None, 50)).unwrap();
    // Not admitted (two running at most), so not in the failing step.
    let (_, c) = e.submit(req(PROMPT, Some("a"), 8)).unwrap();
    e.step().unwrap();
    e.step().unwrap();
    assert_eq!((e.status().running, e.status().waiting), (2, 1));

    e.fail_next_step();
    let err = e.step().unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    for rx in [&a, &b] {
        let (_, last) = drain(rx);
        match last {
            Some(StreamEvent::Failed(message)) => {
                assert!(message.contains("injected"), "{message}")
            },
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(rx.recv_timeout(Duration::from_millis(10)).is_err());
    }
    let after = e.status();
    assert_eq!((after.running, after.waiting, after.adapter_pins), (0, 1, 0), "{after:?}");
    assert_eq!(after.kv_free_blocks, after.kv_blocks, "{after:?}");

    // The queued request, and a new one, run as on a fresh engine.
    let (_, d) = e.submit(req(PROMPT, Some("a"), 8)).unwrap();
    e.run_until_idle().unwrap();
    for rx in [&c, &d] {
        let (ids, last) = drain(rx);
        assert_eq!(ids, want);
        assert!(matches!(last, Some(StreamEvent::Finished { .. })), "{last:?}");
    }
    assert_idle(e.status());
}

#[test]
fn refused_requests_say_why() {
    let config = EngineConfig {
        kv_cache: KvCacheConfig { block_size: 16, num_blocks: 8 },
        ..Default::default()
    };
    let (_dir, mut e) = engine(config);
    let vocab = e.model().config().vocab_size;
    let context = e.model().config().max_position;
    let sampling = |f: fn(&mut SamplingParams)| {
        let mut params = SamplingParams::default();
        f(&mut params);
        params
    };
    // Prompt, adapter, sampling, the reason expected, and a word its message must hold.
    type Case = (Vec<u32>, Option<&'static str>, SamplingParams, Rejection, &'static str);
    let cases: Vec<Case> = vec![
        (vec![], None, SamplingParams::default(), Rejection::EmptyPrompt, "empty"),
        (vec![1, vocab as u32], None, SamplingParams::default(), Rejection::InvalidToken, "vocab"),
        (vec![1; 100], None, sampling(|p| p.max_tokens = 100), Rejection::PromptTooLong, "KV"),
        (vec![1; context], None, sampling(|p| p.max_tokens = 1), Rejection::PromptTooLong, "8192"),
        (vec![1], Some("nope"), SamplingParams::default(), Rejection::UnknownAdapter, "nope"),
        (vec![1], None, sampling(|p| p.temperature = -0.5), Rejection::InvalidSampling, "temp"),
        (vec![1], None, sampling(|p| p.temperature = f32::NAN), Rejection::InvalidSampling, "temp"),
        (
            vec![1],
            None,
            sampling(|p| p.temperature = f32::INFINITY),
            Rejection::InvalidSampling,
            "temperature",
        ),
        (vec![1], None, sampling(|p| p.top_p = 0.0), Rejection::InvalidSampling, "top_p"),
        (vec![1], None, sampling(|p| p.top_p = 1.5), Rejection::InvalidSampling, "top_p"),
        (vec![1], None, sampling(|p| p.top_p = f32::NAN), Rejection::InvalidSampling, "top_p"),
        (vec![1], None, sampling(|p| p.max_tokens = 0), Rejection::InvalidSampling, "max_tokens"),
    ];
    for (tokens, adapter, params, want, named) in cases {
        let what = format!("{} prompt tokens, adapter {adapter:?}, {params:?}", tokens.len());
        let err = match e.submit_tokens(tokens, adapter.map(String::from), params) {
            Ok(_) => panic!("accepted: {what}"),
            Err(err) => err,
        };
        assert_eq!(err.rejection(), Some(want), "{what}: {err}");
        assert!(err.to_string().contains(named), "{what}: {err}");
    }
    // A text prompt that tokenizes to nothing.
    let err = e.submit(req("", None, 4)).err().map(|e| e.rejection());
    assert_eq!(err, Some(Some(Rejection::EmptyPrompt)));
    assert_idle(e.status());
    assert_eq!(e.status().steps, 0);

    // The engine's own failures are not the request's fault.
    let missing = e.register_adapter("gone", std::path::Path::new("/nonexistent/adapter"));
    let err = missing.err().map(|e| (e.rejection(), e.to_string()));
    assert!(matches!(&err, Some((None, m)) if m.contains("/nonexistent/adapter")), "{err:?}");
    assert_eq!(EngineError::Stopped.rejection(), None);
    assert_eq!(EngineError::Backend("device lost".into()).rejection(), None);

    // A valid request still runs after all the refusals.
    let (_, rx) = e.submit(req(PROMPT, Some("a"), 3)).unwrap();
    e.run_until_idle().unwrap();
    assert_eq!(drain(&rx).0.len(), 3);
}

/// Polls the engine thread until nothing is queued or running.
async fn wait_idle(host: &EngineHost) -> EngineStatus {
    for _ in 0..2_000 {
        let status = host.status().await.unwrap();
        if status.running == 0 && status.waiting == 0 {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the engine never became idle: {:?}", host.status().await);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_request_before_the_next_step() {
    let (_dir, e) = engine(EngineConfig::default());
    let (host, _thread) = EngineHost::spawn(e);
    assert_idle(host.status().await.unwrap());
    // 500 tokens: a request left to run would take hundreds of steps.
    let mut rx = host.generate(req(PROMPT, Some("a"), 500)).await.unwrap();
    assert!(matches!(rx.recv().await, Some(StreamEvent::Token { .. })));
    drop(rx);
    let at_drop = host.status().await.unwrap();
    let idle = wait_idle(&host).await;
    assert_idle(idle);
    assert!(
        idle.steps <= at_drop.steps + 1,
        "{} steps ran after the caller went away",
        idle.steps - at_drop.steps
    );
    // And none after that.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(host.status().await.unwrap().steps, idle.steps);
}

#[tokio::test]
async fn a_failed_step_fails_its_requests_and_the_host_serves_new_ones() {
    let (_dir, e) = engine(EngineConfig::default());
    let (host, _thread) = EngineHost::spawn(e);
    let mut rx = host.generate(req(PROMPT, Some("a"), 100)).await.unwrap();
    assert!(matches!(rx.recv().await, Some(StreamEvent::Token { .. })));
    host.fail_next_step();
    let mut last = None;
    while let Some(ev) = rx.recv().await {
        last = Some(ev);
    }
    assert!(matches!(&last, Some(StreamEvent::Failed(m)) if m.contains("injected")), "{last:?}");
    assert_idle(wait_idle(&host).await);

    let mut rx = host.generate(req(PROMPT, Some("a"), 5)).await.unwrap();
    let mut tokens = 0;
    let mut last = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Token { .. } => tokens += 1,
            ev => last = Some(ev),
        }
    }
    assert_eq!(tokens, 5);
    assert!(matches!(last, Some(StreamEvent::Finished { completion_tokens: 5, .. })), "{last:?}");

    // A refusal comes back from `generate` itself, with its reason.
    let refused = host.generate(req(PROMPT, Some("nope"), 5)).await.err();
    assert_eq!(refused.and_then(|e| e.rejection()), Some(Rejection::UnknownAdapter));
    assert_idle(wait_idle(&host).await);
}
