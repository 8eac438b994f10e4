//! `patron serve` with real clients: the binary is started on 127.0.0.1 (port 0, the chosen
//! port read from its first line) over a warehouse made by a real `patron run`, and queried
//! with `psql` and Python's `psycopg` (simple and extended protocol).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{self, repo, text};

/// One warehouse made by `patron run` on the fixtures, shared by the read-only tests.
pub(crate) fn shared_warehouse() -> &'static Path {
    static WAREHOUSE: OnceLock<PathBuf> = OnceLock::new();
    WAREHOUSE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let wh = dir.join("wh");
        support::run_default(&wh);
        wh
    })
}

/// A running `patron serve`, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) banner: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `patron serve --listen 127.0.0.1:0 <args>` in `cwd` and waits for its banner.
pub(crate) fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "patron=warn")
        .env_remove("PATRON_SERVE_USER")
        .env_remove("PATRON_SERVE_PASSWORD_HASH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("patron serve starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port: u16 = rest.split(' ').next().unwrap().parse().unwrap();
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Server {
                child,
                port,
                banner: line,
            };
        }
    }
    let status = child.wait().unwrap();
    panic!("patron serve exited ({status}) before listening:\n{seen}");
}

/// Runs `patron serve` expecting it to refuse to start; returns its output.
fn start_fails(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patron"));
    cmd.arg("serve")
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "patron=warn");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("patron serve {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Runs one psql command (`-c sql`, unaligned, tuples only) as `user` with `password`.
pub(crate) fn psql(port: u16, user: &str, password: Option<&str>, sslmode: &str, sql: &str) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={port} dbname=patron user={user} sslmode={sslmode} connect_timeout=10"
    ))
    .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().expect("psql runs")
}

/// psql output lines; panics with the output unless it succeeded.
pub(crate) fn psql_rows(port: u16, sql: &str) -> Vec<String> {
    let out = psql(port, "analyst", None, "disable", sql);
    assert_eq!(out.status.code(), Some(0), "{sql}\n{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Rows equal cell by cell: text exactly, numbers to 1e-9 relative.
fn assert_same_rows(what: &str, a: &[Vec<Result<f64, String>>], b: &[Vec<Result<f64, String>>]) {
    let same = |x: &Result<f64, String>, y: &Result<f64, String>| match (x, y) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => x == y,
    };
    let equal = a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(x, y)| same(x, y)));
    assert!(equal, "{what}: served {a:?}\n direct {b:?}");
}

/// Runs a Python script using psycopg with `PORT` (and the given env) set; returns its output.
pub(crate) fn python(port: u16, script: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).env("PORT", port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("python3 runs")
}

