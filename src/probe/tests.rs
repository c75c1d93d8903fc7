//! The probe against synthetic traces (see `trace.rs`): steady, stepped, bursty, stalled and
//! saturated links, wrapped and restarted timestamps.

use std::time::Duration;

use super::trace::{Encoder, Event, Replay, TICK, simulate, wire_bytes_between};
use super::*;
use crate::ladder::config::default_rungs;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn replay(encoder: Encoder, link: impl Fn(Duration) -> f64, until: Duration) -> Replay {
    let events = simulate(encoder, link, until);
    Replay::new(UplinkProbe::new(ProbeConfig::default(), default_rungs()), events)
}

/// Wire rate of a trace over (from, to], bit/s.
fn wire_rate(events: &[Event], from: Duration, to: Duration) -> f64 {
    wire_bytes_between(events, from, to) as f64 * 8.0 / (to - from).as_secs_f64()
}

fn assert_near(what: &str, at: Duration, got: f64, want: f64, tolerance: f64) {
    let error = (got - want).abs() / want;
    assert!(error <= tolerance, "{what} at {at:?}: {got:.0} is {:.1}% off {want:.0}", error * 100.0);
}

/// Every 250 ms from `from` to `to` inclusive.
fn instants(from: u64, to: u64) -> impl Iterator<Item = Duration> {
    (from..=to).step_by(250).map(ms)
}

#[test]
fn constant_rate_is_measured_within_5_percent_and_trusted_after_one_window() {
    let events = simulate(Encoder::at(4e6), |_| 20e6, ms(12_000));
    let wire = wire_rate(&events, ms(1_000), ms(12_000));
    let mut replay = Replay::new(UplinkProbe::new(ProbeConfig::default(), default_rungs()), events);
    for at in instants(3_100, 12_000) {
        let e = replay.estimate_at(at);
        assert_near("throughput", at, e.throughput_bps, wire, 0.05);
        assert!(e.confidence >= 0.9, "confidence {} at {at:?}", e.confidence);
        assert!(!e.uplink_bound && !e.lagging, "{e:?}");
        let rate = e.media_rate.expect("media has flowed for seconds");
        assert!((0.97..=1.03).contains(&rate), "media_rate {rate} at {at:?}");
        assert_near("source", at, e.source_bitrate_bps.expect("measured"), 4e6, 0.05);
        assert!(e.backlog_ms < 100, "backlog {} at {at:?}", e.backlog_ms);
        // Not bound: the recommendation is what the encoder already sends.
        assert_near("recommended", at, e.recommended_publish_bps.expect("known"), 4e6, 0.05);
        assert_eq!(e.recommended_height, Some(720));
    }
}

#[test]
fn confidence_grows_over_the_first_window() {
    let mut replay = replay(Encoder::at(4e6), |_| 20e6, ms(4_000));
    let early = replay.estimate_at(ms(500)).confidence;
    let mid = replay.estimate_at(ms(1_500)).confidence;
    let full = replay.estimate_at(ms(3_100)).confidence;
    assert!(early < 0.25 && early < mid && mid < full && full >= 0.9, "{early} {mid} {full}");
}

#[test]
fn a_step_down_is_followed_within_the_window() {
    let link = |t: Duration| if t < ms(10_000) { 6e6 } else { 1.5e6 };
    let mut replay = replay(Encoder::at(8e6), link, ms(16_000));
    assert_near("before", ms(9_900), replay.estimate_at(ms(9_900)).throughput_bps, 6e6, 0.05);
    let mid = replay.estimate_at(ms(11_500)).throughput_bps;
    assert!(mid > 1.6e6 && mid < 5.9e6, "halfway through the window: {mid}");
    for at in instants(13_100, 16_000) {
        assert_near("after", at, replay.estimate_at(at).throughput_bps, 1.5e6, 0.05);
    }
}

#[test]
fn a_step_up_is_followed_within_the_window() {
    let link = |t: Duration| if t < ms(10_000) { 1.5e6 } else { 6e6 };
    let mut replay = replay(Encoder::at(8e6), link, ms(16_000));
    assert_near("before", ms(9_900), replay.estimate_at(ms(9_900)).throughput_bps, 1.5e6, 0.05);
    for at in instants(13_100, 16_000) {
        assert_near("after", at, replay.estimate_at(at).throughput_bps, 6e6, 0.05);
    }
}

