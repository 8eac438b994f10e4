//! The customer simulation behind [`super::generate`]: one customer at a time, one RNG stream.
//!
//! For each customer id in order of acquisition the simulator draws the customer's type
//! (buyer, prospect, service-only) and latent traits, simulates purchases (BG/NBD), order
//! values (Gamma-Gamma), tickets and marketing events, and streams the rows to the sinks.
//! Mess decisions are drawn for every row whatever `messy` says, so the random stream (and
//! so the simulated data) is the same for clean and messy runs and for every format.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Months, NaiveDateTime, Timelike};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma, StandardNormal};

use super::sink::{MARKETING_COLUMNS, Row, SALES_COLUMNS, SERVICE_COLUMNS, Sink, TRUTH_COLUMNS};
use super::{GenerateError, GenerateOptions, GenerateReport, MESS, OutputFormat, SourceReport};

const WEEK_SECS: f64 = 604_800.0;
const HOUR: f64 = 1.0 / 168.0;
const DAY: f64 = 1.0 / 7.0;
/// Size of the uniform reservoir of earlier buyers that referrers are drawn from.
const RESERVOIR: usize = 1024;
/// Campaign emails go out every this many weeks (a quarterly newsletter keeps the bundled
/// fixtures small).
const CAMPAIGN_EVERY: f64 = 13.0;
/// Tickets opened within this many weeks of the window end are still open or pending.
const OPEN_TAIL_WEEKS: f64 = 3.0;

