-- @cluster_by: customer_id
-- customer_model_input: the per-buyer summary the probabilistic models are fitted on
-- (Fader, Hardie and Lee 2005). Purchases on the same day are one purchase; a purchase is
-- an order of int_orders with is_purchase (not cancelled or returned in full), and its
-- spend is net of partial returns.
--   x                 purchase days after the first (repeat purchases)
--   t_x               time from the first to the last purchase day
--   t_cal             time from the first purchase day to the as-of day
--   mean_repeat_spend mean revenue of the purchase days after the first (NULL when x = 0)
-- Times are in units of scoring.time_unit_days (weeks by default). patron fits BG/NBD and
-- Gamma-Gamma on this table as soon as it is built; after that the model functions
-- (bgnbd_p_alive, bgnbd_expected_purchases, bgnbd_discounted_purchases,
-- gg_expected_order_value) and the model_params table are available to later stages.
WITH days AS (
    SELECT customer_id, order_date, SUM(revenue) AS day_revenue
    FROM int_orders
    WHERE is_purchase
    GROUP BY customer_id, order_date
),
numbered AS (
    SELECT
        customer_id,
        order_date,
        day_revenue,
        ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY order_date) AS day_number
    FROM days
)
SELECT
    customer_id,
    CAST(COUNT(*) - 1 AS DOUBLE) AS x,
    (CAST(MAX(order_date) AS INT) - CAST(MIN(order_date) AS INT)) / $time_unit_days AS t_x,
    (CAST(CAST($as_of AS DATE) AS INT) - CAST(MIN(order_date) AS INT)) / $time_unit_days AS t_cal,
    SUM(CASE WHEN day_number > 1 THEN day_revenue END) / CAST(NULLIF(COUNT(*) - 1, 0) AS DOUBLE) AS mean_repeat_spend,
    SUM(CASE WHEN day_number = 1 THEN day_revenue END) AS first_day_revenue
FROM numbered
GROUP BY customer_id
ORDER BY customer_id
