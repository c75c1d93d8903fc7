//! The host's own figures, read when asked: CPU, memory and load (sysinfo), this process's
//! CPU share (its cgroup quota or affinity, [`cpu`]), and each
//! NVIDIA GPU's utilisation, encoder and decoder load, encoder sessions, memory and
//! temperature (NVML through nvml-wrapper, which opens libnvidia-ml at run time, so the
//! same binary runs on hosts without NVIDIA). What a host lacks reads "not present" with
//! the reason, never as an error. `/metrics` and the admin API both read it.

pub mod cpu;

use std::sync::Arc;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use parking_lot::Mutex;
use serde::Serialize;

/// One reading of the host.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostSnapshot {
    /// CPU busy over all cores since the previous reading, 0..1.
    pub cpu_usage: Option<f64>,
    pub cpus: usize,
    /// Cores this process may use: its cgroup's CPU quota or its affinity, the smaller.
    pub cpu_share: cpu::CpuShare,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// 1, 5 and 15 minute load averages.
    pub load_average: Option<[f64; 3]>,
    pub gpus: Vec<GpuSnapshot>,
    /// Why no GPU is listed (no NVIDIA driver, no device), when none is.
    pub gpus_absent: Option<String>,
}

/// One NVIDIA GPU. A figure the GPU or driver does not report is absent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuSnapshot {
    pub index: u32,
    pub name: String,
    pub driver: Option<String>,
    /// Percent of the last sample period the GPU was busy.
    pub utilization_percent: Option<u32>,
    /// NVENC and NVDEC load, percent (absent or 0 on GPUs without them).
    pub encoder_utilization_percent: Option<u32>,
    pub decoder_utilization_percent: Option<u32>,
    pub encoder_sessions: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
}

pub struct HostTelemetry {
    system: Mutex<Option<sysinfo::System>>,
    nvml: Result<Nvml, String>,
    /// This process's cpu cgroup, when a cpu controller is mounted.
    pub cgroup: Option<cpu::CpuCgroup>,
    /// Read once at start-up: admission's budget is decided then.
    pub cpu_share: cpu::CpuShare,
}

impl HostTelemetry {
    /// Loads NVML when a driver is present (logged either way).
    pub fn start() -> Arc<Self> {
        let nvml = Nvml::init().map_err(|e| format!("no NVIDIA driver answered (NVML: {e})"));
        match &nvml {
            Ok(nvml) => tracing::info!(gpus = nvml.device_count().unwrap_or(0), driver = ?nvml.sys_driver_version().ok(), "NVIDIA GPU telemetry on"),
            Err(reason) => tracing::info!("GPU telemetry: not present: {reason}"),
        }
        let cgroup = cpu::CpuCgroup::of_this_process();
        let cpu_share = cpu::CpuShare::of_this_process(cgroup.as_ref());
        tracing::info!(cores = cpu_share.cores, affinity = cpu_share.affinity, quota_cores = ?cpu_share.quota_cores, cgroup = ?cpu_share.cgroup, "CPU share of this process");
        Arc::new(Self { system: Mutex::new(sysinfo::System::new().ok()), nvml, cgroup, cpu_share })
    }

    pub fn snapshot(&self) -> HostSnapshot {
        let figures = self.system.lock().as_mut().map(|system| {
            system.refresh_cpu_usage();
            system.refresh_memory();
            (f64::from(system.global_cpu_usage()) / 100.0, system.used_memory(), system.total_memory())
        });
        let (gpus, gpus_absent) = match &self.nvml {
            Ok(nvml) => {
                let gpus = gpus(nvml);
                let absent = gpus.is_empty().then(|| "the NVIDIA driver lists no GPU".to_owned());
                (gpus, absent)
            }
            Err(reason) => (Vec::new(), Some(reason.clone())),
        };
        HostSnapshot {
            cpu_usage: figures.map(|f| f.0),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_share: self.cpu_share.clone(),
            memory_used_bytes: figures.map(|f| f.1),
            memory_total_bytes: figures.map(|f| f.2),
            load_average: sysinfo::System::load_average().ok().map(|l| [l.one, l.five, l.fifteen]),
            gpus,
            gpus_absent,
        }
    }
}

fn gpus(nvml: &Nvml) -> Vec<GpuSnapshot> {
    let driver = nvml.sys_driver_version().ok();
    (0..nvml.device_count().unwrap_or(0))
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let memory = device.memory_info().ok();
            Some(GpuSnapshot {
                index,
                name: device.name().unwrap_or_else(|_| "NVIDIA GPU".to_owned()),
                driver: driver.clone(),
                utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
                encoder_utilization_percent: device.encoder_utilization().ok().map(|u| u.utilization),
                decoder_utilization_percent: device.decoder_utilization().ok().map(|u| u.utilization),
                encoder_sessions: device.encoder_stats().ok().map(|s| s.session_count),
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_reads_its_figures_and_says_why_gpus_are_absent() {
        let host = HostTelemetry::start();
        let snapshot = host.snapshot();
        assert!(snapshot.cpus >= 1);
        assert!(snapshot.memory_total_bytes.is_some_and(|m| m > 0));
        // Either GPUs are listed, or the reason none is.
        assert_eq!(snapshot.gpus.is_empty(), snapshot.gpus_absent.is_some(), "{snapshot:?}");
    }
}
