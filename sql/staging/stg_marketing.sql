-- stg_marketing: marketing events as of the as-of day, one copy per event
-- (raw_marketing_current), ids normalised; sorted by customer for `patron explain`.
SELECT
    TRIM(event_id) AS event_id,
    UPPER(TRIM(customer_id)) AS customer_id,
    event_ts,
    campaign,
    channel,
    event_type,
    COALESCE(cost, 0.0) AS cost,
    _source_file,
    _source_line
FROM raw_marketing_current
ORDER BY customer_id, event_id
