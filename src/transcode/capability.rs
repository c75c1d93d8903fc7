//! What this host can transcode with: the GStreamer registry's elements, the device nodes
//! (/dev/nvidia*, /dev/dri/renderD*) and the NVIDIA GPUs as NVML reports them, probed once
//! at start-up; and the choice of backends from the configured preference order. Every
//! backend that cannot run says why (no device node, no driver, plugin absent, no NVENC on
//! this GPU), and `rackcast probe` prints the same account.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::backend::Backend;

/// The GStreamer elements the backends use; the probe reports which are registered.
pub const ELEMENTS: [&str; 14] = [
    "avdec_h264",
    "videoconvertscale",
    "x264enc",
    "nvh264dec",
    "cudascale",
    "cudadownload",
    "nvcudah264enc",
    "nvh264enc",
    "vah264dec",
    "vapostproc",
    "vah264enc",
    "h264parse",
    "cmafmux",
    "appsrc",
];

/// How many GPUs' per-device element names are looked for (nvh264device1dec, ...).
const MAX_GPUS: u32 = 16;

/// What the start-up probe found.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub gstreamer: String,
    /// The registered elements among [`ELEMENTS`].
    pub elements: BTreeSet<String>,
    pub nvidia_device_nodes: Vec<String>,
    pub render_nodes: Vec<String>,
    /// CUDA device ids with an NVDEC H.264 decoder element, and which of them also have an
    /// NVENC encoder element.
    pub nvdec_gpus: Vec<u32>,
    pub nvenc_gpus: Vec<u32>,
    /// VA devices (element-name infix: empty for the first render node) with H.264
    /// decode, post-processing and encode.
    pub va_devices: Vec<String>,
    /// GPUs as NVML reports them (model, driver, memory).
    pub gpus: Vec<GpuModel>,
    /// Why NVML reported no GPU, when it did not.
    pub nvml: Option<String>,
    /// Cores this process may use (its cgroup quota or affinity, the smaller).
    pub cpu_cores: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GpuModel {
    pub index: u32,
    pub name: String,
    pub driver: Option<String>,
    pub memory_total_bytes: Option<u64>,
}

impl GpuModel {
    /// GeForce drivers cap concurrent NVENC sessions system-wide.
    pub fn is_consumer(&self) -> bool {
        self.name.contains("GeForce")
    }
}

/// The element-name infix GStreamer's nvcodec gives CUDA device `gpu` (`nvh264dec` for 0,
/// `nvh264device1dec` for 1).
pub fn nvidia_infix(gpu: u32) -> String {
    if gpu == 0 { String::new() } else { format!("device{gpu}") }
}

