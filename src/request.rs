//! The outbound request as Portcullis sees it, independent of how Envoy delivered it:
//! method, normalized host/port/path, headers, and where it came from; the body, when it
//! was buffered, travels beside it.

mod host;
pub use host::parse_ipv4_forms;
mod path;

use std::net::{IpAddr, SocketAddr};

pub use host::{
    Authority, Host, canonical_host, canonical_ip, canonical_net, parse_authority, split_host_port,
};
pub use path::{EscapedSlashes, NormalPath, PathParameters, RequestConfig, normalize_path};

/// An HTTP method. The discriminant is the bit position in [`crate::policy::rule::MethodSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    Get = 0,
    Head = 1,
    Post = 2,
    Put = 3,
    Delete = 4,
    Connect = 5,
    Options = 6,
    Trace = 7,
    Patch = 8,
    /// Any non-standard method (WebDAV and the like); matched only by rules for all methods.
    Other = 15,
}

impl Method {
    pub const STANDARD: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];

    /// Methods are case-sensitive (RFC 9110); `get` is not `GET`.
    pub fn from_bytes(bytes: &[u8]) -> Method {
        match bytes {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        }
    }
}

/// A request Portcullis must decide on.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// Envoy's `x-request-id` when it is well formed, otherwise one we generated.
    pub id: String,
    pub method: Method,
    /// The method as sent, for audit (differs from `method` only for non-standard ones).
    pub method_name: String,
    /// The scheme towards the upstream: `http`, `https`.
    pub scheme: String,
    /// The authority as sent (`Host` / `:authority`, or the CONNECT target).
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
    /// Normalized path without query string; empty for CONNECT.
    pub path: String,
    /// Request headers in arrival order, names lower case, pseudo-headers included.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The downstream peer (from Envoy's `source.address` attribute).
    pub source: Option<SocketAddr>,
    /// The first URI SAN of the downstream mTLS peer certificate (a SPIFFE ID in meshes).
    pub peer_uri_san: Option<String>,
    /// The SNI the downstream presented, if TLS was terminated by Envoy.
    pub sni: Option<String>,
    /// A CONNECT on a listener that intercepts TLS: the tunnel's requests come to
    /// Portcullis one by one, so the CONNECT itself only needs a policy that could allow
    /// some request to the host.
    pub intercepted: bool,
    /// The request leaves over TLS. From Envoy's listener (`x-portcullis-upstream-scheme:
    /// https`), never from the workload's `:scheme`: the forward proxy connects in
    /// plaintext whatever scheme a request claims.
    pub upstream_tls: bool,
    /// The `:path` header was replaced by the decoded form the request is decided on
    /// (`request.escaped_slashes: decode`): Envoy must be told to forward it.
    pub path_rewritten: bool,
}

impl OutboundRequest {
    /// The query string as sent, without `?`; `None` when `:path` has none.
    pub fn query(&self) -> Option<&[u8]> {
        let path = self.header(":path")?;
        let at = memchr::memchr(b'?', path)?;
        Some(&path[at + 1..])
    }

    /// A request from its normalized target and what came with it. It leaves over TLS when
    /// its scheme says so: true offline (`portcullis check`); the ext_proc layer asks the
    /// listener instead.
    pub fn from_target(
        id: String,
        target: RequestTarget,
        authority: String,
        headers: Vec<(String, Vec<u8>)>,
        source: Option<SocketAddr>,
        peer_uri_san: Option<String>,
        sni: Option<String>,
    ) -> OutboundRequest {
        let mut headers = headers;
        let mut path_rewritten = false;
        if let Some(forward) = target.forward_path
            && let Some((_, path)) = headers.iter_mut().find(|(n, _)| n == ":path")
        {
            *path = forward.into_bytes();
            path_rewritten = true;
        }
        OutboundRequest {
            id,
            upstream_tls: target.scheme == "https",
            method: target.method,
            method_name: target.method_name,
            scheme: target.scheme,
            authority,
            host: target.authority.host,
            port: target.port,
            ip: target.authority.ip,
            path: target.path,
            headers,
            source,
            peer_uri_san,
            sni,
            intercepted: false,
            path_rewritten,
        }
    }

    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request could not be understood; answered with a 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("request has no :method")]
    MissingMethod,
    /// A standard method in another case (`delete`): some servers read it as the method,
    /// others as an unknown one, so rules written for the method cannot be trusted on it.
    #[error(
        "method {0:?} is not upper case; methods are case-sensitive and servers disagree on \
             what {0:?} means, so it is refused"
    )]
    MethodCase(String),
    #[error("request has no :authority (Host) header")]
    MissingAuthority,
    #[error("invalid authority {authority:?}: {why}")]
    InvalidAuthority { authority: String, why: String },
    /// `:authority` and `Host` (or two `Host` headers) name different hosts or ports.
    #[error("the request names more than one host ({first:?} and {second:?}), so it is refused")]
    ConflictingAuthority { first: String, second: String },
    #[error("request has no :path")]
    MissingPath,
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A request inside an intercepted tunnel names another host than the tunnel was
    /// opened (and its certificate minted) for.
    #[error("this connection was opened for {expected:?} ({by}), not for {host:?}")]
    Misdirected {
        host: String,
        expected: String,
        by: &'static str,
    },
}

