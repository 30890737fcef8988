//! Load generator for the decision service, following the measurement protocol of
//! `shared/bench/policy-workload/WORKLOAD.md` (section 6b).
//!
//! * `decision-loadgen write-policy --workload DIR --out POLICIES` writes the workload's 100-rule
//!   policy as an `AgentPolicy` YAML file for `overseer serve --policies POLICIES`.
//! * `decision-loadgen check --workload DIR --url URL` sends requests 0–9,999 one at a time and
//!   compares every decision (and deciding rule) with the oracle, then runs the two probes.
//! * `decision-loadgen load --workload DIR --url URL --connections N` replays the measured phase
//!   (requests 10,000–209,999) over N keep-alive HTTP/1.1 connections and reports latency
//!   percentiles (nearest rank), throughput and errors.
//!
//! It only ever connects to the URL it is given; use a loopback address.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use overseer_crds::agents::{AgentPolicy, AgentPolicySpec};
use overseer_policy::{request::Decision, workload};

#[derive(Debug, Parser)]
#[command(
    name = "decision-loadgen",
    about = "Load generator for the Overseer decision service"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write the workload policy as AgentPolicy YAML.
    WritePolicy {
        /// Directory holding the generated workload (`policy.json`, `requests.jsonl`); generated
        /// there with python3 when missing.
        #[arg(long)]
        workload: PathBuf,
        /// Directory to write `bench.yaml` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a deterministic synthetic policy set of RULES tool rules (100 per AgentPolicy) as
    /// YAML, for scaling measurements (compile time, memory).
    WriteSynthetic {
        /// Number of tool rules.
        #[arg(long)]
        rules: usize,
        /// Directory to write `synthetic.yaml` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check decisions of the warm-up phase against the oracle, then the two probes.
    Check {
        /// Workload directory.
        #[arg(long)]
        workload: PathBuf,
        /// Base URL of the decision service (loopback).
        #[arg(long, default_value = "http://127.0.0.1:8181")]
        url: String,
        /// Bearer API key, when the service needs one.
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Replay the measured phase under load.
    Load {
        /// Workload directory.
        #[arg(long)]
        workload: PathBuf,
        /// Base URL of the decision service (loopback).
        #[arg(long, default_value = "http://127.0.0.1:8181")]
        url: String,
        /// Bearer API key, when the service needs one.
        #[arg(long)]
        api_key: Option<String>,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Replay at most this many measured requests (default: all 200,000).
        #[arg(long)]
        limit: Option<usize>,
        /// Busy-poll the socket instead of sleeping until the answer arrives (one connection
        /// only), as `sockperf --busy-poll` does: the load generator's own wake-up latency —
        /// milliseconds on an idle or shared virtual CPU — is then not counted as the server's.
        #[arg(long, requires = "connections")]
        busy_poll: bool,
    },
}

fn load_workload(dir: &std::path::Path) -> anyhow::Result<workload::Workload> {
    if dir.join("requests.jsonl").exists() {
        Ok(workload::load(dir)?)
    } else {
        std::fs::create_dir_all(dir)?;
        Ok(workload::generate(dir)?)
    }
}

fn body_of(request: &workload::WorkloadRequest) -> Bytes {
    Bytes::from(serde_json::to_vec(&request.to_decision_request()).unwrap_or_default())
}

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
    authorization: Option<String>,
}

impl Connection {
    async fn open(url: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().context("--url is not a URL")?;
        let authority = uri
            .authority()
            .context("--url needs host:port")?
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority,
            authorization: api_key.map(|k| format!("Bearer {k}")),
        })
    }

    async fn decide(&mut self, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let mut request = Request::post("/v1/decisions")
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

async fn check(
    workload_dir: PathBuf,
    url: String,
    api_key: Option<String>,
) -> anyhow::Result<bool> {
    let workload = load_workload(&workload_dir)?;
    let mut conn = Connection::open(&url, api_key.as_deref()).await?;
    let mut agree = 0usize;
    let mut disagree = Vec::new();
    let warmup: Vec<_> = workload
        .requests
        .iter()
        .filter(|r| r.phase == "warmup")
        .collect();
    for request in &warmup {
        let (status, bytes) = conn.decide(body_of(request)).await?;
        if status != 200 {
            bail!(
                "request {} got HTTP {status}: {}",
                request.i,
                String::from_utf8_lossy(&bytes)
            );
        }
        let decision: Decision = serde_json::from_slice(&bytes)?;
        match request.check(&decision) {
            Ok(()) => agree += 1,
            Err(e) => disagree.push(format!("request {}: {e}", request.i)),
        }
    }
    let r030_allowed_so_far = warmup
        .iter()
        .filter(|r| r.tool == "tool_030" && r.expect == "allow")
        .count();
    // Probe 1: 1,100 calls of tool_030 {amount: 1}; a working limit allows 1000 − seen.
    let template = workload
        .requests
        .iter()
        .find(|r| r.tool == "tool_030")
        .context("no tool_030 request")?;
    let mut probe = template.clone();
    probe.args = serde_json::from_str(r#"{"amount": 1}"#)?;
    let mut allowed = 0;
    for _ in 0..1100 {
        let (_, bytes) = conn.decide(body_of(&probe)).await?;
        let decision: Decision = serde_json::from_slice(&bytes)?;
        if decision.decision.as_str() == "allow" {
            allowed += 1;
        }
    }
    let expected_allowed = 1000 - r030_allowed_so_far;
    // Probe 2: tool_000 with no args is denied.
    let mut no_args = workload
        .requests
        .iter()
        .find(|r| r.tool == "tool_000")
        .context("no tool_000 request")?
        .clone();
    no_args.args = serde_json::Map::new();
    let (_, bytes) = conn.decide(body_of(&no_args)).await?;
    let decision: Decision = serde_json::from_slice(&bytes)?;
    println!(
        "check: {agree}/{} warm-up decisions agree with the oracle",
        warmup.len()
    );
    for d in disagree.iter().take(10) {
        println!("  {d}");
    }
    println!("probe 1 (rate limit): {allowed} of 1100 allowed, expected {expected_allowed}");
    println!(
        "probe 2 (tool_000 without args): {}",
        decision.decision.as_str()
    );
    Ok(disagree.is_empty() && allowed == expected_allowed && decision.decision.as_str() == "deny")
}

async fn load(
    workload_dir: PathBuf,
    url: String,
    api_key: Option<String>,
    connections: usize,
    limit: Option<usize>,
) -> anyhow::Result<bool> {
    if connections == 0 {
        bail!("--connections must be at least 1");
    }
    let workload = load_workload(&workload_dir)?;
    let bodies: Vec<Bytes> = workload
        .requests
        .iter()
        .filter(|r| r.phase == "measure")
        .take(limit.unwrap_or(usize::MAX))
        .map(body_of)
        .collect();
    let bodies = Arc::new(bodies);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..connections {
        let bodies = bodies.clone();
        let mut conn = Connection::open(&url, api_key.as_deref()).await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(bodies.len() / connections + 1);
            let mut errors = 0u64;
            let mut i = c;
            while i < bodies.len() {
                let t = Instant::now();
                match conn.decide(bodies[i].clone()).await {
                    Ok((200, _)) => {
                        latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX))
                    }
                    Ok(_) | Err(_) => errors += 1,
                }
                i += connections;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    report(
        connections,
        bodies.len(),
        &mut latencies,
        errors,
        started.elapsed(),
    );
    Ok(errors == 0)
}

/// Print throughput and the latency distribution.
fn report(connections: usize, requests: usize, latencies: &mut [u64], errors: u64, wall: Duration) {
    latencies.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = latencies.iter().map(|&n| n as f64).sum::<f64>() / latencies.len().max(1) as f64;
    println!(
        "connections={connections} requests={requests} ok={} errors={errors} wall={:.2}s throughput={:.0}/s",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64
            / wall
                .as_secs_f64()
                .max(Duration::from_micros(1).as_secs_f64())
    );
    println!(
        "latency_us p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} min={:.1} max={:.1} mean={:.1}",
        us(percentile(latencies, 50.0)),
        us(percentile(latencies, 90.0)),
        us(percentile(latencies, 99.0)),
        us(percentile(latencies, 99.9)),
        us(latencies.first().copied().unwrap_or(0)),
        us(latencies.last().copied().unwrap_or(0)),
        mean / 1000.0
    );
}

/// `load --busy-poll`: one blocking-free connection on this thread, spinning on the socket.
fn busy_poll_load(
    workload_dir: &std::path::Path,
    url: &str,
    api_key: Option<&str>,
    connections: usize,
    limit: Option<usize>,
) -> anyhow::Result<bool> {
    use std::io::{ErrorKind, Read, Write};
    if connections != 1 {
        bail!("--busy-poll measures one connection; use --connections 1");
    }
    let uri: hyper::Uri = url.parse().context("--url is not a URL")?;
    let authority = uri
        .authority()
        .context("--url needs host:port")?
        .to_string();
    let workload = load_workload(workload_dir)?;
    let bodies: Vec<Bytes> = workload
        .requests
        .iter()
        .filter(|r| r.phase == "measure")
        .take(limit.unwrap_or(usize::MAX))
        .map(body_of)
        .collect();
    let mut stream = std::net::TcpStream::connect(&authority)
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut errors = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let started = Instant::now();
    for body in &bodies {
        let mut request = format!(
            "POST /v1/decisions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let t = Instant::now();
        let mut written = 0;
        while written < request.len() {
            match stream.write(&request[written..]) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e.into()),
            }
        }
        buf.clear();
        let status = loop {
            match stream.read(&mut chunk) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&buf)? {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .context("the answer has no Content-Length")?;
                if buf.len() >= head + length {
                    break response.code.unwrap_or(0);
                }
            }
        };
        if status == 200 {
            latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        } else {
            errors += 1;
        }
    }
    report(1, bodies.len(), &mut latencies, errors, started.elapsed());
    Ok(errors == 0)
}

