//! A TCP proxy a test owns, to take a server "down" and back without
//! touching the shared server: down, it cuts every connection and refuses
//! new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A running proxy to `upstream`.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let up = Arc::clone(&up);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Proxy {
            addr,
            up,
            connections,
            accept,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// The test PostgreSQL server's URL (`FLOWPULSE_TEST_DATABASE_URL`, else the
/// local one), its database part included.
pub fn database_url() -> String {
    std::env::var("FLOWPULSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The test PostgreSQL server's `host:port`, for a proxy in front of it.
pub fn database_addr() -> SocketAddr {
    let base = database_url();
    base.rsplit_once('@')
        .map_or(base.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("host:port of the test database")
}
