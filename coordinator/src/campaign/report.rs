//! `shardmerge campaign report`: the dataset summarized per method (merges, outcomes, time and,
//! when `--then` recorded scores, each score's distribution), as a table and as a box plot of
//! every score per method (SVG, drawn with `plotters`), the view the AutoMerger analysis used.

use super::record::{Record, State};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Distribution of one score over one method's merges.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// Merges with this score.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
}

/// One method's row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MethodRow {
    /// Merges drawn.
    pub count: usize,
    /// Committed.
    pub committed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped (pairs that cannot merge).
    pub skipped: usize,
    /// Not finished.
    pub pending: usize,
    /// Mean wall seconds of committed merges.
    pub mean_seconds: Option<f64>,
    /// Per score name: its values over committed merges.
    pub scores: BTreeMap<String, Vec<f64>>,
}

/// Quantile `q` of sorted `v` with linear interpolation (numpy's default).
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The distribution of `values` (not empty).
pub fn spread(values: &[f64]) -> Spread {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Spread {
        n: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        median: quantile(&v, 0.5),
        q1: quantile(&v, 0.25),
        q3: quantile(&v, 0.75),
    }
}

/// Rows per method, by method name.
pub fn summarize(records: &[Record]) -> BTreeMap<String, MethodRow> {
    let mut rows: BTreeMap<String, MethodRow> = BTreeMap::new();
    let mut seconds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        let row = rows.entry(r.method.clone()).or_default();
        row.count += 1;
        match r.state {
            State::Committed => row.committed += 1,
            State::Failed => row.failed += 1,
            State::Skipped => row.skipped += 1,
            State::Pending => row.pending += 1,
        }
        if r.state != State::Committed {
            continue;
        }
        if let Some(s) = r.seconds {
            seconds.entry(r.method.clone()).or_default().push(s);
        }
        for (k, v) in r.scores.iter().flatten() {
            if let Some(x) = v.as_f64() {
                row.scores.entry(k.clone()).or_default().push(x);
            }
        }
    }
    for (m, s) in seconds {
        if let Some(row) = rows.get_mut(&m) {
            row.mean_seconds = Some(s.iter().sum::<f64>() / s.len() as f64);
        }
    }
    rows
}

/// The table, as text.
pub fn table(rows: &BTreeMap<String, MethodRow>) -> String {
    let mut s = format!(
        "{:<12} {:>6} {:>9} {:>6} {:>7} {:>7} {:>10}\n",
        "method", "merges", "committed", "failed", "skipped", "pending", "mean time"
    );
    for (m, r) in rows {
        let t = r.mean_seconds.map_or("-".to_string(), |t| format!("{t:.2}s"));
        s.push_str(&format!(
            "{m:<12} {:>6} {:>9} {:>6} {:>7} {:>7} {t:>10}\n",
            r.count, r.committed, r.failed, r.skipped, r.pending
        ));
    }
    let names: std::collections::BTreeSet<&String> = rows.values().flat_map(|r| r.scores.keys()).collect();
    for name in names {
        s.push_str(&format!(
            "\nscore `{name}`\n{:<12} {:>4} {:>10} {:>10} {:>10} {:>10}\n",
            "method", "n", "mean", "q1", "median", "q3"
        ));
        for (m, r) in rows {
            if let Some(v) = r.scores.get(name).filter(|v| !v.is_empty()) {
                let sp = spread(v);
                s.push_str(&format!(
                    "{m:<12} {:>4} {:>10.4} {:>10.4} {:>10.4} {:>10.4}\n",
                    sp.n, sp.mean, sp.q1, sp.median, sp.q3
                ));
            }
        }
    }
    s
}

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {reason}")]
pub struct PlotError {
    /// Output file.
    pub path: String,
    /// What failed.
    pub reason: String,
}

/// Writes an SVG with one box plot per score (one box per method) to `path`. Returns the
/// number of scores drawn (0: nothing written, there are no scores).
pub fn plot(rows: &BTreeMap<String, MethodRow>, path: &Path) -> Result<usize, PlotError> {
    let names: Vec<String> = rows
        .values()
        .flat_map(|r| r.scores.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let fail = |e: String| PlotError {
        path: path.display().to_string(),
        reason: e,
    };
    let methods: Vec<String> = rows.keys().cloned().collect();
    let height = 320 * names.len() as u32;
    let root = SVGBackend::new(path, (720, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    for (area, name) in root.split_evenly((names.len(), 1)).iter().zip(&names) {
        let all: Vec<f64> = rows
            .values()
            .filter_map(|r| r.scores.get(name))
            .flatten()
            .copied()
            .collect();
        let (lo, hi) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let pad = ((hi - lo) * 0.1).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name} by merge method"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(methods[..].into_segmented(), (lo - pad) as f32..(hi + pad) as f32)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .y_desc(name.as_str())
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        let boxes: Vec<(&String, Quartiles)> = methods
            .iter()
            .filter_map(|m| {
                let v = rows[m].scores.get(name).filter(|v| !v.is_empty())?;
                Some((m, Quartiles::new(v)))
            })
            .collect();
        chart
            .draw_series(
                boxes
                    .iter()
                    .map(|(m, q)| Boxplot::new_vertical(SegmentValue::CenterOf(*m), q).width(40)),
            )
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(names.len())
}