impl Capabilities {
    /// Probes this host (GStreamer must be initialised).
    pub fn probe(host: &crate::host::HostSnapshot) -> Self {
        let has = |name: &str| gst::ElementFactory::find(name).is_some();
        let nodes = |dir: &str, prefix: &str, digits_only: bool| -> Vec<String> {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.strip_prefix(prefix).is_some_and(|rest| !digits_only || (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))))
                .map(|n| format!("{dir}/{n}"))
                .collect();
            found.sort();
            found
        };
        let nvdec_gpus: Vec<u32> = (0..MAX_GPUS).filter(|g| has(&format!("nvh264{}dec", nvidia_infix(*g)))).collect();
        let nvenc_gpus = nvdec_gpus.iter().copied().filter(|g| has(&format!("nvcudah264{}enc", nvidia_infix(*g)))).collect();
        let render_nodes = nodes("/dev/dri", "renderD", true);
        let va_devices = std::iter::once(String::new())
            .chain(render_nodes.iter().filter_map(|n| n.rsplit('/').next().map(str::to_owned)))
            .filter(|infix| ["h264dec", "postproc", "h264enc"].iter().all(|e| has(&format!("va{infix}{e}"))))
            .collect();
        Self {
            gstreamer: { let (major, minor, micro, _) = gst::version(); format!("{major}.{minor}.{micro}") },
            elements: ELEMENTS.iter().filter(|e| has(e)).map(|e| e.to_string()).collect(),
            nvidia_device_nodes: nodes("/dev", "nvidia", true),
            render_nodes,
            nvdec_gpus,
            nvenc_gpus,
            va_devices,
            gpus: host
                .gpus
                .iter()
                .map(|g| GpuModel { index: g.index, name: g.name.clone(), driver: g.driver.clone(), memory_total_bytes: g.memory_total_bytes })
                .collect(),
            nvml: host.gpus_absent.clone(),
            cpu_cores: host.cpu_share.cores,
        }
    }

    fn has(&self, element: &str) -> bool {
        self.elements.contains(element)
    }

    /// The devices `backend` can run on here, or why it cannot run at all.
    pub fn devices(&self, backend: Backend) -> Result<Vec<Device>, String> {
        let missing = |elements: &[&str], package: &str| -> Option<String> {
            let absent: Vec<&str> = elements.iter().copied().filter(|e| !self.has(e)).collect();
            (!absent.is_empty()).then(|| format!("plugin absent: {} not registered (package {package})", absent.join(", ")))
        };
        match backend {
            Backend::Software => {
                let why = missing(&["avdec_h264"], "gstreamer1.0-libav")
                    .or_else(|| missing(&["videoconvertscale"], "gstreamer1.0-plugins-base 1.22 or newer"))
                    .or_else(|| missing(&["x264enc"], "gstreamer1.0-plugins-ugly"));
                why.map_or(Ok(vec![Device::Cpu]), Err)
            }
            Backend::Nvenc | Backend::NvdecX264 => {
                if self.nvdec_gpus.is_empty() {
                    return Err(if self.nvidia_device_nodes.is_empty() {
                        "no device node: /dev/nvidia0 is absent (no NVIDIA GPU, or the container was not given one)".to_owned()
                    } else if let Some(nvml) = &self.nvml {
                        format!("no driver: {nvml}")
                    } else {
                        "plugin absent: the nvcodec plugin (gstreamer1.0-plugins-bad) registered no nvh264dec; libnvcuvid.so.1 missing, or NVIDIA_DRIVER_CAPABILITIES lacks `video`".to_owned()
                    });
                }
                if let Some(why) = missing(&["cudascale", "cudadownload"], "gstreamer1.0-plugins-bad 1.22 (nvcodec)") {
                    return Err(why);
                }
                if backend == Backend::NvdecX264 {
                    if let Some(why) = missing(&["x264enc"], "gstreamer1.0-plugins-ugly") {
                        return Err(why);
                    }
                    return Ok(self.nvdec_gpus.iter().map(|g| Device::Cuda(*g)).collect());
                }
                if self.nvenc_gpus.is_empty() {
                    let models: Vec<&str> = self.gpus.iter().map(|g| g.name.as_str()).collect();
                    let models = if models.is_empty() { "this GPU".to_owned() } else { models.join(", ") };
                    return Err(format!(
                        "element present but no NVENC: nvh264dec is registered, nvcudah264enc is not ({models} has no NVENC encoder, or libnvidia-encode.so.1 is missing); the nvdec-x264 backend can use its decoder"
                    ));
                }
                Ok(self.nvenc_gpus.iter().map(|g| Device::Cuda(*g)).collect())
            }
            Backend::Vaapi => {
                if self.render_nodes.is_empty() {
                    return Err("no device node: /dev/dri/renderD* is absent (no VA-API GPU, or the service cannot see it)".to_owned());
                }
                if self.va_devices.is_empty() {
                    return Err(
                        "plugin absent: the va plugin (gstreamer1.0-plugins-bad) registered no vah264dec + vapostproc + vah264enc; install the VA driver (intel-media-va-driver-non-free, mesa-va-drivers), check `vainfo` for H.264 encode, and that rackcast's user is in group render"
                            .to_owned(),
                    );
                }
                Ok(self.va_devices.iter().map(|infix| Device::Va(infix.clone())).collect())
            }
        }
    }
}

