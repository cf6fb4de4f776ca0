//! A gateway with its upstream, and every reply a test got: what the secrets tests drive,
//! so each can end by checking that no credential leaked into anything it saw.

use super::{Gateway, Reply, Seen, Upstream};

pub struct Session {
    pub gw: Gateway,
    pub upstream: Upstream,
    /// Every reply so far, for the leak check.
    pub replies: Vec<Reply>,
}

impl Session {
    pub fn new(gw: Gateway, upstream: Upstream) -> Session {
        Session {
            gw,
            upstream,
            replies: Vec::new(),
        }
    }

    /// The upstream at `path`, reached as `127.0.0.1`.
    pub fn url(&self, path: &str) -> String {
        self.url_at("127.0.0.1", path)
    }

    /// The upstream at `path`, reached under another name (`localhost`).
    pub fn url_at(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.upstream.port())
    }

    /// Sends through the forward proxy; keeps the reply, for the leak check. The status
    /// must be looked at: every reply kept is fed to the leak check, which proves nothing
    /// about a reply that is not the one the test expected.
    #[must_use = "assert the status: the reply is fed to the leak check"]
    pub fn send(&mut self, args: &[&str]) -> u16 {
        let reply = self.gw.via_proxy(args);
        let status = reply.status;
        self.replies.push(reply);
        status
    }

    #[must_use = "assert the status: the reply is fed to the leak check"]
    pub fn get(&mut self, path: &str) -> u16 {
        let url = self.url(path);
        self.send(&[&url])
    }

    pub fn last(&self) -> &Reply {
        self.replies.last().expect("a reply")
    }

    /// The newest request the upstream saw at `path` (with query).
    pub fn seen(&self, path: &str) -> Seen {
        self.upstream
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("upstream never saw {path}: {:?}", self.upstream.seen()))
    }

    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        self.seen(path).header(name).map(str::to_owned)
    }

    /// No sentinel in anything the gateway wrote, the metrics, or any reply kept. Each
    /// kept reply's status was asserted where it was sent (`send` and `get` are
    /// `must_use`); here each must at least be a whole answer (a response, or the proxy's
    /// refusal of a CONNECT).
    pub fn assert_no_leaks(&self, sentinels: &[&str]) {
        let replies: Vec<(&Reply, u16)> = self
            .replies
            .iter()
            .map(|r| {
                assert!(
                    r.answered() != 0,
                    "no whole answer, nothing to check: {r:?}"
                );
                (r, r.answered())
            })
            .collect();
        self.gw.assert_no_leaks_checked(sentinels, &replies);
    }
}
