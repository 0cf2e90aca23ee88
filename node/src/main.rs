//! `openledger-node`: a validator or full node of the OpenLedger chain.
//!
//! Aura authors blocks, GRANDPA finalizes them, state lives in ParityDB; the node serves
//! JSON-RPC (port 9944 by default) and Prometheus metrics (9615). Run `--dev` for a
//! single-validator development chain, `--chain local` for the four-validator testnet
//! preset, or `--chain <path>` for a chain spec file.

// `sc_cli::Error` and `sc_service::Error` are Substrate's types, returned as they come.
#![allow(clippy::result_large_err)]

mod chain_spec;
mod cli;
mod command;
mod rpc;
mod service;

fn main() -> sc_cli::Result<()> {
    command::run()
}
