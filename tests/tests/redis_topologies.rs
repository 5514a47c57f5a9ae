//! Both Redis stores — revocations (tower-gateway-auth) and rate limits
//! (tower-gateway) — on one connection, behind a real Sentinel set and on a
//! real Cluster: the same contracts as on one server, the Cluster's keys of one
//! decision in one slot, and a Sentinel failover under load that loses no
//! revocation and leaves limits working, its window measured and printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_gateway::rate_limit::{self, Quota, Store};
use tower_gateway::redis_connection::{RedisConfig, RedisConnection};
use tower_gateway_auth::store::{TokenRecord, TokenState};
use tower_gateway_auth::{RedisStore, TokenStore};
use tower_gateway_tests::{RedisCluster, RedisSentinelSet, closed_port, test_ca, token_store_contract};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn record<'a>(id: &'a str, subject: &'a str) -> TokenRecord<'a> {
    TokenRecord { id, subject, issued_at: Some(now()), expires_at: now() + 600 }
}

/// A limit of a burst of 3, then 1 a minute: three allowed, the fourth refused.
async fn limits_hold(limits: &rate_limit::RedisStore, key: &str) {
    let quota = Quota::per_minute(1).burst(3);
    for n in 0..3 {
        assert!(limits.decide(key, &quota).await.unwrap().allowed, "{key}: request {n} is in the burst");
    }
    let refused = limits.decide(key, &quota).await.unwrap();
    assert!(!refused.allowed && refused.retry_after > Duration::ZERO, "{key}: the fourth waits: {refused:?}");
}

fn both(conn: &RedisConnection) -> (Arc<RedisStore>, rate_limit::RedisStore) {
    (Arc::new(RedisStore::with_connection(conn.clone())), rate_limit::RedisStore::with_connection(conn.clone()))
}

#[tokio::test]
async fn both_stores_keep_their_contracts_behind_sentinels() {
    let set = RedisSentinelSet::start().await;
    let conn = RedisConfig::from_url(&set.url()).unwrap().connect().unwrap();
    let (tokens, limits) = both(&conn);
    token_store_contract(tokens).await;
    limits_hold(&limits, "login:203.0.113.7").await;
}

#[tokio::test]
async fn both_stores_keep_their_contracts_on_a_cluster_each_decision_in_one_slot() {
    let cluster = RedisCluster::start().await;
    let conn = RedisConfig::from_url(&cluster.url()).unwrap().connect().unwrap();
    assert!(conn.is_cluster());
    let (tokens, limits) = both(&conn);
    // The check script reads three keys: on a Cluster they must share a slot,
    // or Redis answers CROSSSLOT and the contract fails.
    token_store_contract(tokens.clone()).await;
    for n in 0..20 {
        limits_hold(&limits, &format!("login:198.51.100.{n}")).await;
    }

    // Each subject's keys are on one node, and the subjects are spread.
    let mut holders = std::collections::BTreeSet::new();
    for subject in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        tokens.check(record("t1", subject)).await.unwrap();
        tokens.revoke(record("t2", subject)).await.unwrap();
        tokens.revoke_subject(subject, now() - 60, now() + 600).await.unwrap();
        let mut on = Vec::new();
        for (i, mut node) in cluster.nodes().await.into_iter().enumerate() {
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("tower-gateway:{{s:{subject}}}*")).query_async(&mut node).await.unwrap();
            if !keys.is_empty() {
                assert_eq!(keys.len(), 3, "{subject}: valid, revoked, revoked-before on node {i}: {keys:?}");
                on.push(i);
            }
        }
        assert_eq!(on.len(), 1, "{subject}'s keys are on one node: {on:?}");
        holders.insert(on[0]);
    }
    assert!(holders.len() > 1, "six subjects on one node only: {holders:?}");
}

/// What the load saw: when each request ended and whether it was answered.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Milliseconds since the start of the first failure and of the first
    /// success after it (0: none yet).
    first_failure_ms: AtomicU64,
    recovered_ms: AtomicU64,
}

