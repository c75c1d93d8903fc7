//! What cmafmux (gst-plugin-fmp4 0.14.5) does when each 1 s CMAF segment is produced as
//! chunks, measured on live pipelines shaped like a video rendition's (live 30 fps source,
//! x264 with a 1 s GOP, h264parse, cmafmux, appsink): the facts that docs/low-latency.md
//! relies on. Two ways to ask for chunks: the muxer's own `chunk-duration`, and manual
//! splits (`FMP4MuxSplitNow` events sent ahead of the frame that starts a chunk or a
//! fragment, as `boundaries::cut_audio_segments` does for audio fragments); and what
//! each does at EOS after a partial GOP. Assertions are on media and running time, never
//! on wall-clock figures, so a slower machine passes too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gst::prelude::*;

use super::boundaries::running_time;

const FPS: u64 = 30;
const FRAME_NS: u64 = 1_000_000_000 / FPS;
const FRAGMENT_NS: u64 = 1_000_000_000;
const CHUNK_NS: u64 = 250_000_000;
/// Frames of media per long case (5 fragments); the EOS cases stop 0.4 s into a GOP.
const LONG_FRAMES: u64 = 5 * FPS;
const PARTIAL_GOP_FRAMES: u64 = FPS + 12;
/// Tolerance for timestamps rounded by the muxer's timescale.
const ROUNDING_NS: u64 = 500_000;
const MUX: &str = "mux";
const SINK: &str = "sink";

/// How the muxer is told to cut chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// `chunk-duration` and `fragment-duration`: the muxer decides.
    ChunkDuration,
    /// `manual-split=true`: a `FMP4MuxSplitNow` event (`chunk=false`) before every keyframe
    /// but the first, one with `chunk=true` before the first frame at or after every
    /// `CHUNK_NS` of running time into the fragment.
    Manual,
}

/// One frame entering the muxer.
#[derive(Debug, Clone, Copy)]
struct Input {
    pts_ns: u64,
    keyframe: bool,
}

/// One buffer out of the muxer.
#[derive(Debug, Clone)]
struct Output {
    /// Which appsink sample (buffer list) carried it.
    sample: usize,
    /// The pipeline's running time when the appsink got it.
    arrival_ns: u64,
    pts_ns: Option<u64>,
    dts_ns: Option<u64>,
    duration_ns: Option<u64>,
    header: bool,
    discont: bool,
    delta_unit: bool,
    marker: bool,
    size: usize,
    /// A header's offset field: cmafmux puts the fragment's sequence number there.
    offset: u64,
    /// Top-level boxes of a header buffer (sample data has none).
    boxes: Vec<String>,
    /// A header whose `styp` lists the `lmsg` brand (the last segment).
    lmsg: bool,
}

#[derive(Debug, Default)]
struct Run {
    inputs: Vec<Input>,
    outputs: Vec<Output>,
}

/// One chunk as the muxer pushed it: a header buffer, its samples, the last one MARKER.
#[derive(Debug, Clone)]
struct Chunk {
    start_ns: u64,
    /// The header's DTS (the first sample's decode time).
    dts_ns: Option<u64>,
    /// Header and samples.
    bytes: usize,
    duration_ns: u64,
    frames: usize,
    /// The header is not DELTA_UNIT: this chunk starts a fragment.
    fragment_start: bool,
    /// Running time at which its MARKER buffer reached the appsink.
    arrival_ns: u64,
    sample: usize,
    /// The fragment's sequence number, from the header's offset field.
    sequence: u64,
    boxes: Vec<String>,
    lmsg: bool,
}

impl Chunk {
    fn end_ns(&self) -> u64 {
        self.start_ns + self.duration_ns
    }

    /// How long after its media ended (in running time) the chunk reached the appsink.
    fn lateness_ns(&self) -> i64 {
        self.arrival_ns as i64 - self.end_ns() as i64
    }
}

/// Where the manual-split probe cuts: fragments on keyframes, chunks on a grid inside them.
#[derive(Debug, Default)]
struct ManualCuts {
    seen_first: bool,
    next_chunk_ns: u64,
}

impl ManualCuts {
    /// The split-now event to send ahead of this frame: `Some(true)` for a chunk,
    /// `Some(false)` for a fragment.
    fn before(&mut self, input: Input) -> Option<bool> {
        let first = !self.seen_first;
        self.seen_first = true;
        if input.keyframe {
            self.next_chunk_ns = input.pts_ns + CHUNK_NS;
            return (!first).then_some(false);
        }
        if input.pts_ns + ROUNDING_NS < self.next_chunk_ns {
            return None;
        }
        while self.next_chunk_ns <= input.pts_ns + ROUNDING_NS {
            self.next_chunk_ns += CHUNK_NS;
        }
        Some(true)
    }
}

