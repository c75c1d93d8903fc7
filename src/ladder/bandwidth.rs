//! The bandwidth-aware planner: `plan()`'s ladder, fitted under what the source delivers and
//! cut to the encoder's budget. Pure; the stream actor calls it with the uplink probe's
//! measurement (through `Replanner` so that a noisy estimate does not restart encoders).
//! The policy is stated in the `ladder` module header.

use super::{LadderPlan, Rung, SourceFormat, plan};
use crate::ladder::config::RungConfig;

/// The top rung gets at most this share of the source's delivered bitrate: re-encoding at
/// (or above) the source's own rate spends bits without adding picture.
pub const TOP_RUNG_SHARE: f64 = 0.9;

/// Everything `plan_for` decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput<'a> {
    /// The source picture (from its AVC decoder configuration).
    pub source: SourceFormat,
    /// The source's video bitrate as delivered, in bit/s: the probe's
    /// `UplinkEstimate::source_video_bps`. `None` (or not a positive number) before the
    /// probe has measured it: the plan is then provisional.
    pub delivered_bps: Option<f64>,
    /// The rung catalogue; must not be empty (config validation checks).
    pub catalogue: &'a [RungConfig],
    /// The most renditions the encoder can run for this stream (x264 on 2 cores: 4; a
    /// hardware backend: its free sessions). 0 is read as 1.
    pub max_rungs: usize,
}

/// Plans the ladder for a source whose delivered bitrate may be known.
pub fn plan_for(input: &PlanInput) -> LadderPlan {
    let base = plan(input.source, input.catalogue).rungs;
    let delivered = input.delivered_bps.filter(|d| d.is_finite() && *d > 0.0);
    let fitted = match delivered {
        Some(bps) => fit_under(base, bps * TOP_RUNG_SHARE / 1000.0),
        None => base,
    };
    LadderPlan { rungs: within_budget(fitted, input.max_rungs.max(1)) }
}

/// A rung may be capped down to this share of its catalogue bitrate and still top the
/// ladder (a 720p source delivering 2.5 Mb/s keeps a 720p rung at 2.25 Mb/s); further down,
/// a shorter picture spends the bits better and the rung is dropped.
pub const MIN_CAPPED_SHARE: f64 = 0.6;

/// Fits a best-first ladder under `ceiling_kbps`. The tallest rung that fits, or that fits
/// once capped to the ceiling without losing more than `1 - MIN_CAPPED_SHARE` of its
/// bitrate, tops the ladder; taller ones are dropped, and so is any shorter one whose
/// bitrate is not below the top's. The lowest rung always stays, capped to the ceiling if
/// it is over (never below 1 kbit/s): a poor source still gets a ladder, and the smallest
/// picture makes the most of few bits.
fn fit_under(mut rungs: Vec<Rung>, ceiling_kbps: f64) -> Vec<Rung> {
    let Some(mut lowest) = rungs.pop() else {
        return rungs;
    };
    // `as` saturates, so an absurd ceiling cannot wrap.
    let cap = (ceiling_kbps.floor() as u32).max(1);
    let mut kept: Vec<Rung> = Vec::new();
    for mut rung in rungs {
        let rate = f64::from(rung.bitrate_kbps);
        match kept.first() {
            None if rate <= ceiling_kbps => kept.push(rung),
            None if ceiling_kbps >= rate * MIN_CAPPED_SHARE => {
                rung.bitrate_kbps = cap;
                kept.push(rung);
            }
            None => {}
            Some(top) if rung.bitrate_kbps < top.bitrate_kbps => kept.push(rung),
            Some(_) => {}
        }
    }
    lowest.bitrate_kbps = lowest.bitrate_kbps.min(cap);
    if kept.last().is_some_and(|r| r.bitrate_kbps <= lowest.bitrate_kbps) {
        kept.pop();
    }
    kept.push(lowest);
    kept
}

