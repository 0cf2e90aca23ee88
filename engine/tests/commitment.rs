//! Activation commitments on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF): an
//! honest generation's commitment does not depend on its batch or the thread count and
//! verifies in a prefill pass; a generation that skipped the adapter, used another adapter or
//! dropped layers does not; and tokens generated another way but committed with the
//! registered model afterwards fail the replay of the request's sampling.

use openledger_testkit::procs::model_if_present;

use candle_core::Device;
use openledger_engine::commitment::{encoded_len, row_words, DELTA_PICKS, ENTRY_BITS, TOP_K};
use openledger_engine::{
    ActivationCommitment, Engine, EngineConfig, Model, ModelSource, Projection, SamplingParams,
    StreamEvent, Tolerance, VerifyReport,
};

const PROMPTS: [&str; 4] = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The history of the Roman Empire begins",
    "<|im_start|>user\nWrite a haiku about GPUs.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
];

/// An engine over `model` with adapters `a` and `b` (random rank-16 adapters on every
/// projection, written to `dir`).
fn engine_with(
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    dir: &std::path::Path,
    threads: usize,
) -> Engine {
    let cfg = model.config().clone();
    let mut e =
        Engine::new(model, tokenizer, EngineConfig { threads, ..Default::default() }).unwrap();
    for (name, seed) in [("a", 11), ("b", 12)] {
        let path = dir.join(name);
        if !path.exists() {
            openledger_engine::write_random_adapter(&path, &cfg, 16, &Projection::ALL, seed)
                .unwrap();
        }
        e.register_adapter(name, &path).unwrap();
    }
    e
}

/// The default model, loaded once per test.
fn load_base(path: std::path::PathBuf) -> Engine {
    Engine::load(&ModelSource::Gguf(path), EngineConfig::default(), &Device::Cpu).unwrap()
}

/// [`engine_with`] over `base`'s weights (its layers shared, nothing dropped).
fn sharing(base: &Engine, dir: &std::path::Path, threads: usize) -> Engine {
    engine_with(
        base.model().without_last_layers(0).unwrap(),
        base.tokenizer().clone(),
        dir,
        threads,
    )
}

/// 40 greedy tokens.
fn greedy() -> SamplingParams {
    SamplingParams { max_tokens: 40, ignore_eos: true, ..Default::default() }
}

/// Submits every `(prompt, adapter)` at once, runs them as one batch, and returns each one's
/// prompt tokens, output tokens and commitment.
fn generate(
    e: &mut Engine,
    requests: &[(&str, Option<&str>)],
) -> Vec<(Vec<u32>, Vec<u32>, ActivationCommitment)> {
    generate_with(e, requests, &greedy())
}

/// [`generate`] with `params`.
fn generate_with(
    e: &mut Engine,
    requests: &[(&str, Option<&str>)],
    params: &SamplingParams,
) -> Vec<(Vec<u32>, Vec<u32>, ActivationCommitment)> {
    let rxs: Vec<_> = requests
        .iter()
        .map(|(p, a)| {
            let tokens = e.tokenize(p).unwrap();
            let (_, rx) =
                e.submit_tokens(tokens.clone(), a.map(str::to_string), params.clone()).unwrap();
            (tokens, rx, *a)
        })
        .collect();
    e.run_until_idle().unwrap();
    rxs.into_iter()
        .map(|(prompt, rx, a)| {
            let mut out = Vec::new();
            for ev in rx.try_iter() {
                match ev {
                    StreamEvent::Token { id, .. } => out.push(id),
                    StreamEvent::Finished { activations, completion_tokens, .. } => {
                        let c = activations.expect("the engine commits by default");
                        assert_eq!(c.tokens(), completion_tokens);
                        assert_eq!(c.is_adapted(), a.is_some());
                        assert_eq!(c.as_bytes().len(), encoded_len(completion_tokens, a.is_some()));
                        return (prompt, out, c);
                    },
                    other => panic!("unexpected {other:?}"),
                }
            }
            panic!("no Finished event");
        })
        .collect()
}

