-- customer_scores: every score and segment of each customer as of the as-of day, one row per
-- customer of fct_customer. Definitions in docs/scoring.md; each `$name` is a [scoring] setting.
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
    -- The model outputs and values come from customer_values, the ranks, potential_value and
    -- the two-by-two splits from customer_ranks. Every input is stored in customer order, so
    -- these joins merge them as they stream.
    FROM customer_values AS v
    JOIN fct_customer AS f ON f.customer_id = v.customer_id
    LEFT JOIN churn_predictions AS cp ON cp.customer_id = v.customer_id
    JOIN customer_ranks AS n ON n.customer_id = v.customer_id
),
loyalty AS (
    SELECT
        joined.*,
        -- Attitude and repeat patronage, 0-1 each: see docs/scoring.md, "Loyalty (Dick and Basu)".
        (
            CASE WHEN csat_responses > 0 THEN (avg_csat - 1.0) / 4.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN (COALESCE(open_rate, 0.0) + COALESCE(click_rate, 0.0)) / 2.0 ELSE 0.0 END
            + CASE WHEN referrals_made > 0 THEN 1.0 ELSE 0.0 END
            -- No complaints counts for buyers only: a prospect's silence is no evidence of
            -- attitude, so a prospect is not `latent` loyal for want of complaints.
            + CASE WHEN is_buyer AND complaints = 0 THEN 1.0 ELSE 0.0 END
        ) / (
            CASE WHEN csat_responses > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN marketing_sent > 0 THEN 1.0 ELSE 0.0 END
            + CASE WHEN is_buyer THEN 1.0 ELSE 0.0 END
            + 1.0
        ) AS attitude,
        CASE WHEN is_buyer THEN (f_rank + tenure_rank) / 2.0 ELSE 0.0 END AS repeat_patronage,
        -- RFM scores 1-5, 5 the best: see docs/scoring.md, "RFM". LEAST ignores NULLs, so the
        -- scores are computed for buyers only.
        CASE WHEN is_buyer THEN CAST(1 + LEAST(4, FLOOR(5 * r_rank)) AS INT) END AS r_score,
        -- F ranks repeat buyers among themselves: a plain quintile of frequency left F2 empty on
        -- the fixtures (53% one-time buyers), and whole cells of the R-F map with it.
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
        -- churn_risk, the probability that the buyer has lapsed for good: 1 - p_alive of the
        -- modified BG/NBD, adjusted by the churn model (churn_predictions) where that model beat
        -- the purchase model out of time. p_no_purchase_90d, for campaign timing, comes from the
        -- same model. See docs/scoring.md, "Churn risk, band and reasons".
        COALESCE(model_churn_risk, 1.0 - p_alive) AS churn_risk,
        COALESCE(model_p_no_purchase, p_no_purchase) AS p_no_purchase_90d,
        -- Spend falling and long gap: see docs/scoring.md, "Lifecycle stage".
        spend_prior_window > 0 AND spend_recent_window < $spend_falling_ratio * spend_prior_window AS spend_falling,
        CASE
            WHEN NOT is_buyer THEN false
            WHEN purchase_days = 1 THEN recency_days > $recent_window_days
            ELSE recency_days > $long_gap_factor * mean_gap_days
        END AS long_gap
    FROM loyalty
)
-- Prospects (never ordered) get NULL RFM scores and model columns, values of 0 and the segment
-- `prospect`: see docs/scoring.md, "Buyers and prospects".
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
    -- The churn model's top reasons as `code=value`, else (churn_model mbgnbd) these rule codes;
    -- comma-separated, '' when none. The churn model has return_rate as a feature.
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
    -- ABC Pareto tiers on historical value: see docs/scoring.md, "Customer value and CLV".
    CASE
        WHEN NOT s.is_buyer OR s.historical_value <= 0 OR s.value_total <= 0 THEN 'C'
        WHEN s.value_before < $value_tier_a_share * s.value_total THEN 'A'
        WHEN s.value_before < $value_tier_b_share * s.value_total THEN 'B'
        ELSE 'C'
    END AS value_tier,
    -- "High" is strictly above the split: see docs/scoring.md, "The two-by-two segments".
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
    -- See docs/scoring.md, "Loyalty (Dick and Basu)".
    CASE
        WHEN s.repeat_patronage >= $loyalty_repeat_high
            AND s.discounted_orders > $incentive_discount_share * s.orders THEN 'incentive'
        WHEN s.attitude >= $loyalty_attitude_high AND s.repeat_patronage >= $loyalty_repeat_high THEN 'true'
        WHEN s.attitude >= $loyalty_attitude_high THEN 'latent'
        WHEN s.repeat_patronage >= $loyalty_repeat_high THEN 'spurious'
        ELSE 'none'
    END AS loyalty_type,
    -- See docs/scoring.md, "Satisfaction x loyalty (Jones and Sasser)".
    CASE
        WHEN s.csat_responses = 0 THEN 'unknown'
        WHEN s.avg_csat >= $satisfied_csat AND s.loyalty_score >= $loyalty_score_high THEN 'apostle'
        WHEN s.avg_csat >= $satisfied_csat THEN 'mercenary'
        WHEN s.loyalty_score >= $loyalty_score_high THEN 'hostage'
        WHEN s.open_complaints > 0 THEN 'terrorist'
        ELSE 'defector'
    END AS satisfaction_loyalty,
    -- See docs/scoring.md, "Lifecycle stage".
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
