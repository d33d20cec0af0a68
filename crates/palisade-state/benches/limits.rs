//! `cargo bench -p palisade-state`: ns per operation for the local backend
//! and, when `redis-server` is on PATH, round trips to a local Redis.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use palisade_state::{Backend, Rate, RedisOptions, gcra};

fn report(name: &str, n: u32, took: Duration) {
    println!(
        "{name:<46} {:>10.0} ns/op  ({n} ops)",
        took.as_nanos() as f64 / f64::from(n)
    );
}

async fn time<F, Fut>(name: &str, n: u32, mut f: F)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        f(i).await;
    }
    report(name, n, start.elapsed());
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rate = Rate {
            per_second: 1e6,
            burst: 1_000_000,
        };
        let n = 1_000_000;
        let start = Instant::now();
        let mut tat = None;
        for i in 0..n {
            let (d, t) = gcra(black_box(tat), f64::from(i) * 1e-6, rate, 1.0);
            if d.allowed {
                tat = Some(t);
            }
        }
        report("gcra (pure)", n, start.elapsed());

        let local = Backend::local();
        time("local rate_check, one hot key", n, |_| {
            let b = &local;
            async move {
                black_box(b.rate_check("user:iss|alice", rate, 1.0).await.unwrap());
            }
        })
        .await;
        let keys: Vec<String> = (0..100_000).map(|i| format!("user:iss|user-{i}")).collect();
        time("local rate_check, 100k keys", n, |i| {
            let (b, k) = (&local, &keys[i as usize % keys.len()]);
            async move {
                black_box(b.rate_check(k, rate, 1.0).await.unwrap());
            }
        })
        .await;

        if std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .all(|d| !d.join("redis-server").is_file())
        {
            println!("redis-server not on PATH: Redis round trips skipped");
            return;
        }
        let server = support::RedisServer::start();
        let opts = RedisOptions {
            url: server.url(),
            prefix: "bench:".into(),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        };
        let redis = Backend::redis(opts).await.unwrap();
        redis.ping().await.unwrap();
        let n = 20_000;
        time("redis ping", n, |_| {
            let b = &redis;
            async move { b.ping().await.unwrap() }
        })
        .await;
        time("redis rate_check (Lua GCRA), sequential", n, |i| {
            let (b, k) = (&redis, &keys[i as usize % keys.len()]);
            async move {
                black_box(b.rate_check(k, rate, 1.0).await.unwrap());
            }
        })
        .await;
        time("redis remember_once (SET NX PX), sequential", n, |i| {
            let b = &redis;
            async move {
                black_box(
                    b.remember_once(&format!("jti-{i}"), Duration::from_secs(60))
                        .await
                        .unwrap(),
                );
            }
        })
        .await;
        // 64 in flight on one multiplexed connection.
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64u32 {
            let b = redis.clone();
            tasks.spawn(async move {
                for i in 0..n / 64 {
                    black_box(b.rate_check(&format!("c{t}-{}", i % 100), rate, 1.0).await.unwrap());
                }
            });
        }
        tasks.join_all().await;
        report("redis rate_check, 64 concurrent (per op)", n / 64 * 64, start.elapsed());
        drop(server);
    });
}
