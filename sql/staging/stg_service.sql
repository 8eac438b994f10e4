-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_service: service tickets, cleaned and seen as of the as-of day. One row per
-- ticket_id (the copy loaded last wins). A ticket closed after the as-of day was still
-- open then, and its CSAT was not known yet.
WITH ranked AS (
    SELECT
        *,
        ROW_NUMBER() OVER (
            PARTITION BY TRIM(ticket_id)
            ORDER BY _source_file DESC, _source_line DESC
        ) AS copy_rank
    FROM raw_service
    WHERE opened_at < $as_of_end
)
SELECT
    TRIM(ticket_id) AS ticket_id,
    UPPER(TRIM(customer_id)) AS customer_id,
    opened_at,
    CASE WHEN closed_at < $as_of_end THEN closed_at END AS closed_at,
    category,
    CASE
        WHEN closed_at < $as_of_end THEN 'closed'
        WHEN status = 'closed' THEN 'open'
        ELSE status
    END AS status,
    CASE WHEN closed_at IS NULL OR closed_at < $as_of_end THEN csat END AS csat,
    COALESCE(handling_cost, 0.0) AS handling_cost,
    _source_file,
    _source_line
FROM ranked
WHERE copy_rank = 1
ORDER BY customer_id, ticket_id
