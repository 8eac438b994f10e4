-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_sales: sales order lines, cleaned. One row per (order_id, line_no): when an export
-- repeats a line, the copy loaded last (latest file, then latest line) wins. Customer ids
-- are trimmed and upper-cased; orders after the as-of day are left out. Revenue is the
-- line value after discount; cost is the ERP unit cost, or estimated from the configured
-- margin rate when the ERP has none.
-- Returns (docs/returns.md): a line with a negative quantity takes units back, a status of
-- returned or refunded takes the whole line back, cancelled voids it. Each line splits
-- into gross_revenue (sold) and returned_revenue (taken back); revenue and cost are net.
-- sale_order_id is the order a line counts towards: refund_of when set, else order_id.
-- Copies: extract lists each superseded copy of a key (order_id, line_no) in the
-- `duplicates` table. Only the rows of those keys are ranked, newest copy first; the
-- older copies are left out. Every other row passes straight through, so the rows are
-- sorted once (by customer) rather than also by key. The short lists come first in
-- each join: a hash join holds its first side in memory while the other streams past.
WITH keyed AS (
    SELECT
        *,
        TRIM(order_id) AS order_key
    FROM raw_sales
    WHERE order_ts < $as_of_end
),
repeated AS (
    SELECT DISTINCT k.order_key, k.line_no
    FROM duplicates d
    RIGHT SEMI JOIN keyed k
        ON d.source = 'sales' AND k._source_file = d.file AND k._source_line = d.line
),
older AS (
    SELECT _source_file, _source_line
    FROM (
        SELECT
            _source_file,
            _source_line,
            ROW_NUMBER() OVER (PARTITION BY order_key, line_no ORDER BY _source_file DESC, _source_line DESC) AS newness
        FROM repeated r
        RIGHT SEMI JOIN keyed k
            ON (k.order_key IS NOT DISTINCT FROM r.order_key) AND (k.line_no IS NOT DISTINCT FROM r.line_no)
    )
    WHERE newness > 1
)
SELECT
    order_key AS order_id,
    line_no,
    UPPER(TRIM(customer_id)) AS customer_id,
    order_ts,
    CAST(order_ts AS DATE) AS order_date,
    channel,
    category,
    quantity,
    unit_price,
    discount,
    unit_cost,
    currency,
    NULLIF(UPPER(TRIM(referred_by)), '') AS referred_by,
    status,
    refund_of,
    COALESCE(refund_of, order_key) AS sale_order_id,
    quantity > 0 AND status <> 'cancelled' AS sold,
    CASE WHEN status <> 'cancelled' AND quantity >= 0 THEN line_value ELSE 0.0 END AS gross_revenue,
    CASE
        WHEN status = 'cancelled' THEN 0.0
        WHEN quantity < 0 THEN -line_value
        WHEN status IN ('returned', 'refunded') THEN line_value
        ELSE 0.0
    END AS returned_revenue,
    CASE
        WHEN status = 'cancelled' OR (quantity >= 0 AND status IN ('returned', 'refunded')) THEN 0.0
        ELSE line_value
    END AS revenue,
    CASE
        WHEN status = 'cancelled' OR (quantity >= 0 AND status IN ('returned', 'refunded')) THEN 0.0
        WHEN unit_cost IS NULL THEN line_value * (1.0 - $margin_rate)
        ELSE quantity * unit_cost
    END AS cost,
    unit_cost IS NULL AS cost_estimated,
    _source_file,
    _source_line
FROM (
    SELECT
        k.* EXCLUDE (discount, status, refund_of),
        COALESCE(k.discount, 0.0) AS discount,
        COALESCE(LOWER(TRIM(k.status)), 'completed') AS status,
        NULLIF(TRIM(k.refund_of), '') AS refund_of,
        -- The line's value after discount, signed: a return line's discount is given back too.
        CASE
            WHEN k.quantity < 0 THEN k.quantity * k.unit_price + COALESCE(k.discount, 0.0)
            ELSE k.quantity * k.unit_price - COALESCE(k.discount, 0.0)
        END AS line_value
    FROM older o
    RIGHT ANTI JOIN keyed k ON k._source_file = o._source_file AND k._source_line = o._source_line
)
ORDER BY customer_id, order_id, line_no
