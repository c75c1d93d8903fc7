//! Holding a stream through its broadcaster's reconnect (`package.hold_last_frame`). When a
//! broadcaster's connection drops without an unpublish, the actor keeps its pipeline and
//! Period going: it feeds the last keyframe again at the source's frame rate (a frozen
//! picture, re-encoded like any frame, so every rung keeps its segment grid) and, beside
//! it, frames of AAC silence, paced by the wall clock. The stream's claim stays in the
//! registry with a way back to the actor ([`Held`]); the broadcaster's next publish,
//! through any node, is handed to this actor ([`attach`]) instead of starting a new
//! Period. Its first keyframe continues the media one frame after the held ones
//! (`MediaClock::rebase`), whatever its timestamps restart from; a changed codec
//! configuration cuts a new Period as it would mid-stream. Past the hold, the Period ends
//! where the held media ends and the reconnect window goes on as after any drop.
//!
//! A draining node hands a stream over by relaying its configurations and last keyframe
//! to the next owner (`ingest::Connection::hand_over_picture`); that session starts where
//! the adopted timeline's media ended ([`StreamActor::hand_over_continuation`]) and holds
//! the picture, so the move leaves no gap in the media.
//!
//! An admin's kick or stop (or a takeover) ends a hold at once. Not held: a publisher
//! asked to close (taken over, kicked, stopped), an audio-only stream, a stream with no
//! keyframe yet, and audio other than AAC-LC mono or stereo (no silence to match it; said
//! in the log). A broadcaster that drops again before its first keyframe reopens the same
//! hold, which keeps its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::transcode::silent_aac_frame;
use crate::transcode::source::AacConfig;
use super::actor::{Resume, StreamActor};
use super::handle::{EndSignal, Input, StreamHandle};
use super::registry::{PublishClaim, PublisherLink, SharedStatus};

/// Most held frames one tick catches up with (an actor that was held back, or a hand-over's
/// continuation).
const MAX_FRAMES_PER_TICK: u32 = 8;
/// A hand-over picture continues the adopted timeline where its media ended when that end
/// is at most this far from now, past or ahead; otherwise it starts now, as any session.
const MAX_CONTINUATION_GAP: Duration = Duration::from_secs(3);
/// Samples in one AAC frame.
const AAC_FRAME_SAMPLES: f64 = 1024.0;

/// A held stream's way back to its actor, kept in the registry while it holds.
pub struct Held {
    attach: mpsc::Sender<Input>,
    ended: EndSignal,
}

/// A handle for a reconnected broadcaster that feeds the held stream's actor, or `None`
/// when the actor has stopped holding.
pub(super) fn attach(held: Held, status: SharedStatus) -> Option<StreamHandle> {
    let (handle, input) = StreamHandle::connect(status, held.ended);
    held.attach.try_send(input).ok()?;
    Some(handle)
}

/// What a held stream repeats, and until when.
pub(super) struct Hold {
    keyframe: Bytes,
    /// One frame of silence, when the source has audio.
    silence: Option<Bytes>,
    /// Media time (ms) of the next frame of silence, and one frame's length.
    audio_next_ms: f64,
    audio_frame_ms: f64,
    tick: tokio::time::Interval,
    until: tokio::time::Instant,
    /// The registry's way in, until a broadcaster has reconnected.
    attach: Option<mpsc::Receiver<Input>>,
    /// The claim's link: an admin's kick or stop, or a takeover, ends the hold.
    link: Arc<PublisherLink>,
}

/// What happened to a hold.
pub(super) enum HoldEvent {
    /// A broadcaster reconnected: its connection.
    Resumed(Input),
    /// Time for held frames.
    Fill,
    /// Past the hold, or the stream was asked to stop.
    Expired,
}

impl Hold {
    pub(super) async fn next(&mut self) -> HoldEvent {
        let (attach, tick, until, link) = (&mut self.attach, &mut self.tick, self.until, &self.link);
        let reconnected = async {
            match attach.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(input) = reconnected => HoldEvent::Resumed(input),
            _ = tick.tick() => HoldEvent::Fill,
            _ = tokio::time::sleep_until(until) => HoldEvent::Expired,
            _ = link.stopped() => HoldEvent::Expired,
        }
    }

