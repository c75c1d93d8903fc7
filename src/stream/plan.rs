//! Plan policy of a stream actor: which ladder the latest uplink estimate calls for
//! (measurement, hysteresis, the rungs admission allowed, the overload controller's cap),
//! retuning bitrates in place, and admission of a session's ladder.



use crate::ladder::{self, LadderPlan, PlanInput, SourceFormat};
use crate::probe::UplinkEstimate;
use crate::transcode::admission::{Grant, Request};
use super::actor::{PendingPlan, StreamActor};
use super::status::{self, PlanChange};

/// Renditions x264 can run for one stream on this class of machine.
const X264_MAX_RUNGS: usize = 4;
/// Frame rate assumed for admission before the source's has been measured, when the
/// broadcaster's metadata does not state one.
const ASSUMED_FPS: f64 = 30.0;
/// An estimate with less confidence than this does not change the ladder.
const MIN_CONFIDENCE: f64 = 0.5;

impl StreamActor {
    pub(super) fn max_rungs(&self) -> usize {
        let budget = if self.services.transcode.first().encodes_on_cpu() { X264_MAX_RUNGS } else { self.services.config.transcode.rungs.len() };
        self.status.lock().health.rung_cap.map_or(budget, |cap| budget.min(cap))
    }

    /// Decides whether the latest estimate changes the ladder; a change waits for a keyframe.
    pub(super) fn consider(&mut self, estimate: &UplinkEstimate) {
        let Some(running) = &self.running else { return };
        let Some(source) = self.source else { return };
        let ladder = &self.services.config.ladder;
        // What the ladder must fit under: the encoder's video bitrate, or what the uplink
        // actually carries when it cannot keep up.
        let mut delivered = estimate.source_video_bps;
        if estimate.uplink_bound {
            let carried = estimate.throughput_bps - estimate.source_audio_bps.unwrap_or(0.0);
            delivered = Some(delivered.map_or(carried, |d| d.min(carried)));
        }
        let Some(delivered) = delivered.filter(|d| *d > 0.0) else { return };
        if estimate.confidence < MIN_CONFIDENCE {
            return;
        }
        let mut candidate = ladder::plan_for(&PlanInput {
            source,
            delivered_bps: Some(delivered),
            catalogue: &self.services.config.transcode.rungs,
            max_rungs: self.max_rungs(),
        });
        // Admission gave this stream only its lowest rungs. Once the budgets have room for
        // the whole candidate (another stream ended), it re-plans to it at the next
        // keyframe; until then plans keep to the admitted rungs (asking for more would
        // re-plan, be cut back again, and re-plan forever).
        if let Some(cap) = self.admitted_rungs.filter(|cap| candidate.rungs.len() > *cap) {
            let request = Request::for_plan(source, self.source_fps(), &candidate, &self.services.config.transcode.x264_preset);
            let room = running.grant.as_ref().is_some_and(|grant| self.services.transcode.admission.has_room_instead(grant, &request));
            if room && self.pending.is_none() {
                tracing::info!(rungs = ?status::describe(&candidate), "the backends' budgets have room for the whole ladder again: re-plan at the next keyframe");
                self.admitted_rungs = None;
                self.pending = Some(PendingPlan { plan: candidate, reason: "budget has room again".to_owned(), for_bps: Some(delivered) });
                return;
            }
            candidate.rungs.drain(..candidate.rungs.len() - cap);
        }
        let elapsed = self.started.elapsed();
        let decision = if !self.measured {
            if elapsed < ladder.initial_measurement {
                return;
            }
            self.measured = true;
            self.replanner.set_planned_for(delivered);
            (candidate != running.plan).then(|| (candidate, "initial measurement".to_owned()))
        } else {
            self.replanner
                .observe(elapsed, &running.plan, &candidate, delivered)
                .map(|plan| (plan, "source bitrate moved persistently".to_owned()))
        };
        let Some((plan, reason)) = decision else { return };
        let same_rungs = plan.rungs.iter().map(|r| &r.id).eq(running.plan.rungs.iter().map(|r| &r.id));
        if same_rungs {
            self.retune(plan, reason, delivered);
        } else {
            tracing::info!(
                %reason, delivered_kbps = (delivered / 1000.0).round(), rungs = ?status::describe(&plan),
                "re-plan at the next keyframe"
            );
            self.pending = Some(PendingPlan { plan, reason, for_bps: Some(delivered) });
        }
    }

