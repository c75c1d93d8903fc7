//! `rackcast transcode`: a file through the live path, as fast as it goes. The file is
//! demuxed (parsebin) into the same appsrc inputs a broadcaster's packets take, the same
//! admission, templates, pipeline and packager make the segments, and the stream's MPD,
//! static once the input ends, is written out with every segment: a DASH package to test
//! a ladder on this host's hardware, and the transcode benchmark's subject.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_app::AppSink;

use super::admission::Request;
use super::resources::Resources;
use super::spec::PipelineSpec;
use super::{source, SessionIo, SessionOutput, Transcoder};
use crate::ladder::config::RungConfig;
use crate::transcode::config::TranscodeConfig;
use crate::media::{SessionId, StreamId, TrackKind};
use crate::package::mpd::{init_template, media_template, MpdTiming};
use crate::package::Packager;
use crate::store::{ManifestForm, Part, Store};

/// Longest wait for the demuxer's first samples, and for any sample after that.
const DEMUX_WAIT: Duration = Duration::from_secs(20);
/// Samples the demuxer may run ahead of the transcoder, per track.
const DEMUX_AHEAD: u32 = 512;
/// Longest wait for the pipeline to finish its last segments after the input ends.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub media: Duration,
    pub wall: Duration,
    pub backend: String,
    pub rungs: Vec<String>,
    pub segments: usize,
    pub manifest: PathBuf,
}

/// Parses `720p=2500k,480p=1000k,360p=600k` (heights and kbit/s).
pub fn parse_ladder(text: &str) -> Result<Vec<RungConfig>, String> {
    text.split(',')
        .map(|rung| {
            let (height, bitrate) = rung.trim().split_once('=').ok_or_else(|| format!("{rung:?}: expected HEIGHTp=BITRATEk"))?;
            let height = height.trim_end_matches('p').parse().map_err(|_| format!("{rung:?}: height is not a number"))?;
            let bitrate = bitrate.trim_end_matches(['k', 'K']).parse().map_err(|_| format!("{rung:?}: bitrate is not a number of kbit/s"))?;
            Ok(RungConfig { height, bitrate_kbps: bitrate })
        })
        .collect()
}

/// One demuxed track, read through an appsink.
struct Track {
    kind: TrackKind,
    sink: AppSink,
    next: Option<gst::Buffer>,
    ended: bool,
}

impl Track {
    fn fill(&mut self) -> Result<(), String> {
        if self.next.is_some() || self.ended {
            return Ok(());
        }
        match self.sink.try_pull_sample(gst::ClockTime::from_nseconds(DEMUX_WAIT.as_nanos() as u64)) {
            Some(sample) => self.next = sample.buffer_owned(),
            None if self.sink.is_eos() => self.ended = true,
            None => return Err(format!("the demuxer gave no {:?} sample for {DEMUX_WAIT:?}", self.kind)),
        }
        Ok(())
    }

    fn time(&self) -> Option<gst::ClockTime> {
        self.next.as_ref().and_then(|b| b.dts_or_pts())
    }
}