fn top_level_boxes(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        names.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        let size = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        if size < 8 {
            break;
        }
        at += size;
    }
    names
}

/// Runs a live pipeline for `frames` frames (then EOS) and records the muxer's input and
/// output. Every frame carries a UNIX reference timestamp, so the muxer can write `prft`.
fn run(split: Split, frames: u64) -> Run {
    super::init().unwrap();
    let manual = if split == Split::Manual { "manual-split=true" } else { "" };
    let text = format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=ball ! video/x-raw,width=320,height=180,framerate={FPS}/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=300 key-int-max={FPS} option-string=scenecut=0 ! h264parse \
         ! video/x-h264,stream-format=avc,alignment=au \
         ! cmafmux name={MUX} fragment-duration={FRAGMENT_NS} chunk-duration={CHUNK_NS} send-force-keyunit=false {manual} \
         ! appsink name={SINK} sync=false async=false buffer-list=true"
    );
    let pipeline = gst::parse::launch(&text).unwrap().downcast::<gst::Pipeline>().unwrap();
    let record = Arc::new(Mutex::new(Run::default()));

    let mux = pipeline.by_name(MUX).unwrap();
    let feed = mux.sink_pads().first().and_then(|p| p.peer()).unwrap();
    let unix = gst::Caps::builder("timestamp/x-unix").build();
    let cuts = Mutex::new(ManualCuts::default());
    let inputs = record.clone();
    feed.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer_mut() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let input = Input { pts_ns: running_time(pad, pts).nseconds(), keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        gst::ReferenceTimestampMeta::add(buffer.make_mut(), &unix, gst::ClockTime::from_nseconds(now), gst::ClockTime::NONE);
        inputs.lock().unwrap().inputs.push(input);
        if split == Split::Manual {
            if let Some(chunk) = cuts.lock().unwrap().before(input) {
                let event = gst::Structure::builder("FMP4MuxSplitNow").field("chunk", chunk).build();
                assert!(pad.push_event(gst::event::CustomDownstream::builder(event).build()));
            }
        }
        gst::PadProbeReturn::Ok
    });

    let sink = pipeline.by_name(SINK).unwrap().downcast::<gst_app::AppSink>().unwrap();
    let outputs = record.clone();
    let mut samples = 0;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let arrival_ns = sink.current_running_time().map_or(0, |t| t.nseconds());
                let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>()).cloned();
                let to_running = |t: Option<gst::ClockTime>| {
                    t.map(|t| segment.as_ref().and_then(|s| s.to_running_time(t)).unwrap_or(t).nseconds())
                };
                let mut out = outputs.lock().unwrap();
                let mut push = |buffer: &gst::BufferRef| {
                    let flags = buffer.flags();
                    let header = flags.contains(gst::BufferFlags::HEADER);
                    let map = buffer.map_readable().unwrap();
                    out.outputs.push(Output {
                        sample: samples,
                        arrival_ns,
                        pts_ns: to_running(buffer.pts()),
                        dts_ns: to_running(buffer.dts()),
                        duration_ns: buffer.duration().map(|d| d.nseconds()),
                        header,
                        discont: flags.contains(gst::BufferFlags::DISCONT),
                        delta_unit: flags.contains(gst::BufferFlags::DELTA_UNIT),
                        marker: flags.contains(gst::BufferFlags::MARKER),
                        size: map.len(),
                        offset: buffer.offset(),
                        boxes: if header { top_level_boxes(&map) } else { Vec::new() },
                        lmsg: header && map.windows(4).any(|w| w == b"lmsg"),
                    });
                };
                if let Some(list) = sample.buffer_list() {
                    list.iter().for_each(&mut push);
                } else if let Some(buffer) = sample.buffer() {
                    push(buffer);
                }
                samples += 1;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let limit = Duration::from_nanos(frames * FRAME_NS) + Duration::from_secs(20);
    let message = bus.timed_pop_filtered(gst::ClockTime::from_nseconds(limit.as_nanos() as u64), &[gst::MessageType::Eos, gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    match message.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        other => panic!("pipeline did not reach EOS: {other:?}"),
    }
    let run = std::mem::take(&mut *record.lock().unwrap());
    run
}