/// A worker's claim: prompt, output, adapter and commitment.
type Claim<'a> = (&'a [u32], &'a [u32], Option<&'a str>, &'a ActivationCommitment);

/// The claims of generated `jobs` served with `adapters`, each with its commitment from
/// `commitments`.
fn claims<'a>(
    jobs: &'a [(Vec<u32>, Vec<u32>, ActivationCommitment)],
    adapters: &[Option<&'a str>],
    commitments: impl IntoIterator<Item = &'a ActivationCommitment>,
) -> Vec<Claim<'a>> {
    jobs.iter()
        .zip(adapters)
        .zip(commitments)
        .map(|(((p, o, _), a), c)| (p.as_slice(), o.as_slice(), *a, c))
        .collect()
}

/// Verifies each claim, all queued at once.
fn verify(e: &mut Engine, claims: &[Claim<'_>]) -> Vec<VerifyReport> {
    verify_replaying(e, claims, None)
}

/// [`verify`], replaying `sampling` over the recomputed logits when given.
fn verify_replaying(
    e: &mut Engine,
    claims: &[Claim<'_>],
    sampling: Option<&SamplingParams>,
) -> Vec<VerifyReport> {
    let tol = Tolerance::default();
    let rxs: Vec<_> = claims
        .iter()
        .map(|(p, o, a, c)| {
            let (a, c) = (a.map(str::to_string), (*c).clone());
            e.submit_verification(p, o, a, c, tol, sampling.cloned()).unwrap().1
        })
        .collect();
    e.run_until_idle().unwrap();
    rxs.into_iter()
        .map(|rx| match rx.try_iter().next() {
            Some(StreamEvent::Verified(r)) => r,
            other => panic!("expected a verification report, got {other:?}"),
        })
        .collect()
}

#[test]
fn honest_commitments_are_batch_independent_and_verify() {
    let Some(path) = model_if_present() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = load_base(path);
    // The same weights (layers shared, nothing dropped) under a second engine.
    let mut e = sharing(&base, dir.path(), 0);
    let alone = generate(&mut e, &[(PROMPTS[0], Some("a"))]);
    let batched = generate(
        &mut e,
        &[
            (PROMPTS[1], Some("b")),
            (PROMPTS[0], Some("a")),
            (PROMPTS[2], None),
            (PROMPTS[3], Some("a")),
        ],
    );
    assert_eq!(alone[0].1, batched[1].1, "the same tokens alone and batched");
    assert_eq!(alone[0].2, batched[1].2, "the same commitment alone and batched");
    assert_ne!(batched[0].2, batched[1].2);

    // Another engine on one thread verifies every claim, queued together.
    let mut verifier = sharing(&base, dir.path(), 1);
    let adapters = [Some("b"), Some("a"), None, Some("a")];
    let claims = claims(&batched, &adapters, batched.iter().map(|(.., c)| c));
    let tol = Tolerance::default();
    for ((r, (p, ..)), a) in verify(&mut verifier, &claims).iter().zip(&batched).zip(adapters) {
        eprintln!("honest: prompt {} tokens: {}", p.len(), r.summary());
        assert_eq!((r.committed_tokens, r.recomputed_tokens, r.entries), (40, 40, 80));
        // With an adapter, 2 delta rows of the first chunk and 2 of the 8-token second,
        // recomputed bit for bit (only the encoding's rounding).
        let deltas = if a.is_some() { 2 * DELTA_PICKS * TOP_K } else { 0 };
        assert_eq!(
            (r.delta_entries, r.delta_value_mismatches, r.delta_index_mismatches),
            (deltas, 0, 0)
        );
        assert!(r.delta_mean_relative_error() <= 1.0 / 1024.0, "{r:?}");
        assert!(r.passes(&tol), "an honest commitment refused: {r:?}");
    }
    // The verifier's own rows (and delta rows) commit to the honest workers' very bytes.
    for (r, (.., c)) in verify(&mut verifier, &claims).iter().zip(&claims) {
        assert_eq!(r.recomputed.as_bytes(), c.as_bytes());
    }
}

#[test]
fn skipped_or_swapped_adapters_and_dropped_layers_are_caught() {
    let Some(path) = model_if_present() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = load_base(path);
    let mut honest = sharing(&base, dir.path(), 0);
    // Dropping layers is checked on the base model alone (the adapters have every layer).
    let mut shallow = Engine::new(
        base.model().without_last_layers(2).unwrap(),
        base.tokenizer().clone(),
        EngineConfig::default(),
    )
    .unwrap();
    let served = generate(
        &mut honest,
        &[(PROMPTS[0], None), (PROMPTS[1], Some("b")), (PROMPTS[2], Some("a"))],
    );
    let cut = generate(&mut shallow, &[(PROMPTS[3], None)]);
    let tol = Tolerance::default();
    let [(p0, o0, c0), (p1, o1, c1), (p2, o2, c2)] = &served[..] else { unreachable!() };
    let (p3, o3, c3) = &cut[0];
    // Each claims adapter `a` on the full model (the shallow one: no adapter).
    // A token short: the bytes of a 39-token commitment, the padding bits of its last
    // chunk (7 tokens and 2 delta rows of 2 entries) cleared.
    let mut bytes = c2.as_bytes()[..encoded_len(39, true)].to_vec();
    let used = (7 + DELTA_PICKS) * TOP_K * ENTRY_BITS;
    if let (Some(b), 1..) = (bytes.last_mut(), used % 8) {
        *b &= (1u8 << (used % 8)) - 1;
    }
    let truncated = ActivationCommitment::from_bytes(bytes, true).unwrap();
    assert_eq!(truncated.tokens(), 39);
    // The adapter skipped, its commitment laid out as an adapted one with a zero delta.
    let zero = row_words(&vec![0.0; 64]).unwrap();
    let c0_zero = c0.with_every_delta(o0, &zero);
    let reports = verify(
        &mut honest,
        &[
            (p0, o0, Some("a"), c0),
            (p0, o0, Some("a"), &c0_zero),
            (p1, o1, Some("a"), c1),
            (p3, o3, None, c3),
            (p2, o2, Some("a"), &truncated),
            (p2, o2, Some("a"), c2),
        ],
    );
    for (what, r) in [
        "adapter skipped (no delta entries)",
        "adapter skipped (zero delta entries)",
        "another adapter",
        "last 2 layers skipped",
        "a token short",
    ]
    .iter()
    .zip(&reports)
    {
        eprintln!("{what}: {}", r.summary());
        assert!(!r.passes(&tol), "{what} passed: {r:?}");
    }
    assert!(reports[0].layout_mismatch, "{:?}", reports[0]);
    for r in &reports[1..3] {
        // The delta entries alone refuse these (as on a GPU, where bf16 hides the rest).
        assert_eq!(r.delta_entries, 2 * DELTA_PICKS * TOP_K, "{r:?}");
        assert!(r.delta_index_mismatches >= 6 && r.delta_value_mismatches >= 6, "{r:?}");
    }
    assert!(reports[5].passes(&tol), "the honest claim beside them: {:?}", reports[5]);
}

#[test]
fn tokens_from_another_generator_committed_honestly_fail_the_replay() {
    let Some(path) = model_if_present() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = load_base(path);
    let mut e = sharing(&base, dir.path(), 0);
    let mut verifier = sharing(&base, dir.path(), 1);
    let tol = Tolerance::default();
    let sampled = SamplingParams { temperature: 0.8, top_p: 0.95, seed: 5, ..greedy() };
    for params in [greedy(), sampled] {
        // Honest: adapter `a`, batched with another request; the replay reproduces every token.
        let honest =
            generate_with(&mut e, &[(PROMPTS[1], Some("a")), (PROMPTS[0], Some("b"))], &params);
        let (p, o, c) = &honest[0];
        let r = &verify_replaying(&mut verifier, &[(p, o, Some("a"), c)], Some(&params))[0];
        assert_eq!((r.replayed_tokens, r.replay_mismatches), (40, 0), "{r:?}");
        assert!(r.passes(&tol), "honest ({params:?}): {r:?}");
        // The replay is a check, not a rubber stamp: another seed does not reproduce them.
        if params.temperature > 0.0 {
            let other = SamplingParams { seed: 6, ..params.clone() };
            let r = &verify_replaying(&mut verifier, &[(p, o, Some("a"), c)], Some(&other))[0];
            assert!(r.replay_mismatches > 0 && !r.passes(&tol), "another seed: {r:?}");
        }

        // The cheater generates with adapter `b` (or none), then commits honestly: the
        // registered model and adapter `a` run once over its prompt and output.
        for cheat in [Some("b"), None] {
            let served = generate_with(&mut e, &[(PROMPTS[1], cheat)], &params);
            let (p, o, c) = &served[0];
            let rows = &verify(&mut verifier, &[(p, o, Some("a"), c)])[0];
            let recommitted = rows.recomputed.clone();
            assert_eq!(recommitted.tokens(), 40);
            let r =
                &verify_replaying(&mut verifier, &[(p, o, Some("a"), &recommitted)], Some(&params))
                    [0];
            eprintln!("{cheat:?} at temperature {}: {}", params.temperature, r.summary());
            // The commitment alone cannot tell: it was computed with the registered weights.
            assert_eq!((r.value_mismatches, r.index_mismatches), (0, 0), "{r:?}");
            assert!(r.replay_mismatches > 0, "{r:?}");
            assert!(!r.passes(&tol), "a recommitted cheat passed: {r:?}");
        }
    }
}

/// A worker whose committed values are a step of the encoding off on 3 entries in 10 (the
/// worker's test-only `--cheat-drift 3`): every job passes the verifier's tolerance, so no
/// single audit can fault it, but its score sits above the chain's drift limit (1,500:
/// `DriftLimit` of the runtimes) where honest jobs score about 1,000; a nudge of nothing
/// changes no byte.
#[test]
fn values_nudged_a_step_pass_each_audit_but_score_above_the_drift_limit() {
    let Some(path) = model_if_present() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = load_base(path);
    let mut e = sharing(&base, dir.path(), 0);
    let adapters = [Some("b"), Some("a"), None, Some("a")];
    let requests: Vec<_> = PROMPTS.iter().copied().zip(adapters).collect();
    let jobs = generate(&mut e, &requests);
    let tol = Tolerance::default();
    for (_, o, c) in &jobs {
        let same = c.nudged(o, 0);
        assert_eq!(same.as_bytes(), c.as_bytes(), "a nudge of nothing changes a byte");
        let moved = c.nudged(o, 3);
        assert_eq!(moved.as_bytes().len(), c.as_bytes().len());
        let changed = (0..c.tokens())
            .flat_map(|t| c.entries(t).unwrap().into_iter().zip(moved.entries(t).unwrap()))
            .filter(|(a, b)| {
                assert_eq!(a.dim, b.dim);
                a.value != b.value
            })
            .count();
        assert_eq!(changed, 3 * c.tokens() * TOP_K / 10, "3 entries in 10 moved");
    }
    let nudged: Vec<ActivationCommitment> = jobs.iter().map(|(_, o, c)| c.nudged(o, 3)).collect();
    let mut verifier = sharing(&base, dir.path(), 1);
    let honest = verify(&mut verifier, &claims(&jobs, &adapters, jobs.iter().map(|(.., c)| c)));
    let drifting = verify(&mut verifier, &claims(&jobs, &adapters, &nudged));
    for (h, d) in honest.iter().zip(&drifting) {
        eprintln!(
            "honest score {}, nudged score {}: {}",
            h.score(&tol),
            d.score(&tol),
            d.summary()
        );
        assert!(h.passes(&tol) && h.score(&tol) < 1_500, "{h:?}");
        assert!(d.passes(&tol), "a nudged job fails on its own: {d:?}");
        assert!(d.score(&tol) > 1_500, "a nudged job scores like an honest one: {d:?}");
    }
}
