//! DNS stand-ins for Portcullis's resolver (the network guard resolves every host name; Envoy
//! resolves none). [`LoopbackDns`]: every name is 127.0.0.1, so tests can use real
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

    /// The `network_guard` section that makes Portcullis resolve through this server (and
    /// reach loopback, where these names point).
    pub fn guard_config(&self) -> String {
        format!(
            "\nnetwork_guard:\n  allow_cidrs: [127.0.0.0/8]\n  nameservers: [\"127.0.0.1:{}\"]\n",
            self.port
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

/// A UDP DNS server that answers what the test says: each listed name has a script of
/// addresses, answered one per A query in turn (cycling), every answer with TTL 0 so no
/// resolver may keep it. A v4 entry answers A queries, a v6 entry AAAA queries (an A query
/// on a v6 entry has no data, and a AAAA query answers the entry of the last A query).
/// Names not listed: NXDOMAIN. Lives as long as the test process.
pub struct ScriptedDns {
    pub port: u16,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedDns {
    pub fn start(script: &[(&str, &[&str])]) -> ScriptedDns {
        use std::collections::HashMap;
        use std::net::IpAddr;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut entries: HashMap<String, (Vec<IpAddr>, usize)> = script
            .iter()
            .map(|(name, answers)| {
                let answers = answers.iter().map(|a| a.parse().unwrap()).collect();
                (name.to_ascii_lowercase(), (answers, 0))
            })
            .collect();
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf) {
                let Some(question) = Question::parse(&buf[..len]) else {
                    continue;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let answer = entries.get_mut(&question.name).map(|(answers, next)| {
                    let at = if question.qtype == 1 {
                        let at = *next % answers.len();
                        *next += 1;
                        at
                    } else {
                        (*next + answers.len() - 1) % answers.len()
                    };
                    answers[at]
                });
                let reply = question.reply(&buf[..len], answer);
                let _ = socket.send_to(&reply, peer);
            }
        });
        ScriptedDns { port, queries }
    }

    /// How many queries arrived so far.
    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Question {
    /// Lower case, without the root dot.
    name: String,
    qtype: u16,
    /// Where the question section ends.
    end: usize,
}

impl Question {
    fn parse(query: &[u8]) -> Option<Question> {
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = *query.get(at)? as usize;
            at += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        Some(Question {
            name: labels.join("."),
            qtype,
            end: at + 4,
        })
    }

    /// NXDOMAIN without an entry; the entry when its family is the one asked; else no data.
    fn reply(&self, query: &[u8], entry: Option<std::net::IpAddr>) -> Vec<u8> {
        use std::net::IpAddr;
        let record: Option<(u16, Vec<u8>)> = match (entry, self.qtype) {
            (Some(IpAddr::V4(v4)), 1) => Some((1, v4.octets().to_vec())),
            (Some(IpAddr::V6(v6)), 28) => Some((28, v6.octets().to_vec())),
            _ => None,
        };
        let mut reply = Vec::with_capacity(self.end + 32);
        reply.extend_from_slice(&query[0..2]);
        // Response, recursion desired and available; rcode 3 (NXDOMAIN) for unknown names.
        reply.extend_from_slice(&[0x81, if entry.is_some() { 0x80 } else { 0x83 }]);
        reply.extend_from_slice(&[0, 1, 0, u8::from(record.is_some()), 0, 0, 0, 0]);
        reply.extend_from_slice(&query[12..self.end]);
        if let Some((rtype, data)) = record {
            reply.extend_from_slice(&[0xc0, 0x0c]);
            reply.extend_from_slice(&rtype.to_be_bytes());
            reply.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
            reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
            reply.extend_from_slice(&data);
        }
        reply
    }
}
