//! `palisade-loadgen`: the load generator of the Palisade benchmark harness.
//!
//! ```text
//! palisade-loadgen compare --target upstream=http://127.0.0.1:9001/mcp --target gw=http://127.0.0.1:8787/mcp/echo …
//! palisade-loadgen sessions --url URL --pid PID --levels 0,1000,10000
//! palisade-loadgen startup --url http://127.0.0.1:8787/readyz -- palisade serve --config FILE
//! palisade-loadgen soak --url URL --pid PID --minutes 10 --rate 500
//! palisade-loadgen wait --url URL
//! palisade-loadgen free-port [--count N]
//! ```
//!
//! Every virtual client holds one keep-alive HTTP/1.1 connection and one MCP
//! session (`initialize`, `notifications/initialized`), then calls the
//! `echo` tool in a loop. `bench/run` drives all of this.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use palisade_bench::client::{CallError, Endpoint, McpClient, probe};
use palisade_bench::report::{self, Sample, merge_json, quantile_us, rss_kib};
use serde_json::json;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "palisade-loadgen",
    about = "MCP Streamable HTTP load generator for the Palisade benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interleaved throughput and latency comparison of several targets.
    Compare(CompareArgs),
    /// Gateway RSS at increasing numbers of open, idle sessions.
    Sessions(SessionsArgs),
    /// Time from spawning a command to its readiness URL answering 200.
    Startup(StartupArgs),
    /// Fixed request rate for a long time; RSS and latency per interval.
    Soak(SoakArgs),
    /// Wait until a URL answers.
    Wait(WaitArgs),
    /// Print free TCP ports on 127.0.0.1.
    FreePort {
        /// How many distinct ports.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        count: u16,
    },
}

/// `NAME=URL`.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    url: String,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("target name `{name}`: use letters, digits, `-` and `_`"));
    }
    Endpoint::parse(url, None).map_err(|e| format!("{e:#}"))?;
    Ok(Target {
        name: name.to_owned(),
        url: url.to_owned(),
    })
}

fn parse_token(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=FILE")?;
    if name.is_empty() || path.is_empty() {
        return Err("expected NAME=FILE".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!("`{s}`: must be a number of seconds above 0 and at most 86400"));
    }
    Ok(v)
}

fn parse_non_negative_seconds(s: &str) -> Result<f64, String> {
    if s.trim() == "0" {
        return Ok(0.0);
    }
    parse_seconds(s)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v <= 0.0 || v > 1_000_000.0 {
        return Err(format!(
            "`{s}`: the rate must be above 0 and at most 1000000 requests per second"
        ));
    }
    Ok(v)
}

#[derive(Args)]
struct CompareArgs {
    /// A target as NAME=URL (MCP endpoint, http://IP:PORT/PATH); repeat, in table order.
    #[arg(long = "target", value_parser = parse_target, required = true)]
    targets: Vec<Target>,
    /// A bearer token for target NAME, read from FILE (NAME=FILE); repeatable.
    #[arg(long = "token", value_parser = parse_token)]
    tokens: Vec<(String, PathBuf)>,
    /// Virtual clients (connections and sessions), comma-separated levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Vec<u32>,
    /// Measured seconds per target and concurrency level, split over the rounds.
    #[arg(long, default_value = "20", value_parser = parse_seconds)]
    duration_s: f64,
    /// Rounds: each round gives every target one slice, in rotating order.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rounds: u32,
    /// Unrecorded warm-up seconds per target and concurrency level (0: none).
    #[arg(long, default_value = "1", value_parser = parse_non_negative_seconds)]
    warmup_s: f64,
    /// The target the others are compared with (the upstream reached directly).
    #[arg(long, default_value = "upstream")]
    baseline: String,
    /// The reference proxy (nginx).
    #[arg(long, default_value = "nginx")]
    reference: String,
    /// Seconds before one request counts as timed out.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    timeout_s: f64,
    /// Write the results into this JSON file (key `compare`; other keys kept).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct SessionsArgs {
    /// MCP endpoint of the gateway.
    #[arg(long)]
    url: String,
    /// File with a bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Process whose VmRSS is read.
    #[arg(long)]
    pid: u32,
    /// Open sessions at which RSS is read, ascending.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,100000")]
    levels: Vec<u64>,
    /// Parallel connections opening sessions.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Seconds to wait at each level before reading RSS.
    #[arg(long, default_value = "2", value_parser = parse_non_negative_seconds)]
    settle_s: f64,
    /// Give up on further levels after this many minutes in all.
    #[arg(long, default_value = "15", value_parser = parse_seconds)]
    max_minutes: f64,
    /// A label for the JSON key (`sessions_<label>`).
    #[arg(long, default_value = "passthrough")]
    label: String,
    /// Write the results into this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct StartupArgs {
    /// Readiness URL (`/readyz`), polled until it answers 200.
    #[arg(long)]
    url: String,
    /// Number of starts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Seconds one start may take.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    timeout_s: f64,
    /// A label for the output and the JSON key (`startup_<label>`).
    #[arg(long, default_value = "gateway")]
    label: String,
    /// Append the command's stderr to this file (default: discarded).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Write the results into this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The command to start, after `--`.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Args)]
struct SoakArgs {
    /// MCP endpoint.
    #[arg(long)]
    url: String,
    /// File with a bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Process whose VmRSS is read each interval.
    #[arg(long)]
    pid: u32,
    /// Length of the soak.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    minutes: f64,
    /// Requests per second, spread evenly over the connections.
    #[arg(long, value_parser = parse_rate)]
    rate: f64,
    /// Virtual clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Seconds per reported interval.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    interval_s: f64,
    /// Seconds before one request counts as timed out.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    timeout_s: f64,
    /// Write the results into this JSON file (key `soak`).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct WaitArgs {
    /// URL to poll with GET.
    #[arg(long)]
    url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    timeout_s: f64,
    /// Accept any HTTP status (default: only 200).
    #[arg(long)]
    any_status: bool,
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token)
}

