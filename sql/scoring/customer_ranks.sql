-- customer_ranks: where each customer of customer_values stands among the others, and the
-- population figures customer_scores segments by (the same on every row); one row per customer.
WITH totals AS (
    -- What needs all customers first (counts, totals, the split values, each peer group's
    -- quantile) is a GROUP BY of its own, read from customer_values again: a stored table, so
    -- reading it again is cheap.
    SELECT
        COUNT(*) FILTER (WHERE is_buyer) AS buyers,
        COUNT(*) FILTER (WHERE is_buyer AND purchase_days = 1) AS one_time_buyers,
        -- Money is summed exactly (docs/scoring.md, "Exact money").
        CAST(SUM(CAST(historical_value AS DECIMAL(38, 6))) AS DOUBLE) AS value_total,
        COALESCE(CAST(AVG(CASE WHEN referred THEN CAST(current_value AS DECIMAL(38, 6)) END) AS DOUBLE), 0.0) AS referred_value
    FROM customer_values
),
-- Wallet headroom: the potential_quantile of current_value among customers of the same
-- acquisition channel and cohort month.
peer_groups AS (
    SELECT acquisition_channel, cohort_month, COUNT(*) AS customers
    FROM customer_values
    GROUP BY acquisition_channel, cohort_month
),
peer_ranks AS (
    SELECT
        acquisition_channel,
        cohort_month,
        current_value,
        RANK() OVER (PARTITION BY acquisition_channel, cohort_month ORDER BY current_value DESC NULLS FIRST)
            AS place_desc
    FROM customer_values
),
peer_values AS (
    SELECT
        r.acquisition_channel,
        r.cohort_month,
        -- CUME_DIST = (customers at or below the value) / customers
        --           = (customers - RANK in descending order + 1) / customers,
        -- in the same floating-point operations as DataFusion's CUME_DIST.
        MIN(CASE WHEN CAST(g.customers - r.place_desc + 1 AS DOUBLE) / CAST(g.customers AS DOUBLE) >= $potential_quantile THEN r.current_value END)
            AS peer_value
    FROM peer_groups AS g
    JOIN peer_ranks AS r
        ON (r.acquisition_channel IS NOT DISTINCT FROM g.acquisition_channel)
        AND (r.cohort_month IS NOT DISTINCT FROM g.cohort_month)
    GROUP BY r.acquisition_channel, r.cohort_month
),
potential AS (
    SELECT
        v.customer_id,
        v.is_buyer,
        v.historical_value,
        v.current_value,
        v.cost_to_serve,
        v.recency_days,
        v.purchase_days,
        v.monetary,
        v.tenure_days,
        -- Wallet headroom (the peer value minus the customer's own, floored at 0; 0 for
        -- prospects) + referrals made x the mean current_value of referred customers.
        GREATEST(0.0, COALESCE(CASE WHEN v.is_buyer THEN v.peer_value ELSE 0.0 END, 0.0) - v.current_value)
            + v.referrals_made * t.referred_value AS potential_value
    FROM totals AS t
    CROSS JOIN (
        SELECT c.*, p.peer_value
        FROM peer_values AS p
        RIGHT JOIN customer_values AS c
            ON (p.acquisition_channel IS NOT DISTINCT FROM c.acquisition_channel)
            AND (p.cohort_month IS NOT DISTINCT FROM c.cohort_month)
    ) AS v
),
-- The two-by-two splits: for each measure, the smallest buyer value at or above
-- segment_split_quantile of buyers ("high" is strictly above it). One window per measure,
-- each sorting the customers on that measure alone: one window over each customer's row
-- once per measure, partitioned by the measure's name, took 4.4 s of CPU against 3.0 s at
-- 2M customers. Buyers are a window partition, not a WHERE: a filter below
-- the peer join would make DataFusion hold the customers in the join's hash table instead of
-- the peer groups.
splits AS (
    SELECT
        -- CUME_DIST among buyers, as in peer_values.
        MIN(CASE WHEN w.is_buyer AND CAST(t.buyers - w.hist_place + 1 AS DOUBLE) / CAST(t.buyers AS DOUBLE) >= $segment_split_quantile THEN w.historical_value END)
            AS hist_split,
        MIN(CASE WHEN w.is_buyer AND CAST(t.buyers - w.curr_place + 1 AS DOUBLE) / CAST(t.buyers AS DOUBLE) >= $segment_split_quantile THEN w.current_value END)
            AS curr_split,
        MIN(CASE WHEN w.is_buyer AND CAST(t.buyers - w.pot_place + 1 AS DOUBLE) / CAST(t.buyers AS DOUBLE) >= $segment_split_quantile THEN w.potential_value END)
            AS pot_split,
        MIN(CASE WHEN w.is_buyer AND CAST(t.buyers - w.cost_place + 1 AS DOUBLE) / CAST(t.buyers AS DOUBLE) >= $segment_split_quantile THEN w.cost_to_serve END)
            AS cost_split
    FROM totals AS t
    CROSS JOIN (
        SELECT
            is_buyer,
            historical_value,
            current_value,
            potential_value,
            cost_to_serve,
            RANK() OVER (PARTITION BY is_buyer ORDER BY historical_value DESC NULLS FIRST) AS hist_place,
            RANK() OVER (PARTITION BY is_buyer ORDER BY current_value DESC NULLS FIRST) AS curr_place,
            RANK() OVER (PARTITION BY is_buyer ORDER BY potential_value DESC NULLS FIRST) AS pot_place,
            RANK() OVER (PARTITION BY is_buyer ORDER BY cost_to_serve DESC NULLS FIRST) AS cost_place
        FROM potential
    ) AS w
),
population AS (
    SELECT
        t.buyers,
        t.one_time_buyers,
        t.value_total,
        s.hist_split,
        s.curr_split,
        s.pot_split,
        s.cost_split,
        mp.model_version
    FROM totals AS t
    CROSS JOIN splits AS s
    CROSS JOIN (SELECT MIN(model_version) AS model_version FROM model_params) AS mp
),
-- Each ranking is a window that DataFusion computes while the rows stream past in sorted
-- order, sorting the customers once on these few columns (sorts spill to disk under the
-- memory limit). No window frame is a RANGE up to the current row: that holds all rows tied
-- with it before it emits any, and the customers without purchases all tie at zero (at 10M
-- sales lines about 250,000 of them came out as one 28 MB batch). value_ahead sums the rows
-- before in (historical value descending, customer_id) order; minus the ties among them,
-- it is the value held by customers of strictly higher historical value (ABC tiers). It is
-- summed exactly, as value_total is, so the two agree.
ranked AS (
    SELECT
        customer_id,
        is_buyer,
        purchase_days,
        potential_value,
        RANK() OVER (PARTITION BY is_buyer ORDER BY recency_days DESC) AS r_place,
        RANK() OVER (PARTITION BY is_buyer ORDER BY purchase_days) AS f_place,
        RANK() OVER (PARTITION BY is_buyer ORDER BY monetary) AS m_place,
        RANK() OVER (PARTITION BY is_buyer ORDER BY tenure_days) AS tenure_place,
        historical_value,
        SUM(CAST(historical_value AS DECIMAL(38, 6))) OVER (
            ORDER BY historical_value DESC, customer_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS value_ahead,
        ROW_NUMBER() OVER (ORDER BY historical_value DESC, customer_id)
            - RANK() OVER (ORDER BY historical_value DESC) AS ties_ahead
    FROM potential
)
SELECT
    r.customer_id,
    r.potential_value,
    -- PERCENT_RANK among buyers (NULL for prospects) of recency (reversed), frequency, monetary
    -- and tenure, from the window's rank and the buyer count of totals:
    -- (RANK - 1) / MAX(buyers - 1, 1), in the same floating-point operations as PERCENT_RANK.
    CASE WHEN r.is_buyer THEN (CAST(r.r_place AS DOUBLE) - 1.0) / GREATEST(CAST(p.buyers AS DOUBLE) - 1.0, 1.0) END AS r_rank,
    CASE WHEN r.is_buyer THEN (CAST(r.f_place AS DOUBLE) - 1.0) / GREATEST(CAST(p.buyers AS DOUBLE) - 1.0, 1.0) END AS f_rank,
    -- PERCENT_RANK among repeat buyers only (NULL for the rest): they rank after every one-time
    -- buyer, who all share place 1.
    CASE
        WHEN r.is_buyer AND r.purchase_days > 1 THEN (CAST(r.f_place - p.one_time_buyers AS DOUBLE) - 1.0)
            / GREATEST(CAST(p.buyers - p.one_time_buyers AS DOUBLE) - 1.0, 1.0)
    END AS f_repeat_rank,
    CASE WHEN r.is_buyer THEN (CAST(r.m_place AS DOUBLE) - 1.0) / GREATEST(CAST(p.buyers AS DOUBLE) - 1.0, 1.0) END AS m_rank,
    CASE WHEN r.is_buyer THEN (CAST(r.tenure_place AS DOUBLE) - 1.0) / GREATEST(CAST(p.buyers AS DOUBLE) - 1.0, 1.0) END
        AS tenure_rank,
    -- Historical value held by customers of higher historical value, and by all customers.
    CAST(COALESCE(r.value_ahead, 0) - CAST(r.historical_value AS DECIMAL(38, 6)) * r.ties_ahead AS DOUBLE) AS value_before,
    p.value_total,
    p.hist_split,
    p.curr_split,
    p.pot_split,
    p.cost_split,
    p.model_version
FROM population AS p
CROSS JOIN ranked AS r
ORDER BY r.customer_id
