//! Targets stated as a share of a gap: "close at least half of the distance between
//! a reference path (the kernel's iptables path, host-gw, Flannel) and the ceiling
//! (the node itself, node to node)". A gap is graded only where the ceiling is
//! ahead of the reference by more than their rounds moved: on a fast machine all of
//! them can sit at the same copy ceiling, and a ratio of two differences of noise
//! grades anything ("155% of the gap closed" for a gap of 0.06 Gbit/s; a reference
//! ahead of the ceiling asked for more than the ceiling).

use super::report::{self, DpSample, DpSummary};

/// The ceiling is not ahead of the reference by more than `noise` (half the range
/// their rounds moved over), in the measure's own unit.
#[derive(Debug, PartialEq)]
pub struct NoGap {
    pub ceiling: f64,
    pub reference: f64,
    pub noise: f64,
}

/// The share of the reference-to-ceiling gap that contender `ours` closes on `f` (1 =
/// as good as the ceiling, 0 = as the reference, < 0 = worse), from the run's
/// medians, or `NoGap`.
pub fn closed(
    samples: &[DpSample],
    summary: &[DpSummary],
    [ours, reference, ceiling]: [&str; 3],
    f: fn(&DpSummary) -> f64,
    lower_is_better: bool,
) -> Result<f64, NoGap> {
    let get = |c: &str| {
        summary
            .iter()
            .find(|s| s.contender == c)
            .map_or(f64::NAN, f)
    };
    let noise = spread(samples, reference, f).max(spread(samples, ceiling, f));
    share(
        get(ours),
        get(reference),
        get(ceiling),
        noise,
        lower_is_better,
    )
}

/// [`closed`] on plain figures.
pub fn share(
    ours: f64,
    reference: f64,
    ceiling: f64,
    noise: f64,
    lower_is_better: bool,
) -> Result<f64, NoGap> {
    let gap = if lower_is_better {
        reference - ceiling
    } else {
        ceiling - reference
    };
    if gap > noise || !gap.is_finite() {
        Ok((ours - reference) / (ceiling - reference))
    } else {
        Err(NoGap {
            ceiling,
            reference,
            noise,
        })
    }
}

/// Half the range of contender `c`'s per-round values of `f` (0 with fewer than two
/// rounds).
fn spread(samples: &[DpSample], c: &str, f: fn(&DpSummary) -> f64) -> f64 {
    let rounds: Vec<f64> = samples
        .iter()
        .filter(|s| s.contender == c)
        .map(|s| f(&report::summarize(s.contender, std::slice::from_ref(s))))
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = rounds
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if rounds.len() < 2 {
        0.0
    } else {
        (hi - lo) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_graded_only_where_the_ceiling_is_ahead_beyond_the_noise() {
        assert_eq!(share(25.0, 20.0, 30.0, 1.0, false), Ok(0.5));
        assert_eq!(
            share(16.4, 18.1, 15.1, 0.6, true).map(|g| (g * 100.0).round()),
            Ok(57.0)
        );
        // The ceiling below the reference (40.35 vs 41.39): no gap, instead of
        // "117% closed".
        assert_eq!(
            share(40.17, 41.39, 40.35, 0.0, false),
            Err(NoGap {
                ceiling: 40.35,
                reference: 41.39,
                noise: 0.0
            })
        );
        // Ahead by 0.06 Gbit/s while the rounds moved by 2: no gap either.
        assert!(share(39.84, 39.76, 39.82, 2.0, false).is_err());
        // host-gw above node to node (1.044x): "half its gap" would ask for more
        // than the ceiling; there is no gap.
        assert!(share(39.70, 39.83, 38.17, 0.5, false).is_err());
    }
}
