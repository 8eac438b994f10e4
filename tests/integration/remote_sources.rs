//! Sources on an S3-compatible object store: a real `moto` server (PyPI, installed by
//! `.ci/run`) on 127.0.0.1, started and stopped by each test, holding compressed exports in
//! hive-style partition folders. Also: an object deleted after listing, and a store that
//! keeps failing (retried with backoff, then a clear error).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use patron::extract::{ExtractError, fetch_inputs, list_inputs};

use crate::support::*;

const BUCKET: &str = "exports";

/// `patron run` with test credentials in the environment (never in the pipeline file).
fn run_with_s3_env(dir: &Path, pipeline: &Path) -> Output {
    let out = dir.join("wh");
    patron_s3(
        dir,
        &[
            "run",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

/// The default pipeline with sources at `locations` and `extra` TOML appended.
pub fn pipeline_with(dir: &Path, locations: &[(&str, String)], extra: &str) -> std::path::PathBuf {
    let path = write_pipeline(dir, locations);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

fn s3_locations() -> Vec<(&'static str, String)> {
    vec![
        ("sales", format!("s3://{BUCKET}/shop/sales/year=*/part-*.csv.gz")),
        ("service", format!("s3://{BUCKET}/desk/tickets.csv.bz2")),
        ("marketing", format!("s3://{BUCKET}/crm/events.ndjson.xz")),
    ]
}

/// Uploads the bundled fixtures: sales gzip-compressed in one partition folder per year,
/// tickets as bzip2, marketing events as xz.
fn upload_fixtures(moto: &Moto) {
    let fixtures = repo().join("fixtures");
    moto.boto3(&format!(
        "root = pathlib.Path('{}')\n\
         s3.create_bucket(Bucket=bucket)\n\
         for f in sorted((root / 'sales').glob('sales_*.csv')):\n\
         \x20   year = f.stem.split('_')[1]\n\
         \x20   s3.put_object(Bucket=bucket, Key=f'shop/sales/year={{year}}/part-0.csv.gz', Body=gzip.compress(f.read_bytes()))\n\
         s3.put_object(Bucket=bucket, Key='shop/sales/README.txt', Body=b'not an export')\n\
         s3.put_object(Bucket=bucket, Key='desk/tickets.csv.bz2', Body=bz2.compress((root / 'service/tickets.csv').read_bytes()))\n\
         s3.put_object(Bucket=bucket, Key='crm/events.ndjson.xz', Body=lzma.compress((root / 'marketing/events.ndjson').read_bytes()))\n",
        fixtures.display()
    ));
}

#[tokio::test]
async fn compressed_partitioned_exports_on_s3_give_the_same_warehouse_as_local_files() {
    let moto = Moto::start();
    upload_fixtures(&moto);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_with(dir.path(), &s3_locations(), &moto.storage_toml());
    let out = run_with_s3_env(dir.path(), &pipeline);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let local = tempfile::tempdir().unwrap();
    run_default(&local.path().join("wh"));
    let (s3_ctx, local_ctx) = (
        warehouse_session(&dir.path().join("wh")).await,
        warehouse_session(&local.path().join("wh")).await,
    );
    for sql in [
        "SELECT * FROM fct_customer ORDER BY customer_id",
        "SELECT * FROM customer_scores ORDER BY customer_id",
        "SELECT line, column_name, raw_value, reason FROM quarantine_sales ORDER BY line, column_name",
    ] {
        let (a, b) = (rows(&s3_ctx, sql).await, rows(&local_ctx, sql).await);
        assert!(!a.is_empty(), "{sql}: no rows");
        assert_eq!(a, b, "{sql}: the S3 run differs from the local run");
    }
    // Files are named by their URLs, in the raw tables, the quarantine and the manifest.
    let files = rows(&s3_ctx, "SELECT DISTINCT _source_file FROM raw_sales ORDER BY 1").await;
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.contains("s3://exports/shop/sales/year=20") && f.contains(".csv.gz")),
        "{files:?}"
    );
    let q = rows(&s3_ctx, "SELECT DISTINCT file FROM quarantine_marketing").await;
    assert!(
        q.iter().all(|f| f.contains("s3://exports/crm/events.ndjson.xz")),
        "{q:?}"
    );
    let manifest = latest_manifest(&dir.path().join("wh"));
    let text = manifest.to_string();
    assert!(text.contains("s3://exports/desk/tickets.csv.bz2"), "{text}");
    // No credentials leak into the manifest: no value is the test credentials' `test`.
    assert!(!text.contains("AWS_SECRET") && !text.contains(":\"test\""), "{text}");
}

#[tokio::test]
async fn an_object_deleted_after_listing_is_an_error_naming_its_url() {
    let moto = Moto::start();
    upload_fixtures(&moto);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_with(dir.path(), &s3_locations(), &moto.storage_toml());
    // The library reads the credentials from this process's environment, as patron does.
    set_test_credentials();
    let plan = patron::config::Plan::load(&pipeline, &Default::default()).unwrap();
    let sales = &plan.sources[0];
    let listed = list_inputs(sales, &plan.storage).await.unwrap();
    assert_eq!(listed.len(), 3, "the README.txt beside the parts is not matched");
    // Delete the middle partition after listing, as a cleanup job might.
    let location = patron::remote::RemoteLocation::parse(&sales.location).unwrap();
    let store = patron::remote::build_store(&location, &plan.storage).unwrap();
    store
        .delete(&object_store::path::Path::from("shop/sales/year=2024/part-0.csv.gz"))
        .await
        .unwrap();
    let err = fetch_inputs(listed, &dir.path().join("dl")).await.unwrap_err();
    assert!(matches!(err, ExtractError::Vanished { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("s3://exports/shop/sales/year=2024/part-0.csv.gz") && message.contains("disappeared"),
        "{message}"
    );
    // A location matching nothing is a configuration error naming it (exit 2).
    let none = pipeline_with(
        dir.path(),
        &[("sales", format!("s3://{BUCKET}/shop/sales/year=1999/*.csv.gz"))],
        &moto.storage_toml(),
    );
    let out = run_with_s3_env(dir.path(), &none);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("year=1999"), "{}", text(&out));
}

/// An HTTP server on 127.0.0.1 answering every request with 503, counting requests.
pub fn failing_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // Read the request head; the body (if any) is ignored.
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let mut stream = stream;
            let _ =
                stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (endpoint, count)
}

#[test]
fn a_store_that_keeps_failing_is_retried_with_backoff_then_the_run_fails_naming_it() {
    let (endpoint, requests) = failing_server();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!(
        "\n[storage]\nmax_retries = 3\ninit_backoff_ms = 50\n\n[storage.s3]\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\n"
    );
    let pipeline = pipeline_with(dir.path(), &[("sales", format!("s3://{BUCKET}/sales/*.csv"))], &storage);
    let started = Instant::now();
    let out = run_with_s3_env(dir.path(), &pipeline);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("s3://exports/sales/*.csv"), "{stderr}");
    assert!(
        stderr.contains("503") || stderr.contains("Service Unavailable"),
        "{stderr}"
    );
    // One attempt plus three retries, with backoff between them (50 + 100 + 200 ms, jittered
    // down to no less than zero, so only the count is exact).
    assert_eq!(requests.load(Ordering::SeqCst), 4, "{stderr}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}
