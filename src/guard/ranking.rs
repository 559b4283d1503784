//! How well a verdict's scores rank a dataset's items: the precision-recall curve over every
//! threshold, its area as average precision (scikit-learn's `average_precision_score`), and the
//! best F1 any threshold reaches. Reference: ARCHITECTURE.md §7 (scores in reports).

use serde::Serialize;

/// Most points of a curve kept for reports (a curve of a few thousand items drawn as an SVG path).
pub const CURVE_POINTS: usize = 200;

const PERCENT: f64 = 100.0;

/// One task's ranking on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// Items with both a known ground truth and a score.
    pub scored_items: usize,
    /// Of those, the positive ones (harmful, refusal).
    pub positives: usize,
    /// Area under the precision-recall curve, as average precision: the sum over thresholds of
    /// (recall gained) x (precision there); percent.
    pub auprc: f64,
    /// The best F1 over thresholds (score at or above the threshold is positive), percent.
    pub best_f1: f64,
    /// The threshold that reaches it (the lowest score counted positive).
    pub best_threshold: f64,
    /// `[recall, precision]` at each distinct threshold, highest threshold first (at most
    /// `CURVE_POINTS`, evenly thinned, the ends kept).
    pub curve: Vec<[f64; 2]>,
}

/// The ranking of `(is positive, score)` pairs; None without any pair. Tied scores move together
/// (one threshold), as in scikit-learn.
pub fn rank(pairs: &[(bool, f64)]) -> Option<Ranking> {
    if pairs.is_empty() {
        return None;
    }
    let mut sorted: Vec<(bool, f64)> = pairs.iter().copied().filter(|(_, s)| s.is_finite()).collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let positives = sorted.iter().filter(|(p, _)| *p).count();
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut ap, mut last_recall) = (0.0, 0.0);
    let (mut best_f1, mut best_threshold) = (0.0, 1.0);
    let mut curve = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let threshold = sorted[i].1;
        while i < sorted.len() && sorted[i].1 == threshold {
            if sorted[i].0 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = if positives > 0 { tp as f64 / positives as f64 } else { 0.0 };
        ap += (recall - last_recall) * precision;
        last_recall = recall;
        let f1 = if tp > 0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        // On ties the lowest threshold, as scikit-learn's `argmax` over its ascending thresholds.
        if f1 >= best_f1 {
            best_f1 = f1;
            best_threshold = threshold;
        }
        curve.push([recall, precision]);
    }
    Some(Ranking {
        scored_items: sorted.len(),
        positives,
        auprc: PERCENT * ap,
        best_f1: PERCENT * best_f1,
        best_threshold,
        curve: thin(curve),
    })
}

/// At most `CURVE_POINTS` of a curve, evenly spaced, the first and last kept.
fn thin(curve: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    if curve.len() <= CURVE_POINTS {
        return curve;
    }
    let last = curve.len() - 1;
    (0..CURVE_POINTS).map(|k| curve[k * last / (CURVE_POINTS - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_move_together_and_the_best_threshold_is_found() {
        // Scores 0.9 (+), 0.8 (-), 0.8 (+), 0.1 (-): thresholds 0.9, 0.8, 0.1.
        let r = rank(&[(true, 0.9), (false, 0.8), (true, 0.8), (false, 0.1)]).unwrap();
        assert_eq!(r.curve, vec![[0.5, 1.0], [1.0, 2.0 / 3.0], [1.0, 0.5]]);
        // AP = 0.5 * 1 + 0.5 * 2/3.
        assert!((r.auprc - PERCENT * (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // F1 at 0.9: 2/3; at 0.8: 0.8.
        assert!((r.best_f1 - 80.0).abs() < 1e-12);
        assert_eq!(r.best_threshold, 0.8);
        assert_eq!(rank(&[]), None);
    }

    /// scikit-learn's figures (tests/fixtures/make_ranking_golden.py) on seeded random scores with
    /// ties, all-negative and all-positive cases among them.
    #[test]
    fn average_precision_and_best_f1_agree_with_scikit_learn() {
        #[derive(serde::Deserialize)]
        struct Case {
            labels: Vec<bool>,
            scores: Vec<f64>,
            average_precision: f64,
            best_f1: f64,
            best_threshold: f64,
        }
        #[derive(serde::Deserialize)]
        struct Golden {
            cases: Vec<Case>,
        }
        /// Sums of a few thousand terms in another order.
        const TOLERANCE: f64 = 1e-9;
        let golden: Golden = serde_json::from_str(include_str!("../../tests/fixtures/ranking_golden.json")).unwrap();
        assert!(golden.cases.len() >= 7);
        for (i, case) in golden.cases.iter().enumerate() {
            let pairs: Vec<(bool, f64)> = case.labels.iter().copied().zip(case.scores.iter().copied()).collect();
            let r = rank(&pairs).unwrap();
            assert!(
                (r.auprc - PERCENT * case.average_precision).abs() < TOLERANCE,
                "case {i}: AP {} vs {}",
                r.auprc,
                case.average_precision
            );
            assert!(
                (r.best_f1 - PERCENT * case.best_f1).abs() < TOLERANCE,
                "case {i}: best F1 {} vs {}",
                r.best_f1,
                case.best_f1
            );
            assert_eq!(r.best_threshold, case.best_threshold, "case {i}: best threshold");
        }
    }

    #[test]
    fn long_curves_are_thinned_to_their_ends_and_evenly_between() {
        let pairs: Vec<(bool, f64)> = (0..1000).map(|i| (i % 3 == 0, i as f64 / 1000.0)).collect();
        let r = rank(&pairs).unwrap();
        assert_eq!(r.curve.len(), CURVE_POINTS);
        assert_eq!(r.curve.last(), Some(&[1.0, 334.0 / 1000.0]));
    }
}