fn write_policy(workload_dir: PathBuf, out: PathBuf) -> anyhow::Result<bool> {
    let workload = load_workload(&workload_dir)?;
    let source = workload::to_policy_source(&workload.policy).map_err(|e| anyhow::anyhow!(e))?;
    let mut policy = AgentPolicy::new(
        &source.name,
        AgentPolicySpec {
            policy: source.rules,
        },
    );
    policy.metadata.namespace = Some(workload::NAMESPACE.to_owned());
    std::fs::create_dir_all(&out)?;
    let path = out.join("bench.yaml");
    std::fs::write(&path, serde_yaml::to_string(&policy)?)?;
    println!("wrote {}", path.display());
    Ok(true)
}

fn write_synthetic(rules: usize, out: PathBuf) -> anyhow::Result<bool> {
    let (sources, _) = workload::synthetic(rules, 0);
    let mut text = String::new();
    for source in sources {
        let mut policy = AgentPolicy::new(
            &source.name,
            AgentPolicySpec {
                policy: source.rules,
            },
        );
        policy.metadata.namespace = Some(workload::NAMESPACE.to_owned());
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&policy)?);
    }
    std::fs::create_dir_all(&out)?;
    let path = out.join("synthetic.yaml");
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("decision-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::WritePolicy { workload, out } => write_policy(workload, out),
        Cmd::WriteSynthetic { rules, out } => write_synthetic(rules, out),
        Cmd::Check {
            workload,
            url,
            api_key,
        } => runtime.block_on(check(workload, url, api_key)),
        Cmd::Load {
            workload,
            url,
            api_key,
            connections,
            limit,
            busy_poll,
        } if busy_poll => busy_poll_load(&workload, &url, api_key.as_deref(), connections, limit),
        Cmd::Load {
            workload,
            url,
            api_key,
            connections,
            limit,
            busy_poll: _,
        } => runtime.block_on(load(workload, url, api_key, connections, limit)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("decision-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
