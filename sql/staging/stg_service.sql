-- stg_service: tickets as of the as-of day, one copy per ticket (raw_service_current): a
-- ticket closed after that day was still open then, its CSAT not known yet.
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
FROM raw_service_current
ORDER BY customer_id, ticket_id
