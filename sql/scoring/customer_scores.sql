-- @cluster_by: customer_id
-- customer_scores: one row per customer of fct_customer, as of the as-of day. Every
-- threshold is a `[scoring]` setting of the pipeline file, passed in as `$<setting>`.
-- Customers who never ordered (known only to service or marketing) are `prospect`s: the
-- purchase models do not describe them, so their model columns (p_alive, churn_risk,
-- churn_band, expected purchases, expected order value) are NULL, their values 0.
--
-- 1 RFM: recency = days since the last order, frequency = distinct purchase days,
--   monetary = total revenue (or per purchase day with scoring.monetary = "average").
--   R and M scores 1-5 (5 best; recency reversed) = 1 + floor(5 * percent_rank), capped at
--   5, so customers with the same value always get the same score. F: 1 for one purchase
--   day, else 2 + floor(4 * percent_rank among repeat buyers), capped at 5: a quintile of
--   frequency is empty whenever one-time buyers are more than a fifth of the buyers (53%
--   on the fixtures left F2 empty and whole cells of the R-F map with it). Segment from
--   the R-F map in seeds/rfm_segments.csv.
-- 2 Churn: churn_risk = the probability that the buyer has lapsed for good (will not buy
--   again), for every buyer: 1 - p_alive of the modified BG/NBD (one-time buyers too),
--   adjusted by the churn model's signals where that model beat the purchase model out of
--   time (churn_predictions; churn_model says which); churn_band low/medium/high on it.
--   p_no_purchase_90d = P(no purchase in the next churn_holdout_days) from the same model,
--   for campaign timing; expected purchases in the next 90 and 365 days (BG/NBD).
-- 3 Spend (Gamma-Gamma) and 4 Value: p_alive, expected purchases, expected_order_value,
--   historical_value and current_value (discounted CLV) come from customer_values, the
--   ranks, potential_value and the splits from customer_ranks; their headers give the
--   formulas. potential_value = wallet headroom (potential_quantile of current_value among peers with
--   the same acquisition channel and cohort month, minus own, floored at 0) + referrals made
--   x mean current_value of referred customers; clv = current_value; value_tier ABC Pareto.
-- 5-7 Two-by-two segments split each axis at segment_split_quantile of buyers ("high" is
--   strictly above the split): portfolio (historical x potential), economic (current x
--   potential), investment (marketing + service cost x gross margin).
-- 8 Loyalty (Dick and Basu): attitude 0-1 = mean of the available parts among CSAT
--   ((avg - 1) / 4), engagement ((open rate + click rate) / 2), referrals (1 if any) and no
--   complaints (1 if none; buyers only: a prospect's silence is no evidence of attitude,
--   so a prospect is not "latent" loyal for want of complaints); repeat 0-1 =
--   mean of the percent ranks of frequency and tenure among buyers; loyalty_score =
--   100 x (attitude + repeat) / 2.
-- 9 Satisfaction x loyalty (Jones and Sasser): `unknown` without CSAT.
-- 10 Lifecycle stage, and churn_reasons: the churn model's top contributing features as
--   `code=value` (comma-separated, '' when none); when churn_model is mbgnbd the rule codes
--   long_gap, open_complaint, low_csat, unsubscribed, spend_falling, high_return_rate
--   (return_rate >= high_return_rate; the churn model has return_rate as a feature).
--
-- Every input is stored in customer order, so the joins below merge them as they stream.
WITH joined AS (
    SELECT
        v.*,
        f.orders,
        f.gross_margin,
        f.discounted_orders,
        f.spend_recent_window,
        f.spend_prior_window,
        f.complaints,
        f.open_complaints,
        f.avg_csat,
        f.csat_responses,
        f.marketing_sent,
        f.open_rate,
        f.click_rate,
        f.unsubscribed,
        f.return_rate,
        cp.churn_risk AS model_churn_risk,
        cp.p_no_purchase AS model_p_no_purchase,
        cp.churn_reasons AS model_churn_reasons,
        cp.churn_model AS model_churn_model,
        n.potential_value,
        n.r_rank,
        n.f_rank,
        n.f_repeat_rank,
        n.m_rank,
        n.tenure_rank,
        n.value_before,
        n.value_total,
        n.hist_split,
        n.curr_split,
        n.pot_split,
        n.cost_split,
        n.hist_split AS margin_split,
        n.model_version
    FROM customer_values AS v
    JOIN fct_customer AS f ON f.customer_id = v.customer_id
    LEFT JOIN churn_predictions AS cp ON cp.customer_id = v.customer_id
    JOIN customer_ranks AS n ON n.customer_id = v.customer_id
),
loyalty AS (
    SELECT
        joined.*,
        (
            CASE WHEN csat_responses > 0 THEN (avg_csat - 1.0) / 4.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN (COALESCE(open_rate, 0.0) + COALESCE(click_rate, 0.0)) / 2.0 ELSE 0.0 END
            + CASE WHEN referrals_made > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN is_buyer AND complaints = 0 THEN 1.0 ELSE 0.0 END
        ) / (
            CASE WHEN csat_responses > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN is_buyer THEN 1.0 ELSE 0.0 END
            + 1.0
        ) AS attitude,
        CASE WHEN is_buyer THEN (f_rank + tenure_rank) / 2.0 ELSE 0.0 END AS repeat_patronage,
        -- LEAST ignores NULLs, so the scores are computed for buyers only.
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * r_rank)) AS INT) END AS r_score,
        CASE
            WHEN NOT is_buyer THEN NULL
            WHEN purchase_days = 1 THEN 1
            ELSE CAST(2 + LEAST(3, FLOOR(4 * f_repeat_rank)) AS INT)
        END AS f_score,
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * m_rank)) AS INT) END AS m_score
    FROM joined
),
scored AS (
    SELECT
        loyalty.*,
        CAST(ROUND(100.0 * (attitude + repeat_patronage) / 2.0) AS INT) AS loyalty_score,
        COALESCE(model_churn_risk, 1.0 - p_alive) AS churn_risk,
        COALESCE(model_p_no_purchase, p_no_purchase) AS p_no_purchase_90d,
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
    CASE WHEN s.is_buyer THEN seg.rfm_segment ELSE 'prospect' END AS rfm_segment,
    s.p_alive,
    s.churn_risk,
    CASE WHEN s.p_no_purchase_90d IS NULL THEN NULL ELSE COALESCE(s.model_churn_model, 'mbgnbd') END AS churn_model,
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
            CASE WHEN s.spend_falling THEN 'spend_falling' END,
            CASE WHEN s.return_rate >= $high_return_rate THEN 'high_return_rate' END
        )
    END AS churn_reasons,
    s.p_no_purchase_90d,
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
    s.model_version
-- The 25-row table comes first: a join holds its first (left) side in memory and streams
-- the other, so the customers stream through, in customer order.
FROM rfm_segments AS seg
RIGHT JOIN scored AS s ON seg.r_score = s.r_score AND seg.f_score = s.f_score
ORDER BY s.customer_id
