//! FLV tag bodies as RTMP carries them (E.4.2 / E.4.3 of the FLV spec): pure parsing into
//! [`MediaPacket`]s. No I/O; every malformed input is an error, never a panic.

use bytes::Bytes;

use crate::media::MediaPacket;

const VIDEO_CODEC_AVC: u8 = 7;
const VIDEO_FRAME_KEY: u8 = 1;
const VIDEO_FRAME_INFO: u8 = 5;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;
const AUDIO_CODEC_AAC: u8 = 10;
const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("{kind} tag of {len} bytes is too short")]
    Truncated { kind: &'static str, len: usize },
    #[error("video codec id {0} is not supported (only H.264/AVC, id 7)")]
    UnsupportedVideoCodec(u8),
    #[error("audio codec id {0} is not supported (only AAC, id 10)")]
    UnsupportedAudioCodec(u8),
    #[error("unknown AVC packet type {0}")]
    UnknownAvcPacketType(u8),
    #[error("unknown AAC packet type {0}")]
    UnknownAacPacketType(u8),
}

/// Parses a video tag body. `Ok(None)` means a tag with nothing to transcode (end of
/// sequence, command frames).
pub fn parse_video(timestamp_ms: u32, body: &Bytes) -> Result<Option<MediaPacket>, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated { kind: "video", len: 0 })?;
    let frame_type = first >> 4;
    let codec = first & 0x0f;
    if frame_type == VIDEO_FRAME_INFO {
        return Ok(None);
    }
    if codec != VIDEO_CODEC_AVC {
        return Err(FlvError::UnsupportedVideoCodec(codec));
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated { kind: "video", len: body.len() });
    }
    // Composition time offset: signed 24-bit big endian.
    let cts = (i32::from(body[2]) << 16 | i32::from(body[3]) << 8 | i32::from(body[4])) << 8 >> 8;
    match body[1] {
        AVC_SEQUENCE_HEADER => Ok(Some(MediaPacket::VideoConfig(body.slice(5..)))),
        AVC_NALU => Ok(Some(MediaPacket::Video {
            dts_ms: timestamp_ms,
            cts_ms: cts,
            keyframe: frame_type == VIDEO_FRAME_KEY,
            data: body.slice(5..),
        })),
        AVC_END_OF_SEQUENCE => Ok(None),
        other => Err(FlvError::UnknownAvcPacketType(other)),
    }
}

/// Parses an audio tag body.
pub fn parse_audio(timestamp_ms: u32, body: &Bytes) -> Result<Option<MediaPacket>, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated { kind: "audio", len: 0 })?;
    let codec = first >> 4;
    if codec != AUDIO_CODEC_AAC {
        return Err(FlvError::UnsupportedAudioCodec(codec));
    }
    if body.len() < 2 {
        return Err(FlvError::Truncated { kind: "audio", len: body.len() });
    }
    match body[1] {
        AAC_SEQUENCE_HEADER => Ok(Some(MediaPacket::AudioConfig(body.slice(2..)))),
        AAC_RAW => Ok(Some(MediaPacket::Audio { dts_ms: timestamp_ms, data: body.slice(2..) })),
        other => Err(FlvError::UnknownAacPacketType(other)),
    }
}

/// Wraps a packet back into the FLV tag body RTMP carries (for relaying to another node):
/// the inverse of [`parse_video`] / [`parse_audio`]. Returns the body and whether it is video.
pub fn encode(packet: &MediaPacket) -> (Bytes, bool) {
    // AAC's sound format byte: codec 10, 44 kHz, 16 bit, stereo (FLV requires these flags for
    // AAC; the real values live in the AudioSpecificConfig).
    const AAC_FLAGS: u8 = AUDIO_CODEC_AAC << 4 | 0x0f;
    let mut out = Vec::new();
    let video = match packet {
        MediaPacket::VideoConfig(config) => {
            out.extend_from_slice(&[VIDEO_FRAME_KEY << 4 | VIDEO_CODEC_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]);
            out.extend_from_slice(config);
            true
        }
        MediaPacket::Video { cts_ms, keyframe, data, .. } => {
            let frame = if *keyframe { VIDEO_FRAME_KEY } else { 2 };
            let cts = cts_ms.to_be_bytes();
            out.extend_from_slice(&[frame << 4 | VIDEO_CODEC_AVC, AVC_NALU, cts[1], cts[2], cts[3]]);
            out.extend_from_slice(data);
            true
        }
        MediaPacket::AudioConfig(config) => {
            out.extend_from_slice(&[AAC_FLAGS, AAC_SEQUENCE_HEADER]);
            out.extend_from_slice(config);
            false
        }
        MediaPacket::Audio { data, .. } => {
            out.extend_from_slice(&[AAC_FLAGS, AAC_RAW]);
            out.extend_from_slice(data);
            false
        }
    };
    (Bytes::from(out), video)
}

