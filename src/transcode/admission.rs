//! Admission: every stream's ladder is a counted use of this node's transcode resources.
//! Each rung costs an encoder session on its device, each stream a decoder session, and a
//! backend that encodes on the CPU costs cores by a cost model measured on x264 (see
//! `docs/design.md`, "Transcode backends"). A stream takes the first backend of the
//! preference list with room for its whole ladder; failing that it gets fewer rungs,
//! dropped from the top and never the lowest, or is refused, as `transcode.over_budget`
//! says. A grant holds its sessions until it is dropped.
//!
//! The cost model's figures come from one machine; on another the real cost differs. So
//! the model is calibrated on the running host: while the ladders admitted have run
//! unchanged for a while and the process is not saturated, its measured CPU use over the
//! model's figure for what is admitted is folded into a smoothed scale that every cost is
//! multiplied by (`transcode.calibrate_cost`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::capability::{Device, Selection};

/// What a stream gets when the whole ladder does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverBudget {
    /// The rungs that fit, dropped from the top (the lowest rung always stays).
    #[default]
    DropRungs,
    /// No stream unless its whole ladder fits.
    Refuse,
}

/// The limits admission counts against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budgets {
    /// Concurrent NVENC sessions per GPU.
    pub nvenc_sessions: u32,
    /// Concurrent NVDEC sessions per GPU.
    pub nvdec_sessions: u32,
    /// Concurrent VA-API encoder sessions per render node.
    pub vaapi_sessions: u32,
    /// Cores the CPU encoders (and the software backend's decoders and scalers) may use.
    pub cpu_cores: f64,
}

/// CPU cost of transcoding, in cores per 1280x720 at 30 fps (scaled linearly by pixels per
/// second). Measured with `rackcast transcode` on a 2-core machine (20 s of testsrc2 at
/// 720p30, 4 Mbit/s, ladder 720p/480p/360p): the whole ladder took 0.86 CPU-s per media
/// second at veryfast and 0.50 at ultrafast, decoding alone 0.16, one 360p rung at
/// ultrafast 0.22 (see docs/design.md, "Transcode backends"). Busier sources cost more.
mod cost {
    /// H.264 decoding (avdec_h264), per 720p30 of source.
    pub const DECODE: f64 = 0.16;
    /// Scaling one rung (videoconvertscale, colours kept), per 720p30 of output.
    pub const SCALE: f64 = 0.04;
    /// x264 with `tune=zerolatency`, per 720p30 of output, by speed preset: ultrafast and
    /// veryfast measured; the others follow x264's relative preset speeds, not measured.
    pub fn encode(preset: &str) -> f64 {
        match preset {
            "ultrafast" => 0.17,
            "superfast" => 0.25,
            "veryfast" => 0.375,
            "faster" => 0.6,
            "fast" => 0.8,
            "medium" => 1.0,
            "slow" => 1.6,
            "slower" => 3.0,
            _ => 6.0,
        }
    }
}

/// Admitted streams must have run unchanged this long before their measured use counts:
/// a pipeline starting up (or one just stopped) is not its steady cost.
pub const CALIBRATION_SETTLE: Duration = Duration::from_secs(5);
/// Weight of one measurement (one a second) in the smoothed scale: about 10 s to follow.
const CALIBRATION_WEIGHT: f64 = 0.1;
/// Bounds of the scale: a host 4 times faster or slower than the model's.
const SCALE_RANGE: (f64, f64) = (0.25, 4.0);
/// Below this many cores of admitted work, the process's own overhead (ingest, packaging,
/// viewers) would dominate the measurement: no calibration.
const CALIBRATION_FLOOR: f64 = 0.1;

/// One stream's request: its source, frame rate and the planned rungs, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub source: (u32, u32),
    pub fps: f64,
    pub rungs: Vec<(u32, u32)>,
    pub preset: String,
}

