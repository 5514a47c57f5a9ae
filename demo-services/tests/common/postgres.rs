//! A real Postgres server for the tests of one test binary: made on first use
//! (`initdb` into a temporary directory, then `postgres` on a free loopback
//! port, no fsync), one new database per test, and stopped with its directory
//! removed when the binary has exited (a shell beside it watches for that). Needs Debian's `postgresql` (its binaries are
//! found under `/usr/lib/postgresql/<version>/bin`, or in `$PG_BIN`, or on the
//! `PATH`). Run as root, the server runs as the `postgres` user, as it must.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

struct Server {
    port: u16,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The URL of a new, empty database on this binary's server.
pub async fn database(name: &str) -> String {
    let server = SERVER.get_or_init(start);
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let db = format!("{name}_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    let mut conn = connect_within(&admin, Duration::from_secs(30)).await;
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))).await.unwrap();
    conn.close().await.unwrap();
    format!("postgres://postgres@127.0.0.1:{}/{db}", server.port)
}

/// The server's address (`127.0.0.1:PORT`), for tests that stop a database.
pub fn admin_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", SERVER.get_or_init(start).port)
}

async fn connect_within(url: &str, limit: Duration) -> sqlx::PgConnection {
    let deadline = Instant::now() + limit;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => return conn,
            // "the database system is starting up", or not listening yet.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("Postgres did not answer within {limit:?}: {err}"),
        }
    }
}

fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).filter(|d| d.join(name).exists()).collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|d| d.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    versions.pop().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

/// The uid and gid of `postgres` when this runs as root (Postgres will not run
/// as root), from `/etc/passwd`.
fn run_as() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map_or(true, |me| me.uid() != 0) {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root, Postgres needs the `postgres` user (apt-get install postgresql)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn command(program: impl AsRef<std::ffi::OsStr>, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.env("LC_ALL", "C").stdin(Stdio::null());
    command
}

/// The shell that runs the server: it starts `postgres`, waits for this test
/// binary (`$1`) to be gone, then shuts the server down at once and removes
/// its directory. So nothing outlives the binary, however it ends.
const WATCH: &str = r#"
postgres -D "$2/data" -p "$3" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$2" \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=400 -c shared_buffers=32MB >"$2/postgres.log" 2>&1 &
server=$!
while [ -d "/proc/$1" ] && kill -0 "$server" 2>/dev/null; do sleep 0.2; done
kill -QUIT "$server" 2>/dev/null
wait "$server"
rm -rf "$2"
"#;

fn start() -> Server {
    let user = run_as();
    let dir = tempfile::Builder::new().prefix("tower-gateway-pg-").tempdir().unwrap().keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let data = dir.join("data");
    let initdb = command(bin("initdb"), user)
        .args(["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "initdb ({}): {err}; these tests need Postgres (apt-get install postgresql)",
                bin("initdb").display()
            )
        });
    assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bin_dir = bin("postgres").parent().map(Path::to_path_buf).unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    #[allow(clippy::zombie_processes, reason = "the shell outlives this binary by design: it is what cleans up")]
    command("sh", user)
        .env("PATH", path)
        .args(["-c", WATCH, "watch-postgres", &std::process::id().to_string(), dir.to_str().unwrap()])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    Server { port }
}