const CHANNELS: [&str; 4] = ["web", "store", "phone", "marketplace"];
const CHANNEL_WEIGHTS: [f64; 4] = [0.5, 0.2, 0.1, 0.2];
const CATEGORIES: [&str; 8] = [
    "books",
    "music",
    "electronics",
    "home",
    "garden",
    "toys",
    "fashion",
    "beauty",
];
const LINES_WEIGHTS: [f64; 4] = [0.4, 0.3, 0.2, 0.1];
const QTY_WEIGHTS: [f64; 3] = [0.65, 0.25, 0.10];
const TICKET_CATEGORIES: [&str; 5] = ["question", "delivery", "billing", "technical", "return"];
const TICKET_WEIGHTS: [f64; 5] = [0.3, 0.25, 0.15, 0.15, 0.15];
/// Mixed into the seed for the returns stream.
const RETURNS_STREAM: u64 = 0x5245_5455_524e_5321;
/// A return or refund is booked this many days after the purchase, plus up to
/// [`RETURN_SPREAD_DAYS`].
const RETURN_AFTER_DAYS: f64 = 3.0;
const RETURN_SPREAD_DAYS: f64 = 25.0;
/// A line of the generated sales export: category, quantity, unit price and unit cost (cents).
type Line = (&'static str, i64, i64, Option<i64>);
/// UTC offsets (seconds) used for offset timestamps.
const OFFSETS: [i32; 4] = [3600, 7200, -18000, 19800];

/// The simulation window, as written into `truth.json`.
pub(crate) struct Window {
    /// Start, ISO 8601 UTC.
    pub start: String,
    /// End (exclusive), ISO 8601 UTC.
    pub end: String,
    /// Length in weeks.
    pub weeks: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TsForm {
    Zulu,
    Naive,
    Offset(i32),
}

/// Mess decisions of one valid row (always drawn, applied only when messy).
#[derive(Debug, Clone, Copy)]
struct RowMess {
    dup: bool,
    id_variant: u8,
    empty_as_string: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BadKind {
    Timestamp,
    QuantityText,
    NegativePrice,
    Ragged,
    CsatOutOfRange,
    UnknownCategory,
    NotJson,
    UnknownEventType,
}

const SALES_BAD: [BadKind; 4] = [
    BadKind::Timestamp,
    BadKind::QuantityText,
    BadKind::Ragged,
    BadKind::NegativePrice,
];
const SERVICE_BAD: [BadKind; 4] = [
    BadKind::Timestamp,
    BadKind::CsatOutOfRange,
    BadKind::UnknownCategory,
    BadKind::Ragged,
];
const MARKETING_BAD: [BadKind; 4] = [
    BadKind::Timestamp,
    BadKind::NotJson,
    BadKind::UnknownEventType,
    BadKind::Ragged,
];

/// Where a source's required timestamp, ragged (dropped) column live.
struct BadLayout {
    ts: usize,
    dropped: usize,
}

const SALES_LAYOUT: BadLayout = BadLayout { ts: 3, dropped: 1 };
const SERVICE_LAYOUT: BadLayout = BadLayout { ts: 2, dropped: 4 };
const MARKETING_LAYOUT: BadLayout = BadLayout { ts: 2, dropped: 5 };

/// A purchase just written, for the returns stream to act on.
struct Purchase<'a> {
    customer: &'a str,
    order_id: &'a str,
    t: f64,
    channel: &'a str,
    lines: &'a [Line],
    /// The line carrying the order's discount, if any.
    discounted_line: Option<usize>,
}

/// The calendar year (UTC) of a Unix time: sales files hold one year each.
fn year_of(secs: i64) -> i32 {
    DateTime::from_timestamp(secs, 0).map_or(0, |d| d.year())
}

/// One marketing event of a customer before ids and mess are assigned.
struct Event {
    t: f64,
    customer: u64,
    campaign: String,
    channel: &'static str,
    etype: &'static str,
    cost: &'static str,
}

/// One ticket before ids and mess are assigned.
struct Ticket {
    opened: f64,
    closed: Option<f64>,
    category: &'static str,
    status: &'static str,
    csat: Option<u8>,
    handling_cents: Option<i64>,
}

struct Sim<'a> {
    opts: &'a GenerateOptions,
    rng: ChaCha8Rng,
    /// Returns, refunds and cancellations draw from their own stream, so every other row
    /// is the same as in a world without them.
    returns_rng: ChaCha8Rng,
    messy: bool,
    start_epoch: i64,
    weeks: f64,
    sales_ext: &'static str,
    sales: BTreeMap<i32, Sink>,
    service: Sink,
    marketing: Sink,
    /// `truth_customers.csv`: one row per buyer.
    truth: Sink,
    next_order: u64,
    next_ticket: u64,
    next_event: u64,
    reservoir: Vec<u64>,
    buyers_seen: u64,
    campaigns: Vec<(f64, String)>,
    lambda_dist: Gamma<f64>,
    p_dist: Beta<f64>,
    nu_dist: Gamma<f64>,
    engagement_dist: Beta<f64>,
    report: GenerateReport,
}

fn invalid(m: String) -> GenerateError {
    GenerateError::InvalidOptions(m)
}

/// Runs the whole simulation and closes every file.
pub(crate) fn run(opts: &GenerateOptions) -> Result<(GenerateReport, Window), GenerateError> {
    let start_dt = opts
        .start
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| invalid("bad start date".into()))?;
    let end_date = opts
        .start
        .checked_add_months(Months::new(12 * opts.years))
        .filter(|d| d.year() <= 9000 && opts.start.year() >= 1)
        .ok_or_else(|| invalid(format!("window from {} is out of range", opts.start)))?;
    let end_dt = end_date
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| invalid("bad end date".into()))?;
    let start_epoch = start_dt.and_utc().timestamp();
    let weeks = (end_dt - start_dt).num_seconds() as f64 / WEEK_SECS;
    let window = Window {
        start: fmt_ts(start_epoch, TsForm::Zulu),
        end: fmt_ts(end_dt.and_utc().timestamp(), TsForm::Zulu),
        weeks,
    };

    let t = &opts.truth;
    let dist_err = |what: &str| invalid(format!("cannot build the {what} distribution"));
    let lambda_dist = Gamma::new(t.r, 1.0 / t.alpha).map_err(|_| dist_err("lambda"))?;
    let p_dist = Beta::new(t.a, t.b).map_err(|_| dist_err("dropout"))?;
    let nu_dist = Gamma::new(t.q, 1.0 / t.gamma).map_err(|_| dist_err("nu"))?;
    let engagement_dist = Beta::new(2.0, 4.0).map_err(|_| dist_err("engagement"))?;

    let (sales_ext, marketing_ext) = match opts.format {
        OutputFormat::Csv => ("csv", "ndjson"),
        OutputFormat::Ndjson => ("ndjson", "ndjson"),
        OutputFormat::Parquet => ("parquet", "parquet"),
    };
    let marketing_format = if opts.format == OutputFormat::Parquet {
        OutputFormat::Parquet
    } else {
        OutputFormat::Ndjson
    };
    let service = Sink::create(
        &opts.out_dir,
        &format!("service/tickets.{sales_ext}"),
        SERVICE_COLUMNS,
        opts.format,
    )?;
    let marketing = Sink::create(
        &opts.out_dir,
        &format!("marketing/events.{marketing_ext}"),
        MARKETING_COLUMNS,
        marketing_format,
    )?;

    let truth = Sink::create(
        &opts.out_dir,
        super::TRUTH_CUSTOMERS_FILE,
        TRUTH_COLUMNS,
        OutputFormat::Csv,
    )?;

    let mut campaigns = Vec::new();
    let mut k = 0u32;
    loop {
        let nominal = CAMPAIGN_EVERY * f64::from(k) + 1.0 + 9.0 * HOUR;
        if nominal >= weeks {
            break;
        }
        let secs = start_epoch + (nominal * WEEK_SECS).floor() as i64;
        let date = DateTime::from_timestamp(secs, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        campaigns.push((nominal, format!("nl-{date}")));
        k += 1;
    }

    let mut sim = Sim {
        opts,
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
        returns_rng: ChaCha8Rng::seed_from_u64(opts.seed ^ RETURNS_STREAM),
        messy: opts.messy,
        start_epoch,
        weeks,
        sales_ext,
        sales: BTreeMap::new(),
        service,
        marketing,
        truth,
        next_order: 1,
        next_ticket: 1,
        next_event: 1,
        reservoir: Vec::with_capacity(RESERVOIR),
        buyers_seen: 0,
        campaigns,
        lambda_dist,
        p_dist,
        nu_dist,
        engagement_dist,
        report: GenerateReport {
            customers: opts.customers,
            ..GenerateReport::default()
        },
    };
    for i in 0..opts.customers {
        sim.customer(i)?;
        if (i + 1) % 1_000_000 == 0 {
            tracing::debug!(customers = i + 1, "generator progress");
        }
    }
    sim.finish().map(|r| (r, window))
}

