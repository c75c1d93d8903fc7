//! The host's safety net against overload. Every stream actor measures how far its
//! pipeline's output (the end of its newest video segment) trails real time; when a
//! stream falls further and further behind while this process is saturated (its CPU use
//! near its share, its cgroup throttled, or the host's cores all busy with other work:
//! [`crate::host::cpu`]), it cannot carry every
//! ladder it admitted (a stream whose broadcaster's uplink is the limit is
//! not counted: shedding rungs would not help it). Rather than letting every stream degrade
//! together, the controller caps the rungs of the most recently admitted stream that has
//! more than one: down to its lowest rung at once (relief must show within seconds, and a
//! stream the host cannot carry gains little from keeping a middle rung), except for the
//! oldest live stream, which loses one rung at a time; the lowest rung is never shed. It
//! waits until the cut has taken effect and repeats while the host stays behind. Each shed is logged
//! with its reason and shown in the stream's status (`health.rung_cap`, `health.shed`).
//! Admission control that refuses work before it starts is the transcode budget's job;
//! this only contains what got through. Each tick's reading of the process's CPU use also
//! calibrates admission's cost model while nothing is behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::registry::StreamRegistry;
use crate::host::cpu::{CpuMeter, CpuUse};
use crate::transcode::resources::Resources;

/// A pipeline whose output trails real time by more than this is behind (normal: one
/// segment plus the encoder's latency, 1-2 s).
pub const BEHIND: Duration = Duration::from_secs(3);
/// This process's CPU use over its share at or above which a stream that is behind means
/// overload.
pub const CPU_SATURATED: f64 = 0.85;
/// Share of its cgroup's enforcement periods in which the process hit its CPU quota at or
/// above which it is saturated, whatever its mean use.
pub const THROTTLED: f64 = 0.2;
/// After a shed took effect (its new Period started), how long before the next one: the
/// relief shows in the other streams' lags within a few segments.
pub const COOLDOWN: Duration = Duration::from_secs(3);
/// A lag counts as growing when it rose by more than this in one tick; a stream that is
/// behind but catching up (a backlog draining after a shed) sheds nothing more.
const GROWING: Duration = Duration::from_millis(200);
const TICK: Duration = Duration::from_secs(1);

/// One stream as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Admission order: larger is more recent.
    pub admitted: u64,
    /// Rungs of its current plan (or its cap, when lower).
    pub rungs: usize,
    /// Output behind input, when measured.
    pub lag: Option<Duration>,
    /// The lag one tick earlier.
    pub previous_lag: Option<Duration>,
    /// A shed ordered for it has not taken effect yet (it waits for a keyframe).
    pub shedding: bool,
}

impl Load {
    /// Behind, and falling further behind.
    fn falling_behind(&self) -> bool {
        match (self.lag, self.previous_lag) {
            (Some(lag), Some(previous)) => lag > BEHIND && lag > previous + GROWING,
            _ => false,
        }
    }
}

/// Whether a reading shows the process unable to have more CPU: it uses its whole share,
/// its cgroup hits its quota, or the host's cores are all busy (other work takes what the
/// share would allow).
pub fn saturated(cpu: &CpuUse) -> bool {
    cpu.utilisation() >= CPU_SATURATED || cpu.throttled >= THROTTLED || cpu.host >= CPU_SATURATED
}

/// Which stream sheds a rung now: the most recently admitted one with more than one rung,
/// when some stream is behind and falling further behind while the process is saturated.
/// Pure.
pub fn victim(streams: &[Load], saturated: bool) -> Option<usize> {
    // One shed at a time: until the last one took effect, its relief cannot be seen.
    if streams.iter().any(|s| s.shedding) {
        return None;
    }
    let behind = streams.iter().any(Load::falling_behind);
    if !behind || !saturated {
        return None;
    }
    streams.iter().enumerate().filter(|(_, s)| s.rungs > 1).max_by_key(|(_, s)| s.admitted).map(|(i, _)| i)
}