/// Cuts a best-first ladder to `budget` rungs. The lowest rung always stays (weak viewers
/// need it); with room for two or more the top stays too, and the middle rungs kept are the
/// ones nearest to even steps in log-bitrate between them, so the ladder keeps even
/// switching steps. Ties go to the taller rung.
fn within_budget(rungs: Vec<Rung>, budget: usize) -> Vec<Rung> {
    let n = rungs.len();
    if n <= budget {
        return rungs;
    }
    if budget == 1 {
        return rungs.into_iter().last().into_iter().collect();
    }
    let log_rate = |r: &Rung| f64::from(r.bitrate_kbps.max(1)).ln();
    let (top, bottom) = (log_rate(&rungs[0]), log_rate(&rungs[n - 1]));
    let mut keep = vec![0, n - 1];
    let mut middle: Vec<usize> = (1..n - 1).collect();
    for step in 1..budget - 1 {
        let target = top + (bottom - top) * step as f64 / (budget - 1) as f64;
        let distance = |i: usize| (log_rate(&rungs[i]) - target).abs();
        // `middle` holds n - 2 >= budget - 1 > step - 1 rungs, so one is left to pick.
        let Some(pick) = (0..middle.len()).min_by(|&a, &b| distance(middle[a]).total_cmp(&distance(middle[b])))
        else {
            break;
        };
        keep.push(middle.remove(pick));
    }
    keep.sort_unstable();
    keep.into_iter().map(|i| rungs[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::config::default_rungs;
    use proptest::prelude::*;

    const HD: SourceFormat = SourceFormat { width: 1920, height: 1080 };

    fn heights_and_rates(plan: &LadderPlan) -> Vec<(u32, u32)> {
        plan.rungs.iter().map(|r| (r.height, r.bitrate_kbps)).collect()
    }

    fn input(catalogue: &[RungConfig], delivered_bps: Option<f64>, max_rungs: usize) -> PlanInput<'_> {
        PlanInput { source: HD, delivered_bps, catalogue, max_rungs }
    }

    #[test]
    fn without_an_estimate_the_plan_is_todays_within_the_budget() {
        let rungs = default_rungs();
        assert_eq!(plan_for(&input(&rungs, None, 4)), plan(HD, &rungs));
        assert_eq!(plan_for(&input(&rungs, Some(f64::NAN), 4)), plan(HD, &rungs));
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, None, 2))), [(1080, 5000), (360, 800)]);
    }

    #[test]
    fn rungs_far_above_the_source_bitrate_are_dropped_near_ones_capped() {
        let rungs = default_rungs();
        // 4 Mbit/s delivered: the ceiling is 3.6 Mbit/s, 72% of 1080p's 5 Mbit/s: capped.
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(4e6), 4))), [(1080, 3600), (720, 2800), (480, 1400), (360, 800)]);
        // 2.5 Mbit/s: ceiling 2.25 Mbit/s, 45% of 1080p (dropped), 80% of 720p (capped).
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(2.5e6), 4))), [(720, 2250), (480, 1400), (360, 800)]);
        // 1.5 Mbit/s: ceiling 1.35 Mbit/s; 480p (1.4 Mbit/s) is the tallest worth capping.
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(1.5e6), 4))), [(480, 1350), (360, 800)]);
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(6e6), 4))).len(), 4);
    }

    #[test]
    fn a_source_below_every_rung_keeps_the_lowest_capped() {
        let rungs = default_rungs();
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(700e3), 4))), [(360, 630)]);
    }

    #[test]
    fn the_budget_keeps_top_and_bottom_and_the_most_even_middle() {
        let rungs = default_rungs();
        let three = plan_for(&input(&rungs, Some(10e6), 3));
        // Even log steps from 5000 to 800 aim at 2000: 2800 is nearer than 1400.
        assert_eq!(heights_and_rates(&three), [(1080, 5000), (720, 2800), (360, 800)]);
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(10e6), 1))), [(360, 800)]);
        assert_eq!(heights_and_rates(&plan_for(&input(&rungs, Some(10e6), 0))), [(360, 800)]);
    }

    fn catalogue() -> impl Strategy<Value = Vec<RungConfig>> {
        prop::collection::vec((45u32..=2160, 100u32..=20_000), 1..7).prop_map(|rungs| {
            rungs.into_iter().map(|(half, bitrate_kbps)| RungConfig { height: half * 2, bitrate_kbps }).collect()
        })
    }

    fn source() -> impl Strategy<Value = SourceFormat> {
        (16u32..8000, 16u32..4400).prop_map(|(width, height)| SourceFormat { width, height })
    }

    proptest! {
        #[test]
        fn never_upscales(
            source in source(),
            catalogue in catalogue(),
            delivered in prop::option::of(10e3f64..60e6),
            budget in 0usize..6,
        ) {
            let plan = plan_for(&PlanInput { source, delivered_bps: delivered, catalogue: &catalogue, max_rungs: budget });
            prop_assert!(!plan.rungs.is_empty());
            for r in &plan.rungs {
                prop_assert!(r.height <= source.height.max(2) && r.width <= source.width.max(2));
                prop_assert!(r.width % 2 == 0 && r.height % 2 == 0);
            }
            prop_assert!(plan.rungs.windows(2).all(|p| p[0].lines() > p[1].lines()));
        }

        #[test]
        fn more_bandwidth_never_gives_a_lower_top_or_fewer_rungs(
            source in source(),
            catalogue in catalogue(),
            a in 10e3f64..60e6,
            b in 10e3f64..60e6,
            budget in 1usize..6,
        ) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let at = |bps| plan_for(&PlanInput { source, delivered_bps: Some(bps), catalogue: &catalogue, max_rungs: budget });
            let (poor, rich) = (at(low), at(high));
            prop_assert!(rich.rungs[0].lines() >= poor.rungs[0].lines(), "{poor:?} vs {rich:?}");
            prop_assert!(rich.rungs.len() >= poor.rungs.len(), "{poor:?} vs {rich:?}");
        }

        #[test]
        fn respects_the_budget_the_catalogue_and_the_source_bitrate(
            source in source(),
            catalogue in catalogue(),
            delivered in 10e3f64..60e6,
            budget in 0usize..6,
        ) {
            let fitted = plan_for(&PlanInput { source, delivered_bps: Some(delivered), catalogue: &catalogue, max_rungs: budget });
            prop_assert!(fitted.rungs.len() <= budget.max(1));
            let today = plan(source, &catalogue);
            for r in &fitted.rungs {
                let listed = today.rungs.iter().find(|t| t.height == r.height);
                prop_assert!(listed.is_some_and(|t| r.bitrate_kbps <= t.bitrate_kbps), "{r:?} not within {today:?}");
                prop_assert!(f64::from(r.bitrate_kbps) * 1000.0 <= TOP_RUNG_SHARE * delivered, "{r:?} over {delivered}");
            }
            // The lowest rung today is always there for weak viewers.
            prop_assert_eq!(fitted.rungs.last().map(|r| r.height), today.rungs.last().map(|r| r.height));
        }
    }
}