/// The chunks of a run, in order (the init segment left out).
fn chunks(run: &Run) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    for out in &run.outputs {
        if out.header && out.discont && out.boxes.first().is_some_and(|b| b == "ftyp") {
            continue;
        }
        if out.header {
            chunks.push(Chunk {
                start_ns: out.pts_ns.expect("chunk header has a pts"),
                dts_ns: out.dts_ns,
                bytes: out.size,
                duration_ns: out.duration_ns.expect("chunk header has a duration"),
                frames: 0,
                fragment_start: !out.delta_unit,
                arrival_ns: out.arrival_ns,
                sample: out.sample,
                sequence: out.offset,
                boxes: out.boxes.clone(),
                lmsg: out.lmsg,
            });
            continue;
        }
        let chunk = chunks.last_mut().expect("sample data after a chunk header");
        chunk.frames += 1;
        chunk.bytes += out.size;
        if out.marker {
            chunk.arrival_ns = out.arrival_ns;
        }
    }
    chunks
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn ms(ns: impl Into<i64>) -> f64 {
    ns.into() as f64 / 1e6
}

fn print(name: &str, run: &Run, chunks: &[Chunk]) {
    eprintln!("== {name}: {} frames in, {} buffers out", run.inputs.len(), run.outputs.len());
    for c in chunks {
        eprintln!(
            "  {} #{} start {:8.1} ms dts {:8.1} ms dur {:6.1} ms frames {:2} {:6} B sample {:3} arrival {:8.1} ms lateness {:6.1} ms {:?}{}",
            if c.fragment_start { "FRAG " } else { "chunk" },
            c.sequence, ms_u(c.start_ns), c.dts_ns.map_or(f64::NAN, ms_u), ms_u(c.duration_ns), c.frames, c.bytes, c.sample, ms_u(c.arrival_ns), ms(c.lateness_ns()), c.boxes,
            if c.lmsg { " lmsg" } else { "" }
        );
    }
}

fn ms_u(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The chunks grouped by fragment.
fn fragments(chunks: &[Chunk]) -> Vec<&[Chunk]> {
    let mut fragments: Vec<&[Chunk]> = Vec::new();
    let mut start = 0;
    for end in 1..=chunks.len() {
        if end == chunks.len() || chunks[end].fragment_start {
            fragments.push(&chunks[start..end]);
            start = end;
        }
    }
    fragments
}

/// What both modes do with 1 s GOPs: fragments start exactly on the keyframes; every chunk
/// is pushed on its own (one appsink sample each), within a frame or two of its media's end
/// in running time and before the next chunk's media has ended; the chunk that closes a
/// fragment waits one frame more than the others; a fragment's first chunk alone carries
/// `styp`, every chunk carries `prft` (the frames carry a reference timestamp) and all the
/// chunks of a fragment share its sequence number. Returns the fragments.
fn assert_chunked<'a>(run: &Run, chunks: &'a [Chunk], frames_per_chunk: std::ops::RangeInclusive<usize>) -> Vec<&'a [Chunk]> {
    let keyframes: Vec<u64> = run.inputs.iter().filter(|i| i.keyframe).map(|i| i.pts_ns).collect();
    let starts: Vec<u64> = chunks.iter().filter(|c| c.fragment_start).map(|c| c.start_ns).collect();
    assert_eq!(keyframes.len(), starts.len(), "one fragment per keyframe: {keyframes:?} {starts:?}");
    for (key, start) in keyframes.iter().zip(&starts) {
        assert!(key.abs_diff(*start) <= ROUNDING_NS, "fragment at {start} ns, keyframe at {key} ns");
    }
    assert_eq!(chunks.iter().map(|c| c.frames).sum::<usize>(), run.inputs.len(), "every frame comes out once");

    let fragments = fragments(chunks);
    for (n, fragment) in fragments.iter().enumerate() {
        assert!(fragment.iter().all(|c| c.sequence == fragment[0].sequence), "one sequence number per fragment: {fragment:?}");
        if n > 0 {
            assert_eq!(fragment[0].sequence, fragments[n - 1][0].sequence + 1);
        }
        assert_eq!(fragment[0].boxes[..3], ["styp", "prft", "moof"], "a fragment opens with styp: {fragment:?}");
        for chunk in &fragment[1..] {
            let expected: &[&str] = if chunk.lmsg { &["styp", "prft", "moof"] } else { &["prft", "moof"] };
            assert_eq!(chunk.boxes[..expected.len()], *expected, "a chunk inside a fragment: {chunk:?}");
        }
    }
    // Every fragment but the one cut by EOS is a full GOP in 4 chunks of whole frames.
    for fragment in &fragments[..fragments.len() - 1] {
        assert_eq!(fragment.len(), (FRAGMENT_NS / CHUNK_NS) as usize, "{fragment:?}");
        assert_eq!(fragment.iter().map(|c| c.frames).sum::<usize>(), FPS as usize);
        for chunk in *fragment {
            assert!(frames_per_chunk.contains(&chunk.frames), "{} frames: {chunk:?}", chunk.frames);
            assert!(chunk.duration_ns.abs_diff(chunk.frames as u64 * FRAME_NS) <= ROUNDING_NS, "{chunk:?}");
        }
    }

    let samples: std::collections::BTreeSet<usize> = chunks.iter().map(|c| c.sample).collect();
    assert_eq!(samples.len(), chunks.len(), "each chunk in its own appsink sample, none batched");
    // Timeliness, the last chunk left out (EOS pushes it early).
    let live = &chunks[..chunks.len() - 1];
    for pair in chunks.windows(2) {
        assert!(pair[0].arrival_ns < pair[1].end_ns(), "pushed after the next chunk's media had ended: {pair:?}");
    }
    let closing = |c: &&Chunk| chunks.iter().any(|n| n.fragment_start && n.start_ns == c.end_ns());
    let inner = median(live.iter().filter(|c| !closing(c)).map(Chunk::lateness_ns).collect());
    let closing = median(live.iter().filter(closing).map(Chunk::lateness_ns).collect());
    eprintln!("  median lateness: {:.1} ms inside a fragment, {:.1} ms closing one", ms(inner), ms(closing));
    assert!(inner < 2 * FRAME_NS as i64, "median chunk pushed {:.1} ms after its media ended", ms(inner));
    assert!(closing - inner > FRAME_NS as i64 / 2 && closing - inner < 2 * FRAME_NS as i64, "closing chunk waits for one more frame");
    fragments
}