impl Request {
    /// The request for `plan`'s rungs from a `source` at `fps`.
    pub fn for_plan(source: crate::ladder::SourceFormat, fps: f64, plan: &crate::ladder::LadderPlan, preset: &str) -> Self {
        Self {
            source: (source.width, source.height),
            fps,
            rungs: plan.rungs.iter().map(|r| (r.width, r.height)).collect(),
            preset: preset.to_owned(),
        }
    }
}

fn per_720p30(size: (u32, u32), fps: f64) -> f64 {
    f64::from(size.0) * f64::from(size.1) * fps / (1280.0 * 720.0 * 30.0)
}

impl Request {
    /// Cores the lowest `rungs` of the ladder cost on `backend`.
    pub fn cpu_cores(&self, backend: Backend, rungs: usize) -> f64 {
        let kept = &self.rungs[self.rungs.len() - rungs..];
        let mut cores = 0.0;
        if backend.decodes_on_cpu() {
            cores += cost::DECODE * per_720p30(self.source, self.fps);
            cores += kept.iter().map(|r| cost::SCALE * per_720p30(*r, self.fps)).sum::<f64>();
        }
        if backend.encodes_on_cpu() {
            cores += kept.iter().map(|r| cost::encode(&self.preset) * per_720p30(*r, self.fps)).sum::<f64>();
        }
        cores
    }
}

/// What one stream holds.
#[derive(Debug, Clone, Default, PartialEq)]
struct Held {
    encode: u32,
    decode: u32,
    cpu: f64,
}

#[derive(Debug, Clone)]
struct Usage {
    devices: HashMap<(Backend, Device), Held>,
    /// Cores admitted, by the uncalibrated model.
    cpu: f64,
    /// What the model's figures are multiplied by on this host (1 until calibrated).
    scale: f64,
    /// When a grant was last made or given back.
    changed: Option<Instant>,
    /// The last measurement of this process's CPU use, in cores.
    measured: Option<f64>,
    /// Streams refused, and streams given fewer rungs than planned, since start-up.
    refused: u64,
    reduced: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Self { devices: HashMap::new(), cpu: 0.0, scale: 1.0, changed: None, measured: None, refused: 0, reduced: 0 }
    }
}

/// This node's transcode resources and what streams hold of them.
pub struct Admission {
    selection: Selection,
    budgets: Budgets,
    over_budget: OverBudget,
    calibrate: bool,
    usage: Arc<Mutex<Usage>>,
}

/// A stream's admitted backend, device and rung count; holds them until dropped.
#[derive(Debug)]
pub struct Grant {
    pub backend: Backend,
    pub device: Device,
    /// How many of the requested rungs, from the bottom, it may produce.
    pub rungs: usize,
    /// Why this backend and rung count, for the log and the stream status.
    pub why: String,
    /// Cores it is counted as, calibrated when granted.
    pub cpu_cores: f64,
    usage: Arc<Mutex<Usage>>,
    held: Held,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut usage = self.usage.lock();
        usage.cpu = (usage.cpu - self.held.cpu).max(0.0);
        usage.changed = Some(Instant::now());
        if let Some(held) = usage.devices.get_mut(&(self.backend, self.device.clone())) {
            held.encode = held.encode.saturating_sub(self.held.encode);
            held.decode = held.decode.saturating_sub(self.held.decode);
        }
    }
}

/// What is in use, for the API and metrics.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// Cores admitted streams are counted as (the model times `cost_scale`).
    pub cpu_cores_used: f64,
    pub cpu_cores_budget: f64,
    /// What the cost model's figures are multiplied by on this host (1 until calibrated).
    pub cost_scale: f64,
    /// This process's CPU use at the last reading, in cores.
    pub cpu_cores_measured: Option<f64>,
    pub refused: u64,
    pub reduced: u64,
    pub devices: Vec<DeviceUsage>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceUsage {
    pub backend: Backend,
    pub device: String,
    pub encoder_sessions: u32,
    pub decoder_sessions: u32,
}