#[test]
fn bursty_arrival_reports_the_mean_not_the_burst_peak() {
    // 15 Mbit/s for 200 ms of every second: a 3 Mbit/s mean delivered in 5x bursts.
    let link = |t: Duration| if t.as_millis() % 1000 < 200 { 15e6 } else { 0.0 };
    let mut replay = replay(Encoder::at(8e6), link, ms(12_000));
    for at in (4_000..=12_000).step_by(50).map(ms) {
        let e = replay.estimate_at(at);
        assert_near("throughput", at, e.throughput_bps, 3e6, 0.07);
        // The 200 ms duty cycle shows as regularity 0.2.
        assert!(e.confidence <= 0.6, "confidence {} at {at:?}", e.confidence);
    }
}

#[test]
fn a_stall_drops_throughput_and_confidence_and_recovery_restores_them() {
    let link = |t: Duration| if t >= ms(10_000) && t < ms(12_000) { 0.0 } else { 10e6 };
    let events = simulate(Encoder::at(3e6), link, ms(18_000));
    let wire = wire_rate(&events, ms(1_000), ms(10_000));
    let mut replay = Replay::new(UplinkProbe::new(ProbeConfig::default(), default_rungs()), events);

    let before = replay.estimate_at(ms(9_900));
    assert_near("before", ms(9_900), before.throughput_bps, wire, 0.05);
    assert!(before.confidence >= 0.9, "{before:?}");

    let stalled = replay.estimate_at(ms(11_990));
    assert!(stalled.throughput_bps <= 0.4 * before.throughput_bps, "{stalled:?}");
    assert!(stalled.confidence <= 0.6 && stalled.lagging, "{stalled:?}");
    assert!(stalled.backlog_ms >= 1_900, "backlog {}", stalled.backlog_ms);

    for at in instants(16_000, 18_000) {
        let e = replay.estimate_at(at);
        assert_near("recovered", at, e.throughput_bps, wire, 0.05);
        assert!(e.confidence >= 0.9 && !e.lagging && e.backlog_ms < 100, "{e:?}");
    }
}

#[test]
fn a_stall_shorter_than_the_hold_is_not_uplink_bound() {
    let link = |t: Duration| if t >= ms(10_000) && t < ms(12_000) { 0.0 } else { 10e6 };
    let mut replay = replay(Encoder::at(3e6), link, ms(20_000));
    for at in (0..=20_000).step_by(100).map(ms) {
        let e = replay.estimate_at(at);
        assert!(!e.uplink_bound, "{at:?}: {e:?}");
    }
    assert!(replay.probe.history().iter().all(|s| !s.estimate.uplink_bound));
}

#[test]
fn an_uplink_slower_than_the_source_is_uplink_bound_within_seconds() {
    let mut replay = replay(Encoder::at(6e6), |_| 2e6, ms(20_000));
    assert!(!replay.estimate_at(ms(2_000)).uplink_bound, "not before the hold has passed");
    for at in instants(3_000, 20_000) {
        let e = replay.estimate_at(at);
        let rate = e.media_rate.expect("media flows");
        assert!((rate - 1.0 / 3.0).abs() < 0.03, "media_rate {rate} at {at:?}");
        assert!(e.lagging, "{at:?}: {e:?}");
        assert_near("source", at, e.source_bitrate_bps.expect("measured"), 6e6, 0.05);
        assert_near("throughput", at, e.throughput_bps, 2e6, 0.05);
        if at >= ms(6_000) {
            assert!(e.uplink_bound, "{at:?}: {e:?}");
            let recommended = e.recommended_publish_bps.expect("known");
            assert!((1.6e6..=1.75e6).contains(&recommended), "85% of 2 Mbit/s: {recommended}");
            assert_eq!(e.recommended_height, Some(480), "1400 kbit/s + audio fits 1.7 Mbit/s");
        }
    }
    let (at10, at20) = (replay.probe.history()[10].estimate.backlog_ms, replay.estimate_at(ms(20_000)).backlog_ms);
    assert!(at20 > at10 + 5_000, "backlog grows by 2/3 s every second: {at10} then {at20}");
}

#[test]
fn wrapped_timestamps_are_media_progress() {
    let encoder = Encoder { source_bps: 3e6, first_ts: u32::MAX - 1_500 };
    let mut replay = replay(encoder, |_| 10e6, ms(10_000));
    for at in instants(4_000, 10_000) {
        let e = replay.estimate_at(at);
        let rate = e.media_rate.expect("media flows");
        assert!((0.97..=1.03).contains(&rate), "media_rate {rate} at {at:?}");
        assert_near("source", at, e.source_bitrate_bps.expect("measured"), 3e6, 0.05);
        assert!(e.backlog_ms < 100 && !e.lagging, "{e:?}");
    }
}

