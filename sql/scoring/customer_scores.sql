-- customer_scores: one row per customer of fct_customer, as of the as-of day.
--
-- RFM: recency = days since the last order, frequency = distinct purchase days,
-- monetary = total revenue (or revenue per purchase day with scoring.monetary = "average").
-- Quintile scores 1-5 (5 best; recency reversed) come from the percent rank, so customers
-- with the same value always get the same score: score = 1 + floor(5 * percent_rank),
-- capped at 5. The named segment comes from the R-F map in seeds/rfm_segments.csv.
-- Customers without an order have no RFM scores and the segment `prospect`.
--
-- value_tier (ABC Pareto on historical value = gross margin to date): customers sorted by
-- historical value; A holds the first value_tier_a_share of the total, B up to
-- value_tier_b_share, C the rest. Customers tied on value share a tier.
WITH buyers AS (
    SELECT
        customer_id,
        recency_days,
        purchase_days AS frequency,
        CASE WHEN $monetary_average THEN revenue / purchase_days ELSE revenue END AS monetary
    FROM fct_customer
    WHERE orders > 0
),
rfm AS (
    SELECT
        customer_id,
        CAST(1 + LEAST(4, FLOOR(5 * PERCENT_RANK() OVER (ORDER BY recency_days DESC))) AS INT) AS r_score,
        CAST(1 + LEAST(4, FLOOR(5 * PERCENT_RANK() OVER (ORDER BY frequency))) AS INT) AS f_score,
        CAST(1 + LEAST(4, FLOOR(5 * PERCENT_RANK() OVER (ORDER BY monetary))) AS INT) AS m_score
    FROM buyers
),
value AS (
    SELECT
        customer_id,
        gross_margin AS historical_value,
        SUM(gross_margin) OVER (ORDER BY gross_margin DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            - SUM(gross_margin) OVER (PARTITION BY gross_margin) AS value_before,
        SUM(gross_margin) OVER () AS value_total
    FROM fct_customer
)
SELECT
    f.customer_id,
    CAST($as_of AS DATE) AS as_of,
    f.recency_days,
    f.purchase_days AS frequency,
    b.monetary,
    r.r_score,
    r.f_score,
    r.m_score,
    CASE WHEN f.orders = 0 THEN 'prospect' ELSE s.rfm_segment END AS rfm_segment,
    v.historical_value,
    CASE
        WHEN f.orders = 0 OR v.historical_value <= 0 OR v.value_total <= 0 THEN 'C'
        WHEN v.value_before < $value_tier_a_share * v.value_total THEN 'A'
        WHEN v.value_before < $value_tier_b_share * v.value_total THEN 'B'
        ELSE 'C'
    END AS value_tier
FROM fct_customer AS f
JOIN value AS v ON v.customer_id = f.customer_id
LEFT JOIN buyers AS b ON b.customer_id = f.customer_id
LEFT JOIN rfm AS r ON r.customer_id = f.customer_id
LEFT JOIN rfm_segments AS s ON s.r_score = r.r_score AND s.f_score = r.f_score
ORDER BY f.customer_id
