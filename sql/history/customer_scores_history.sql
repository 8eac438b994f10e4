-- @description: Every run's customer_scores, kept: one partition per as-of day.
-- @materialized: incremental
-- @unique_key: as_of, customer_id
-- @partition_by: as_of
-- customer_scores_history: the scores of every as-of day a run has published, so a
-- dashboard can draw churn risk and value over time. Each run merges its customer_scores
-- into the table on (as_of, customer_id): a new as-of day adds a partition, a rerun of the
-- same day replaces that day's rows (never duplicates them), older days stay as they were.
SELECT * FROM customer_scores