#[test]
fn a_timestamp_restart_is_absorbed_not_counted() {
    // The encoder restarts at 10 s, stamping from 500 s: a jump, not 490 s of media.
    let mut events = simulate(Encoder::at(3e6), |_| 10e6, ms(10_000) - TICK);
    let restarted = simulate(Encoder { source_bps: 3e6, first_ts: 500_000 }, |_| 10e6, ms(10_000));
    events.extend(restarted.into_iter().map(|e| match e {
        Event::Bytes { at, bytes } => Event::Bytes { at: at + ms(10_000), bytes },
        Event::Media { at, ts_ms, payload, video } => Event::Media { at: at + ms(10_000), ts_ms, payload, video },
    }));
    let mut replay = Replay::new(UplinkProbe::new(ProbeConfig::default(), default_rungs()), events);
    for at in instants(13_500, 20_000) {
        let e = replay.estimate_at(at);
        let rate = e.media_rate.expect("media flows");
        assert!((0.95..=1.05).contains(&rate), "media_rate {rate} at {at:?}");
        assert!(e.backlog_ms < 200, "{e:?}");
    }
}

#[test]
fn metadata_stands_in_for_an_unmeasured_source() {
    let mut probe = UplinkProbe::new(ProbeConfig::default(), default_rungs());
    probe.on_metadata(Some(2_500.0), Some(128.0));
    // 5 Mbit/s of bytes, but no media message decoded yet.
    for i in 0..500u64 {
        probe.on_bytes(ms(i * 10), 6_250);
    }
    let e = probe.estimate(ms(4_990));
    assert_eq!(e.source_bitrate_bps, None);
    assert_eq!(e.metadata_bps, Some(2_628_000.0));
    assert_eq!(e.recommended_publish_bps, Some(2_628_000.0));
    assert_eq!(e.recommended_height, Some(480));
    assert_near("throughput", ms(4_990), e.throughput_bps, 5e6, 0.05);
}

#[test]
fn nothing_received_means_nothing_recommended() {
    let probe = UplinkProbe::new(ProbeConfig::default(), default_rungs());
    let e = probe.estimate(ms(5_000));
    assert_eq!((e.throughput_bps, e.confidence, e.recommended_publish_bps, e.media_rate), (0.0, 0.0, None, None));
}

#[test]
fn history_keeps_one_sample_a_second_for_the_last_minute_and_serialises() {
    let mut replay = replay(Encoder::at(2e6), |_| 10e6, ms(70_000));
    replay.run_to(ms(70_000));
    let history = replay.probe.history();
    assert_eq!(history.len(), DEFAULT_HISTORY_LEN);
    // Second 70 is recorded once something arrives after it.
    assert_eq!(history.last().map(|s| s.at_ms), Some(69_000));
    assert!(history.windows(2).all(|w| w[1].at_ms == w[0].at_ms + 1_000));
    let json = serde_json::to_value(history).expect("plain data serialises");
    let first = &json[0];
    assert_eq!(first["at_ms"], 10_000);
    assert!(first["throughput_bps"].as_f64().is_some_and(|t| t > 1.9e6), "{first}");
    assert_eq!(first["uplink_bound"], false);
}

#[test]
fn a_long_silence_does_not_backfill_more_than_the_history() {
    let mut probe = UplinkProbe::new(ProbeConfig::default(), default_rungs());
    probe.on_bytes(ms(10), 1_000);
    probe.on_bytes(Duration::from_secs(100_000), 1_000);
    assert_eq!(probe.history().len(), DEFAULT_HISTORY_LEN);
    // Time running backwards is booked at the latest time instead of panicking.
    probe.on_bytes(ms(5), 1_000);
    assert!(probe.estimate(ms(0)).throughput_bps > 0.0);
}

#[test]
fn the_recommended_height_is_the_tallest_rung_that_fits() {
    let rungs = default_rungs();
    assert_eq!(recommended_height(5.2e6, 128e3, &rungs), Some(1080));
    assert_eq!(recommended_height(5.1e6, 128e3, &rungs), Some(720));
    assert_eq!(recommended_height(2.0e6, 0.0, &rungs), Some(480));
    assert_eq!(recommended_height(500e3, 0.0, &rungs), None);
}
