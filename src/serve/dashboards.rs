//! The dashboard queries patron supports: plain SQL over the published tables that BI
//! tools send through `patron serve` (and `patron query` runs). docs/guide.md lists them
//! verbatim (a test keeps the two the same) and the serve tests run every one through
//! real PostgreSQL clients.

/// One dashboard query.
#[derive(Debug, Clone, Copy)]
pub struct Dashboard {
    /// Short name, used in docs/guide.md and the tests.
    pub name: &'static str,
    /// What the panel shows.
    pub title: &'static str,
    /// The query, on the tables the latest succeeded run published.
    pub sql: &'static str,
}

/// Every dashboard query, in the order of docs/guide.md.
pub const DASHBOARDS: [Dashboard; 6] = [
    Dashboard {
        name: "churn_risk_by_segment",
        title: "Churn risk by RFM segment",
        sql: "SELECT rfm_segment, COUNT(*) AS customers, AVG(churn_risk) AS avg_churn_risk, \
              SUM(CASE WHEN churn_band = 'high' THEN 1 ELSE 0 END) AS high_risk \
              FROM customer_scores GROUP BY rfm_segment ORDER BY avg_churn_risk DESC NULLS LAST, rfm_segment",
    },
    Dashboard {
        name: "clv_distribution",
        title: "CLV distribution in buckets",
        sql: "SELECT CASE WHEN clv <= 0 THEN '0' WHEN clv < 50 THEN '0-50' WHEN clv < 100 THEN '50-100' \
              WHEN clv < 250 THEN '100-250' WHEN clv < 500 THEN '250-500' WHEN clv < 1000 THEN '500-1000' \
              ELSE '1000+' END AS clv_bucket, MIN(clv) AS lowest_clv, COUNT(*) AS customers, SUM(clv) AS total_clv \
              FROM customer_scores GROUP BY 1 ORDER BY lowest_clv",
    },
    Dashboard {
        name: "value_tiers",
        title: "Value tier counts",
        sql: "SELECT value_tier, COUNT(*) AS customers, SUM(historical_value) AS historical_value, SUM(clv) AS clv \
              FROM customer_scores GROUP BY value_tier ORDER BY value_tier",
    },
    Dashboard {
        name: "top_customers",
        title: "Top 100 customers by CLV with their churn reasons",
        sql: "SELECT customer_id, clv, churn_risk, churn_band, churn_reasons \
              FROM customer_scores ORDER BY clv DESC, customer_id LIMIT 100",
    },
    Dashboard {
        name: "churn_risk_trend",
        title: "Churn risk trend over the last 12 as-of days",
        sql: "SELECT as_of, COUNT(*) AS customers, AVG(churn_risk) AS avg_churn_risk, \
              SUM(CASE WHEN churn_band = 'high' THEN 1 ELSE 0 END) AS high_risk \
              FROM customer_scores_history GROUP BY as_of ORDER BY as_of DESC LIMIT 12",
    },
    Dashboard {
        name: "segment_migration_matrix",
        title: "RFM segment migration matrix since the previous as-of day",
        sql: "SELECT from_segment, to_segment, movement, customers, clv \
              FROM segment_migration WHERE segmentation = 'rfm_segment' \
              ORDER BY from_segment NULLS FIRST, to_segment NULLS LAST",
    },
];

/// The dashboard query called `name`.
pub fn dashboard(name: &str) -> Option<&'static Dashboard> {
    DASHBOARDS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_dashboard_query_verbatim() {
        let readme = include_str!("../../docs/guide.md");
        for d in DASHBOARDS {
            assert!(
                readme.contains(d.sql),
                "docs/guide.md lacks the `{}` query:\n{}",
                d.name,
                d.sql
            );
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        for d in DASHBOARDS {
            assert_eq!(dashboard(d.name).map(|f| f.sql), Some(d.sql));
        }
        assert!(dashboard("nope").is_none());
    }
}
