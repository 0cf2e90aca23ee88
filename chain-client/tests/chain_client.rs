//! The worker's chain client against a real `openledger-node --dev` process on free loopback
//! ports: provider registration, heartbeats, adapter registration, job submission, discovery
//! of assignments (each exactly once), acknowledgement, receipts signed by the worker key and
//! the balances they move; and the errors a user sees.

use openledger_testkit as common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use openledger_chain_client::{
    blake2_256, commitment_hash, sign_receipt, AssignmentWatcher, ChainClient, ChainError,
    ComputeError, Endpoint, GpuSpec, JobPhase, JobsError, ProviderTerms, ReceiptDraft,
    ReceiptOutcome, RefusalReason, RuntimeError,
};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::dev;

use common::node::DevNode;

use openledger_chain_client::OPEN;
const MILLI: u128 = OPEN / 1_000;

fn account(k: &subxt_signer::sr25519::Keypair) -> AccountId32 {
    AccountId32(k.public_key().0)
}

fn terms(worker: &SigningKey, price: u128) -> ProviderTerms {
    ProviderTerms {
        spec: GpuSpec {
            model: b"NVIDIA H100 80GB HBM3".to_vec(),
            memory_gib: 80,
            gpu_count: 1,
            bf16_tflops: Some(989),
        },
        region: *b"DE",
        endpoint: Endpoint {
            peer_id: vec![0, 36, 8, 1, 18, 32, 7, 7],
            multiaddrs: vec![b"/ip4/127.0.0.1/tcp/4001".to_vec()],
        },
        worker_key: worker.verifying_key().to_bytes(),
        worker_account: None,
        base_models: vec![0],
        price_per_1k: price,
        max_concurrent: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_registers_finds_its_jobs_once_and_settles_them_with_signed_receipts() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60))
        .await
        .expect("the dev node answers");
    assert_ne!(chain.genesis_hash(), [0; 32]);

    let (alice, bob, dave) = (dev::alice(), dev::bob(), dev::dave());
    let worker_key = SigningKey::from_bytes(&[7; 32]);

    // Bob registers as a provider; the chain reads back exactly what he declared.
    let declared = terms(&worker_key, 2 * MILLI);
    chain.register_provider(&bob, &declared, 1_500 * OPEN).await.expect("registers");
    assert_eq!(chain.provider(&account(&bob)).await.expect("reads"), Some(declared.clone()));
    // Every error the three pallets can return is one the client types.
    assert_eq!(chain.untyped_errors().await.expect("metadata"), Vec::<String>::new());
    // Registering twice is refused by name.
    let again = chain.register_provider(&bob, &declared, 1_500 * OPEN).await;
    assert!(
        matches!(
            &again,
            Err(ChainError::Dispatch {
                error: RuntimeError::Compute(ComputeError::AlreadyRegistered),
                ..
            })
        ),
        "{again:?}"
    );
    chain.heartbeat(&bob, &account(&bob), &[], 4).await.expect("heartbeat");

    // Dave registers an adapter for base model 0 at 1 mOPEN per 1k tokens.
    let adapter = chain
        .register_adapter(&dave, 0, blake2_256(b"adapter weights"), 16, 0b111_1111, MILLI, &[])
        .await
        .expect("adapter registers");
    let listed = chain.adapters().await.expect("lists adapters");
    assert!(listed
        .iter()
        .any(|(id, a)| *id == adapter && a.owner == account(&dave) && a.rank == 16));

    // Bob has not declared the adapter: no quote, nothing can be matched.
    assert_eq!(chain.quote(adapter, 256).await.expect("quotes"), None);
    chain.set_served_adapters(&bob, &account(&bob), &[adapter]).await.expect("declares");
    assert_eq!(
        chain.served_adapters(&account(&bob)).await.expect("reads"),
        [adapter].into_iter().collect()
    );
    let quote = chain.quote(adapter, 256).await.expect("quotes").expect("Bob is quoted");
    assert_eq!(quote.provider, account(&bob));
    assert_eq!(quote.price_per_1k, 3 * MILLI);
    assert_eq!(quote.min_max_fee, 256 * 3 * MILLI / 1_000);

    // Alice submits a job; the watcher yields it once, then never again.
    let mut watcher = AssignmentWatcher::new(chain.clone(), account(&bob));
    let payload = b"What is OpenLedger?";
    let assigned = chain
        .submit_job(&alice, adapter, blake2_256(payload), 256, OPEN / 10, b"gateway-peer")
        .await
        .expect("job assigned");
    assert_eq!(assigned.provider, account(&bob));
    assert_eq!(assigned.escrow, OPEN / 10);
    let mut found = Vec::new();
    for _ in 0..10 {
        found.extend(watcher.next_batch().await.expect("polls"));
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let (job, record) = &found[0];
    assert_eq!(*job, assigned.job);
    assert_eq!(record.input_hash.0, blake2_256(payload));
    assert_eq!(record.phase, JobPhase::Assigned);
    assert_eq!(record.gateway, b"gateway-peer".to_vec());
    assert!(watcher.next_batch().await.expect("polls").is_empty(), "a job is yielded once");

    chain.acknowledge(&bob, *job).await.expect("acknowledged");
    assert_eq!(
        chain.job(*job).await.expect("reads").map(|j| j.phase),
        Some(JobPhase::Acknowledged)
    );

    // A receipt signed by another key is rejected by name; the worker's key settles it.
    let bob_before = chain.free_balance(&account(&bob)).await.expect("balance");
    let alice_before = chain.free_balance(&account(&alice)).await.expect("balance");
    let output_hash = blake2_256(b"A chain that pays for AI.");
    let draft = ReceiptDraft {
        job: *job,
        output_hash,
        input_tokens: 300,
        output_tokens: 200,
        context: Vec::new(),
        commitment_hash: commitment_hash(&[1, 2, 3, 4, 5, 6, 7, 8]),
    };
    let forged = sign_receipt(
        &SigningKey::from_bytes(&[9; 32]),
        chain.genesis_hash(),
        &account(&bob),
        adapter,
        draft.clone(),
    )
    .expect("signs");
    let refused = chain.submit_receipts(&dave, &[forged]).await;
    assert!(
        matches!(
            &refused,
            Err(ChainError::Dispatch { error: RuntimeError::Jobs(JobsError::BadSignature), .. })
        ),
        "{refused:?}"
    );
    // A receipt whose commitment hash was changed after signing is rejected too.
    let mut altered =
        sign_receipt(&worker_key, chain.genesis_hash(), &account(&bob), adapter, draft.clone())
            .expect("signs");
    altered.commitment_hash = commitment_hash(&[8, 7, 6, 5, 4, 3, 2, 1]);
    let refused = chain.submit_receipts(&dave, &[altered]).await;
    assert!(
        matches!(
            &refused,
            Err(ChainError::Dispatch { error: RuntimeError::Jobs(JobsError::BadSignature), .. })
        ),
        "{refused:?}"
    );
    let receipt =
        sign_receipt(&worker_key, chain.genesis_hash(), &account(&bob), adapter, draft.clone())
            .expect("signs");
    let outcomes = chain.submit_receipts(&dave, &[receipt]).await.expect("settles");
    let [ReceiptOutcome::Settled(settled)] = outcomes.as_slice() else {
        panic!("one settlement expected, got {outcomes:?}");
    };
    // 500 tokens at (2 + 1) mOPEN per 1k.
    assert_eq!(settled.charged, 500 * 3 * MILLI / 1_000);
    assert_eq!(settled.refunded, OPEN / 10 - settled.charged);
    assert_eq!(settled.commitment_hash.0, draft.commitment_hash, "the event names the commitment");
    let bob_after = chain.free_balance(&account(&bob)).await.expect("balance");
    let alice_after = chain.free_balance(&account(&alice)).await.expect("balance");
    assert_eq!(bob_after - bob_before, settled.charged * 70 / 100, "the provider's 70%");
    assert_eq!(alice_after - alice_before, OPEN / 10 - settled.charged);
    assert_eq!(chain.job(*job).await.expect("reads"), None, "settled jobs are deleted");

    // The next job is the only one the watcher yields.
    let second = chain
        .submit_job(&alice, adapter, blake2_256(b"second"), 16, OPEN / 10, b"gateway-peer")
        .await
        .expect("job assigned");
    let mut found = Vec::new();
    for _ in 0..10 {
        found.extend(watcher.next_batch().await.expect("polls"));
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(found.iter().map(|(j, _)| *j).collect::<Vec<_>>(), vec![second.job]);

    // A restarted worker (a fresh watcher) finds the job still open, once.
    let mut restarted = AssignmentWatcher::new(chain.clone(), account(&bob));
    let mut found = restarted.next_batch().await.expect("polls");
    if found.is_empty() {
        found = restarted.next_batch().await.expect("polls");
    }
    assert_eq!(found.iter().map(|(j, _)| *j).collect::<Vec<_>>(), vec![second.job]);

    // The keeper's view: the job is due at its deadline block.
    let due = chain.jobs_due_at(second.deadline, 16).await.expect("runtime API answers");
    assert!(due.contains(&second.job), "{due:?}");

    // Bob's worker refuses it: the whole escrow goes back to Alice, nothing is slashed.
    let alice_before = chain.free_balance(&account(&alice)).await.expect("balance");
    let bond_before = chain.provider(&account(&bob)).await.expect("reads").is_some();
    chain.refuse(&bob, second.job, RefusalReason::PromptTooLong).await.expect("refuses");
    assert_eq!(chain.job(second.job).await.expect("reads"), None);
    let alice_after = chain.free_balance(&account(&alice)).await.expect("balance");
    assert_eq!(alice_after - alice_before, second.escrow, "the whole escrow is back");
    assert!(bond_before);
    let again = chain.refuse(&bob, second.job, RefusalReason::EmptyPrompt).await;
    assert!(
        matches!(
            &again,
            Err(ChainError::Dispatch { error: RuntimeError::Jobs(JobsError::JobClosed), .. })
        ),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_named_errors() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60))
        .await
        .expect("the dev node answers");
    // No provider serves anything yet.
    let adapter = chain
        .register_adapter(&dev::dave(), 0, [1; 32], 8, 1, MILLI, &[])
        .await
        .expect("adapter registers");
    let none = chain.submit_job(&dev::alice(), adapter, [2; 32], 16, OPEN, b"gw").await;
    assert!(
        matches!(&none, Err(ChainError::Dispatch { call, error: RuntimeError::Jobs(JobsError::NoProviderAvailable) }) if call == "Jobs.submit_job"),
        "{none:?}"
    );
    let unknown = chain.submit_job(&dev::alice(), 999, [2; 32], 16, OPEN, b"gw").await;
    assert!(
        matches!(
            &unknown,
            Err(ChainError::Dispatch { error: RuntimeError::Jobs(JobsError::UnknownAdapter), .. })
        ),
        "{unknown:?}"
    );
    // An unfunded account cannot pay the fee: the pool refuses the transaction.
    let pauper = subxt_signer::sr25519::Keypair::from_secret_key([5; 32]).expect("a key");
    let poor = chain.acknowledge(&pauper, 0).await;
    assert!(matches!(&poor, Err(ChainError::NotIncluded { .. })), "{poor:?}");
}

#[tokio::test]
async fn an_unreachable_node_is_named() {
    let _serial = common::procs::serial();
    let port = common::node::free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = ChainClient::connect(&url, Duration::from_secs(2)).await.err().expect("fails");
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = err.to_string();
    assert!(message.contains(&url) && message.contains("cannot reach"), "{message}");
}
