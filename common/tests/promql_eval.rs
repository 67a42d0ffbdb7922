//! The PromQL evaluator against fixed, in-memory data, with every expected
//! number worked out by hand (the working is in the comments).

use std::cell::Cell;
use std::collections::BTreeMap;

use fogmesh_common::metrics::{Labels, Matcher, Sample, Series, SeriesSource};
use fogmesh_common::promql::{self, ErrorKind, PromqlError, Value, VectorSample, LOOKBACK_MS};

/// All timestamps are seconds after this instant (unix ms).
const BASE: i64 = 1_700_000_000_000;

fn at(secs: i64) -> i64 {
    BASE + secs * 1000
}

struct Mem {
    series: Vec<Series>,
    selects: Cell<usize>,
}

impl SeriesSource for Mem {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        self.selects.set(self.selects.get() + 1);
        self.series
            .iter()
            .filter(|s| matchers.iter().all(|m| m.matches(&s.labels)))
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s.samples.iter().filter(|p| p.ts_ms >= start_ms && p.ts_ms <= end_ms).copied().collect(),
            })
            .collect()
    }
}

fn series(name: &str, labels: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
    Series { labels: Labels::metric(name, labels), samples: points.iter().map(|&(s, value)| Sample { ts_ms: at(s), value }).collect() }
}

fn data() -> Mem {
    let series = vec![
        // A counter every 15 s, reset between 90 s and 105 s.
        series(
            "http_requests_total",
            &[("job", "api"), ("instance", "a")],
            &[(0, 10.0), (15, 20.0), (30, 25.0), (45, 35.0), (60, 40.0), (75, 50.0), (90, 60.0), (105, 5.0), (120, 15.0)],
        ),
        // A counter every 10 s from 10 s to 50 s.
        series("jobs_total", &[("instance", "b")], &[(10, 100.0), (20, 110.0), (30, 120.0), (40, 130.0), (50, 140.0)]),
        // A counter that starts near zero, late in the window.
        series("fresh_total", &[("instance", "c")], &[(30, 2.0), (40, 12.0), (50, 22.0)]),
        // A gauge every 15 s.
        series("temperature", &[("room", "x")], &[(0, 20.0), (15, 25.0), (30, 22.0), (45, 18.0), (60, 21.0)]),
        // One old sample.
        series("old_metric", &[], &[(0, 7.0)]),
        // Instant data for aggregation and operators (one sample at 0 s).
        series("cpu", &[("node", "n1"), ("zone", "a"), ("mode", "user")], &[(0, 1.0)]),
        series("cpu", &[("node", "n2"), ("zone", "a"), ("mode", "user")], &[(0, 3.0)]),
        series("cpu", &[("node", "n3"), ("zone", "b"), ("mode", "user")], &[(0, 5.0)]),
        series("cpu", &[("node", "n3"), ("zone", "b"), ("mode", "idle")], &[(0, 10.0)]),
        series("capacity", &[("node", "n1")], &[(0, 10.0)]),
        series("capacity", &[("node", "n2")], &[(0, 20.0)]),
        series("capacity", &[("node", "n3")], &[(0, 40.0)]),
        series("cpu_base", &[("node", "n1"), ("zone", "a")], &[(0, 100.0)]),
        series("cpu_base", &[("node", "n2"), ("zone", "a")], &[(0, 200.0)]),
        series("cpu_base", &[("node", "n3"), ("zone", "b")], &[(0, 300.0)]),
        series("g", &[("k", "v")], &[(0, -2.5)]),
        series("limit", &[("node", "n1")], &[(0, 50.0)]),
        // A classic histogram of two detectors: cumulative bucket counts.
        series("lat_bucket", &[("pod", "d1"), ("le", "0.1")], &[(0, 4.0)]),
        series("lat_bucket", &[("pod", "d1"), ("le", "0.2")], &[(0, 8.0)]),
        series("lat_bucket", &[("pod", "d1"), ("le", "+Inf")], &[(0, 10.0)]),
        series("lat_bucket", &[("pod", "d2"), ("le", "0.1")], &[(0, 0.0)]),
        series("lat_bucket", &[("pod", "d2"), ("le", "0.2")], &[(0, 10.0)]),
        series("lat_bucket", &[("pod", "d2"), ("le", "+Inf")], &[(0, 10.0)]),
    ];
    Mem { series, selects: Cell::new(0) }
}

const EPS: f64 = 1e-9;

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() < EPS
}

