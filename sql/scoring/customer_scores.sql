-- @cluster_by: customer_id
-- customer_scores: one row per customer of fct_customer, as of the as-of day. Every
-- threshold is a `[scoring]` setting of the pipeline file, passed in as `$<setting>`.
-- Customers who never ordered (known only to service or marketing) are `prospect`s: the
-- purchase models do not describe them, so their model columns (p_alive, churn_risk,
-- churn_band, expected purchases, expected order value) are NULL, their values 0.
--
-- 1 RFM: recency = days since the last order, frequency = distinct purchase days,
--   monetary = total revenue (or per purchase day with scoring.monetary = "average").
--   Scores 1-5 (5 best; recency reversed) = 1 + floor(5 * percent_rank), capped at 5, so
--   customers with the same value always get the same score. Segment from the R-F map in
--   seeds/rfm_segments.csv.
-- 2 Churn: p_alive (BG/NBD); churn_risk = the churn early-warning model's calibrated
--   probability of no purchase in the next churn_holdout_days (churn_predictions, trained
--   by patron on every signal), or 1 - p_alive when the run fell back to BG/NBD
--   (churn_model says which); churn_band low/medium/high; expected purchases in the next 90
--   and 365 days.
-- 3 Spend (Gamma-Gamma): expected_order_value = (gamma + m x) p / (p x + q - 1), which is
--   the population mean for one-time buyers; the customer's mean order value when the model
--   could not be fitted (fewer than 3 repeat buyers).
-- 4 Value: historical_value = gross margin to date; current_value = discounted CLV over
--   clv_horizon_months = sum_k (E[X(k)] - E[X(k-1)]) * expected_order_value * margin /
--   (1 + clv_monthly_discount)^k, margin = the customer's own margin share (floored at 0);
--   potential_value = wallet headroom (potential_quantile of current_value among peers with
--   the same acquisition channel and cohort month, minus own, floored at 0) + referrals made
--   x mean current_value of referred customers; clv = current_value; value_tier ABC Pareto.
-- 5-7 Two-by-two segments split each axis at segment_split_quantile of buyers ("high" is
--   strictly above the split): portfolio (historical x potential), economic (current x
--   potential), investment (marketing + service cost x gross margin).
-- 8 Loyalty (Dick and Basu): attitude 0-1 = mean of the available parts among CSAT
--   ((avg - 1) / 4), engagement ((open rate + click rate) / 2), referrals (1 if any) and no
--   complaints (1 if none); repeat 0-1 = mean of the percent ranks of frequency and tenure
--   among buyers; loyalty_score = 100 x (attitude + repeat) / 2.
-- 9 Satisfaction x loyalty (Jones and Sasser): `unknown` without CSAT.
-- 10 Lifecycle stage, and churn_reasons: the churn model's top contributing features as
--   `code=value` (comma-separated, '' when none); with the BG/NBD fallback the rule codes
--   long_gap, open_complaint, low_csat, unsubscribed, spend_falling.
WITH base AS (
    SELECT
        f.*,
        m.x,
        m.t_x,
        m.t_cal,
        m.mean_repeat_spend,
        cp.churn_risk AS model_churn_risk,
        cp.churn_reasons AS model_churn_reasons,
        cp.churn_model AS model_churn_model,
        f.orders > 0 AS is_buyer,
        CASE WHEN f.revenue > 0 THEN GREATEST(0.0, f.gross_margin / f.revenue) ELSE $margin_rate END AS margin_share,
        CASE WHEN $monetary_average THEN f.revenue / NULLIF(f.purchase_days, 0) ELSE f.revenue END AS monetary
    FROM fct_customer AS f
    LEFT JOIN customer_model_input AS m ON m.customer_id = f.customer_id
    LEFT JOIN churn_predictions AS cp ON cp.customer_id = f.customer_id
),
modelled AS (
    SELECT
        base.*,
        bgnbd_p_alive(x, t_x, t_cal) AS p_alive,
        bgnbd_expected_purchases(90.0 / $time_unit_days, x, t_x, t_cal) AS expected_purchases_90d,
        bgnbd_expected_purchases(365.0 / $time_unit_days, x, t_x, t_cal) AS expected_purchases_365d,
        -- x = 0 gives the population mean p * gamma / (q - 1), whatever the spend argument.
        CASE WHEN is_buyer THEN COALESCE(gg_expected_order_value(x, COALESCE(mean_repeat_spend, 0.0)), avg_order_value) END
            AS expected_order_value,
        bgnbd_discounted_purchases(x, t_x, t_cal, $clv_horizon_months, $clv_monthly_discount) AS discounted_purchases
    FROM base
),
valued AS (
    SELECT
        modelled.*,
        gross_margin AS historical_value,
        COALESCE(discounted_purchases * expected_order_value * margin_share, 0.0) AS current_value
    FROM modelled
),
-- The windows below sort all customers once per ordering. They run on the few columns they
-- need (narrow), and their results are joined back to the other columns after (windowed,
-- the narrow side first, held in memory): each sort then moves a dozen columns rather than
-- every column of fct_customer.
narrow AS (
    SELECT
        customer_id,
        acquisition_channel,
        cohort_month,
        is_buyer,
        referred_by,
        referrals_made,
        current_value,
        historical_value,
        marketing_cost + service_cost AS cost_to_serve,
        recency_days,
        purchase_days,
        monetary,
        tenure_days
    FROM valued
),
peers AS (
    SELECT
        narrow.*,
        CUME_DIST() OVER (PARTITION BY acquisition_channel, cohort_month ORDER BY current_value) AS peer_cume
    FROM narrow
),
headroom AS (
    SELECT
        peers.*,
        CASE
            WHEN is_buyer THEN MIN(CASE WHEN peer_cume >= $potential_quantile THEN current_value END)
                OVER (PARTITION BY acquisition_channel, cohort_month)
            ELSE 0.0
        END AS peer_value,
        COALESCE(AVG(CASE WHEN referred_by IS NOT NULL THEN current_value END) OVER (), 0.0) AS referred_value
    FROM peers
),
potential AS (
    SELECT
        headroom.*,
        GREATEST(0.0, COALESCE(peer_value, 0.0) - current_value) + referrals_made * referred_value AS potential_value
    FROM headroom
),
ranked AS (
    SELECT
        potential.*,
        CASE WHEN is_buyer THEN CUME_DIST() OVER (PARTITION BY is_buyer ORDER BY historical_value) END AS hist_cume,
        CASE WHEN is_buyer THEN CUME_DIST() OVER (PARTITION BY is_buyer ORDER BY current_value) END AS curr_cume,
        CASE WHEN is_buyer THEN CUME_DIST() OVER (PARTITION BY is_buyer ORDER BY potential_value) END AS pot_cume,
        CASE WHEN is_buyer THEN CUME_DIST() OVER (PARTITION BY is_buyer ORDER BY cost_to_serve) END AS cost_cume,
        CASE WHEN is_buyer THEN PERCENT_RANK() OVER (PARTITION BY is_buyer ORDER BY recency_days DESC) END AS r_rank,
        CASE WHEN is_buyer THEN PERCENT_RANK() OVER (PARTITION BY is_buyer ORDER BY purchase_days) END AS f_rank,
        CASE WHEN is_buyer THEN PERCENT_RANK() OVER (PARTITION BY is_buyer ORDER BY monetary) END AS m_rank,
        CASE WHEN is_buyer THEN PERCENT_RANK() OVER (PARTITION BY is_buyer ORDER BY tenure_days) END AS tenure_rank,
        SUM(historical_value) OVER (ORDER BY historical_value DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            - SUM(historical_value) OVER (PARTITION BY historical_value) AS value_before,
        SUM(historical_value) OVER () AS value_total
    FROM potential
),
splits AS (
    SELECT
        ranked.*,
        MIN(CASE WHEN hist_cume >= $segment_split_quantile THEN historical_value END) OVER () AS hist_split,
        MIN(CASE WHEN curr_cume >= $segment_split_quantile THEN current_value END) OVER () AS curr_split,
        MIN(CASE WHEN pot_cume >= $segment_split_quantile THEN potential_value END) OVER () AS pot_split,
        MIN(CASE WHEN cost_cume >= $segment_split_quantile THEN cost_to_serve END) OVER () AS cost_split,
        MIN(CASE WHEN hist_cume >= $segment_split_quantile THEN historical_value END) OVER () AS margin_split
    FROM ranked
),
windowed AS (
    SELECT
        v.*,
        w.cost_to_serve,
        w.potential_value,
        w.r_rank,
        w.f_rank,
        w.m_rank,
        w.tenure_rank,
        w.value_before,
        w.value_total,
        w.hist_split,
        w.curr_split,
        w.pot_split,
        w.cost_split,
        w.margin_split
    FROM splits AS w
    JOIN valued AS v ON v.customer_id = w.customer_id
),
loyalty AS (
    SELECT
        windowed.*,
        (
            CASE WHEN csat_responses > 0 THEN (avg_csat - 1.0) / 4.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN (COALESCE(open_rate, 0.0) + COALESCE(click_rate, 0.0)) / 2.0 ELSE 0.0 END
            + CASE WHEN referrals_made > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN complaints = 0 THEN 1.0 ELSE 0.0 END
        ) / (
            CASE WHEN csat_responses > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN 1.0 ELSE 0.0 END
            + 2.0
        ) AS attitude,
        CASE WHEN is_buyer THEN (f_rank + tenure_rank) / 2.0 ELSE 0.0 END AS repeat_patronage,
        CASE WHEN x > 0 THEN t_x * $time_unit_days / x END AS mean_gap_days,
        -- LEAST ignores NULLs, so the scores are computed for buyers only.
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * r_rank)) AS INT) END AS r_score,
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * f_rank)) AS INT) END AS f_score,
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * m_rank)) AS INT) END AS m_score
    FROM windowed
),
scored AS (
    SELECT
        loyalty.*,
        CAST(ROUND(100.0 * (attitude + repeat_patronage) / 2.0) AS INT) AS loyalty_score,
        CASE WHEN model_churn_risk IS NOT NULL THEN model_churn_risk ELSE 1.0 - p_alive END AS churn_risk,
        spend_prior_window > 0 AND spend_recent_window < $spend_falling_ratio * spend_prior_window AS spend_falling,
        CASE
            WHEN NOT is_buyer THEN false
            WHEN purchase_days = 1 THEN recency_days > $recent_window_days
            ELSE recency_days > $long_gap_factor * mean_gap_days
        END AS long_gap
    FROM loyalty
)
SELECT
    s.customer_id,
    CAST($as_of AS DATE) AS as_of,
    s.recency_days,
    s.purchase_days AS frequency,
    COALESCE(s.monetary, 0.0) AS monetary,
    s.r_score,
    s.f_score,
    s.m_score,
    CASE WHEN s.is_buyer THEN s.rfm_segment ELSE 'prospect' END AS rfm_segment,
    s.p_alive,
    s.churn_risk,
    CASE WHEN s.churn_risk IS NULL THEN NULL ELSE COALESCE(s.model_churn_model, 'bgnbd') END AS churn_model,
    CASE
        WHEN s.churn_risk IS NULL THEN NULL
        WHEN s.churn_risk >= $churn_band_high THEN 'high'
        WHEN s.churn_risk >= $churn_band_medium THEN 'medium'
        ELSE 'low'
    END AS churn_band,
    CASE
        WHEN s.model_churn_reasons IS NOT NULL THEN s.model_churn_reasons
        ELSE CONCAT_WS(
            ',',
            CASE WHEN s.long_gap THEN 'long_gap' END,
            CASE WHEN s.open_complaints > 0 THEN 'open_complaint' END,
            CASE WHEN s.csat_responses > 0 AND s.avg_csat < $low_csat THEN 'low_csat' END,
            CASE WHEN s.unsubscribed THEN 'unsubscribed' END,
            CASE WHEN s.spend_falling THEN 'spend_falling' END
        )
    END AS churn_reasons,
    s.expected_purchases_90d,
    s.expected_purchases_365d,
    s.expected_order_value,
    s.historical_value,
    s.current_value,
    s.potential_value,
    s.current_value AS clv,
    CASE
        WHEN NOT s.is_buyer OR s.historical_value <= 0 OR s.value_total <= 0 THEN 'C'
        WHEN s.value_before < $value_tier_a_share * s.value_total THEN 'A'
        WHEN s.value_before < $value_tier_b_share * s.value_total THEN 'B'
        ELSE 'C'
    END AS value_tier,
    CASE
        WHEN s.historical_value > s.hist_split AND s.potential_value > s.pot_split THEN 'invest'
        WHEN s.potential_value > s.pot_split THEN 'cultivate'
        WHEN s.historical_value > s.hist_split THEN 'maintain'
        ELSE 'abandon'
    END AS portfolio_quadrant,
    CASE
        WHEN s.current_value > s.curr_split AND s.potential_value > s.pot_split THEN 'value'
        WHEN s.potential_value > s.pot_split THEN 'potential_value'
        WHEN s.current_value > s.curr_split THEN 'sub_value'
        ELSE 'low_value'
    END AS economic_segment,
    CASE
        WHEN s.cost_to_serve <= s.cost_split AND s.gross_margin > s.margin_split THEN 'loyal'
        WHEN s.gross_margin > s.margin_split THEN 'repeat'
        WHEN s.cost_to_serve <= s.cost_split THEN 'ordinary'
        ELSE 'expected'
    END AS investment_class,
    s.loyalty_score,
    CASE
        WHEN s.repeat_patronage >= $loyalty_repeat_high
            AND s.discounted_orders > $incentive_discount_share * s.orders THEN 'incentive'
        WHEN s.attitude >= $loyalty_attitude_high AND s.repeat_patronage >= $loyalty_repeat_high THEN 'true'
        WHEN s.attitude >= $loyalty_attitude_high THEN 'latent'
        WHEN s.repeat_patronage >= $loyalty_repeat_high THEN 'spurious'
        ELSE 'none'
    END AS loyalty_type,
    CASE
        WHEN s.csat_responses = 0 THEN 'unknown'
        WHEN s.avg_csat >= $satisfied_csat AND s.loyalty_score >= $loyalty_score_high THEN 'apostle'
        WHEN s.avg_csat >= $satisfied_csat THEN 'mercenary'
        WHEN s.loyalty_score >= $loyalty_score_high THEN 'hostage'
        WHEN s.open_complaints > 0 THEN 'terrorist'
        ELSE 'defector'
    END AS satisfaction_loyalty,
    CASE
        WHEN NOT s.is_buyer THEN 'prospect'
        WHEN s.churn_risk > $churned_threshold THEN 'churned'
        WHEN s.purchase_days = 1 AND NOT s.long_gap THEN 'exploration'
        WHEN s.long_gap OR s.spend_falling THEN 'decline'
        WHEN s.spend_recent_window > s.spend_prior_window THEN 'formation'
        ELSE 'stability'
    END AS lifecycle_stage,
    p.model_version
-- The one-row and the 25-row table come first: a join holds its first (left) side in
-- memory and streams the other, so the customers stream through. (With the customers
-- first, the cross join emitted one row per batch, and sorting a million one-row batches
-- took gigabytes.)
FROM (SELECT MIN(model_version) AS model_version FROM model_params) AS p
CROSS JOIN (
    SELECT s.*, seg.rfm_segment
    FROM rfm_segments AS seg
    RIGHT JOIN scored AS s ON seg.r_score = s.r_score AND seg.f_score = s.f_score
) AS s
ORDER BY s.customer_id
