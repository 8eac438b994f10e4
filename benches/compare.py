#!/usr/bin/env python3
"""Side-by-side benchmark: patron vs DuckDB and Polars on the same generated exports, and
patron's BG/NBD + Gamma-Gamma fit vs the `lifetimes` package on the same (x, t_x, T).

Run it through `benches/compare.sh`, which installs the Python packages and builds patron
(release). Per size it:

1. generates exports with `patron generate --clean` (sales CSV, service CSV, marketing NDJSON);
2. runs `patron run` (extract with validation and quarantine, the SQL stages, the model fit
   and scoring, publish as Delta), and again with `--select +fct_customer` (extract, staging,
   fact only), whose manifest's phase wall times are patron's extract and staging+fact;
3. runs the same CSV/NDJSON -> Parquet (zstd) and the same staging + int_orders + fct_customer
   SQL in DuckDB and in Polars (lazy API, streaming sinks), each phase in its own process;
4. fits BG/NBD and Gamma-Gamma with `lifetimes` on patron's `customer_model_input` and
   compares the parameters with patron's `model_params` (1e-3 relative);
5. checks that the three fct_customer tables agree (row count and column totals).

Every measured process is timed with os.wait4: wall time, CPU time (user + system) and peak
RSS (ru_maxrss) of that process alone. Prints a table and writes the same as JSON.
"""

import argparse
import re
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Sales lines per generated customer (measured: 210k customers give 1.02M lines).
LINES_PER_CUSTOMER = 4.86
SEED = 7

SALES_COLUMNS = {
    "order_id": "VARCHAR", "line_no": "BIGINT", "customer_id": "VARCHAR", "order_ts": "TIMESTAMPTZ",
    "channel": "VARCHAR", "category": "VARCHAR", "quantity": "BIGINT", "unit_price": "DOUBLE",
    "discount": "DOUBLE", "unit_cost": "DOUBLE", "currency": "VARCHAR", "referred_by": "VARCHAR",
    "status": "VARCHAR", "refund_of": "VARCHAR",
}
SERVICE_COLUMNS = {
    "ticket_id": "VARCHAR", "customer_id": "VARCHAR", "opened_at": "TIMESTAMPTZ", "closed_at": "TIMESTAMPTZ",
    "category": "VARCHAR", "status": "VARCHAR", "csat": "BIGINT", "handling_cost": "DOUBLE",
}
MARKETING_COLUMNS = {
    "event_id": "VARCHAR", "customer_id": "VARCHAR", "event_ts": "TIMESTAMPTZ", "campaign": "VARCHAR",
    "channel": "VARCHAR", "event_type": "VARCHAR", "cost": "DOUBLE",
}
SOURCES = {
    "sales": ("sales/*.csv", SALES_COLUMNS),
    "service": ("service/*.csv", SERVICE_COLUMNS),
    "marketing": ("marketing/*.ndjson", MARKETING_COLUMNS),
}
# Totals of fct_customer compared across systems.
CHECK_SQL = """SELECT COUNT(*) AS customers, SUM(orders) AS orders, SUM(order_lines) AS order_lines,
    SUM(purchase_days) AS purchase_days, SUM(distinct_categories) AS distinct_categories,
    SUM(revenue) AS revenue, SUM(referrals_made) AS referrals, SUM(tickets) AS tickets,
    SUM(open_tickets) AS open_tickets, SUM(marketing_sent) AS marketing_sent,
    SUM(marketing_clicks) AS marketing_clicks, SUM(CAST(unsubscribed AS INT)) AS unsubscribed,
    SUM(recency_days) AS recency_days, COUNT(acquisition_channel) AS with_channel,
    SUM(spend_recent_window) AS spend_recent, SUM(cost) AS cost, SUM(returned_revenue) AS returned_revenue,
    SUM(cancelled_orders) AS cancelled_orders, SUM(discounted_orders) AS discounted_orders
FROM read_parquet('{path}')"""


# ---------------------------------------------------------------------------------------
# Measuring


def measure(cmd, log_path, env=None):
    """Runs cmd, returns wall s, CPU s and peak RSS MiB of that process (and its children)."""
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = Path(log_path).read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{tail}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def peer(system, phase, *args):
    """Command running one peer phase in a fresh Python process."""
    return [sys.executable, str(Path(__file__).resolve()), "peer", system, phase, *map(str, args)]


# ---------------------------------------------------------------------------------------
# DuckDB


def duckdb_connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def duckdb_columns(columns):
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"


def duckdb_extract(data, work):
    """Each export file to its own Parquet file (zstd), timestamps as UTC, plus the source
    file name: the same as patron's raw tables."""
    con = duckdb_connect()
    for source, (pattern, columns) in SOURCES.items():
        out = Path(work) / "raw" / source
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted(Path(data).glob(pattern))):
            if path.suffix == ".csv":
                reader = f"read_csv('{path}', header = true, columns = {duckdb_columns(columns)})"
            else:
                reader = f"read_json('{path}', format = 'newline_delimited', columns = {duckdb_columns(columns)})"
            select = ", ".join(
                f"CAST({c} AS TIMESTAMP) AS {c}" if t == "TIMESTAMPTZ" else c for c, t in columns.items()
            )
            con.execute(
                f"COPY (SELECT {select}, '{path.name}' AS _source_file FROM {reader}) "
                f"TO '{out}/part-{i:03}.parquet' (FORMAT parquet, COMPRESSION zstd)"
            )


def fact_params(as_of):
    day = dt.date.fromisoformat(as_of)
    end = day + dt.timedelta(days=1)
    return {
        "as_of": day.isoformat(),
        "as_of_end": f"{end.isoformat()} 00:00:00",
        "recent_start": f"{(end - dt.timedelta(days=90)).isoformat()} 00:00:00",
        "prior_start": f"{(end - dt.timedelta(days=180)).isoformat()} 00:00:00",
        "margin_rate": 0.30,
    }


