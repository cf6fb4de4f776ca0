//! The outbound request as Portcullis sees it, independent of how Envoy delivered it:
//! method, normalized host/port/path, headers, and where it came from; the body, when it
//! was buffered, travels beside it.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::identity::Identity;
use crate::inspect::{ActionType, Body, classify_path};
use crate::mcp::{Inbound, Message};
use crate::policy::rule::split_host_port;

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

/// What rules are matched against: borrowed, normalized views of an [`OutboundRequest`],
/// with the body and identity where the caller has them.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: Method,
    /// The method as sent (differs from `method.as_str()` only for non-standard ones).
    pub method_name: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Lower case, without trailing dot or port; an IPv6 literal without brackets.
    pub host: &'a str,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// Normalized path without query; empty for CONNECT.
    pub path: &'a str,
    /// Request headers, names lower case.
    pub headers: &'a [(String, Vec<u8>)],
    /// A CONNECT whose payload Envoy decrypts, each request inside decided on its own.
    pub intercepted: bool,
    /// The buffered request body (empty for a request without one); `None` when it was
    /// not buffered because nothing deciding the request needs it.
    pub body: Option<&'a Body<'a>>,
    /// The JSON-RPC message being decided, when an MCP batch is decided entry by entry.
    pub message: Option<&'a Message>,
    /// Who sent it, once resolved (CEL conditions read it).
    pub identity: Option<&'a Identity>,
    /// Set when deciding a hypothetical tool call whose arguments are unknown (is a tool
    /// worth listing?): CEL expressions that read the body are not run but taken to give
    /// this value.
    pub unknown_args: Option<bool>,
}

impl<'a> RequestFacts<'a> {
    pub fn is_connect(&self) -> bool {
        self.method == Method::Connect
    }

    pub fn method_name(&self) -> &'a str {
        self.method_name
    }

    /// The MCP message this request carries, when it is a single one (or the one being
    /// decided in a batch).
    pub fn mcp_message(&self) -> Option<&'a Message> {
        if self.message.is_some() {
            return self.message;
        }
        match self.body?.mcp()? {
            Ok(Inbound::Single(message)) => Some(message),
            _ => None,
        }
    }

    /// The MCP `tools/call` this request makes: the tool's name and arguments.
    pub fn tool_call(&self) -> Option<(&'a str, &'a serde_json::Value)> {
        self.mcp_message()?.tool_call()
    }

    /// What the request is doing ([`crate::inspect`]).
    pub fn action_type(&self) -> ActionType {
        if let Some(llm) = classify_path(self.method, self.path) {
            return llm;
        }
        if let Some(message) = self.message {
            return if message.tool_call().is_some() {
                ActionType::ToolCall
            } else {
                ActionType::McpRequest
            };
        }
        match self.body.and_then(Body::mcp) {
            Some(Ok(Inbound::Single(message))) if message.tool_call().is_some() => {
                ActionType::ToolCall
            }
            Some(Ok(Inbound::Batch(messages)))
                if messages.iter().any(|m| m.tool_call().is_some()) =>
            {
                ActionType::ToolCall
            }
            Some(_) => ActionType::McpRequest,
            None if self
                .headers
                .iter()
                .any(|(n, _)| n == "mcp-session-id" || n == "mcp-protocol-version") =>
            {
                ActionType::McpRequest
            }
            None => ActionType::HttpRequest,
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
        }
    }

    /// What rules match against. The body and identity are not part of the request: set
    /// [`RequestFacts::body`] where it was buffered and [`RequestFacts::identity`] once
    /// resolved.
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: self.method,
            method_name: &self.method_name,
            scheme: &self.scheme,
            host: &self.host,
            port: self.port,
            ip: self.ip,
            path: &self.path,
            headers: &self.headers,
            intercepted: self.intercepted,
            body: None,
            message: None,
            identity: None,
            unknown_args: None,
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
    #[error("request has no :authority (Host) header")]
    MissingAuthority,
    #[error("request has no :path")]
    MissingPath,
    #[error("invalid authority {authority:?}: {why}")]
    InvalidAuthority { authority: String, why: String },
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
}

/// A parsed authority.
#[derive(Debug, Clone, PartialEq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
}

/// Parses `host[:port]`: lower-cases the name, drops a trailing dot, strips IPv6 brackets
/// and canonicalises IP literals, so `EXAMPLE.com.:443` and `example.com:443` compare equal.
pub fn parse_authority(authority: &str) -> Result<Authority, String> {
    if authority.is_empty() {
        return Err("empty".into());
    }
    if authority.contains('@') {
        return Err("userinfo is not allowed in an authority".into());
    }
    let (name, port) = split_host_port(authority)?;
    if let Ok(ip) = IpAddr::from_str(name) {
        return Ok(Authority {
            host: ip.to_string(),
            port,
            ip: Some(ip),
        });
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty host".into());
    }
    if let Some(bad) = name
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return Err(format!("host contains {:?}", bad as char));
    }
    Ok(Authority {
        host: name.to_ascii_lowercase(),
        port,
        ip: None,
    })
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

