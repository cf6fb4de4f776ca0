//! A DNS stand-in for Envoy's resolver: every name is 127.0.0.1, so tests can use real
//! host names (`allowed.test`) for upstreams on loopback, with SNI and certificate names
//! that match them, and nothing reaches a real DNS server.

use std::net::UdpSocket;

/// A UDP DNS server answering every A query with 127.0.0.1 (other types: no data).
/// Lives as long as the test process.
pub struct LoopbackDns {
    pub port: u16,
}

impl LoopbackDns {
    pub fn start() -> LoopbackDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf) {
                if let Some(reply) = answer(&buf[..len]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        LoopbackDns { port }
    }

    /// The Envoy edit that points the dynamic forward proxy's DNS cache at this server.
    pub fn envoy_edit(&self) -> (String, String) {
        let indent = " ".repeat(16);
        (
            format!("{indent}name: portcullis_dns\n"),
            format!(
                "{indent}name: portcullis_dns\n\
                 {indent}typed_dns_resolver_config:\n\
                 {indent}  name: envoy.network.dns_resolver.cares\n\
                 {indent}  typed_config:\n\
                 {indent}    \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig\n\
                 {indent}    resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}]\n\
                 {indent}    dns_resolver_options: {{no_default_search_domain: true}}\n",
                self.port
            ),
        )
    }
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        at += len;
    }
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let is_a = qtype == 1;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[0..2]);
    reply.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
    reply.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if is_a {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(reply)
}
