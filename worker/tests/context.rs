//! The retrieval context end to end, with real processes on loopback (node, gateway, worker):
//! a request that names a DataNet whose records it retrieved pays that DataNet's contributors
//! their share when the job settles; a context that cannot be paid is refused by the gateway
//! before anything is submitted or paid.

use openledger_testkit as common;

use std::time::Duration;

use openledger_chain_client::ChainClient;
use serde_json::json;
use subxt_signer::sr25519::dev;

use common::ledger::flows;
use common::market::{account, best, closed, demo_adapter};
use common::node::DevNode;
use common::procs::{gateway, request, worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_datanet_is_paid_its_share_and_a_bad_context_costs_nothing() {
    let _serial = common::procs::serial();
    let node = DevNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = ChainClient::connect(&node.ws_url(), Duration::from_secs(60)).await.expect("node");
    let adapter = demo_adapter(&chain, dir.path()).await;

    // Dave's DataNet, with Ferdie's one approved record: Ferdie holds all its weight.
    let datanet = chain.create_datanet(&dev::dave(), b"encyclopedia").await.expect("created");
    let record = [7u8; 32];
    chain.contribute(&dev::ferdie(), datanet, record, 10).await.expect("contributes");
    chain.approve_contribution(&dev::dave(), datanet, record).await.expect("approves");
    // An existing DataNet with nothing approved, which cannot be paid.
    let empty = chain.create_datanet(&dev::dave(), b"empty").await.expect("created");

    let (_gateway, http, p2p) = gateway(&node.ws_url(), dir.path(), 90);
    let _bob = worker(&node.ws_url(), "//Bob", dir.path(), &dir.path().join("adapters"), &p2p);
    let completions = format!("{http}/completions");
    let model = format!("adapter-{adapter}");
    let alice = account(&dev::alice());
    let ferdie = account(&dev::ferdie());

    // Contexts the chain could not pay: refused before any transaction.
    let fees_before = chain.balances(&alice).await.expect("balances");
    for (context, what) in [
        (json!([{"datanet": 999, "share_ppm": 100_000}]), "does not exist"),
        (json!([{"datanet": empty, "share_ppm": 100_000}]), "no approved contributions"),
        (
            json!([{"datanet": datanet, "share_ppm": 600_000}, {"datanet": datanet, "share_ppm": 1}]),
            "named twice",
        ),
        (json!([{"datanet": datanet, "share_ppm": 1_000_001}]), "more than 1,000,000"),
    ] {
        let answer = request(
            &completions,
            json!({"model": model, "prompt": "Hi", "max_tokens": 4, "context": context}),
        );
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.body["error"]["code"], "invalid_context", "{}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "{message}");
    }
    assert_eq!(chain.balances(&alice).await.expect("balances"), fees_before, "nothing was paid");

    // A request whose answer used the DataNet's records for half of the context part.
    let pending_before = chain.pending_rewards(datanet, &ferdie).await.expect("pending");
    let from = best(&chain).await;
    let answer = request(
        &completions,
        json!({
            "model": model, "prompt": "The capital of France is", "max_tokens": 8,
            "context": [{"datanet": datanet, "share_ppm": 500_000}],
        }),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let job = answer.body["openledger"]["job"].as_u64().expect("the job id");
    closed(&chain, job, 90).await;
    let settled = chain.settlements([job].into()).await.expect("events");
    assert!(settled.contains_key(&job), "job {job} settled (not refused or expired)");
    let to = best(&chain).await;
    let flows = flows(&chain, from, to).await;
    let charge = flows.charges[&job];
    let paid = flows.context_paid.get(&(job, datanet)).copied().unwrap_or(0);
    assert!(paid > 0, "the context DataNet is paid: charge {charge}");
    // Ferdie, the only contributor, can claim all of it (less at most one planck of rounding).
    let pending = chain.pending_rewards(datanet, &ferdie).await.expect("pending") - pending_before;
    assert!(pending <= paid && paid - pending <= 1, "pending {pending}, paid {paid}");
}
