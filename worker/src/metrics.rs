//! Prometheus metrics of a worker, served as text on `/metrics`.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Everything a worker reports.
pub struct WorkerMetrics {
    registry: Registry,
    /// Jobs by what happened to them: `acknowledged`, `refused`, `settled`, `rejected`.
    pub jobs: IntCounterVec,
    /// Tokens generated (`rate()` gives tokens per second).
    pub tokens: IntCounter,
    /// Sequences in the last engine step.
    pub batch_size: IntGauge,
    /// Requests waiting for admission to the engine.
    pub queue_depth: IntGauge,
    /// Jobs being served now.
    pub running_jobs: IntGauge,
    /// Adapters resident per tier (`compute`, `host`), one series per adapter (value 1).
    pub adapters: IntGaugeVec,
    /// Best block the job loop has processed.
    pub chain_block: IntGauge,
    /// Blocks between the node's best block and the last one the job loop processed.
    pub chain_lag: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric names and labels are constants of this file: a failure is a bug here.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl WorkerMetrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("openledger_worker".into()), None)
            .unwrap_or_else(|e| panic!("registry: {e}"));
        let jobs = must(IntCounterVec::new(Opts::new("jobs_total", "Jobs by outcome"), &["state"]));
        let tokens = must(IntCounter::new("tokens_generated_total", "Tokens generated"));
        let batch_size = must(IntGauge::new("batch_size", "Sequences in the last engine step"));
        let queue_depth =
            must(IntGauge::new("queue_depth", "Requests waiting for admission to the engine"));
        let running_jobs = must(IntGauge::new("running_jobs", "Jobs being served"));
        let adapters = must(IntGaugeVec::new(
            Opts::new("adapter_resident", "Adapters resident per cache tier"),
            &["tier", "adapter"],
        ));
        let chain_block = must(IntGauge::new("chain_block", "Best block processed"));
        let chain_lag = must(IntGauge::new("chain_lag_blocks", "Blocks behind the best block"));
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tokens.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(running_jobs.clone()),
            Box::new(adapters.clone()),
            Box::new(chain_block.clone()),
            Box::new(chain_lag.clone()),
        ] {
            must(registry.register(c));
        }
        Arc::new(Self {
            registry,
            jobs,
            tokens,
            batch_size,
            queue_depth,
            running_jobs,
            adapters,
            chain_block,
            chain_lag,
        })
    }

    /// Replace the adapter residency series.
    pub fn set_adapters(&self, compute: &[String], host: &[String]) {
        self.adapters.reset();
        for name in compute {
            self.adapters.with_label_values(&["compute", name]).set(1);
        }
        for name in host {
            self.adapters.with_label_values(&["host", name]).set(1);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// An HTTP router serving `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        let metrics = Arc::clone(self);
        Router::new().route("/metrics", get(move || async move { metrics.render() }))
    }
}
