//! Verification end to end, as real processes on loopback: a dev node auditing every settled
//! job, `openledger-gateway`, two honest `openledger-worker`s and one started with the
//! test-only `--cheat-skip-adapter` (it runs jobs without their adapter while claiming it).
//! Six concurrent requests spread over the three (two slots each). Every job settles, is
//! drawn for verification and recomputed by another worker, which fetches the kept answer
//! over libp2p: the cheater's jobs are found wrong (its worker contests, as every worker
//! does, and the second verifier agrees) and its bond pays the payer back, the verifiers and
//! the treasury, to the planck; the honest workers' jobs are confirmed and their bonds
//! untouched.
//!
//! A worker whose numbers are slightly off on every job (test-only `--cheat-drift`) passes
//! each audit, and is slashed when the median score of a window of its audits passes the
//! chain's limit; the honest workers judged beside it are not.
//!
//! The same cheat on the payment-channel path: the cheater serves requests on Alice's
//! channel; when the channel closes it redeems its voucher, the chain draws its requests by
//! their leaves in the voucher's receipts tree, the cheater's worker reveals each receipt with
//! its Merkle path, and the audits that open find the work wrong and refund Alice each
//! request's charge from the cheater's bond.

use openledger_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_chain_client::{
    blake2_256, fee_for, AuditOutcome, Balance, ChainClient, JobSettled, Subject,
};
use openledger_engine::{Engine, EngineConfig, ModelSource, Projection};
use serde_json::json;
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::market::account;
use common::node::DevNode;
use common::procs::{channel_gateway, gateway, model, post, worker_with};
use common::{write_adapter, AdapterSpec};

use openledger_chain_client::OPEN;

/// Blocks a verifier has for its verdict, and an accused provider to contest.
const WINDOW: u32 = 6;

/// A dev node auditing all settled work, with verdict and contest windows of WINDOW blocks.
async fn auditing_chain() -> (DevNode, tempfile::TempDir, ChainClient) {
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    chain.sudo_set_sample_share(&dev::alice(), 1_000_000_000).await.expect("share set");
    common::market::set_block_parameters(&chain, &["VerdictTimeout", "ContestWindow"], WINDOW)
        .await;
    (node, dir, chain)
}

/// Eve's adapter (rank 8 on q and v, clearly away from the base model), written under
/// `dir/adapters` and registered; returns its id and the adapters directory.
async fn support_adapter(chain: &ChainClient, dir: &std::path::Path) -> (u32, std::path::PathBuf) {
    let config = Engine::load(&ModelSource::Gguf(model()), EngineConfig::default(), &Device::Cpu)
        .expect("the model loads")
        .model()
        .config()
        .clone();
    let adapters_dir = dir.join("adapters");
    let path = write_adapter(
        &adapters_dir.join("support"),
        &config,
        &AdapterSpec { r: 8, alpha: 32.0, rslora: false, targets: &[Projection::Q, Projection::V] },
        7,
    );
    let weights = std::fs::read(path.join("adapter_model.safetensors")).expect("weights");
    let adapter = chain
        .register_adapter(&dev::eve(), 0, blake2_256(&weights), 8, 0b101, OPEN / 1_000, &[])
        .await
        .expect("adapter registers");
    (adapter, adapters_dir)
}

