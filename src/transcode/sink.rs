//! The appsink end of each rendition: cmafmux's output, reassembled into whole init and
//! media segments ([`super::fragment`]), timed by the boundaries decided upstream and
//! handed to the packager; with low latency, each chunk is handed over as it is cut too.

use std::sync::{Arc, Mutex};

use gst_app::AppSink;

use crate::media::TrackKind;
use super::boundaries::Boundaries;
use super::fragment::{avc_codecs, ChunkMeta, FragmentAssembler, FragmentError, MuxerOutput};
use super::io::{SessionOutput, SinkBinding};

/// `boundaries`: where the rendition's segments start, as decided upstream of its muxer
/// (the keyframe schedule for video, the audio cuts for audio). `chunked`: the muxer cuts
/// every segment into chunks.
pub(super) fn attach_sink(sink: &AppSink, binding: SinkBinding, output: SessionOutput, boundaries: Arc<Boundaries>, chunked: bool) {
    let limit = output.packager.max_fragment_bytes();
    let assembler = Mutex::new(if chunked { FragmentAssembler::chunked(limit) } else { FragmentAssembler::new(limit) });
    let rendition_sink = Arc::new(RenditionSink { binding, output, boundaries, assembler });
    let at_eos = Arc::clone(&rendition_sink);
    let span = tracing::Span::current();
    let eos_span = span.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let _guard = span.enter();
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                // Encoders offset their timestamps (x264 starts at 1000 h): the timeline
                // uses running time, as the muxer's tfdt does.
                let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>()).cloned();
                let mut assembler = rendition_sink.assembler.lock().map_err(|_| gst::FlowError::Error)?;
                let mut handle = |buffer: &gst::BufferRef| -> Result<(), gst::FlowError> {
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    let flags = buffer.flags();
                    let meta = ChunkMeta {
                        header: flags.contains(gst::BufferFlags::HEADER),
                        delta_unit: flags.contains(gst::BufferFlags::DELTA_UNIT),
                        discont: flags.contains(gst::BufferFlags::DISCONT),
                        marker: flags.contains(gst::BufferFlags::MARKER),
                        pts_ns: buffer
                            .pts()
                            .map(|pts| segment.as_ref().and_then(|s| s.to_running_time(pts)).unwrap_or(pts).nseconds()),
                        duration_ns: buffer.duration().map(|t| t.nseconds()),
                    };
                    match assembler.push(meta, &map, |start| rendition_sink.boundaries.after(start)) {
                        Ok(outputs) => outputs.into_iter().try_for_each(|o| rendition_sink.deliver(o)),
                        Err(FragmentError::TooLarge { .. }) => {
                            // Logged and counted by the packager; the error ends the stream.
                            rendition_sink.output.packager.fragment_too_large(&rendition_sink.output.stream, &rendition_sink.binding.rendition);
                            Err(gst::FlowError::Error)
                        }
                        Err(e) => {
                            tracing::error!(rendition = %rendition_sink.binding.rendition, "muxer output out of order: {e}");
                            Err(gst::FlowError::Error)
                        }
                    }
                };
                if let Some(list) = sample.buffer_list() {
                    for buffer in list.iter() {
                        handle(buffer)?;
                    }
                } else if let Some(buffer) = sample.buffer() {
                    handle(buffer)?;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| {
                // A chunked muxer's last segment ends with the stream.
                let _guard = eos_span.enter();
                let last = at_eos.assembler.lock().ok().and_then(|mut assembler| assembler.finish());
                if let Some(last) = last {
                    let _ = at_eos.deliver(last);
                }
            })
            .build(),
    );
}

/// One rendition's muxer output: reassembled, and where it goes.
struct RenditionSink {
    binding: SinkBinding,
    output: SessionOutput,
    boundaries: Arc<Boundaries>,
    /// Taken by the streaming thread for each sample, and once at EOS.
    assembler: Mutex<FragmentAssembler>,
}

impl RenditionSink {
    fn deliver(&self, output: MuxerOutput) -> Result<(), gst::FlowError> {
        let SessionOutput { packager, stream, session } = &self.output;
        let rendition = &self.binding.rendition;
        match output {
            MuxerOutput::Init(bytes) => {
                let codecs = match self.binding.kind {
                    TrackKind::Video => avc_codecs(&bytes),
                    TrackKind::Audio => self.binding.audio_codecs.clone(),
                };
                let Some(codecs) = codecs else {
                    tracing::error!(rendition = %rendition, "init segment has no codec configuration");
                    return Err(gst::FlowError::Error);
                };
                packager.add_init(stream, session, rendition, bytes, codecs);
            }
            MuxerOutput::Chunk(chunk) => {
                // Every AAC frame decodes alone; a video chunk only from its keyframe.
                let independent = chunk.first || self.binding.kind == TrackKind::Audio;
                packager.add_chunk(stream, session, rendition, chunk, independent);
            }
            MuxerOutput::Segment(mut segment) => {
                // The next segment's start was decided before the muxer could cut this one;
                // the muxer only estimates its last frame's duration.
                if let Some(end) = self.boundaries.after(segment.start_ns) {
                    segment.duration_ns = end - segment.start_ns;
                }
                let (start, duration) = (segment.start_ns, segment.duration_ns);
                let number = packager.add_segment(stream, session, rendition, segment);
                tracing::trace!(rendition = %rendition, ?number, start, duration, "segment");
            }
        }
        Ok(())
    }
}