/// Rows with numbers parsed, so PostgreSQL's `0` and Arrow's `0.0` compare equal.
fn numeric(rows: &[String]) -> Vec<Vec<Result<f64, String>>> {
    rows.iter()
        .map(|r| {
            r.split('|')
                .map(|v| v.parse::<f64>().map_err(|_| v.to_string()))
                .collect()
        })
        .collect()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A project whose pipeline file has `serve_toml` appended; returns (project dir, pipeline).
pub(crate) fn project_with_serve(dir: &Path, serve_toml: &str) -> PathBuf {
    let pipeline = support::scratch_project(dir);
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text.push_str("\n[serve]\n");
    text.push_str(serve_toml);
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

/// A project whose `[serve]` lists one user, `name`, logging in with `password`: the
/// pipeline file and the user's password hash.
pub(crate) fn project_with_user(dir: &Path, name: &str, password: &str) -> (PathBuf, String) {
    let hash = hash_of(password);
    let pipeline = project_with_serve(
        dir,
        &format!("users = [{{ name = \"{name}\", password_hash = \"{hash}\" }}]\n"),
    );
    (pipeline, hash)
}

pub(crate) fn hash_of(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(["serve", "--hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        hash.starts_with("scram-sha-256$4096:") && !hash.contains(password),
        "{hash}"
    );
    hash
}

#[test]
fn serve_lists_tables_and_answers_dashboard_queries_over_psql() {
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    assert!(server.banner.contains("auth none"), "{}", server.banner);

    // Discovery the way BI tools do it: information_schema and pg_catalog.
    let tables = psql_rows(
        server.port,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in ["customer_scores", "fct_customer", "model_params", "runs", "stg_sales"] {
        assert!(tables.contains(&t.to_string()), "{t} not listed: {tables:?}");
    }
    let columns = psql_rows(
        server.port,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'customer_scores'",
    );
    for c in [
        "customer_id",
        "clv",
        "churn_risk",
        "rfm_segment",
        "value_tier",
        "churn_reasons",
    ] {
        assert!(columns.contains(&c.to_string()), "{c} not a column: {columns:?}");
    }
    let relations = psql_rows(
        server.port,
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' ORDER BY 1",
    );
    assert!(relations.contains(&"customer_scores".to_string()), "{relations:?}");
    // psql's own catalog queries (\dt lists relations through pg_catalog).
    let dt = psql_rows(server.port, "\\dt");
    assert!(dt.iter().any(|l| l.contains("customer_scores")), "{dt:?}");

    // Every supported dashboard query (docs/guide.md), checked against the same tables read
    // directly; floats to 1e-9 relative (aggregation order may differ).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let direct = rt.block_on(support::warehouse_session(wh));
    for d in patron::serve::dashboards::DASHBOARDS {
        let served = psql_rows(server.port, d.sql);
        let expected = rt.block_on(support::rows(&direct, d.sql));
        assert!(!served.is_empty(), "{}: no rows", d.name);
        assert_same_rows(d.name, &numeric(&served), &numeric(&expected));
        // The extended protocol too (parse/bind/execute), through psycopg.
        let out = python(
            server.port,
            "import os, psycopg\n\
             c = psycopg.connect(host='127.0.0.1', port=int(os.environ['PORT']), dbname='patron', user='analyst')\n\
             print(len(c.execute(os.environ['SQL']).fetchall()))",
            &[("SQL", d.sql)],
        );
        assert_eq!(out.status.code(), Some(0), "{}: {}", d.name, text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            served.len().to_string(),
            "{}",
            d.name
        );
    }
    let customers = rt.block_on(support::scalar(&direct, "SELECT COUNT(*) FROM customer_scores")) as i64;
    let buckets = psql_rows(
        server.port,
        patron::serve::dashboards::dashboard("clv_distribution").unwrap().sql,
    );
    let total: i64 = buckets
        .iter()
        .map(|l| l.split('|').nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, customers, "{buckets:?}");
    let top = psql_rows(
        server.port,
        patron::serve::dashboards::dashboard("top_customers").unwrap().sql,
    );
    assert_eq!(top.len() as i64, customers.min(100));
    let clvs: Vec<f64> = top
        .iter()
        .map(|l| l.split('|').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(clvs.windows(2).all(|w| w[0] >= w[1]), "not sorted by clv: {clvs:?}");
    let trend = psql_rows(
        server.port,
        patron::serve::dashboards::dashboard("churn_risk_trend").unwrap().sql,
    );
    assert_eq!(trend.len(), 1, "one run, one as-of day: {trend:?}");

    let params = psql_rows(server.port, "SELECT COUNT(*) FROM model_params");
    assert!(params[0].parse::<i64>().unwrap() > 0, "{params:?}");
}

#[test]
fn serve_refuses_writes_and_server_file_access_over_psql_and_psycopg() {
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    let out_dir = tempfile::tempdir().unwrap();
    let copy_target = out_dir.path().join("leak.csv");
    let refused = [
        "CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!("COPY customer_scores TO '{}'", copy_target.display()),
        format!(
            "COPY (SELECT * FROM customer_scores) TO '{}' STORED AS CSV",
            copy_target.display()
        ),
        "INSERT INTO runs SELECT * FROM runs".to_string(),
        "CREATE TABLE t AS SELECT 1 AS x".to_string(),
        "DROP TABLE customer_scores".to_string(),
        "SELECT 1 AS x INTO t2".to_string(),
        "SET datafusion.execution.target_partitions = 1".to_string(),
    ];
    for sql in &refused {
        let out = psql(server.port, "analyst", None, "disable", sql);
        assert_ne!(out.status.code(), Some(0), "{sql} was accepted\n{}", text(&out));
        assert!(
            stderr(&out).contains("read-only") || stderr(&out).contains("not allow"),
            "{sql}: {}",
            text(&out)
        );
    }
    // Reading a server file as a table by its path is not possible either.
    let out = psql(server.port, "analyst", None, "disable", "SELECT * FROM '/etc/passwd'");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("root:"),
        "{}",
        text(&out)
    );
    // Nothing was written and nothing was registered.
    assert!(!copy_target.exists());
    let tables = psql_rows(
        server.port,
        "SELECT table_name FROM information_schema.tables WHERE table_schema='public'",
    );
    assert!(!tables.iter().any(|t| t == "pw" || t == "t" || t == "t2"), "{tables:?}");

    // The same through psycopg, which uses the extended protocol (Parse/Bind/Execute).
    let script = r#"
import os, sys, psycopg
refused = sys.argv[1:] if len(sys.argv) > 1 else []
with psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="patron", user="analyst", sslmode="disable", autocommit=True) as conn:
    for sql in os.environ["SQLS"].split("\n"):
        try:
            conn.execute(sql)
            print("ACCEPTED", sql)
        except psycopg.Error as e:
            print("REFUSED", e.sqlstate, sql)
    n = conn.execute("SELECT COUNT(*) FROM customer_scores WHERE churn_risk >= %s", (0.0,)).fetchone()[0]
    print("COUNT", n)
"#;
    let sqls = refused.join("\n");
    let out = python(server.port, script, &[("SQLS", &sqls)]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("ACCEPTED"), "{printed}");
    assert_eq!(printed.matches("REFUSED").count(), refused.len(), "{printed}");
    assert!(printed.contains("REFUSED 25006 CREATE EXTERNAL TABLE"), "{printed}");
    let count: i64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("COUNT "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(count > 0, "{printed}");
    assert!(!copy_target.exists());
}

#[test]
fn serve_checks_passwords_with_scram_and_refuses_insecure_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, hash) = project_with_user(dir.path(), "bi", "correct horse");
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let p = pipeline.to_str().unwrap();
    let server = start(dir.path(), &["--pipeline", p, "--warehouse", &wh], &[]);
    assert!(server.banner.contains("auth scram-sha-256"), "{}", server.banner);

    let ok = psql(
        server.port,
        "bi",
        Some("correct horse"),
        "disable",
        "SELECT COUNT(*) FROM customer_scores",
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    for (user, password) in [("bi", Some("wrong")), ("bi", None), ("nobody", Some("correct horse"))] {
        let out = psql(server.port, user, password, "disable", "SELECT 1");
        assert_ne!(out.status.code(), Some(0), "{user} logged in with {password:?}");
        let err = stderr(&out);
        assert!(
            err.contains("password authentication failed") || err.contains("password") || err.contains("auth"),
            "{user}/{password:?}: {err}"
        );
    }
    let script = r#"
import os, psycopg
def login(password):
    try:
        with psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="patron", user="bi", password=password, sslmode="disable") as c:
            return c.execute("SELECT 41 + 1").fetchone()[0]
    except psycopg.OperationalError as e:
        return "rejected"
print(login("correct horse"), login("nope"))
"#;
    let out = python(server.port, script, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42 rejected",
        "{}",
        text(&out)
    );
    drop(server);

    // The same users through the environment.
    let env_server = start(
        &repo(),
        &["--warehouse", &wh],
        &[("PATRON_SERVE_USER", "envuser"), ("PATRON_SERVE_PASSWORD_HASH", &hash)],
    );
    let ok = psql(env_server.port, "envuser", Some("correct horse"), "disable", "SELECT 1");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let bad = psql(env_server.port, "envuser", Some("x"), "disable", "SELECT 1");
    assert_ne!(bad.status.code(), Some(0));
    drop(env_server);

    // No users on a non-loopback address: refused before listening (exit 2).
    let out = start_fails(&repo(), &["--warehouse", &wh, "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("without authentication"), "{}", text(&out));

    // TLS configured but the files do not load: refused, no plaintext fallback.
    let tls_dir = tempfile::tempdir().unwrap();
    let bad_tls = project_with_serve(
        tls_dir.path(),
        "tls_cert = \"missing-cert.pem\"\ntls_key = \"missing-key.pem\"\n",
    );
    let out = start_fails(
        tls_dir.path(),
        &["--pipeline", bad_tls.to_str().unwrap(), "--warehouse", &wh],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("TLS") && stderr(&out).contains("missing-cert.pem"),
        "{}",
        text(&out)
    );

    // A malformed hash is a configuration error naming the key.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_hash = project_with_serve(
        bad_dir.path(),
        "users = [{ name = \"bi\", password_hash = \"hunter2\" }]\n",
    );
    let out = start_fails(
        bad_dir.path(),
        &["--pipeline", bad_hash.to_str().unwrap(), "--warehouse", &wh],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("serve.users[0].password_hash"), "{}", text(&out));
}

#[test]
fn serve_requires_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .expect("openssl runs");
    assert!(status.status.success(), "{}", text(&status));
    let pipeline = project_with_serve(
        dir.path(),
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\nrequire_tls = true\n",
    );
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let server = start(
        dir.path(),
        &["--pipeline", pipeline.to_str().unwrap(), "--warehouse", &wh],
        &[],
    );
    assert!(server.banner.contains("tls required"), "{}", server.banner);

    let plain = psql(server.port, "analyst", None, "disable", "SELECT 1");
    assert_ne!(plain.status.code(), Some(0), "{}", text(&plain));
    assert!(stderr(&plain).contains("requires TLS"), "{}", text(&plain));
    let encrypted = psql(
        server.port,
        "analyst",
        None,
        "require",
        "SELECT COUNT(*) FROM customer_scores",
    );
    assert_eq!(encrypted.status.code(), Some(0), "{}", text(&encrypted));
    let script = r#"
import os, psycopg
with psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="patron", user="analyst", sslmode="require") as c:
    print(c.info.pgconn.ssl_in_use, c.execute("SELECT COUNT(*) FROM model_params").fetchone()[0] > 0)
"#;
    let out = python(server.port, script, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True True",
        "{}",
        text(&out)
    );
}

#[test]
fn serve_answers_20_concurrent_clients() {
    let wh = shared_warehouse();
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    let script = r#"
import os, threading, time, psycopg
results, errors = [], []
def client(i):
    try:
        with psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="patron", user=f"u{i}", sslmode="disable") as c:
            rows = c.execute("SELECT rfm_segment, COUNT(*), AVG(churn_risk) FROM customer_scores GROUP BY 1 ORDER BY 1").fetchall()
            total = c.execute("SELECT COUNT(*) FROM customer_scores WHERE clv >= %s", (0,)).fetchone()[0]
            results.append((sum(r[1] for r in rows), total))
    except Exception as e:
        errors.append(repr(e))
start = time.time()
threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), len(errors), len(set(r[0] for r in results)), round(time.time() - start, 2))
print(errors[:3])
"#;
    let out = python(server.port, script, &[]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let first: Vec<&str> = printed.lines().next().unwrap_or("").split(' ').collect();
    assert_eq!(&first[..3], ["20", "0", "1"], "{}", text(&out));
    eprintln!("20 concurrent psycopg clients answered in {} s", first[3]);
}

