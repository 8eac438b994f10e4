-- fct_customer: each customer's sales, service and marketing facts as of the as-of day; one row
-- per customer seen in any export, including people known only to service or marketing.
WITH customers AS (
    SELECT customer_id FROM stg_sales
    UNION
    SELECT customer_id FROM stg_service
    UNION
    SELECT customer_id FROM stg_marketing
),
first_orders AS (
    -- The channel and referrer of each customer's first order line, as aggregates over
    -- stg_sales, which is stored by customer: this streams customer by customer, where
    -- ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY order_ts, ...) = 1 sorted every
    -- order line first (1.5 GB of merge memory at 20M lines). Same row: the order is total.
    SELECT
        customer_id,
        FIRST_VALUE(channel ORDER BY order_ts, order_id, line_no) AS acquisition_channel,
        FIRST_VALUE(referred_by ORDER BY order_ts, order_id, line_no) AS referred_by
    FROM stg_sales
    WHERE sold
    GROUP BY customer_id
),
sales AS (
    -- Orders net of their returns and refunds (int_orders, docs/returns.md); money is in the
    -- export currency. Only purchases count as orders, days and dates (cancelled and fully
    -- returned orders are not orders here), while revenue, cost and the spend windows sum
    -- every order's net amount, summed exactly (docs/scoring.md, "Exact money").
    SELECT
        o.customer_id,
        SUM(CASE WHEN o.is_purchase THEN 1 ELSE 0 END) AS orders,
        COUNT(DISTINCT CASE WHEN o.is_purchase THEN o.order_date END) AS purchase_days,
        MIN(CASE WHEN o.is_purchase THEN o.order_ts END) AS first_order_at,
        MAX(CASE WHEN o.is_purchase THEN o.order_ts END) AS last_order_at,
        CAST(SUM(CAST(o.revenue AS DECIMAL(38, 6))) AS DOUBLE) AS revenue,
        CAST(SUM(CAST(o.gross_revenue AS DECIMAL(38, 6))) AS DOUBLE) AS gross_revenue,
        CAST(SUM(CAST(o.returned_revenue AS DECIMAL(38, 6))) AS DOUBLE) AS returned_revenue,
        CAST(SUM(CAST(o.cost AS DECIMAL(38, 6))) AS DOUBLE) AS cost,
        SUM(CASE WHEN o.is_purchase AND o.discounted THEN 1 ELSE 0 END) AS discounted_orders,
        SUM(CASE WHEN o.cancelled THEN 1 ELSE 0 END) AS cancelled_orders,
        CAST(SUM(CASE WHEN o.order_ts >= $recent_start THEN CAST(o.revenue AS DECIMAL(38, 6)) ELSE 0 END) AS DOUBLE)
            AS spend_recent_window,
        CAST(SUM(CASE WHEN o.order_ts >= $prior_start AND o.order_ts < $recent_start THEN CAST(o.revenue AS DECIMAL(38, 6)) ELSE 0 END) AS DOUBLE)
            AS spend_prior_window
    FROM int_orders AS o
    GROUP BY o.customer_id
),
categories AS (
    -- Lines per customer and category, then categories per customer: both group stg_sales
    -- in its stored order, customer by customer, where COUNT(DISTINCT category) kept a set
    -- per customer (2.5 s of 15 at 10M lines).
    SELECT customer_id, category, COUNT(*) AS order_lines
    FROM stg_sales
    WHERE sold
    GROUP BY customer_id, category
),
lines AS (
    SELECT customer_id, SUM(order_lines) AS order_lines, COUNT(category) AS distinct_categories
    FROM categories
    GROUP BY customer_id
),
referrals AS (
    SELECT referred_by AS customer_id, COUNT(*) AS referrals_made
    FROM first_orders
    WHERE referred_by IS NOT NULL
    GROUP BY referred_by
),
service AS (
    SELECT
        customer_id,
        COUNT(*) AS tickets,
        SUM(CASE WHEN status <> 'closed' THEN 1 ELSE 0 END) AS open_tickets,
        SUM(CASE WHEN category = 'complaint' THEN 1 ELSE 0 END) AS complaints,
        SUM(CASE WHEN category = 'complaint' AND status <> 'closed' THEN 1 ELSE 0 END) AS open_complaints,
        AVG(CAST(csat AS DOUBLE)) AS avg_csat,
        COUNT(csat) AS csat_responses,
        CAST(SUM(CAST(handling_cost AS DECIMAL(38, 6))) AS DOUBLE) AS service_cost
    FROM stg_service
    GROUP BY customer_id
),
marketing AS (
    SELECT
        customer_id,
        SUM(CASE WHEN event_type = 'sent' THEN 1 ELSE 0 END) AS marketing_sent,
        SUM(CASE WHEN event_type = 'open' THEN 1 ELSE 0 END) AS marketing_opens,
        SUM(CASE WHEN event_type = 'click' THEN 1 ELSE 0 END) AS marketing_clicks,
        SUM(CASE WHEN event_type = 'conversion' THEN 1 ELSE 0 END) AS marketing_conversions,
        MAX(CASE WHEN event_type = 'unsubscribe' THEN 1 ELSE 0 END) = 1 AS unsubscribed,
        CAST(SUM(CAST(cost AS DECIMAL(38, 6))) AS DOUBLE) AS marketing_cost
    FROM stg_marketing
    GROUP BY customer_id
)
SELECT
    c.customer_id,
    s.first_order_at,
    s.last_order_at,
    COALESCE(s.orders, 0) AS orders,
    COALESCE(l.order_lines, 0) AS order_lines,
    COALESCE(s.purchase_days, 0) AS purchase_days,
    COALESCE(s.revenue, 0.0) AS revenue,
    COALESCE(s.cost, 0.0) AS cost,
    COALESCE(s.revenue, 0.0) - COALESCE(s.cost, 0.0) AS gross_margin,
    s.revenue / NULLIF(s.orders, 0) AS avg_order_value,
    COALESCE(s.returned_revenue, 0.0) AS returned_revenue,
    s.returned_revenue / NULLIF(s.gross_revenue, 0.0) AS return_rate,
    COALESCE(s.cancelled_orders, 0) AS cancelled_orders,
    COALESCE(l.distinct_categories, 0) AS distinct_categories,
    COALESCE(s.discounted_orders, 0) AS discounted_orders,
    CAST(CAST($as_of AS DATE) AS INT) - CAST(CAST(s.first_order_at AS DATE) AS INT) AS tenure_days,
    CAST(CAST($as_of AS DATE) AS INT) - CAST(CAST(s.last_order_at AS DATE) AS INT) AS recency_days,
    COALESCE(s.spend_recent_window, 0.0) AS spend_recent_window,
    COALESCE(s.spend_prior_window, 0.0) AS spend_prior_window,
    f.acquisition_channel,
    date_trunc('month', s.first_order_at) AS cohort_month,
    f.referred_by,
    COALESCE(r.referrals_made, 0) AS referrals_made,
    COALESCE(v.tickets, 0) AS tickets,
    COALESCE(v.open_tickets, 0) AS open_tickets,
    COALESCE(v.complaints, 0) AS complaints,
    COALESCE(v.open_complaints, 0) AS open_complaints,
    v.avg_csat,
    COALESCE(v.csat_responses, 0) AS csat_responses,
    COALESCE(v.service_cost, 0.0) AS service_cost,
    COALESCE(m.marketing_sent, 0) AS marketing_sent,
    COALESCE(m.marketing_opens, 0) AS marketing_opens,
    COALESCE(m.marketing_clicks, 0) AS marketing_clicks,
    COALESCE(m.marketing_conversions, 0) AS marketing_conversions,
    CAST(m.marketing_opens AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS open_rate,
    CAST(m.marketing_clicks AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS click_rate,
    CAST(m.marketing_conversions AS DOUBLE) / NULLIF(m.marketing_sent, 0) AS conversion_rate,
    COALESCE(m.unsubscribed, false) AS unsubscribed,
    COALESCE(m.marketing_cost, 0.0) AS marketing_cost
FROM customers AS c
LEFT JOIN sales AS s ON s.customer_id = c.customer_id
LEFT JOIN lines AS l ON l.customer_id = c.customer_id
LEFT JOIN first_orders AS f ON f.customer_id = c.customer_id
LEFT JOIN referrals AS r ON r.customer_id = c.customer_id
LEFT JOIN service AS v ON v.customer_id = c.customer_id
LEFT JOIN marketing AS m ON m.customer_id = c.customer_id
ORDER BY c.customer_id
