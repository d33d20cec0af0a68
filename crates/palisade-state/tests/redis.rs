//! The Redis backend against a real `redis-server` (started per test on a
//! free port). Two `Backend`s on one server stand for two gateway replicas.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_state::{Backend, REVOCATION_LEEWAY, Rate, RedisOptions, StateError, gcra, normalize_key};
use support::{RedisServer, free_port};

const PREFIX: &str = "palisade:";
const OP_TIMEOUT: Duration = Duration::from_millis(500);

fn options(url: String) -> RedisOptions {
    RedisOptions {
        url,
        prefix: PREFIX.into(),
        op_timeout: OP_TIMEOUT,
        connect_timeout: Duration::from_millis(500),
    }
}

async fn replica(server: &RedisServer) -> Backend {
    let b = Backend::redis(options(server.url())).await.expect("valid URL");
    assert_eq!(b.name(), "redis");
    b
}

/// A plain connection for looking at (and tampering with) what is stored.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn query<T: redis::FromRedisValue>(conn: &mut redis::aio::MultiplexedConnection, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(conn).await.unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn rate(per_second: f64, burst: u32) -> Rate {
    Rate { per_second, burst }
}

/// A rate so slow (one per 1000 s) that the time a test takes cannot refill it.
fn slow(burst: u32) -> Rate {
    rate(0.001, burst)
}

