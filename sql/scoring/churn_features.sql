-- churn_features: the inputs of the churn early-warning model as of the as-of day, one row per
-- buyer; the column names are the model's reason codes (docs/scoring.md, "Churn early warning").
WITH service AS (
    -- "Recent" is the last scoring.recent_window_days days (90 by default), "prior" the window
    -- before it.
    SELECT
        customer_id,
        SUM(CASE WHEN opened_at >= $recent_start THEN 1 ELSE 0 END) AS tickets_recent,
        SUM(CASE WHEN opened_at >= $recent_start AND category = 'complaint' THEN 1 ELSE 0 END) AS complaints_recent,
        AVG(CASE WHEN opened_at >= $recent_start THEN CAST(csat AS DOUBLE) END) AS csat_recent,
        AVG(CASE WHEN opened_at < $recent_start THEN CAST(csat AS DOUBLE) END) AS csat_before,
        MAX(opened_at) AS last_ticket_at
    FROM stg_service
    GROUP BY customer_id
),
marketing AS (
    SELECT
        customer_id,
        SUM(CASE WHEN event_type = 'sent' AND event_ts >= $recent_start THEN 1 ELSE 0 END) AS sent_recent,
        SUM(CASE WHEN event_type = 'open' AND event_ts >= $recent_start THEN 1 ELSE 0 END) AS opens_recent,
        SUM(CASE WHEN event_type = 'click' AND event_ts >= $recent_start THEN 1 ELSE 0 END) AS clicks_recent,
        SUM(CASE WHEN event_type = 'sent' AND event_ts >= $prior_start AND event_ts < $recent_start THEN 1 ELSE 0 END)
            AS sent_prior,
        SUM(CASE WHEN event_type = 'open' AND event_ts >= $prior_start AND event_ts < $recent_start THEN 1 ELSE 0 END)
            AS opens_prior,
        SUM(CASE WHEN event_type = 'click' AND event_ts >= $prior_start AND event_ts < $recent_start THEN 1 ELSE 0 END)
            AS clicks_prior,
        MAX(CASE WHEN event_type IN ('open', 'click', 'conversion') THEN event_ts END) AS last_engaged_at
    FROM stg_marketing
    GROUP BY customer_id
),
rates AS (
    SELECT
        customer_id,
        COALESCE(CAST(opens_recent AS DOUBLE) / NULLIF(sent_recent, 0), 0.0) AS open_rate_recent,
        COALESCE(CAST(opens_prior AS DOUBLE) / NULLIF(sent_prior, 0), 0.0) AS open_rate_prior,
        COALESCE(CAST(clicks_recent AS DOUBLE) / NULLIF(sent_recent, 0), 0.0) AS click_rate_recent,
        COALESCE(CAST(clicks_prior AS DOUBLE) / NULLIF(sent_prior, 0), 0.0) AS click_rate_prior,
        last_engaged_at
    FROM marketing
)
-- patron also runs this query as of earlier cut-offs (the whole stage chain re-run with $as_of
-- moved back by scoring.churn_holdout_days), so the model is trained on exactly the features
-- it scores with.
SELECT
    f.customer_id,
    -- p_alive and p_no_purchase come from the modified BG/NBD, fitted as of the same day.
    -- p_no_purchase, P(no purchase in the next churn_holdout_days), is the purchase model's own
    -- answer to the label: the fair baseline.
    COALESCE(mbgnbd_p_alive(m.x, m.t_x, m.t_cal), 1.0) AS p_alive,
    COALESCE(mbgnbd_p_no_purchase($churn_holdout_days / $time_unit_days, m.x, m.t_x, m.t_cal), 1.0) AS p_no_purchase,
    LN(0.01 + COALESCE(bgnbd_expected_purchases($churn_holdout_days / $time_unit_days, m.x, m.t_x, m.t_cal), 0.0))
        AS log_expected_purchases,
    CAST(f.recency_days AS DOUBLE) AS recency_days,
    -- Recency over the customer's own mean days between purchase days; over
    -- recent_window_days for one-time buyers.
    CASE
        WHEN m.x > 0 THEN f.recency_days / GREATEST(m.t_x * $time_unit_days / m.x, 1.0)
        ELSE f.recency_days / $recent_window_days
    END AS gap_vs_rhythm,
    CAST(f.purchase_days AS DOUBLE) AS frequency,
    CASE WHEN m.x > 0 THEN 1.0 ELSE 0.0 END AS repeat_buyer,
    -- Between -1 and 1; 0 without spend.
    COALESCE(
        (f.spend_recent_window - f.spend_prior_window) / NULLIF(f.spend_recent_window + f.spend_prior_window, 0.0),
        0.0
    ) AS spend_trend,
    -- Revenue returned or refunded over revenue sold; 0 without sales.
    COALESCE(f.return_rate, 0.0) AS return_rate,
    CAST(COALESCE(v.tickets_recent, 0) AS DOUBLE) AS tickets_recent,
    CAST(COALESCE(v.complaints_recent, 0) AS DOUBLE) AS complaints_recent,
    CAST(f.open_complaints AS DOUBLE) AS open_complaints,
    COALESCE(f.avg_csat, $satisfied_csat) AS avg_csat,
    -- Mean CSAT of recent tickets minus that of earlier ones; 0 if either is missing.
    COALESCE(v.csat_recent - v.csat_before, 0.0) AS csat_drop,
    COALESCE(r.open_rate_recent, 0.0) AS open_rate_recent,
    COALESCE(r.open_rate_recent - r.open_rate_prior, 0.0) AS open_trend,
    COALESCE(r.click_rate_recent - r.click_rate_prior, 0.0) AS click_trend,
    CASE WHEN f.unsubscribed THEN 1.0 ELSE 0.0 END AS unsubscribed,
    -- Days since the last order, ticket, open, click or conversion.
    CAST(
        CAST(CAST($as_of AS DATE) AS INT)
        - CAST(CAST(GREATEST(f.last_order_at, v.last_ticket_at, r.last_engaged_at) AS DATE) AS INT)
        AS DOUBLE
    ) AS days_since_touch,
    CAST(f.tenure_days AS DOUBLE) AS tenure_days,
    -- Acquisition channel, one-hot encoded by the model.
    COALESCE(f.acquisition_channel, 'unknown') AS channel
FROM fct_customer AS f
JOIN customer_model_input AS m ON m.customer_id = f.customer_id
LEFT JOIN service AS v ON v.customer_id = f.customer_id
LEFT JOIN rates AS r ON r.customer_id = f.customer_id
WHERE f.orders > 0
ORDER BY f.customer_id
