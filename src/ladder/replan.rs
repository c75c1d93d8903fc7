//! Re-planning with hysteresis: decides when a stream's ladder follows a change in what its
//! source delivers. Restarting encoders costs viewers a switch and the appliance a GOP of
//! work, so a brief dip changes nothing. A pure state machine: the stream actor calls
//! `observe` on every probe estimate with the ladder it runs and `plan_for`'s candidate; time
//! comes in as an argument.

use std::time::Duration;

use super::LadderPlan;

/// Default band around the planned-for bitrate inside which nothing changes.
pub const DEFAULT_HYSTERESIS_RATIO: f64 = 0.25;
/// Default time the delivered bitrate must stay outside the band.
pub const DEFAULT_HYSTERESIS_HOLD: Duration = Duration::from_secs(3);

/// How far and how long the delivered bitrate must move before the ladder follows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Hysteresis {
    /// Half-width of the band, as a share of the bitrate the current plan was made for.
    pub ratio: f64,
    /// How long the delivered bitrate must stay outside the band, on the same side.
    pub hold: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { ratio: DEFAULT_HYSTERESIS_RATIO, hold: DEFAULT_HYSTERESIS_HOLD }
    }
}

/// Where the delivered bitrate sits against the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Below,
    Above,
    /// The current plan was made without an estimate (provisional): any estimate is news.
    Unplanned,
}

/// The re-planning state of one stream.
#[derive(Debug, Clone)]
pub struct Replanner {
    hysteresis: Hysteresis,
    /// The delivered bitrate the current plan was made for; `None` while it is provisional.
    planned_for_bps: Option<f64>,
    /// Since when, and on which side, the delivered bitrate has been outside the band.
    outside: Option<(Duration, Side)>,
}

impl Replanner {
    /// A replanner whose current plan is provisional (made before any estimate).
    pub fn new(hysteresis: Hysteresis) -> Self {
        Self { hysteresis, planned_for_bps: None, outside: None }
    }

    /// Records that the current plan was made for `bps` (a plan the caller made itself, e.g.
    /// at start-up from a first estimate).
    pub fn set_planned_for(&mut self, bps: f64) {
        self.planned_for_bps = Some(bps).filter(|b| b.is_finite() && *b > 0.0);
        self.outside = None;
    }

    /// The delivered bitrate the current plan was made for.
    pub fn planned_for(&self) -> Option<f64> {
        self.planned_for_bps
    }

