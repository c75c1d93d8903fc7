//! The ladder planner: pure functions from the source's format (and, once the uplink probe
//! has measured it, the source's delivered bitrate) and the configured rung catalogue to the
//! renditions a stream is transcoded into. The stream actor calls them; `transcode` builds
//! the pipeline from the resulting `LadderPlan`.
//!
//! `plan()` (format only). A rung's size is its lines on the picture's short side, as
//! viewers and players name them: a catalogue `height` of 720 gives 1280x720 for a
//! landscape source and 720x1280 for a portrait one (as phones send), so a portrait stream
//! gets the same detail per bit as a landscape one. Never upscale (a rung larger than the
//! source's short side is left out; a source smaller than every rung gets one rung at its
//! own size, at the smallest rung's bitrate scaled down by pixel count); the long side keeps
//! the source's display aspect ratio, rounded to even numbers; the frame rate is the
//! source's (rungs never raise it). Rung ids are `{short side}p`.
//!
//! `plan_for()` (bandwidth-aware, `bandwidth.rs`) starts from `plan()` and then:
//! - each rung keeps at most its catalogue bitrate;
//! - the top rung stays at or below 90% of the source's delivered video bitrate: re-encoding
//!   above what the source carries adds bits, not picture. The tallest rung that fits, or
//!   that fits once capped to the ceiling while keeping at least 60% of its catalogue
//!   bitrate, tops the ladder; taller rungs are dropped (a shorter picture spends so few
//!   bits better). The lowest rung always stays, capped if needed, so a poor source still
//!   gets one rung;
//! - at most `max_rungs` rungs (the encoder's budget): the lowest rung always stays (weak
//!   viewers), then the top, then the middle rungs nearest to even log-bitrate steps between
//!   them. A budget of one keeps only the lowest rung: reach before quality;
//! - with no estimate yet, the provisional plan is `plan()` cut to the budget.
//!
//! `Replanner` (`replan.rs`) decides when a running stream switches to a new plan: only when
//! the candidate differs and the delivered bitrate has stayed outside ±ratio (25%) of the
//! bitrate the current plan was made for, on one side, for the whole hold (3 s).

mod bandwidth;
pub mod config;
mod replan;

pub use bandwidth::{PlanInput, TOP_RUNG_SHARE, plan_for};
pub use replan::{DEFAULT_HYSTERESIS_HOLD, DEFAULT_HYSTERESIS_RATIO, Hysteresis, Replanner};

use crate::ladder::config::RungConfig;
use crate::media::RenditionId;

/// What the planner knows about the source picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFormat {
    pub width: u32,
    pub height: u32,
}

/// One video rendition to produce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rung {
    pub id: RenditionId,
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
}

/// The video renditions of one stream, best first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LadderPlan {
    pub rungs: Vec<Rung>,
}

/// Nearest even number, at least 2 (encoders need even 4:2:0 dimensions).
fn nearest_even(numerator: u64, denominator: u64) -> u32 {
    (((numerator + denominator) / (2 * denominator)) * 2).max(2) as u32
}

impl SourceFormat {
    /// Lines on the picture's short side (the height of a landscape picture).
    pub fn short_side(&self) -> u32 {
        self.width.min(self.height)
    }

    fn is_portrait(&self) -> bool {
        self.height > self.width
    }
}

/// A rung `lines` lines on its short side (even, at most the source's short side).
fn rung(source: SourceFormat, lines: u32, bitrate_kbps: u32) -> Rung {
    let (short, long) = if source.is_portrait() { (source.width, source.height) } else { (source.height, source.width) };
    let long_side = nearest_even(u64::from(long) * u64::from(lines), u64::from(short)).min(long.max(2) & !1);
    let (width, height) = if source.is_portrait() { (lines, long_side) } else { (long_side, lines) };
    Rung {
        id: RenditionId::parse(&format!("{lines}p")).expect("digits and 'p' form a valid id"),
        width,
        height,
        bitrate_kbps,
    }
}