/// Runs the controller until shutdown.
pub async fn run(registry: Arc<StreamRegistry>, mut meter: CpuMeter, transcode: Arc<Resources>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    let mut last_shed: Option<Instant> = None;
    let mut previous: HashMap<u64, Duration> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(cpu) = meter.read() else { continue };
        let streams = registry.admitted();
        let loads: Vec<Load> = streams
            .iter()
            .map(|(admitted, _, status)| {
                let status = status.lock();
                let planned = status.plan.as_ref().map_or(0, |p| p.rungs.len());
                let rungs = status.health.rung_cap.map_or(planned, |cap| cap.min(planned));
                // A connection that looks uplink-bound while the pipeline holds it back is the
                // host's lag, not the broadcaster's.
                let uplink_bound = status.uplink.as_ref().is_some_and(|u| u.uplink_bound) && !status.health.held_back;
                let lag = status.health.lag_ms.map(Duration::from_millis).filter(|_| !uplink_bound);
                let shedding = rungs < planned;
                Load { admitted: *admitted, rungs, lag, previous_lag: previous.get(admitted).copied(), shedding }
            })
            .collect();
        previous = loads.iter().filter_map(|l| Some((l.admitted, l.lag?))).collect();
        if loads.iter().any(|l| l.shedding) {
            // The cool-down runs from when the last shed took effect.
            last_shed = Some(Instant::now());
        }
        let saturated = saturated(&cpu);
        let behind = loads.iter().any(|l| l.lag.is_some_and(|lag| lag > BEHIND));
        if let Some(scale) = transcode.admission.calibrate(cpu.cores, !saturated && !behind) {
            tracing::debug!(cpu_cores = cpu.cores, scale, "cost model calibrated");
        }
        if last_shed.is_some_and(|t| t.elapsed() < COOLDOWN) {
            continue;
        }
        let Some(index) = victim(&loads, saturated) else { continue };
        let (_, stream, status) = &streams[index];
        let worst = loads.iter().filter_map(|l| l.lag).max().unwrap_or_default();
        let oldest = loads.iter().map(|l| l.admitted).min() == Some(loads[index].admitted);
        let cap = if oldest { loads[index].rungs - 1 } else { 1 };
        {
            let mut status = status.lock();
            status.health.rung_cap = Some(cap);
            status.health.shed += 1;
            status.health.note(format!("host overloaded: capped at {cap} rung(s)"));
        }
        tracing::warn!(
            %stream, rungs = cap, cpu_cores = %format!("{:.2}", cpu.cores), cpu_share_cores = %format!("{:.2}", cpu.share),
            throttled_percent = (cpu.throttled * 100.0).round(), host_cpu_percent = (cpu.host * 100.0).round(), worst_lag_ms = worst.as_millis() as u64,
            "host overloaded: a stream's output trails real time and this process uses its whole CPU share; shedding the top rungs of the most recently admitted stream"
        );
        last_shed = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose lag went from `before_s` to `lag_s` seconds in the last tick.
    fn load(admitted: u64, rungs: usize, before_s: f64, lag_s: f64) -> Load {
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        Load { admitted, rungs, lag: secs(lag_s), previous_lag: secs(before_s), shedding: false }
    }

    #[test]
    fn the_newest_stream_with_rungs_to_spare_sheds_only_under_overload() {
        let streams = [load(1, 3, 5.0, 6.0), load(2, 3, 1.0, 1.0), load(3, 1, 1.0, 1.0)];
        assert_eq!(victim(&streams, true), Some(1), "stream 3 has only its lowest rung left");
        assert_eq!(victim(&streams, false), None, "a lagging stream on an idle host is not overload");
        let on_time = [load(1, 3, 1.0, 1.5), load(2, 3, 1.0, 1.0)];
        assert_eq!(victim(&on_time, true), None, "a busy host that keeps up sheds nothing");
        let catching_up = [load(1, 3, 9.0, 8.0), load(2, 2, 7.0, 6.5)];
        assert_eq!(victim(&catching_up, true), None, "a backlog that drains after a shed sheds nothing more");
        let mut waiting = streams.clone();
        waiting[2].shedding = true;
        assert_eq!(victim(&waiting, true), None, "a shed still waiting for its keyframe blocks the next");
        let last = [load(1, 1, 8.0, 9.0), load(2, 1, 8.0, 9.0)];
        assert_eq!(victim(&last, true), None, "the lowest rung is never shed");
    }

    #[test]
    fn saturation_is_use_against_this_process_share_or_throttling() {
        let reading = |cores: f64, share: f64, throttled: f64| CpuUse { cores, share, throttled, host: 0.5 };
        assert!(saturated(&reading(0.9, 1.0, 0.0)), "0.9 of a 1-core quota");
        assert!(!saturated(&reading(0.9, 4.0, 0.0)), "the same use with 4 cores to spare");
        assert!(!saturated(&reading(3.0, 64.0, 0.0)), "3 cores of a 64-core host");
        assert!(saturated(&reading(3.5, 4.0, 0.0)), "4-core quota on a 64-core host, 3.5 used");
        assert!(saturated(&reading(0.6, 1.0, 0.5)), "throttled in half the periods: bursts hit the quota");
        let busy_host = CpuUse { host: 0.95, ..reading(1.5, 2.0, 0.0) };
        assert!(saturated(&busy_host), "other work holds the cores the share would allow");
    }
}