#[test]
fn serve_turns_away_clients_over_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = project_with_serve(dir.path(), "max_connections = 2\n");
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let server = start(
        dir.path(),
        &["--pipeline", pipeline.to_str().unwrap(), "--warehouse", &wh],
        &[],
    );
    let script = r#"
import os, psycopg
def connect():
    return psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), dbname="patron", user="a", sslmode="disable")
held = [connect(), connect()]
try:
    connect()
    print("third: accepted")
except psycopg.OperationalError as e:
    print("third:", "too many clients" in str(e))
held.pop().close()
import time
for _ in range(50):
    try:
        c = connect()
        print("after close:", c.execute("SELECT 7").fetchone()[0])
        break
    except psycopg.OperationalError:
        time.sleep(0.1)
print("held still works:", held[0].execute("SELECT 8").fetchone()[0])
"#;
    let out = python(server.port, script, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "third: True\nafter close: 7\nheld still works: 8",
        "{}",
        text(&out)
    );
}

#[test]
fn serve_cancels_a_statement_at_the_timeout_and_limits_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = project_with_serve(dir.path(), "statement_timeout_secs = 5\nquery_memory_limit_mb = 16\n");
    let wh = shared_warehouse().to_str().unwrap().to_string();
    let server = start(
        dir.path(),
        &["--pipeline", pipeline.to_str().unwrap(), "--warehouse", &wh],
        &[],
    );
    let runaway = "SELECT COUNT(*) FROM range(200000) a CROSS JOIN range(200000) b WHERE a.value + b.value = -1";

    // The server's limit cancels a runaway statement...
    let started = Instant::now();
    let out = psql(server.port, "analyst", None, "disable", runaway);
    let elapsed = started.elapsed();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("canceling statement due to statement timeout"),
        "{}",
        text(&out)
    );
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(20),
        "took {elapsed:?}"
    );
    eprintln!("runaway query cancelled after {elapsed:?} (server timeout 5 s)");

    // ...and a client can only lower it.
    let started = Instant::now();
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=patron user=analyst sslmode=disable",
            server.port
        ))
        .args(["-X", "-c", "SET statement_timeout = '1s'", "-c", runaway])
        .output()
        .unwrap();
    let lowered = started.elapsed();
    assert!(stderr(&out).contains("statement timeout"), "{}", text(&out));
    assert!(lowered < Duration::from_secs(4), "took {lowered:?}");

    // While both runaways may still be busy on their threads, other statements are answered.
    let started = Instant::now();
    assert_eq!(
        psql_rows(server.port, "SELECT COUNT(*) > 0 FROM customer_scores"),
        ["t"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );

    // A statement needing more than its memory pool fails alone (nothing spills to disk).
    let out = psql(
        server.port,
        "analyst",
        None,
        "disable",
        "SELECT value FROM range(5000000) ORDER BY value DESC OFFSET 4999999",
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("Resources exhausted"), "{}", text(&out));
    assert_eq!(psql_rows(server.port, "SELECT 1"), ["1"]);
}

#[test]
fn serve_shows_a_new_publish_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    support::run_default(&wh);
    let server = start(&repo(), &["--warehouse", wh.to_str().unwrap()], &[]);
    assert_eq!(psql_rows(server.port, "SELECT COUNT(*) FROM runs"), ["1"]);
    let before = psql_rows(server.port, "SELECT COUNT(*) FROM customer_scores");

    support::run_default(&wh);
    assert_eq!(psql_rows(server.port, "SELECT COUNT(*) FROM runs"), ["2"]);
    // Same inputs, same scores: the new run's tables read consistently.
    assert_eq!(psql_rows(server.port, "SELECT COUNT(*) FROM customer_scores"), before);
}
