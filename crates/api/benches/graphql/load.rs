//! The load generator of the GraphQL benchmark: closed-loop and paced (open-loop)
//! runners, latency statistics, a SQL statement counter, and one keep-alive HTTP
//! connection per client on hyper's connection API.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;

// ------------------------------------------------------------------ settings, statistics

pub(crate) fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub(crate) fn scale() -> f64 {
    env_f64("BENCH_SCALE", 1.0)
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) errors: usize,
    pub(crate) secs: f64,
    pub(crate) lat: Vec<Duration>,
}

impl Stats {
    pub(crate) fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
    pub(crate) fn pct(&mut self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        self.lat.sort_unstable();
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1000.0
    }
    pub(crate) fn add(&mut self, ok: bool, latency: Duration) {
        self.lat.push(latency);
        if ok {
            self.n += 1;
        } else {
            self.errors += 1;
        }
    }
    pub(crate) fn merge(&mut self, other: Stats) {
        self.n += other.n;
        self.errors += other.errors;
        self.lat.extend(other.lat);
    }
}

/// `clients` tasks, each calling `op(client index, iteration)` until `dur` has passed or
/// `budget` requests were made in all; `op` answers whether the request succeeded.
pub(crate) async fn run<F, Fut>(clients: usize, dur: Duration, budget: i64, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let left = Arc::new(AtomicI64::new(budget));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
            let mut i = 0;
            while start.elapsed() < dur && left.fetch_sub(1, Ordering::Relaxed) > 0 {
                let t = Instant::now();
                let ok = op(c, i).await;
                st.add(ok, t.elapsed());
                i += 1;
            }
            st
        }));
    }
    let mut st = Stats::default();
    for t in tasks {
        st.merge(t.await.unwrap());
    }
    st.secs = start.elapsed().as_secs_f64();
    st
}

/// Open loop: `rate` requests a second for `dur`, each scheduled at a fixed time and
/// taken by whichever of the `clients` connections is free. Latency counts from the
/// scheduled time, so a server that falls behind is charged for the wait (no coordinated
/// omission: a slow answer does not slow the arrivals down).
pub(crate) async fn run_paced<F, Fut>(clients: usize, rate: f64, dur: Duration, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let total = (rate * dur.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let at = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(at).await;
                let ok = op(c, k as usize).await;
                st.add(ok, at.elapsed());
            }
            st
        }));
    }
    let mut st = Stats::default();
    for t in tasks {
        st.merge(t.await.unwrap());
    }
    st.secs = start.elapsed().as_secs_f64();
    st
}

// ------------------------------------------------------------------ SQL statement counter

pub(crate) static COUNTING: AtomicBool = AtomicBool::new(false);
pub(crate) static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// Counts sqlx's per-statement events (target `sqlx::query`) while `COUNTING` is on; every
/// other event is disabled at its call site, so outside the counting pass this costs one
/// relaxed load per statement.
pub(crate) struct CountSql;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountSql {
    fn register_callsite(&self, m: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if m.target() == "sqlx::query" {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
    fn enabled(&self, m: &tracing::Metadata<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        m.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------ load generator

/// One keep-alive HTTP/1.1 connection of a load client, on hyper's connection API: no
/// pool, no URL parsing, request bodies and header values built before the phase starts
/// (as `wrk` or `oha` would), so that the load generator, which shares the machine's two
/// cores with the server and PostgreSQL, takes as little of them as it can.
pub(crate) struct Conn {
    addr: SocketAddr,
    /// `None` after a transport error: the next request opens a new connection.
    send: tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    host: HeaderValue,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Conn {
    async fn connect(addr: SocketAddr) -> Option<Sender> {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.set_nodelay(true).ok()?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        Some(send)
    }

    pub(crate) async fn open(addr: SocketAddr) -> Conn {
        let send = Conn::connect(addr).await;
        assert!(send.is_some(), "cannot connect to the server");
        Conn {
            addr,
            send: tokio::sync::Mutex::new(send),
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
        }
    }

    /// POST `body` to /graphql; the response body when the status is 2xx. A transport
    /// error drops the connection (counted as a failed request by the caller).
    pub(crate) async fn post(&self, bearer: Option<HeaderValue>, body: Bytes) -> Option<Bytes> {
        let mut req = hyper::Request::post("/graphql").body(Full::new(body)).unwrap();
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("graphql-bench/1"));
        if let Some(b) = bearer {
            h.insert(header::AUTHORIZATION, b);
        }
        let mut guard = self.send.lock().await;
        if guard.is_none() {
            *guard = Conn::connect(self.addr).await;
        }
        let send = guard.as_mut()?;
        let sent = match send.ready().await {
            Ok(()) => send.send_request(req).await,
            Err(e) => Err(e),
        };
        let Ok(resp) = sent else {
            *guard = None;
            return None;
        };
        drop(guard);
        // The body is read whatever the status, so the connection stays usable.
        let ok = resp.status().is_success();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        ok.then_some(body)
    }
}
