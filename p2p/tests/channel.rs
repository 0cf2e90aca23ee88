//! The payment-channel path's protocol on loopback: a gateway asks a worker to serve, the
//! worker sends its signed receipt and gets the voucher the gateway's channel issues; answers
//! are routed to their askers, an unanswered request times out, and an oversized one is
//! refused before it is sent.

mod common;

use std::time::Duration;

use common::{config, Node};
use ed25519_dalek::SigningKey;
use openledger_channel::{PayerChannel, ServiceReceipt};
use openledger_p2p::{
    keypair_from_ed25519_secret, spawn, ChannelRequest, ChannelResponse, P2pError, P2pEvent,
};

fn node(secret: u8) -> Node {
    let (handle, events) =
        spawn(config(keypair_from_ed25519_secret([secret; 32]).unwrap())).unwrap();
    Node { handle, events }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_then_receipt_for_voucher() {
    let (mut gateway, mut worker) = (node(1), node(2));
    gateway.handle.dial(worker.address().await).await.unwrap();
    let genesis = [9; 32];
    let worker_key = SigningKey::from_bytes(&[2; 32]);
    let signer = SigningKey::from_bytes(&[3; 32]);

    // The gateway asks; the worker's application sees who asked and accepts.
    let ask = {
        let (handle, peer) = (gateway.handle.clone(), worker.peer_id());
        let request = ChannelRequest::Serve {
            channel: 1,
            request: 7,
            adapter: 0,
            max_charge: 500,
            payload: b"{}".to_vec(),
        };
        tokio::spawn(async move { handle.ask_channel(peer, request).await })
    };
    let P2pEvent::ChannelRequest { from, id, request } = worker.next_app_event().await else {
        panic!("a channel request");
    };
    assert_eq!(from, gateway.peer_id());
    assert!(matches!(
        request,
        ChannelRequest::Serve { channel: 1, request: 7, max_charge: 500, .. }
    ));
    worker.handle.answer_channel(id, ChannelResponse::Accepted).await.unwrap();
    assert_eq!(ask.await.unwrap().unwrap(), ChannelResponse::Accepted);
    // An id answers once.
    let again = worker.handle.answer_channel(id, ChannelResponse::Accepted).await.unwrap_err();
    assert!(matches!(again, P2pError::UnknownChannelRequest { id: i } if i == id), "{again}");

    // The worker sends its receipt; the gateway's channel vouches for it.
    let receipt = ServiceReceipt {
        channel: 1,
        request: 7,
        adapter: 0,
        input_hash: [1; 32],
        output_hash: [2; 32],
        input_tokens: 3,
        output_tokens: 4,
        charge: 450,
        contexts: vec![],
        commitment_hash: Some([5; 32]),
    }
    .sign(&worker_key, genesis);
    let ask = {
        let (handle, peer) = (worker.handle.clone(), gateway.peer_id());
        let request = ChannelRequest::Receipt(receipt.clone());
        tokio::spawn(async move { handle.ask_channel(peer, request).await })
    };
    let P2pEvent::ChannelRequest { from, id, request: ChannelRequest::Receipt(got) } =
        gateway.next_app_event().await
    else {
        panic!("a receipt");
    };
    assert_eq!((from, &got), (worker.peer_id(), &receipt));
    let mut channel = PayerChannel::new(1, worker_key.verifying_key().to_bytes(), 10_000);
    let voucher = channel.vouch(&got, 500, &signer, genesis).unwrap();
    gateway.handle.answer_channel(id, ChannelResponse::Voucher(voucher.clone())).await.unwrap();
    assert_eq!(ask.await.unwrap().unwrap(), ChannelResponse::Voucher(voucher));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_and_its_late_answer_is_refused() {
    let (gateway, mut worker) = (node(4), node(5));
    gateway.handle.dial(worker.address().await).await.unwrap();
    let request = ChannelRequest::Serve {
        channel: 1,
        request: 1,
        adapter: 0,
        max_charge: 1,
        payload: vec![],
    };
    let err = gateway.handle.ask_channel(worker.peer_id(), request).await.unwrap_err();
    assert!(matches!(err, P2pError::Timeout { .. } | P2pError::RequestFailed { .. }), "{err}");
    let P2pEvent::ChannelRequest { id, .. } = worker.next_app_event().await else {
        panic!("the request reached the worker");
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = worker.handle.answer_channel(id, ChannelResponse::Accepted).await.unwrap_err();
    assert!(matches!(late, P2pError::UnknownChannelRequest { .. }), "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_before_sending() {
    let (gateway, worker) = (node(6), node(7));
    let max_payload = openledger_p2p::P2pConfig::new(keypair_from_ed25519_secret([6; 32]).unwrap())
        .max_payload_bytes;
    let request = ChannelRequest::Serve {
        adapter: 0,
        channel: 1,
        request: 1,
        max_charge: 1,
        payload: vec![0; max_payload + 1],
    };
    let err = gateway.handle.ask_channel(worker.peer_id(), request).await.unwrap_err();
    assert!(matches!(err, P2pError::ChannelRequestTooLarge { .. }), "{err}");
}
