//! The appsink end of each rendition: cmafmux's output, reassembled into whole init and
//! media segments ([`super::fragment`]), timed by the boundaries decided upstream and
//! handed to the packager.

use std::sync::Arc;

use gst_app::AppSink;

use crate::media::TrackKind;
use super::boundaries::Boundaries;
use super::fragment::{avc_codecs, ChunkMeta, FragmentAssembler, FragmentError, MuxerOutput};
use super::io::{SessionOutput, SinkBinding};

/// `boundaries`: where the rendition's segments start, as decided upstream of its muxer
/// (the keyframe schedule for video, the audio cuts for audio).
pub(super) fn attach_sink(sink: &AppSink, binding: SinkBinding, output: SessionOutput, boundaries: Arc<Boundaries>) {
    let span = tracing::Span::current();
    let mut assembler = FragmentAssembler::new(output.packager.max_fragment_bytes());
    let SinkBinding { rendition, kind, audio_codecs } = binding;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let _guard = span.enter();
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                // Encoders offset their timestamps (x264 starts at 1000 h): the timeline
                // uses running time, as the muxer's tfdt does.
                let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>()).cloned();
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
                    match assembler.push(meta, &map, |start| boundaries.after(start)) {
                        Ok(Some(MuxerOutput::Init(bytes))) => {
                            let codecs = match kind {
                                TrackKind::Video => avc_codecs(&bytes),
                                TrackKind::Audio => audio_codecs.clone(),
                            };
                            let Some(codecs) = codecs else {
                                tracing::error!(rendition = %rendition, "init segment has no codec configuration");
                                return Err(gst::FlowError::Error);
                            };
                            output.packager.add_init(&output.stream, &output.session, &rendition, bytes, codecs);
                        }
                        Ok(Some(MuxerOutput::Segment(mut segment))) => {
                            // The next segment's start was decided before the muxer could cut
                            // this one; the muxer only estimates its last frame's duration.
                            if let Some(end) = boundaries.after(segment.start_ns) {
                                segment.duration_ns = end - segment.start_ns;
                            }
                            let (start, duration) = (segment.start_ns, segment.duration_ns);
                            let number = output.packager.add_segment(&output.stream, &output.session, &rendition, segment);
                            tracing::trace!(rendition = %rendition, ?number, start, duration, "segment");
                        }
                        Ok(None) => {}
                        Err(FragmentError::TooLarge { .. }) => {
                            // Logged and counted by the packager; the error ends the stream.
                            output.packager.fragment_too_large(&output.stream, &rendition);
                            return Err(gst::FlowError::Error);
                        }
                        Err(e) => {
                            tracing::error!(rendition = %rendition, "muxer output out of order: {e}");
                            return Err(gst::FlowError::Error);
                        }
                    }
                    Ok(())
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
            .build(),
    );
}