impl Admission {
    /// `calibrate`: whether measurements of this process's CPU use scale the cost model.
    pub fn new(selection: Selection, budgets: Budgets, over_budget: OverBudget, calibrate: bool) -> Self {
        Self { selection, budgets, over_budget, calibrate, usage: Arc::default() }
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Why `rungs` rungs of `request` do not fit on `device` of `backend`, or `None`.
    fn shortfall(&self, usage: &Usage, backend: Backend, device: &Device, request: &Request, rungs: usize) -> Option<String> {
        let held = usage.devices.get(&(backend, device.clone())).cloned().unwrap_or_default();
        let b = &self.budgets;
        match backend {
            Backend::Nvenc if held.encode + rungs as u32 > b.nvenc_sessions => {
                return Some(format!("{device} has {} of {} NVENC sessions in use", held.encode, b.nvenc_sessions));
            }
            Backend::Vaapi if held.encode + rungs as u32 > b.vaapi_sessions => {
                return Some(format!("{device} has {} of {} VA-API encoder sessions in use", held.encode, b.vaapi_sessions));
            }
            Backend::Nvenc | Backend::NvdecX264 if held.decode + 1 > b.nvdec_sessions => {
                return Some(format!("{device} has {} of {} NVDEC sessions in use", held.decode, b.nvdec_sessions));
            }
            _ => {}
        }
        let cores = request.cpu_cores(backend, rungs) * usage.scale;
        let used = usage.cpu * usage.scale;
        (cores > 0.0 && used + cores > b.cpu_cores + 1e-9).then(|| {
            let calibrated = if usage.scale == 1.0 { String::new() } else { format!(" (cost model x{:.2}, as measured here)", usage.scale) };
            format!("the CPU budget of {:.2} cores has {:.2} left, {rungs} rung(s) need {cores:.2}{calibrated}", b.cpu_cores, (b.cpu_cores - used).max(0.0))
        })
    }

    /// Admits a stream: the first backend (and its least busy device) with room for the
    /// whole ladder; else, with `drop-rungs`, the most rungs that fit anywhere.
    pub fn admit(&self, request: &Request) -> Result<Grant, String> {
        let all = request.rungs.len();
        if all == 0 {
            return Err("the ladder has no rung".into());
        }
        let mut usage = self.usage.lock();
        let mut refusals = Vec::new();
        let mut best: Option<(Backend, Device, usize)> = None;
        for usable in &self.selection.usable {
            let mut devices = usable.devices.clone();
            devices.sort_by_key(|d| usage.devices.get(&(usable.backend, d.clone())).map_or((0, 0), |h| (h.encode, h.decode)));
            for device in devices {
                match self.shortfall(&usage, usable.backend, &device, request, all) {
                    None => {
                        let why = if refusals.is_empty() {
                            format!("{} on {device}: first usable backend of transcode.backends", usable.backend)
                        } else {
                            format!("{} on {device}: fell back, as {}", usable.backend, refusals.join("; "))
                        };
                        return Ok(self.hold(&mut usage, usable.backend, device, request, all, why));
                    }
                    Some(why) => {
                        if best.as_ref().is_none_or(|b| b.2 < all - 1) {
                            let fits = (1..all).rev().find(|k| self.shortfall(&usage, usable.backend, &device, request, *k).is_none());
                            if let Some(k) = fits.filter(|k| best.as_ref().is_none_or(|b| *k > b.2)) {
                                best = Some((usable.backend, device.clone(), k));
                            }
                        }
                        refusals.push(format!("{}: {why}", usable.backend));
                    }
                }
            }
        }
        match (self.over_budget, best) {
            (OverBudget::DropRungs, Some((backend, device, rungs))) => {
                usage.reduced += 1;
                let why = format!(
                    "{backend} on {device} with the lowest {rungs} of {all} rungs (transcode.over_budget = drop-rungs), as {}",
                    refusals.join("; ")
                );
                Ok(self.hold(&mut usage, backend, device, request, rungs, why))
            }
            (OverBudget::DropRungs, None) => {
                usage.refused += 1;
                Err(format!("no backend has room even for the lowest rung: {}", refusals.join("; ")))
            }
            (OverBudget::Refuse, _) => {
                usage.refused += 1;
                Err(format!("no backend has room for the whole ladder (transcode.over_budget = refuse): {}", refusals.join("; ")))
            }
        }
    }

    /// Whether the whole of `request` would fit on `grant`'s backend and device if the
    /// grant were given back first: a stream admitted with fewer rungs asks this to learn
    /// when it may have its whole ladder.
    pub fn has_room_instead(&self, grant: &Grant, request: &Request) -> bool {
        let mut usage = self.usage.lock().clone();
        usage.cpu = (usage.cpu - grant.held.cpu).max(0.0);
        if let Some(held) = usage.devices.get_mut(&(grant.backend, grant.device.clone())) {
            held.encode = held.encode.saturating_sub(grant.held.encode);
            held.decode = held.decode.saturating_sub(grant.held.decode);
        }
        self.shortfall(&usage, grant.backend, &grant.device, request, request.rungs.len()).is_none()
    }

    fn hold(&self, usage: &mut Usage, backend: Backend, device: Device, request: &Request, rungs: usize, why: String) -> Grant {
        let cpu = request.cpu_cores(backend, rungs);
        let held = Held {
            encode: if backend.encodes_on_cpu() { 0 } else { rungs as u32 },
            decode: u32::from(matches!(backend, Backend::Nvenc | Backend::NvdecX264 | Backend::Vaapi)),
            cpu,
        };
        usage.cpu += cpu;
        usage.changed = Some(Instant::now());
        let entry = usage.devices.entry((backend, device.clone())).or_default();
        entry.encode += held.encode;
        entry.decode += held.decode;
        Grant { backend, device, rungs, why, cpu_cores: cpu * usage.scale, usage: Arc::clone(&self.usage), held }
    }

    pub fn report(&self) -> UsageReport {
        let usage = self.usage.lock();
        let mut devices: Vec<DeviceUsage> = usage
            .devices
            .iter()
            .map(|((backend, device), held)| DeviceUsage {
                backend: *backend,
                device: device.to_string(),
                encoder_sessions: held.encode,
                decoder_sessions: held.decode,
            })
            .collect();
        devices.sort_by(|a, b| (a.backend, &a.device).cmp(&(b.backend, &b.device)));
        UsageReport {
            cpu_cores_used: usage.cpu * usage.scale,
            cpu_cores_budget: self.budgets.cpu_cores,
            cost_scale: usage.scale,
            cpu_cores_measured: usage.measured,
            refused: usage.refused,
            reduced: usage.reduced,
            devices,
        }
    }

    /// Folds one reading of this process's CPU use (in cores, over about a second) into the
    /// cost model's scale, when `steady`: no stream is behind and the process is not
    /// saturated (a saturated process measures what it got, not what it needs). Returns
    /// the new scale when it moved.
    pub fn calibrate(&self, measured_cores: f64, steady: bool) -> Option<f64> {
        let mut usage = self.usage.lock();
        usage.measured = Some(measured_cores);
        let settled = usage.changed.is_none_or(|t| t.elapsed() >= CALIBRATION_SETTLE);
        if !self.calibrate || !steady || !settled || usage.cpu < CALIBRATION_FLOOR || !measured_cores.is_finite() {
            return None;
        }
        let ratio = (measured_cores / usage.cpu).clamp(SCALE_RANGE.0, SCALE_RANGE.1);
        usage.scale += CALIBRATION_WEIGHT * (ratio - usage.scale);
        Some(usage.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcode::capability::tests::host;
    use crate::transcode::capability::{select, Fallback};

    const LADDER: [(u32, u32); 3] = [(1280, 720), (854, 480), (640, 360)];

    fn request(preset: &str) -> Request {
        Request { source: (1280, 720), fps: 30.0, rungs: LADDER.to_vec(), preset: preset.into() }
    }

    fn budgets(cpu_cores: f64) -> Budgets {
        Budgets { nvenc_sessions: 8, nvdec_sessions: 32, vaapi_sessions: 16, cpu_cores }
    }

    fn software_only(cpu: f64, over: OverBudget) -> Admission {
        let caps = host(&["avdec_h264", "videoconvertscale", "x264enc"], &[], &[], false);
        Admission::new(select(&[Backend::Software], Fallback::Allow, &caps).unwrap(), budgets(cpu), over, true)
    }

    #[test]
    fn the_cpu_budget_admits_whole_ladders_then_fewer_rungs_then_none() {
        let one = request("veryfast").cpu_cores(Backend::Software, 3);
        assert!((0.7..1.0).contains(&one), "a 720p30 veryfast ladder costs {one:.2} cores (0.86 measured)");
        // Room for two ladders and half of a third.
        let admission = software_only(2.5 * one, OverBudget::DropRungs);
        let a = admission.admit(&request("veryfast")).unwrap();
        let b = admission.admit(&request("veryfast")).unwrap();
        assert_eq!((a.rungs, b.rungs), (3, 3));
        let c = admission.admit(&request("veryfast")).unwrap();
        assert!(c.rungs < 3 && c.rungs >= 1, "{c:?}");
        assert!(c.why.contains("lowest") && c.why.contains("CPU budget"), "{}", c.why);
        let d = admission.admit(&request("veryfast"));
        assert!(d.as_ref().is_err_and(|e| e.contains("no backend has room")), "{d:?}");
        assert!(!admission.has_room_instead(&c, &request("veryfast")), "no room for c's whole ladder yet");
        // A stream that ends gives its cores back, and the reduced one has room again.
        drop(a);
        assert!(admission.has_room_instead(&c, &request("veryfast")));
        assert_eq!(admission.admit(&request("veryfast")).unwrap().rungs, 3);
        assert!(admission.report().cpu_cores_used <= admission.budgets().cpu_cores);
    }

    #[test]
    fn refusing_over_budget_never_drops_rungs() {
        let one = request("ultrafast").cpu_cores(Backend::Software, 3);
        let admission = software_only(1.5 * one, OverBudget::Refuse);
        let _a = admission.admit(&request("ultrafast")).unwrap();
        let err = admission.admit(&request("ultrafast")).unwrap_err();
        assert!(err.contains("over_budget = refuse") && err.contains("software: the CPU budget"), "{err}");
    }

    #[test]
    fn nvenc_sessions_are_counted_per_gpu_and_a_full_host_falls_back() {
        let caps = host(&["nvh264dec", "cudascale", "cudadownload", "nvcudah264enc", "avdec_h264", "videoconvertscale", "x264enc"], &[0, 1], &[0, 1], false);
        let selection = select(&[Backend::Nvenc, Backend::Software], Fallback::Allow, &caps).unwrap();
        let admission = Admission::new(selection, budgets(1.0), OverBudget::DropRungs, true);
        // 8 sessions per GPU, 3 per stream: two streams per GPU, spread over both GPUs.
        let grants: Vec<Grant> = (0..4).map(|_| admission.admit(&request("veryfast")).unwrap()).collect();
        let on = |gpu: u32| grants.iter().filter(|g| g.device == Device::Cuda(gpu) && g.backend == Backend::Nvenc).count();
        assert_eq!((on(0), on(1)), (2, 2));
        assert!(grants.iter().all(|g| g.cpu_cores == 0.0 && g.rungs == 3));
        // Both GPUs have 6 of 8 sessions: the whole ladder fits on the CPU instead.
        let fifth = admission.admit(&request("ultrafast")).unwrap();
        assert_eq!((fifth.backend, fifth.rungs), (Backend::Software, 3));
        assert!(fifth.why.contains("fell back") && fifth.why.contains("6 of 8 NVENC sessions"), "{}", fifth.why);
        // The CPU is spent too: two rungs still fit on a GPU.
        let sixth = admission.admit(&request("veryfast")).unwrap();
        assert_eq!((sixth.backend, sixth.rungs), (Backend::Nvenc, 2));
        let report = admission.report();
        assert!(report.devices.iter().any(|d| d.device == "cuda:0" && d.encoder_sessions == 8), "{report:?}");
    }

    #[test]
    fn measured_use_scales_the_cost_model_once_the_ladders_have_settled() {
        let one = request("veryfast").cpu_cores(Backend::Software, 3);
        let admission = software_only(2.0 * one, OverBudget::DropRungs);
        let a = admission.admit(&request("veryfast")).unwrap();
        assert_eq!(admission.calibrate(one / 2.0, true), None, "a ladder just admitted has not settled");
        admission.usage.lock().changed = Some(Instant::now() - CALIBRATION_SETTLE);
        assert_eq!(admission.calibrate(one / 2.0, false), None, "a saturated or lagging host measures what it got");
        // This host runs the ladder at half the model's cost: the scale follows, smoothed.
        let mut scale = 1.0;
        for _ in 0..60 {
            scale = admission.calibrate(one / 2.0, true).unwrap();
        }
        assert!((scale - 0.5).abs() < 0.01, "{scale}");
        let report = admission.report();
        assert!((report.cpu_cores_used - one / 2.0).abs() < 0.01 && report.cost_scale == scale, "{report:?}");
        // Room for two more whole ladders at the measured cost, where the model saw one.
        let b = admission.admit(&request("veryfast")).unwrap();
        let c = admission.admit(&request("veryfast")).unwrap();
        assert_eq!((b.rungs, c.rungs), (3, 3));
        assert!((b.cpu_cores - one / 2.0).abs() < 0.01, "{b:?}");
        let d = admission.admit(&request("veryfast")).unwrap();
        assert!(d.rungs < 3 && d.why.contains("cost model x0.50"), "{d:?}");
        // A measurement far off the model is bounded.
        drop((a, b, c, d));
        let _e = admission.admit(&request("veryfast")).unwrap();
        admission.usage.lock().changed = Some(Instant::now() - CALIBRATION_SETTLE);
        for _ in 0..200 {
            scale = admission.calibrate(1000.0, true).unwrap();
        }
        assert!((scale - SCALE_RANGE.1).abs() < 1e-6, "{scale}");
        // Switched off, the model stays as it is.
        let fixed = Admission::new(admission.selection.clone(), budgets(2.0), OverBudget::DropRungs, false);
        let _f = fixed.admit(&request("veryfast")).unwrap();
        fixed.usage.lock().changed = None;
        assert_eq!(fixed.calibrate(0.01, true), None);
        assert_eq!(fixed.report().cost_scale, 1.0);
    }

    #[test]
    fn the_hybrid_costs_encode_cores_only() {
        let r = request("veryfast");
        let hybrid = r.cpu_cores(Backend::NvdecX264, 3);
        let software = r.cpu_cores(Backend::Software, 3);
        assert!(hybrid > 0.0 && hybrid < software, "{hybrid} vs {software}");
        assert_eq!(r.cpu_cores(Backend::Nvenc, 3), 0.0);
        // 60 fps costs twice 30 fps; dropping the top rung saves the most.
        let fast = Request { fps: 60.0, ..r.clone() };
        assert!((fast.cpu_cores(Backend::Software, 3) - 2.0 * software).abs() < 1e-9);
        assert!(r.cpu_cores(Backend::Software, 2) < software / 2.0 + 0.1);
    }
}
