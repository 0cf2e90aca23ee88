//! Pulling a job's payload from a gateway: who gets it, who does not, and the limits.

mod common;

use std::time::{Duration, Instant};

use common::{gateway_and_worker, node, stop};
use ed25519_dalek::SigningKey;
use futures::future::join_all;
use openledger_p2p::{
    keypair_from_ed25519_secret, peer_id_of_ed25519_public, FetchError, Keypair, P2pError,
    P2pEvent, PeerId,
};

const JOB: u64 = 42;

#[tokio::test]
async fn the_assigned_worker_fetches_the_payload_and_a_third_peer_is_denied() {
    let (mut gateway, worker) = gateway_and_worker(|_| {}, |_| {}).await;
    let intruder = node(3, |_| {});
    intruder.handle.dial(gateway.address().await).await.unwrap();

    let prompt = b"summarise the attached contract".to_vec();
    gateway.handle.offer_payload(JOB, prompt.clone(), worker.peer_id()).await.unwrap();

    let fetched = worker.handle.fetch_payload(gateway.peer_id(), JOB).await.unwrap();
    assert_eq!(fetched, prompt);
    assert_eq!(
        gateway.next_app_event().await,
        P2pEvent::PayloadFetched { job: JOB, by: worker.peer_id() }
    );

    let denied = intruder.handle.fetch_payload(gateway.peer_id(), JOB).await;
    assert!(
        matches!(denied, Err(FetchError::Denied { gateway: g, job: JOB }) if g == gateway.peer_id()),
        "{denied:?}"
    );
    // Being denied to someone else does not use the payload up.
    assert_eq!(worker.handle.fetch_payload(gateway.peer_id(), JOB).await.unwrap(), prompt);

    stop([gateway, worker, intruder]).await;
}

