"""Attack corpus for `patron serve` (run by tests/integration/serve_attacks.rs).

Every attack must be answered with an error (or, for harmless statements, a correct
answer), must leave no trace on the server (no file, folder, table, view or setting), and
the server must keep serving other clients afterwards. Prints one line per check; the Rust
test fails on any line starting with FAIL, and on a non-zero exit.

Environment: PORT (the server, on 127.0.0.1), SCRATCH (a folder the attacks try to write
into), SERVER_PID (to read the server's peak memory).
"""

import os
import socket
import struct
import threading
import time

import psycopg

PORT = int(os.environ["PORT"])
SCRATCH = os.environ["SCRATCH"]
SERVER_PID = int(os.environ["SERVER_PID"])
failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures += 1


def connect(**kw):
    return psycopg.connect(host="127.0.0.1", port=PORT, dbname="patron", user="analyst",
                           sslmode="disable", autocommit=True, connect_timeout=10, **kw)


def query(conn, sql, prepare):
    """Runs `sql`; (sqlstate or None, rows). psycopg sends a statement without parameters
    over the simple protocol (one Query message); `prepare=True` makes it Parse, Bind and
    Execute a named prepared statement (the extended protocol)."""
    try:
        cur = conn.execute(sql, prepare=prepare)
        return None, (cur.fetchall() if cur.description else [])
    except psycopg.Error as e:
        return e.sqlstate or "?", []


def simple(conn, sql):
    return query(conn, sql, False)


def extended(conn, sql):
    return query(conn, sql, True)


def alive(what):
    # Closed connections free their slot once the server has seen them go: retry briefly.
    deadline = time.time() + 10
    while True:
        try:
            with connect() as c:
                n = c.execute("SELECT COUNT(*) FROM customer_scores").fetchone()[0]
            break
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    check(n > 0, f"server still serves after {what}")