def duckdb_fact(work, as_of):
    """patron's sql/staging/*.sql (with the as-of cut and the latest copy of each key of its
    raw_<source>_current views), sql/intermediate/int_orders.sql and sql/marts/fct_customer.sql
    in DuckDB's dialect, each table written to Parquet as patron materialises it."""
    p = fact_params(as_of)
    con = duckdb_connect()
    raw = Path(work) / "raw"
    out = Path(work) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        con.execute(
            f"CREATE VIEW raw_{source} AS SELECT * EXCLUDE (file_row_number), file_row_number AS _source_line "
            f"FROM read_parquet('{raw}/{source}/*.parquet', file_row_number = true)"
        )
    stages = {
        "stg_sales": f"""
WITH ranked AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY TRIM(order_id), line_no ORDER BY _source_file DESC, _source_line DESC) AS copy_rank
    FROM raw_sales WHERE order_ts < TIMESTAMP '{p['as_of_end']}'
),
current_lines AS (
    SELECT * EXCLUDE (discount, status, refund_of, copy_rank), COALESCE(discount, 0.0) AS discount,
        COALESCE(LOWER(TRIM(status)), 'completed') AS status, NULLIF(TRIM(refund_of), '') AS refund_of,
        CASE WHEN quantity < 0 THEN quantity * unit_price + COALESCE(discount, 0.0)
             ELSE quantity * unit_price - COALESCE(discount, 0.0) END AS line_value
    FROM ranked WHERE copy_rank = 1
)
SELECT TRIM(order_id) AS order_id, line_no, UPPER(TRIM(customer_id)) AS customer_id, order_ts,
    CAST(order_ts AS DATE) AS order_date, channel, category, quantity, unit_price,
    discount, unit_cost, currency, NULLIF(UPPER(TRIM(referred_by)), '') AS referred_by,
    status, refund_of, COALESCE(refund_of, TRIM(order_id)) AS sale_order_id,
    quantity > 0 AND status <> 'cancelled' AS sold,
    CASE WHEN status <> 'cancelled' AND quantity >= 0 THEN line_value ELSE 0.0 END AS gross_revenue,
    CASE WHEN status = 'cancelled' THEN 0.0 WHEN quantity < 0 THEN -line_value
         WHEN status IN ('returned', 'refunded') THEN line_value ELSE 0.0 END AS returned_revenue,
    CASE WHEN status = 'cancelled' OR (quantity >= 0 AND status IN ('returned', 'refunded')) THEN 0.0
         ELSE line_value END AS revenue,
    CASE WHEN status = 'cancelled' OR (quantity >= 0 AND status IN ('returned', 'refunded')) THEN 0.0
         WHEN unit_cost IS NULL THEN line_value * (1.0 - {p['margin_rate']})
         ELSE quantity * unit_cost END AS cost,
    unit_cost IS NULL AS cost_estimated, _source_file, _source_line
FROM current_lines ORDER BY customer_id, order_id, line_no""",
        "stg_service": f"""
WITH ranked AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY TRIM(ticket_id) ORDER BY _source_file DESC, _source_line DESC) AS copy_rank
    FROM raw_service WHERE opened_at < TIMESTAMP '{p['as_of_end']}'
)
SELECT TRIM(ticket_id) AS ticket_id, UPPER(TRIM(customer_id)) AS customer_id, opened_at,
    CASE WHEN closed_at < TIMESTAMP '{p['as_of_end']}' THEN closed_at END AS closed_at, category,
    CASE WHEN closed_at < TIMESTAMP '{p['as_of_end']}' THEN 'closed' WHEN status = 'closed' THEN 'open' ELSE status END AS status,
    CASE WHEN closed_at IS NULL OR closed_at < TIMESTAMP '{p['as_of_end']}' THEN csat END AS csat,
    COALESCE(handling_cost, 0.0) AS handling_cost, _source_file, _source_line
FROM ranked WHERE copy_rank = 1 ORDER BY customer_id, ticket_id""",
        "stg_marketing": f"""
WITH ranked AS (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY TRIM(event_id) ORDER BY _source_file DESC, _source_line DESC) AS copy_rank
    FROM raw_marketing WHERE event_ts < TIMESTAMP '{p['as_of_end']}'
)
SELECT TRIM(event_id) AS event_id, UPPER(TRIM(customer_id)) AS customer_id, event_ts, campaign, channel, event_type,
    COALESCE(cost, 0.0) AS cost, _source_file, _source_line
FROM ranked WHERE copy_rank = 1 ORDER BY customer_id, event_id""",
        "int_orders": """
SELECT customer_id, sale_order_id AS order_id,
    COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS order_ts,
    CAST(COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS DATE) AS order_date,
    SUM(gross_revenue) AS gross_revenue, SUM(returned_revenue) AS returned_revenue, SUM(revenue) AS revenue,
    SUM(cost) AS cost, SUM(CASE WHEN sold THEN discount ELSE 0.0 END) > 0 AS discounted,
    BOOL_AND(status = 'cancelled') AS cancelled,
    BOOL_OR(sold) AND (SUM(returned_revenue) = 0 OR SUM(returned_revenue) < SUM(gross_revenue) * (1.0 - 1e-9))
        AS is_purchase
FROM stg_sales GROUP BY customer_id, sale_order_id ORDER BY customer_id, order_id""",
        "fct_customer": f"""
WITH customers AS (
    SELECT customer_id FROM stg_sales UNION SELECT customer_id FROM stg_service UNION SELECT customer_id FROM stg_marketing
),
first_orders AS (
    SELECT customer_id, channel AS acquisition_channel, referred_by FROM (
        SELECT customer_id, channel, referred_by,
            ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY order_ts, order_id, line_no) AS n
        FROM stg_sales WHERE sold) AS firsts
    WHERE n = 1
),
sales AS (
    SELECT customer_id, SUM(CASE WHEN is_purchase THEN 1 ELSE 0 END) AS orders,
        COUNT(DISTINCT CASE WHEN is_purchase THEN order_date END) AS purchase_days,
        MIN(CASE WHEN is_purchase THEN order_ts END) AS first_order_at,
        MAX(CASE WHEN is_purchase THEN order_ts END) AS last_order_at, SUM(revenue) AS revenue,
        SUM(gross_revenue) AS gross_revenue, SUM(returned_revenue) AS returned_revenue, SUM(cost) AS cost,
        SUM(CASE WHEN is_purchase AND discounted THEN 1 ELSE 0 END) AS discounted_orders,
        SUM(CASE WHEN cancelled THEN 1 ELSE 0 END) AS cancelled_orders,
        SUM(CASE WHEN order_ts >= TIMESTAMP '{p['recent_start']}' THEN revenue ELSE 0.0 END) AS spend_recent_window,
        SUM(CASE WHEN order_ts >= TIMESTAMP '{p['prior_start']}' AND order_ts < TIMESTAMP '{p['recent_start']}'
            THEN revenue ELSE 0.0 END) AS spend_prior_window
    FROM int_orders GROUP BY customer_id
),
lines AS (
    SELECT customer_id, COUNT(*) AS order_lines, COUNT(DISTINCT category) AS distinct_categories
    FROM stg_sales WHERE sold GROUP BY customer_id
),
referrals AS (
    SELECT referred_by AS customer_id, COUNT(*) AS referrals_made FROM first_orders
    WHERE referred_by IS NOT NULL GROUP BY referred_by
),
service AS (
    SELECT customer_id, COUNT(*) AS tickets, SUM(CASE WHEN status <> 'closed' THEN 1 ELSE 0 END) AS open_tickets,
        SUM(CASE WHEN category = 'complaint' THEN 1 ELSE 0 END) AS complaints,
        SUM(CASE WHEN category = 'complaint' AND status <> 'closed' THEN 1 ELSE 0 END) AS open_complaints,
        AVG(CAST(csat AS DOUBLE)) AS avg_csat, COUNT(csat) AS csat_responses, SUM(handling_cost) AS service_cost
    FROM stg_service GROUP BY customer_id
),
marketing AS (
    SELECT customer_id,
        SUM(CASE WHEN event_type = 'sent' THEN 1 ELSE 0 END) AS marketing_sent,
        SUM(CASE WHEN event_type = 'open' THEN 1 ELSE 0 END) AS marketing_opens,
        SUM(CASE WHEN event_type = 'click' THEN 1 ELSE 0 END) AS marketing_clicks,
        SUM(CASE WHEN event_type = 'conversion' THEN 1 ELSE 0 END) AS marketing_conversions,
        MAX(CASE WHEN event_type = 'unsubscribe' THEN 1 ELSE 0 END) = 1 AS unsubscribed,
        SUM(cost) AS marketing_cost
    FROM stg_marketing GROUP BY customer_id
)
SELECT c.customer_id, s.first_order_at, s.last_order_at, COALESCE(s.orders, 0) AS orders,
    COALESCE(l.order_lines, 0) AS order_lines, COALESCE(s.purchase_days, 0) AS purchase_days,
    COALESCE(s.revenue, 0.0) AS revenue, COALESCE(s.cost, 0.0) AS cost,
    COALESCE(s.revenue, 0.0) - COALESCE(s.cost, 0.0) AS gross_margin, s.revenue / NULLIF(s.orders, 0) AS avg_order_value,
    COALESCE(s.returned_revenue, 0.0) AS returned_revenue, s.returned_revenue / NULLIF(s.gross_revenue, 0.0) AS return_rate,
    COALESCE(s.cancelled_orders, 0) AS cancelled_orders,
    COALESCE(l.distinct_categories, 0) AS distinct_categories, COALESCE(s.discounted_orders, 0) AS discounted_orders,
    DATE '{p['as_of']}' - CAST(s.first_order_at AS DATE) AS tenure_days,
    DATE '{p['as_of']}' - CAST(s.last_order_at AS DATE) AS recency_days,
    COALESCE(s.spend_recent_window, 0.0) AS spend_recent_window, COALESCE(s.spend_prior_window, 0.0) AS spend_prior_window,
    f.acquisition_channel, date_trunc('month', s.first_order_at) AS cohort_month, f.referred_by,
    COALESCE(r.referrals_made, 0) AS referrals_made, COALESCE(v.tickets, 0) AS tickets,
    COALESCE(v.open_tickets, 0) AS open_tickets, COALESCE(v.complaints, 0) AS complaints,
    COALESCE(v.open_complaints, 0) AS open_complaints, v.avg_csat, COALESCE(v.csat_responses, 0) AS csat_responses,
    COALESCE(v.service_cost, 0.0) AS service_cost, COALESCE(m.marketing_sent, 0) AS marketing_sent,
    COALESCE(m.marketing_opens, 0) AS marketing_opens, COALESCE(m.marketing_clicks, 0) AS marketing_clicks,
    COALESCE(m.marketing_conversions, 0) AS marketing_conversions,
    CAST(m.marketing_opens AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS open_rate,
    CAST(m.marketing_clicks AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS click_rate,
    CAST(m.marketing_conversions AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS conversion_rate,
    COALESCE(m.unsubscribed, false) AS unsubscribed, COALESCE(m.marketing_cost, 0.0) AS marketing_cost
FROM customers AS c
LEFT JOIN sales AS s ON s.customer_id = c.customer_id
LEFT JOIN lines AS l ON l.customer_id = c.customer_id
LEFT JOIN first_orders AS f ON f.customer_id = c.customer_id
LEFT JOIN referrals AS r ON r.customer_id = c.customer_id
LEFT JOIN service AS v ON v.customer_id = c.customer_id
LEFT JOIN marketing AS m ON m.customer_id = c.customer_id
ORDER BY c.customer_id""",
    }
    for name, sql in stages.items():
        path = out / f"{name}.parquet"
        con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")


