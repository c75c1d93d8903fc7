//! Transcode backends: which hardware decodes, scales and encodes a stream's ladder. Each
//! backend is a decode → scale → encode chain in a template file of pipelines/, embedded in
//! the binary and replaceable at run time by a file of the same name in
//! `transcode.pipelines_dir`. A template names the GStreamer version its element and
//! property names come from; before a backend is used, every element and property it names
//! is checked against the installed registry, so a version mismatch fails at start-up with
//! the element and property, never halfway through a stream.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// NVIDIA: NVDEC decode, CUDA scaling, NVENC encode, frames in CUDA memory throughout.
    Nvenc,
    /// NVIDIA without NVENC (A100, H100, H200): NVDEC decode and CUDA scaling on the GPU,
    /// x264 encoding on the CPU.
    NvdecX264,
    /// VA-API (Intel, AMD): decode, scale and encode on the media engine.
    Vaapi,
    /// CPU only: avdec_h264, videoconvertscale, x264.
    #[serde(alias = "x264")]
    Software,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Nvenc, Backend::NvdecX264, Backend::Vaapi, Backend::Software];

    /// The backend's name, as config, logs, metrics and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nvenc => "nvenc",
            Backend::NvdecX264 => "nvdec-x264",
            Backend::Vaapi => "vaapi",
            Backend::Software => "software",
        }
    }

    /// The template's file name, in pipelines/ and in `transcode.pipelines_dir`.
    pub fn file_name(self) -> String {
        format!("{}.pipeline", self.name())
    }

    fn embedded_text(self) -> &'static str {
        match self {
            Backend::Nvenc => include_str!("../../pipelines/nvenc.pipeline"),
            Backend::NvdecX264 => include_str!("../../pipelines/nvdec-x264.pipeline"),
            Backend::Vaapi => include_str!("../../pipelines/vaapi.pipeline"),
            Backend::Software => include_str!("../../pipelines/software.pipeline"),
        }
    }

    /// Whether the video encoders run on the CPU (and so count against the CPU budget).
    pub fn encodes_on_cpu(self) -> bool {
        matches!(self, Backend::NvdecX264 | Backend::Software)
    }

    /// Whether the decoder and scalers run on the CPU.
    pub fn decodes_on_cpu(self) -> bool {
        self == Backend::Software
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{file}: section [{0}] is missing (a template has [decode], [scale] and [encode])", file = .1)]
    MissingSection(&'static str, String),
    #[error("{file}: line {line}: {what}")]
    Syntax { file: String, line: usize, what: String },
    #[error("{file}: variable {{{name}}} is unknown")]
    UnknownVariable { file: String, name: String },
    #[error("reading {0}: {1}")]
    Read(PathBuf, String),
    #[error(
        "{file} (names from GStreamer {template_version}) uses element {element}, which the installed GStreamer {installed} does not register"
    )]
    NoElement { file: String, template_version: String, installed: String, element: String },
    #[error(
        "{file} (names from GStreamer {template_version}): element {element} of the installed GStreamer {installed} has no writable property {property}; edit the template for this version (transcode.pipelines_dir)"
    )]
    NoProperty { file: String, template_version: String, installed: String, element: String, property: String },
}

/// A backend's chain, as read from its template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub backend: Backend,
    /// Where it came from: `embedded` or the override's path.
    pub origin: String,
    /// The GStreamer version its element and property names come from (`# gstreamer:`).
    pub gstreamer: String,
    pub decode: String,
    pub scale: String,
    pub encode: String,
}

/// The values a template's `{variables}` take for one rung of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVars {
    pub device: String,
    pub gpu: u32,
    pub decode_threads: u32,
    pub width: u32,
    pub height: u32,
    pub name: String,
    pub bitrate_kbps: u32,
    pub preset: String,
    pub keyint_frames: u32,
    pub colorimetry: String,
}

/// The colorimetry GStreamer assumes for a source that does not state one (HD: BT.709,
/// SD: BT.601). Every rung keeps it: a rung left to its own default (BT.601 below 577
/// lines) would make the scaler convert colours, at twice the cost of scaling.
pub fn source_colorimetry(height: u32) -> &'static str {
    if height > 576 { "bt709" } else { "bt601" }
}

impl TemplateVars {
    fn pairs(&self) -> [(&'static str, String); 10] {
        [
            ("device", self.device.clone()),
            ("gpu", self.gpu.to_string()),
            ("decode_threads", self.decode_threads.to_string()),
            ("width", self.width.to_string()),
            ("height", self.height.to_string()),
            ("name", self.name.clone()),
            ("bitrate_kbps", self.bitrate_kbps.to_string()),
            ("preset", self.preset.clone()),
            ("keyint_frames", self.keyint_frames.to_string()),
            ("colorimetry", self.colorimetry.clone()),
        ]
    }

    /// Values for checking a template: a 720p rung on the first device.
    pub fn sample() -> Self {
        Self {
            device: String::new(),
            gpu: 0,
            decode_threads: 2,
            width: 1280,
            height: 720,
            name: "enc_720p".into(),
            bitrate_kbps: 2800,
            preset: "veryfast".into(),
            keyint_frames: 30,
            colorimetry: "bt709".into(),
        }
    }
}

/// A template with its variables filled in: gst-launch fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub decode: String,
    pub scale: String,
    pub encode: String,
}