/// Where a backend's GPU work runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    /// A CUDA device id.
    Cuda(u32),
    /// A VA render node, by its element-name infix (empty: the first).
    Va(String),
}

impl Device {
    /// The template's `{device}` (element-name infix) and `{gpu}` values.
    pub fn template_values(&self) -> (String, u32) {
        match self {
            Device::Cpu => (String::new(), 0),
            Device::Cuda(gpu) => (nvidia_infix(*gpu), *gpu),
            Device::Va(infix) => (infix.clone(), 0),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(gpu) => write!(f, "cuda:{gpu}"),
            Device::Va(infix) if infix.is_empty() => f.write_str("va:first"),
            Device::Va(infix) => write!(f, "va:{infix}"),
        }
    }
}

/// Whether a stream may move to a later backend of the preference list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Use the next usable backend when one is absent or its budget is spent.
    #[default]
    Allow,
    /// Only the first backend of the list: absent, the appliance does not start.
    Refuse,
}

/// One backend this node may use, with its devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usable {
    pub backend: Backend,
    pub devices: Vec<Device>,
}

/// The backends this node uses, in preference order, and the ones it skipped with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub usable: Vec<Usable>,
    pub skipped: Vec<String>,
}

impl Selection {
    pub fn first(&self) -> Backend {
        self.usable[0].backend
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no configured backend can run here: {0}; install what is missing or change transcode.backends")]
    NoneUsable(String),
    #[error("transcode.backends starts with {backend}, which cannot run here ({why}), and transcode.fallback = \"refuse\"")]
    FirstRefused { backend: Backend, why: String },
}

/// Picks the backends of `preference` that can run here. With [`Fallback::Refuse`] only
/// the first one counts, and its absence is an error.
pub fn select(preference: &[Backend], fallback: Fallback, caps: &Capabilities) -> Result<Selection, SelectError> {
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, &backend) in preference.iter().enumerate() {
        match caps.devices(backend) {
            Ok(devices) => usable.push(Usable { backend, devices }),
            Err(why) if i == 0 && fallback == Fallback::Refuse => return Err(SelectError::FirstRefused { backend, why }),
            Err(why) => skipped.push(format!("{backend}: {why}")),
        }
        if fallback == Fallback::Refuse {
            break;
        }
    }
    if usable.is_empty() {
        return Err(SelectError::NoneUsable(skipped.join("; ")));
    }
    Ok(Selection { usable, skipped })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A host as the probe would see it: `elements` registered, NVIDIA GPUs with and
    /// without NVENC, VA render nodes.
    pub(crate) fn host(elements: &[&str], nvdec: &[u32], nvenc: &[u32], va: bool) -> Capabilities {
        Capabilities {
            gstreamer: "1.22.0".into(),
            elements: elements.iter().map(|e| e.to_string()).collect(),
            nvidia_device_nodes: if nvdec.is_empty() { vec![] } else { vec!["/dev/nvidia0".into()] },
            render_nodes: if va { vec!["/dev/dri/renderD128".into()] } else { vec![] },
            nvdec_gpus: nvdec.to_vec(),
            nvenc_gpus: nvenc.to_vec(),
            va_devices: if va { vec![String::new()] } else { vec![] },
            gpus: nvdec.iter().map(|i| GpuModel { index: *i, name: "NVIDIA L4".into(), driver: Some("580".into()), memory_total_bytes: None }).collect(),
            nvml: None,
            cpu_cores: 2.0,
        }
    }

    const SOFTWARE: [&str; 3] = ["avdec_h264", "videoconvertscale", "x264enc"];
    const CUDA: [&str; 4] = ["nvh264dec", "cudascale", "cudadownload", "nvcudah264enc"];

