-- @description: For each segmentation, how many customers moved from which segment on the previous as-of day to which segment now, with their value.
-- segment_migration: the previous as-of day is the latest earlier day in
-- customer_scores_history (so reruns of one day compare with the day before, not with
-- themselves). One row per (segmentation, from_segment, to_segment); `movement` says
-- new (not scored on the previous day; from_segment NULL), gone (not scored now; to_segment
-- NULL), stayed or moved. On the first as-of day every customer is `new` and from_as_of is
-- NULL. Prospects have no churn band: their churn_band here is `prospect`.
WITH previous_day AS (
    SELECT MAX(as_of) AS from_as_of FROM customer_scores_history WHERE as_of < CAST($as_of AS DATE)
),
current_scores AS (
    SELECT * FROM customer_scores_history WHERE as_of = CAST($as_of AS DATE)
),
previous_scores AS (
    SELECT h.* FROM customer_scores_history AS h JOIN previous_day AS d ON h.as_of = d.from_as_of
),
segmentations (segmentation) AS (
    VALUES
        ('rfm_segment'),
        ('value_tier'),
        ('churn_band'),
        ('lifecycle_stage'),
        ('portfolio_quadrant'),
        ('economic_segment'),
        ('investment_class'),
        ('loyalty_type'),
        ('satisfaction_loyalty')
),
pairs AS (
    SELECT
        s.segmentation,
        CASE s.segmentation
            WHEN 'rfm_segment' THEN p.rfm_segment
            WHEN 'value_tier' THEN p.value_tier
            WHEN 'churn_band' THEN CASE WHEN p.customer_id IS NOT NULL THEN COALESCE(p.churn_band, 'prospect') END
            WHEN 'lifecycle_stage' THEN p.lifecycle_stage
            WHEN 'portfolio_quadrant' THEN p.portfolio_quadrant
            WHEN 'economic_segment' THEN p.economic_segment
            WHEN 'investment_class' THEN p.investment_class
            WHEN 'loyalty_type' THEN p.loyalty_type
            WHEN 'satisfaction_loyalty' THEN p.satisfaction_loyalty
        END AS from_segment,
        CASE s.segmentation
            WHEN 'rfm_segment' THEN c.rfm_segment
            WHEN 'value_tier' THEN c.value_tier
            WHEN 'churn_band' THEN CASE WHEN c.customer_id IS NOT NULL THEN COALESCE(c.churn_band, 'prospect') END
            WHEN 'lifecycle_stage' THEN c.lifecycle_stage
            WHEN 'portfolio_quadrant' THEN c.portfolio_quadrant
            WHEN 'economic_segment' THEN c.economic_segment
            WHEN 'investment_class' THEN c.investment_class
            WHEN 'loyalty_type' THEN c.loyalty_type
            WHEN 'satisfaction_loyalty' THEN c.satisfaction_loyalty
        END AS to_segment,
        p.customer_id IS NOT NULL AS was_scored,
        c.customer_id IS NOT NULL AS is_scored,
        COALESCE(c.clv, 0.0) AS clv,
        COALESCE(p.clv, 0.0) AS previous_clv
    FROM current_scores AS c
    FULL OUTER JOIN previous_scores AS p ON p.customer_id = c.customer_id
    CROSS JOIN segmentations AS s
)
SELECT
    pairs.segmentation,
    d.from_as_of,
    CAST($as_of AS DATE) AS to_as_of,
    pairs.from_segment,
    pairs.to_segment,
    CASE
        WHEN NOT pairs.was_scored THEN 'new'
        WHEN NOT pairs.is_scored THEN 'gone'
        WHEN pairs.from_segment = pairs.to_segment THEN 'stayed'
        ELSE 'moved'
    END AS movement,
    COUNT(*) AS customers,
    SUM(pairs.clv) AS clv,
    SUM(pairs.previous_clv) AS previous_clv
FROM pairs
CROSS JOIN previous_day AS d
GROUP BY pairs.segmentation, d.from_as_of, pairs.from_segment, pairs.to_segment, pairs.was_scored, pairs.is_scored
ORDER BY pairs.segmentation, pairs.from_segment NULLS FIRST, pairs.to_segment NULLS LAST