    /// Where the held audio ends (ms): a reconnected broadcaster's audio before it is
    /// dropped, so the track never steps back.
    pub(super) fn audio_end_ms(&self) -> Option<u64> {
        self.silence.as_ref().map(|_| self.audio_next_ms.ceil() as u64)
    }
}

impl StreamActor {
    /// Where a draining node's hand-over picture starts its session: at the end of the
    /// adopted timeline's media, its media zero at that end's wall-clock time. Held frames
    /// fill the time since at once (`fill` catches up), or wait for it when the timeline
    /// ran ahead of the clock (a Period starts on the next grid point); either way the
    /// media has no gap.
    pub(super) fn hand_over_continuation(&self) -> Option<Resume> {
        let (end, at) = self.services.packager.media_end_at(&self.stream)?;
        let (now, wall) = (Instant::now(), SystemTime::now());
        // The end's wall-clock time relative to now (negative: past).
        let (anchor, offset_ms) = match wall.duration_since(at) {
            Ok(behind) if behind <= MAX_CONTINUATION_GAP => (now.checked_sub(behind)?, -(behind.as_millis() as i64)),
            Err(ahead) if ahead.duration() <= MAX_CONTINUATION_GAP => (now + ahead.duration(), ahead.duration().as_millis() as i64),
            _ => return None,
        };
        tracing::info!(offset_ms, "the hand-over picture continues the adopted timeline where its media ended");
        Some(Resume { period_start: Some(end), anchor })
    }

