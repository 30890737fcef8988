//! Load generator for `overseer gateway`: the latency the gateway adds to an MCP `tools/call`.
//!
//! * `gateway-loadgen upstream --listen ADDR` serves a minimal MCP Streamable HTTP server at
//!   `/mcp` (`initialize` issues a session id, `tools/call` answers a small JSON result at once).
//! * `gateway-loadgen load --url URL [--api-key KEY] --sessions N --seconds S [--rate R]` opens
//!   N MCP sessions (each its own keep-alive HTTP/1.1 connection), then for S seconds after a
//!   warm-up each sends `tools/call`s — back to back (closed loop: throughput), or with `--rate`
//!   on a fixed schedule of R calls/s in all (open loop: latency at that load, each call timed
//!   from when it was due) — and prints latency percentiles (nearest rank) and throughput as one
//!   JSON line. Every answer is checked: an error or a non-result fails the run.
//!
//! * `gateway-loadgen proxy --listen ADDR --upstream URL` serves a bare reverse proxy at
//!   `/mcp`: every request is forwarded to URL with the gateway's HTTP stack (axum's server,
//!   hyper-util's pooled client, `TCP_NODELAY`), and nothing else — no authentication, no
//!   JSON-RPC parsing, no decision, no audit. What it adds is the floor any HTTP proxy hop built
//!   this way costs on the host, to tell the gateway's own work from the hop's.
//!
//! Run `load` once against the upstream directly and once through the gateway; the difference of
//! the percentiles is what the gateway adds. It only connects to the URL it is given; use loopback.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "gateway-loadgen",
    about = "Load generator for the Overseer MCP gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a minimal MCP server at http://ADDR/mcp.
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3300")]
        listen: SocketAddr,
    },
    /// Serve a bare reverse proxy at http://ADDR/mcp forwarding every request to UPSTREAM (no
    /// authentication, no decision, no audit): the floor of a proxy hop.
    Proxy {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3301")]
        listen: SocketAddr,
        /// Where every request goes.
        #[arg(long, default_value = "http://127.0.0.1:3300/mcp")]
        upstream: hyper::Uri,
    },
    /// Measure tools/call latency against an MCP endpoint.
    Load {
        /// MCP endpoint (the upstream's `/mcp`, or the gateway's `/mcp/{name}`).
        #[arg(long)]
        url: String,
        /// Bearer key (the gateway's agent key).
        #[arg(long)]
        api_key: Option<String>,
        /// Concurrent sessions (one connection each).
        #[arg(long, default_value_t = 16)]
        sessions: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Warm-up seconds (not measured).
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Tool to call.
        #[arg(long, default_value = "echo")]
        tool: String,
        /// Open loop: send this many calls per second in all (spread evenly over the sessions,
        /// each on a fixed schedule) and measure each call from its scheduled time, so queueing
        /// is counted. Without it every session sends back to back (closed loop: throughput).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Upstream { listen } => upstream(listen).await,
            Cmd::Proxy { listen, upstream } => bare_proxy(listen, upstream).await,
            Cmd::Load {
                url,
                api_key,
                sessions,
                seconds,
                warmup,
                tool,
                rate,
            } => {
                load(
                    &url,
                    api_key.as_deref(),
                    Shape {
                        sessions,
                        seconds,
                        warmup,
                        rate,
                    },
                    &tool,
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

static SESSIONS: AtomicU64 = AtomicU64::new(0);

async fn mcp(headers: HeaderMap, body: Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let json_ct = [(header::CONTENT_TYPE, "application/json")];
    match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => {
            let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
            let body = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"loadgen-upstream","version":"1"}}});
            (
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (
                        header::HeaderName::from_static("mcp-session-id"),
                        format!("loadgen-{n}"),
                    ),
                ],
                body.to_string(),
            )
                .into_response()
        }
        Some(_) if id.is_null() => StatusCode::ACCEPTED.into_response(),
        Some("tools/call") if headers.contains_key("mcp-session-id") => (
            json_ct,
            json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"ok"}]}})
                .to_string(),
        )
            .into_response(),
        _ => (
            json_ct,
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"unsupported"}})
                .to_string(),
        )
            .into_response(),
    }
}