fn instant(q: &str, t_secs: i64) -> Value {
    promql::instant(&data(), q, at(t_secs)).unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// The instant vector `q` gives at `t_secs`, as "labels" → value.
fn vector(q: &str, t_secs: i64) -> BTreeMap<String, f64> {
    match instant(q, t_secs) {
        Value::Vector(v) => {
            let n = v.len();
            let map: BTreeMap<String, f64> = v.into_iter().map(|s| (s.labels.to_string(), s.value)).collect();
            assert_eq!(map.len(), n, "{q}: duplicate label sets");
            map
        }
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn scalar(q: &str, t_secs: i64) -> f64 {
    match instant(q, t_secs) {
        Value::Scalar(v) => v,
        other => panic!("{q}: expected a scalar, got {other:?}"),
    }
}

/// The one value of a one-element vector.
fn single(q: &str, t_secs: i64) -> (String, f64) {
    let v = vector(q, t_secs);
    assert_eq!(v.len(), 1, "{q}: {v:?}");
    v.into_iter().next().unwrap()
}

#[track_caller]
fn assert_vector(q: &str, t_secs: i64, expected: &[(&str, f64)]) {
    let got = vector(q, t_secs);
    let want: BTreeMap<String, f64> = expected.iter().map(|(l, v)| (l.to_string(), *v)).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{q}: label sets");
    for (k, v) in &want {
        assert!(close(got[k], *v), "{q}: {k} = {}, expected {v}", got[k]);
    }
}

fn error(q: &str) -> PromqlError {
    promql::instant(&data(), q, at(60)).expect_err(q)
}

// --- rate, increase, irate, delta ---------------------------------------------

#[test]
fn rate_and_increase_over_a_counter_reset() {
    // Window (60 s, 120 s]: 75:50, 90:60, 105:5, 120:15.
    // Raw change 15 - 50 = -35; the drop 60 → 5 adds 60: 25.
    // Sampled 45 s over 3 gaps: average 15 s, threshold 16.5 s.
    // Start: first sample 15 s after the window start (< 16.5): extrapolate
    // the full 15 s (zero point 45 * 50/25 = 90 s away, further). End: 0 s.
    // increase = 25 * (45 + 15 + 0) / 45 = 100/3; rate = 100/3 / 60 = 5/9.
    let inc = vector("increase(http_requests_total[1m])", 120);
    assert!(close(inc["{instance=\"a\",job=\"api\"}"], 100.0 / 3.0), "{inc:?}");
    assert_vector("rate(http_requests_total[1m])", 120, &[("{instance=\"a\",job=\"api\"}", 5.0 / 9.0)]);
    // Over 2m, window (0, 120]: 15:20 ... 120:15, change 15 - 20 + 60 = 55,
    // sampled 105 s (7 gaps of 15 s), 15 s to the start, 0 to the end:
    // increase = 55 * 120/105; rate = that / 120 = 55/105.
    assert_vector("increase(http_requests_total[2m])", 120, &[("{instance=\"a\",job=\"api\"}", 55.0 * 120.0 / 105.0)]);
    assert_vector("rate(http_requests_total[2m])", 120, &[("{instance=\"a\",job=\"api\"}", 55.0 / 105.0)]);
}

#[test]
fn rate_extrapolates_to_both_ends() {
    // Window (0, 60]: 10:100 ... 50:140. Change 40 over 40 s (gaps 10 s,
    // threshold 11 s); 10 s to each edge (< 11): extrapolate both fully,
    // (40 + 10 + 10) / 40 = 1.5 → increase 60, rate 60/60 = 1.
    assert_vector("increase(jobs_total[1m])", 60, &[("{instance=\"b\"}", 60.0)]);
    assert_vector("rate(jobs_total[1m])", 60, &[("{instance=\"b\"}", 1.0)]);
}

#[test]
fn rate_extrapolates_half_an_interval_past_a_gap() {
    // Window (30, 90]: 40:130, 50:140. Change 10 over 10 s; start 10 s away
    // (< 11, full); end 40 s away (>= 11): only half the average gap, 5 s.
    // increase = 10 * (10 + 10 + 5) / 10 = 25; rate = 25/60.
    assert_vector("increase(jobs_total[1m])", 90, &[("{instance=\"b\"}", 25.0)]);
    assert_vector("rate(jobs_total[1m])", 90, &[("{instance=\"b\"}", 25.0 / 60.0)]);
}

#[test]
fn counter_extrapolation_stops_at_zero() {
    // Window (0, 60]: 30:2, 40:12, 50:22. Change 20 over 20 s (gap 10 s).
    // Start 30 s away (>= 11): half a gap, 5 s; but the counter would reach
    // zero 20 * 2/20 = 2 s before the first sample, so 2 s. End 10 s (< 11).
    // increase = 20 * (20 + 2 + 10) / 20 = 32; rate = 32/60.
    assert_vector("increase(fresh_total[1m])", 60, &[("{instance=\"c\"}", 32.0)]);
    assert_vector("rate(fresh_total[1m])", 60, &[("{instance=\"c\"}", 32.0 / 60.0)]);
    // delta does not clamp: 20 * (20 + 5 + 10) / 20 = 35.
    assert_vector("delta(fresh_total[1m])", 60, &[("{instance=\"c\"}", 35.0)]);
}

#[test]
fn irate_uses_the_last_two_samples() {
    // At 120 s: 105:5, 120:15 → 10 / 15 s.
    assert_vector("irate(http_requests_total[1m])", 120, &[("{instance=\"a\",job=\"api\"}", 10.0 / 15.0)]);
    // At 105 s: 90:60, 105:5 is a reset, so the increase is 5 → 5 / 15 s.
    assert_vector("irate(http_requests_total[1m])", 105, &[("{instance=\"a\",job=\"api\"}", 5.0 / 15.0)]);
    // idelta does not treat the drop as a reset: 5 - 60.
    assert_vector("idelta(http_requests_total[1m])", 105, &[("{instance=\"a\",job=\"api\"}", -55.0)]);
    // Fewer than two samples: no result.
    assert!(vector("irate(old_metric[5m])", 10).is_empty());
    assert!(vector("rate(old_metric[5m])", 10).is_empty());
}

#[test]
fn delta_on_a_gauge() {
    // Window (0, 60]: 15:25, 30:22, 45:18, 60:21. Change 21 - 25 = -4 (the
    // drops are not resets); 45 s sampled, 15 s to the start (< 16.5),
    // 0 to the end: -4 * 60/45 = -16/3.
    assert_vector("delta(temperature[1m])", 60, &[("{room=\"x\"}", -16.0 / 3.0)]);
    assert_vector("idelta(temperature[1m])", 60, &[("{room=\"x\"}", 3.0)]);
}

// --- *_over_time ----------------------------------------------------------------

#[test]
fn over_time_functions() {
    // Window (0, 60]: 25, 22, 18, 21.
    assert_vector("avg_over_time(temperature[1m])", 60, &[("{room=\"x\"}", 21.5)]);
    assert_vector("min_over_time(temperature[1m])", 60, &[("{room=\"x\"}", 18.0)]);
    assert_vector("max_over_time(temperature[1m])", 60, &[("{room=\"x\"}", 25.0)]);
    assert_vector("sum_over_time(temperature[1m])", 60, &[("{room=\"x\"}", 86.0)]);
    assert_vector("count_over_time(temperature[1m])", 60, &[("{room=\"x\"}", 4.0)]);
    // last_over_time keeps the metric name.
    assert_vector("last_over_time(temperature[1m])", 60, &[("temperature{room=\"x\"}", 21.0)]);
    // The window's left edge is open: at 75 s, (15, 75] holds 30, 45, 60.
    assert_vector("count_over_time(temperature[1m])", 75, &[("{room=\"x\"}", 3.0)]);
    // A bare range selector in an instant query is a matrix.
    match instant("temperature[30s]", 60) {
        Value::Matrix(m) => {
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].labels.to_string(), "temperature{room=\"x\"}");
            assert_eq!(m[0].samples, vec![Sample { ts_ms: at(45), value: 18.0 }, Sample { ts_ms: at(60), value: 21.0 }]);
        }
        other => panic!("{other:?}"),
    }
}

// --- selectors: lookback, offset, matchers ----------------------------------------

#[test]
fn lookback_returns_samples_younger_than_five_minutes() {
    assert_eq!(LOOKBACK_MS, 300_000);
    assert_vector("old_metric", 0, &[("old_metric{}", 7.0)]);
    assert_vector("old_metric", 299, &[("old_metric{}", 7.0)]);
    // (t - 5m, t] excludes a sample exactly 5 minutes old.
    assert!(vector("old_metric", 300).is_empty());
    assert!(vector("old_metric", 301).is_empty());
    // Nor is a sample from the future seen.
    assert!(vector("old_metric", -1).is_empty());
    // The newest sample in the window wins.
    assert_vector("temperature", 50, &[("temperature{room=\"x\"}", 18.0)]);
}

#[test]
fn offset_shifts_the_window_back() {
    assert_vector("temperature offset 30s", 60, &[("temperature{room=\"x\"}", 22.0)]);
    assert_vector("temperature offset -15s", 30, &[("temperature{room=\"x\"}", 18.0)]);
    // rate(jobs_total[1m]) at 60 s is 1 (see above); offset 30s at 90 s is
    // the same window.
    assert_vector("rate(jobs_total[1m] offset 30s)", 90, &[("{instance=\"b\"}", 1.0)]);
    // old_metric is 5 minutes old at 300 s, but only 4 at 300 s offset 1m.
    assert_vector("old_metric offset 1m", 300, &[("old_metric{}", 7.0)]);
}

#[test]
fn label_matchers() {
    assert_eq!(vector("cpu{zone=\"a\"}", 10).len(), 2);
    assert_eq!(vector("cpu{zone!=\"a\"}", 10).len(), 2);
    // Regexes are anchored: "n" does not match "n1".
    assert!(vector("cpu{node=~\"n\"}", 10).is_empty());
    assert_eq!(vector("cpu{node=~\"n[12]\"}", 10).len(), 2);
    assert_eq!(vector("cpu{node!~\"n[12]\", mode=\"user\"}", 10).len(), 1);
    assert_eq!(vector("{__name__=~\"cpu|capacity\", node=\"n1\"}", 10).len(), 2);
    // A missing label matches "".
    assert_eq!(vector("cpu{missing=\"\"}", 10).len(), 4);
}

// --- aggregation -------------------------------------------------------------------

#[test]
fn aggregations_by_and_without() {
    // cpu: n1/a/user 1, n2/a/user 3, n3/b/user 5, n3/b/idle 10.
    assert_vector("sum by (zone) (cpu)", 10, &[("{zone=\"a\"}", 4.0), ("{zone=\"b\"}", 15.0)]);
    assert_vector("sum(cpu) by (zone)", 10, &[("{zone=\"a\"}", 4.0), ("{zone=\"b\"}", 15.0)]);
    assert_vector("avg without (node, mode) (cpu)", 10, &[("{zone=\"a\"}", 2.0), ("{zone=\"b\"}", 7.5)]);
    assert_vector("count(cpu)", 10, &[("{}", 4.0)]);
    assert_vector("count by (mode) (cpu)", 10, &[("{mode=\"idle\"}", 1.0), ("{mode=\"user\"}", 3.0)]);
    assert_vector("min by (zone) (cpu)", 10, &[("{zone=\"a\"}", 1.0), ("{zone=\"b\"}", 5.0)]);
    assert_vector("max without (node, zone) (cpu)", 10, &[("{mode=\"idle\"}", 10.0), ("{mode=\"user\"}", 5.0)]);
    assert_vector("sum(cpu)", 10, &[("{}", 19.0)]);
    // `without` always drops the name; `by (__name__)` keeps it.
    assert_vector("sum without (node, zone, mode) (cpu)", 10, &[("{}", 19.0)]);
    assert_vector("sum by (__name__) (cpu)", 10, &[("cpu{}", 19.0)]);
    // Aggregating nothing gives nothing.
    assert!(vector("sum(nothing_here)", 10).is_empty());
    // Over a rate.
    assert_vector("sum by (job) (rate(http_requests_total[1m]))", 120, &[("{job=\"api\"}", 5.0 / 9.0)]);
}

#[test]
fn topk_and_bottomk_keep_whole_series() {
    let top = instant("topk(2, cpu)", 10);
    let Value::Vector(top) = top else { panic!() };
    let got: Vec<(String, f64)> = top.iter().map(|s| (s.labels.to_string(), s.value)).collect();
    assert_eq!(
        got,
        vec![
            ("cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}".to_string(), 10.0),
            ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}".to_string(), 5.0)
        ]
    );
    assert_vector(
        "bottomk by (zone) (1, cpu)",
        10,
        &[("cpu{mode=\"user\",node=\"n1\",zone=\"a\"}", 1.0), ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0)],
    );
    assert_eq!(vector("topk(100, cpu)", 10).len(), 4);
    assert!(vector("topk(0, cpu)", 10).is_empty());
    assert_eq!(vector("topk(scalar(capacity{node=\"n1\"}) / 5, cpu)", 10).len(), 2);
}

