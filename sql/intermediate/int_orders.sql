-- int_orders: each order net of its returns and refunds (docs/returns.md); one row per customer
-- and order.
WITH orders AS (
    -- Money is summed exactly, as DECIMAL(38, 6), and stored as DOUBLE: a sum then does not
    -- depend on the order its lines arrive in (docs/scoring.md, "Exact money").
    SELECT
        customer_id,
        -- A return or refund line counts towards the order it names.
        sale_order_id AS order_id,
        -- When the first sold line was ordered: a return's later date never moves recency.
        COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS order_ts,
        SUM(CAST(gross_revenue AS DECIMAL(38, 6))) AS gross_revenue,
        SUM(CAST(returned_revenue AS DECIMAL(38, 6))) AS returned_revenue,
        SUM(CAST(revenue AS DECIMAL(38, 6))) AS revenue,
        SUM(CAST(cost AS DECIMAL(38, 6))) AS cost,
        SUM(CASE WHEN sold THEN CAST(discount AS DECIMAL(38, 6)) ELSE 0 END) > 0 AS discounted,
        BOOL_AND(status = 'cancelled') AS cancelled,
        BOOL_OR(sold) AS sold
    FROM stg_sales
    GROUP BY customer_id, sale_order_id
)
SELECT
    customer_id,
    order_id,
    order_ts,
    CAST(order_ts AS DATE) AS order_date,
    CAST(gross_revenue AS DOUBLE) AS gross_revenue,
    CAST(returned_revenue AS DOUBLE) AS returned_revenue,
    CAST(revenue AS DOUBLE) AS revenue,
    CAST(cost AS DOUBLE) AS cost,
    discounted,
    cancelled,
    -- The order sold something and was not taken back in full. A cancelled or fully returned
    -- order is not a purchase for frequency, recency or the models.
    sold AND (returned_revenue = 0 OR returned_revenue < gross_revenue) AS is_purchase
FROM orders
ORDER BY customer_id, order_id