/// Canonical customer id of customer index `i` (0-based).
fn customer_id(i: u64) -> String {
    format!("C{:07}", i + 1)
}

/// Formats an amount in cents as `units.cc`.
fn fmt_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn to_cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

/// Formats epoch seconds in one of the three accepted timestamp forms.
fn fmt_ts(secs: i64, form: TsForm) -> String {
    let shift = match form {
        TsForm::Offset(o) => i64::from(o),
        _ => 0,
    };
    let dt: NaiveDateTime = DateTime::from_timestamp(secs + shift, 0)
        .map(|d| d.naive_utc())
        .unwrap_or_default();
    let (d, t) = (dt.date(), dt.time());
    let (sep, suffix) = match form {
        TsForm::Zulu => ('T', String::from("Z")),
        TsForm::Naive => (' ', String::new()),
        TsForm::Offset(o) => {
            let sign = if o < 0 { '-' } else { '+' };
            let a = o.unsigned_abs();
            ('T', format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60))
        }
    };
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}{suffix}",
        d.year(),
        d.month(),
        d.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A customer id as one messy export would spell it.
fn id_variant(id: &str, variant: u8) -> String {
    match variant {
        1 => id.to_ascii_lowercase(),
        2 => format!(" {id}"),
        3 => format!("{id} "),
        4 => format!("{} ", id.to_ascii_lowercase()),
        5 => format!(" {} ", id.to_ascii_lowercase()),
        _ => id.to_string(),
    }
}

