//! Streaming a job's output tokens from the worker back to its gateway.

mod common;

use common::{gateway_and_worker, stop};
use futures::future::join_all;
use openledger_p2p::{Finish, P2pError, P2pEvent, TokenChunk};

const JOB: u64 = 9;

fn chunk(seq: u32, finish: Option<Finish>) -> TokenChunk {
    TokenChunk { job: JOB, seq, text: format!("token {seq} "), finish }
}

#[tokio::test]
async fn chunks_arrive_in_order_with_the_senders_peer_id() {
    let (mut gateway, worker) = gateway_and_worker(|_| {}, |_| {}).await;
    let finish = Finish {
        reason: "stop".into(),
        input_tokens: 17,
        output_tokens: 50,
        output_hash: [0xcd; 32],
    };

    let sender = worker.handle.clone();
    let to = gateway.peer_id();
    let last = finish.clone();
    let streaming = tokio::spawn(async move {
        for seq in 0..50 {
            let finish = (seq == 49).then(|| last.clone());
            sender.send_tokens(to, chunk(seq, finish)).await?;
        }
        Ok::<_, P2pError>(())
    });

    for seq in 0..50 {
        let expected = chunk(seq, (seq == 49).then(|| finish.clone()));
        assert_eq!(
            gateway.next_app_event().await,
            P2pEvent::Tokens { from: worker.peer_id(), chunk: expected }
        );
    }
    streaming.await.unwrap().unwrap();

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn oversize_chunks_are_refused_before_sending() {
    let (gateway, worker) = gateway_and_worker(|_| {}, |c| c.max_chunk_bytes = 1024).await;

    let big = TokenChunk { job: JOB, seq: 0, text: "x".repeat(2000), finish: None };
    let refused = worker.handle.send_tokens(gateway.peer_id(), big).await;
    assert!(matches!(refused, Err(P2pError::ChunkTooLarge { max: 1024, .. })), "{refused:?}");

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn a_gateway_with_a_smaller_limit_refuses_the_chunk() {
    let (gateway, worker) = gateway_and_worker(|c| c.max_chunk_bytes = 256, |_| {}).await;

    let big = TokenChunk { job: JOB, seq: 0, text: "x".repeat(1000), finish: None };
    let refused = worker.handle.send_tokens(gateway.peer_id(), big).await;
    match refused {
        Err(error @ P2pError::RequestFailed { .. }) => {
            assert!(error.to_string().contains("size limit"), "{error}")
        },
        other => panic!("expected RequestFailed, got {other:?}"),
    }
    // The connection survives: a chunk that fits goes through.
    worker.handle.send_tokens(gateway.peer_id(), chunk(0, None)).await.unwrap();

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn a_burst_of_chunks_beyond_the_rate_limit_is_refused() {
    let (mut gateway, worker) =
        gateway_and_worker(|c| c.requests_per_second_per_peer = 4, |_| {}).await;

    let burst = (0..12).map(|seq| worker.handle.send_tokens(gateway.peer_id(), chunk(seq, None)));
    let answers = join_all(burst).await;
    let limited = answers.iter().filter(|a| matches!(a, Err(P2pError::RateLimited { .. }))).count();
    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(limited + accepted, 12, "{answers:?}");
    assert!((4..=6).contains(&accepted), "{accepted} accepted");
    for _ in 0..accepted {
        assert!(matches!(gateway.next_app_event().await, P2pEvent::Tokens { .. }));
    }

    stop([gateway, worker]).await;
}

#[tokio::test]
async fn a_gateway_not_reading_events_answers_busy() {
    let (gateway, worker) = gateway_and_worker(|_| {}, |_| {}).await;
    let common::Node { handle: gateway_handle, events } = gateway;
    drop(events);

    let busy = worker.handle.send_tokens(gateway_handle.local_peer_id(), chunk(0, None)).await;
    assert!(matches!(busy, Err(P2pError::Busy { .. })), "{busy:?}");

    gateway_handle.shutdown().await;
    stop([worker]).await;
}

#[tokio::test]
async fn chunks_of_a_cancelled_job_are_refused_and_others_still_flow() {
    let (mut gateway, worker) = gateway_and_worker(|_| {}, |_| {}).await;
    let to = gateway.peer_id();
    worker.handle.send_tokens(to, chunk(0, None)).await.unwrap();
    assert!(matches!(gateway.next_app_event().await, P2pEvent::Tokens { .. }));

    gateway.handle.cancel_job(JOB).await.unwrap();
    assert_eq!(gateway.next_app_event().await, P2pEvent::JobCancelled { job: JOB });
    let refused = worker.handle.send_tokens(to, chunk(1, None)).await;
    match refused {
        Err(P2pError::Cancelled { peer, job }) => assert_eq!((peer, job), (to, JOB)),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // Another job of the same worker is unaffected.
    let other = TokenChunk { job: JOB + 1, seq: 0, text: "still here".into(), finish: None };
    worker.handle.send_tokens(to, other.clone()).await.unwrap();
    assert_eq!(
        gateway.next_app_event().await,
        P2pEvent::Tokens { from: worker.peer_id(), chunk: other }
    );

    stop([gateway, worker]).await;
}
