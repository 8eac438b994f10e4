-- stg_sales: order lines as of the as-of day, one copy per line (raw_sales_current), ids
-- normalised, returns split out (docs/returns.md); sorted by customer for `patron explain`.
SELECT
    TRIM(order_id) AS order_id,
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
    COALESCE(refund_of, TRIM(order_id)) AS sale_order_id,
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
    FROM raw_sales_current k
)
ORDER BY customer_id, order_id, line_no
