//! Leaf certificates per server name: minted on first use, shared by every SDS stream,
//! bounded in number, and re-minted once two thirds of their lifetime has passed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ca::{CaError, CertificateAuthority, Leaf};

/// The minted leaves of one CA.
pub struct LeafCertificates {
    ca: CertificateAuthority,
    lifetime: Duration,
    cache: moka::future::Cache<Arc<str>, Arc<Leaf>>,
    /// See `interception.max_names_per_stream`.
    max_names_per_stream: usize,
}

impl std::fmt::Debug for LeafCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCertificates")
            .field("lifetime", &self.lifetime)
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl LeafCertificates {
    pub fn new(ca: CertificateAuthority, lifetime: Duration, max: u64) -> LeafCertificates {
        LeafCertificates {
            ca,
            lifetime,
            cache: moka::future::Cache::builder()
                .max_capacity(max)
                // Gone from the cache at two thirds of its life: the next request mints a
                // successor while the old leaf is still valid.
                .time_to_live(Self::renew_after(lifetime))
                .build(),
            max_names_per_stream: 10_000,
        }
    }

    /// Bounds the names one SDS stream may hold.
    pub fn with_max_names_per_stream(mut self, max: u64) -> LeafCertificates {
        self.max_names_per_stream = usize::try_from(max).unwrap_or(usize::MAX);
        self
    }

    /// The most names one SDS stream may hold.
    pub fn max_names_per_stream(&self) -> usize {
        self.max_names_per_stream
    }

    /// How long after minting a leaf is replaced.
    pub fn renew_after(lifetime: Duration) -> Duration {
        lifetime * 2 / 3
    }

    /// The leaf for `host`, minting it (once, however many ask at the same time) when
    /// there is none or it is due for renewal.
    pub async fn get(&self, host: &str) -> Result<Arc<Leaf>, Arc<CaError>> {
        let key: Arc<str> = Arc::from(host);
        self.cache
            .try_get_with(key, async {
                let host = host.to_owned();
                let lifetime = self.lifetime;
                // Key generation and signing are CPU work: keep them off the request
                // threads' hot path.
                let ca = &self.ca;
                tokio::task::block_in_place(|| ca.mint(&host, lifetime)).map(Arc::new)
            })
            .await
    }

    /// Whether a leaf that was sent should be replaced now: its renewal time has passed.
    pub fn is_due(&self, leaf: &Leaf) -> bool {
        let remaining = leaf
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        remaining <= self.lifetime - Self::renew_after(self.lifetime)
    }

    /// How many leaves are held now.
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca;
    use secrecy::ExposeSecret as _;

    fn leaves(lifetime: Duration) -> LeafCertificates {
        let generated = ca::generate("t", Duration::from_secs(86_400)).unwrap();
        let ca = CertificateAuthority::from_pem(
            &generated.cert_pem,
            &generated.key_pem,
            std::path::Path::new("ca.crt"),
            std::path::Path::new("ca.key"),
        )
        .unwrap();
        LeafCertificates::new(ca, lifetime, 2)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_mint() {
        let leaves = Arc::new(leaves(Duration::from_secs(3600)));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let leaves = leaves.clone();
            tasks.push(tokio::spawn(async move {
                leaves.get("a.example").await.unwrap()
            }));
        }
        let mut keys = Vec::new();
        for task in tasks {
            keys.push(task.await.unwrap().key_pem.expose_secret().to_owned());
        }
        keys.dedup();
        assert_eq!(keys.len(), 1, "one key for one host");
        assert!(!leaves.is_due(&leaves.get("a.example").await.unwrap()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_is_bounded() {
        let leaves = leaves(Duration::from_secs(3600));
        for i in 0..20 {
            leaves.get(&format!("h{i}.example")).await.unwrap();
        }
        leaves.cache.run_pending_tasks().await;
        assert!(leaves.len() <= 2, "{} leaves held", leaves.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaf_is_due_after_two_thirds_of_its_life() {
        let leaves = leaves(Duration::from_secs(3));
        let first = leaves.get("b.example").await.unwrap();
        assert!(!leaves.is_due(&first));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(leaves.is_due(&first));
        let second = leaves.get("b.example").await.unwrap();
        assert_ne!(first.chain_pem, second.chain_pem, "re-minted");
        assert!(!leaves.is_due(&second));
    }
}