# ---------------------------------------------------------------------------------------
# Polars


def polars_ts(col):
    import polars as pl

    e = pl.col(col)
    # The exports mix '2024-01-02T03:04:05Z', '2024-01-02 03:04:05' (UTC) and '...+02:00'.
    iso = (
        pl.when(e.str.len_bytes() == 19)
        .then(e.str.replace(" ", "T", literal=True) + "+00:00")
        .otherwise(e.str.replace("Z", "+00:00", literal=True))
    )
    return (
        iso.str.to_datetime("%Y-%m-%dT%H:%M:%S%:z", time_unit="us", time_zone="UTC")
        .dt.replace_time_zone(None)
        .alias(col)
    )


def polars_extract(data, work):
    import polars as pl

    types = {"VARCHAR": pl.String, "BIGINT": pl.Int64, "DOUBLE": pl.Float64, "TIMESTAMPTZ": pl.String}
    for source, (pattern, columns) in SOURCES.items():
        out = Path(work) / "raw" / source
        out.mkdir(parents=True, exist_ok=True)
        schema = {c: types[t] for c, t in columns.items()}
        for i, path in enumerate(sorted(Path(data).glob(pattern))):
            if path.suffix == ".csv":
                frame = pl.scan_csv(path, schema=schema)
            else:
                frame = pl.scan_ndjson(path, schema=schema)
            frame = frame.with_columns(
                [polars_ts(c) for c, t in columns.items() if t == "TIMESTAMPTZ"]
                + [pl.lit(path.name).alias("_source_file")]
            )
            frame.sink_parquet(out / f"part-{i:03}.parquet", compression="zstd")


