//! The transcode section (`[transcode]`): backends in preference order, fallback, the
//! admission budgets, the x264 preset, the audio bitrate and the rung catalogue, with their
//! defaults and checks.

use serde::{Deserialize, Serialize};

use super::admission::OverBudget;
use super::backend::Backend;
use super::capability::Fallback;
use crate::ladder::config::{default_rungs, RungConfig};
use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "transcode";

pub const DEFAULT_X264_PRESET: &str = "veryfast";
pub const DEFAULT_AUDIO_BITRATE: u32 = 128_000;
/// The x264 speed presets `x264_preset` may name.
pub const X264_PRESETS: &[&str] = &[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Transcode backends in order of preference: `nvenc`, `nvdec-x264` (NVIDIA decode
    /// and scaling, x264 encoding), `vaapi`, `software`. A backend left out is never used.
    #[serde(alias = "encoders")]
    pub backends: Vec<Backend>,
    /// `allow`: a stream moves to the next usable backend when one is absent or its
    /// budget is spent (logged, and shown in the stream's status); `refuse`: only the
    /// first backend, and the appliance does not start without it.
    pub fallback: Fallback,
    /// When no backend has room for a stream's whole ladder: `drop-rungs` (from the top;
    /// the lowest rung always stays) or `refuse` the stream.
    pub over_budget: OverBudget,
    /// Directory whose `<backend>.pipeline` files replace the built-in templates.
    pub pipelines_dir: Option<std::path::PathBuf>,
    /// NVENC sessions per GPU; default 8 on GeForce cards (their driver's system-wide cap),
    /// 32 on others.
    pub nvenc_sessions_per_gpu: Option<u32>,
    /// NVDEC sessions (one per stream) per GPU.
    pub nvdec_sessions_per_gpu: u32,
    /// VA-API encoder sessions per render node.
    pub vaapi_sessions: u32,
    /// Cores the CPU encoders (software and nvdec-x264) may use; default 85% of this
    /// process's share: its cgroup's CPU quota (systemd `CPUQuota=`, a container's or pod's
    /// CPU limit) or the CPUs it may run on, the smaller.
    pub cpu_budget: Option<f64>,
    /// Scale the CPU cost model by this process's measured CPU use per admitted ladder
    /// (smoothed, once the ladders have run unchanged for a few seconds); `false` keeps the
    /// model's fixed figures.
    pub calibrate_cost: bool,
    /// x264 `speed-preset` for the software backend.
    pub x264_preset: String,
    /// Bitrate of the AAC rendition when the source audio has to be re-encoded (bit/s).
    pub audio_bitrate: u32,
    /// Rung catalogue, best first. Rungs above the source's height are left out.
    pub rungs: Vec<RungConfig>,
}

impl TranscodeConfig {
    /// Every rung of the catalogue and the audio at their nominal bitrates, in bit/s.
    pub fn nominal_bits_per_second(&self) -> u64 {
        self.rungs.iter().map(|r| u64::from(r.bitrate_kbps) * 1000).sum::<u64>() + u64::from(self.audio_bitrate)
    }

    /// Checks every field and every rung; the error names the key (`transcode.{key}`).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        if self.backends.is_empty() {
            return invalid("backends", "needs at least one backend (nvenc, nvdec-x264, vaapi, software)");
        }
        if self.cpu_budget.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            return invalid("cpu_budget", "must be a number of cores above 0");
        }
        if self.nvenc_sessions_per_gpu == Some(0) || self.nvdec_sessions_per_gpu == 0 || self.vaapi_sessions == 0 {
            return invalid("", "session budgets must be at least 1");
        }
        if !X264_PRESETS.contains(&self.x264_preset.as_str()) {
            return invalid("x264_preset", &format!("must be one of {}", X264_PRESETS.join(", ")));
        }
        if !(32_000..=512_000).contains(&self.audio_bitrate) {
            return invalid("audio_bitrate", "must be between 32000 and 512000 bit/s");
        }
        if self.rungs.is_empty() {
            return invalid("rungs", "needs at least one rung");
        }
        for (i, rung) in self.rungs.iter().enumerate() {
            if rung.height < 90 || rung.height > 4320 || rung.height % 2 != 0 {
                return invalid(&format!("rungs[{i}].height"), "must be even and within 90..=4320");
            }
            if rung.bitrate_kbps < 100 || rung.bitrate_kbps > 100_000 {
                return invalid(&format!("rungs[{i}].bitrate_kbps"), "must be within 100..=100000");
            }
        }
        Ok(())
    }
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            backends: vec![Backend::Software],
            fallback: Fallback::Allow,
            over_budget: OverBudget::DropRungs,
            pipelines_dir: None,
            nvenc_sessions_per_gpu: None,
            nvdec_sessions_per_gpu: 32,
            vaapi_sessions: 16,
            cpu_budget: None,
            calibrate_cost: true,
            x264_preset: DEFAULT_X264_PRESET.to_owned(),
            audio_bitrate: DEFAULT_AUDIO_BITRATE,
            rungs: default_rungs(),
        }
    }
}