impl Rung {
    /// Lines on the rung's short side (what its id names).
    pub fn lines(&self) -> u32 {
        self.width.min(self.height)
    }
}

/// Plans the ladder for a source. `catalogue` must not be empty (config validation checks).
pub fn plan(source: SourceFormat, catalogue: &[RungConfig]) -> LadderPlan {
    let short = source.short_side();
    let mut rungs: Vec<Rung> = catalogue
        .iter()
        .filter(|r| r.height <= short)
        .map(|r| rung(source, r.height, r.bitrate_kbps))
        .collect();
    rungs.sort_by_key(|r| std::cmp::Reverse(r.lines()));
    rungs.dedup_by_key(|r| r.lines());
    if rungs.is_empty() {
        let smallest = catalogue.iter().min_by_key(|r| r.height).expect("catalogue is not empty");
        let scale = f64::from(short).powi(2) / f64::from(smallest.height).powi(2);
        let bitrate = ((f64::from(smallest.bitrate_kbps) * scale) as u32).max(100);
        rungs.push(rung(source, (short & !1).max(2), bitrate));
    }
    LadderPlan { rungs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::config::default_rungs;
    use proptest::prelude::*;

    fn heights(plan: &LadderPlan) -> Vec<u32> {
        plan.rungs.iter().map(|r| r.height).collect()
    }

    #[test]
    fn a_720p_source_gets_720_480_360() {
        let plan = plan(SourceFormat { width: 1280, height: 720 }, &default_rungs());
        assert_eq!(heights(&plan), [720, 480, 360]);
        assert_eq!((plan.rungs[0].width, plan.rungs[1].width, plan.rungs[2].width), (1280, 854, 640));
        assert_eq!(plan.rungs[0].id.as_str(), "720p");
    }

    #[test]
    fn a_1080p_source_gets_the_whole_catalogue() {
        let plan = plan(SourceFormat { width: 1920, height: 1080 }, &default_rungs());
        assert_eq!(heights(&plan), [1080, 720, 480, 360]);
    }

    #[test]
    fn portrait_sources_get_rungs_by_their_short_side() {
        let sizes = |w, h| -> Vec<(u32, u32, String)> {
            plan(SourceFormat { width: w, height: h }, &default_rungs()).rungs.iter().map(|r| (r.width, r.height, r.id.to_string())).collect()
        };
        let owned = |list: &[(u32, u32, &str)]| -> Vec<(u32, u32, String)> { list.iter().map(|(w, h, id)| (*w, *h, id.to_string())).collect() };
        assert_eq!(sizes(720, 1280), owned(&[(720, 1280, "720p"), (480, 854, "480p"), (360, 640, "360p")]));
        assert_eq!(sizes(1080, 1920), owned(&[(1080, 1920, "1080p"), (720, 1280, "720p"), (480, 854, "480p"), (360, 640, "360p")]));
        // A square picture is landscape's limit: both sides the rung's lines.
        assert_eq!(sizes(480, 480), owned(&[(480, 480, "480p"), (360, 360, "360p")]));
    }

    #[test]
    fn a_tiny_source_keeps_its_own_size() {
        let plan = plan(SourceFormat { width: 320, height: 240 }, &default_rungs());
        assert_eq!(heights(&plan), [240]);
        assert_eq!(plan.rungs[0].width, 320);
        assert!(plan.rungs[0].bitrate_kbps < 800);
    }

    proptest! {
        #[test]
        fn never_upscales_and_keeps_dimensions_even(w in 16u32..8000, h in 16u32..4400) {
            let plan = plan(SourceFormat { width: w, height: h }, &default_rungs());
            prop_assert!(!plan.rungs.is_empty());
            for r in &plan.rungs {
                prop_assert!(r.height <= h.max(2) && r.width <= w.max(2));
                prop_assert!(r.width % 2 == 0 && r.height % 2 == 0);
                // The picture keeps its orientation.
                prop_assert!((r.width >= r.height) == (w >= h) || r.width == r.height);
            }
            prop_assert!(plan.rungs.windows(2).all(|p| p[0].lines() > p[1].lines()));
        }
    }
}