/// Opens `input` and prerolls it: the H.264 and AAC tracks, with their caps.
fn demux(input: &Path) -> Result<(gst::Pipeline, Vec<(Track, gst::Caps)>), String> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc").property("location", input.to_string_lossy().as_ref()).build().map_err(|e| e.to_string())?;
    let parse = gst::ElementFactory::make("parsebin").build().map_err(|e| e.to_string())?;
    pipeline.add_many([&src, &parse]).map_err(|e| e.to_string())?;
    src.link(&parse).map_err(|e| e.to_string())?;
    let weak = pipeline.downgrade();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let (parser, filter, sink_name) = match name.as_str() {
            "video/x-h264" => ("h264parse", gst::Caps::builder("video/x-h264").field("stream-format", "avc").field("alignment", "au").build(), "video"),
            "audio/mpeg" => ("aacparse", gst::Caps::builder("audio/mpeg").field("mpegversion", 4i32).field("stream-format", "raw").build(), "audio"),
            other => {
                tracing::warn!("input track {other} is skipped (rackcast takes H.264 video and AAC audio)");
                let sink = gst::ElementFactory::make("fakesink").build().expect("fakesink");
                let _ = pipeline.add(&sink);
                let _ = sink.sync_state_with_parent();
                let _ = pad.link(&sink.static_pad("sink").expect("sink pad"));
                return;
            }
        };
        if pipeline.by_name(sink_name).is_some() {
            tracing::warn!("a second {name} track is skipped");
            return;
        }
        // A demuxer reading the file pushes every track from one thread: each track gets its
        // own queue, or the first sink to preroll would block the others' data.
        let build = || -> Result<(), String> {
            let queue = gst::ElementFactory::make("queue").build().map_err(|e| e.to_string())?;
            let parser = gst::ElementFactory::make(parser).build().map_err(|e| e.to_string())?;
            let sink = gst_app::AppSink::builder().name(sink_name).caps(&filter).sync(false).max_buffers(DEMUX_AHEAD).build();
            pipeline.add_many([&queue, &parser, sink.upcast_ref()]).map_err(|e| e.to_string())?;
            gst::Element::link_many([&queue, &parser, sink.upcast_ref()]).map_err(|e| e.to_string())?;
            for element in [&queue, &parser, sink.upcast_ref()] {
                element.sync_state_with_parent().map_err(|e| e.to_string())?;
            }
            pad.link(&queue.static_pad("sink").expect("sink pad")).map_err(|e| format!("{e:?}"))?;
            Ok(())
        };
        if let Err(e) = build() {
            tracing::error!("linking the {name} track: {e}");
        }
    });
    pipeline.set_state(gst::State::Paused).map_err(|e| format!("opening {}: {e}", input.display()))?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let message = bus.timed_pop_filtered(gst::ClockTime::from_nseconds(DEMUX_WAIT.as_nanos() as u64), &[gst::MessageType::AsyncDone, gst::MessageType::Error]);
    match message.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::AsyncDone(_)) => {}
        Some(gst::MessageView::Error(err)) => {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(format!("reading {}: {}", input.display(), err.error()));
        }
        _ => {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(format!("reading {}: no media within {DEMUX_WAIT:?}", input.display()));
        }
    }
    let mut tracks = Vec::new();
    for (name, kind) in [("video", TrackKind::Video), ("audio", TrackKind::Audio)] {
        let Some(sink) = pipeline.by_name(name).and_then(|e| e.downcast::<AppSink>().ok()) else { continue };
        let caps = sink.static_pad("sink").and_then(|p| p.current_caps()).ok_or_else(|| format!("the {name} track has no caps"))?;
        tracks.push((Track { kind, sink, next: None, ended: false }, caps));
    }
    if !tracks.iter().any(|(t, _)| t.kind == TrackKind::Video) {
        let _ = pipeline.set_state(gst::State::Null);
        return Err(format!("{} has no H.264 video track", input.display()));
    }
    Ok((pipeline, tracks))
}

fn codec_data(caps: &gst::Caps) -> Result<Vec<u8>, String> {
    let buffer = caps.structure(0).and_then(|s| s.get::<gst::Buffer>("codec_data").ok()).ok_or("no codec_data in the track's caps")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    Ok(map.to_vec())
}

