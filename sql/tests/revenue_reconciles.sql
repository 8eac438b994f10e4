-- Singular test: the customer fact table carries every staged sales line's revenue.
-- Returns a row (a failure) when the totals differ.
SELECT s.total AS staged_revenue, f.total AS customer_revenue
FROM (SELECT COALESCE(CAST(SUM(CAST(revenue AS DECIMAL(38, 6))) AS DOUBLE), 0.0) AS total FROM stg_sales) AS s
CROSS JOIN (SELECT COALESCE(CAST(SUM(CAST(revenue AS DECIMAL(38, 6))) AS DOUBLE), 0.0) AS total FROM fct_customer) AS f
WHERE abs(s.total - f.total) > 1e-6 * GREATEST(1.0, abs(s.total))
