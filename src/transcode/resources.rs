//! The node's transcode resources, decided once at start-up: the host's capabilities, the
//! backends chosen from `transcode.backends` (each template loaded, overrides included,
//! and checked against the installed elements), and the admission budgets.

use std::collections::BTreeMap;

use super::admission::{Admission, Budgets};
use super::backend::{installed_properties, Backend, Template, TemplateError, TemplateVars};
use super::capability::{self, Capabilities, Device, Fallback, Selection};
use crate::transcode::config::TranscodeConfig;

/// NVENC sessions a GeForce driver allows at once, system-wide (current drivers).
pub const GEFORCE_NVENC_SESSIONS: u32 = 8;
/// Default NVENC sessions per data-centre or professional GPU (no driver cap; bounded here
/// so one GPU's encoder is not oversubscribed).
pub const DEFAULT_NVENC_SESSIONS: u32 = 32;
/// Share of this process's cores (its cgroup quota or affinity) the CPU transcoders may
/// take by default; the rest serves ingest, packaging and viewers.
pub const DEFAULT_CPU_SHARE: f64 = 0.85;

pub struct Resources {
    pub capabilities: Capabilities,
    pub admission: Admission,
    templates: BTreeMap<Backend, Template>,
    /// Threads of a software decoder (frame threading holds back one frame per thread).
    pub decode_threads: u32,
}

impl Resources {
    /// Probes the host and chooses the backends; an error says what is missing.
    pub fn start(config: &TranscodeConfig, host: &crate::host::HostSnapshot) -> Result<Self, String> {
        let capabilities = Capabilities::probe(host);
        let mut selection = capability::select(&config.backends, config.fallback, &capabilities).map_err(|e| e.to_string())?;
        let mut templates = BTreeMap::new();
        let mut unusable = Vec::new();
        for usable in &selection.usable {
            match checked_template(usable.backend, &usable.devices, config, &capabilities.gstreamer) {
                Ok(template) => {
                    tracing::info!(backend = %usable.backend, template = %template.origin, names_from = %template.gstreamer, devices = ?usable.devices, "backend usable");
                    templates.insert(usable.backend, template);
                }
                Err(e) if config.fallback == Fallback::Refuse => return Err(e.to_string()),
                Err(e) => unusable.push((usable.backend, e.to_string())),
            }
        }
        for (backend, why) in unusable {
            selection.usable.retain(|u| u.backend != backend);
            selection.skipped.push(format!("{backend}: {why}"));
        }
        if selection.usable.is_empty() {
            return Err(format!("no configured backend can run here: {}", selection.skipped.join("; ")));
        }
        for skipped in &selection.skipped {
            tracing::warn!("backend skipped: {skipped}");
        }
        let budgets = budgets(config, &capabilities);
        tracing::info!(backends = ?selection.usable.iter().map(|u| u.backend.name()).collect::<Vec<_>>(), ?budgets, over_budget = ?config.over_budget, "transcode backends chosen");
        Ok(Self::new(capabilities, selection, templates, budgets, config))
    }

    /// Resources from parts (tests, `rackcast transcode --backend`).
    pub fn new(capabilities: Capabilities, selection: Selection, templates: BTreeMap<Backend, Template>, budgets: Budgets, config: &TranscodeConfig) -> Self {
        let decode_threads = capabilities.cpu_cores.ceil().clamp(1.0, 4.0) as u32;
        Self { admission: Admission::new(selection, budgets, config.over_budget, config.calibrate_cost), capabilities, templates, decode_threads }
    }

    pub fn template(&self, backend: Backend) -> &Template {
        &self.templates[&backend]
    }

    /// The preferred usable backend.
    pub fn first(&self) -> Backend {
        self.admission.selection().first()
    }
}

/// `backend`'s template (the override in `transcode.pipelines_dir`, else the built-in one),
/// its elements and properties checked against the installed GStreamer on its first device.
pub fn checked_template(backend: Backend, devices: &[Device], config: &TranscodeConfig, gstreamer: &str) -> Result<Template, TemplateError> {
    let template = Template::load(backend, config.pipelines_dir.as_deref())?;
    let (device, gpu) = devices.first().map_or((String::new(), 0), Device::template_values);
    template.check(&TemplateVars { device, gpu, ..TemplateVars::sample() }, gstreamer, installed_properties)?;
    Ok(template)
}

/// The configured budgets, with defaults from the host: GeForce drivers' NVENC cap, a
/// share of the cores.
pub fn budgets(config: &TranscodeConfig, capabilities: &Capabilities) -> Budgets {
    let consumer = capabilities.gpus.iter().any(|g| g.is_consumer());
    Budgets {
        nvenc_sessions: config.nvenc_sessions_per_gpu.unwrap_or(if consumer { GEFORCE_NVENC_SESSIONS } else { DEFAULT_NVENC_SESSIONS }),
        nvdec_sessions: config.nvdec_sessions_per_gpu,
        vaapi_sessions: config.vaapi_sessions,
        cpu_cores: config.cpu_budget.unwrap_or(capabilities.cpu_cores * DEFAULT_CPU_SHARE),
    }
}