// --- operators ---------------------------------------------------------------------

#[test]
fn vector_scalar_arithmetic_drops_the_name() {
    assert_vector("capacity * 2", 10, &[("{node=\"n1\"}", 20.0), ("{node=\"n2\"}", 40.0), ("{node=\"n3\"}", 80.0)]);
    assert_vector("100 - capacity", 10, &[("{node=\"n1\"}", 90.0), ("{node=\"n2\"}", 80.0), ("{node=\"n3\"}", 60.0)]);
    assert_vector("capacity / 8", 10, &[("{node=\"n1\"}", 1.25), ("{node=\"n2\"}", 2.5), ("{node=\"n3\"}", 5.0)]);
    assert_vector("capacity % 3", 10, &[("{node=\"n1\"}", 1.0), ("{node=\"n2\"}", 2.0), ("{node=\"n3\"}", 1.0)]);
    assert_vector("2 ^ capacity{node=\"n1\"}", 10, &[("{node=\"n1\"}", 1024.0)]);
    assert_vector("-capacity{node=\"n1\"}", 10, &[("{node=\"n1\"}", -10.0)]);
    assert_vector("-(capacity{node=\"n1\"}) + 1", 10, &[("{node=\"n1\"}", -9.0)]);
    // Precedence: 2 + 3 * 4 ^ 2 = 2 + 3 * 16.
    assert_eq!(scalar("2 + 3 * 4 ^ 2", 10), 50.0);
    assert_eq!(scalar("-2 ^ 2", 10), -4.0);
    assert_eq!(scalar("7 % 4 - (1 + 1)", 10), 1.0);
}