/// The partial GOP before EOS comes out as a short last fragment, in chunks, the last one
/// marked `lmsg`.
fn assert_partial_gop_drained(chunks: &[Chunk]) {
    let fragments = fragments(chunks);
    let last = fragments.last().unwrap();
    assert_eq!(fragments.len(), 2, "{chunks:?}");
    assert_eq!(last.iter().map(|c| c.frames).sum::<usize>(), (PARTIAL_GOP_FRAMES - FPS) as usize);
    assert!(last.len() > 1, "the partial GOP is chunked too: {last:?}");
    assert!(chunks.last().unwrap().lmsg && chunks.iter().filter(|c| c.lmsg).count() == 1);
}

/// `chunk-duration`: each chunk runs to the first frame at or past 250 ms after the
/// previous chunk's end (8 frames, 266.7 ms), the fragment's last chunk gets the rest
/// (6 frames, 200 ms): the chunk grid drifts inside each fragment instead of
/// following running time.
#[test]
fn chunk_duration_mode() {
    let run = run(Split::ChunkDuration, LONG_FRAMES);
    let chunks = chunks(&run);
    print("chunk-duration=250ms", &run, &chunks);
    let fragments = assert_chunked(&run, &chunks, 6..=8);
    for fragment in &fragments[..fragments.len() - 1] {
        assert_eq!(fragment.iter().map(|c| c.frames).collect::<Vec<_>>(), [8, 8, 8, 6]);
    }
}

/// Manual splits: chunks start on the first frame at or after each 250 ms of running time
/// (8, 7, 8, 7 frames at 30 fps), fragments on the keyframes.
#[test]
fn manual_split_mode() {
    let run = run(Split::Manual, LONG_FRAMES);
    let chunks = chunks(&run);
    print("manual-split", &run, &chunks);
    let fragments = assert_chunked(&run, &chunks, 7..=8);
    for fragment in &fragments[..fragments.len() - 1] {
        assert_eq!(fragment.iter().map(|c| c.frames).collect::<Vec<_>>(), [8, 7, 8, 7]);
    }
}

#[test]
fn eos_after_a_partial_gop() {
    for split in [Split::Manual, Split::ChunkDuration] {
        let run = run(split, PARTIAL_GOP_FRAMES);
        let chunks = chunks(&run);
        print(&format!("{split:?}, EOS 0.4 s into a GOP"), &run, &chunks);
        assert_chunked(&run, &chunks, 6..=8);
        assert_partial_gop_drained(&chunks);
    }
}