/// Serve `app` on `listen` (`TCP_NODELAY` on every connection, as the gateway does), saying
/// what it is.
async fn serve(listen: SocketAddr, what: &str, app: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("{what} on http://{listen}/mcp");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upstream(listen: SocketAddr) -> anyhow::Result<()> {
    serve(
        listen,
        "MCP upstream",
        Router::new().route("/mcp", post(mcp)),
    )
    .await
}

/// Request headers the bare proxy passes on (those the gateway passes that the load sends).
const RELAYED: &[&str] = &[
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
];

async fn bare_proxy(listen: SocketAddr, upstream: hyper::Uri) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let relay = move |method: Method, headers: HeaderMap, body: Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let mut request = hyper::Request::builder().method(method).uri(upstream);
            if let Some(h) = request.headers_mut() {
                for name in RELAYED {
                    for value in headers.get_all(*name) {
                        h.append(header::HeaderName::from_static(name), value.clone());
                    }
                }
            }
            let request = match request.body(Full::new(body)) {
                Ok(r) => r,
                Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            };
            match client.request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, axum::body::Body::new(body))
                }
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    };
    serve(
        listen,
        "bare proxy",
        Router::new().route("/mcp", any(relay)),
    )
    .await
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

struct Session {
    sender: Sender,
    uri: hyper::Uri,
    authorization: Option<String>,
    id: Option<String>,
}

impl Session {
    async fn connect(uri: &hyper::Uri, key: Option<&str>) -> anyhow::Result<Self> {
        let authority = uri.authority().context("the URL has no host")?.as_str();
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            uri: uri.clone(),
            authorization: key.map(|k| format!("Bearer {k}")),
            id: None,
        })
    }

    async fn post(&mut self, body: Vec<u8>) -> anyhow::Result<(HeaderMap, Bytes)> {
        let mut b = Request::post(self.uri.clone())
            .header(
                header::HOST,
                self.uri.authority().map_or("", |a| a.as_str()),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(a) = &self.authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        if let Some(id) = &self.id {
            b = b.header("mcp-session-id", id);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(b.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok((headers, bytes))
    }

    async fn initialize(&mut self) -> anyhow::Result<()> {
        let (headers, _) = self
            .post(
                json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"gateway-loadgen","version":"1"}}})
                    .to_string()
                    .into_bytes(),
            )
            .await?;
        self.id = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.post(
            json!({"jsonrpc":"2.0","method":"notifications/initialized"})
                .to_string()
                .into_bytes(),
        )
        .await?;
        Ok(())
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How the load is applied.
#[derive(Clone, Copy, Debug)]
struct Shape {
    sessions: usize,
    seconds: u64,
    warmup: u64,
    /// Calls per second in all (open loop), or `None` (closed loop).
    rate: Option<u64>,
}

async fn load(url: &str, key: Option<&str>, shape: Shape, tool: &str) -> anyhow::Result<()> {
    let Shape {
        sessions,
        seconds,
        warmup,
        rate,
    } = shape;
    if sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    // Open loop: each session sends every `interval`, the sessions staggered across it.
    let interval = rate.map(|r| Duration::from_secs_f64(sessions as f64 / r as f64));
    let uri: hyper::Uri = url.parse().context("--url is not a URL")?;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let tool = Arc::<str>::from(tool);
    let mut tasks = Vec::with_capacity(sessions);
    for s in 0..sessions {
        let mut session = Session::connect(&uri, key).await?;
        session.initialize().await?;
        let tool = Arc::clone(&tool);
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut n: u64 = 0;
            let mut next = match interval {
                Some(i) => start + i.mul_f64(s as f64 / sessions as f64),
                None => start,
            };
            tokio::time::sleep_until(next.into()).await;
            loop {
                // Open loop: a call held back by the previous one (still running when this one
                // was due) counts from when it was due, so queueing is not hidden; otherwise it
                // counts from when it was sent (tokio's timer wakes up to 1 ms late, which is
                // the load generator's delay, not the system's).
                let now = match interval {
                    Some(i) => {
                        let due = next;
                        next += i;
                        if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due
                        }
                    }
                    None => Instant::now(),
                };
                if now >= end {
                    break;
                }
                n += 1;
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"hello from session {s}"}}}}}}"#
                );
                let (_, answer) = session.post(body.into_bytes()).await?;
                let took = now.elapsed();
                let v: Value = serde_json::from_slice(&answer)?;
                if v.get("result").is_none() || v.get("id") != Some(&json!(n)) {
                    bail!("unexpected answer: {}", String::from_utf8_lossy(&answer));
                }
                if now >= measure_from {
                    latencies.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let out = json!({
        "url": url,
        "sessions": sessions,
        "seconds": seconds,
        "rate": rate,
        "calls": all.len(),
        "callsPerSecond": all.len() as f64 / seconds as f64,
        "p50Us": us(percentile(&all, 50.0)),
        "p90Us": us(percentile(&all, 90.0)),
        "p99Us": us(percentile(&all, 99.0)),
        "p999Us": us(percentile(&all, 99.9)),
        "maxUs": us(all.last().copied().unwrap_or(0)),
    });
    println!("{out}");
    Ok(())
}