/// Transcodes `input` into a static DASH package in `out`.
pub fn run(input: &Path, out: &Path, config: &TranscodeConfig, resources: &Resources, segment_duration: Duration) -> Result<Report, String> {
    let started = Instant::now();
    let (demuxer, tracks) = demux(input)?;
    let (mut tracks, caps): (Vec<Track>, Vec<gst::Caps>) = tracks.into_iter().unzip();
    let video_index = tracks.iter().position(|t| t.kind == TrackKind::Video).expect("checked in demux");
    let avcc = codec_data(&caps[video_index])?;
    let format = source::video_format(&avcc).map_err(|e| e.to_string())?;
    let fps = caps[video_index]
        .structure(0)
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(30.0, |f| f64::from(f.numer()) / f64::from(f.denom()));
    let audio = match tracks.iter().position(|t| t.kind == TrackKind::Audio) {
        Some(i) => {
            let asc = codec_data(&caps[i])?;
            Some((source::AacConfig::parse(&asc).map_err(|e| e.to_string())?, asc))
        }
        None => None,
    };

    let mut plan = crate::ladder::plan(format, &config.rungs);
    if plan.rungs.is_empty() {
        return Err(format!("no rung of the ladder fits a {}x{} source", format.width, format.height));
    }
    let request = Request::for_plan(format, fps, &plan, &config.x264_preset);
    let grant = resources.admission.admit(&request)?;
    if grant.rungs < plan.rungs.len() {
        plan.rungs.drain(..plan.rungs.len() - grant.rungs);
    }
    tracing::info!(backend = %grant.backend, device = %grant.device, why = %grant.why, fps, rungs = ?plan.rungs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), "transcoding");

    let stream = StreamId::parse("transcode").expect("valid id");
    let session = SessionId::generate();
    let timing = MpdTiming {
        segment_duration,
        update_period: Duration::from_secs(1),
        // Nothing is evicted: the whole file is the presentation.
        dvr_window: Duration::from_secs(30 * 24 * 3600),
        presentation_delay: Duration::from_secs(2),
        number_form_delay: Duration::ZERO,
        chunk_duration: None,
    };
    let store = Arc::new(Store::new());
    let packager = Arc::new(Packager::new(Arc::clone(&store), timing));
    let io = SessionIo::new(&plan, audio.as_ref().map(|(aac, asc)| (aac, asc.as_slice())), config.audio_bitrate);
    packager.begin_session(&stream, &session, io.renditions, Some(Duration::ZERO));
    let spec = PipelineSpec {
        ladder: plan.clone(),
        template: resources.template(grant.backend).clone(),
        device: grant.device.clone(),
        x264_preset: config.x264_preset.clone(),
        decode_threads: resources.decode_threads,
        fps,
        source_height: format.height,
        audio: io.audio_plan,
        segment_duration,
        // A file is packaged whole: nobody reads its segments while they are encoded.
        chunk_duration: None,
    };
    let output = SessionOutput { packager: Arc::clone(&packager), stream: stream.clone(), session: session.clone() };
    let transcoder = Transcoder::start(&spec, Some(crate::transcode::avc_caps(&avcc)), io.audio_caps, io.sinks, output).map_err(|e| e.to_string())?;
    demuxer.set_state(gst::State::Playing).map_err(|e| e.to_string())?;

    let fed = feed(&transcoder, &mut tracks);
    let _ = demuxer.set_state(gst::State::Null);
    if let Err(e) = fed {
        transcoder.stop();
        return Err(e);
    }
    let bus = transcoder.bus();
    transcoder.finish(DRAIN_WAIT);
    if let Some(err) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = err.view() {
            return Err(format!("pipeline error: {} ({:?})", err.error(), err.debug()));
        }
    }
    packager.end_session(&stream, &session);
    let media = packager.media_end(&stream).unwrap_or_default();
    let segments = write_package(&store, &stream, &session, out)?;
    Ok(Report {
        media,
        wall: started.elapsed(),
        backend: format!("{} on {}", grant.backend, grant.device),
        rungs: plan.rungs.iter().map(|r| r.id.to_string()).collect(),
        segments,
        manifest: out.join(ManifestForm::Timeline.file_name()),
    })
}

/// Pushes the tracks' samples in decode order, as fast as the transcoder takes them.
fn feed(transcoder: &Transcoder, tracks: &mut [Track]) -> Result<(), String> {
    loop {
        for track in tracks.iter_mut() {
            track.fill()?;
        }
        let Some(track) = tracks.iter_mut().filter(|t| t.next.is_some()).min_by_key(|t| t.time()) else { break };
        let buffer = track.next.take().expect("filtered");
        let kind = track.kind;
        if kind == TrackKind::Video {
            while transcoder.input_full() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        transcoder.push_buffer(kind, buffer).map_err(|e| e.to_string())?;
        for track in tracks.iter_mut().filter(|t| t.ended && t.next.is_none()) {
            transcoder.end_input(track.kind);
        }
    }
    for track in tracks.iter() {
        transcoder.end_input(track.kind);
    }
    Ok(())
}

/// Writes the static MPD and every object it names under `out`, at the paths its
/// templates give them.
fn write_package(store: &Store, stream: &StreamId, session: &SessionId, out: &Path) -> Result<usize, String> {
    let manifest = store.manifest(stream, ManifestForm::Timeline).ok_or("no segment was produced")?;
    let write = |path: PathBuf, bytes: &[u8]| -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let session_name = session.to_string();
    let mut segments = 0;
    for key in store.object_keys(stream).into_iter().filter(|k| &k.session == session) {
        let (template, number) = match key.part {
            Part::Init => (init_template(&session_name), String::new()),
            Part::Media(n) => {
                segments += 1;
                (media_template(&session_name), n.to_string())
            }
        };
        let relative = template.replace("$RepresentationID$", key.rendition.as_str()).replace("$Number$", &number);
        let bytes = store.object(stream, &key).ok_or("an object vanished while the package was written")?;
        write(out.join(relative), &bytes)?;
    }
    write(out.join(ManifestForm::Timeline.file_name()), &manifest)?;
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_are_read_from_the_command_line() {
        let rungs = parse_ladder("720p=2500k,480p=1000k, 360p=600").unwrap();
        assert_eq!(rungs, [
            RungConfig { height: 720, bitrate_kbps: 2500 },
            RungConfig { height: 480, bitrate_kbps: 1000 },
            RungConfig { height: 360, bitrate_kbps: 600 }
        ]);
        assert!(parse_ladder("720p").is_err());
        assert!(parse_ladder("hd=2500k").is_err());
    }
}
