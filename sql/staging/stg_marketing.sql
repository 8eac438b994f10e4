-- @cluster_by: customer_id
-- Rows are sorted by customer first (then the key), so a lookup of one customer
-- (`patron explain`) reads only the row groups and pages that hold them.
-- stg_marketing: marketing events, cleaned. One row per event_id (the copy loaded last
-- wins), events up to the as-of day.
-- Copies: extract lists each superseded copy of a key (event_id) in the
-- `duplicates` table. Only the rows of those keys are ranked, newest copy first; the
-- older copies are left out. Every other row passes straight through, so the rows are
-- sorted once (by customer) rather than also by key. The short lists come first in
-- each join: a hash join holds its first side in memory while the other streams past.
WITH keyed AS (
    SELECT *, TRIM(event_id) AS event_key
    FROM raw_marketing
    WHERE event_ts < $as_of_end
),
repeated AS (
    SELECT DISTINCT k.event_key
    FROM duplicates d
    RIGHT SEMI JOIN keyed k
        ON d.source = 'marketing' AND k._source_file = d.file AND k._source_line = d.line
),
older AS (
    SELECT _source_file, _source_line
    FROM (
        SELECT
            _source_file,
            _source_line,
            ROW_NUMBER() OVER (PARTITION BY event_key ORDER BY _source_file DESC, _source_line DESC) AS newness
        FROM repeated r
        RIGHT SEMI JOIN keyed k ON k.event_key IS NOT DISTINCT FROM r.event_key
    )
    WHERE newness > 1
)
SELECT
    event_key AS event_id,
    UPPER(TRIM(customer_id)) AS customer_id,
    event_ts,
    campaign,
    channel,
    event_type,
    COALESCE(cost, 0.0) AS cost,
    _source_file,
    _source_line
FROM older o
RIGHT ANTI JOIN keyed k ON k._source_file = o._source_file AND k._source_line = o._source_line
ORDER BY customer_id, event_id
