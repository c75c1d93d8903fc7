//! What the source's codec configuration says: picture size from the H.264 SPS inside the
//! AVCDecoderConfigurationRecord, and the AAC profile, rate and channels from the
//! AudioSpecificConfig. These decide the ladder and whether audio can be copied.

use h264_reader::avcc::AvcDecoderConfigurationRecord;

use crate::ladder::SourceFormat;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("AVC decoder configuration is invalid: {0}")]
    Avcc(String),
    #[error("AVC decoder configuration carries no SPS")]
    NoSps,
    #[error("picture size {0}x{1} is outside 16x16..=7680x4320")]
    PictureSize(u32, u32),
    #[error("AudioSpecificConfig is invalid: {0}")]
    Asc(&'static str),
    #[error("AAC sample rate {0} Hz is outside {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz")]
    SampleRate(u32),
}

/// Picture size of an H.264 source, from its AVCDecoderConfigurationRecord.
pub fn video_format(avcc: &[u8]) -> Result<SourceFormat, SourceError> {
    let record = AvcDecoderConfigurationRecord::try_from(avcc).map_err(|e| SourceError::Avcc(format!("{e:?}")))?;
    let ctx = record.create_context().map_err(|e| SourceError::Avcc(format!("{e:?}")))?;
    let sps = ctx.sps().next().ok_or(SourceError::NoSps)?;
    let (width, height) = sps.pixel_dimensions().map_err(|e| SourceError::Avcc(format!("{e:?}")))?;
    // The SPS is the broadcaster's word: a 65535x65535 picture would have the decoder and
    // every scaler allocate gigabytes. 8K (UHD-2) is the largest H.264 level 6.2 carries.
    if !(16..=7680).contains(&width) || !(16..=4320).contains(&height) {
        return Err(SourceError::PictureSize(width, height));
    }
    Ok(SourceFormat { width, height })
}

/// The fields of an AudioSpecificConfig (ISO 14496-3 1.6.2.1) rackcast needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type: 2 is AAC-LC, 5 SBR (HE-AAC), 29 PS (HE-AACv2).
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u32,
}

const SAMPLE_RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
/// Lowest and highest sample rates accepted: the ends of the AAC sampling frequency table.
/// An explicit rate (index 15) outside them is the broadcaster's word and is refused: the
/// rate becomes the audio track's timescale, and 0 would divide every segment time by zero.
pub const MIN_SAMPLE_RATE: u32 = 7_350;
pub const MAX_SAMPLE_RATE: u32 = 96_000;
pub const AAC_LC: u8 = 2;

impl AacConfig {
    pub fn parse(asc: &[u8]) -> Result<Self, SourceError> {
        let mut bits = Bits { data: asc, pos: 0 };
        let mut object_type = bits.take(5).ok_or(SourceError::Asc("too short"))? as u8;
        if object_type == 31 {
            object_type = 32 + bits.take(6).ok_or(SourceError::Asc("too short"))? as u8;
        }
        let index = bits.take(4).ok_or(SourceError::Asc("too short"))? as usize;
        let sample_rate = if index == 15 {
            bits.take(24).ok_or(SourceError::Asc("too short"))?
        } else {
            *SAMPLE_RATES.get(index).ok_or(SourceError::Asc("reserved sampling frequency index"))?
        };
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
            return Err(SourceError::SampleRate(sample_rate));
        }
        let channels = bits.take(4).ok_or(SourceError::Asc("too short"))?;
        if channels == 0 {
            return Err(SourceError::Asc("channel layout in a program config element is not supported"));
        }
        Ok(Self { object_type, sample_rate, channels: if channels == 7 { 8 } else { channels } })
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = v << 1 | u32::from(byte >> (7 - self.pos % 8) & 1);
            self.pos += 1;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aac_lc_48k_stereo() {
        // 00010 0011 0010 000 -> LC, index 3 (48 kHz), 2 channels.
        assert_eq!(AacConfig::parse(&[0x11, 0x90]).unwrap(), AacConfig { object_type: 2, sample_rate: 48000, channels: 2 });
        // HE-AAC 44.1 kHz stereo: 00101 0100 0010 ...
        assert_eq!(AacConfig::parse(&[0x2a, 0x10]).unwrap().object_type, 5);
        assert!(AacConfig::parse(&[0x11]).is_err());
        assert!(AacConfig::parse(&[]).is_err());
    }

    /// An AudioSpecificConfig of AAC-LC, stereo, with an explicit 24-bit sample rate.
    fn explicit_rate(rate: u32) -> Vec<u8> {
        // 00010 (LC) 1111 (explicit) rate:24 0010 (stereo), padded to bytes.
        let bits: u64 = ((0b00010 << 32) | (0b1111 << 28) | (u64::from(rate) << 4) | 0b0010) << 3;
        bits.to_be_bytes()[3..].to_vec()
    }

    #[test]
    fn sample_rates_outside_the_aac_table_are_refused() {
        assert_eq!(AacConfig::parse(&explicit_rate(48_000)).unwrap(), AacConfig { object_type: 2, sample_rate: 48_000, channels: 2 });
        assert_eq!(AacConfig::parse(&explicit_rate(MIN_SAMPLE_RATE)).unwrap().sample_rate, MIN_SAMPLE_RATE);
        assert_eq!(AacConfig::parse(&explicit_rate(MAX_SAMPLE_RATE)).unwrap().sample_rate, MAX_SAMPLE_RATE);
        for rate in [0, 1, 7_349, 96_001, 192_000, 0xff_ffff] {
            assert_eq!(AacConfig::parse(&explicit_rate(rate)), Err(SourceError::SampleRate(rate)), "{rate} Hz");
        }
        // Indices 13 and 14 are reserved: no rate at all.
        assert!(matches!(AacConfig::parse(&[0x16, 0x90]), Err(SourceError::Asc(_))));
    }

    #[test]
    fn sps_of_a_720p_stream() {
        // avcC that x264 wrote for `ffmpeg -f lavfi -i testsrc2=size=1280x720:rate=30 -c:v libx264
        // -profile:v high t.mp4` (the payload of its avcC box).
        let avcc = [
            0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb,
            0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60, 0x01, 0x00,
            0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8, 0x00,
        ];
        assert_eq!(video_format(&avcc).unwrap(), SourceFormat { width: 1280, height: 720 });
        assert!(video_format(&avcc[..8]).is_err());
    }
}