#[test]
fn division_by_zero_is_ieee() {
    assert_eq!(single("capacity{node=\"n1\"} / 0", 10).1, f64::INFINITY);
    assert_eq!(single("-capacity{node=\"n1\"} / 0", 10).1, f64::NEG_INFINITY);
    assert!(single("(capacity{node=\"n1\"} - 10) / 0", 10).1.is_nan());
    assert!(single("capacity{node=\"n1\"} % 0", 10).1.is_nan());
    assert_eq!(scalar("1 / 0", 10), f64::INFINITY);
    assert!(scalar("0 / 0", 10).is_nan());
}

#[test]
fn vector_vector_matching_on_and_ignoring() {
    // Default: all labels but the name must match.
    assert_vector(
        "cpu{mode=\"user\"} - cpu{mode=\"user\"}",
        10,
        &[
            ("{mode=\"user\",node=\"n1\",zone=\"a\"}", 0.0),
            ("{mode=\"user\",node=\"n2\",zone=\"a\"}", 0.0),
            ("{mode=\"user\",node=\"n3\",zone=\"b\"}", 0.0),
        ],
    );
    // Different label sets do not match.
    assert!(vector("cpu + capacity", 10).is_empty());
    // on(node): 1/10, 3/20, 5/40; the result has only the `on` labels.
    assert_vector(
        "cpu{mode=\"user\"} / on(node) capacity",
        10,
        &[("{node=\"n1\"}", 0.1), ("{node=\"n2\"}", 0.15), ("{node=\"n3\"}", 0.125)],
    );
    // ignoring(mode): cpu_base has node and zone; the result drops mode.
    assert_vector(
        "cpu{mode=\"user\"} + ignoring(mode) cpu_base",
        10,
        &[("{node=\"n1\",zone=\"a\"}", 101.0), ("{node=\"n2\",zone=\"a\"}", 203.0), ("{node=\"n3\",zone=\"b\"}", 305.0)],
    );
    // Two cpu series of n3 match one capacity: many-to-one needs group_left.
    let e = error("cpu / on(node) capacity");
    assert_eq!(e.kind(), ErrorKind::Eval);
    assert!(e.to_string().contains("many-to-one matching must be explicit"), "{e}");
    // Duplicates on the right: many-to-many.
    let e = error("capacity / on(zone) cpu");
    assert!(e.to_string().contains("many-to-many matching not allowed"), "{e}");
}