/// Polls `f` until it is Ok, for at most `limit`.
async fn eventually_ok<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing after {limit:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rate_limit_burst_is_shared_between_replicas() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let r = slow(6);
    let mut remaining = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let d = replica.rate_check("user:iss|alice", r, 1.0).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert!(d.retry_after.is_zero());
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [5, 4, 3, 2, 1, 0]);
    for replica in [&a, &b] {
        let d = replica.rate_check("user:iss|alice", r, 1.0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // One emission interval (1000 s), less the little time that passed.
        let wait = d.retry_after.as_secs_f64();
        assert!((995.0..=1000.0).contains(&wait), "{wait}");
    }
    // Other keys are separate buckets.
    assert!(b.rate_check("user:iss|bob", r, 1.0).await.unwrap().allowed);
    // The key layout and its expiry: the bucket is full again in 6000 s.
    let mut conn = raw(&server).await;
    let pttl: i64 = query(&mut conn, redis::cmd("PTTL").arg("palisade:rl:user:iss|alice")).await;
    assert!((5_990_000..=6_000_000).contains(&pttl), "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mirror_gcra_semantics() {
    // The same sequences through the Lua script and the Rust function give
    // the same decisions (the rates are slow enough that elapsed time is noise).
    let server = RedisServer::start();
    let b = replica(&server).await;
    let cases: [(Rate, f64, usize); 7] = [
        (slow(10), 1.0, 13),
        (slow(10), 2.0, 8),
        (slow(10), 0.5, 25),
        (slow(10), 1.5, 9),
        (slow(4), 1e9, 3),
        (slow(3), 0.0, 5),
        (rate(1e-6, 1), 1.0, 2),
    ];
    for (n, (r, cost, count)) in cases.into_iter().enumerate() {
        let key = format!("mirror:{n}");
        let mut tat = None;
        for i in 0..count {
            let (expected, new_tat) = gcra(tat, 0.0, r, cost);
            if expected.allowed {
                tat = Some(new_tat);
            }
            let got = b.rate_check(&key, r, cost).await.unwrap();
            let ctx = format!("case {n} ({r:?}, cost {cost}) request {i}");
            assert_eq!(got.allowed, expected.allowed, "{ctx}");
            assert_eq!(got.remaining, expected.remaining, "{ctx}");
            let drift = expected.retry_after.as_secs_f64() - got.retry_after.as_secs_f64();
            assert!((0.0..5.0).contains(&drift), "{ctx}: {expected:?} vs {got:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refills_after_time() {
    let server = RedisServer::start();
    let b = replica(&server).await;
    let r = rate(20.0, 2);
    assert!(b.rate_check("k", r, 1.0).await.unwrap().allowed);
    assert!(b.rate_check("k", r, 1.0).await.unwrap().allowed);
    let denied = b.rate_check("k", r, 1.0).await.unwrap();
    assert!(!denied.allowed);
    assert!(
        denied.retry_after <= Duration::from_millis(50),
        "{:?}",
        denied.retry_after
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(b.rate_check("k", r, 1.0).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_rate_checks_are_atomic() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let r = slow(40);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..25 {
                n += usize::from(replica.rate_check("shared", r, 1.0).await.unwrap().allowed);
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_revocation_is_seen_by_the_other_replica() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let now = unix_now();
    assert!(!b.is_revoked("sid-1").await.unwrap());
    a.revoke("sid-1", now + 60).await.unwrap();
    assert!(b.is_revoked("sid-1").await.unwrap());
    assert!(!b.is_revoked("sid-2").await.unwrap());
    let mut conn = raw(&server).await;
    let at: i64 = query(&mut conn, redis::cmd("EXPIRETIME").arg("palisade:rev:sid-1")).await;
    assert_eq!(at as u64, now + 60 + REVOCATION_LEEWAY.as_secs());
    // Revoking again never shortens, but may extend.
    b.revoke("sid-1", now + 10).await.unwrap();
    let at2: i64 = query(&mut conn, redis::cmd("EXPIRETIME").arg("palisade:rev:sid-1")).await;
    assert_eq!(at2, at);
    b.revoke("sid-1", now + 600).await.unwrap();
    let at3: i64 = query(&mut conn, redis::cmd("EXPIRETIME").arg("palisade:rev:sid-1")).await;
    assert_eq!(at3 as u64, now + 600 + REVOCATION_LEEWAY.as_secs());
    // Expired a moment ago: still revoked through the leeway.
    a.revoke("sid-3", now - 10).await.unwrap();
    assert!(b.is_revoked("sid-3").await.unwrap());
    // Expired long ago: nothing to store, nothing stored.
    a.revoke("sid-4", now - 3600).await.unwrap();
    assert!(!b.is_revoked("sid-4").await.unwrap());
    let exists: i64 = query(&mut conn, redis::cmd("EXISTS").arg("palisade:rev:sid-4")).await;
    assert_eq!(exists, 0);
    // Absurd expiries are clamped, not errors.
    a.revoke("sid-5", u64::MAX).await.unwrap();
    assert!(b.is_revoked("sid-5").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_is_detected_across_replicas() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let ttl = Duration::from_secs(60);
    assert!(a.remember_once("jti-1", ttl).await.unwrap());
    assert!(!b.remember_once("jti-1", ttl).await.unwrap());
    assert!(!a.remember_once("jti-1", ttl).await.unwrap());
    assert!(b.remember_once("jti-2", ttl).await.unwrap());
    let mut conn = raw(&server).await;
    let pttl: i64 = query(&mut conn, redis::cmd("PTTL").arg("palisade:once:jti-1")).await;
    assert!((55_000..=60_000).contains(&pttl), "{pttl}");
    // Short TTLs end (and zero is clamped to 1 ms, not an error).
    assert!(a.remember_once("short", Duration::from_millis(100)).await.unwrap());
    assert!(!b.remember_once("short", Duration::from_millis(100)).await.unwrap());
    assert!(a.remember_once("zero", Duration::ZERO).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.remember_once("short", Duration::from_millis(100)).await.unwrap());
    assert!(b.remember_once("zero", Duration::ZERO).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_threat_score_is_shared_and_decays() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let hl = Duration::from_secs(1);
    assert_eq!(b.threat_score("p", hl).await.unwrap(), 0.0);
    let start = Instant::now();
    let s = a.threat_add("p", 8.0, hl).await.unwrap();
    assert!((7.9..=8.0).contains(&s), "{s}");
    let s = b.threat_add("p", 2.0, hl).await.unwrap();
    assert!((9.5..=10.0).contains(&s), "{s}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = a.threat_score("p", hl).await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    // ≈ 10 · 2^-elapsed: at most half of 10 after a half-life, and not much less.
    assert!(s <= 5.0 + 1e-9, "{s}");
    assert!(s >= 10.0 * (-(elapsed + 0.5)).exp2(), "{s} after {elapsed}");
    // Negative weights lower it; zero forgets it.
    assert_eq!(b.threat_add("p", -100.0, hl).await.unwrap(), 0.0);
    let mut conn = raw(&server).await;
    let exists: i64 = query(&mut conn, redis::cmd("EXISTS").arg("palisade:threat:p")).await;
    assert_eq!(exists, 0);
    // The hash expires once decayed below the floor: 1.0 with a 1 s
    // half-life lives log2(1000) ≈ 10 s.
    a.threat_add("q", 1.0, hl).await.unwrap();
    let pttl: i64 = query(&mut conn, redis::cmd("PTTL").arg("palisade:threat:q")).await;
    assert!((9_000..=10_000).contains(&pttl), "{pttl}");
    // Invalid arguments never reach Redis.
    assert!(matches!(
        a.threat_add("p", 1.0, Duration::ZERO).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        a.threat_add("p", f64::NAN, hl).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        a.threat_score("p", Duration::ZERO).await,
        Err(StateError::Protocol(_))
    ));
}

/// Every operation, each expected to fail (quickly) or succeed.
async fn all_ops(b: &Backend) -> Vec<(&'static str, Result<(), StateError>)> {
    let hl = Duration::from_secs(10);
    vec![
        ("ping", b.ping().await),
        ("rate_check", b.rate_check("k", slow(5), 1.0).await.map(drop)),
        ("revoke", b.revoke("s", unix_now() + 60).await),
        ("is_revoked", b.is_revoked("s").await.map(drop)),
        (
            "remember_once",
            b.remember_once(&format!("j{:?}", Instant::now()), hl).await.map(drop),
        ),
        ("threat_add", b.threat_add("p", 1.0, hl).await.map(drop)),
        ("threat_score", b.threat_score("p", hl).await.map(drop)),
    ]
}

async fn assert_all_fail_promptly(b: &Backend) {
    for _ in 0..2 {
        let started = Instant::now();
        for (name, result) in all_ops(b).await {
            let e = result.expect_err(name);
            assert!(
                matches!(e, StateError::Unavailable(_) | StateError::Timeout),
                "{name}: {e:?}"
            );
        }
        // 7 operations, each bounded by the op timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_fails_closed_then_recovers_on_restart() {
    let mut server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    for (name, result) in all_ops(&a).await {
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(b.rate_check("k", slow(5), 1.0).await.unwrap().allowed);
    let port = server.port;
    server.kill();
    for replica in [&a, &b] {
        assert_all_fail_promptly(replica).await;
    }
    // Restarted on the same port (empty: no persistence): both reconnect.
    let server = RedisServer::start_on(port);
    for replica in [&a, &b] {
        eventually_ok(Duration::from_secs(10), || replica.ping()).await;
        for (name, result) in all_ops(replica).await {
            result.unwrap_or_else(|e| panic!("{name} after restart: {e}"));
        }
    }
    // Scripts were reloaded (NOSCRIPT fallback) and state is shared again.
    let d = b.rate_check("after", slow(1), 1.0).await.unwrap();
    assert!(d.allowed);
    assert!(!a.rate_check("after", slow(1), 1.0).await.unwrap().allowed);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unresponsive_server_times_out_within_op_timeout() {
    let server = RedisServer::start();
    let b = replica(&server).await;
    b.ping().await.unwrap();
    server.pause();
    for (name, result) in all_ops(&b).await {
        assert_eq!(result, Err(StateError::Timeout), "{name}");
    }
    let started = Instant::now();
    assert_eq!(b.rate_check("k", slow(5), 1.0).await, Err(StateError::Timeout));
    let took = started.elapsed();
    assert!(
        took >= OP_TIMEOUT - Duration::from_millis(50) && took < OP_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    server.resume();
    eventually_ok(Duration::from_secs(10), || b.ping()).await;
    assert!(b.rate_check("k2", slow(5), 1.0).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_startup_then_comes_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    let b = Backend::redis(options(url))
        .await
        .expect("Redis being down is not a start-up error");
    assert!(started.elapsed() < Duration::from_secs(1), "start-up waited on Redis");
    assert_all_fail_promptly(&b).await;
    let server = RedisServer::start_on(port);
    eventually_ok(Duration::from_secs(10), || b.ping()).await;
    for (name, result) in all_ops(&b).await {
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    drop(server);
}

#[tokio::test]
async fn redis_invalid_url_is_the_only_start_up_error() {
    for url in ["", "not a url", "http://127.0.0.1:6379/", "redis://"] {
        let result = Backend::redis(options(url.into())).await;
        assert!(matches!(result, Err(StateError::Unavailable(_))), "{url:?}");
    }
    // A password in the URL is not echoed by the error or by Debug.
    let secret = "redis://:hunter2@127.0.0.1:1/x/y/z";
    if let Err(e) = Backend::redis(options(secret.into())).await {
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    assert!(!format!("{:?}", options(secret.into())).contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_invalid_arguments_are_protocol_errors() {
    let server = RedisServer::start();
    let b = replica(&server).await;
    for r in [rate(0.0, 1), rate(f64::NAN, 1), rate(f64::INFINITY, 1), rate(1.0, 0)] {
        assert!(
            matches!(b.rate_check("k", r, 1.0).await, Err(StateError::Protocol(_))),
            "{r:?}"
        );
    }
    for cost in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(b.rate_check("k", slow(1), cost).await, Err(StateError::Protocol(_))),
            "{cost}"
        );
    }
    assert!(b.rate_check("k", slow(1), 1.0).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tampered_entries_fail_closed() {
    let server = RedisServer::start();
    let b = replica(&server).await;
    let mut conn = raw(&server).await;
    let _: () = query(
        &mut conn,
        redis::cmd("SET").arg("palisade:rl:garbage").arg("not a number"),
    )
    .await;
    let _: () = query(&mut conn, redis::cmd("RPUSH").arg("palisade:rl:list").arg("x")).await;
    let _: () = query(
        &mut conn,
        redis::cmd("HSET")
            .arg("palisade:threat:bad")
            .arg("s")
            .arg("x")
            .arg("t")
            .arg("1"),
    )
    .await;
    let _: () = query(&mut conn, redis::cmd("SET").arg("palisade:threat:str").arg("1")).await;
    assert!(matches!(
        b.rate_check("garbage", slow(5), 1.0).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        b.rate_check("list", slow(5), 1.0).await,
        Err(StateError::Protocol(_))
    ));
    let hl = Duration::from_secs(10);
    assert!(matches!(
        b.threat_add("bad", 1.0, hl).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(b.threat_score("bad", hl).await, Err(StateError::Protocol(_))));
    assert!(matches!(b.threat_score("str", hl).await, Err(StateError::Protocol(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scripts_survive_script_flush() {
    let server = RedisServer::start();
    let b = replica(&server).await;
    assert!(b.rate_check("k", slow(2), 1.0).await.unwrap().allowed);
    b.threat_add("p", 1.0, Duration::from_secs(10)).await.unwrap();
    let mut conn = raw(&server).await;
    let _: () = query(&mut conn, redis::cmd("SCRIPT").arg("FLUSH")).await;
    assert!(b.rate_check("k", slow(2), 1.0).await.unwrap().allowed);
    assert!(!b.rate_check("k", slow(2), 1.0).await.unwrap().allowed);
    assert!(b.threat_score("p", Duration::from_secs(10)).await.unwrap() > 0.9);
    b.revoke("s", unix_now() + 60).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hostile_keys_stay_data() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server).await, replica(&server).await);
    let mut conn = raw(&server).await;
    let _: () = query(&mut conn, redis::cmd("SET").arg("canary").arg("alive")).await;
    let keys = hostile_keys();
    let hl = Duration::from_secs(60);
    for k in &keys {
        assert!(a.rate_check(k, slow(1), 1.0).await.unwrap().allowed, "{k:?}");
        assert!(!b.rate_check(k, slow(1), 1.0).await.unwrap().allowed, "{k:?}");
        assert!(a.remember_once(k, hl).await.unwrap(), "{k:?}");
        assert!(!b.remember_once(k, hl).await.unwrap(), "{k:?}");
        a.revoke(k, unix_now() + 60).await.unwrap();
        assert!(b.is_revoked(k).await.unwrap(), "{k:?}");
        let s = a.threat_add(k, 1.0, hl).await.unwrap();
        assert!((s - 1.0).abs() < 1e-3);
        assert!(b.threat_score(k, hl).await.unwrap() > 0.9);
    }
    // Nothing was flushed or written outside the prefix.
    let canary: String = query(&mut conn, redis::cmd("GET").arg("canary")).await;
    assert_eq!(canary, "alive");
    let pwned: i64 = query(&mut conn, redis::cmd("EXISTS").arg("pwned")).await;
    assert_eq!(pwned, 0);
    // One key per (kind, hostile key), stored byte for byte or hashed; none long.
    let stored: Vec<Vec<u8>> = query(&mut conn, redis::cmd("KEYS").arg("palisade:*")).await;
    assert_eq!(stored.len(), 4 * keys.len());
    assert!(
        stored.iter().all(|k| k.len() <= PREFIX.len() + "threat:".len() + 512),
        "a long key was stored as is"
    );
    for k in &keys {
        let expected = format!("palisade:once:{}", normalize_key(k));
        assert!(stored.iter().any(|s| s == expected.as_bytes()), "{k:?}");
    }
}

fn hostile_keys() -> Vec<String> {
    vec![
        "line\nbreak".into(),
        "cr\r\nlf".into(),
        "quote\"s'and`back".into(),
        "nul\0byte".into(),
        "\0".into(),
        "".into(),
        " ".into(),
        "x".repeat(10 * 1024),
        "y".repeat(10 * 1024),
        "x".repeat(512),
        "x".repeat(513),
        "#short".into(),
        "\"]) redis.call('FLUSHALL') --".into(),
        "'; return redis.call('FLUSHDB') --".into(),
        "]] redis.call('SET','pwned','1') [[".into(),
        "KEYS[1]".into(),
        "*1\r\n$8\r\nFLUSHALL\r\n".into(),
        "ünïcødé ✓ \u{202e}rtl".into(),
        "%s%n{}{0}".into(),
    ]
}