    /// Same renditions, new bitrates: the encoders take them in place, no new Period.
    pub(super) fn retune(&mut self, plan: LadderPlan, reason: String, delivered: f64) {
        let Some(running) = self.running.as_mut() else { return };
        // A property change waits for the encoder's lock (a frame being encoded): not on a
        // runtime worker.
        let transcoder = running.transcoder.clone();
        let rates: Vec<_> = plan.rungs.iter().map(|r| (r.id.clone(), r.bitrate_kbps)).collect();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            for (rendition, kbps) in rates {
                if let Err(e) = transcoder.set_bitrate(&rendition, kbps) {
                    tracing::error!(%rendition, "bitrate change failed: {e}");
                }
            }
        });
        tracing::info!(%reason, delivered_kbps = (delivered / 1000.0).round(), rungs = ?status::describe(&plan), "bitrates retuned in place");
        let change = PlanChange {
            at_ms: self.started.elapsed().as_millis() as u64,
            session: running.session.clone(),
            reason: format!("{reason} (bitrates retuned in place)"),
            for_bps: Some(delivered),
            rungs: status::describe(&plan),
        };
        running.plan = plan.clone();
        self.status.lock().record_plan(change, plan);
    }

    /// Applies a rung cap the overload controller set: the top rungs go at the next keyframe.
    pub(super) fn apply_rung_cap(&mut self) {
        let Some(running) = &self.running else { return };
        let Some(cap) = self.status.lock().health.rung_cap else { return };
        if running.plan.rungs.len() <= cap || self.pending.is_some() {
            return;
        }
        let mut plan = running.plan.clone();
        let shed: Vec<String> = plan.rungs.drain(..plan.rungs.len() - cap).map(|r| r.id.to_string()).collect();
        tracing::warn!(?shed, rungs = ?status::describe(&plan), "host overloaded: shedding the top rung(s) at the next keyframe");
        self.pending = Some(PendingPlan { plan, reason: format!("host overloaded: shed {}", shed.join(", ")), for_bps: None });
    }

    /// The source's frame rate: measured, else the broadcaster's metadata's, else assumed.
    pub(super) fn source_fps(&self) -> f64 {
        self.frame_rate.fps().or(self.status.lock().metadata_fps).unwrap_or(ASSUMED_FPS)
    }

    /// Counts the session's ladder against the node's backends: admitted whole, with its
    /// top rungs dropped from `plan`, or refused (the error says why).
    pub(super) fn admit(&mut self, source: SourceFormat, plan: &mut LadderPlan, fps: f64) -> Result<Grant, String> {
        let request = Request::for_plan(source, fps, plan, &self.services.config.transcode.x264_preset);
        let grant = self.services.transcode.admission.admit(&request).map_err(|why| {
            self.status.lock().health.note(format!("refused: {why}"));
            format!("admission refused the stream: {why}")
        })?;
        self.admitted_rungs = (grant.rungs < plan.rungs.len()).then_some(grant.rungs);
        if grant.rungs < plan.rungs.len() {
            let dropped: Vec<String> = plan.rungs.drain(..plan.rungs.len() - grant.rungs).map(|r| r.id.to_string()).collect();
            tracing::warn!(?dropped, why = %grant.why, "rungs dropped: the backends' budgets have no room for the whole ladder");
            self.status.lock().health.note(format!("rungs {} dropped: {}", dropped.join(", "), grant.why));
        }
        tracing::info!(backend = %grant.backend, device = %grant.device, why = %grant.why, cpu_cores = grant.cpu_cores, "transcode backend chosen");
        Ok(grant)
    }
}