#[test]
fn comparisons_filter_or_return_bool() {
    // Filtering keeps the left value and the name.
    assert_vector(
        "cpu > 3",
        10,
        &[("cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}", 10.0), ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0)],
    );
    // With the scalar on the left, the vector's value is kept.
    assert_vector(
        "3 < cpu",
        10,
        &[("cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}", 10.0), ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0)],
    );
    assert_vector("cpu == 3", 10, &[("cpu{mode=\"user\",node=\"n2\",zone=\"a\"}", 3.0)]);
    assert_eq!(vector("cpu != 3", 10).len(), 3);
    assert_eq!(vector("cpu >= 3", 10).len(), 3);
    assert_eq!(vector("cpu <= 3", 10).len(), 2);
    // bool: every sample, 0 or 1, without the name.
    assert_vector(
        "cpu > bool 3",
        10,
        &[
            ("{mode=\"idle\",node=\"n3\",zone=\"b\"}", 1.0),
            ("{mode=\"user\",node=\"n1\",zone=\"a\"}", 0.0),
            ("{mode=\"user\",node=\"n2\",zone=\"a\"}", 0.0),
            ("{mode=\"user\",node=\"n3\",zone=\"b\"}", 1.0),
        ],
    );
    // Vector to vector: capacity / 10 is 1, 2, 4; cpu user is 1, 3, 5.
    assert_vector("cpu{mode=\"user\"} > on(node) capacity / 10", 10, &[("{node=\"n2\"}", 3.0), ("{node=\"n3\"}", 5.0)]);
    assert_vector(
        "cpu{mode=\"user\"} > bool on(node) (capacity / 10)",
        10,
        &[("{node=\"n1\"}", 0.0), ("{node=\"n2\"}", 1.0), ("{node=\"n3\"}", 1.0)],
    );
    // Scalars need bool.
    assert_eq!(scalar("1 < bool 2", 10), 1.0);
    assert_eq!(scalar("2 == bool 3", 10), 0.0);
    assert_eq!(error("1 < 2").kind(), ErrorKind::Parse);
}

#[test]
fn set_operators() {
    assert_vector(
        "cpu and on(node) capacity{node!=\"n2\"}",
        10,
        &[
            ("cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}", 10.0),
            ("cpu{mode=\"user\",node=\"n1\",zone=\"a\"}", 1.0),
            ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0),
        ],
    );
    // Without on/ignoring, cpu{mode="user"} and cpu_base never match.
    assert_eq!(vector("cpu{mode=\"user\"} or cpu_base", 10).len(), 6);
    assert_eq!(vector("cpu{mode=\"user\"} and cpu_base", 10).len(), 0);
    assert_vector(
        "cpu{mode=\"user\"} or ignoring(mode) cpu_base",
        10,
        &[
            ("cpu{mode=\"user\",node=\"n1\",zone=\"a\"}", 1.0),
            ("cpu{mode=\"user\",node=\"n2\",zone=\"a\"}", 3.0),
            ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0),
        ],
    );
    assert_vector(
        "cpu_base{zone=\"a\"} or ignoring(mode) cpu",
        10,
        &[
            ("cpu_base{node=\"n1\",zone=\"a\"}", 100.0),
            ("cpu_base{node=\"n2\",zone=\"a\"}", 200.0),
            ("cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}", 10.0),
            ("cpu{mode=\"user\",node=\"n3\",zone=\"b\"}", 5.0),
        ],
    );
    assert_vector(
        "cpu unless on(zone) cpu_base{zone=\"b\"}",
        10,
        &[("cpu{mode=\"user\",node=\"n1\",zone=\"a\"}", 1.0), ("cpu{mode=\"user\",node=\"n2\",zone=\"a\"}", 3.0)],
    );
    assert_eq!(vector("cpu unless cpu", 10).len(), 0);
}