impl Load {
    fn record(&self, started: Instant, ok: bool) {
        let at = started.elapsed().as_millis().max(1) as u64;
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if self.first_failure_ms.load(Ordering::Relaxed) != 0 {
                let _ = self.recovered_ms.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let _ = self.first_failure_ms.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_loses_no_revocation_and_leaves_limits_working() {
    let mut set = RedisSentinelSet::start().await;
    let (first_master, replica) = set.ports();
    let conn = RedisConfig::from_url(&set.url())
        .unwrap()
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .connect()
        .unwrap();
    // Revocations wait for the replica, so none reported done can be lost.
    let tokens = Arc::new(RedisStore::with_connection(conn.clone()).revocation_replicas(1, Duration::from_millis(150)));
    let limits = Arc::new(rate_limit::RedisStore::with_connection(conn.clone()));

    let ids: Vec<String> = (0..200).map(|n| format!("revoked-{n}")).collect();
    for id in &ids {
        tokens.revoke(record(id, "user-1")).await.unwrap();
    }

    // Load: token checks and limit decisions, back to back, from 8 tasks.
    let started = Instant::now();
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let (tokens, limits, load, stop) = (tokens.clone(), limits.clone(), load.clone(), stop.clone());
        tasks.spawn(async move {
            let quota = Quota::per_second(1_000_000).burst(1_000_000);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ok = if task % 2 == 0 {
                    let id = format!("live-{task}-{n}");
                    tokens.check(record(&id, "user-2")).await.is_ok()
                } else {
                    limits.decide(&format!("load:{task}"), &quota).await.map(|d| d.allowed).unwrap_or(false)
                };
                load.record(started, ok);
                if !ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    let before_kill = Instant::now();
    while load.ok.load(Ordering::Relaxed) < 500 {
        assert!(before_kill.elapsed() < Duration::from_secs(10), "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let killed_ms = started.elapsed().as_millis() as u64;
    set.kill(first_master);
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.recovered_ms.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no answer within 30 s of the master's death");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little load on the new master, then stop.
    let after = load.ok.load(Ordering::Relaxed);
    while load.ok.load(Ordering::Relaxed) < after + 200 {
        assert!(Instant::now() < deadline, "the load did not go on after the failover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    assert_eq!(set.master_port().await, replica, "the Sentinels promoted the replica");
    let first_failure = load.first_failure_ms.load(Ordering::Relaxed);
    let recovered = load.recovered_ms.load(Ordering::Relaxed);
    println!(
        "sentinel failover: master killed at {killed_ms} ms; first failed request at {first_failure} ms; \
         first answer from the new master at {recovered} ms: a window of {} ms from the kill; \
         {} requests answered, {} failed",
        recovered - killed_ms,
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    assert!(first_failure >= killed_ms, "nothing failed before the kill");

    // Every revocation written before the failover is still there.
    for id in &ids {
        assert_eq!(tokens.check(record(id, "user-1")).await.unwrap(), TokenState::Revoked, "{id}");
    }
    // And one written after it lands on the new master.
    tokens.revoke(record("after", "user-1")).await.expect_err("no replica is left to acknowledge it");
    assert_eq!(tokens.check(record("after", "user-1")).await.unwrap(), TokenState::Revoked);
    // Limits work again: a new key's burst, then a refusal.
    limits_hold(&limits, "after-failover").await;
}

/// Sentinels that accept connections and never answer: every caller fails
/// within the connect timeout, however many wait at once — none queues behind
/// another's attempt.
#[tokio::test]
async fn silent_sentinels_fail_every_caller_within_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket); // accepted, never read nor answered
        }
    });
    let conn = RedisConfig::from_url(&format!("redis+sentinel://{addr}/gw"))
        .unwrap()
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .unwrap();
    let limits = Arc::new(rate_limit::RedisStore::with_connection(conn));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..50 {
        let limits = limits.clone();
        calls.spawn(async move {
            let quota = Quota::per_second(10);
            let at = Instant::now();
            let answer = limits.decide(&format!("k{n}"), &quota).await;
            (answer.is_err(), at.elapsed())
        });
    }
    while let Some(call) = calls.join_next().await {
        let (failed, waited) = call.unwrap();
        assert!(failed, "no Redis, no decision");
        // 200 ms, and scheduling: far below 50 callers queued one after another (10 s).
        assert!(waited < Duration::from_secs(2), "a caller waited {waited:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "all 50 took {:?}", started.elapsed());
    held.abort();
}

/// `rediss://`: a Redis that speaks only TLS, its certificate from a CA the
/// client is given (`ca_file`): both stores keep their contracts through it; a
/// client without that CA, or speaking plain TCP, gets no answer.
#[tokio::test]
async fn both_stores_over_tls_with_the_servers_ca_and_none_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let port = closed_port().port();
    let mut server = std::process::Command::new("redis-server")
        .current_dir(dir.path())
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-cert-file", cert.to_str().unwrap(), "--tls-key-file", key.to_str().unwrap()])
        .args(["--tls-ca-cert-file", ca_file.to_str().unwrap(), "--tls-auth-clients", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (Debian's is built with TLS)");
    let url = format!("rediss://127.0.0.1:{port}/0");
    let conn = RedisConfig::from_url(&url).unwrap().ca_file(&ca_file).unwrap().connect().unwrap();
    let (tokens, limits) = both(&conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.ping().await.is_err() {
        if Instant::now() >= deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("redis-server over TLS did not answer within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token_store_contract(tokens).await;
    limits_hold(&limits, "tls:203.0.113.9").await;

    // The system's roots do not hold the test CA; plain TCP is not TLS.
    let untrusting = RedisConfig::from_url(&url).unwrap().connect().unwrap();
    assert!(RedisStore::with_connection(untrusting).ping().await.is_err(), "a certificate from an unknown CA");
    let plain = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}/0")).unwrap().connect().unwrap();
    assert!(RedisStore::with_connection(plain).ping().await.is_err(), "plain TCP to a TLS port");
    let refused = RedisConfig::from_url(&url).unwrap().ca_file(&key).unwrap_err();
    assert!(refused.to_string().contains("no PEM certificate"), "a private key is no CA: {refused}");
    let _ = server.kill();
    let _ = server.wait();
}
