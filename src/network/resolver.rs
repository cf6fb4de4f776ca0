//! Name resolution for the guard: a caching DNS resolver (hickory) with the TTL bounds the
//! config sets, shared across config reloads while its settings stay the same.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// How to resolve: the compiled form of the `network_guard` DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Empty: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
    /// The most one resolution may take, retries included.
    pub timeout: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_size: usize,
}

/// Why a name has no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist or has no A/AAAA record.
    NoAddress,
    /// No answer within the timeout.
    Timeout,
    /// Anything else: the resolver could not be configured, a server failed.
    Failed(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::NoAddress => f.write_str("the name has no address"),
            LookupError::Timeout => f.write_str("DNS did not answer in time"),
            LookupError::Failed(why) => write!(f, "DNS failed: {why}"),
        }
    }
}

/// A caching resolver.
pub struct Resolver {
    inner: Result<Backend, String>,
    timeout: Duration,
}

// One per resolver, built once: the size difference with the test-only variant is moot.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Dns(hickory_resolver::TokioResolver),
    /// Unit tests: every name has this address, and nothing goes on the network.
    #[cfg(test)]
    Fixed(IpAddr),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver with these settings. A system configuration that cannot be read leaves a
    /// resolver whose every lookup fails (the guard then refuses every name: fail closed).
    pub fn new(settings: &ResolverSettings) -> Resolver {
        let builder = if settings.nameservers.is_empty() {
            hickory_resolver::Resolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))
        } else {
            let mut config = ResolverConfig::new();
            for server in &settings.nameservers {
                config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
            }
            Ok(hickory_resolver::Resolver::builder_with_config(
                config,
                TokioConnectionProvider::default(),
            ))
        };
        let inner = builder.map(|mut builder| {
            let options: &mut ResolverOpts = builder.options_mut();
            // What Envoy's `V4_PREFERRED` did: A records, AAAA only when there are none.
            options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
            options.positive_min_ttl = Some(settings.min_ttl);
            options.positive_max_ttl = Some(settings.max_ttl);
            options.negative_min_ttl = Some(Duration::ZERO);
            options.negative_max_ttl = Some(settings.negative_ttl);
            options.cache_size = settings.cache_size as _;
            options.timeout = settings.timeout;
            options.attempts = 2;
            options.use_hosts_file = if settings.nameservers.is_empty() {
                ResolveHosts::Always
            } else {
                ResolveHosts::Never
            };
            Backend::Dns(builder.build())
        });
        if let Err(error) = &inner {
            tracing::error!(%error, "the network guard has no DNS resolver: every host name is refused");
        }
        Resolver {
            inner,
            timeout: settings.timeout,
        }
    }

    /// The addresses of `host`, in the resolver's order; cached within the TTL bounds.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let resolver = match &self.inner {
            Ok(Backend::Dns(resolver)) => resolver,
            #[cfg(test)]
            Ok(Backend::Fixed(ip)) => return Ok(vec![*ip]),
            Err(e) => return Err(LookupError::Failed(e.clone())),
        };
        match tokio::time::timeout(self.timeout, resolver.lookup_ip(host)).await {
            Err(_) => Err(LookupError::Timeout),
            Ok(Ok(lookup)) => {
                let addresses: Vec<IpAddr> = lookup.iter().collect();
                if addresses.is_empty() {
                    Err(LookupError::NoAddress)
                } else {
                    Ok(addresses)
                }
            }
            Ok(Err(error)) if error.is_no_records_found() => Err(LookupError::NoAddress),
            Ok(Err(error)) => Err(LookupError::Failed(error.to_string())),
        }
    }
}

/// A resolver and the settings it was built with.
type Current = Option<(ResolverSettings, Arc<Resolver>)>;

/// The resolver in use, kept across snapshots: a reload that keeps the DNS settings keeps
/// the resolver and its cache.
#[derive(Clone, Default)]
pub struct Resolvers {
    current: Arc<Mutex<Current>>,
}

impl Resolvers {
    /// Unit tests: a resolver that answers `ip` for every name, off the network.
    #[cfg(test)]
    pub fn answering(ip: IpAddr) -> Resolvers {
        let settings = ResolverSettings {
            nameservers: Vec::new(),
            timeout: Duration::from_millis(400),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            cache_size: 0,
        };
        let resolver = Resolver {
            inner: Ok(Backend::Fixed(ip)),
            timeout: settings.timeout,
        };
        Resolvers {
            current: Arc::new(Mutex::new(Some((settings, Arc::new(resolver))))),
        }
    }

    /// The resolver for `settings`: the current one when its settings are the same.
    pub fn get(&self, settings: &ResolverSettings) -> Arc<Resolver> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(test)]
        if let Some((_, resolver)) = current.as_ref()
            && matches!(resolver.inner, Ok(Backend::Fixed(_)))
        {
            return resolver.clone();
        }
        if let Some((kept, resolver)) = current.as_ref()
            && kept == settings
        {
            return resolver.clone();
        }
        let resolver = Arc::new(Resolver::new(settings));
        *current = Some((settings.clone(), resolver.clone()));
        resolver
    }
}