/// The pieces Envoy hands over, before normalization.
pub struct RawRequest<'a> {
    pub method: Option<&'a [u8]>,
    pub scheme: Option<&'a [u8]>,
    pub authority: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    /// Every other `:authority` and `Host` value the request carries: each must name the
    /// same host and port as `authority`.
    pub other_authorities: Vec<&'a [u8]>,
}

impl<'a> RawRequest<'a> {
    /// The request line out of a header list (names lower case): `:authority`, or `Host`
    /// when there is none (HTTP/1.1 without Envoy's conversion).
    pub fn from_headers(headers: &'a [(String, Vec<u8>)]) -> RawRequest<'a> {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        let mut authorities = headers
            .iter()
            .filter(|(n, _)| n == ":authority")
            .chain(headers.iter().filter(|(n, _)| n == "host"))
            .map(|(_, v)| v.as_slice());
        let authority = authorities.next();
        RawRequest {
            method: find(":method"),
            scheme: find(":scheme"),
            authority,
            path: find(":path"),
            other_authorities: authorities.collect(),
        }
    }
}

/// The normalized request line: what [`RawRequest::normalize`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTarget {
    pub method: Method,
    pub method_name: String,
    pub scheme: String,
    pub authority: Authority,
    pub port: u16,
    pub path: String,
    /// The `:path` (query included) to forward instead of the one sent, when the upstream
    /// must see the decoded form that was decided (`request.escaped_slashes: decode`).
    pub forward_path: Option<String>,
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" | "wss" => 443,
        _ => 80,
    }
}

fn authority_of(bytes: &[u8]) -> Result<Authority, RequestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RequestError::InvalidAuthority {
        authority: String::from_utf8_lossy(bytes).into_owned(),
        why: "not UTF-8".into(),
    })?;
    parse_authority(text).map_err(|why| RequestError::InvalidAuthority {
        authority: text.to_owned(),
        why,
    })
}

impl RawRequest<'_> {
    /// Validates and normalizes. `scheme_override` is the upstream scheme when the listener
    /// knows better than the request (base-URL mode: the workload speaks http, Envoy https).
    pub fn normalize(
        &self,
        scheme_override: Option<&str>,
        config: &RequestConfig,
    ) -> Result<RequestTarget, RequestError> {
        let method_bytes = self
            .method
            .filter(|m| !m.is_empty())
            .ok_or(RequestError::MissingMethod)?;
        let method = Method::from_bytes(method_bytes);
        let method_name = String::from_utf8_lossy(method_bytes).into_owned();
        if method == Method::Other
            && Method::from_bytes(&method_bytes.to_ascii_uppercase()) != Method::Other
        {
            return Err(RequestError::MethodCase(method_name));
        }
        let authority_bytes = self
            .authority
            .filter(|a| !a.is_empty())
            .ok_or(RequestError::MissingAuthority)?;
        let authority = authority_of(authority_bytes)?;
        let scheme = match scheme_override {
            Some(s) => s.to_owned(),
            None => match self.scheme {
                Some(s) if !s.is_empty() => String::from_utf8_lossy(s).to_ascii_lowercase(),
                _ => "http".to_owned(),
            },
        };
        let default = if method == Method::Connect {
            443
        } else {
            default_port(&scheme)
        };
        let port = authority.port.unwrap_or(default);
        for other in &self.other_authorities {
            let same = authority_of(other)
                .is_ok_and(|o| o.host == authority.host && o.port.unwrap_or(default) == port);
            if !same {
                return Err(RequestError::ConflictingAuthority {
                    first: String::from_utf8_lossy(authority_bytes).into_owned(),
                    second: String::from_utf8_lossy(other).into_owned(),
                });
            }
        }
        let (path, forward_path) = if method == Method::Connect {
            (String::new(), None)
        } else {
            let raw_path = self
                .path
                .filter(|p| !p.is_empty())
                .ok_or(RequestError::MissingPath)?;
            let raw_path = std::str::from_utf8(raw_path)
                .map_err(|_| RequestError::InvalidPath("not UTF-8".into()))?;
            let normal = normalize_path(raw_path, config).map_err(RequestError::InvalidPath)?;
            let forward = normal.forward.map(|mut forward| {
                if let Some(at) = raw_path.find('?') {
                    forward.push_str(&raw_path[at..]);
                }
                forward
            });
            (normal.matched.into_owned(), forward)
        };
        Ok(RequestTarget {
            method,
            method_name,
            scheme,
            authority,
            port,
            path,
            forward_path,
        })
    }
}

#[cfg(test)]
mod tests;
