//! Metrics of the control plane's faults: stored objects the gateway cannot use, a store
//! whose revision went backwards, an audit queue that filled up. Each says why something
//! a user relies on is not happening, so each is counted where it is decided.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The control plane's fault metrics, registered beside the others.
pub struct ControlMetrics {
    store_faults: IntGaugeVec,
    store_regressions: IntCounter,
    audit_queue_full: IntCounterVec,
    audit_dropped: IntCounter,
}

impl ControlMetrics {
    pub fn register(registry: &Registry) -> ControlMetrics {
        let store_faults = IntGaugeVec::new(
            Opts::new(
                "store_faults",
                "Stored objects the live snapshot cannot use, by kind (policy: denies in its \
                 scope, or left out; secret and token: left out). Their names are on /readyz",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let store_regressions = IntCounter::new(
            "store_revision_regressions_total",
            "Times the store's revision was found lower than the live snapshot's (a restored \
             backup): the store was read again in full and followed",
        )
        .expect("valid metric");
        let audit_queue_full = IntCounterVec::new(
            Opts::new(
                "audit_queue_full_total",
                "Audit records that found the audit queue full, by what `audit.when_full` did \
                 (block: the request waited; refused: the wait ran out and the request was \
                 refused; dropped: the record was lost and the request went on)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let audit_dropped = IntCounter::new(
            "audit_dropped_total",
            "Audit records lost because the audit queue was full (`audit.when_full: drop`)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(store_faults.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(store_regressions.clone()),
            Box::new(audit_queue_full.clone()),
            Box::new(audit_dropped.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for kind in ["policy", "secret", "token"] {
            store_faults.with_label_values(&[kind]);
        }
        for outcome in ["block", "refused", "dropped"] {
            audit_queue_full.with_label_values(&[outcome]);
        }
        ControlMetrics {
            store_faults,
            store_regressions,
            audit_queue_full,
            audit_dropped,
        }
    }

    /// The faults of the live snapshot, by kind.
    pub fn set_store_faults(&self, kinds: &[&'static str]) {
        for kind in ["policy", "secret", "token"] {
            let n = kinds.iter().filter(|k| **k == kind).count();
            self.store_faults.with_label_values(&[kind]).set(n as i64);
        }
    }

    pub fn record_store_regression(&self) {
        self.store_regressions.inc();
    }

    /// An audit record met a full queue; `outcome` is `block`, `refused` or `dropped`.
    pub fn record_audit_queue_full(&self, outcome: &'static str) {
        self.audit_queue_full.with_label_values(&[outcome]).inc();
        if outcome == "dropped" {
            self.audit_dropped.inc();
        }
    }
}
