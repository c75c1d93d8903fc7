//! A session's inputs and outputs: the renditions, appsink bindings and appsrc caps a
//! ladder plan and the source's audio configuration call for (shared by live sessions and
//! `rackcast transcode`), and where the muxed objects go.

use std::sync::Arc;


use crate::media::{RenditionId, SessionId, StreamId, TrackKind};
use crate::package::Packager;
use crate::package::timeline::RenditionInfo;
use super::fragment::aac_codecs;
use super::source;
use super::spec;

/// Where a session's muxed objects go.
#[derive(Clone)]
pub struct SessionOutput {
    pub packager: Arc<Packager>,
    pub stream: StreamId,
    pub session: SessionId,
}

/// A rendition's appsink and how to name its codec.
pub struct SinkBinding {
    pub rendition: RenditionId,
    pub kind: TrackKind,
    /// For audio the codecs string is known up front; video reads it from the init segment.
    pub audio_codecs: Option<String>,
}

/// What a session's pipeline takes in and gives out, from its ladder plan and the source's
/// audio configuration: shared by live sessions and `rackcast transcode`.
pub struct SessionIo {
    pub audio_plan: spec::AudioPlan,
    pub renditions: Vec<RenditionInfo>,
    pub sinks: Vec<SinkBinding>,
    pub audio_caps: Option<gst::Caps>,
}

/// The rendition id of the audio track.
pub fn audio_rendition() -> RenditionId {
    RenditionId::parse("audio").expect("valid id")
}

/// The appsrc caps of an AVC source, from its AVCDecoderConfigurationRecord.
pub fn avc_caps(avcc: &[u8]) -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .field("codec_data", gst::Buffer::from_slice(avcc.to_vec()))
        .build()
}

impl SessionIo {
    /// `audio`: the source's AAC configuration and its raw AudioSpecificConfig. AAC-LC is
    /// copied; other profiles are re-encoded to AAC-LC at `audio_bitrate`.
    pub fn new(plan: &crate::ladder::LadderPlan, audio: Option<(&source::AacConfig, &[u8])>, audio_bitrate: u32) -> Self {
        let audio_plan = match &audio {
            None => spec::AudioPlan::None,
            Some((aac, _)) if aac.object_type == source::AAC_LC => spec::AudioPlan::Copy,
            Some(_) => spec::AudioPlan::Transcode { bitrate: audio_bitrate },
        };
        let mut renditions: Vec<RenditionInfo> = plan
            .rungs
            .iter()
            .map(|r| RenditionInfo {
                id: r.id.clone(),
                kind: TrackKind::Video,
                bandwidth: r.bitrate_kbps * 1000,
                width: r.width,
                height: r.height,
                timescale: 90_000,
                sample_rate: 0,
                channels: 0,
            })
            .collect();
        let mut sinks: Vec<SinkBinding> =
            plan.rungs.iter().map(|r| SinkBinding { rendition: r.id.clone(), kind: TrackKind::Video, audio_codecs: None }).collect();
        let mut audio_caps = None;
        if let Some((aac, asc)) = audio {
            renditions.push(RenditionInfo {
                id: audio_rendition(),
                kind: TrackKind::Audio,
                // A copied track keeps the source's bitrate, which only the metadata could
                // tell; the configured AAC bitrate is the honest upper bound players need.
                bandwidth: audio_bitrate,
                width: 0,
                height: 0,
                timescale: aac.sample_rate,
                sample_rate: aac.sample_rate,
                channels: aac.channels,
            });
            let object_type = if audio_plan == spec::AudioPlan::Copy { aac.object_type } else { source::AAC_LC };
            sinks.push(SinkBinding { rendition: audio_rendition(), kind: TrackKind::Audio, audio_codecs: Some(aac_codecs(object_type)) });
            audio_caps = Some(
                gst::Caps::builder("audio/mpeg")
                    .field("mpegversion", 4i32)
                    .field("stream-format", "raw")
                    .field("codec_data", gst::Buffer::from_slice(asc.to_vec()))
                    .field("rate", aac.sample_rate as i32)
                    .field("channels", aac.channels as i32)
                    .build(),
            );
        }
        Self { audio_plan, renditions, sinks, audio_caps }
    }
}

