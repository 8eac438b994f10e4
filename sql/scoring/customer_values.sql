-- customer_values: the purchase models' outputs, the values and the inputs of the ranks, one row
-- per customer of fct_customer; prospects (never ordered) have NULL model columns and value 0.
WITH modelled AS (
    SELECT
        f.customer_id,
        f.orders > 0 AS is_buyer,
        f.acquisition_channel,
        f.cohort_month,
        f.referred_by IS NOT NULL AS referred,
        f.referrals_made,
        f.recency_days,
        f.purchase_days,
        f.tenure_days,
        -- RFM monetary: revenue, or revenue per purchase day with scoring.monetary = "average".
        CASE WHEN $monetary_average THEN f.revenue / NULLIF(f.purchase_days, 0) ELSE f.revenue END AS monetary,
        -- The model functions run here, once per customer; later stages read the stored results
        -- (customer_ranks several times). Prospects have no customer_model_input row, so their
        -- model columns are NULL.
        -- p_alive (modified BG/NBD) is below 1 for one-time buyers too; churn_risk is 1 - p_alive
        -- unless the churn model adjusts it. See docs/scoring.md,
        -- "Activity: the modified BG/NBD"; for expected purchases, "Purchases: BG/NBD".
        mbgnbd_p_alive(m.x, m.t_x, m.t_cal) AS p_alive,
        mbgnbd_p_no_purchase($churn_holdout_days / $time_unit_days, m.x, m.t_x, m.t_cal) AS p_no_purchase,
        bgnbd_expected_purchases(90.0 / $time_unit_days, m.x, m.t_x, m.t_cal) AS expected_purchases_90d,
        bgnbd_expected_purchases(365.0 / $time_unit_days, m.x, m.t_x, m.t_cal) AS expected_purchases_365d,
        -- Gamma-Gamma: see docs/scoring.md, "Spend: Gamma-Gamma". x = 0 gives the population mean
        -- p * gamma / (q - 1), whatever the spend argument. Without a fit (e.g. fewer than 3
        -- repeat buyers) the function falls back as docs/model-fallbacks.md says; where it gives
        -- NULL, the customer's mean spend per purchase day stands in (net of partial returns,
        -- never negative).
        CASE
            WHEN f.orders > 0 THEN COALESCE(
                gg_expected_order_value(m.x, COALESCE(m.mean_repeat_spend, 0.0)),
                (m.first_day_revenue + COALESCE(m.mean_repeat_spend, 0.0) * m.x) / (m.x + 1.0)
            )
        END AS expected_order_value,
        CASE WHEN f.revenue > 0 THEN GREATEST(0.0, f.gross_margin / f.revenue) ELSE $margin_rate END AS margin_share,
        -- Discounted expected purchases over clv_horizon_months; current_value multiplies them
        -- by expected_order_value and margin_share: see docs/scoring.md, "Customer value and CLV".
        bgnbd_discounted_purchases(m.x, m.t_x, m.t_cal, $clv_horizon_months, $clv_monthly_discount) AS discounted_purchases,
        f.gross_margin AS historical_value,
        f.marketing_cost + f.service_cost AS cost_to_serve,
        -- Mean days between purchase days, for repeat buyers.
        CASE WHEN m.x > 0 THEN m.t_x * $time_unit_days / m.x END AS mean_gap_days
    FROM fct_customer AS f
    LEFT JOIN customer_model_input AS m ON m.customer_id = f.customer_id
)
SELECT
    customer_id,
    is_buyer,
    acquisition_channel,
    cohort_month,
    referred,
    referrals_made,
    recency_days,
    purchase_days,
    tenure_days,
    monetary,
    p_alive,
    p_no_purchase,
    expected_purchases_90d,
    expected_purchases_365d,
    expected_order_value,
    margin_share,
    historical_value,
    -- Discounted CLV; 0 for prospects.
    COALESCE(discounted_purchases * expected_order_value * margin_share, 0.0) AS current_value,
    cost_to_serve,
    mean_gap_days
FROM modelled
ORDER BY customer_id