def polars_fact(work, as_of):
    """The same staging, int_orders and fct_customer logic with the Polars lazy API."""
    import polars as pl

    p = fact_params(as_of)
    ts = lambda s: dt.datetime.fromisoformat(s)  # noqa: E731
    as_of_end, recent, prior = ts(p["as_of_end"]), ts(p["recent_start"]), ts(p["prior_start"])
    as_of_day = dt.date.fromisoformat(p["as_of"])
    raw = Path(work) / "raw"
    out = Path(work) / "tables"
    out.mkdir(parents=True, exist_ok=True)

    def read_raw(source):
        files = sorted((raw / source).glob("*.parquet"))
        return pl.concat(
            [pl.scan_parquet(f).with_row_index("_source_line").with_columns(pl.col("_source_line").cast(pl.Int64))
             for f in files]
        )

    def latest_copy(frame, key_exprs):
        # One row per key: the copy loaded last (latest file, then latest line) wins.
        keys = [e.alias(f"_k{i}") for i, e in enumerate(key_exprs)]
        return (
            frame.with_columns(keys)
            .sort(["_source_file", "_source_line"], descending=True)
            .unique(subset=[f"_k{i}" for i in range(len(keys))], keep="first", maintain_order=True)
            .drop([f"_k{i}" for i in range(len(keys))])
        )

    c = pl.col
    # The line's value after discount, signed: a return line's discount is given back too.
    value = c("quantity") * c("unit_price")
    line_value = pl.when(c("quantity") < 0).then(value + c("discount")).otherwise(value - c("discount"))
    status = c("status")
    cancelled = status == "cancelled"
    taken_back = status.is_in(["returned", "refunded"])
    no_revenue = cancelled | ((c("quantity") >= 0) & taken_back)
    stg_sales = (
        latest_copy(read_raw("sales").filter(c("order_ts") < as_of_end), [c("order_id").str.strip_chars(), c("line_no")])
        .with_columns(
            c("discount").fill_null(0.0), status.str.strip_chars().str.to_lowercase().fill_null("completed"),
            pl.when(c("refund_of").str.strip_chars() != "").then(c("refund_of").str.strip_chars()).alias("refund_of"),
        )
        .with_columns(line_value.alias("line_value"))
        .select(
            c("order_id").str.strip_chars(), "line_no", c("customer_id").str.strip_chars().str.to_uppercase(),
            "order_ts", c("order_ts").dt.date().alias("order_date"), "channel", "category", "quantity", "unit_price",
            "discount", "unit_cost", "currency",
            pl.when(c("referred_by").str.strip_chars() != "")
            .then(c("referred_by").str.strip_chars().str.to_uppercase()).alias("referred_by"),
            "status", "refund_of", pl.coalesce("refund_of", c("order_id").str.strip_chars()).alias("sale_order_id"),
            ((c("quantity") > 0) & ~cancelled).alias("sold"),
            pl.when(~cancelled & (c("quantity") >= 0)).then(c("line_value")).otherwise(0.0).alias("gross_revenue"),
            pl.when(cancelled).then(0.0).when(c("quantity") < 0).then(-c("line_value"))
            .when(taken_back).then(c("line_value")).otherwise(0.0).alias("returned_revenue"),
            pl.when(no_revenue).then(0.0).otherwise(c("line_value")).alias("revenue"),
            pl.when(no_revenue).then(0.0).when(c("unit_cost").is_null()).then(c("line_value") * (1.0 - p["margin_rate"]))
            .otherwise(c("quantity") * c("unit_cost")).alias("cost"),
            c("unit_cost").is_null().alias("cost_estimated"), "_source_file", "_source_line",
        )
        .sort(["customer_id", "order_id", "line_no"])
    )
    closed_in_time = c("closed_at") < as_of_end
    stg_service = (
        latest_copy(read_raw("service").filter(c("opened_at") < as_of_end), [c("ticket_id").str.strip_chars()])
        .select(
            c("ticket_id").str.strip_chars(), c("customer_id").str.strip_chars().str.to_uppercase(), "opened_at",
            pl.when(closed_in_time).then(c("closed_at")).alias("closed_at"), "category",
            pl.when(closed_in_time).then(pl.lit("closed")).when(c("status") == "closed").then(pl.lit("open"))
            .otherwise(c("status")).alias("status"),
            pl.when(c("closed_at").is_null() | closed_in_time).then(c("csat")).alias("csat"),
            c("handling_cost").fill_null(0.0), "_source_file", "_source_line",
        )
        .sort(["customer_id", "ticket_id"])
    )
    stg_marketing = (
        latest_copy(read_raw("marketing").filter(c("event_ts") < as_of_end), [c("event_id").str.strip_chars()])
        .select(
            c("event_id").str.strip_chars(), c("customer_id").str.strip_chars().str.to_uppercase(), "event_ts",
            "campaign", "channel", "event_type", c("cost").fill_null(0.0), "_source_file", "_source_line",
        )
        .sort(["customer_id", "event_id"])
    )
    for name, frame in [("stg_sales", stg_sales), ("stg_service", stg_service), ("stg_marketing", stg_marketing)]:
        frame.sink_parquet(out / f"{name}.parquet", compression="zstd")
    sales_lines = pl.scan_parquet(out / "stg_sales.parquet")
    service = pl.scan_parquet(out / "stg_service.parquet")
    marketing = pl.scan_parquet(out / "stg_marketing.parquet")

    # int_orders: each order net of its returns and refunds.
    sold, returned, gross_sum = c("sold"), c("returned_revenue").sum(), c("gross_revenue").sum()
    (
        sales_lines.group_by("customer_id", "sale_order_id")
        .agg(
            pl.coalesce(c("order_ts").filter(sold).min(), c("order_ts").min()).alias("order_ts"),
            gross_sum.alias("gross_revenue"), returned.alias("returned_revenue"), c("revenue").sum(), c("cost").sum(),
            (pl.when(sold).then(c("discount")).otherwise(0.0).sum() > 0).alias("discounted"),
            (c("status") == "cancelled").all().alias("cancelled"),
            (sold.any() & ((returned == 0) | (returned < gross_sum * (1.0 - 1e-9)))).alias("is_purchase"),
        )
        .select(
            "customer_id", c("sale_order_id").alias("order_id"), "order_ts", c("order_ts").dt.date().alias("order_date"),
            "gross_revenue", "returned_revenue", "revenue", "cost", "discounted", "cancelled", "is_purchase",
        )
        .sort(["customer_id", "order_id"])
        .sink_parquet(out / "int_orders.parquet", compression="zstd")
    )
    orders = pl.scan_parquet(out / "int_orders.parquet")

    customers = pl.concat(
        [f.select("customer_id") for f in (sales_lines, service, marketing)]
    ).unique()
    first_orders = (
        sales_lines.filter(sold).sort("customer_id", "order_ts", "order_id", "line_no")
        .group_by("customer_id", maintain_order=True)
        .agg(c("channel").first().alias("acquisition_channel"), c("referred_by").first())
    )
    purchase = c("is_purchase")
    sales = orders.group_by("customer_id").agg(
        purchase.cast(pl.Int64).sum().alias("orders"),
        c("order_date").filter(purchase).n_unique().alias("purchase_days"),
        c("order_ts").filter(purchase).min().alias("first_order_at"),
        c("order_ts").filter(purchase).max().alias("last_order_at"),
        c("revenue").sum(),
        c("gross_revenue").sum(),
        c("returned_revenue").sum(),
        c("cost").sum(),
        (purchase & c("discounted")).cast(pl.Int64).sum().alias("discounted_orders"),
        c("cancelled").cast(pl.Int64).sum().alias("cancelled_orders"),
        pl.when(c("order_ts") >= recent).then(c("revenue")).otherwise(0.0).sum().alias("spend_recent_window"),
        pl.when((c("order_ts") >= prior) & (c("order_ts") < recent)).then(c("revenue")).otherwise(0.0)
        .sum().alias("spend_prior_window"),
    )
    lines = sales_lines.filter(sold).group_by("customer_id").agg(
        pl.len().alias("order_lines"), c("category").drop_nulls().n_unique().alias("distinct_categories")
    )
    referrals = (
        first_orders.filter(c("referred_by").is_not_null())
        .group_by("referred_by").agg(pl.len().alias("referrals_made"))
        .rename({"referred_by": "customer_id"})
    )
    open_ = c("status") != "closed"
    complaint = c("category") == "complaint"
    service_agg = service.group_by("customer_id").agg(
        pl.len().alias("tickets"),
        open_.cast(pl.Int64).sum().alias("open_tickets"),
        complaint.cast(pl.Int64).sum().alias("complaints"),
        (complaint & open_).cast(pl.Int64).sum().alias("open_complaints"),
        c("csat").cast(pl.Float64).mean().alias("avg_csat"),
        c("csat").count().alias("csat_responses"),
        c("handling_cost").sum().alias("service_cost"),
    )
    kind = lambda k: (c("event_type") == k).cast(pl.Int64)  # noqa: E731
    marketing_agg = marketing.group_by("customer_id").agg(
        kind("sent").sum().alias("marketing_sent"),
        kind("open").sum().alias("marketing_opens"),
        kind("click").sum().alias("marketing_clicks"),
        kind("conversion").sum().alias("marketing_conversions"),
        (kind("unsubscribe").max() == 1).alias("unsubscribed"),
        c("cost").sum().alias("marketing_cost"),
    )
    days = lambda col: (pl.lit(as_of_day) - c(col).dt.date()).dt.total_days()  # noqa: E731
    nonzero = lambda col: pl.when(c(col) != 0).then(c(col))  # noqa: E731
    sent = nonzero("marketing_sent")
    fct = (
        customers.join(sales, on="customer_id", how="left")
        .join(lines, on="customer_id", how="left")
        .join(first_orders, on="customer_id", how="left")
        .join(referrals, on="customer_id", how="left")
        .join(service_agg, on="customer_id", how="left")
        .join(marketing_agg, on="customer_id", how="left")
        .select(
            "customer_id", "first_order_at", "last_order_at", c("orders").fill_null(0),
            c("order_lines").fill_null(0), c("purchase_days").fill_null(0), c("revenue").fill_null(0.0),
            c("cost").fill_null(0.0), (c("revenue").fill_null(0.0) - c("cost").fill_null(0.0)).alias("gross_margin"),
            (c("revenue") / nonzero("orders")).alias("avg_order_value"), c("returned_revenue").fill_null(0.0),
            (c("returned_revenue") / nonzero("gross_revenue")).alias("return_rate"), c("cancelled_orders").fill_null(0),
            c("distinct_categories").fill_null(0),
            c("discounted_orders").fill_null(0), days("first_order_at").alias("tenure_days"),
            days("last_order_at").alias("recency_days"), c("spend_recent_window").fill_null(0.0),
            c("spend_prior_window").fill_null(0.0), "acquisition_channel",
            c("first_order_at").dt.truncate("1mo").alias("cohort_month"), "referred_by",
            c("referrals_made").fill_null(0), c("tickets").fill_null(0), c("open_tickets").fill_null(0),
            c("complaints").fill_null(0), c("open_complaints").fill_null(0), "avg_csat",
            c("csat_responses").fill_null(0), c("service_cost").fill_null(0.0), c("marketing_sent").fill_null(0),
            c("marketing_opens").fill_null(0), c("marketing_clicks").fill_null(0),
            c("marketing_conversions").fill_null(0),
            (c("marketing_opens").cast(pl.Float64) / sent).alias("open_rate"),
            (c("marketing_clicks").cast(pl.Float64) / sent).alias("click_rate"),
            (c("marketing_conversions").cast(pl.Float64) / sent).alias("conversion_rate"),
            c("unsubscribed").fill_null(False), c("marketing_cost").fill_null(0.0),
        )
        .sort("customer_id")
    )
    fct.sink_parquet(out / "fct_customer.parquet", compression="zstd")