#[tokio::test]
async fn unknown_and_withdrawn_jobs_are_unknown() {
    let (gateway, worker) = gateway_and_worker(|_| {}, |_| {}).await;

    let unknown = worker.handle.fetch_payload(gateway.peer_id(), 7).await;
    assert!(matches!(unknown, Err(FetchError::Unknown { job: 7, .. })), "{unknown:?}");

    gateway.handle.offer_payload(JOB, vec![1, 2, 3], worker.peer_id()).await.unwrap();
    gateway.handle.withdraw_payload(JOB).await.unwrap();
    let withdrawn = worker.handle.fetch_payload(gateway.peer_id(), JOB).await;
    assert!(matches!(withdrawn, Err(FetchError::Unknown { job: JOB, .. })), "{withdrawn:?}");

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn oversize_payloads_are_refused_on_both_sides() {
    const MIB: usize = 1 << 20;
    // The gateway allows 4 MiB, the worker keeps the 1 MiB default.
    let (gateway, worker) = gateway_and_worker(|c| c.max_payload_bytes = 4 * MIB, |_| {}).await;

    let too_big = gateway.handle.offer_payload(JOB, vec![0; 4 * MIB + 1], worker.peer_id()).await;
    assert!(
        matches!(too_big, Err(P2pError::PayloadTooLarge { size, max }) if size == 4 * MIB + 1 && max == 4 * MIB),
        "{too_big:?}"
    );

    gateway.handle.offer_payload(JOB, vec![0; 2 * MIB], worker.peer_id()).await.unwrap();
    let refused = worker.handle.fetch_payload(gateway.peer_id(), JOB).await;
    match refused {
        Err(error @ FetchError::TooLarge { size, max, .. }) => {
            // Each counts the payload's 4-byte compact length and the 1-byte variant index.
            assert_eq!((size, max), (2 * MIB + 5, MIB + 5));
            assert!(error.to_string().contains("exceed"), "{error}");
        },
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // The worker can still fetch what fits.
    gateway.handle.offer_payload(JOB + 1, vec![5; MIB], worker.peer_id()).await.unwrap();
    let fits = worker.handle.fetch_payload(gateway.peer_id(), JOB + 1).await.unwrap();
    assert_eq!(fits.len(), MIB);

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn an_unreachable_gateway_fails_within_the_timeout() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = Keypair::generate_ed25519().public().to_peer_id();
    let address = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{gateway}").parse().unwrap();
    let timeout = Duration::from_secs(2);
    let worker = node(2, |c| c.request_timeout = timeout);

    let started = Instant::now();
    let dialled = worker.handle.dial(address).await;
    assert!(matches!(dialled, Err(P2pError::Dial { .. })), "{dialled:?}");

    // The address is remembered from the dial: the fetch redials it, and fails.
    let fetched = worker.handle.fetch_payload(gateway, JOB).await;
    assert!(
        matches!(fetched, Err(FetchError::Unreachable { .. } | FetchError::Timeout { .. })),
        "{fetched:?}"
    );
    // A peer with no known address at all.
    let nowhere = PeerId::random();
    let fetched = worker.handle.fetch_payload(nowhere, JOB).await;
    assert!(matches!(fetched, Err(FetchError::Unreachable { .. })), "{fetched:?}");
    assert!(started.elapsed() < 2 * timeout, "took {:?}", started.elapsed());

    stop([worker]).await;
}

#[tokio::test]
async fn a_burst_beyond_the_rate_limit_is_refused() {
    let (gateway, worker) =
        gateway_and_worker(|c| c.requests_per_second_per_peer = 5, |_| {}).await;

    let burst = (0..20).map(|_| worker.handle.fetch_payload(gateway.peer_id(), JOB));
    let answers = join_all(burst).await;
    let limited =
        answers.iter().filter(|a| matches!(a, Err(FetchError::RateLimited { .. }))).count();
    let served = answers.iter().filter(|a| matches!(a, Err(FetchError::Unknown { .. }))).count();
    assert_eq!(limited + served, 20, "{answers:?}");
    // A burst of 5, plus whatever refilled while the burst arrived.
    assert!((5..=7).contains(&served), "{served} served");

    // After a pause the peer is served again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = worker.handle.fetch_payload(gateway.peer_id(), JOB).await;
    assert!(matches!(again, Err(FetchError::Unknown { .. })), "{again:?}");

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn the_peer_id_of_a_worker_key_is_the_one_the_gateway_sees() {
    let secret = [0x5a; 32];
    // The key as the chain knows it: the public half of the worker's signing key.
    let registered = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
    let expected = peer_id_of_ed25519_public(&registered).unwrap();
    assert_eq!(keypair_from_ed25519_secret(secret).unwrap().public().to_peer_id(), expected);

    let mut gateway = node(1, |_| {});
    let worker = common::Node::from_secret(secret);
    worker.handle.dial(gateway.address().await).await.unwrap();
    let seen = loop {
        match gateway.events.recv().await {
            Some(P2pEvent::PeerConnected { peer }) => break peer,
            Some(_) => continue,
            None => panic!("gateway stopped"),
        }
    };
    assert_eq!(seen, expected);

    // So the gateway can offer a job's payload to the registered worker key.
    gateway.handle.offer_payload(JOB, b"hi".to_vec(), expected).await.unwrap();
    assert_eq!(worker.handle.fetch_payload(gateway.peer_id(), JOB).await.unwrap(), b"hi");

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn a_worker_bootstrapped_with_its_gateway_fetches_without_dialling() {
    let gateway = node(1, |_| {});
    let address = gateway.address().await;
    let worker = node(2, |c| c.bootstrap = vec![address.clone()]);

    gateway.handle.offer_payload(JOB, b"prompt".to_vec(), worker.peer_id()).await.unwrap();
    assert_eq!(worker.handle.fetch_payload(gateway.peer_id(), JOB).await.unwrap(), b"prompt");

    // An address naming another peer id is refused: the remote must prove it is that peer.
    let mut impostor = address;
    impostor.pop(); // the gateway's `/p2p/<peer id>`
    let impostor = impostor.with_p2p(PeerId::random()).unwrap();
    let wrong = worker.handle.dial(impostor).await;
    assert!(matches!(wrong, Err(P2pError::Dial { .. })), "{wrong:?}");

    stop([gateway, worker]).await;
}
