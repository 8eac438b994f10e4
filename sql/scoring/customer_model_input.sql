-- customer_model_input: the summary of each buyer's purchases that the probabilistic models are
-- fitted on (Fader, Hardie and Lee 2005), one row per buyer.
WITH days AS (
    -- Purchases on the same day are one purchase. A purchase is an order of int_orders with
    -- is_purchase (not cancelled or returned in full); its revenue is net of partial returns.
    -- Money is summed exactly (docs/scoring.md, "Exact money").
    SELECT customer_id, order_date, SUM(CAST(revenue AS DECIMAL(38, 6))) AS day_revenue
    FROM int_orders
    WHERE is_purchase
    GROUP BY customer_id, order_date
)
-- patron fits BG/NBD, the modified BG/NBD and Gamma-Gamma on this table as soon as it is built;
-- later stages call them as SQL functions and read model_params. See docs/scoring.md,
-- "The models in SQL".
SELECT
    customer_id,
    -- x: repeat purchase days (after the first); t_x: time from the first to the last purchase
    -- day; t_cal: from the first purchase day to the as-of day. Times are in units of
    -- scoring.time_unit_days (weeks by default). See docs/scoring.md, "Purchases: BG/NBD".
    CAST(COUNT(*) - 1 AS DOUBLE) AS x,
    (CAST(MAX(order_date) AS INT) - CAST(MIN(order_date) AS INT)) / $time_unit_days AS t_x,
    (CAST(CAST($as_of AS DATE) AS INT) - CAST(MIN(order_date) AS INT)) / $time_unit_days AS t_cal,
    -- Mean revenue of the repeat purchase days (all days but the first: an exact decimal
    -- difference); NULL when x = 0. FIRST_VALUE with an ORDER BY is an aggregate over the
    -- unsorted days: a ROW_NUMBER() window numbering the days sorted them first and took 2 s
    -- of the stage's 5 at 10M sales lines.
    CAST(SUM(day_revenue) - FIRST_VALUE(day_revenue ORDER BY order_date) AS DOUBLE) / CAST(NULLIF(COUNT(*) - 1, 0) AS DOUBLE)
        AS mean_repeat_spend,
    CAST(FIRST_VALUE(day_revenue ORDER BY order_date) AS DOUBLE) AS first_day_revenue
FROM days
GROUP BY customer_id
ORDER BY customer_id