impl Template {
    /// The template built into the binary (pipelines/).
    pub fn embedded(backend: Backend) -> Self {
        Self::parse(backend, backend.embedded_text(), "embedded").expect("the embedded templates parse (unit-tested)")
    }

    /// The override in `dir` when it has one, else the embedded template.
    pub fn load(backend: Backend, dir: Option<&Path>) -> Result<Self, TemplateError> {
        let Some(path) = dir.map(|d| d.join(backend.file_name())).filter(|p| p.exists()) else {
            return Ok(Self::embedded(backend));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::Read(path.clone(), e.to_string()))?;
        Self::parse(backend, &text, &path.display().to_string())
    }

    /// Reads the `[decode]`, `[scale]` and `[encode]` sections (one or more lines each,
    /// joined), and the `# gstreamer: X.Y` line. Other `#` lines are comments.
    pub fn parse(backend: Backend, text: &str, origin: &str) -> Result<Self, TemplateError> {
        let file = if origin == "embedded" { format!("pipelines/{}", backend.file_name()) } else { origin.to_owned() };
        let mut sections: [Vec<&str>; 3] = Default::default();
        let mut current = None;
        let mut gstreamer = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(version) = comment.trim().strip_prefix("gstreamer:") {
                    gstreamer = Some(version.trim().to_owned());
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            current = match line {
                "[decode]" => Some(0),
                "[scale]" => Some(1),
                "[encode]" => Some(2),
                _ if line.starts_with('[') => {
                    return Err(TemplateError::Syntax { file, line: i + 1, what: format!("unknown section {line}") });
                }
                _ => {
                    let Some(index) = current else {
                        return Err(TemplateError::Syntax { file, line: i + 1, what: "text before the first section".into() });
                    };
                    sections[index].push(line);
                    continue;
                }
            };
        }
        let [decode, scale, encode] = sections.map(|lines| lines.join(" "));
        for (name, body) in [("decode", &decode), ("scale", &scale), ("encode", &encode)] {
            if body.is_empty() {
                return Err(TemplateError::MissingSection(name, file));
            }
        }
        let gstreamer = gstreamer.ok_or_else(|| TemplateError::Syntax { file: file.clone(), line: 1, what: "no `# gstreamer: X.Y` line".into() })?;
        Ok(Self { backend, origin: origin.to_owned(), gstreamer, decode, scale, encode })
    }

    fn file(&self) -> String {
        if self.origin == "embedded" { format!("pipelines/{}", self.backend.file_name()) } else { self.origin.clone() }
    }

    /// Fills in the variables.
    pub fn render(&self, vars: &TemplateVars) -> Result<Chain, TemplateError> {
        let pairs = vars.pairs();
        let fill = |text: &str| -> Result<String, TemplateError> {
            let mut out = text.to_owned();
            for (key, value) in &pairs {
                out = out.replace(&format!("{{{key}}}"), value);
            }
            match out.find('{') {
                Some(start) => Err(TemplateError::UnknownVariable {
                    file: self.file(),
                    name: out[start + 1..].chars().take_while(|c| *c != '}').collect(),
                }),
                None => Ok(out),
            }
        };
        Ok(Chain { decode: fill(&self.decode)?, scale: fill(&self.scale)?, encode: fill(&self.encode)? })
    }