// --- functions on instant values --------------------------------------------------------

#[test]
fn scalar_and_elementwise_functions() {
    assert_eq!(scalar("time()", 60), at(60) as f64 / 1000.0);
    assert_vector("vector(time() - time() + 3)", 60, &[("{}", 3.0)]);
    assert_eq!(scalar("scalar(capacity{node=\"n2\"})", 10), 20.0);
    assert!(scalar("scalar(capacity)", 10).is_nan());
    assert!(scalar("scalar(nothing_here)", 10).is_nan());
    assert_vector("abs(g)", 10, &[("{k=\"v\"}", 2.5)]);
    assert_vector("ceil(g)", 10, &[("{k=\"v\"}", -2.0)]);
    assert_vector("floor(g)", 10, &[("{k=\"v\"}", -3.0)]);
    // round: half up, as Prometheus (floor(x + 0.5)).
    assert_vector("round(g)", 10, &[("{k=\"v\"}", -2.0)]);
    assert_vector("round(capacity{node=\"n3\"}, 15)", 10, &[("{node=\"n3\"}", 45.0)]);
    assert_vector("clamp_min(g, 0)", 10, &[("{k=\"v\"}", 0.0)]);
    assert_vector("clamp_max(g, -3)", 10, &[("{k=\"v\"}", -3.0)]);
    assert_vector("clamp(capacity, 15, 30)", 10, &[("{node=\"n1\"}", 15.0), ("{node=\"n2\"}", 20.0), ("{node=\"n3\"}", 30.0)]);
    assert!(vector("clamp(capacity, 30, 15)", 10).is_empty());
    assert_eq!(instant("\"text\"", 10), Value::String("text".to_string()));
    assert_eq!(instant("(((42)))", 10), Value::Scalar(42.0));
}

// --- range queries -------------------------------------------------------------------------

#[test]
fn range_query_steps() {
    let src = data();
    let m = promql::range(&src, "temperature", at(0), at(60), 15_000).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].labels.to_string(), "temperature{room=\"x\"}");
    let want: Vec<Sample> =
        [(0, 20.0), (15, 25.0), (30, 22.0), (45, 18.0), (60, 21.0)].iter().map(|&(s, value)| Sample { ts_ms: at(s), value }).collect();
    assert_eq!(m[0].samples, want);
    // One read per selector, whatever the number of steps.
    assert_eq!(src.selects.get(), 1);

    // Steps between samples see the newest sample within 5 minutes.
    let m = promql::range(&src, "old_metric", at(0), at(600), 150_000).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].samples, vec![Sample { ts_ms: at(0), value: 7.0 }, Sample { ts_ms: at(150), value: 7.0 }]);

    // A rate at each step: 1 at 60 s, 25/60 at 90 s (worked out above).
    let m = promql::range(&src, "rate(jobs_total[1m])", at(60), at(90), 30_000).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].labels.to_string(), "{instance=\"b\"}");
    assert_eq!(m[0].samples.len(), 2);
    assert!(close(m[0].samples[0].value, 1.0) && close(m[0].samples[1].value, 25.0 / 60.0), "{:?}", m[0].samples);

    // A scalar becomes one series with empty labels.
    let m = promql::range(&src, "time() * 2", at(0), at(30), 15_000).unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].labels.is_empty());
    let want: Vec<f64> = [0, 15, 30].iter().map(|&s| at(s) as f64 / 500.0).collect();
    assert_eq!(m[0].samples.iter().map(|s| s.value).collect::<Vec<_>>(), want);

    // Series come out sorted by labels; each only where it has values.
    let m = promql::range(&src, "cpu > 2", at(0), at(0), 1000).unwrap();
    let labels: Vec<String> = m.iter().map(|s| s.labels.to_string()).collect();
    assert_eq!(
        labels,
        vec![
            "cpu{mode=\"idle\",node=\"n3\",zone=\"b\"}",
            "cpu{mode=\"user\",node=\"n2\",zone=\"a\"}",
            "cpu{mode=\"user\",node=\"n3\",zone=\"b\"}"
        ]
    );
}

