//! The `probe` binary's Redis health check against a real `redis-server` with
//! a password: healthy only when it authenticates and Redis answers `PONG`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(addr: &str, conf: &std::path::Path) -> bool {
    Command::new(PROBE)
        .args(["--redis", addr, conf.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_redis_probe_passes_only_when_authenticated_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let right = write("right.conf", "requirepass the-right-one\n");
    let wrong = write("wrong.conf", "requirepass not-it\n");
    let none = write("none.conf", "# no password\n");
    assert!(!probe(&addr, &right), "healthy with nothing listening");

    let _redis = Killed(
        Command::new("redis-server")
            .args([right.to_str().unwrap(), "--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(&addr, &right) {
        assert!(Instant::now() < deadline, "redis-server never answered the probe");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!probe(&addr, &wrong), "healthy with a wrong password");
    assert!(!probe(&addr, &none), "healthy on NOAUTH");
}