def peak_rss_mb():
    with open(f"/proc/{SERVER_PID}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tables():
    with connect() as c:
        return {r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}


before_tables = tables()
pwn = os.path.join(SCRATCH, "pwn.csv")
pwn_dir = os.path.join(SCRATCH, "spill")

# 1. Injection through an allowed statement's text, DDL/DML/COPY in every spelling.
injections = [
    f"SET NAMES utf8 COLLATE 'x; COPY (SELECT 1) TO ''{pwn}'''",
    f"SET NAMES 'utf8' COLLATE \"x\"\"; COPY (SELECT 1) TO '{pwn}'\"",
    f"SET TIME ZONE 'UTC''; COPY (SELECT 1) TO ''{pwn}'''",
    f"COPY (SELECT 1) TO '{pwn}'",
    f"copy customer_scores to '{pwn}'",
    f"/* comment */ CoPy (SELECT 1) TO '{pwn}' STORED AS CSV",
    f"COPY (SELECT 1) TO '{pwn}' STORED AS PARQUET OPTIONS ('format.compression' 'zstd')",
    f"CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
    f"create external table pw2 stored as parquet location '{SCRATCH}'",
    "CREATE VIEW v_attack AS SELECT 1 AS x",
    "CREATE OR REPLACE VIEW customer_scores AS SELECT 1 AS x",
    "CREATE TABLE t_attack AS SELECT 1 AS x",
    "CREATE TEMPORARY TABLE t_tmp (x INT)",
    "CREATE SCHEMA s_attack",
    "CREATE FUNCTION f() RETURNS INT RETURN 1",
    "DROP TABLE customer_scores",
    "DROP VIEW IF EXISTS customer_scores",
    "DROP SCHEMA public CASCADE",
    "TRUNCATE customer_scores",
    "INSERT INTO runs SELECT * FROM runs",
    "WITH x AS (SELECT 1) INSERT INTO runs SELECT * FROM runs",
    "UPDATE customer_scores SET clv = 0",
    "DELETE FROM customer_scores",
    "SELECT 1 AS x INTO t_into",
    "EXPLAIN ANALYZE INSERT INTO runs SELECT * FROM runs",
    f"EXPLAIN COPY (SELECT 1) TO '{pwn}'",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE p",
    "DECLARE c CURSOR FOR SELECT 1",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SET datafusion.execution.batch_size = 1",
    "SET \"datafusion.execution.batch_size\" = 1",
    "SET \"DATAFUSION.EXECUTION.BATCH_SIZE\" = 1",
    "SET \"datafusion\".\"execution\".\"batch_size\" = 1",
    "SET \"datafusion.catalog.default_catalog\" = 'nope'",
    f"SET \"datafusion.runtime.temp_directory\" = '{pwn_dir}'",
    "SET LOCAL \"datafusion.execution.target_partitions\" = 1",
    "RESET \"datafusion.execution.batch_size\"",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_csv('/etc/passwd')",
]
for proto, run in (("simple", simple), ("extended", extended)):
    with connect() as conn:
        for sql in injections:
            code, rows = run(conn, sql)
            leaked = any("root:" in str(r) for r in rows)
            check(code is not None and not leaked, f"{proto}: refused ({code}): {sql[:70]}")
        # The engine options are unchanged for this connection and every other.
        code, rows = run(conn, "SELECT value FROM information_schema.df_settings "
                               "WHERE name = 'datafusion.execution.batch_size'")
        check(code is None and rows and str(rows[0][0]) == "8192",
              f"{proto}: batch_size unchanged: {code} {rows}")
# SQL-looking text in a value is only ever a value: stored as given, shown back, never run.
harmless = [
    ("application_name", "SET application_name = 'a''; DROP TABLE customer_scores; --'",
     "a'; DROP TABLE customer_scores; --"),
    ("search_path", f"SET search_path = public, \"x; COPY (SELECT 1) TO '{pwn}'\"",
     f"public, x; COPY (SELECT 1) TO '{pwn}'"),
]
for proto, run in (("simple", simple), ("extended", extended)):
    with connect() as conn:
        for name, sql, shown in harmless:
            code, _ = run(conn, sql)
            _, rows = run(conn, f"SHOW {name}")
            check(code is None and rows == [(shown,)], f"{proto}: {name} holds the text as a value: {code} {rows}")
check(not os.path.exists(pwn), "no file written by COPY")
check(not os.path.exists(pwn_dir), "no folder created by temp_directory")
after = tables()
check(after == before_tables, f"no table or view added or dropped: {sorted(after ^ before_tables)}")
alive("the injection corpus")

# 2. Session settings belong to one connection.
with connect() as a, connect() as b:
    a.execute("SET TIME ZONE 'Asia/Tokyo'", prepare=True)
    a.execute("SET statement_timeout = '3s'")
    a.execute("SET application_name = 'attacker'")
    check(a.execute("SHOW timezone").fetchone()[0] == "Asia/Tokyo", "a sees its own time zone")
    check(b.execute("SHOW timezone").fetchone()[0] == "Etc/UTC", "b keeps the default zone")
    check(b.execute("SHOW statement_timeout").fetchone()[0] == "0", "b keeps its statement timeout")
    check(b.execute("SHOW application_name").fetchone()[0] == "", "b keeps its application_name")
    tz_a = a.execute("SELECT arrow_typeof(now())").fetchone()[0]
    tz_b = b.execute("SELECT arrow_typeof(now())").fetchone()[0]
    check("Asia/Tokyo" in tz_a and "Asia/Tokyo" not in tz_b, f"now() in each one's zone: {tz_a} / {tz_b}")
    code, _ = extended(a, "SET work_mem = '64GB'")
    check(code == "42704", f"unknown variable refused as PostgreSQL does: {code}")
    a.execute("RESET ALL")
    check(a.execute("SHOW timezone").fetchone()[0] == "Etc/UTC", "RESET ALL restores the default")
    # Transactions and savepoints (psycopg's type lookup uses them) are accepted, read-only.
    with connect() as t:
        t.autocommit = False
        t.execute("SAVEPOINT s1")
        t.execute("RELEASE SAVEPOINT s1")
        n = t.execute("SELECT COUNT(*) FROM customer_scores").fetchone()[0]
        t.rollback()
        check(n > 0, "a transaction with a savepoint reads")

# 3. Statements that used to crash the server: deep expressions, huge lists, huge text.
deep = [
    ("plus chain 300", "SELECT " + "+".join(["1"] * 300), None),
    ("plus chain 5000", "SELECT " + "+".join(["1"] * 5000), "54001"),
    ("or chain 2000", "SELECT 1 WHERE " + " OR ".join(["1 = 2"] * 2000), "54001"),
    ("and chain 200000", "SELECT 1 WHERE " + " AND ".join(["true"] * 200000), "54001"),
    ("unary minus 5000", "SELECT " + "-" * 5000 + "1", "any"),
    ("parentheses 5000", "SELECT " + "(" * 5000 + "1" + ")" * 5000, "any"),
    ("subqueries 200", "SELECT " + "(SELECT " * 200 + "1" + ")" * 200, "any"),
    ("case 2000", "SELECT CASE " + " ".join(f"WHEN {i} = 0 THEN {i}" for i in range(2000)) + " END", None),
    ("statement of 2 MB", "SELECT '" + "x" * (2 * 1024 * 1024) + "'", "54001"),
]
in_list = "SELECT COUNT(*) FROM customer_scores WHERE customer_id IN (" + ",".join(
    f"'C{i:06d}'" for i in range(5000)) + ")"
for proto, run in (("simple", simple), ("extended", extended)):
    with connect() as conn:
        for name, sql, expect in deep:
            code, _ = run(conn, sql)
            ok = code == expect or (expect == "any" and code is not None)
            check(ok, f"{proto}: {name}: {code} (expected {expect})")
        code, rows = run(conn, in_list)
        check(code is None and rows, f"{proto}: IN list of 5000 values answered: {code}")
alive("deep and huge statements")

# 4. Cancel requests stop a running query, on both protocols.
runaway = "SELECT COUNT(*) FROM range(200000) a CROSS JOIN range(200000) b WHERE a.value + b.value = -1"
for proto in ("simple", "extended"):
    with connect() as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.time()
        code, _ = (simple if proto == "simple" else extended)(conn, runaway)
        took = time.time() - started
        timer.join()
        check(code == "57014" and took < 10, f"{proto}: cancel request stops the query: {code} after {took:.1f} s")
        check(conn.execute("SELECT 1").fetchone()[0] == 1, f"{proto}: the connection works after a cancel")

# 5. Large results stream in bounded memory over the extended protocol.
rss_before = peak_rss_mb()
rows = 0
with connect() as conn:
    with conn.cursor() as cur:
        for _ in cur.stream("SELECT repeat('x', 1000) AS pad FROM range(600000)"):
            rows += 1
rss_after = peak_rss_mb()
print(f"info streamed {rows} rows of 1000 bytes (~600 MB): server peak RSS {rss_before:.0f} -> {rss_after:.0f} MiB", flush=True)
check(rows == 600000, f"all rows arrived: {rows}")
check(rss_after - rss_before < 200, f"server peak grew by {rss_after - rss_before:.0f} MiB for a 600 MB result")

# 5b. Statements that take long to parse and plan run on query threads: while two run, a
#     new client logs in and is answered at once.
heavy = "SELECT " + "+".join(["1"] * (512 * 1024 - 8))   # 1 MiB: parsed, then refused
busy = []


def heavy_client():
    with connect() as c:
        started = time.time()
        code, _ = simple(c, heavy)
        busy.append((code, time.time() - started))


workers = [threading.Thread(target=heavy_client) for _ in range(2)]
for w in workers:
    w.start()
time.sleep(0.5)
started = time.time()
with connect() as c:
    one = c.execute("SELECT 1").fetchone()[0]
login = time.time() - started
for w in workers:
    w.join()
print(f"info login + SELECT 1 took {login:.2f} s while two 1 MiB statements were parsed ({busy})", flush=True)
check(one == 1 and login < 2.0, f"a login is not stalled by statements being parsed: {login:.2f} s")
check(all(code == "54001" for code, _ in busy), f"the heavy statements were refused: {busy}")

# 6. The same SCRAM salt on every attempt for an unknown user (no user enumeration) is
#    checked by serve_attacks.rs against a server with users; here: malformed protocol bytes.


def raw(payload, read=True):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    try:
        s.sendall(payload)
        if read:
            try:
                s.recv(4096)
            except (socket.timeout, ConnectionError):
                pass
    finally:
        s.close()


startup = struct.pack("!ii", 0, 196608) + b"user\0analyst\0database\0patron\0\0"
startup = struct.pack("!i", len(startup)) + startup[4:]
garbage = [
    b"\x00" * 3,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack("!i", 0x7FFFFFFF) + b"\x00\x03\x00\x00",
    struct.pack("!i", 8) + struct.pack("!i", 1234),
    struct.pack("!i", -5) + b"xxxx",
    bytes(range(256)) * 4,
    startup + b"Q" + struct.pack("!i", 0x7FFFFFF0) + b"SELECT 1",
    startup + b"Q" + struct.pack("!i", 3),
    startup + b"P" + struct.pack("!i", 9) + b"\x00\x00\x00\x00\x00",
    startup + b"B" + struct.pack("!i", 12) + b"\x00\x00\xff\xff\xff\xff\x00\x00",
    startup + b"E" + struct.pack("!i", 4),
    startup + b"Z" * 100,
    startup + b"X" + struct.pack("!i", 4) + b"Q" + struct.pack("!i", 13) + b"SELECT 1;\0",
]
for i, g in enumerate(garbage):
    try:
        raw(g)
    except OSError:
        pass
alive("malformed protocol bytes")

# 7. A flood of connections: some are turned away (max_connections), none crash the server.
opened, refused = [], 0
for _ in range(150):
    try:
        opened.append(connect())
    except psycopg.OperationalError:
        refused += 1
for c in opened:
    c.close()
print(f"info flood: {len(opened)} connections opened, {refused} refused", flush=True)
check(refused > 0, "connections over max_connections are refused")
alive("a connection flood")

print("failures", failures, flush=True)
raise SystemExit(1 if failures else 0)
