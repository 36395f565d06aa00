//! [`install`]: the process's Prometheus recorder, and the [`MetricsHandle`] that renders it.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{Error, Result};

/// The upper bounds of every histogram's buckets, in seconds: from a fast store write (1 ms)
/// to a long reply (5 min).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// How often histogram samples are folded into their buckets between two scrapes, so that a
/// process nobody scrapes does not keep every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Renders a Prometheus recorder's metrics in the text exposition format. Cheap to clone; two
/// handles are equal when they are clones of one another.
///
/// [`install`] gives the one chatstream installs; [`MetricsHandle::new`] wraps the handle of a
/// recorder the application installed itself.
#[derive(Debug, Clone)]
pub struct MetricsHandle(Arc<PrometheusHandle>);

impl MetricsHandle {
    /// Wraps the handle of a Prometheus recorder the application installed (call
    /// [`describe`](super::describe) after installing it, for the help texts).
    pub fn new(handle: PrometheusHandle) -> Self {
        MetricsHandle(Arc::new(handle))
    }

    /// Every metric of the recorder, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.0.render()
    }
}

impl PartialEq for MetricsHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MetricsHandle {}

/// Installs a Prometheus recorder as the process's metrics recorder, the first time it is
/// called, and returns its handle; every later call returns the same handle. Histograms get
/// buckets from 1 ms to 5 min, and a background thread folds their samples every few seconds.
///
/// A process has one recorder: this fails with [`Error::Config`] when another one was
/// installed first (hand its handle to [`MetricsHandle::new`] instead, if it is a Prometheus
/// recorder).
pub fn install() -> Result<MetricsHandle> {
    static INSTALLED: OnceLock<Result<MetricsHandle, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            ::metrics::set_global_recorder(recorder).map_err(|_| {
                "another metrics recorder is installed in this process; \
                 wrap its Prometheus handle with MetricsHandle::new"
                    .to_owned()
            })?;
            super::describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("chatstream-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                // Scrapes fold the samples too; only a process nobody scrapes grows.
                tracing::warn!(error = %e, "could not start the metrics upkeep thread");
            }
            Ok(MetricsHandle::new(handle))
        })
        .clone()
        .map_err(Error::Config)
}
