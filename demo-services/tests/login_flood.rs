//! A login flood against the real user-service binary, with production Argon2
//! parameters: memory stays bounded, the service keeps answering, and a real
//! user still gets in.

mod common;

use std::time::{Duration, Instant};

use common::{HttpClient, Process, rss_of, temp_db};
use http::{Method, StatusCode};
use serde_json::json;

const USER_SERVICE: &str = env!("CARGO_BIN_EXE_user-service");

/// The Swarm task's memory limit for user-service.
const TASK_LIMIT: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_logins_stay_within_the_task_limit() {
    let (dir, url) = temp_db("users.db");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a login flood test secret of 32+ bytes").unwrap();
    let env = [
        ("DATABASE_URL", url),
        ("JWT_ALGORITHM", "HS256".to_owned()),
        ("JWT_SECRET_FILE", secret.display().to_string()),
    ];
    let service = Process::start(USER_SERVICE, &env).await;
    let client = HttpClient::new();
    let login = |email: &str, password: &str| {
        let (client, url) = (client.clone(), format!("{}/login", service.url()));
        let body = json!({"email": email, "password": password});
        async move { client.send(Method::POST, &url, Some(body)).await.map(|(status, _)| status) }
    };
    let signup = json!({"name": "Ann", "email": "ann@example.com", "password": "correct horse"});
    let (status, _) = client.send(Method::POST, &format!("{}/signup", service.url()), Some(signup)).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let before = rss_of(service.pid());

    // Sample memory while 200 logins for an unknown email arrive at once.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (sampling, pid) = (sampling.clone(), service.pid());
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_of(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..200 {
        flood.spawn(login("nobody@example.com", "guess"));
    }
    // Meanwhile the real user logs in, coming back when told to.
    let started = Instant::now();
    let real = loop {
        let status = login("ann@example.com", "correct horse").await.expect("the service answers");
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still refused after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(real, StatusCode::OK);
    let waited = started.elapsed();

    let (mut unauthorized, mut busy) = (0, 0);
    while let Some(done) = flood.join_next().await {
        match done.unwrap() {
            Some(StatusCode::UNAUTHORIZED) => unauthorized += 1,
            Some(StatusCode::SERVICE_UNAVAILABLE) => busy += 1,
            other => panic!("a flooding login got {other:?}"),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let mb = |bytes: u64| bytes / (1024 * 1024);
    println!(
        "RSS {} MB before, {} MB at peak; {unauthorized} × 401, {busy} × 503; the real login took {waited:?}",
        mb(before),
        mb(peak)
    );
    assert_eq!(unauthorized + busy, 200);
    assert!(unauthorized >= 3, "some were checked: {unauthorized}");
    assert!(peak < TASK_LIMIT, "peak RSS {} MB", mb(peak));
    assert_eq!(login("ann@example.com", "correct horse").await, Some(StatusCode::OK), "answering after the flood");
}