    /// The broadcaster's connection dropped: holds the stream (module header) and lets the
    /// registry hand its next publish to this actor. False when it cannot hold, and the
    /// Period ends at the drop as before.
    pub(super) async fn begin_hold(&mut self, claim: &PublishClaim, ended: &EndSignal) -> bool {
        let hold_for = self.services.config.package.hold_last_frame;
        if hold_for.is_zero() || claim.link().asked_to_stop() {
            return false;
        }
        // Dropped again before its keyframe came: the same hold goes on, open again.
        if let Some(hold) = self.hold.as_mut() {
            let (attach_tx, attach) = mpsc::channel(1);
            claim.set_held(Some(Held { attach: attach_tx, ended: ended.clone() }));
            hold.attach = Some(attach);
            self.resuming = false;
            return true;
        }
        let Some(running) = self.running.as_ref().filter(|r| !r.audio_only) else { return false };
        let Some(keyframe) = self.last_keyframe.clone() else { return false };
        let frame = running.clock.frame();
        let video_end_ms = running.clock.media_end_ms();
        let (silence, audio_frame_ms) = match self.audio_config.clone() {
            None => (None, 0.0),
            Some(asc) => {
                let made = tokio::task::spawn_blocking(move || {
                    let config = AacConfig::parse(&asc).map_err(|e| e.to_string())?;
                    let frame = silent_aac_frame(&config).map_err(|e| e.to_string())?;
                    Ok::<_, String>((frame, AAC_FRAME_SAMPLES * 1000.0 / f64::from(config.sample_rate)))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|made| made);
                match made {
                    Ok((frame, frame_ms)) => (Some(frame), frame_ms),
                    Err(e) => {
                        tracing::warn!("the broadcaster dropped and the stream cannot hold its last picture: {e}; the Period ends at the drop");
                        return false;
                    }
                }
            }
        };
        let audio_next_ms = self.last_audio_ms.map_or(video_end_ms as f64, |ms| ms as f64 + audio_frame_ms);
        let (attach_tx, attach) = mpsc::channel(1);
        claim.set_held(Some(Held { attach: attach_tx, ended: ended.clone() }));
        let mut tick = tokio::time::interval(frame);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.hold = Some(Hold {
            keyframe,
            silence,
            audio_next_ms,
            audio_frame_ms,
            tick,
            until: tokio::time::Instant::now() + hold_for,
            attach: Some(attach),
            link: Arc::clone(claim.link()),
        });
        self.services.holds.inc();
        self.status.lock().health.note(format!("broadcaster dropped: holding the last picture for up to {} s", hold_for.as_secs_f64()));
        tracing::warn!(hold_ms = hold_for.as_millis() as u64, "broadcaster dropped; holding its last picture and silence until it reconnects");
        true
    }

    /// A broadcaster reconnected within the hold (the registry took its way in): its
    /// packets feed this session from its first keyframe on (`handle`), the held picture
    /// goes on until then.
    pub(super) fn resume_hold(&mut self) {
        if let Some(hold) = self.hold.as_mut() {
            hold.attach = None;
        }
        self.resuming = true;
        self.services.resumed_holds.inc();
        self.status.lock().health.note("broadcaster reconnected within the hold: the Period goes on");
        tracing::info!("broadcaster reconnected within the hold; its first keyframe continues the Period");
    }

    /// The hold ended without its broadcaster (or before its keyframe came): nothing more
    /// is held.
    pub(super) fn end_hold(&mut self, claim: &PublishClaim) {
        claim.set_held(None);
        self.hold = None;
    }

    /// Held frames (and silence beside them) up to the wall clock.
    pub(super) async fn fill(&mut self) -> Result<(), String> {
        let (Some(hold), Some(running)) = (self.hold.as_mut(), self.running.as_mut()) else {
            self.hold = None;
            return Ok(());
        };
        let now = Instant::now();
        let frame_ms = running.clock.frame().as_millis() as u64;
        for _ in 0..MAX_FRAMES_PER_TICK {
            if running.clock.lead(now) >= 0 {
                break;
            }
            let at = running.clock.fill();
            // Past every frame shown so far (a B-frame source's last frames show after
            // their decode time): a presentation time never steps back.
            if at <= self.latest_video_pts_ms {
                continue;
            }
            running.transcoder.push_video(at, at, true, hold.keyframe.clone()).map_err(|e| e.to_string())?;
            if let Some(silence) = &hold.silence {
                while hold.audio_next_ms < (at + frame_ms) as f64 {
                    running.transcoder.push_audio(hold.audio_next_ms.round() as u64, silence.clone()).map_err(|e| e.to_string())?;
                    hold.audio_next_ms += hold.audio_frame_ms;
                }
            }
        }
        self.wait_for_room().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{MediaPacket, StreamId};
    use crate::stream::StreamRegistry;

    #[tokio::test]
    async fn the_next_publish_of_a_held_stream_feeds_its_actor() {
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        let claim = registry.claim(&cam).unwrap();
        assert!(registry.resume_held(&cam).is_none(), "not held");
        let hold = |claim: &PublishClaim| {
            let (attach, attached) = mpsc::channel(1);
            claim.set_held(Some(Held { attach, ended: EndSignal::channel().1 }));
            attached
        };

        let mut attached = hold(&claim);
        let (handle, _link) = registry.resume_held(&cam).expect("a held stream is resumed");
        let mut input = attached.recv().await.expect("the actor gets the connection");
        handle.send(MediaPacket::AudioConfig(Bytes::from_static(&[0x11, 0x90]))).await.unwrap();
        assert!(matches!(input.packets.recv().await, Some(MediaPacket::AudioConfig(_))));
        assert!(registry.resume_held(&cam).is_none(), "one publish resumes it");

        // An actor that stopped holding takes none; nor does a stream an admin stopped.
        drop(hold(&claim));
        assert!(registry.resume_held(&cam).is_none(), "the actor is gone");
        let _attached = hold(&claim);
        registry.stop(&cam, std::time::Duration::from_secs(60)).unwrap();
        assert!(registry.resume_held(&cam).is_none(), "stopped by an admin");
    }

    #[tokio::test]
    async fn a_publish_waits_a_while_for_a_live_stream_to_be_held() {
        use std::time::Duration;
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        assert!(registry.resume_when_held(&cam, Duration::from_secs(5)).await.is_none(), "not live: at once");
        let claim = registry.claim(&cam).unwrap();
        assert!(registry.resume_when_held(&cam, Duration::from_millis(200)).await.is_none(), "never held");
        // Its publisher drops into a hold a moment later (a hand-over relay's last packet).
        let (attach, mut attached) = mpsc::channel(1);
        let holding = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            claim.set_held(Some(Held { attach, ended: EndSignal::channel().1 }));
            let input = attached.recv().await;
            (claim, input.is_some())
        });
        assert!(registry.resume_when_held(&cam, Duration::from_secs(5)).await.is_some());
        assert!(holding.await.unwrap().1, "the actor got the connection");
    }
}
