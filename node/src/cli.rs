//! Command-line interface of the node.

use sc_cli::RunCmd;

#[derive(Debug, clap::Parser)]
#[command(
    propagate_version = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcommand>,

    #[clap(flatten)]
    pub run: RunCmd,
}

#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum Subcommand {
    /// Key management: generate, inspect, insert into a keystore, sign and verify.
    #[command(subcommand)]
    Key(sc_cli::KeySubcommand),

    /// Write a chain spec (`--chain dev|local|<path>`) as JSON, optionally `--raw`.
    ExportChainSpec(sc_cli::ExportChainSpecCmd),

    /// Build a chain spec (deprecated upstream in favour of `export-chain-spec`).
    BuildSpec(sc_cli::BuildSpecCmd),

    /// Validate blocks.
    CheckBlock(sc_cli::CheckBlockCmd),

    /// Export blocks.
    ExportBlocks(sc_cli::ExportBlocksCmd),

    /// Export the state of a given block into a chain spec.
    ExportState(sc_cli::ExportStateCmd),

    /// Import blocks.
    ImportBlocks(sc_cli::ImportBlocksCmd),

    /// Remove the whole chain.
    PurgeChain(sc_cli::PurgeChainCmd),

    /// Revert the chain to a previous state.
    Revert(sc_cli::RevertCmd),

    /// Benchmarks: `pallet` generates weights, `machine` checks validator hardware.
    #[cfg(feature = "benchmark-cli")]
    #[command(subcommand)]
    Benchmark(frame_benchmarking_cli::BenchmarkCmd),

    /// Benchmarks (needs a node built with `--features benchmark-cli`, as
    /// `scripts/benchmark/weights.sh` builds it).
    #[cfg(not(feature = "benchmark-cli"))]
    #[command(disable_help_flag = true)]
    Benchmark {
        /// Ignored: this node has no benchmark command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },

    /// Database metadata.
    ChainInfo(sc_cli::ChainInfoCmd),
}