#[test]
fn range_query_limits_and_arguments() {
    let src = data();
    // 11,000 steps are fine; 11,001 are not.
    assert!(promql::range(&src, "1", 0, 10_999, 1).is_ok());
    let e = promql::range(&src, "1", 0, 11_000, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    assert_eq!(promql::range(&src, "1", 0, 10, 0).unwrap_err().kind(), ErrorKind::Eval);
    assert_eq!(promql::range(&src, "1", 10, 0, 1).unwrap_err().kind(), ErrorKind::Eval);
    assert!(promql::range(&src, "temperature[1m]", 0, 10, 1).is_err());
    assert!(promql::range(&src, "\"s\"", 0, 10, 1).is_err());
}

#[test]
fn histogram_quantile_interpolates_within_buckets_per_series() {
    // d1: rank 5 of 10 falls in (0.1, 0.2] holding 4 -> 0.1 + 0.1 * (5-4)/4 = 0.125.
    // d2: rank 5 in (0.1, 0.2] holding 10 -> 0.1 + 0.1 * 5/10 = 0.15.
    let v = vector("histogram_quantile(0.5, lat_bucket)", 0);
    assert!(close(v["{pod=\"d1\"}"], 0.125) && close(v["{pod=\"d2\"}"], 0.15), "{v:?}");
    // Summed over pods: 20 observations, rank 18 in (0.1, 0.2] holding 14 after 4: 0.1 + 0.1 * 14/14 = 0.2.
    let v = vector("histogram_quantile(0.9, sum by (le) (lat_bucket))", 0);
    assert!(close(v["{}"], 0.2), "{v:?}");
    // A quantile in the +Inf bucket is the highest finite bound.
    assert!(close(vector("histogram_quantile(0.99, lat_bucket)", 0)["{pod=\"d1\"}"], 0.2));
}

// --- errors -----------------------------------------------------------------------------

#[test]
fn unsupported_function_is_named() {
    let e = error("holt_winters(temperature[5m], 0.5, 0.5)");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("unsupported function 'holt_winters'"), "{e}");
    let e = error("label_replace(cpu, \"a\", \"$1\", \"node\", \"(.*)\")");
    assert!(e.to_string().contains("unsupported function 'label_replace'"), "{e}");
    let e = error("quantile(0.5, cpu)");
    assert!(e.to_string().contains("unsupported aggregation 'quantile'"), "{e}");
    let e = error("max_over_time(temperature[5m:1m])");
    assert!(e.to_string().contains("subqueries are not supported"), "{e}");
    let e = error("temperature @ 1700000000");
    assert!(e.to_string().contains("@ modifier is not supported"), "{e}");
}

#[test]
fn group_left_is_refused() {
    let e = error("cpu / on(node) group_left capacity");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.to_string(), "group_left is not supported");
    let e = error("capacity * on(node) group_right(zone) cpu");
    assert_eq!(e.to_string(), "group_right is not supported");
}

#[test]
fn syntax_errors_carry_a_position() {
    let e = error("rate(temperature[5m]) +");
    assert_eq!(e.kind(), ErrorKind::Parse);
    assert_eq!(e.to_string(), "parse error at 1:24: unexpected end of input after \"+\"");
    // A grammar error the lexer's tokens do not place: no position, and a
    // message that says what to check.
    let e = error("sum(cpu) by (zone) foo");
    assert_eq!(e.kind(), ErrorKind::Parse);
    assert_eq!(e.position(), None, "{e}");
    assert_eq!(e.to_string(), "parse error: cannot parse the query: invalid PromQL syntax (check parentheses, quotes, operators and durations)");
    let e = error("sum(rate(temperature[5m])");
    assert!(e.position().is_some(), "{e}");
    assert!(e.to_string().starts_with("parse error at 1:"), "{e}");
    let e = error("cpu{node=\"n1\"");
    assert!(e.position().is_some(), "{e}");
    let e = error("cpu $ 1");
    assert_eq!(e.to_string(), "parse error at 1:5: unexpected character: '$'");
    let e = error("cpu\n  + * 2");
    assert_eq!(e.position().map(|p| (p.line, p.column)), Some((2, 5)), "{e}");
    assert_eq!(e.message(), "unexpected \"*\" after \"+\"");
    let e = error("/ cpu");
    assert_eq!(e.position().map(|p| (p.line, p.column)), Some((1, 1)), "{e}");
    let e = error("unknown_fn(cpu)");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.position().map(|p| (p.line, p.column)), Some((1, 1)), "{e}");
    // Type errors come from the parser, in its words.
    let e = error("rate(cpu)");
    assert_eq!(e.kind(), ErrorKind::Parse);
    assert!(e.to_string().contains("expected type matrix"), "{e}");
}

