//! Real HTTP and SMTP receivers a test starts on loopback, standing in for
//! Slack, a webhook consumer and a mail relay: they record every request and
//! answer as the test's policy says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use warp::Filter;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// Its headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
    /// Which attempt of this `webhook-id` (or body, without one) it was, from 1.
    pub attempt: usize,
    /// The status answered (0: hung until the client gave up).
    pub answered: u16,
}

impl Hit {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// This status, at once.
    Status(u16),
    /// This status with `Retry-After: seconds`.
    RetryAfter(u16, u64),
    /// No answer until long after any client timeout.
    Hang,
}

type Policy = Arc<dyn Fn(&Hit) -> Answer + Send + Sync>;

/// A running HTTP receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    server: tokio::task::AbortHandle,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start(policy: impl Fn(&Hit) -> Answer + Send + Sync + 'static) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), policy).await
    }

    /// Starts on `addr` (a port a test reserved earlier, to come "back up").
    pub async fn start_on(
        addr: SocketAddr,
        policy: impl Fn(&Hit) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let policy: Policy = Arc::new(policy);
        let recorded = Arc::clone(&hits);
        let route = warp::post()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let hits = Arc::clone(&recorded);
                let policy = Arc::clone(&policy);
                async move {
                    let headers: HashMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let key = headers
                        .get("webhook-id")
                        .cloned()
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    let mut hit = Hit {
                        at: Instant::now(),
                        headers,
                        body: body.to_vec(),
                        attempt: 0,
                        answered: 0,
                    };
                    let answer = {
                        let mut hits = hits.lock().unwrap();
                        hit.attempt = 1 + hits
                            .iter()
                            .filter(|h| {
                                h.headers.get("webhook-id").cloned().unwrap_or_else(|| {
                                    String::from_utf8_lossy(&h.body).into_owned()
                                }) == key
                            })
                            .count();
                        let answer = policy(&hit);
                        hit.answered = match answer {
                            Answer::Status(s) | Answer::RetryAfter(s, _) => s,
                            Answer::Hang => 0,
                        };
                        hits.push(hit);
                        answer
                    };
                    let reply = |status: u16| {
                        warp::http::Response::builder()
                            .status(status)
                            .body(format!("answer {status}"))
                            .unwrap()
                    };
                    match answer {
                        Answer::Status(s) => reply(s),
                        Answer::RetryAfter(s, secs) => {
                            let mut r = reply(s);
                            r.headers_mut()
                                .insert("retry-after", secs.to_string().parse().unwrap());
                            r
                        }
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            reply(200)
                        }
                    }
                }
            });
        let server = tokio::spawn(warp::serve(route).incoming(listener).run()).abort_handle();
        Receiver { addr, hits, server }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until `done(hits)` holds; the hits then.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + limit;
        loop {
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get what was expected within {limit:?}; it got {} requests: {:#?}",
                hits.len(),
                hits.iter().map(|h| (h.attempt, h.answered, String::from_utf8_lossy(&h.body).chars().take(300).collect::<String>())).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops listening (connections are refused from now on).
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A free loopback port, released for someone else to bind.
pub fn reserve_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One message an SMTP server took.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` argument.
    pub from: String,
    /// `RCPT TO` arguments.
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed).
    pub data: String,
}

/// A minimal SMTP server (RFC 5321's plain-text subset lettre speaks
/// without TLS), in process on a free loopback port. It answers `451` to
/// the first `temp_failures` messages' `DATA`, then takes them, and `550`
/// to a recipient whose address starts with `gone@`.
pub struct SmtpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Messages taken.
    pub mails: Arc<Mutex<Vec<Mail>>>,
    /// Messages answered with a temporary failure.
    pub refused: Arc<Mutex<usize>>,
    task: tokio::task::AbortHandle,
}

impl SmtpServer {
    /// Starts the server.
    pub async fn start(temp_failures: usize) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let refused: Arc<Mutex<usize>> = Arc::default();
        let (m, r) = (Arc::clone(&mails), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (m, r) = (Arc::clone(&m), Arc::clone(&r));
                tokio::spawn(async move {
                    let _ = session(stream, m, r, temp_failures).await;
                });
            }
        })
        .abort_handle();
        SmtpServer {
            addr,
            mails,
            refused,
            task,
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
    refused: Arc<Mutex<usize>>,
    temp_failures: usize,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 test ESMTP ready\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            write
                .write_all(b"250-test greets you\r\n250 8BITMIME\r\n")
                .await?;
        } else if upper.starts_with("HELO") {
            write.write_all(b"250 test\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_owned();
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            // An address that is gone, as relays answer for one.
            if upper.contains("GONE@") {
                write.write_all(b"550 no such user\r\n").await?;
                continue;
            }
            to.push(line[8..].trim().to_owned());
            write.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                let l = l.strip_prefix('.').unwrap_or(&l);
                data.push_str(l);
                data.push_str("\r\n");
            }
            let fail = {
                let mut n = refused.lock().unwrap();
                if *n < temp_failures {
                    *n += 1;
                    true
                } else {
                    false
                }
            };
            if fail {
                write.write_all(b"451 try again later\r\n").await?;
            } else {
                mails.lock().unwrap().push(Mail {
                    from: from.clone(),
                    to: to.clone(),
                    data,
                });
                write.write_all(b"250 queued\r\n").await?;
            }
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            write.write_all(b"250 OK\r\n").await?;
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
    Ok(())
}