    fn all() -> Vec<&'static str> {
        SOFTWARE.iter().chain(&CUDA).chain(&["vah264dec", "vapostproc", "vah264enc"]).copied().collect()
    }

    fn names(selection: &Selection) -> Vec<Backend> {
        selection.usable.iter().map(|u| u.backend).collect()
    }

    #[test]
    fn selection_picks_nvenc_then_the_nvdec_hybrid_then_vaapi_then_software() {
        let order = Backend::ALL;
        let everything = host(&all(), &[0, 1], &[0, 1], true);
        let picked = select(&order, Fallback::Allow, &everything).unwrap();
        assert_eq!(names(&picked), order);
        assert_eq!(picked.usable[0].devices, [Device::Cuda(0), Device::Cuda(1)]);
        // An H200: NVDEC on both GPUs, no NVENC anywhere.
        let h200 = host(&all(), &[0, 1], &[], false);
        let picked = select(&order, Fallback::Allow, &h200).unwrap();
        assert_eq!(names(&picked), [Backend::NvdecX264, Backend::Software]);
        assert!(picked.skipped[0].starts_with("nvenc: element present but no NVENC"), "{:?}", picked.skipped);
        assert!(picked.skipped[1].starts_with("vaapi: no device node"), "{:?}", picked.skipped);
        // An Intel host.
        let intel = host(&["vah264dec", "vapostproc", "vah264enc", "avdec_h264", "videoconvertscale", "x264enc"], &[], &[], true);
        let picked = select(&order, Fallback::Allow, &intel).unwrap();
        assert_eq!(names(&picked), [Backend::Vaapi, Backend::Software]);
        assert!(picked.skipped[0].contains("no device node: /dev/nvidia0"), "{:?}", picked.skipped);
        // This machine: software only. The order is the config's, not a fixed one.
        let plain = host(&SOFTWARE, &[], &[], false);
        assert_eq!(names(&select(&order, Fallback::Allow, &plain).unwrap()), [Backend::Software]);
        assert_eq!(names(&select(&[Backend::Software, Backend::Nvenc], Fallback::Allow, &everything).unwrap()), [Backend::Software, Backend::Nvenc]);
    }

    #[test]
    fn refused_fallback_allows_only_the_first_backend() {
        let order = Backend::ALL;
        let plain = host(&SOFTWARE, &[], &[], false);
        let err = select(&order, Fallback::Refuse, &plain).unwrap_err();
        assert!(err.to_string().contains("starts with nvenc, which cannot run here (no device node"), "{err}");
        let everything = host(&all(), &[0], &[0], true);
        assert_eq!(names(&select(&order, Fallback::Refuse, &everything).unwrap()), [Backend::Nvenc]);
        // Nothing usable at all: one error with every reason.
        let bare = host(&[], &[], &[], false);
        let err = select(&[Backend::Vaapi, Backend::Software], Fallback::Allow, &bare).unwrap_err().to_string();
        assert!(err.contains("vaapi: no device node") && err.contains("software: plugin absent: avdec_h264"), "{err}");
    }

    #[test]
    fn missing_parts_are_named() {
        let mut nodes_only = host(&SOFTWARE, &[], &[], false);
        nodes_only.nvidia_device_nodes = vec!["/dev/nvidia0".into()];
        nodes_only.nvml = Some("no NVIDIA driver answered (NVML: a libloading error occurred)".into());
        assert!(nodes_only.devices(Backend::Nvenc).unwrap_err().starts_with("no driver: "));
        nodes_only.nvml = None;
        assert!(nodes_only.devices(Backend::NvdecX264).unwrap_err().contains("registered no nvh264dec"));
        let no_scaler = host(&["nvh264dec", "x264enc"], &[0], &[], false);
        assert!(no_scaler.devices(Backend::NvdecX264).unwrap_err().contains("cudascale, cudadownload"));
        let mut no_va_driver = host(&SOFTWARE, &[], &[], true);
        no_va_driver.va_devices.clear();
        assert!(no_va_driver.devices(Backend::Vaapi).unwrap_err().contains("vainfo"));
        assert_eq!(Device::Cuda(2).template_values(), ("device2".into(), 2));
    }
}
