//! A TCP relay between Portcullis and its database that a test can cut: `block` closes every
//! open connection and stops listening, so new ones are refused (`ECONNREFUSED`, as from a
//! database that died); `unblock` listens on the same port again. `silence` stops relaying
//! on every open connection without closing it (a flow a NAT or a load balancer dropped,
//! a partition): nothing arrives and nothing reports an error; new connections go through.
//! Each instance gets its own, so one can lose the database while another keeps it.
//! `swallow_new` makes new connections a black hole (accepted, never relayed: a handshake
//! that never completes) while open ones keep relaying.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// A relay on a loopback port; it stops when dropped.
pub struct TcpProxy {
    pub port: u16,
    /// `Some`: listen on this socket; `None`: stop listening. Each command carries the
    /// sender the relay task acknowledges it on.
    listen: mpsc::UnboundedSender<(Option<std::net::TcpListener>, Done)>,
    /// Bumped to close every relayed connection.
    cut: watch::Sender<u64>,
    /// Bumped to stop relaying on every open connection, leaving it open.
    silence: watch::Sender<u64>,
    /// While true, new connections are accepted and held, never relayed.
    swallow: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

type Done = std::sync::mpsc::Sender<()>;

enum Event {
    Listen(Option<(Option<std::net::TcpListener>, Done)>),
    Accepted(std::io::Result<tokio::net::TcpStream>),
}

impl TcpProxy {
    /// Relays a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let (runtime, listener, addr) = super::loopback_server();
        let (cut, cuts) = watch::channel(0u64);
        let (silence, silences) = watch::channel(0u64);
        let (swallow, swallowing) = watch::channel(false);
        let (listen, mut commands) = mpsc::unbounded_channel();
        runtime.spawn(async move {
            let mut listener = Some(listener);
            loop {
                let event = tokio::select! {
                    command = commands.recv() => Event::Listen(command),
                    accepted = accept(listener.as_ref()) => Event::Accepted(accepted),
                };
                match event {
                    Event::Listen(None) => return,
                    Event::Listen(Some((socket, done))) => {
                        listener = socket.map(|s| TcpListener::from_std(s).unwrap());
                        let _ = done.send(());
                    }
                    Event::Accepted(Ok(mut inbound)) => {
                        // Marked seen before the next command is read: a `block` after this
                        // accept cuts this connection.
                        let mut cuts = cuts.clone();
                        cuts.borrow_and_update();
                        let mut silences = silences.clone();
                        silences.borrow_and_update();
                        if *swallowing.borrow() {
                            // Held open, unread, until a cut.
                            tokio::spawn(async move {
                                let _held = inbound;
                                let _ = cuts.changed().await;
                            });
                            continue;
                        }
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cuts.changed() => {}
                                // Both sockets stay open, unread, until a cut.
                                _ = silences.changed() => { let _ = cuts.changed().await; }
                            }
                        });
                    }
                    Event::Accepted(Err(_)) => {}
                }
            }
        });
        TcpProxy {
            port: addr.port(),
            listen,
            cut,
            silence,
            swallow,
            _runtime: runtime,
        }
    }

    /// Closes every relayed connection and refuses new ones; returns once both hold.
    pub fn block(&self) {
        self.command(None);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Stops relaying on every open connection, without closing it; new connections are
    /// relayed as before.
    pub fn silence(&self) {
        self.silence.send_modify(|n| *n += 1);
    }

    /// New connections are accepted and never relayed (`true`), or relayed again.
    pub fn swallow_new(&self, swallow: bool) {
        self.swallow.send_replace(swallow);
    }

    /// Accepts connections again, on the same port.
    pub fn unblock(&self) {
        let socket = std::net::TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("the relay cannot listen on {} again: {e}", self.port));
        socket.set_nonblocking(true).unwrap();
        self.command(Some(socket));
    }

    fn command(&self, socket: Option<std::net::TcpListener>) {
        let (done, acknowledged) = std::sync::mpsc::channel();
        self.listen.send((socket, done)).expect("the relay runs");
        acknowledged.recv().expect("the relay answers");
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}