    /// Checks every element and property the template names (rendered with `vars`) against
    /// the installed GStreamer: `properties(element)` lists an element's writable
    /// properties, or `None` when the element is not registered.
    pub fn check(&self, vars: &TemplateVars, installed: &str, properties: impl Fn(&str) -> Option<Vec<String>>) -> Result<(), TemplateError> {
        let chain = self.render(vars)?;
        for section in [&chain.decode, &chain.scale, &chain.encode] {
            for (element, props) in elements(section) {
                let Some(known) = properties(&element) else {
                    return Err(TemplateError::NoElement {
                        file: self.file(),
                        template_version: self.gstreamer.clone(),
                        installed: installed.to_owned(),
                        element,
                    });
                };
                if let Some(property) = props.into_iter().find(|p| !known.contains(p)) {
                    return Err(TemplateError::NoProperty {
                        file: self.file(),
                        template_version: self.gstreamer.clone(),
                        installed: installed.to_owned(),
                        element,
                        property,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The elements of a gst-launch fragment and the properties each sets (caps filters are
/// skipped). Quoted values may hold spaces.
pub fn elements(fragment: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for link in split_outside_quotes(fragment, '!') {
        let words = split_outside_quotes(link.trim(), ' ');
        let mut words = words.into_iter().filter(|w| !w.is_empty());
        let Some(first) = words.next() else { continue };
        if first.contains('/') {
            continue;
        }
        let props = words.filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned())).collect();
        out.push((first, props));
    }
    out
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == separator && !quoted {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    parts
}

/// The writable properties of an installed element, or `None` when it is not registered.
pub fn installed_properties(element: &str) -> Option<Vec<String>> {
    use gst::prelude::*;
    let instance = gst::ElementFactory::make(element).build().ok()?;
    Some(
        instance
            .list_properties()
            .iter()
            .filter(|p| p.flags().contains(gst::glib::ParamFlags::WRITABLE))
            .map(|p| p.name().to_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_template_has_its_sections_and_renders() {
        for backend in Backend::ALL {
            let template = Template::embedded(backend);
            assert_eq!(template.gstreamer, "1.22", "{backend}");
            let chain = template.render(&TemplateVars::sample()).unwrap();
            assert!(chain.encode.contains("name=enc_720p") && chain.encode.contains("bitrate=2800"), "{chain:?}");
            assert!(chain.scale.contains("width=1280,height=720"), "{chain:?}");
            assert!(chain.scale.contains("colorimetry=bt709"), "{backend}: rungs keep the source's colorimetry: {chain:?}");
        }
        let sw = Template::embedded(Backend::Software).render(&TemplateVars::sample()).unwrap();
        assert_eq!(sw.decode, "avdec_h264 thread-type=frame max-threads=2");
        // The GPU chains stay in device memory between decoder and scaler.
        let nv = Template::embedded(Backend::Nvenc).render(&TemplateVars { device: "device1".into(), gpu: 1, ..TemplateVars::sample() }).unwrap();
        assert!(nv.decode.starts_with("nvh264device1dec ! video/x-raw(memory:CUDAMemory)"), "{nv:?}");
        assert!(nv.scale.contains("cuda-device-id=1") && !nv.scale.contains("cudadownload"), "{nv:?}");
        assert!(nv.encode.starts_with("nvcudah264device1enc "), "{nv:?}");
        let hybrid = Template::embedded(Backend::NvdecX264).render(&TemplateVars::sample()).unwrap();
        assert!(hybrid.scale.contains("cudadownload") && hybrid.encode.starts_with("x264enc"), "{hybrid:?}");
    }

    /// GStreamer 1.22's vah264enc answers a forced key unit with a non-IDR I frame, so the
    /// template must place IDRs itself: one every segment's worth of frames.
    #[test]
    fn vaapi_starts_every_segment_with_an_idr() {
        let vars = |fps: u32| TemplateVars { keyint_frames: fps, ..TemplateVars::sample() };
        let chain = Template::embedded(Backend::Vaapi).render(&vars(25)).unwrap();
        let (_, props) = elements(&chain.encode).into_iter().next().unwrap();
        assert!(props.contains(&"key-int-max".to_owned()));
        assert!(chain.encode.contains("key-int-max=25 "), "{chain:?}");
        assert!(chain.encode.contains("b-frames=0"), "B-frames would reorder the IDR away from the boundary");
        assert!(Template::embedded(Backend::Vaapi).render(&vars(60)).unwrap().encode.contains("key-int-max=60 "));
    }

    #[test]
    fn templates_are_read_strictly() {
        let ok = "# gstreamer: 1.24\n[decode]\na\n[scale]\nb !\nc\n[encode]\nd name={name}\n";
        let t = Template::parse(Backend::Software, ok, "/etc/x.pipeline").unwrap();
        assert_eq!((t.scale.as_str(), t.gstreamer.as_str()), ("b ! c", "1.24"));
        let err = Template::parse(Backend::Software, "# gstreamer: 1.22\n[decode]\na\n[scale]\nb\n", "f").unwrap_err();
        assert!(err.to_string().contains("[encode] is missing"), "{err}");
        assert!(Template::parse(Backend::Software, "[decode]\na\n[scale]\nb\n[encode]\nc\n", "f").unwrap_err().to_string().contains("gstreamer"));
        assert!(Template::parse(Backend::Software, "x\n[decode]\na", "f").is_err());
        let bad = Template::parse(Backend::Software, "# gstreamer: 1.22\n[decode]\na {nope}\n[scale]\nb\n[encode]\nc\n", "f").unwrap();
        assert_eq!(bad.render(&TemplateVars::sample()).unwrap_err(), TemplateError::UnknownVariable { file: "f".into(), name: "nope".into() });
    }

    #[test]
    fn an_override_in_the_pipelines_dir_replaces_the_embedded_template() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Template::load(Backend::Software, Some(dir.path())).unwrap().origin, "embedded");
        let text = Template::embedded(Backend::Software).backend.embedded_text().replace("tune=zerolatency", "tune=zerolatency threads=1");
        std::fs::write(dir.path().join("software.pipeline"), text).unwrap();
        let loaded = Template::load(Backend::Software, Some(dir.path())).unwrap();
        assert!(loaded.origin.ends_with("software.pipeline") && loaded.encode.contains("threads=1"), "{loaded:?}");
    }

    #[test]
    fn elements_and_properties_are_read_from_fragments() {
        let found = elements(r#"x264enc name=a option-string="scenecut=0 b=1" bitrate=5 ! video/x-h264,profile=high ! queue"#);
        assert_eq!(found, [("x264enc".into(), vec!["name".into(), "option-string".into(), "bitrate".into()]), ("queue".into(), vec![])]);
    }

    /// The hardware templates may only use properties their elements have in the GStreamer
    /// version they name (1.22; read from gst-inspect of 1.22.0's nvcodec and va plugins:
    /// nvh264dec and the CUDA converters as observed on an H200, firmware-notes/).
    #[test]
    fn hardware_templates_use_the_properties_of_gstreamer_1_22() {
        let documented = |element: &str| -> Option<Vec<String>> {
            let props: &[&str] = match element {
                "nvh264dec" | "nvh264device1dec" => &["max-display-delay", "max-errors", "discard-corrupted-frames", "qos"],
                "cudascale" | "cudaconvertscale" => &["add-borders", "cuda-device-id", "qos"],
                "cudadownload" | "cudaupload" => &["cuda-device-id", "qos"],
                "nvcudah264enc" | "nvcudah264device1enc" => &[
                    "preset", "rate-control", "bitrate", "max-bitrate", "gop-size", "b-frames", "zero-reorder-delay", "rc-lookahead",
                    "vbv-buffer-size", "aud", "cabac", "repeat-sequence-header",
                ],
                "vah264dec" | "vapostproc" => &["qos"],
                "vah264enc" => &["rate-control", "bitrate", "key-int-max", "b-frames", "target-usage", "cpb-size", "ref-frames"],
                "x264enc" => &["tune", "speed-preset", "bitrate", "vbv-buf-capacity", "option-string"],
                _ => return None,
            };
            Some(props.iter().chain(&["name"]).map(|p| p.to_string()).collect())
        };
        for backend in [Backend::Nvenc, Backend::NvdecX264, Backend::Vaapi] {
            Template::embedded(backend).check(&TemplateVars::sample(), "1.22.0", documented).unwrap();
        }
        let device1 = TemplateVars { device: "device1".into(), gpu: 1, ..TemplateVars::sample() };
        Template::embedded(Backend::Nvenc).check(&device1, "1.22.0", documented).unwrap();
        // A 1.26-style rename fails with the element and the property named.
        let renamed = |e: &str| if e == "nvcudah264enc" { Some(vec!["name".into(), "bitrate".into()]) } else { documented(e) };
        let err = Template::embedded(Backend::Nvenc).check(&TemplateVars::sample(), "1.26.2", renamed).unwrap_err();
        assert!(err.to_string().contains("nvcudah264enc of the installed GStreamer 1.26.2 has no writable property preset"), "{err}");
    }

    /// Where the elements are installed (the software backend here), the template's
    /// properties exist on them and the whole chain parses.
    #[test]
    fn installed_templates_match_the_installed_elements() {
        super::super::init().unwrap();
        let version = gst::version_string().to_string();
        let software = Template::embedded(Backend::Software);
        software.check(&TemplateVars::sample(), &version, installed_properties).unwrap();
        for backend in [Backend::Nvenc, Backend::NvdecX264, Backend::Vaapi] {
            let template = Template::embedded(backend);
            let chain = template.render(&TemplateVars::sample()).unwrap();
            let present = [&chain.decode, &chain.scale, &chain.encode].iter().flat_map(|s| elements(s)).all(|(e, _)| installed_properties(&e).is_some());
            if present {
                template.check(&TemplateVars::sample(), &version, installed_properties).unwrap();
            }
        }
        let chain = software.render(&TemplateVars::sample()).unwrap();
        let text = format!(
            "videotestsrc num-buffers=3 ! x264enc ! h264parse ! {} ! {} ! {} ! fakesink",
            chain.decode, chain.scale, chain.encode
        );
        gst::parse::launch(&text).unwrap();
        let err = software.check(&TemplateVars::sample(), &version, |e| if e == "x264enc" { Some(vec!["name".into()]) } else { installed_properties(e) }).unwrap_err();
        assert!(matches!(err, TemplateError::NoProperty { ref property, .. } if property == "tune"), "{err}");
    }
}
