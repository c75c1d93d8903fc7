//! The ladder's configuration (`[ladder]`): how the plan follows the broadcaster's measured
//! bitrate (first measurement, hysteresis), with its defaults and checks, and the rung
//! catalogue the planner picks from (its entries, [`RungConfig`], are listed and checked
//! under `[[transcode.rungs]]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::section::InvalidKey;

/// One entry of the ladder catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    /// Lines on the picture's short side (the height of a landscape picture, the width of a
    /// portrait one); the long side follows the source's aspect ratio.
    pub height: u32,
    /// Target video bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

/// 1080p / 720p / 480p / 360p at the bitrates common live platforms recommend for 30 fps.
pub fn default_rungs() -> Vec<RungConfig> {
    [(1080, 5000), (720, 2800), (480, 1400), (360, 800)]
        .into_iter()
        .map(|(height, bitrate_kbps)| RungConfig { height, bitrate_kbps })
        .collect()
}

pub const DEFAULT_INITIAL_MEASUREMENT: Duration = Duration::from_secs(2);

/// How the ladder follows the broadcaster's measured bitrate (src/ladder, src/probe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LadderConfig {
    /// How long a publish is measured before the first measured plan; segments are produced
    /// from a provisional ladder meanwhile.
    #[serde(with = "humantime_serde")]
    pub initial_measurement: Duration,
    /// Half-width of the band, as a share of the bitrate a plan was made for, inside which
    /// a changing source bitrate does not re-plan.
    pub hysteresis_ratio: f64,
    /// How long the bitrate must stay outside the band before the ladder follows.
    #[serde(with = "humantime_serde")]
    pub hysteresis_hold: Duration,
}

impl LadderConfig {
    /// Checks every field; the error names the key (`ladder.{key}`).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if !(0.05..=0.9).contains(&self.hysteresis_ratio) {
            return Err(InvalidKey::new("ladder", "hysteresis_ratio", "must be within 0.05..=0.9"));
        }
        Ok(())
    }
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            initial_measurement: DEFAULT_INITIAL_MEASUREMENT,
            hysteresis_ratio: crate::ladder::DEFAULT_HYSTERESIS_RATIO,
            hysteresis_hold: crate::ladder::DEFAULT_HYSTERESIS_HOLD,
        }
    }
}

