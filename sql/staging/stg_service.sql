-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_service: service tickets, cleaned and seen as of the as-of day. One row per
-- ticket_id (the copy loaded last wins). A ticket closed after the as-of day was still
-- open then, and its CSAT was not known yet.
-- Copies: extract lists each superseded copy of a key (ticket_id) in the
-- `duplicates` table. Only the rows of those keys are ranked, newest copy first; the
-- older copies are left out. Every other row passes straight through, so the rows are
-- sorted once (by customer) rather than also by key. The short lists come first in
-- each join: a hash join holds its first side in memory while the other streams past.
WITH keyed AS (
    SELECT *, TRIM(ticket_id) AS ticket_key
    FROM raw_service
    WHERE opened_at < $as_of_end
),
repeated AS (
    SELECT DISTINCT k.ticket_key
    FROM duplicates d
    RIGHT SEMI JOIN keyed k
        ON d.source = 'service' AND k._source_file = d.file AND k._source_line = d.line
),
older AS (
    SELECT _source_file, _source_line
    FROM (
        SELECT
            _source_file,
            _source_line,
            ROW_NUMBER() OVER (PARTITION BY ticket_key ORDER BY _source_file DESC, _source_line DESC) AS newness
        FROM repeated r
        RIGHT SEMI JOIN keyed k ON k.ticket_key IS NOT DISTINCT FROM r.ticket_key
    )
    WHERE newness > 1
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
FROM older o
RIGHT ANTI JOIN keyed k ON k._source_file = o._source_file AND k._source_line = o._source_line
ORDER BY customer_id, ticket_id
