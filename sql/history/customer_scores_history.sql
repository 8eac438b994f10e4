-- customer_scores_history: every published as-of day's customer_scores, one row per (as_of,
-- customer_id). A rerun replaces its own day's rows; older days keep theirs, NULL in new columns.
SELECT * FROM customer_scores
