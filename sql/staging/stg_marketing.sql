-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_marketing: marketing events, cleaned. One row per event_id (the copy loaded last
-- wins), events up to the as-of day.
WITH ranked AS (
    SELECT
        *,
        ROW_NUMBER() OVER (
            PARTITION BY TRIM(event_id)
            ORDER BY _source_file DESC, _source_line DESC
        ) AS copy_rank
    FROM raw_marketing
    WHERE event_ts < $as_of_end
)
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
FROM ranked
WHERE copy_rank = 1
ORDER BY customer_id, event_id
