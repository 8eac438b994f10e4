//! Test-only helpers shared by the model tests: the location and a std-only
//! reader of the CDNOW calibration summary used throughout Fader, Hardie and
//! Lee (2005), "Counting your customers the easy way" and "RFM and CLV: using
//! iso-value curves".

/// Path of the CDNOW summary (columns `ID,x,t_x,T,zbar`, time in weeks). The
/// only place the location is spelled.
pub const CDNOW_SUMMARY_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/cdnow/cdnow_customers_summary_with_transactions.csv"
);

/// One customer of the CDNOW summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CdnowCustomer {
    /// Repeat purchases in the 39-week calibration period.
    pub x: f64,
    /// Week of the last purchase (recency).
    pub t_x: f64,
    /// Weeks from first purchase to the end of calibration (age).
    pub t_cal: f64,
    /// Mean repeat-transaction value in dollars (0 when x = 0).
    pub zbar: f64,
}

/// Read the CDNOW summary, locating the columns by header name.
pub fn read_cdnow() -> Vec<CdnowCustomer> {
    let text =
        std::fs::read_to_string(CDNOW_SUMMARY_CSV).unwrap_or_else(|e| panic!("cannot read {CDNOW_SUMMARY_CSV}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("CDNOW file is empty")
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("column {name} missing from header {header:?}"))
    };
    let (ix, itx, it, iz) = (col("x"), col("t_x"), col("T"), col("zbar"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let num = |i: usize| -> f64 {
                fields[i]
                    .parse()
                    .unwrap_or_else(|e| panic!("bad number {:?} in {line:?}: {e}", fields[i]))
            };
            CdnowCustomer {
                x: num(ix),
                t_x: num(itx),
                t_cal: num(it),
                zbar: num(iz),
            }
        })
        .collect()
}

#[test]
fn cdnow_file_has_the_published_shape() {
    // FHL 2005: 2,357 customers, 1,411 of whom made no repeat purchase.
    let rows = read_cdnow();
    assert_eq!(rows.len(), 2357);
    assert_eq!(rows.iter().filter(|c| c.x == 0.0).count(), 1411);
}

/// Asserts that `gradient`, the analytic gradient of `f` at `theta` (log-parameters),
/// matches a five-point finite difference in every coordinate: truncation error O(h^4),
/// with h large enough that rounding in the value (whose pieces are far larger than the
/// total at extreme points) stays negligible. `label` names the point in a failure.
pub fn assert_gradient_matches<const N: usize>(
    theta: [f64; N],
    (value, gradient): (f64, [f64; N]),
    f: impl Fn(&[f64; N]) -> f64,
    label: &str,
) {
    let h = 1e-3;
    for i in 0..N {
        let at = |step: f64| {
            let mut t = theta;
            t[i] += step;
            f(&t)
        };
        let fd = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
        assert!(
            (gradient[i] - fd).abs() <= 1e-6 * fd.abs() + 1e-9 * value.abs(),
            "{label}, d/dln[{i}]: analytic {} vs finite difference {fd}",
            gradient[i]
        );
    }
}
