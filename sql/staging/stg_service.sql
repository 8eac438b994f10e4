-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_service: service tickets, cleaned and seen as of the as-of day. One row per
-- ticket_id (the copy loaded last wins). A ticket closed after the as-of day was still
-- open then, and its CSAT was not known yet.
-- Copies are found by sorting every row by its key, newest copy first, and keeping each
-- row whose predecessor has another key: ROW_NUMBER() OVER (PARTITION BY key ...) = 1 gives
-- the same rows, but DataFusion 55 runs a window about 10x slower when nearly every key is
-- a partition of its own, as here (4.7 s instead of 0.4 s for 1.7M events).
WITH keyed AS (
    SELECT *, TRIM(ticket_id) AS ticket_key
    FROM raw_service
    WHERE opened_at < $as_of_end
),
ordered AS (
    SELECT
        *,
        LAG(ticket_key) OVER (ORDER BY ticket_key, _source_file DESC, _source_line DESC) AS previous_key
    FROM keyed
)
SELECT
    ticket_key AS ticket_id,
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
FROM ordered
WHERE previous_key IS DISTINCT FROM ticket_key
ORDER BY customer_id, ticket_id