/// The RTMP timestamp of a packet (configuration records travel at time zero).
pub fn timestamp(packet: &MediaPacket) -> u32 {
    match packet {
        MediaPacket::Video { dts_ms, .. } | MediaPacket::Audio { dts_ms, .. } => *dts_ms,
        MediaPacket::VideoConfig(_) | MediaPacket::AudioConfig(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn avc_sequence_header_and_nalu() {
        let header = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f]);
        match parse_video(0, &header).unwrap() {
            Some(MediaPacket::VideoConfig(cfg)) => assert_eq!(&cfg[..], &[1, 0x64, 0, 0x1f]),
            other => panic!("{other:?}"),
        }
        // Inter frame with a composition offset of -2 ms (0xfffffe).
        let nalu = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x41]);
        match parse_video(40, &nalu).unwrap() {
            Some(MediaPacket::Video { dts_ms, cts_ms, keyframe, data }) => {
                assert_eq!((dts_ms, cts_ms, keyframe), (40, -2, false));
                assert_eq!(data.len(), 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aac_config_and_frame() {
        let cfg = Bytes::from_static(&[0xaf, 0, 0x12, 0x10]);
        assert!(matches!(parse_audio(0, &cfg).unwrap(), Some(MediaPacket::AudioConfig(c)) if c[..] == [0x12, 0x10]));
        let frame = Bytes::from_static(&[0xaf, 1, 0x21, 0x00]);
        assert!(matches!(parse_audio(23, &frame).unwrap(), Some(MediaPacket::Audio { dts_ms: 23, .. })));
    }

    #[test]
    fn refuses_other_codecs_and_short_tags() {
        assert_eq!(parse_video(0, &Bytes::from_static(&[0x12, 0])), Err(FlvError::UnsupportedVideoCodec(2)));
        assert_eq!(parse_video(0, &Bytes::from_static(&[0x17, 1])), Err(FlvError::Truncated { kind: "video", len: 2 }));
        assert_eq!(parse_audio(0, &Bytes::from_static(&[0x2f, 1])), Err(FlvError::UnsupportedAudioCodec(2)));
        assert_eq!(parse_audio(0, &Bytes::new()), Err(FlvError::Truncated { kind: "audio", len: 0 }));
        assert!(parse_video(0, &Bytes::from_static(&[0x57, 0])).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(
            ts in any::<u32>(), cts in -8_388_608i32..8_388_607, keyframe in any::<bool>(),
            data in proptest::collection::vec(any::<u8>(), 0..64), kind in 0u8..4,
        ) {
            let data = Bytes::from(data);
            let packet = match kind {
                0 => MediaPacket::VideoConfig(data),
                1 => MediaPacket::Video { dts_ms: ts, cts_ms: cts, keyframe, data },
                2 => MediaPacket::AudioConfig(data),
                _ => MediaPacket::Audio { dts_ms: ts, data },
            };
            let (body, video) = encode(&packet);
            let parsed = if video { parse_video(timestamp(&packet), &body) } else { parse_audio(timestamp(&packet), &body) };
            prop_assert_eq!(parsed.unwrap(), Some(packet));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(ts in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let body = Bytes::from(body);
            let _ = parse_video(ts, &body);
            let _ = parse_audio(ts, &body);
        }
    }
}