# ---------------------------------------------------------------------------------------
# lifetimes


def lifetimes_fit(model_input, out_json):
    """BG/NBD on every buyer's (x, t_x, T), Gamma-Gamma on repeat buyers, as a lifetimes
    user would call them (one row per customer, default settings)."""
    import duckdb
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    cols = duckdb.sql(
        f"SELECT x, t_x, t_cal, mean_repeat_spend FROM read_parquet('{model_input}') ORDER BY customer_id"
    ).fetchnumpy()
    started = time.perf_counter()
    bg = BetaGeoFitter()
    bg.fit(cols["x"], cols["t_x"], cols["t_cal"])
    bg_s = time.perf_counter() - started
    repeat = cols["x"] > 0
    started = time.perf_counter()
    gg = GammaGammaFitter()
    gg.fit(cols["x"][repeat], cols["mean_repeat_spend"][repeat].astype(float))
    gg_s = time.perf_counter() - started
    result = {
        "customers": int(len(cols["x"])),
        "repeat_buyers": int(repeat.sum()),
        "bgnbd": {k: float(v) for k, v in bg.params_.items()},
        "gamma_gamma": {("gamma" if k == "v" else k): float(v) for k, v in gg.params_.items()},
        "bgnbd_fit_s": round(bg_s, 3),
        "gamma_gamma_fit_s": round(gg_s, 3),
    }
    Path(out_json).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------