#[test]
fn parse_validates_up_front() {
    assert!(promql::parse("sum by (zone) (rate(cpu[5m]))").is_ok());
    assert_eq!(promql::parse("cpu * on(node) group_left capacity").unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(promql::parse("cpu +").unwrap_err().kind(), ErrorKind::Parse);
}

#[test]
fn duplicate_label_sets_are_an_error() {
    // Both series lose their name and are left with {node="n1"}.
    let e = error("{__name__=~\"capacity|limit\", node=\"n1\"} * 1");
    assert!(e.to_string().contains("same labelset"), "{e}");
}

/// Odd and hostile queries: each must give a value or an error, never a
/// panic, as an instant and as a range query.
#[test]
fn hostile_queries_never_panic() {
    let deep_parens = format!("{}cpu{}", "(".repeat(300), ")".repeat(300));
    let deep_unary = format!("{}cpu", "-".repeat(3000));
    let long_sum = vec!["cpu"; 600].join(" + ");
    let very_long = "a".repeat(100_000);
    // Just under the nesting limit (1000): the parser builds these trees,
    // the evaluator refuses them as too deep.
    let limit_parens = format!("{}cpu{}", "(".repeat(999), ")".repeat(999));
    let limit_unary = format!("{}cpu", "-".repeat(999));
    let limit_sum = vec!["cpu"; 1000].join("+");
    let limit_calls = format!("{}cpu{}", "abs(".repeat(999), ")".repeat(999));
    let many_matchers = format!("cpu{{{}}}", (0..500).map(|i| format!("l{i}!=\"x\"")).collect::<Vec<_>>().join(","));
    let queries: Vec<String> = [
        "",
        "   ",
        "# only a comment",
        "(",
        ")",
        "[5m]",
        "{}",
        "{a=\"\"}",
        "cpu{",
        "cpu{node=~\"(\"}",
        "cpu{node=~\"\\\\\"}",
        "cpu[0s]",
        "cpu[1ms]",
        "rate(cpu[1ms])",
        "cpu[1e300]",
        "cpu offset 1e300",
        "cpu offset 1000000y",
        "cpu offset -1000000y",
        "count_over_time(cpu[100000y])",
        "rate(cpu[5m] offset -999999y)",
        "topk(1e300, cpu)",
        "topk(-1, cpu)",
        "topk(NaN, cpu)",
        "bottomk(Inf, cpu)",
        "topk(scalar(cpu), cpu)",
        "cpu ^ 1e308 * 1e308",
        "cpu % -0",
        "-cpu / -0",
        "0x7fffffffffffffff * cpu",
        "NaN == bool NaN",
        "Inf - Inf",
        "\"abc\" + 1",
        "vector(\"x\")",
        "scalar(\"x\")",
        "sum(\"x\")",
        "rate(cpu)",
        "rate(cpu[5m], 1)",
        "time(1)",
        "round(cpu, 0)",
        "clamp(cpu, NaN, NaN)",
        "sum by (__name__) (cpu) / on(__name__) sum by (__name__) (cpu)",
        "cpu and 1",
        "1 or 2",
        "cpu == bool cpu offset 5m",
        "cpu{node=\"é\"} + ünicode",
        "cpu{\"quoted\"}",
        "{\"cpu\"}",
        "sum without (a,) (cpu) by (b)",
        "abs(-Inf) + ceil(NaN) + floor(-Inf) + sqrt(-1) + ln(0) + exp(1000)",
        "sort_desc(cpu) or sort(capacity)",
        "timestamp(cpu)",
        "absent(nothing)",
        "label_replace(cpu, \"a\", \"b\", \"c\", \"(\")",
        "cpu @ start()",
        "cpu[5m:]",
        "\u{0}",
        "cpu\u{200b}",
        "'\\",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([deep_parens, deep_unary, long_sum, very_long, many_matchers, limit_parens, limit_unary, limit_sum, limit_calls])
    .collect();
    assert!(queries.len() >= 50);
    let src = data();
    for q in &queries {
        let _ = promql::parse(q);
        let _ = promql::instant(&src, q, at(60));
        let _ = promql::instant(&src, q, i64::MIN);
        let _ = promql::instant(&src, q, i64::MAX);
        let _ = promql::range(&src, q, at(0), at(120), 15_000);
        let _ = promql::range(&src, q, i64::MAX - 10, i64::MAX, 1);
        let _ = promql::range(&src, q, i64::MIN, i64::MIN + 100, 1);
    }
}

/// The deepest tree the evaluator accepts evaluates (on a test thread's
/// 2 MiB stack, in a debug build).
#[test]
fn deepest_accepted_queries_evaluate() {
    let calls = format!("{}capacity{{node=\"n1\"}}{}", "abs(".repeat(198), ")".repeat(198));
    assert_vector(&calls, 10, &[("{node=\"n1\"}", 10.0)]);
    let sum = vec!["capacity{node=\"n1\"}"; 199].join(" + ");
    assert_vector(&sum, 10, &[("{node=\"n1\"}", 1990.0)]);
    // Each "(-" is two levels (parenthesis, minus): 99 of them, one more
    // minus and the selector are 200 levels and 100 negations.
    let parens = format!("{}-capacity{{node=\"n1\"}}{}", "(-".repeat(99), ")".repeat(99));
    assert_vector(&parens, 10, &[("{node=\"n1\"}", 10.0)]);
    let too_deep = format!("{}capacity{}", "abs(".repeat(200), ")".repeat(200));
    assert_eq!(error(&too_deep).kind(), ErrorKind::Limit);
}

/// The evaluator's output types are plain data a caller can build too.
#[test]
fn values_compare_as_data() {
    let v = Value::Vector(vec![VectorSample { labels: Labels::metric("x", &[]), value: 1.0 }]);
    assert_eq!(v.type_name(), "instant vector");
    assert_eq!(v.clone(), v);
}
