-- int_orders: each order net of its returns and refunds (docs/returns.md); one row per customer
-- and order.
SELECT
    customer_id,
    -- A return or refund line counts towards the order it names.
    sale_order_id AS order_id,
    -- When the first sold line was ordered: a return's later date never moves recency.
    COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS order_ts,
    CAST(COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS DATE) AS order_date,
    SUM(gross_revenue) AS gross_revenue,
    SUM(returned_revenue) AS returned_revenue,
    SUM(revenue) AS revenue,
    SUM(cost) AS cost,
    SUM(CASE WHEN sold THEN discount ELSE 0.0 END) > 0 AS discounted,
    BOOL_AND(status = 'cancelled') AS cancelled,
    -- The order sold something and was not taken back in full. A cancelled or fully returned
    -- order is not a purchase for frequency, recency or the models.
    BOOL_OR(sold)
        AND (SUM(returned_revenue) = 0 OR SUM(returned_revenue) < SUM(gross_revenue) * (1.0 - 1e-9))
        AS is_purchase
FROM stg_sales
GROUP BY customer_id, sale_order_id
ORDER BY customer_id, order_id
