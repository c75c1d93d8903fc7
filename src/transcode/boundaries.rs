//! Where segments start, the same on every rendition: a keyframe schedule on media time
//! for video (forced key units on the pad that feeds the tee), and audio cuts that follow
//! the video's boundaries (or the grid, when the video does not decide in time), so
//! segment N covers the same second in every Representation.

use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;

use super::TranscodeError;
use super::spec::{AUDIO_MUX, VIDEO_SPLIT};

/// Decides which decoded frames must be keyframes: the first frame at or after every
/// segment boundary. Deciding once, before the tee, gives every rung its keyframes on the
/// same frames, so segment N of every rung starts at the same media time.
#[derive(Debug)]
pub struct KeyframeSchedule {
    interval_ns: u64,
    next_ns: u64,
}

impl KeyframeSchedule {
    pub fn new(interval: Duration) -> Self {
        Self { interval_ns: interval.as_nanos() as u64, next_ns: 0 }
    }

    /// True when the frame at `pts_ns` (running time) must be a keyframe.
    pub fn is_boundary(&mut self, pts_ns: u64) -> bool {
        if pts_ns < self.next_ns {
            return false;
        }
        self.next_ns = (pts_ns / self.interval_ns + 1) * self.interval_ns;
        true
    }
}

/// The running times at which one rendition kind's segments start, decided upstream of its
/// muxers: the video's as the keyframe schedule chose them, the audio's as `AudioCuts` did.
/// A segment's duration is the distance to the next boundary: the muxer can only estimate
/// its last frame's duration, and a duration listed in the MPD must never change once a
/// player may have read it. The audio waits on the video's for the boundary it must cut at.
#[derive(Debug, Default)]
pub(super) struct Boundaries {
    list: std::sync::Mutex<BoundaryList>,
    recorded: std::sync::Condvar,
}

#[derive(Debug, Default)]
pub(super) struct BoundaryList {
    times: std::collections::VecDeque<u64>,
    /// No boundary will follow (the video ended, or the pipeline stops).
    ended: bool,
}

impl Boundaries {
    /// Boundaries kept: far more than the segments between the decoder and the muxers.
    const KEPT: usize = 64;

    pub(super) fn record(&self, pts_ns: u64) {
        if let Ok(mut list) = self.list.lock() {
            if list.times.len() == Self::KEPT {
                list.times.pop_front();
            }
            list.times.push_back(pts_ns);
        }
        self.recorded.notify_all();
    }

    pub(super) fn end(&self) {
        if let Ok(mut list) = self.list.lock() {
            list.ended = true;
        }
        self.recorded.notify_all();
    }

    /// The first boundary after a segment that starts at `start_ns` (half a millisecond of
    /// tolerance for the muxer's rounding).
    pub(super) fn after(&self, start_ns: u64) -> Option<u64> {
        self.list.lock().ok()?.times.iter().copied().find(|b| *b > start_ns + 500_000)
    }

    /// The first boundary at or after `at_ns`, waiting up to `timeout` for the video to
    /// reach it.
    pub(super) fn wait_at_or_after(&self, at_ns: u64, timeout: Duration) -> Decision {
        let deadline = std::time::Instant::now() + timeout;
        let Ok(mut list) = self.list.lock() else { return Decision::Ended };
        loop {
            if let Some(boundary) = list.times.iter().copied().find(|b| *b >= at_ns) {
                return Decision::At(boundary);
            }
            if list.ended {
                return Decision::Ended;
            }
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return Decision::TimedOut };
            list = match self.recorded.wait_timeout(list, left) {
                Ok((list, _)) => list,
                Err(_) => return Decision::Ended,
            };
        }
    }
}

/// What the audio learns about the video's next boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// The video segment starts here.
    At(u64),
    /// The video has not got there in time.
    TimedOut,
    /// The video ended before it: the audio that is left belongs to its last segment.
    Ended,
}

/// Longest the audio waits for the video to decide a segment boundary: the video's input
/// queue holds up to a second of media, and decoding takes its own time. Past it the audio
/// cuts on the segment grid, where the video's boundary almost always is.
pub(super) const VIDEO_DECISION_WAIT: Duration = Duration::from_secs(2);