    /// Returns the plan to switch to, if any: `candidate`, once `delivered_bps` has stayed
    /// outside ±ratio of the planned-for bitrate, on one side, for `hold`, and only if the
    /// candidate differs from `current`. When the hold passes but the candidate is the
    /// current plan, that plan is taken as made for the new bitrate and the band moves
    /// there. A value that is not a positive number is no information: it resets the timer.
    pub fn observe(
        &mut self,
        now: Duration,
        current: &LadderPlan,
        candidate: &LadderPlan,
        delivered_bps: f64,
    ) -> Option<LadderPlan> {
        if !(delivered_bps.is_finite() && delivered_bps > 0.0) {
            self.outside = None;
            return None;
        }
        let side = match self.planned_for_bps {
            None => Side::Unplanned,
            Some(planned) if delivered_bps < planned * (1.0 - self.hysteresis.ratio) => Side::Below,
            Some(planned) if delivered_bps > planned * (1.0 + self.hysteresis.ratio) => Side::Above,
            Some(_) => {
                self.outside = None;
                return None;
            }
        };
        let since = match self.outside {
            Some((since, was)) if was == side => since,
            _ => {
                self.outside = Some((now, side));
                now
            }
        };
        if now.saturating_sub(since) < self.hysteresis.hold {
            return None;
        }
        self.planned_for_bps = Some(delivered_bps);
        self.outside = None;
        (candidate != current).then(|| candidate.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::config::default_rungs;
    use crate::ladder::{PlanInput, SourceFormat, plan_for};
    use proptest::prelude::*;

    const HD: SourceFormat = SourceFormat { width: 1920, height: 1080 };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(bps: f64) -> LadderPlan {
        plan_for(&PlanInput { source: HD, delivered_bps: Some(bps), catalogue: &default_rungs(), max_rungs: 4 })
    }

    fn planned(bps: f64) -> Replanner {
        let mut replanner = Replanner::new(Hysteresis::default());
        replanner.set_planned_for(bps);
        replanner
    }

    #[test]
    fn a_brief_dip_changes_nothing_and_does_not_accumulate() {
        let mut r = planned(8e6);
        let (current, low) = (at(8e6), at(2e6));
        assert_ne!(current, low);
        for t in (0..2_900).step_by(100) {
            assert_eq!(r.observe(ms(t), &current, &low, 2e6), None);
        }
        assert_eq!(r.observe(ms(3_000), &current, &current, 8e6), None, "back inside the band");
        for t in (3_100..6_000).step_by(100) {
            assert_eq!(r.observe(ms(t), &current, &low, 2e6), None, "a second dip starts over at {t}");
        }
    }

    #[test]
    fn a_sustained_drop_replans_once_after_the_hold() {
        let mut r = planned(8e6);
        let mut current = at(8e6);
        let mut switches = Vec::new();
        for t in (0..10_000).step_by(100) {
            let candidate = at(2e6);
            if let Some(next) = r.observe(ms(t), &current, &candidate, 2e6) {
                switches.push(t);
                current = next;
            }
        }
        assert_eq!(switches, [3_000]);
        assert_eq!(current, at(2e6));
        assert_eq!(r.planned_for(), Some(2e6));
    }

    #[test]
    fn the_provisional_plan_is_replaced_after_the_hold() {
        let mut r = Replanner::new(Hysteresis::default());
        let provisional = plan_for(&PlanInput { source: HD, delivered_bps: None, catalogue: &default_rungs(), max_rungs: 4 });
        assert_eq!(r.observe(ms(0), &provisional, &at(3e6), 3e6), None);
        assert_eq!(r.observe(ms(3_000), &provisional, &at(3e6), 3e6), Some(at(3e6)));
    }

    #[test]
    fn crossing_from_one_side_to_the_other_restarts_the_hold() {
        let mut r = planned(4e6);
        let current = at(4e6);
        assert_eq!(r.observe(ms(0), &current, &at(1e6), 1e6), None);
        assert_eq!(r.observe(ms(2_000), &current, &at(9e6), 9e6), None);
        assert_eq!(r.observe(ms(4_000), &current, &at(9e6), 9e6), None, "only 2 s above");
        assert_eq!(r.observe(ms(5_000), &current, &at(9e6), 9e6), Some(at(9e6)));
    }

    #[test]
    fn an_unchanged_candidate_moves_the_band_instead() {
        let mut r = planned(20e6);
        let current = at(20e6);
        // 12 Mbit/s is outside the band but needs the same ladder.
        assert_eq!(at(12e6), current);
        assert_eq!(r.observe(ms(0), &current, &current, 12e6), None);
        assert_eq!(r.observe(ms(3_000), &current, &current, 12e6), None);
        assert_eq!(r.planned_for(), Some(12e6));
    }

    fn two_plans() -> (LadderPlan, LadderPlan) {
        (at(8e6), at(1e6))
    }

    proptest! {
        #[test]
        fn noise_inside_half_the_band_never_replans(
            planned_bps in 200e3f64..50e6,
            ratio in 0.05f64..0.5,
            noise in prop::collection::vec((-1.0f64..=1.0, 1u64..2_000), 1..200),
        ) {
            let hysteresis = Hysteresis { ratio, hold: Duration::from_secs(3) };
            let mut r = Replanner::new(hysteresis);
            r.set_planned_for(planned_bps);
            let (current, candidate) = two_plans();
            let mut now = Duration::ZERO;
            for (offset, step_ms) in noise {
                now += Duration::from_millis(step_ms);
                let delivered = planned_bps * (1.0 + offset * ratio / 2.0);
                prop_assert_eq!(r.observe(now, &current, &candidate, delivered), None);
            }
        }

        #[test]
        fn a_persistent_move_outside_the_band_replans_exactly_once_after_the_hold(
            planned_bps in 200e3f64..50e6,
            ratio in 0.05f64..0.5,
            beyond in 1.05f64..4.0,
            down in any::<bool>(),
            hold_ms in 500u64..10_000,
            steps in prop::collection::vec(1u64..700, 10..200),
        ) {
            let hysteresis = Hysteresis { ratio, hold: Duration::from_millis(hold_ms) };
            let mut r = Replanner::new(hysteresis);
            r.set_planned_for(planned_bps);
            let (mut current, candidate) = two_plans();
            let delivered = if down {
                planned_bps * (1.0 - ratio) / beyond
            } else {
                planned_bps * (1.0 + ratio) * beyond
            };
            let start = Duration::from_secs(1);
            let mut now = start;
            let mut switches = Vec::new();
            for step in steps {
                if let Some(next) = r.observe(now, &current, &candidate, delivered) {
                    switches.push(now);
                    current = next;
                }
                now += Duration::from_millis(step);
            }
            let end = now;
            let hold = Duration::from_millis(hold_ms);
            if end - start > hold + Duration::from_millis(700) {
                prop_assert_eq!(switches.len(), 1, "{:?}", switches);
                // The first observation at or after the hold has passed.
                prop_assert!(switches[0] >= start + hold);
                prop_assert!(switches[0] < start + hold + Duration::from_millis(700));
                prop_assert_eq!(&current, &candidate);
            } else {
                prop_assert!(switches.len() <= 1);
            }
        }
    }
}
