-- segment_migration: customers and clv by segment on the previous as-of day and now, one row per
-- (segmentation, from_segment, to_segment); `movement` is new, gone, stayed or moved.
WITH previous_day AS (
    -- The latest earlier day in customer_scores_history, so reruns of one day compare with the
    -- day before, not with themselves; NULL on the first as-of day.
    SELECT MAX(as_of) AS from_as_of FROM customer_scores_history WHERE as_of < CAST($as_of AS DATE)
),
-- This day's and the previous day's scores: a join on the two days (a hash table of two
-- rows), which reads only their partitions.
days AS (
    SELECT
        h.customer_id,
        h.as_of,
        h.rfm_segment,
        h.value_tier,
        -- Prospects have no churn band.
        COALESCE(h.churn_band, 'prospect') AS churn_band,
        h.lifecycle_stage,
        h.portfolio_quadrant,
        h.economic_segment,
        h.investment_class,
        h.loyalty_type,
        h.satisfaction_loyalty,
        h.clv
    FROM (SELECT UNNEST(make_array(CAST($as_of AS DATE), from_as_of)) AS as_of FROM previous_day) AS d
    JOIN customer_scores_history AS h ON h.as_of = d.as_of
),
-- Each customer's rows side by side (sorted by customer, then day): this day's row carries
-- the row before it, the previous day's when it is the same customer's (else the customer
-- is new), and the previous day's row is kept only when no row of the same customer follows
-- (gone). One window over rows sorted by customer, which spills to disk under the memory
-- limit, rather than a full join, which would hold a day's scores in memory. (Not PARTITION
-- BY customer_id: a window with a partition per customer is far slower.)
paired AS (
    SELECT
        customer_id,
        as_of,
        LAG(customer_id) OVER by_customer AS previous_customer_id,
        LEAD(customer_id) OVER by_customer AS next_customer_id,
        rfm_segment,
        LAG(rfm_segment) OVER by_customer AS previous_rfm_segment,
        value_tier,
        LAG(value_tier) OVER by_customer AS previous_value_tier,
        churn_band,
        LAG(churn_band) OVER by_customer AS previous_churn_band,
        lifecycle_stage,
        LAG(lifecycle_stage) OVER by_customer AS previous_lifecycle_stage,
        portfolio_quadrant,
        LAG(portfolio_quadrant) OVER by_customer AS previous_portfolio_quadrant,
        economic_segment,
        LAG(economic_segment) OVER by_customer AS previous_economic_segment,
        investment_class,
        LAG(investment_class) OVER by_customer AS previous_investment_class,
        loyalty_type,
        LAG(loyalty_type) OVER by_customer AS previous_loyalty_type,
        satisfaction_loyalty,
        LAG(satisfaction_loyalty) OVER by_customer AS previous_satisfaction_loyalty,
        clv,
        LAG(clv) OVER by_customer AS previous_clv
    FROM days
    WINDOW by_customer AS (ORDER BY customer_id, as_of)
),
moves AS (
    SELECT
        as_of = CAST($as_of AS DATE) AS is_scored,
        COALESCE(previous_customer_id = customer_id, false) AS had_previous,
        *
    FROM paired
    WHERE as_of = CAST($as_of AS DATE) OR next_customer_id IS DISTINCT FROM customer_id
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
picked AS (
    SELECT
        s.segmentation,
        CASE s.segmentation
            WHEN 'rfm_segment' THEN m.rfm_segment
            WHEN 'value_tier' THEN m.value_tier
            WHEN 'churn_band' THEN m.churn_band
            WHEN 'lifecycle_stage' THEN m.lifecycle_stage
            WHEN 'portfolio_quadrant' THEN m.portfolio_quadrant
            WHEN 'economic_segment' THEN m.economic_segment
            WHEN 'investment_class' THEN m.investment_class
            WHEN 'loyalty_type' THEN m.loyalty_type
            WHEN 'satisfaction_loyalty' THEN m.satisfaction_loyalty
        END AS segment,
        CASE WHEN m.had_previous THEN CASE s.segmentation
            WHEN 'rfm_segment' THEN m.previous_rfm_segment
            WHEN 'value_tier' THEN m.previous_value_tier
            WHEN 'churn_band' THEN m.previous_churn_band
            WHEN 'lifecycle_stage' THEN m.previous_lifecycle_stage
            WHEN 'portfolio_quadrant' THEN m.previous_portfolio_quadrant
            WHEN 'economic_segment' THEN m.previous_economic_segment
            WHEN 'investment_class' THEN m.previous_investment_class
            WHEN 'loyalty_type' THEN m.previous_loyalty_type
            WHEN 'satisfaction_loyalty' THEN m.previous_satisfaction_loyalty
        END END AS previous_segment,
        m.is_scored,
        NOT m.is_scored OR m.had_previous AS was_scored,
        COALESCE(m.clv, 0.0) AS clv,
        CASE WHEN m.had_previous THEN COALESCE(m.previous_clv, 0.0) ELSE 0.0 END AS previous_clv
    FROM segmentations AS s
    CROSS JOIN moves AS m
),
pairs AS (
    SELECT
        segmentation,
        CASE WHEN is_scored THEN previous_segment ELSE segment END AS from_segment,
        CASE WHEN is_scored THEN segment END AS to_segment,
        was_scored,
        is_scored,
        CASE WHEN is_scored THEN clv ELSE 0.0 END AS clv,
        CASE WHEN is_scored THEN previous_clv ELSE clv END AS previous_clv
    FROM picked
)
SELECT
    pairs.segmentation,
    d.from_as_of,
    CAST($as_of AS DATE) AS to_as_of,
    pairs.from_segment,
    pairs.to_segment,
    -- new: not scored on the previous day (from_segment NULL; every customer on the first as-of
    -- day); gone: not scored now (to_segment NULL).
    CASE
        WHEN NOT pairs.was_scored THEN 'new'
        WHEN NOT pairs.is_scored THEN 'gone'
        WHEN pairs.from_segment = pairs.to_segment THEN 'stayed'
        ELSE 'moved'
    END AS movement,
    COUNT(*) AS customers,
    -- Summed exactly (docs/scoring.md, "Exact money").
    CAST(SUM(CAST(pairs.clv AS DECIMAL(38, 6))) AS DOUBLE) AS clv,
    CAST(SUM(CAST(pairs.previous_clv AS DECIMAL(38, 6))) AS DOUBLE) AS previous_clv
FROM previous_day AS d
CROSS JOIN pairs
GROUP BY pairs.segmentation, d.from_as_of, pairs.from_segment, pairs.to_segment, pairs.was_scored, pairs.is_scored
ORDER BY pairs.segmentation, pairs.from_segment NULLS FIRST, pairs.to_segment NULLS LAST