impl RawRequest<'_> {
    /// Validates and normalizes. `scheme_override` is the upstream scheme when the listener
    /// knows better than the request (base-URL mode: the workload speaks http, Envoy https).
    pub fn normalize(&self, scheme_override: Option<&str>) -> Result<RequestTarget, RequestError> {
        let method_bytes = self
            .method
            .filter(|m| !m.is_empty())
            .ok_or(RequestError::MissingMethod)?;
        let method = Method::from_bytes(method_bytes);
        let method_name = String::from_utf8_lossy(method_bytes).into_owned();
        let authority_bytes = self
            .authority
            .filter(|a| !a.is_empty())
            .ok_or(RequestError::MissingAuthority)?;
        let authority_text =
            std::str::from_utf8(authority_bytes).map_err(|_| RequestError::InvalidAuthority {
                authority: String::from_utf8_lossy(authority_bytes).into_owned(),
                why: "not UTF-8".into(),
            })?;
        let authority =
            parse_authority(authority_text).map_err(|why| RequestError::InvalidAuthority {
                authority: authority_text.to_owned(),
                why,
            })?;
        let scheme = match scheme_override {
            Some(s) => s.to_owned(),
            None => match self.scheme {
                Some(s) if !s.is_empty() => String::from_utf8_lossy(s).to_ascii_lowercase(),
                _ => "http".to_owned(),
            },
        };
        let (port, path) = if method == Method::Connect {
            (authority.port.unwrap_or(443), String::new())
        } else {
            let raw_path = self
                .path
                .filter(|p| !p.is_empty())
                .ok_or(RequestError::MissingPath)?;
            let raw_path = std::str::from_utf8(raw_path)
                .map_err(|_| RequestError::InvalidPath("not UTF-8".into()))?;
            let path = normalize_path(raw_path).map_err(RequestError::InvalidPath)?;
            (
                authority.port.unwrap_or_else(|| default_port(&scheme)),
                path.into_owned(),
            )
        };
        Ok(RequestTarget {
            method,
            method_name,
            scheme,
            authority,
            port,
            path,
        })
    }
}

/// Normalizes a request path for matching: drops the query and fragment, decodes
/// percent-encoded unreserved characters (so `%2e` is `.`, `%61` is `a`), upper-cases the
/// hex of the escapes it keeps (`%2f` → `%2F`), merges repeated slashes and resolves `.`
/// and `..` segments. An absolute-form path (`http://host/p`) is reduced to its path.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, String> {
    let mut path = raw;
    if let Some(i) = path.find(['?', '#']) {
        path = &path[..i];
    }
    if !path.starts_with('/') {
        if path == "*" {
            // OPTIONS * — server-wide; nothing to normalize.
            return Ok(Cow::Borrowed(path));
        }
        return Err(format!("path {:?} does not start with '/'", truncate(raw)));
    }
    let needs_work = path.contains('%') || path.contains("//") || path.contains("/.");
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn decode_unreserved(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| "malformed percent-escape".to_string())?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("00"), 16)
                .map_err(|_| "malformed percent-escape".to_string())?;
            if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                out.push(value as char);
            } else {
                out.push('%');
                out.push(hex[0].to_ascii_uppercase() as char);
                out.push(hex[1].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Copy the run up to the next escape in one go (keeps multi-byte chars whole).
            let next = path[i..].find('%').map_or(bytes.len(), |j| i + j);
            out.push_str(&path[i..next]);
            i = next;
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over `/`-separated segments, also merging empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_normalization_table() {
        let cases = [
            ("/", "/"),
            ("/repos/a?x=1", "/repos/a"),
            ("/a#frag", "/a"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc", "/etc"),
            ("/a/%2e%2e/b", "/b"),
            ("/%61dmin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/ünï", "/ünï"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalize_path(raw).unwrap(),
                want,
                "normalize_path({raw:?})"
            );
        }
        assert!(normalize_path("/a%zz").is_err());
        assert!(normalize_path("/a%2").is_err());
        assert!(normalize_path("relative").is_err());
    }

    #[test]
    fn authority_table() {
        let ok = [
            ("Example.COM", "example.com", None),
            ("example.com.", "example.com", None),
            ("example.com.:8443", "example.com", Some(8443)),
            ("127.0.0.1:80", "127.0.0.1", Some(80)),
            ("[::1]:443", "::1", Some(443)),
            ("[0:0::1]", "::1", None),
        ];
        for (input, host, port) in ok {
            let a = parse_authority(input).unwrap();
            assert_eq!((a.host.as_str(), a.port), (host, port), "{input}");
        }
        for bad in [
            "",
            "user@host",
            "host:0",
            "host:99999",
            "ho st",
            "[::1",
            ":80",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn connect_takes_port_from_authority_and_has_no_path() {
        let raw = RawRequest {
            method: Some(b"CONNECT"),
            scheme: None,
            authority: Some(b"api.github.com:443"),
            path: None,
        };
        let target = raw.normalize(None).unwrap();
        assert_eq!(target.method, Method::Connect);
        assert_eq!(target.authority.host, "api.github.com");
        assert_eq!(target.port, 443);
        assert_eq!(target.path, "");
    }

    #[test]
    fn missing_pieces_are_request_errors() {
        let raw = RawRequest {
            method: Some(b"GET"),
            scheme: Some(b"http"),
            authority: None,
            path: Some(b"/"),
        };
        assert_eq!(raw.normalize(None), Err(RequestError::MissingAuthority));
        let raw = RawRequest {
            method: Some(b"GET"),
            scheme: Some(b"http"),
            authority: Some(b"a.example"),
            path: None,
        };
        assert_eq!(raw.normalize(None), Err(RequestError::MissingPath));
    }

    #[test]
    fn scheme_override_sets_default_port() {
        let raw = RawRequest {
            method: Some(b"GET"),
            scheme: Some(b"http"),
            authority: Some(b"api.github.com"),
            path: Some(b"/user"),
        };
        let target = raw.normalize(Some("https")).unwrap();
        assert_eq!((target.scheme.as_str(), target.port), ("https", 443));
        let target = raw.normalize(None).unwrap();
        assert_eq!((target.scheme.as_str(), target.port), ("http", 80));
    }
}
