//! The network guard: after a request is allowed and before Envoy connects, the address it
//! will connect to is resolved here and vetted. Internal addresses (loopback, private,
//! link-local and cloud metadata, CGNAT, multicast, unspecified, broadcast, reserved — and
//! IPv4 ones hidden in IPv6) are refused unless the deciding policy, or the operator, allows
//! them by CIDR. The vetted address goes to Envoy in [`UPSTREAM_ADDRESS_HEADER`], which its
//! `ORIGINAL_DST` upstream clusters connect to: Envoy never resolves the name again, so a DNS
//! answer that changes between the check and the connect (rebinding) changes nothing.

pub mod address;
pub mod resolver;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use address::{InternalRange, classify};
pub use resolver::{LookupError, Resolver, ResolverSettings, Resolvers};

use crate::vocab::DurationText;
use crate::vocab::FieldError;

/// The request header that tells Envoy's upstream clusters which address to connect to.
/// Portcullis sets it on every request it allows (whatever the workload sent in it); the
/// clusters remove it before the request leaves.
pub const UPSTREAM_ADDRESS_HEADER: &str = "x-portcullis-upstream-address";

/// Envoy waits 0.5 s (`message_timeout`) for a decision: resolution must fit inside.
const MAX_TIMEOUT: Duration = Duration::from_millis(450);

/// `network_guard:` — which internal addresses allowed requests may still reach, and how
/// host names are resolved.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkGuardConfig {
    /// Internal ranges every allowed request may reach, whatever policy allowed it, e.g.
    /// `[10.20.0.0/16]`. DANGEROUS: a workload allowed any host name (a wildcard) can then
    /// reach these ranges by pointing a name at them. Prefer a CIDR rule in the one policy
    /// that needs the range. `[0.0.0.0/0, "::/0"]` turns the guard off. Default: none.
    pub allow_cidrs: Vec<String>,
    /// DNS servers, `IP` or `IP:PORT` (port 53 by default). Default: the system's
    /// (`/etc/resolv.conf`, and `/etc/hosts`).
    pub nameservers: Vec<String>,
    /// The most one resolution may take, retries included; at most 450ms, inside Envoy's
    /// 0.5 s wait for a decision. Default 400ms.
    pub timeout: DurationText,
    /// Answers are kept at least this long, whatever their TTL. Default 5s.
    pub min_ttl: DurationText,
    /// And at most this long. Default 5m.
    pub max_ttl: DurationText,
    /// "No such name" is kept at most this long. Default 5s.
    pub negative_ttl: DurationText,
}

impl Default for NetworkGuardConfig {
    fn default() -> Self {
        NetworkGuardConfig {
            allow_cidrs: Vec::new(),
            nameservers: Vec::new(),
            timeout: DurationText(Duration::from_millis(400)),
            min_ttl: DurationText(Duration::from_secs(5)),
            max_ttl: DurationText(Duration::from_secs(300)),
            negative_ttl: DurationText(Duration::from_secs(5)),
        }
    }
}

impl NetworkGuardConfig {
    /// Every problem, with paths relative to `network_guard`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, text) in self.allow_cidrs.iter().enumerate() {
            if let Err(e) = parse_cidr(text) {
                errors.push(FieldError::new(format!("allow_cidrs[{i}]"), e));
            }
        }
        for (i, text) in self.nameservers.iter().enumerate() {
            if let Err(e) = parse_nameserver(text) {
                errors.push(FieldError::new(format!("nameservers[{i}]"), e));
            }
        }
        if self.timeout.0.is_zero() || self.timeout.0 > MAX_TIMEOUT {
            errors.push(FieldError::new(
                "timeout",
                format!(
                    "{} is out of range: more than 0s and at most 450ms (Envoy waits 0.5 s for \
                     a decision, resolution included)",
                    self.timeout
                ),
            ));
        }
        if self.min_ttl.0 > self.max_ttl.0 {
            errors.push(FieldError::new(
                "min_ttl",
                format!("{} is more than max_ttl ({})", self.min_ttl, self.max_ttl),
            ));
        }
        errors
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 10.0.0.0/8, fd00::/8) or an IP address"))
}

fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{text:?} is not a DNS server address (IP or IP:PORT)"))
}

/// The compiled guard of one snapshot.
#[derive(Debug)]
pub struct NetworkGuard {
    allow: Vec<IpNet>,
    resolver: Arc<Resolver>,
}

/// Why the guard refused a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Every address the host has is internal and not allowed.
    Internal {
        address: SocketAddr,
        internal: address::Internal,
    },
    /// The host has no address.
    Unresolved(LookupError),
}

impl NetworkGuard {
    /// Compiles a validated config; the resolver comes from `resolvers`, reused when its
    /// settings did not change.
    pub fn compile(config: &NetworkGuardConfig, resolvers: &Resolvers) -> NetworkGuard {
        let settings = ResolverSettings {
            nameservers: config
                .nameservers
                .iter()
                .filter_map(|n| parse_nameserver(n).ok())
                .collect(),
            timeout: config.timeout.0,
            min_ttl: config.min_ttl.0,
            max_ttl: config.max_ttl.0,
            negative_ttl: config.negative_ttl.0,
            cache_size: 4096,
        };
        NetworkGuard {
            allow: config
                .allow_cidrs
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
            resolver: resolvers.get(&settings),
        }
    }

    /// The address to connect to for `host` (or its IP literal `ip`) at `port`: the first
    /// of its addresses that is not internal, or that `exempt` or the operator's
    /// `allow_cidrs` allow.
    pub async fn vet(
        &self,
        host: &str,
        ip: Option<IpAddr>,
        port: u16,
        exempt: &(dyn Fn(IpAddr) -> bool + Sync),
    ) -> Result<SocketAddr, Refusal> {
        let addresses = match ip.or_else(|| address::legacy_ipv4(host).map(IpAddr::V4)) {
            Some(ip) => vec![ip],
            None => self
                .resolver
                .lookup(host)
                .await
                .map_err(Refusal::Unresolved)?,
        };
        let mut refusal = None;
        for ip in addresses {
            let connect = address::canonical(ip);
            let Some(internal) = classify(connect) else {
                return Ok(SocketAddr::new(connect, port));
            };
            let carried = internal.embedded.map(|(_, v4)| IpAddr::V4(v4));
            let allowed = |ip: IpAddr| self.allow.iter().any(|net| net.contains(&ip)) || exempt(ip);
            if allowed(connect) || carried.is_some_and(allowed) {
                return Ok(SocketAddr::new(connect, port));
            }
            refusal.get_or_insert(Refusal::Internal {
                address: SocketAddr::new(connect, port),
                internal,
            });
        }
        Err(refusal.unwrap_or(Refusal::Unresolved(LookupError::NoAddress)))
    }
}
