//! Encoder backends and their selection. Each backend is a pipeline template from
//! pipelines/ for one rung's encoder; which one runs is decided at start-up from the
//! configured preference list and what the GStreamer registry actually offers, and the
//! choice is logged with its reason. A backend that is listed but absent is never replaced
//! silently: only a later entry of the same list is used, and the skip is logged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// NVIDIA NVENC through GStreamer's nvcodec plugin.
    Nvenc,
    /// VA-API (Intel, AMD) through GStreamer's va plugin.
    Vaapi,
    /// Software x264.
    X264,
}

impl EncoderKind {
    /// The backend's name, as config and metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Nvenc => "nvenc",
            EncoderKind::Vaapi => "vaapi",
            EncoderKind::X264 => "x264",
        }
    }

    /// The GStreamer element the template needs.
    pub fn element(self) -> &'static str {
        match self {
            EncoderKind::Nvenc => "nvh264enc",
            EncoderKind::Vaapi => "vah264enc",
            EncoderKind::X264 => "x264enc",
        }
    }

    /// The per-rung encoder template (pipelines/*.pipeline, comments stripped).
    pub fn template(self) -> &'static str {
        match self {
            EncoderKind::Nvenc => include_str!("../../pipelines/nvenc.pipeline"),
            EncoderKind::Vaapi => include_str!("../../pipelines/vaapi.pipeline"),
            EncoderKind::X264 => include_str!("../../pipelines/x264.pipeline"),
        }
    }

    pub fn is_hardware(self) -> bool {
        !matches!(self, EncoderKind::X264)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncoderError {
    #[error("no configured encoder is available (tried {tried}); install the plugin or change transcode.encoders")]
    NoneAvailable { tried: String },
    #[error("template variable {{{0}}} is unknown")]
    UnknownVariable(String),
}

/// The encoder chosen for this node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderChoice {
    pub kind: EncoderKind,
    /// Preferred backends that were skipped, each with the reason.
    pub skipped: Vec<String>,
}

/// Picks the first backend of `preference` whose element the registry has.
pub fn select(preference: &[EncoderKind], has_element: impl Fn(&str) -> bool) -> Result<EncoderChoice, EncoderError> {
    let mut skipped = Vec::new();
    for &kind in preference {
        if has_element(kind.element()) {
            return Ok(EncoderChoice { kind, skipped });
        }
        skipped.push(format!("{kind:?}: element {} is not registered", kind.element()));
    }
    Err(EncoderError::NoneAvailable { tried: skipped.join("; ") })
}

/// Fills a template's `{variables}`; comment lines (`#`) are dropped.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String, EncoderError> {
    let mut out: String = template
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for (key, value) in vars {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    if let Some(start) = out.find('{') {
        let name: String = out[start + 1..].chars().take_while(|c| *c != '}').collect();
        return Err(EncoderError::UnknownVariable(name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, String)> {
        vec![("name", "enc_720p".into()), ("bitrate_kbps", "2800".into()), ("preset", "veryfast".into())]
    }

    #[test]
    fn selection_follows_preference_and_reports_skips() {
        let all = [EncoderKind::Nvenc, EncoderKind::Vaapi, EncoderKind::X264];
        let only_x264 = |e: &str| e == "x264enc";
        let choice = select(&all, only_x264).unwrap();
        assert_eq!(choice.kind, EncoderKind::X264);
        assert_eq!(choice.skipped.len(), 2);
        assert!(choice.skipped[0].contains("nvh264enc"));
        assert_eq!(select(&all, |_| true).unwrap().kind, EncoderKind::Nvenc);
        // GPU only, no fallback allowed: a clear error, never a silent x264.
        let err = select(&[EncoderKind::Nvenc], only_x264).unwrap_err();
        assert!(err.to_string().contains("nvh264enc"), "{err}");
    }

    #[test]
    fn every_template_renders_with_the_documented_variables() {
        for kind in [EncoderKind::Nvenc, EncoderKind::Vaapi, EncoderKind::X264] {
            let text = render(kind.template(), &vars()).unwrap();
            assert!(text.starts_with(kind.element()), "{text}");
            assert!(text.contains("name=enc_720p") && text.contains("bitrate=2800"), "{text}");
        }
        assert_eq!(render("x {nope}", &vars()), Err(EncoderError::UnknownVariable("nope".into())));
    }

    /// Hardware templates must only use properties their elements document (checked
    /// against gst-inspect of GStreamer 1.22's nvh264enc and vah264enc).
    #[test]
    fn hardware_templates_use_documented_properties() {
        let documented: &[(EncoderKind, &[&str])] = &[
            (EncoderKind::Nvenc, &["name", "preset", "rc-mode", "bitrate", "gop-size", "bframes", "zerolatency"]),
            (EncoderKind::Vaapi, &["name", "rate-control", "bitrate", "key-int-max", "b-frames"]),
        ];
        for (kind, props) in documented {
            let text = render(kind.template(), &vars()).unwrap();
            let element = text.split('!').next().unwrap();
            for assignment in element.split_whitespace().skip(1) {
                let prop = assignment.split('=').next().unwrap();
                assert!(props.contains(&prop), "{kind:?} uses undocumented property {prop}");
            }
        }
    }

    /// Where GStreamer is present, the software template must parse with real elements.
    #[test]
    fn x264_template_parses_in_gstreamer() {
        gst::init().unwrap();
        let enc = render(EncoderKind::X264.template(), &vars()).unwrap();
        let desc = format!("videotestsrc num-buffers=1 ! video/x-raw,format=I420 ! {enc} ! fakesink");
        gst::parse::launch(&desc).unwrap();
    }
}