fn endpoint(url: &str, token_file: Option<&PathBuf>) -> anyhow::Result<Endpoint> {
    let token = token_file.map(read_token).transpose()?;
    Endpoint::parse(url, token.as_deref())
}

/// Connect and initialize `n` clients at once.
async fn open_clients(endpoint: &Endpoint, n: usize, timeout: Duration) -> anyhow::Result<Vec<McpClient>> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let endpoint = endpoint.clone();
        set.spawn(async move {
            let mut client = McpClient::connect(endpoint, timeout).await?;
            client.initialize().await?;
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        clients.push(joined??);
    }
    Ok(clients)
}

fn record_error(sample: &mut Sample, error: &CallError) {
    *sample.errors.entry(error.to_string()).or_default() += 1;
}

/// Every client calls `echo` in a loop for `length`; returns the clients
/// and what they measured.
async fn run_slice(clients: Vec<McpClient>, length: Duration) -> (Vec<McpClient>, Sample) {
    let start = Instant::now();
    let deadline = start + length;
    let mut set = JoinSet::new();
    for mut client in clients {
        set.spawn(async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match client.call_echo().await {
                    Ok(()) => {
                        sample.hist.saturating_record(t0.elapsed().as_nanos() as u64);
                        sample.ok += 1;
                    }
                    Err(e) => {
                        record_error(&mut sample, &e);
                        if matches!(e, CallError::Transport) {
                            // Do not spin on a target that refuses connections.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            sample.reconnects = std::mem::take(&mut client.reconnects);
            (client, sample)
        });
    }
    let mut clients = Vec::new();
    let mut total = Sample::default();
    while let Some(joined) = set.join_next().await {
        let (client, sample) = joined.expect("slice task panicked");
        total.merge(&sample);
        clients.push(client);
    }
    total.elapsed = start.elapsed();
    (clients, total)
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let mut names = HashSet::new();
    for t in &args.targets {
        if !names.insert(t.name.as_str()) {
            bail!("target `{}` is given twice", t.name);
        }
    }
    for (name, _) in &args.tokens {
        if !names.contains(name.as_str()) {
            bail!("--token names `{name}`, which is not a --target");
        }
    }
    let slice = Duration::from_secs_f64(args.duration_s / f64::from(args.rounds));
    if slice < Duration::from_millis(50) {
        bail!("--duration-s / --rounds gives slices of {slice:?}; make them at least 50 ms");
    }
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut endpoints = Vec::new();
    for t in &args.targets {
        let token = args.tokens.iter().rev().find(|(n, _)| *n == t.name).map(|(_, p)| p);
        endpoints.push((t.name.clone(), endpoint(&t.url, token)?));
    }
    for name in [&args.baseline, &args.reference] {
        if !names.contains(name.as_str()) {
            eprintln!("note: `{name}` is not a target; its ratio columns stay empty");
        }
    }
    let n = endpoints.len();
    let mut samples = Vec::new();
    for &c in &args.concurrency {
        let c = c as usize;
        let mut pools = Vec::with_capacity(n);
        for (name, ep) in &endpoints {
            let clients = open_clients(ep, c, timeout)
                .await
                .with_context(|| format!("target `{name}`: cannot open {c} sessions"))?;
            pools.push(clients);
        }
        if args.warmup_s > 0.0 {
            let warmup = Duration::from_secs_f64(args.warmup_s);
            for pool in pools.iter_mut() {
                let (clients, _) = run_slice(std::mem::take(pool), warmup).await;
                *pool = clients;
            }
        }
        let mut acc: Vec<Sample> = (0..n).map(|_| Sample::default()).collect();
        for round in 0..args.rounds as usize {
            for k in 0..n {
                let i = (round + k) % n;
                let (clients, sample) = run_slice(std::mem::take(&mut pools[i]), slice).await;
                pools[i] = clients;
                acc[i].merge(&sample);
            }
        }
        for ((name, _), sample) in endpoints.iter().zip(acc) {
            eprintln!(
                "concurrency {c:>4} {name:<16} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}",
                sample.ok as f64 / sample.elapsed.as_secs_f64().max(1e-9),
                quantile_us(&sample.hist, 0.5),
                quantile_us(&sample.hist, 0.99),
                sample.error_count()
            );
            samples.push((name.clone(), c, sample));
        }
        for pool in pools {
            let mut set = JoinSet::new();
            for client in pool {
                set.spawn(client.close());
            }
            while set.join_next().await.is_some() {}
        }
    }
    // Table order: by concurrency, then targets in the order given.
    let rows = report::rows(&samples, Some(&args.baseline), Some(&args.reference));
    println!("{}", report::format_table(&rows, &args.baseline, &args.reference));
    if let Some(path) = &args.json {
        let value = json!({
            "targets": args.targets.iter().map(|t| json!({ "name": t.name, "url": t.url })).collect::<Vec<_>>(),
            "concurrency": args.concurrency,
            "duration_s": args.duration_s,
            "rounds": args.rounds,
            "warmup_s": args.warmup_s,
            "baseline": args.baseline,
            "reference": args.reference,
            "rows": rows,
        });
        merge_json(path, "compare", value)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Open `count` more sessions over `connections` parallel connections.
/// Returns how many were opened and how many attempts failed.
async fn open_sessions(
    endpoint: &Endpoint,
    count: u64,
    connections: u32,
    deadline: Instant,
) -> anyhow::Result<(u64, u64)> {
    let remaining = Arc::new(AtomicU64::new(count));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..connections.min(count.max(1) as u32) {
        let (endpoint, remaining, opened, failed) =
            (endpoint.clone(), remaining.clone(), opened.clone(), failed.clone());
        set.spawn(async move {
            let mut client = McpClient::connect(endpoint, Duration::from_secs(30)).await?;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                if remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                match client.initialize().await {
                    Ok(()) => {
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        let n = failed.fetch_add(1, Ordering::SeqCst) + 1;
                        remaining.fetch_add(1, Ordering::SeqCst);
                        if n == 1 || n % 1000 == 0 {
                            eprintln!("initialize failed ({n} so far): {e:#}");
                        }
                        if n > 100 && n > opened.load(Ordering::SeqCst) / 10 {
                            bail!("too many failed initializations ({n}); last: {e:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined.expect("session task panicked") {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok((opened.load(Ordering::SeqCst), failed.load(Ordering::SeqCst)))
}

async fn sessions(args: SessionsArgs) -> anyhow::Result<()> {
    if args.levels.is_empty() || args.levels.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--levels must be strictly ascending, e.g. 0,1000,10000");
    }
    let endpoint = endpoint(&args.url, args.token_file.as_ref())?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_minutes * 60.0);
    let settle = Duration::from_secs_f64(args.settle_s);
    let mut open = 0u64;
    let mut base_rss = None;
    let mut prev: Option<(u64, u64)> = None;
    let mut points = Vec::new();
    let mut complete = true;
    println!("| open sessions | gateway RSS MiB | bytes/session (vs 0) | bytes/session (vs previous) | opened/s |");
    println!("|---:|---:|---:|---:|---:|");
    for &level in &args.levels {
        let t0 = Instant::now();
        let (opened, failed) = open_sessions(&endpoint, level - open, args.connections, deadline).await?;
        let open_secs = t0.elapsed().as_secs_f64();
        open += opened;
        if open < level {
            eprintln!("stopped at {open} sessions (limit --max-minutes {})", args.max_minutes);
            complete = false;
        }
        tokio::time::sleep(settle).await;
        let rss = rss_kib(args.pid)?;
        let base = *base_rss.get_or_insert((open, rss));
        let per = |from: (u64, u64)| -> Option<f64> {
            (open > from.0).then(|| (rss as f64 - from.1 as f64) * 1024.0 / (open - from.0) as f64)
        };
        let vs0 = per(base);
        let vs_prev = prev.and_then(per);
        let rate = if opened > 0 { opened as f64 / open_secs } else { 0.0 };
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        println!(
            "| {open} | {:.1} | {} | {} | {} |",
            rss as f64 / 1024.0,
            fmt(vs0),
            fmt(vs_prev),
            if opened > 0 { format!("{rate:.0}") } else { "-".into() }
        );
        points.push(json!({
            "sessions": open,
            "rss_kib": rss,
            "bytes_per_session_vs_first": vs0,
            "bytes_per_session_vs_previous": vs_prev,
            "failed_initializations": failed,
            "opened_per_s": rate,
        }));
        prev = Some((open, rss));
        if !complete {
            break;
        }
    }
    if let Some(path) = &args.json {
        let value = json!({
            "url": args.url,
            "levels_requested": args.levels,
            "complete": complete,
            "settle_s": args.settle_s,
            "points": points,
        });
        merge_json(path, &format!("sessions_{}", args.label), value)?;
    }
    Ok(())
}

fn terminate(child: &tokio::process::Child) {
    if let Some(id) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

async fn startup(args: StartupArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.url, None)?;
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut times = Vec::new();
    for run in 1..=args.runs {
        let stderr = match &args.log {
            Some(path) => std::process::Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            None => std::process::Stdio::null(),
        };
        // The URL must not answer before the process starts.
        if probe(&endpoint).await.is_ok() {
            bail!(
                "{} already answers before the command started; is an old instance running?",
                args.url
            );
        }
        let start = Instant::now();
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `{}`", args.command[0]))?;
        let ready = loop {
            if let Ok(status) = probe(&endpoint).await
                && status == http::StatusCode::OK
            {
                break start.elapsed();
            }
            if let Some(status) = child.try_wait()? {
                bail!("the command exited ({status}) before {} answered 200", args.url);
            }
            if start.elapsed() > timeout {
                let _ = child.kill().await;
                bail!("{} did not answer 200 within {timeout:?}", args.url);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        terminate(&child);
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("the command did not stop within 15 s of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
        eprintln!("start {run}: ready after {:.1} ms", ready.as_secs_f64() * 1000.0);
        times.push(ready.as_secs_f64() * 1000.0);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "start-up ({}): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} starts",
        args.label,
        median,
        sorted[0],
        sorted[sorted.len() - 1],
        sorted.len()
    );
    if let Some(path) = &args.json {
        let value = json!({
            "url": args.url,
            "command": args.command,
            "ms": times,
            "median_ms": median,
            "min_ms": sorted[0],
            "max_ms": sorted[sorted.len() - 1],
        });
        merge_json(path, &format!("startup_{}", args.label), value)?;
    }
    Ok(())
}

/// Lateness of a scheduled send that is put down to timer granularity.
const SCHEDULE_SLACK: Duration = Duration::from_millis(2);

async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let endpoint = endpoint(&args.url, args.token_file.as_ref())?;
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let connections = args.connections as usize;
    let clients = open_clients(&endpoint, connections, timeout)
        .await
        .context("cannot open the soak sessions")?;
    let acc = Arc::new(std::sync::Mutex::new(Sample::default()));
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(args.minutes * 60.0);
    let period = Duration::from_secs_f64(connections as f64 / args.rate);
    let mut set = JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let acc = acc.clone();
        let first = start + Duration::from_secs_f64(i as f64 / args.rate);
        set.spawn(async move {
            let mut next = first;
            while next < end {
                tokio::time::sleep_until(next).await;
                let sent = tokio::time::Instant::now();
                let result = client.call_echo().await;
                // A client that is behind its schedule (the previous answer
                // was late) counts from the scheduled send time, so queueing
                // shows (no coordinated omission); otherwise from the actual
                // send, so the timer's millisecond granularity does not.
                let origin = if sent.duration_since(next) > SCHEDULE_SLACK {
                    next
                } else {
                    sent
                };
                let latency = origin.elapsed();
                {
                    let mut s = acc.lock().expect("soak sample poisoned");
                    match result {
                        Ok(()) => {
                            s.hist.saturating_record(latency.as_nanos() as u64);
                            s.ok += 1;
                        }
                        Err(e) => record_error(&mut s, &e),
                    }
                }
                next += period;
            }
            client.close().await;
        });
    }
    let interval = Duration::from_secs_f64(args.interval_s);
    let mut intervals = Vec::new();
    let mut total = Sample::default();
    println!("| minute | req/s | p50 ms | p99 ms | max ms | errors | RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut mark = start;
    let mut finished = false;
    while !finished {
        let next_mark = (mark + interval).min(end);
        tokio::select! {
            _ = tokio::time::sleep_until(next_mark) => {}
            joined = set.join_next() => {
                if joined.is_none() { finished = true; } else { continue; }
            }
        }
        if tokio::time::Instant::now() >= end {
            // Let the last requests finish before the final interval.
            while set.join_next().await.is_some() {}
            finished = true;
        }
        let now = tokio::time::Instant::now();
        let sample = std::mem::take(&mut *acc.lock().expect("soak sample poisoned"));
        let secs = (now - mark).as_secs_f64();
        mark = now;
        let rss = rss_kib(args.pid)?;
        let minute = (now - start).as_secs_f64() / 60.0;
        let row = json!({
            "minute": minute,
            "throughput_rps": sample.ok as f64 / secs,
            "p50_us": quantile_us(&sample.hist, 0.5),
            "p99_us": quantile_us(&sample.hist, 0.99),
            "max_us": if sample.hist.is_empty() { 0.0 } else { sample.hist.max() as f64 / 1000.0 },
            "errors": sample.error_count(),
            "error_kinds": sample.errors,
            "rss_kib": rss,
        });
        println!(
            "| {minute:.1} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
            sample.ok as f64 / secs,
            quantile_us(&sample.hist, 0.5) / 1000.0,
            quantile_us(&sample.hist, 0.99) / 1000.0,
            row["max_us"].as_f64().unwrap_or(0.0) / 1000.0,
            sample.error_count(),
            rss as f64 / 1024.0
        );
        total.merge(&sample);
        intervals.push(row);
    }
    println!(
        "soak: {} ok, {} errors, p99 {:.3} ms over {:.1} min at {} req/s",
        total.ok,
        total.error_count(),
        quantile_us(&total.hist, 0.99) / 1000.0,
        args.minutes,
        args.rate
    );
    if let Some(path) = &args.json {
        let value = json!({
            "url": args.url,
            "rate": args.rate,
            "minutes": args.minutes,
            "connections": args.connections,
            "ok": total.ok,
            "errors": total.errors,
            "p50_us": quantile_us(&total.hist, 0.5),
            "p99_us": quantile_us(&total.hist, 0.99),
            "p999_us": quantile_us(&total.hist, 0.999),
            "intervals": intervals,
        });
        merge_json(path, "soak", value)?;
    }
    Ok(())
}

async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.url, None)?;
    let start = Instant::now();
    let timeout = Duration::from_secs_f64(args.timeout_s);
    loop {
        match probe(&endpoint).await {
            Ok(status) if args.any_status || status == http::StatusCode::OK => return Ok(()),
            _ if start.elapsed() > timeout => {
                return Err(anyhow!("{} did not answer within {timeout:?}", args.url));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn free_ports(count: u16) -> anyhow::Result<()> {
    // Hold every listener until all are chosen, so the ports are distinct.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compare(args) => compare(args).await,
        Command::Sessions(args) => sessions(args).await,
        Command::Startup(args) => startup(args).await,
        Command::Soak(args) => soak(args).await,
        Command::Wait(args) => wait(args).await,
        Command::FreePort { count } => free_ports(count),
    };
    if let Err(e) = result {
        eprintln!("palisade-loadgen: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_are_refused() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("palisade-loadgen").chain(args.iter().copied()));
        assert!(parse(&["compare", "--target", "a=http://127.0.0.1:1/mcp"]).is_ok());
        assert!(parse(&["compare"]).is_err());
        assert!(parse(&["compare", "--target", "nourl"]).is_err());
        assert!(parse(&["compare", "--target", "a=https://127.0.0.1/mcp"]).is_err());
        assert!(parse(&["compare", "--target", "a b=http://127.0.0.1:1/mcp"]).is_err());
        assert!(parse(&["compare", "--target", "a=http://127.0.0.1:1/", "--concurrency", "0"]).is_err());
        assert!(parse(&["compare", "--target", "a=http://127.0.0.1:1/", "--concurrency", "1,x"]).is_err());
        assert!(parse(&["compare", "--target", "a=http://127.0.0.1:1/", "--duration-s", "-1"]).is_err());
        assert!(parse(&["compare", "--target", "a=http://127.0.0.1:1/", "--warmup-s", "0"]).is_ok());
        assert!(parse(&["soak", "--url", "u", "--pid", "1", "--rate", "0"]).is_err());
        assert!(parse(&["startup", "--url", "http://127.0.0.1:1/readyz"]).is_err());
        assert!(parse(&["startup", "--url", "http://127.0.0.1:1/readyz", "--", "true"]).is_ok());
    }
}