fn pick(u: f64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w / total;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

/// Writes a valid row (and its duplicate when drawn) and counts it.
fn emit(sink: &mut Sink, rep: &mut SourceReport, row: &Row, mess: RowMess, messy: bool) -> Result<(), GenerateError> {
    sink.write_row(row)?;
    rep.valid_rows += 1;
    if messy && mess.dup {
        sink.write_row(row)?;
        rep.duplicate_rows += 1;
    }
    Ok(())
}

/// Turns a valid row into a bad one of the given kind, writes it and counts it.
fn emit_bad(
    sink: &mut Sink,
    rep: &mut SourceReport,
    mut row: Row,
    kind: BadKind,
    layout: &BadLayout,
) -> Result<(), GenerateError> {
    row.empty_as_string = false;
    let ragged_name = |s: &Sink| {
        if s.is_csv() {
            "ragged_row"
        } else {
            "missing_required_field"
        }
    };
    let name = match kind {
        BadKind::Timestamp => {
            row.vals[layout.ts] = "not-a-date".into();
            "bad_timestamp"
        }
        BadKind::QuantityText => {
            row.vals[6] = "three".into();
            "quantity_not_integer"
        }
        BadKind::NegativePrice => {
            row.vals[7] = "-2.00".into();
            "negative_price"
        }
        BadKind::CsatOutOfRange => {
            row.vals[6] = "9".into();
            "csat_out_of_range"
        }
        BadKind::UnknownCategory => {
            row.vals[4] = "praise".into();
            "unknown_category"
        }
        BadKind::UnknownEventType => {
            row.vals[5] = "bounce".into();
            "unknown_event_type"
        }
        BadKind::Ragged => {
            row.absent = Some(layout.dropped);
            ragged_name(sink)
        }
        BadKind::NotJson => {
            if sink.is_ndjson() {
                let mut line = String::new();
                Sink::render_json(MARKETING_COLUMNS, &row, &mut line);
                // Cut inside the customer id value: never valid JSON (no closing brace).
                let cut = line.find("\"customer_id\"").map_or(line.len() / 2, |p| p + 19);
                line.truncate(cut.min(line.len() - 1));
                sink.write_raw_line(&line)?;
                rep.bad_rows += 1;
                *rep.bad_by_kind.entry("not_json".into()).or_insert(0) += 1;
                return Ok(());
            }
            row.absent = Some(layout.dropped);
            ragged_name(sink)
        }
    };
    sink.write_row(&row)?;
    rep.bad_rows += 1;
    *rep.bad_by_kind.entry(name.into()).or_insert(0) += 1;
    Ok(())
}

impl Sim<'_> {
    fn u(&mut self) -> f64 {
        self.rng.r#gen::<f64>()
    }

    /// Exponential with mean 1.
    fn exp1(&mut self) -> f64 {
        -(1.0 - self.u()).ln()
    }

    fn row_mess(&mut self) -> RowMess {
        let (u_dup, u_id, u_empty) = (self.u(), self.u(), self.u());
        let id_variant = if u_id < MESS.id_variant {
            1 + ((u_id / MESS.id_variant) * 5.0).min(4.0) as u8
        } else {
            0
        };
        RowMess {
            dup: u_dup < MESS.duplicate,
            id_variant,
            empty_as_string: u_empty < MESS.empty_string_null,
        }
    }

    /// Draws a timestamp form; the canonical form when not messy.
    fn ts_form(&mut self) -> TsForm {
        let u = self.u();
        if !self.messy {
            return TsForm::Zulu;
        }
        if u < MESS.naive_timestamp {
            TsForm::Naive
        } else if u < MESS.naive_timestamp + MESS.offset_timestamp {
            let x = (u - MESS.naive_timestamp) / MESS.offset_timestamp;
            TsForm::Offset(OFFSETS[((x * 4.0) as usize).min(3)])
        } else {
            TsForm::Zulu
        }
    }

    /// Draws whether a bad row follows, and which kind (drawn in clean runs too: callers
    /// reserve the bad row's id either way and write it only when messy).
    fn bad_draw(&mut self, rate: f64, kinds: &[BadKind; 4]) -> Option<BadKind> {
        let (u, v) = (self.u(), self.u());
        (u < rate).then(|| kinds[((v * 4.0) as usize).min(3)])
    }

    fn secs(&self, t: f64) -> i64 {
        self.start_epoch + (t * WEEK_SECS).floor() as i64
    }

    fn ts(&self, t: f64, form: TsForm) -> String {
        fmt_ts(self.secs(t), form)
    }

    fn id_for_row(&self, id: &str, mess: RowMess) -> String {
        if self.messy {
            id_variant(id, mess.id_variant)
        } else {
            id.to_string()
        }
    }

    fn count_row(rep: &mut SourceReport, messy: bool, mess: RowMess, form: TsForm) {
        if messy && mess.id_variant != 0 {
            rep.id_variants += 1;
        }
        match form {
            TsForm::Naive => rep.naive_timestamps += 1,
            TsForm::Offset(_) => rep.offset_timestamps += 1,
            TsForm::Zulu => {}
        }
    }

    fn customer(&mut self, i: u64) -> Result<(), GenerateError> {
        let n = self.opts.customers as f64;
        let t0 = (i as f64 + self.u()) / n * self.weeks;
        let t0 = t0.min(self.weeks * (1.0 - 1e-12));
        let u_type = self.u();
        let truth = &self.opts.truth;
        if u_type < truth.prospect_share {
            self.report.prospects += 1;
            self.prospect(i, t0)
        } else if u_type < truth.prospect_share + truth.service_only_share {
            self.report.service_only += 1;
            self.service_only(i, t0)
        } else {
            self.report.buyers += 1;
            self.buyer(i, t0)
        }
    }

    fn prospect(&mut self, i: u64, t0: f64) -> Result<(), GenerateError> {
        let engagement = self.engagement_dist.sample(&mut self.rng);
        let mut events = vec![Event {
            t: t0,
            customer: i,
            campaign: "welcome".into(),
            channel: "email",
            etype: "sent",
            cost: "0.02",
        }];
        self.campaign_events(i, t0, None, engagement * 0.5, 0.01, &mut events);
        self.write_events(events)
    }

    fn service_only(&mut self, i: u64, t0: f64) -> Result<(), GenerateError> {
        let unhappiness = self.u();
        let mut tickets = vec![self.ticket(t0, unhappiness)];
        if self.u() < 0.3 {
            let t = t0 + self.exp1() * 4.0;
            if t < self.weeks {
                tickets.push(self.ticket(t, unhappiness));
            }
        }
        self.write_tickets(i, tickets)
    }

    fn buyer(&mut self, i: u64, t0: f64) -> Result<(), GenerateError> {
        let lambda = self.lambda_dist.sample(&mut self.rng);
        let p_drop = self.p_dist.sample(&mut self.rng);
        let nu = self.nu_dist.sample(&mut self.rng).max(1e-12);
        let spend = Gamma::new(self.opts.truth.p, 1.0 / nu)
            .map_err(|_| invalid("cannot build the spend distribution".into()))?;
        let u = self.u();
        let channel_pref = pick(u, &CHANNEL_WEIGHTS);
        let (u_fav, u_cat) = (self.u(), self.u());
        let fav_category = (u_fav < 0.5).then_some(((u_cat * 8.0) as usize).min(7));
        let engagement = self.engagement_dist.sample(&mut self.rng);
        let unhappiness = p_drop.sqrt();

        // Referral: a uniformly drawn earlier buyer (reservoir sample), then join the reservoir.
        let referrer = if self.u() < self.opts.truth.referral_share && !self.reservoir.is_empty() {
            let k = self.rng.gen_range(0..self.reservoir.len());
            Some(self.reservoir[k])
        } else {
            None
        };
        self.buyers_seen += 1;
        if self.reservoir.len() < RESERVOIR {
            self.reservoir.push(i);
        } else {
            let k = self.rng.gen_range(0..self.buyers_seen);
            if (k as usize) < RESERVOIR {
                self.reservoir[k as usize] = i;
            }
        }
        if referrer.is_some() {
            self.report.referred_customers += 1;
        }

        // Modified BG/NBD purchases (Batislam et al. 2007): first at acquisition, repeats
        // Poisson(lambda), dropout with probability p after every purchase, the first
        // included: a one-time buyer may be gone, as in real shops.
        let mut times = vec![t0];
        let mut dropout = (self.u() < p_drop).then_some(t0);
        let mut t = t0;
        while dropout.is_none() {
            t += self.exp1() / lambda;
            if t.is_nan() || t >= self.weeks {
                break;
            }
            times.push(t);
            if self.u() < p_drop {
                dropout = Some(t);
                break;
            }
        }

        let referred_by = referrer.map(customer_id).unwrap_or_default();
        let id = customer_id(i);
        let truth = Row {
            vals: vec![
                id.clone(),
                self.ts(t0, TsForm::Zulu),
                format!("{lambda:.9}"),
                format!("{p_drop:.9}"),
                times.len().to_string(),
                dropout.is_some().to_string(),
                dropout.map(|d| self.ts(d, TsForm::Zulu)).unwrap_or_default(),
            ],
            absent: None,
            empty_as_string: false,
        };
        self.truth.write_row(&truth)?;
        for (k, &tp) in times.iter().enumerate() {
            let refd = if k == 0 { referred_by.as_str() } else { "" };
            self.order(&id, tp, &spend, channel_pref, fav_category, refd)?;
        }

        // Tickets around purchases.
        let mut tickets = Vec::new();
        for &tp in &times {
            if self.u() < 0.15 + 0.35 * unhappiness {
                let opened = tp + self.exp1() * 0.5;
                if opened < self.weeks {
                    tickets.push(self.ticket(opened, unhappiness));
                }
            }
        }
        self.write_tickets(i, tickets)?;

        // Marketing: welcome, campaigns, conversions, referral credit for the referrer.
        let mut events = Vec::new();
        let welcome = t0 + self.u() * HOUR;
        if welcome < self.weeks {
            events.push(Event {
                t: welcome,
                customer: i,
                campaign: "welcome".into(),
                channel: "email",
                etype: "sent",
                cost: "0.02",
            });
        }
        let unsub = self.campaign_events(i, t0, dropout, 0.1 + 0.6 * engagement, 0.002, &mut events);
        for &tp in times.iter().skip(1) {
            let u = self.u();
            if u >= 0.25 || unsub.is_some_and(|x| x <= tp) {
                continue;
            }
            let last = self
                .campaigns
                .iter()
                .rev()
                .find(|(nominal, _)| *nominal < tp && *nominal > t0);
            if let Some((_, name)) = last {
                events.push(Event {
                    t: tp,
                    customer: i,
                    campaign: name.clone(),
                    channel: "email",
                    etype: "conversion",
                    cost: "",
                });
            }
        }
        if let Some(j) = referrer {
            events.push(Event {
                t: t0,
                customer: j,
                campaign: "referral-program".into(),
                channel: "referral",
                etype: "referral",
                cost: "5.00",
            });
        }
        events.sort_by(|a, b| a.t.total_cmp(&b.t));
        self.write_events(events)
    }

    /// Campaign emails from `t0` to the window end or unsubscribe; returns the unsubscribe time.
    fn campaign_events(
        &mut self,
        i: u64,
        t0: f64,
        dropout: Option<f64>,
        open_alive: f64,
        unsub_alive: f64,
        events: &mut Vec<Event>,
    ) -> Option<f64> {
        let first = self.campaigns.partition_point(|(nominal, _)| *nominal <= t0);
        for c in first..self.campaigns.len() {
            let (nominal, name) = (self.campaigns[c].0, self.campaigns[c].1.clone());
            let sent = nominal + self.u() * 3.0 * HOUR;
            if sent >= self.weeks {
                break;
            }
            events.push(Event {
                t: sent,
                customer: i,
                campaign: name.clone(),
                channel: "email",
                etype: "sent",
                cost: "0.02",
            });
            let alive = dropout.is_none_or(|d| sent < d);
            let (p_open, p_unsub) = if alive {
                (open_alive, unsub_alive)
            } else {
                (open_alive * 0.25, 0.02)
            };
            if self.u() < p_open {
                let opened = sent + self.exp1() * DAY;
                if opened < self.weeks {
                    events.push(Event {
                        t: opened,
                        customer: i,
                        campaign: name.clone(),
                        channel: "email",
                        etype: "open",
                        cost: "",
                    });
                    if self.u() < 0.3 {
                        let clicked = opened + self.u() * HOUR;
                        if clicked < self.weeks {
                            events.push(Event {
                                t: clicked,
                                customer: i,
                                campaign: name.clone(),
                                channel: "email",
                                etype: "click",
                                cost: "",
                            });
                        }
                    }
                }
            }
            if self.u() < p_unsub {
                let at = sent + self.exp1() * 2.0 * DAY;
                if at < self.weeks {
                    events.push(Event {
                        t: at,
                        customer: i,
                        campaign: name,
                        channel: "email",
                        etype: "unsubscribe",
                        cost: "",
                    });
                    return Some(at);
                }
                return None;
            }
        }
        None
    }

    fn ticket(&mut self, opened: f64, unhappiness: f64) -> Ticket {
        let complaint = self.u() < 0.05 + 0.5 * unhappiness;
        let u_cat = self.u();
        let category = if complaint {
            "complaint"
        } else {
            TICKET_CATEGORIES[pick(u_cat, &TICKET_WEIGHTS)]
        };
        let (u_status, u_close, u_answer) = (self.u(), self.exp1(), self.u());
        let noise: f64 = self.rng.sample(StandardNormal);
        let (status, closed, csat) = if opened > self.weeks - OPEN_TAIL_WEEKS {
            (if u_status < 0.6 { "open" } else { "pending" }, None, None)
        } else {
            let closed = opened + (u_close * 0.4).min(OPEN_TAIL_WEEKS - 0.1);
            let csat = (u_answer < 0.7).then(|| {
                let base = 4.6 - 2.8 * unhappiness - if complaint { 0.8 } else { 0.0 };
                (base + 0.7 * noise).round().clamp(1.0, 5.0) as u8
            });
            ("closed", Some(closed), csat)
        };
        let (u_cost, v_cost) = (self.u(), self.u());
        let handling_cents = (u_cost < 0.95).then(|| {
            let v = if complaint { v_cost.sqrt() } else { v_cost };
            to_cents(5.0 + 35.0 * v)
        });
        Ticket {
            opened,
            closed,
            category,
            status,
            csat,
            handling_cents,
        }
    }

    fn write_tickets(&mut self, i: u64, tickets: Vec<Ticket>) -> Result<(), GenerateError> {
        let id = customer_id(i);
        for tk in tickets {
            let mess = self.row_mess();
            let form = self.ts_form();
            let bad = self.bad_draw(MESS.bad_service, &SERVICE_BAD);
            let ticket_id = format!("T{:08}", self.next_ticket);
            self.next_ticket += 1;
            let mut row = Row {
                vals: vec![
                    ticket_id,
                    self.id_for_row(&id, mess),
                    self.ts(tk.opened, form),
                    tk.closed.map(|c| self.ts(c, form)).unwrap_or_default(),
                    tk.category.into(),
                    tk.status.into(),
                    tk.csat.map(|c| c.to_string()).unwrap_or_default(),
                    tk.handling_cents.map(fmt_cents).unwrap_or_default(),
                ],
                absent: None,
                empty_as_string: self.messy && mess.empty_as_string,
            };
            Self::count_row(&mut self.report.service, self.messy, mess, form);
            emit(&mut self.service, &mut self.report.service, &row, mess, self.messy)?;
            if let Some(kind) = bad {
                // The bad ticket's id is reserved in clean runs too.
                row.vals[0] = format!("T{:08}", self.next_ticket);
                self.next_ticket += 1;
                if !self.messy {
                    continue;
                }
                row.vals[1] = id.clone();
                row.vals[2] = self.ts(tk.opened, TsForm::Zulu);
                row.vals[3] = tk.closed.map(|c| self.ts(c, TsForm::Zulu)).unwrap_or_default();
                emit_bad(&mut self.service, &mut self.report.service, row, kind, &SERVICE_LAYOUT)?;
            }
        }
        Ok(())
    }

    fn write_events(&mut self, events: Vec<Event>) -> Result<(), GenerateError> {
        for ev in events {
            let mess = self.row_mess();
            let form = self.ts_form();
            let bad = self.bad_draw(MESS.bad_marketing, &MARKETING_BAD);
            let event_id = format!("E{:09}", self.next_event);
            self.next_event += 1;
            let id = customer_id(ev.customer);
            let mut row = Row {
                vals: vec![
                    event_id,
                    self.id_for_row(&id, mess),
                    self.ts(ev.t, form),
                    ev.campaign,
                    ev.channel.into(),
                    ev.etype.into(),
                    ev.cost.into(),
                ],
                absent: None,
                empty_as_string: self.messy && mess.empty_as_string,
            };
            Self::count_row(&mut self.report.marketing, self.messy, mess, form);
            emit(&mut self.marketing, &mut self.report.marketing, &row, mess, self.messy)?;
            if let Some(kind) = bad {
                // The bad event's id is reserved in clean runs too.
                row.vals[0] = format!("E{:09}", self.next_event);
                self.next_event += 1;
                if !self.messy {
                    continue;
                }
                row.vals[1] = id;
                row.vals[2] = self.ts(ev.t, TsForm::Zulu);
                emit_bad(
                    &mut self.marketing,
                    &mut self.report.marketing,
                    row,
                    kind,
                    &MARKETING_LAYOUT,
                )?;
            }
        }
        Ok(())
    }

    fn order(
        &mut self,
        id: &str,
        t: f64,
        spend: &Gamma<f64>,
        channel_pref: usize,
        fav_category: Option<usize>,
        referred_by: &str,
    ) -> Result<(), GenerateError> {
        let order_id = format!("O{:09}", self.next_order);
        self.next_order += 1;
        self.report.orders += 1;
        let u = self.u();
        let k = pick(u, &LINES_WEIGHTS) + 1;
        let z = spend.sample(&mut self.rng);
        let has_discount = self.u() < self.opts.truth.discount_share;
        let disc_frac = 0.05 + 0.2 * self.u();
        let (u_ch, u_other) = (self.u(), self.u());
        let channel = if u_ch < 0.8 {
            CHANNELS[channel_pref]
        } else {
            CHANNELS[((u_other * 4.0) as usize).min(3)]
        };
        let form = self.ts_form();
        let discount_cents = if has_discount { to_cents(z * disc_frac) } else { 0 };
        let gross_target = z + discount_cents as f64 / 100.0;

        let mut shares = [0.0f64; 4];
        for s in shares.iter_mut().take(k) {
            *s = self.exp1() + 1e-9;
        }
        let total: f64 = shares.iter().take(k).sum();
        let mut lines: Vec<Line> = Vec::with_capacity(k);
        for s in shares.iter().take(k) {
            let (u_fav, u_cat) = (self.u(), self.u());
            let cat = match fav_category {
                Some(f) if u_fav < 0.5 => f,
                _ => ((u_cat * 8.0) as usize).min(7),
            };
            let u = self.u();
            let qty = pick(u, &QTY_WEIGHTS) as i64 + 1;
            let price = to_cents(gross_target * s / total / qty as f64).max(1);
            let (u_cost, v_cost) = (self.u(), self.u());
            let cost = (u_cost < self.opts.truth.unit_cost_share)
                .then(|| to_cents(price as f64 / 100.0 * (0.55 + 0.15 * v_cost)));
            lines.push((CATEGORIES[cat], qty, price, cost));
        }
        let bad = self.bad_draw(MESS.bad_sales_per_order, &SALES_BAD);
        // The discount sits on the line with the largest gross amount, capped at that amount.
        let mut disc_line = 0;
        for (n, l) in lines.iter().enumerate() {
            if l.1 * l.2 > lines[disc_line].1 * lines[disc_line].2 {
                disc_line = n;
            }
        }
        let discount_cents = discount_cents.min(lines[disc_line].1 * lines[disc_line].2);

        let secs = self.secs(t);
        let year = year_of(secs);
        self.open_sales(year)?;
        let ts = fmt_ts(secs, form);
        let mut last_row = None;
        for (n, (cat, qty, price, cost)) in lines.iter().enumerate() {
            let mess = self.row_mess();
            let discount = if n == disc_line && discount_cents > 0 {
                fmt_cents(discount_cents)
            } else {
                String::new()
            };
            let row = Row {
                vals: vec![
                    order_id.clone(),
                    (n + 1).to_string(),
                    self.id_for_row(id, mess),
                    ts.clone(),
                    channel.into(),
                    (*cat).into(),
                    qty.to_string(),
                    fmt_cents(*price),
                    discount,
                    cost.map(fmt_cents).unwrap_or_default(),
                    "EUR".into(),
                    referred_by.into(),
                    String::new(),
                    String::new(),
                ],
                absent: None,
                empty_as_string: self.messy && mess.empty_as_string,
            };
            Self::count_row(&mut self.report.sales, self.messy, mess, form);
            let Some(sink) = self.sales.get_mut(&year) else {
                return Err(invalid("internal: sales sink missing".into()));
            };
            emit(sink, &mut self.report.sales, &row, mess, self.messy)?;
            last_row = Some(row);
        }
        if let (Some(kind), Some(mut row), true) = (bad, last_row, self.messy) {
            row.vals[1] = (k + 1).to_string();
            row.vals[2] = id.to_string();
            row.vals[3] = fmt_ts(secs, TsForm::Zulu);
            if let Some(sink) = self.sales.get_mut(&year) {
                emit_bad(sink, &mut self.report.sales, row, kind, &SALES_LAYOUT)?;
            }
        }
        let purchase = Purchase {
            customer: id,
            order_id: &order_id,
            t,
            channel,
            lines: &lines,
            discounted_line: (discount_cents > 0).then_some(disc_line),
        };
        self.returns(&purchase)
    }

    /// The sales file of `year`, created on first use.
    fn open_sales(&mut self, year: i32) -> Result<(), GenerateError> {
        if !self.sales.contains_key(&year) {
            let rel = format!("sales/sales_{year}.{}", self.sales_ext);
            let sink = Sink::create(&self.opts.out_dir, &rel, SALES_COLUMNS, self.opts.format)?;
            self.sales.insert(year, sink);
        }
        Ok(())
    }

    fn returns_u(&mut self) -> f64 {
        self.returns_rng.r#gen::<f64>()
    }

    /// After a purchase, from the returns stream: maybe an extra order that is cancelled or
    /// returned in full, and maybe one unit of the purchase returned (see
    /// [`super::TrueParameters::cancel_share`] and the two after it).
    fn returns(&mut self, p: &Purchase<'_>) -> Result<(), GenerateError> {
        let truth = &self.opts.truth;
        let (cancel, full, partial) = (truth.cancel_share, truth.full_return_share, truth.partial_return_share);
        let (u, form, when, partial_u, pick_u) = (
            self.returns_u(),
            self.returns_u(),
            self.returns_u(),
            self.returns_u(),
            self.returns_u(),
        );
        let extra_t = p.t + 10.0 * HOUR / 60.0;
        let back_t = p.t + (RETURN_AFTER_DAYS + RETURN_SPREAD_DAYS * when) * DAY;
        if u < cancel && extra_t < self.weeks {
            let extra = format!("{}-X", p.order_id);
            for (n, line) in p.lines.iter().enumerate() {
                self.clean_line(p, &extra, n + 1, extra_t, *line, "cancelled", "")?;
            }
            self.report.cancelled_orders += 1;
        } else if u < cancel + full && back_t < self.weeks {
            let extra = format!("{}-R", p.order_id);
            let by_status = form < 1.0 / 3.0;
            let status = if by_status { "returned" } else { "" };
            for (n, line) in p.lines.iter().enumerate() {
                self.clean_line(p, &extra, n + 1, extra_t, *line, status, "")?;
            }
            if !by_status {
                let note = format!("{extra}C");
                for (n, &(cat, qty, price, cost)) in p.lines.iter().enumerate() {
                    self.clean_line(p, &note, n + 1, back_t, (cat, -qty, price, cost), "", &extra)?;
                }
            }
            self.report.returned_orders += 1;
            self.report.returned_revenue_cents += p.lines.iter().map(|l| l.1 * l.2).sum::<i64>();
        }
        // One unit of an undiscounted line, when the order keeps at least one other unit.
        let units: i64 = p.lines.iter().map(|l| l.1).sum();
        let candidates: Vec<usize> = (0..p.lines.len()).filter(|n| Some(*n) != p.discounted_line).collect();
        if partial_u < partial && back_t < self.weeks && units >= 2 && !candidates.is_empty() {
            let j = candidates[((pick_u * candidates.len() as f64) as usize).min(candidates.len() - 1)];
            let (cat, _, price, cost) = p.lines[j];
            if form < 0.5 {
                self.clean_line(p, p.order_id, 101 + j, back_t, (cat, -1, price, cost), "", "")?;
            } else {
                let note = format!("{}-C", p.order_id);
                self.clean_line(p, &note, 1, back_t, (cat, -1, price, cost), "", p.order_id)?;
            }
            self.report.partial_returns += 1;
            self.report.returned_revenue_cents += price;
        }
        Ok(())
    }

    /// Writes one sales line of the returns stream: canonical id and timestamp, no mess.
    #[allow(clippy::too_many_arguments)]
    fn clean_line(
        &mut self,
        p: &Purchase<'_>,
        order_id: &str,
        line_no: usize,
        t: f64,
        (cat, qty, price, cost): Line,
        status: &str,
        refund_of: &str,
    ) -> Result<(), GenerateError> {
        let secs = self.secs(t);
        let year = year_of(secs);
        self.open_sales(year)?;
        let row = Row {
            vals: vec![
                order_id.to_string(),
                line_no.to_string(),
                p.customer.to_string(),
                fmt_ts(secs, TsForm::Zulu),
                p.channel.into(),
                cat.into(),
                qty.to_string(),
                fmt_cents(price),
                String::new(),
                cost.map(fmt_cents).unwrap_or_default(),
                "EUR".into(),
                String::new(),
                status.into(),
                refund_of.into(),
            ],
            absent: None,
            empty_as_string: false,
        };
        let Some(sink) = self.sales.get_mut(&year) else {
            return Err(invalid("internal: sales sink missing".into()));
        };
        let clean = RowMess {
            dup: false,
            id_variant: 0,
            empty_as_string: false,
        };
        emit(sink, &mut self.report.sales, &row, clean, self.messy)
    }

    fn finish(self) -> Result<GenerateReport, GenerateError> {
        let mut report = self.report;
        let mut files = Vec::new();
        let mut sales_rows = 0;
        for (_, sink) in self.sales {
            files.push(sink.rel().to_string());
            sales_rows += sink.rows();
            sink.finish()?;
        }
        files.push(self.service.rel().to_string());
        files.push(self.marketing.rel().to_string());
        let (service_rows, marketing_rows) = (self.service.rows(), self.marketing.rows());
        self.service.finish()?;
        self.marketing.finish()?;
        self.truth.finish()?;
        files.sort();
        report.files = files;
        for (rep, written) in [
            (&mut report.sales, sales_rows),
            (&mut report.service, service_rows),
            (&mut report.marketing, marketing_rows),
        ] {
            rep.rows = rep.valid_rows + rep.duplicate_rows + rep.bad_rows;
            if rep.rows != written {
                return Err(invalid(format!(
                    "internal: counted {} rows but wrote {written}",
                    rep.rows
                )));
            }
        }
        Ok(report)
    }
}