# Driver


def fact_totals(path):
    import duckdb

    rel = duckdb.sql(CHECK_SQL.format(path=path))
    return dict(zip(rel.columns, [float(v) if v is not None else None for v in rel.fetchall()[0]]))


def totals_agree(a, b):
    for k in a:
        x, y = a[k], b[k]
        if x is None or y is None:
            if x != y:
                return False
        elif abs(x - y) > 1e-9 * max(abs(x), abs(y), 1.0):
            return False
    return True


def write_pipeline(data, work, engine=()):
    """The default pipeline on `data`, with `engine` settings (KEY=VALUE) replacing the
    [engine] defaults."""
    text = (REPO / "pipelines" / "default.toml").read_text()
    text = text.replace('root = ".."', f'root = "{REPO}"').replace('"fixtures/', f'"{data}/')
    for setting in engine:
        key, value = setting.split("=", 1)
        text, n = re.subn(rf"^{re.escape(key.strip())}\s*=.*$", f"{key.strip()} = {value.strip()}", text,
                          count=1, flags=re.M)
        if n == 0:
            text = text.replace("[engine]\n", f"[engine]\n{key.strip()} = {value.strip()}\n", 1)
    path = Path(work) / "pipeline.toml"
    path.write_text(text)
    return path


def human(n):
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def run_size(args, lines, work):
    customers = round(lines / LINES_PER_CUSTOMER)
    data = work / "data"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    patron = args.patron
    print(f"== {human(lines)} sales lines ({customers} customers): generating", flush=True)
    gen = measure(
        [patron, "generate", "--customers", str(customers), "--seed", str(SEED), "--clean", "--out", str(data)],
        logs / "generate.log",
    )
    input_bytes = sum(f.stat().st_size for f in data.rglob("*") if f.is_file() and f.suffix in (".csv", ".ndjson"))
    pipeline = write_pipeline(data, work, args.engine)
    warehouse = work / "warehouse"
    # Fresh warehouses: a kept one (`--work` reused) would hold a second version of each
    # table, which the checks below, reading a table's Parquet files, would count twice.
    for old in (warehouse, work / "warehouse-fact"):
        shutil.rmtree(old, ignore_errors=True)
    env = dict(os.environ, RUST_LOG=os.environ.get("PATRON_BENCH_LOG", "patron=warn"))
    print("   patron run", flush=True)
    run = measure([patron, "run", "--pipeline", str(pipeline), "--warehouse", str(warehouse)], logs / "patron.log", env)
    manifest = json.loads((warehouse / "runs" / "latest.json").read_text())
    as_of = manifest["as_of"]
    rows = {s["source"]: s["rows_read"] for s in manifest["extract"]}
    total_rows = sum(rows.values())
    stage_ms = {s["name"]: s["duration_ms"] for s in manifest["stages"]}
    # Where the whole run's time goes: its phases, and its stages' times summed by layer
    # (stages of a wave run side by side, so the sums can exceed the transform's wall time).
    # The churn model's training (its cut-off snapshots, learners and scoring) is counted
    # in `model_params`, layer `models`, after the purchase-model fits.
    layer_ms = {}
    for s in manifest["stages"]:
        layer_ms[s["layer"]] = layer_ms.get(s["layer"], 0) + s["duration_ms"]
    # The peers' extract + fact, in patron: a second run of only fct_customer and what it
    # reads (`--select +fct_customer`: extract, staging, int_orders, fact; no models), whose
    # phases give the wall times. Extract includes the duplicate-key scan, part of extract's
    # validation (the peers do not do it); the staging stages run side by side, as they do in
    # a run.
    print("   patron extract + fact (run --select +fct_customer)", flush=True)
    fact_run = measure(
        [patron, "run", "--pipeline", str(pipeline), "--warehouse", str(work / "warehouse-fact"), "--select", "+fct_customer"],
        logs / "patron-fact.log",
        env,
    )
    phases = json.loads((work / "warehouse-fact" / "runs" / "latest.json").read_text())["phase_ms"]
    extract_s = (phases["extract"] + phases["duplicates"]) / 1000
    fact_s = phases["transform"] / 1000
    models = manifest["models"]
    fit_s = (models["bgnbd"]["fit_ms"] + models["gamma_gamma"]["fit_ms"]) / 1000
    results = {
        "patron": {
            "run": run,
            "fact_run": fact_run,
            "fact_phase_ms": phases,
            "extract_s": extract_s,
            "fact_s": fact_s,
            "stages_s": sum(stage_ms.values()) / 1000,
            "fit_s": fit_s,
            "stage_ms": stage_ms,
            "run_phase_ms": manifest["phase_ms"],
            "run_layer_ms": layer_ms,
            "params": {m: models[m]["params"] for m in ("bgnbd", "gamma_gamma")},
        }
    }
    peer_tables = {}
    for system in ("duckdb", "polars"):
        out = work / system
        print(f"   {system} extract", flush=True)
        ext = measure(peer(system, "extract", data, out), logs / f"{system}-extract.log")
        print(f"   {system} fact", flush=True)
        fact = measure(peer(system, "fact", out, as_of), logs / f"{system}-fact.log")
        results[system] = {"extract": ext, "fact": fact}
        peer_tables[system] = out / "tables" / "fct_customer.parquet"
    print("   lifetimes fit", flush=True)
    model_input = warehouse / "tables" / "customer_model_input"
    fit_json = work / "lifetimes.json"
    lt = measure(peer("lifetimes", "fit", f"{model_input}/*.parquet", fit_json), logs / "lifetimes.log")
    lt_result = json.loads(fit_json.read_text())
    results["lifetimes"] = {"process": lt, **lt_result}

    # Same results? fct_customer totals, and model parameters.
    patron_totals = fact_totals(f"{warehouse}/tables/fct_customer/*.parquet")
    checks = {"fct_customer_totals": {"patron": patron_totals}}
    for system, path in peer_tables.items():
        t = fact_totals(path)
        checks["fct_customer_totals"][system] = t
        checks[f"fct_customer_same_{system}"] = totals_agree(patron_totals, t)
    rel = {}
    for model in ("bgnbd", "gamma_gamma"):
        for name, value in results["patron"]["params"][model].items():
            theirs = lt_result[model][name]
            rel[f"{model}.{name}"] = abs(value - theirs) / abs(theirs)
    checks["params_rel_diff"] = rel
    checks["params_within_1e-3"] = all(v <= 1e-3 for v in rel.values())

    lt_fit_s = lt_result["bgnbd_fit_s"] + lt_result["gamma_gamma_fit_s"]
    return {
        "sales_lines": rows.get("sales", 0),
        "rows_read": rows,
        "rows_total": total_rows,
        "customers_generated": customers,
        "input_bytes": input_bytes,
        "as_of": as_of,
        "generate": gen,
        "systems": results,
        "lifetimes_fit_s": lt_fit_s,
        "checks": checks,
    }