/// Decides where audio segments start: before the first audio frame whose middle is at or
/// after the start of the video segment with the same number, so that audio segment N
/// starts within half an audio frame of video segment N. (The muxer's own schedule would
/// drift: AAC frames are 1024 samples, and it fills a fragment with the frames that end
/// before its target.) Pure: the video boundary comes from the caller.
#[derive(Debug)]
pub(super) struct AudioCuts {
    interval_ns: u64,
    /// The grid time of the next video boundary (video boundaries are the first frames at
    /// or after each multiple of the interval).
    next_grid_ns: u64,
    /// The video boundary of `next_grid_ns`, once known.
    target_ns: Option<u64>,
}

impl AudioCuts {
    pub(super) fn new(interval: Duration) -> Self {
        let interval_ns = interval.as_nanos() as u64;
        Self { interval_ns, next_grid_ns: interval_ns, target_ns: None }
    }

    /// True when the audio frame `[start_ns, start_ns + duration_ns)` opens a new segment.
    /// `boundary(grid)` gives the video boundary at or after `grid`, or `None` when no video
    /// segment will start there; it is asked only when a frame reaches that grid time.
    pub(super) fn opens_segment(&mut self, start_ns: u64, duration_ns: u64, boundary: impl FnOnce(u64) -> Option<u64>) -> bool {
        let middle = start_ns + duration_ns / 2;
        if middle < self.next_grid_ns {
            return false;
        }
        let grid = self.next_grid_ns;
        let target = match self.target_ns {
            Some(target) => target,
            None => match boundary(grid) {
                Some(target) => *self.target_ns.insert(target),
                None => return false,
            },
        };
        if middle < target {
            return false;
        }
        self.next_grid_ns = (target / self.interval_ns + 1) * self.interval_ns;
        self.target_ns = None;
        true
    }
}