/// Waits until every audit of `subjects` is decided.
async fn outcomes_of(
    chain: &ChainClient,
    subjects: &BTreeSet<Subject>,
) -> BTreeMap<Subject, AuditOutcome> {
    let started = Instant::now();
    loop {
        let outcomes = chain.audit_outcomes(subjects.clone()).await.expect("events");
        if outcomes.len() == subjects.len() {
            return outcomes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "audits still open after 240 s: decided {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `who`'s held balance (its bond) at the best block.
async fn bond_now(chain: &ChainClient, who: &AccountId32) -> Balance {
    chain.balances(who).await.expect("balance").1
}

/// Held balances (the bonds) of `who`, now.
async fn bonds_of(chain: &ChainClient, who: &[AccountId32]) -> BTreeMap<AccountId32, Balance> {
    let mut out = BTreeMap::new();
    for w in who {
        out.insert(*w, bond_now(chain, w).await);
    }
    out
}

/// Posts one completion request with `adapter` per prompt, all at once, each asking for
/// `max_tokens`; returns their on-chain jobs.
fn complete_concurrently(
    http: &str,
    adapter: u32,
    prompts: Vec<String>,
    max_tokens: u32,
) -> BTreeSet<u64> {
    let threads: Vec<_> = prompts
        .into_iter()
        .map(|prompt| {
            let http = http.to_string();
            std::thread::spawn(move || {
                let body = json!({"model": format!("adapter-{adapter}"), "prompt": prompt,
                    "max_tokens": max_tokens});
                let response = post(&format!("{http}/completions"), body)?;
                response["openledger"]["job"].as_u64().ok_or(format!("no job in {response}"))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("thread").expect("an answer")).collect()
}

/// A dev node auditing all settled work (`auditing_chain`), Eve's adapter, a gateway and three
/// workers of two slots each: honest Bob and Charlie, and Ferdie started with the extra
/// `ferdie` flags (a cheat). The processes stop when this is dropped.
struct ThreeWorkers {
    _procs: Vec<common::procs::Proc>,
    chain: ChainClient,
    _node: DevNode,
    _dir: tempfile::TempDir,
    adapter: u32,
    http: String,
    bob: AccountId32,
    charlie: AccountId32,
    ferdie: AccountId32,
    /// Held balances (the bonds) once all three are registered.
    held: BTreeMap<AccountId32, Balance>,
}

async fn three_workers(ferdie: &[&str]) -> ThreeWorkers {
    let (node, dir, chain) = auditing_chain().await;
    let (adapter, adapters_dir) = support_adapter(&chain, dir.path()).await;
    let (gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 120);
    let slots = ["--max-concurrent", "2"];
    let worker = |name: &str, extra: &[&str]| {
        worker_with(
            &node.ws_url(),
            name,
            dir.path(),
            &adapters_dir,
            &p2p,
            &[&slots, extra].concat(),
        )
    };
    let procs =
        vec![gateway, worker("//Bob", &[]), worker("//Charlie", &[]), worker("//Ferdie", ferdie)];
    let (bob, charlie, ferdie) =
        (account(&dev::bob()), account(&dev::charlie()), account(&dev::ferdie()));
    let held = bonds_of(&chain, &[bob, charlie, ferdie]).await;
    ThreeWorkers {
        _procs: procs,
        chain,
        _node: node,
        _dir: dir,
        adapter,
        http,
        bob,
        charlie,
        ferdie,
        held,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_skips_the_adapter_is_slashed_and_honest_workers_are_not() {
    let _serial = common::procs::serial();
    let w = three_workers(&["--cheat-skip-adapter"]).await;
    let (chain, held, bob, charlie, ferdie) = (&w.chain, &w.held, w.bob, w.charlie, w.ferdie);

    // Six concurrent requests: two slots on each worker.
    let prompts = (0..6).map(|i| format!("Question {i}: what is a ledger?")).collect();
    let jobs = complete_concurrently(&w.http, w.adapter, prompts, 12);
    assert_eq!(jobs.len(), 6);
    for job in &jobs {
        common::market::closed(chain, *job, 120).await;
    }
    let settled = chain.settlements(jobs.clone()).await.expect("settlements");
    assert_eq!(settled.len(), 6, "every job settled");
    let served_by = |who: &AccountId32| -> BTreeSet<u64> {
        settled.iter().filter(|(_, s)| s.provider == *who).map(|(j, _)| *j).collect()
    };
    let (cheated, honest): (BTreeSet<u64>, BTreeSet<u64>) = (
        served_by(&ferdie),
        jobs.iter().copied().filter(|j| !served_by(&ferdie).contains(j)).collect(),
    );
    assert!(!cheated.is_empty(), "the cheater served no job: {settled:?}");
    assert!(!honest.is_empty(), "the honest workers served no job: {settled:?}");

    // Every audit ends: verified by another worker, the cheater's found wrong (and slashed
    // once its contest window passed), the honest ones confirmed.
    let subjects: BTreeSet<Subject> = jobs.iter().map(|j| Subject::Job(*j)).collect();
    let outcomes = outcomes_of(chain, &subjects).await;
    let mut slashed_total = 0;
    for job in &jobs {
        match &outcomes[&Subject::Job(*job)] {
            AuditOutcome::Slashed(s) => {
                assert!(cheated.contains(job), "honest job {job} slashed: {s:?}");
                assert_eq!(s.provider, ferdie);
                // The payer gets the whole charge back; the rest of the 20% splits evenly
                // between the finders and the treasury.
                assert_eq!(s.refunded, settled[job].charged, "job {job}: the payer is refunded");
                assert!(s.rewarded > 0 && s.to_treasury >= s.rewarded, "{s:?}");
                slashed_total += s.refunded + s.rewarded + s.to_treasury;
            },
            AuditOutcome::Confirmed => {
                assert!(honest.contains(job), "the cheater's job {job} passed verification")
            },
            AuditOutcome::Drifted(d) => panic!("job {job}: a drift slash {d:?}"),
            AuditOutcome::Abandoned => panic!("job {job}: no verifier answered"),
        }
    }
    // Bonds: the cheater's lost exactly what the slashes paid out; the honest ones, nothing.
    assert_eq!(held[&ferdie] - bond_now(chain, &ferdie).await, slashed_total);
    assert_eq!(bond_now(chain, &bob).await, held[&bob], "an honest worker's bond was touched");
    assert_eq!(
        bond_now(chain, &charlie).await,
        held[&charlie],
        "an honest worker's bond was touched"
    );
    // Each confirmed audit left its verifier's score in the provider's drift window: about
    // 1,000 (the typical honest error) for honest work, far under what a cheat scores; the
    // cheater's faults added none.
    for who in [bob, charlie] {
        let scores = chain.drift_scores(&who).await.expect("drift scores");
        eprintln!("drift scores of {who}: {scores:?}");
        assert_eq!(
            scores.len(),
            served_by(&who).len(),
            "one score per confirmed audit: {scores:?}"
        );
        assert!(scores.iter().all(|s| (1..=3_000).contains(s)), "honest scores {scores:?}");
    }
    assert!(chain.drift_scores(&ferdie).await.expect("drift scores").is_empty());
}

/// The runtimes' drift window (`DriftWindow`): confirmed audits a provider is judged on.
const DRIFT_WINDOW: usize = 16;

/// A worker whose committed values are a step of their encoding off on 3 entries in 10
/// (`--cheat-drift 3`): each of its jobs passes its own audit (no fault, no contest), but its
/// scores (~1,800 where honest work scores ~1,000) fill a window whose median passes the
/// limit, and the audit that completes the window slashes it as for a fault; the honest
/// workers beside it, judged on the same audits, keep their bonds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_numbers_drift_passes_each_audit_and_is_slashed_on_its_median() {
    let _serial = common::procs::serial();
    let w = three_workers(&["--cheat-drift", "3"]).await;
    let (chain, held, bob, charlie, ferdie) = (&w.chain, &w.held, w.bob, w.charlie, w.ferdie);

    // Waves of six concurrent requests (two slots on each worker) until the drifting worker
    // has served a window's worth of jobs.
    let mut jobs = BTreeSet::new();
    let mut settled: BTreeMap<u64, JobSettled> = BTreeMap::new();
    for wave in 0..24 {
        let served = settled.values().filter(|s| s.provider == ferdie).count();
        if served >= DRIFT_WINDOW {
            break;
        }
        let prompts = (0..6).map(|i| format!("Question {wave}.{i}: what is a ledger?")).collect();
        let wave_jobs = complete_concurrently(&w.http, w.adapter, prompts, 24);
        for job in &wave_jobs {
            common::market::closed(chain, *job, 120).await;
        }
        settled.extend(chain.settlements(wave_jobs.clone()).await.expect("settlements"));
        jobs.extend(wave_jobs);
    }
    assert_eq!(settled.len(), jobs.len(), "every job settled");
    let served_by = |who: &AccountId32| -> BTreeSet<u64> {
        settled.iter().filter(|(_, s)| s.provider == *who).map(|(j, _)| *j).collect()
    };
    let drifted_jobs = served_by(&ferdie);
    assert!(
        drifted_jobs.len() >= DRIFT_WINDOW,
        "the drifting worker served {} jobs in 24 waves",
        drifted_jobs.len()
    );

    // Every audit ends. No job is found wrong: the drifting worker's pass one by one, and the
    // one that completes its window slashes it, to the planck as for a fault.
    let subjects: BTreeSet<Subject> = jobs.iter().map(|j| Subject::Job(*j)).collect();
    let outcomes = outcomes_of(chain, &subjects).await;
    let mut drift_slashes = Vec::new();
    for job in &jobs {
        match &outcomes[&Subject::Job(*job)] {
            AuditOutcome::Confirmed => {},
            AuditOutcome::Drifted(d) => {
                assert!(drifted_jobs.contains(job), "honest job {job} completed a drift: {d:?}");
                assert_eq!(d.provider, ferdie);
                assert!(d.median > 1_500, "slashed under the limit: {d:?}");
                assert_eq!(d.refunded, settled[job].charged, "job {job}: the payer is refunded");
                assert!(d.rewarded > 0 && d.to_treasury >= d.rewarded, "{d:?}");
                drift_slashes.push(d.clone());
            },
            AuditOutcome::Slashed(s) => panic!("job {job} found wrong: {s:?}"),
            AuditOutcome::Abandoned => panic!("job {job}: no verifier answered"),
        }
    }
    assert_eq!(
        drift_slashes.len(),
        drifted_jobs.len() / DRIFT_WINDOW,
        "one drift slash per full window: {drift_slashes:?}"
    );
    let paid: u128 = drift_slashes.iter().map(|d| d.refunded + d.rewarded + d.to_treasury).sum();
    assert_eq!(
        held[&ferdie] - bond_now(chain, &ferdie).await,
        paid,
        "the bond paid the slash alone"
    );
    assert_eq!(bond_now(chain, &bob).await, held[&bob], "an honest worker's bond was touched");
    assert_eq!(
        bond_now(chain, &charlie).await,
        held[&charlie],
        "an honest worker's bond was touched"
    );
    // The window starts again after the slash; the honest workers' hold every score they
    // earned (up to a window), about 1,000 each.
    let left = chain.drift_scores(&ferdie).await.expect("drift scores");
    eprintln!("drift: {drift_slashes:?}; the drifting worker's scores since: {left:?}");
    assert_eq!(left.len(), drifted_jobs.len() % DRIFT_WINDOW);
    for who in [bob, charlie] {
        let scores = chain.drift_scores(&who).await.expect("drift scores");
        eprintln!("drift scores of {who}: {scores:?}");
        assert_eq!(scores.len(), served_by(&who).len().min(DRIFT_WINDOW), "{scores:?}");
        assert!(scores.iter().all(|s| (1..=3_000).contains(s)), "honest scores {scores:?}");
        let mut sorted = scores.clone();
        sorted.sort_unstable();
        assert!(sorted.get(sorted.len() / 2).is_none_or(|m| *m <= 1_500), "{scores:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheater_on_a_payment_channel_reveals_its_receipts_and_is_slashed() {
    let _serial = common::procs::serial();
    let (node, dir, chain) = auditing_chain().await;
    let (adapter, adapters_dir) = support_adapter(&chain, dir.path()).await;
    let (_gateway, http, p2p) = channel_gateway(&node.ws_url(), dir.path(), 120, &[]);
    // The cheater alone serves the channel and holds its vouchers until the channel closes.
    let hold = ["--redeem-every-blocks", "1000000", "--redeem-amount-milli", "1000000"];
    let cheat = [&hold[..], &["--cheat-skip-adapter"]].concat();
    let _ferdie = worker_with(&node.ws_url(), "//Ferdie", dir.path(), &adapters_dir, &p2p, &cheat);
    let ferdie = account(&dev::ferdie());

    let mut requests = Vec::new();
    let mut channel = None;
    for i in 0..3 {
        let body = json!({"model": format!("adapter-{adapter}"),
            "prompt": format!("Question {i}: what is a ledger?"), "max_tokens": 10});
        let response = post(&format!("{http}/completions"), body).expect("an answer");
        let info = &response["openledger"];
        assert!(info["job"].is_null(), "served on the channel: {response}");
        channel = info["channel"].as_u64();
        let request: u64 = info["request"].as_str().and_then(|r| r.parse().ok()).expect("id");
        let usage = &response["usage"];
        let tokens = usage["prompt_tokens"].as_u64().expect("usage")
            + usage["completion_tokens"].as_u64().expect("usage");
        // Ferdie's 2 milli-OPEN per 1,000 tokens (the testkit worker's price) plus the
        // adapter's 1: what the receipt charged.
        requests.push((request, fee_for(tokens, 3 * OPEN / 1_000)));
    }
    let channel = channel.expect("a channel");
    // Two honest verifiers join (after the requests, so none of them served on the channel).
    let (bob, charlie) = (account(&dev::bob()), account(&dev::charlie()));
    let _bob = worker_with(&node.ws_url(), "//Bob", dir.path(), &adapters_dir, &p2p, &[]);
    let _charlie = worker_with(&node.ws_url(), "//Charlie", dir.path(), &adapters_dir, &p2p, &[]);
    let bonds = bonds_of(&chain, &[bob, charlie, ferdie]).await;

    // Alice closes the channel: the cheater redeems its voucher within the window, every one
    // of its three requests is drawn and revealed, and the audits that open find them wrong.
    chain.request_close_channel(&dev::alice(), channel).await.expect("Alice asks to close");
    let subjects: BTreeSet<Subject> =
        requests.iter().map(|(r, _)| Subject::Request { channel, request: *r }).collect();
    let outcomes = outcomes_of(&chain, &subjects).await;
    let mut slashed_total = 0;
    for (request, charged) in &requests {
        let subject = Subject::Request { channel, request: *request };
        let AuditOutcome::Slashed(s) = &outcomes[&subject] else {
            panic!("the cheater's {subject} was not found wrong: {:?}", outcomes[&subject])
        };
        assert_eq!(s.provider, ferdie);
        // Alice, the channel's payer, gets the request's charge back from the slash.
        assert_eq!(s.refunded, *charged, "{subject}: the payer is refunded its charge");
        assert!(s.rewarded > 0 && s.to_treasury >= s.rewarded, "{s:?}");
        slashed_total += s.refunded + s.rewarded + s.to_treasury;
    }
    assert_eq!(bonds[&ferdie] - bond_now(&chain, &ferdie).await, slashed_total);
    assert_eq!(bond_now(&chain, &bob).await, bonds[&bob], "an honest verifier's bond was touched");
    assert_eq!(
        bond_now(&chain, &charlie).await,
        bonds[&charlie],
        "an honest verifier's bond was touched"
    );
}