def table_rows(size):
    """(task, system, wall, cpu, rows/s, peak MiB) rows of the printed table."""
    s = size["systems"]
    n = size["rows_total"]
    out = []

    def add(task, system, wall, cpu, rss):
        out.append({"task": task, "system": system, "wall_s": wall, "cpu_s": cpu,
                    "rows_per_s": n / wall if wall else None, "peak_rss_mib": rss})

    p = s["patron"]
    add("extract", "patron", p["extract_s"], None, None)
    add("staging+fact", "patron", p["fact_s"], None, None)
    add("extract+fact", "patron", p["extract_s"] + p["fact_s"], None, p["fact_run"]["peak_rss_mib"])
    for system in ("duckdb", "polars"):
        e, f = s[system]["extract"], s[system]["fact"]
        add("extract", system, e["wall_s"], e["cpu_s"], e["peak_rss_mib"])
        add("staging+fact", system, f["wall_s"], f["cpu_s"], f["peak_rss_mib"])
        add("extract+fact", system, e["wall_s"] + f["wall_s"], e["cpu_s"] + f["cpu_s"],
            max(e["peak_rss_mib"], f["peak_rss_mib"]))
    add("model fit", "patron", p["fit_s"], None, None)
    add("model fit", "lifetimes", size["lifetimes_fit_s"], None, s["lifetimes"]["process"]["peak_rss_mib"])
    add("whole run", "patron", p["run"]["wall_s"], p["run"]["cpu_s"], p["run"]["peak_rss_mib"])
    for task in ("extract", "staging+fact", "extract+fact", "model fit"):
        mine = next(r for r in out if r["task"] == task and r["system"] == "patron")
        peers = [r for r in out if r["task"] == task and r["system"] != "patron"]
        best = min(peers, key=lambda r: r["wall_s"])
        mine["ratio_to_best_peer"] = mine["wall_s"] / best["wall_s"]
        mine["best_peer"] = best["system"]
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(size):
    print(f"\n{human(size['sales_lines'])} sales lines, {size['rows_total']} rows read "
          f"({size['input_bytes'] / 1e6:.0f} MB of exports), as of {size['as_of']}")
    print(f"{'task':<14} {'system':<10} {'wall s':>8} {'CPU s':>8} {'rows/s':>11} {'peak MiB':>9}  patron/best peer")
    for r in size["table"]:
        ratio = f"{r['ratio_to_best_peer']:.2f}x ({r['best_peer']})" if "ratio_to_best_peer" in r else ""
        print(f"{r['task']:<14} {r['system']:<10} {fmt(r['wall_s'], '8.2f')} {fmt(r['cpu_s'], '8.2f')} "
              f"{fmt(r['rows_per_s'], '11,.0f')} {fmt(r['peak_rss_mib'], '9.0f')}  {ratio}")
    p = size["systems"]["patron"]
    whole = p["run"]["wall_s"]
    per_m = size["rows_total"] / 1e6
    print(f"whole run / extract+fact: {whole / (p['extract_s'] + p['fact_s']):.2f}x; "
          f"whole run per million rows read: {whole / per_m:.2f} s")
    phases = ", ".join(f"{k} {v / 1000:.1f} s ({v / 1000 / per_m:.2f})" for k, v in p["run_phase_ms"].items())
    print(f"whole run phases, s (s per million rows): {phases}")
    layers = ", ".join(f"{k} {v / 1000:.1f} s" for k, v in sorted(p["run_layer_ms"].items(), key=lambda kv: -kv[1]))
    print(f"whole run stage time by layer (model_params holds the churn training): {layers}")
    c = size["checks"]
    print(f"same fct_customer totals: duckdb {c['fct_customer_same_duckdb']}, polars {c['fct_customer_same_polars']}; "
          f"model parameters within 1e-3 of lifetimes: {c['params_within_1e-3']} "
          f"(max rel. diff {max(c['params_rel_diff'].values()):.2e})")


