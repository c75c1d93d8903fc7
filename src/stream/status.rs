//! What a live stream looks like from outside: its session, ladder plan and plan history,
//! and the uplink estimate with its recent history. The stream actor and ingest write it;
//! `GET /live/{stream}` and `GET /live/{stream}/uplink` read it.

use serde::Serialize;

use crate::ladder::LadderPlan;
use crate::media::SessionId;
use crate::probe::{ProbeSample, UplinkEstimate};

/// How many plan changes a stream remembers.
const PLAN_HISTORY: usize = 32;

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// The current publish session (Period id).
    pub session: Option<SessionId>,
    /// Source picture size.
    pub source: Option<(u32, u32)>,
    /// The ladder being produced now.
    pub plan: Option<LadderPlan>,
    /// The last plans this stream has had (at most 32), oldest first.
    pub plan_history: Vec<PlanChange>,
    /// Plans this stream has had in all.
    pub plans: u64,
    /// The latest uplink estimate.
    pub uplink: Option<UplinkEstimate>,
    /// One estimate per second, most recent last.
    pub uplink_history: Vec<ProbeSample>,
    /// What went wrong with the media so far.
    pub health: StreamHealth,
    /// Media bytes (audio and video payloads) received from the broadcaster.
    pub ingest_bytes: u64,
    /// The backend transcoding this session and why (none for an audio-only source).
    pub transcode: Option<TranscodeChoice>,
    /// The frame rate the broadcaster's metadata states, if it does.
    pub metadata_fps: Option<f64>,
}

/// Which backend and device admission gave the session, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TranscodeChoice {
    pub backend: crate::transcode::backend::Backend,
    pub device: String,
    pub why: String,
    /// CPU cores the session is counted as using (CPU encoders and decoders).
    pub cpu_cores: f64,
    /// The source frame rate admission counted with: measured, else the metadata's, else 30.
    pub fps: f64,
}

/// Media faults of one publish, as counts and current states.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamHealth {
    /// No segment for a few seconds while the broadcaster is connected.
    pub stalled: bool,
    /// Times the stream stalled.
    pub stalls: u32,
    /// The broadcaster sends faster than real time and is held to it.
    pub paced: bool,
    /// Timestamp jumps that cut a Period.
    pub discontinuities: u32,
    /// Times media fell so far behind the wall clock that a new Period re-anchored it.
    pub reanchors: u32,
    /// How far the pipeline's output (its newest video segment) trails its input.
    pub lag_ms: Option<u64>,
    /// The pipeline held the broadcaster back (its input queue full) within the last few
    /// seconds: a slow read of the socket is then the transcoder's doing, not the uplink's.
    pub held_back: bool,
    /// Most rungs this stream may have, set when the host sheds load.
    pub rung_cap: Option<usize>,
    /// Rungs shed because the host was overloaded.
    pub shed: u32,
    /// The latest faults, newest last (at most [`RECENT_EVENTS`]).
    pub recent: std::collections::VecDeque<HealthEvent>,
}

/// How many faults a stream's status remembers.
pub const RECENT_EVENTS: usize = 20;

/// One fault of a publish, for the console and the API.
#[derive(Debug, Clone, Serialize)]
pub struct HealthEvent {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub what: String,
}

impl StreamHealth {
    /// Remembers a fault (the counters above count them; this says when and what).
    pub fn note(&mut self, what: impl Into<String>) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.recent.push_back(HealthEvent { at, what: what.into() });
    }
}

/// One plan taking effect.
#[derive(Debug, Clone, Serialize)]
pub struct PlanChange {
    /// Milliseconds since the publish started.
    pub at_ms: u64,
    pub session: SessionId,
    pub reason: String,
    /// The source video bitrate the plan was made for, when one was measured.
    pub for_bps: Option<f64>,
    /// `{id}@{kbps}k` of every rung.
    pub rungs: Vec<String>,
}

impl StreamStatus {
    pub fn record_plan(&mut self, change: PlanChange, plan: LadderPlan) {
        if self.plan_history.len() == PLAN_HISTORY {
            self.plan_history.remove(0);
        }
        self.session = Some(change.session.clone());
        self.plan_history.push(change);
        self.plans += 1;
        self.plan = Some(plan);
    }
}

/// `{id}@{kbps}k` for every rung of a plan.
pub fn describe(plan: &LadderPlan) -> Vec<String> {
    plan.rungs.iter().map(|r| format!("{}@{}k", r.id, r.bitrate_kbps)).collect()
}