/// Asks the audio muxer (in manual-split mode) to start a new fragment before every audio
/// frame that `AudioCuts` picks: a split-now event travels in order with the audio, just
/// ahead of that frame. Without video (`video` is `None`) the cuts follow the segment grid.
/// Every cut is recorded in `cuts`: an audio segment's listed duration runs to the next.
///
/// With `chunk` set, a chunk split is sent as well before the first frame at or after each
/// multiple of `chunk` into the segment ([`ChunkGrid`], segments of `interval`).
pub(super) fn cut_audio_segments(
    pipeline: &gst::Pipeline,
    interval: Duration,
    chunk: Option<Duration>,
    video: Option<Arc<Boundaries>>,
    cuts_made: Arc<Boundaries>,
) -> Result<(), TranscodeError> {
    let pad = muxer_input(pipeline, AUDIO_MUX)?;
    let cuts = std::sync::Mutex::new((AudioCuts::new(interval), chunk.map(|chunk| ChunkGrid::new(chunk, interval))));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let running_time = running_time(pad, pts);
        // AAC-LC at 48 kHz when the parser left no duration.
        let duration = buffer.duration().map_or(21_333_333, |d| d.nseconds());
        let Ok(mut cuts) = cuts.lock() else { return gst::PadProbeReturn::Ok };
        let (cuts, grid) = &mut *cuts;
        let opens = cuts.opens_segment(running_time.nseconds(), duration, |grid| match video.as_ref().map(|b| b.wait_at_or_after(grid, VIDEO_DECISION_WAIT)) {
            None | Some(Decision::TimedOut) => Some(grid),
            Some(Decision::At(boundary)) => Some(boundary),
            Some(Decision::Ended) => None,
        });
        if opens {
            cuts_made.record(running_time.nseconds());
        }
        let split = match grid.as_mut() {
            Some(grid) => grid.split_before(running_time.nseconds(), opens),
            None => opens.then_some(Split::Fragment),
        };
        if let Some(split) = split {
            split.send(pad, running_time, "audio");
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// A cut asked of a muxer in manual-split mode, sent as a `FMP4MuxSplitNow` event just
/// ahead of the frame that starts the new fragment or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// A new fragment: a new segment.
    Fragment,
    /// A new chunk of the current fragment.
    Chunk,
}

impl Split {
    fn send(self, pad: &gst::Pad, at: gst::ClockTime, track: &str) {
        let chunk = self == Split::Chunk;
        let event = gst::event::CustomDownstream::builder(gst::Structure::builder("FMP4MuxSplitNow").field("chunk", chunk).build()).build();
        if !pad.push_event(event) {
            tracing::warn!("{track} {self:?} split at {at} was not delivered");
        }
    }
}

/// Where a segment's chunks start: the first frame at or after each multiple of the chunk
/// duration into the segment, so every rendition (and the audio) cuts on the same grid,
/// restarted at every segment boundary. A segment has at most as many chunks as fit in
/// its nominal duration: media past that (a segment made longer by a late keyframe) joins
/// its last chunk instead of starting a sliver of one. Pure: the caller says which frame
/// opens a segment.
#[derive(Debug)]
pub(super) struct ChunkGrid {
    chunk_ns: u64,
    /// Chunk splits in one segment: the chunks that fit in it, less the first.
    splits_per_segment: u64,
    /// Where the next chunk starts, and the splits left in this segment; None before the
    /// first segment.
    next: Option<(u64, u64)>,
}

impl ChunkGrid {
    /// Half a millisecond of tolerance for rounded timestamps.
    const TOLERANCE_NS: u64 = 500_000;

    /// Chunks of `chunk` in segments of `segment` (`PackageConfig::chunks` makes one a
    /// whole number of the other).
    pub(super) fn new(chunk: Duration, segment: Duration) -> Self {
        let chunk_ns = u64::try_from(chunk.as_nanos()).unwrap_or(u64::MAX).max(1);
        let segment_ns = u64::try_from(segment.as_nanos()).unwrap_or(u64::MAX);
        Self { chunk_ns, splits_per_segment: ((segment_ns + Self::TOLERANCE_NS) / chunk_ns).saturating_sub(1), next: None }
    }

    /// A grid whose chunks never come due: fragment splits only.
    fn whole_segments() -> Self {
        Self { chunk_ns: u64::MAX, splits_per_segment: 0, next: None }
    }

    /// The split to ask for before the frame at `at_ns` (running time) that opens a segment
    /// when `opens_segment`: none before the very first frame (the muxer's first fragment
    /// starts there anyway), a fragment at every later segment start, a chunk at the first
    /// frame at or after each grid time inside a segment.
    pub(super) fn split_before(&mut self, at_ns: u64, opens_segment: bool) -> Option<Split> {
        if opens_segment || self.next.is_none() {
            let first = self.next.is_none();
            self.next = Some((at_ns.saturating_add(self.chunk_ns), self.splits_per_segment));
            return (!first).then_some(Split::Fragment);
        }
        let (next, left) = self.next.as_mut()?;
        if *left == 0 || at_ns + Self::TOLERANCE_NS < *next {
            return None;
        }
        while *next <= at_ns + Self::TOLERANCE_NS {
            *next = next.saturating_add(self.chunk_ns);
        }
        *left -= 1;
        Some(Split::Chunk)
    }
}

/// Asks one video rung's muxer (in manual-split mode) for a new fragment before each
/// keyframe at or past the next segment boundary that the keyframe schedule recorded, and,
/// with `chunk`, for a new chunk on the [`ChunkGrid`]. The probe sits on the muxer's input,
/// after the encoder: it sees the encoded frames in decode order, and an extra keyframe
/// the encoder chose (a scene cut) starts no segment.
pub(super) fn split_video_fragments(
    pipeline: &gst::Pipeline,
    mux_name: &str,
    segment: Duration,
    chunk: Option<Duration>,
    boundaries: Arc<Boundaries>,
) -> Result<(), TranscodeError> {
    let pad = muxer_input(pipeline, mux_name)?;
    // The grid, and where the current segment started.
    let state = std::sync::Mutex::new((chunk.map_or_else(ChunkGrid::whole_segments, |chunk| ChunkGrid::new(chunk, segment)), None::<u64>));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let at = running_time(pad, pts);
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let Ok(mut state) = state.lock() else { return gst::PadProbeReturn::Ok };
        let (grid, segment_start) = &mut *state;
        let opens = keyframe
            && match *segment_start {
                None => true,
                Some(start) => boundaries.after(start).is_some_and(|next| at.nseconds() + ChunkGrid::TOLERANCE_NS >= next),
            };
        if opens {
            *segment_start = Some(at.nseconds());
        }
        if let Some(split) = grid.split_before(at.nseconds(), opens) {
            split.send(pad, at, "video");
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// The pad that feeds the muxer named `mux_name`: split-now events pushed there travel in
/// order with the frames.
fn muxer_input(pipeline: &gst::Pipeline, mux_name: &str) -> Result<gst::Pad, TranscodeError> {
    let mux = pipeline.by_name(mux_name).ok_or_else(|| TranscodeError::NoElement(mux_name.into()))?;
    mux.sink_pads()
        .first()
        .and_then(|sink| sink.peer())
        .ok_or_else(|| TranscodeError::NoElement(format!("{mux_name}'s upstream pad")))
}

/// `pts` on the running-time clock of the segment that `pad` carries.
pub(super) fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> gst::ClockTime {
    pad.sticky_event::<gst::event::Segment>(0)
        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().and_then(|s| s.to_running_time(pts)))
        .unwrap_or(pts)
}

/// Sends a downstream force-key-unit event ahead of every boundary frame leaving the
/// decode chain for the tee (whatever the backend's chain is); the event travels in order
/// with the frame down every branch.
pub(super) fn force_keyframes_at_boundaries(pipeline: &gst::Pipeline, interval: Duration, boundaries: Arc<Boundaries>) -> Result<(), TranscodeError> {
    let tee = pipeline.by_name(VIDEO_SPLIT).ok_or_else(|| TranscodeError::NoElement(VIDEO_SPLIT.into()))?;
    let pad = tee
        .static_pad("sink")
        .and_then(|sink| sink.peer())
        .ok_or_else(|| TranscodeError::NoElement(format!("the decode chain's pad linked to {VIDEO_SPLIT}")))?;
    let schedule = std::sync::Mutex::new(KeyframeSchedule::new(interval));
    let ended = Arc::clone(&boundaries);
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::EventView::Eos(_)) = info.event().map(|e| e.view()) {
            ended.end();
        }
        gst::PadProbeReturn::Ok
    });
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else { return gst::PadProbeReturn::Ok };
        let boundary = schedule.lock().map(|mut s| s.is_boundary(pts.nseconds())).unwrap_or(false);
        if boundary {
            boundaries.record(pts.nseconds());
            // No running time: "key unit as soon as possible", i.e. on the frame that follows
            // this serialized event. (GStreamer 1.22's encoder base class compares running
            // times offset by 1000 h against the event's, and drops timed requests.)
            let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                .timestamp(pts)
                .running_time(gst::ClockTime::NONE)
                .all_headers(true)
                .build();
            if !pad.push_event(event) {
                tracing::warn!("keyframe request at {pts} was not delivered");
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_fall_on_the_first_frame_of_each_second() {
        let mut schedule = KeyframeSchedule::new(Duration::from_secs(1));
        let frame_ms = [0u64, 33, 967, 1000, 1033, 1999, 2034, 2067, 4100, 4133];
        let forced: Vec<u64> = frame_ms.into_iter().filter(|ms| schedule.is_boundary(ms * 1_000_000)).collect();
        // 2034 stands in for a dropped 2000; 4100 for a gap that skipped a whole second.
        assert_eq!(forced, [0, 1000, 2034, 4100]);
    }

    #[test]
    fn audio_segments_start_within_half_a_frame_of_the_video_segments() {
        const FRAME_NS: u64 = 1024 * 1_000_000_000 / 48_000;
        let video_ms = [1000u64, 2034, 3000, 5100];
        let mut cuts = AudioCuts::new(Duration::from_secs(1));
        let mut asked = Vec::new();
        let mut starts = Vec::new();
        for k in 0..330u64 {
            let start = k * FRAME_NS;
            let opens = cuts.opens_segment(start, FRAME_NS, |grid| {
                asked.push(grid / 1_000_000);
                video_ms.iter().map(|ms| ms * 1_000_000).find(|b| *b >= grid)
            });
            if opens {
                starts.push(start);
            }
        }
        // The video is asked once per boundary, only when the audio reaches its grid time;
        // past the video's end (no boundary at 6 s) the audio stays in its last segment.
        assert_eq!(&asked[..5], [1000, 2000, 3000, 4000, 6000]);
        assert!(asked[5..].iter().all(|grid| *grid == 6000));
        assert_eq!(starts.len(), 4);
        for (audio, video_ms) in starts.iter().zip(video_ms) {
            let gap = audio.abs_diff(video_ms * 1_000_000);
            assert!(gap <= FRAME_NS / 2, "audio cut at {audio} ns, video at {video_ms} ms");
        }
    }

    #[test]
    fn chunks_start_on_a_grid_restarted_at_every_segment() {
        const MS: u64 = 1_000_000;
        let cuts = |chunk_ms: u64, frames: &[u64], opens: &[u64]| {
            let mut grid = ChunkGrid::new(Duration::from_millis(chunk_ms), Duration::from_secs(1));
            let mut cuts = Vec::new();
            for &at in frames {
                if let Some(split) = grid.split_before(at, opens.iter().any(|b| b.abs_diff(at) < MS)) {
                    cuts.push((split, (at + MS / 2) / MS));
                }
            }
            cuts
        };
        let chunk = |ms: &[u64]| ms.iter().map(|ms| (Split::Chunk, *ms)).collect::<Vec<_>>();
        // 30 fps frames (33.3 ms); segments open at 0, 1000 and 2034 ms (a dropped frame).
        let frames: Vec<u64> = (0..60).map(|i| i * 1_000 * MS / 30).chain((61..75).map(|i| i * 1_000 * MS / 30 + MS)).collect();
        let mut expected = chunk(&[200, 400, 600, 800]);
        expected.push((Split::Fragment, 1_000));
        expected.extend(chunk(&[1_200, 1_400, 1_600, 1_800]));
        expected.push((Split::Fragment, 2_034));
        expected.extend(chunk(&[2_234, 2_434]));
        assert_eq!(cuts(200, &frames, &[0, 1_000 * MS, 2_034 * MS]), expected);

        // Thirds of a second; the second segment runs 1.1 s (a late keyframe): its media past
        // 1 s joins its last chunk, no fourth chunk starts at 2000 ms.
        let frames: Vec<u64> = (0..80).map(|i| i * 1_000 * MS / 30).collect();
        let mut expected = chunk(&[333, 667]);
        expected.push((Split::Fragment, 1_000));
        expected.extend(chunk(&[1_333, 1_667]));
        expected.push((Split::Fragment, 2_100));
        expected.extend(chunk(&[2_433]));
        assert_eq!(cuts(333, &frames, &[0, 1_000 * MS, 2_100 * MS]), expected);
    }

    #[test]
    fn audio_waits_for_the_video_boundary_and_falls_back_to_the_grid() {
        let boundaries = Arc::new(Boundaries::default());
        let recorder = Arc::clone(&boundaries);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            recorder.record(1_033_000_000);
        });
        assert_eq!(boundaries.wait_at_or_after(1_000_000_000, Duration::from_secs(5)), Decision::At(1_033_000_000));
        late.join().unwrap();
        assert_eq!(boundaries.wait_at_or_after(2_000_000_000, Duration::from_millis(20)), Decision::TimedOut);
        boundaries.end();
        let started = std::time::Instant::now();
        assert_eq!(boundaries.wait_at_or_after(2_000_000_000, Duration::from_secs(5)), Decision::Ended);
        assert!(started.elapsed() < Duration::from_secs(1), "an ended video does not keep the audio waiting");
    }
}