def main_driver(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patron", required=True, help="patron binary (release)")
    ap.add_argument("--lines", default="1000000", help="sales lines per data set, comma-separated")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "bench-results"), help="folder for the JSON result")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                    help="an [engine] setting for patron's runs, e.g. memory_limit_mb=768 (repeatable)")
    args = ap.parse_args(argv)
    sizes = [int(float(x)) for x in args.lines.split(",")]
    import tempfile

    root = Path(args.work or tempfile.mkdtemp(prefix="patron-compare-"))
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    import duckdb
    import lifetimes
    import polars

    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit + ("-dirty" if dirty else ""),
        "patron_engine_settings": args.engine,
        "host": {"cpus": os.cpu_count(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": {"duckdb": duckdb.__version__, "polars": polars.__version__, "lifetimes": lifetimes.__version__,
                     "python": sys.version.split()[0]},
        "sizes": [],
    }
    for lines in sizes:
        work = root / f"lines-{lines}"
        free = shutil.disk_usage(root).free
        need = lines * 600  # exports, patron's warehouse and two peers' Parquet, with margin
        if free < need:
            print(f"== {human(lines)}: skipped, {free / 1e9:.1f} GB free and about {need / 1e9:.1f} GB needed")
            report["sizes"].append({"sales_lines_requested": lines, "skipped": "not enough disk"})
            continue
        size = run_size(args, lines, work)
        size["table"] = table_rows(size)
        report["sizes"].append(size)
        print_table(size)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.keep and not args.work:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compare-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        system, phase, *rest = sys.argv[2:]
        {
            ("duckdb", "extract"): duckdb_extract,
            ("duckdb", "fact"): duckdb_fact,
            ("polars", "extract"): polars_extract,
            ("polars", "fact"): polars_fact,
            ("lifetimes", "fit"): lifetimes_fit,
        }[(system, phase)](*rest)
    else:
        main_driver(sys.argv[1:])


if __name__ == "__main__":
    main()
