//! Synthetic arrival traces for the probe's tests: a real-time encoder (30 fps video, AAC
//! audio at 128 kbit/s) whose RTMP messages queue behind a link of a given capacity over
//! time. The link is simulated in 10 ms ticks; each tick that moves bytes is one socket read,
//! and each message whose last byte crossed in a tick is delivered at that tick. Nothing is
//! random, so every test sees the same trace.

use std::collections::VecDeque;
use std::time::Duration;

use super::UplinkProbe;

pub const TICK: Duration = Duration::from_millis(10);
pub const AUDIO_BPS: f64 = 128_000.0;
const FPS: f64 = 30.0;
/// AAC frames carry 1024 samples at 48 kHz.
const AUDIO_FRAME_S: f64 = 1024.0 / 48_000.0;

/// Bytes a message occupies on the wire: an RTMP chunk header (type 0 is 12 bytes, taken for
/// every message for simplicity) plus one type-3 header byte per further 128-byte chunk.
pub fn wire_size(payload: usize) -> usize {
    payload + 12 + payload.saturating_sub(1) / 128
}

/// One thing ingest would report to the probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    Bytes { at: Duration, bytes: usize },
    Media { at: Duration, ts_ms: u32, payload: usize, video: bool },
}

impl Event {
    pub fn at(&self) -> Duration {
        match *self {
            Event::Bytes { at, .. } | Event::Media { at, .. } => at,
        }
    }
}

/// The encoder: total media bitrate (video + audio) and the first timestamp it stamps.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    pub source_bps: f64,
    pub first_ts: u32,
}

impl Encoder {
    pub fn at(source_bps: f64) -> Self {
        Self { source_bps, first_ts: 0 }
    }
}

/// Simulates `encoder` behind a link whose capacity (bit/s) at time t is `link(t)`, for
/// `duration` of wall time. The send queue is unbounded (the encoder never drops frames).
pub fn simulate(encoder: Encoder, link: impl Fn(Duration) -> f64, duration: Duration) -> Vec<Event> {
    let video_payload = ((encoder.source_bps - AUDIO_BPS) / 8.0 / FPS).round() as usize;
    let audio_payload = (AUDIO_BPS / 8.0 * AUDIO_FRAME_S).round() as usize;
    let mut events = Vec::new();
    // (wire bytes still to send, timestamp, payload, video)
    let mut queue: VecDeque<(usize, u32, usize, bool)> = VecDeque::new();
    let (mut video_n, mut audio_n) = (0u64, 0u64);
    let mut credit = 0.0f64;
    let mut t = Duration::ZERO;
    while t <= duration {
        // The encoder produces in real time: every frame due by now joins the queue in order.
        loop {
            let video_due = video_n as f64 / FPS;
            let audio_due = audio_n as f64 * AUDIO_FRAME_S;
            let (due, video) = if video_due <= audio_due { (video_due, true) } else { (audio_due, false) };
            if due > t.as_secs_f64() {
                break;
            }
            let ts = encoder.first_ts.wrapping_add((due * 1000.0).round() as u32);
            let payload = if video { video_payload } else { audio_payload };
            queue.push_back((wire_size(payload), ts, payload, video));
            if video {
                video_n += 1;
            } else {
                audio_n += 1;
            }
        }
        credit += link(t) * TICK.as_secs_f64() / 8.0;
        let mut sent = 0usize;
        let mut delivered = Vec::new();
        while let Some(front) = queue.front_mut() {
            let can = credit.floor() as usize;
            if can == 0 {
                break;
            }
            let n = can.min(front.0);
            front.0 -= n;
            credit -= n as f64;
            sent += n;
            if front.0 == 0 {
                let (_, ts_ms, payload, video) = *front;
                delivered.push(Event::Media { at: t, ts_ms, payload, video });
                queue.pop_front();
            }
        }
        if queue.is_empty() {
            // An idle link does not bank capacity for later.
            credit = 0.0;
        }
        if sent > 0 {
            events.push(Event::Bytes { at: t, bytes: sent });
        }
        events.extend(delivered);
        t += TICK;
    }
    events
}

/// Wire bytes the trace delivers in the wall interval (from, to].
pub fn wire_bytes_between(events: &[Event], from: Duration, to: Duration) -> usize {
    events
        .iter()
        .filter_map(|e| match *e {
            Event::Bytes { at, bytes } if at > from && at <= to => Some(bytes),
            _ => None,
        })
        .sum()
}

/// Feeds a trace to a probe step by step, so tests can stop at chosen instants.
pub struct Replay {
    pub probe: UplinkProbe,
    events: Vec<Event>,
    next: usize,
}

impl Replay {
    pub fn new(probe: UplinkProbe, events: Vec<Event>) -> Self {
        Self { probe, events, next: 0 }
    }

    /// Feeds every event up to and including `until`.
    pub fn run_to(&mut self, until: Duration) -> &UplinkProbe {
        while let Some(event) = self.events.get(self.next).copied() {
            if event.at() > until {
                break;
            }
            match event {
                Event::Bytes { at, bytes } => self.probe.on_bytes(at, bytes),
                Event::Media { at, ts_ms, payload, video } => self.probe.on_media(at, ts_ms, payload, video),
            }
            self.next += 1;
        }
        &self.probe
    }

    /// Feeds up to `at` and returns the estimate there.
    pub fn estimate_at(&mut self, at: Duration) -> super::UplinkEstimate {
        self.run_to(at).estimate(at)
    }
}
