-- @cluster_by: customer_id
-- int_orders: one row per customer and order, net of its returns (docs/returns.md). A
-- return or refund line counts towards the order it names (stg_sales.sale_order_id).
-- is_purchase: the order sold something and was not taken back in full; a cancelled or
-- fully returned order is not a purchase for frequency, recency or the models. order_ts is
-- when the first sold line was ordered (a return's later date never moves recency).
SELECT
    customer_id,
    sale_order_id AS order_id,
    COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS order_ts,
    CAST(COALESCE(MIN(CASE WHEN sold THEN order_ts END), MIN(order_ts)) AS DATE) AS order_date,
    SUM(gross_revenue) AS gross_revenue,
    SUM(returned_revenue) AS returned_revenue,
    SUM(revenue) AS revenue,
    SUM(cost) AS cost,
    SUM(CASE WHEN sold THEN discount ELSE 0.0 END) > 0 AS discounted,
    BOOL_AND(status = 'cancelled') AS cancelled,
    BOOL_OR(sold)
        AND (SUM(returned_revenue) = 0 OR SUM(returned_revenue) < SUM(gross_revenue) * (1.0 - 1e-9))
        AS is_purchase
FROM stg_sales
GROUP BY customer_id, sale_order_id
ORDER BY customer_id, order_id
