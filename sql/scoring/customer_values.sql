-- @cluster_by: customer_id
-- customer_values: one row per customer of fct_customer with the purchase models' outputs
-- (value, churn and spend; see docs/scoring.md) and the inputs of the scores that rank a customer
-- among the others. customer_scores reads it once per ranking, so the models run once per
-- customer. Customers who never ordered (prospects) have NULL model columns and value 0.
--   p_alive               modified BG/NBD P(alive): below 1 for one-time buyers too (NULL for
--                         prospects); churn_risk = 1 - p_alive
--   p_no_purchase         modified BG/NBD P(no purchase in the next churn_holdout_days)
--   expected_purchases_90d/365d  BG/NBD (NULL for prospects)
--   expected_order_value  Gamma-Gamma: (gamma + m x) p / (p x + q - 1), the population mean
--                         for one-time buyers; the customer's mean spend per purchase day
--                         (net of partial returns, never negative) when the model could not
--                         be fitted (fewer than 3 repeat buyers)
--   margin_share          the customer's own gross margin share of revenue, floored at 0
--                         (scoring.margin_rate without revenue)
--   historical_value      gross margin to date
--   current_value         discounted CLV over clv_horizon_months: sum_k (E[X(k)] - E[X(k-1)])
--                         x expected_order_value x margin_share / (1 + clv_monthly_discount)^k
--   monetary              RFM monetary: revenue, or per purchase day (scoring.monetary)
--   cost_to_serve         marketing cost + service cost
--   mean_gap_days         mean days between purchase days (repeat buyers)
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
        CASE WHEN $monetary_average THEN f.revenue / NULLIF(f.purchase_days, 0) ELSE f.revenue END AS monetary,
        mbgnbd_p_alive(m.x, m.t_x, m.t_cal) AS p_alive,
        mbgnbd_p_no_purchase($churn_holdout_days / $time_unit_days, m.x, m.t_x, m.t_cal) AS p_no_purchase,
        bgnbd_expected_purchases(90.0 / $time_unit_days, m.x, m.t_x, m.t_cal) AS expected_purchases_90d,
        bgnbd_expected_purchases(365.0 / $time_unit_days, m.x, m.t_x, m.t_cal) AS expected_purchases_365d,
        -- x = 0 gives the population mean p * gamma / (q - 1), whatever the spend argument.
        CASE
            WHEN f.orders > 0 THEN COALESCE(
                gg_expected_order_value(m.x, COALESCE(m.mean_repeat_spend, 0.0)),
                (m.first_day_revenue + COALESCE(m.mean_repeat_spend, 0.0) * m.x) / (m.x + 1.0)
            )
        END AS expected_order_value,
        CASE WHEN f.revenue > 0 THEN GREATEST(0.0, f.gross_margin / f.revenue) ELSE $margin_rate END AS margin_share,
        bgnbd_discounted_purchases(m.x, m.t_x, m.t_cal, $clv_horizon_months, $clv_monthly_discount) AS discounted_purchases,
        f.gross_margin AS historical_value,
        f.marketing_cost + f.service_cost AS cost_to_serve,
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
    COALESCE(discounted_purchases * expected_order_value * margin_share, 0.0) AS current_value,
    cost_to_serve,
    mean_gap_days
FROM modelled
ORDER BY customer_id
