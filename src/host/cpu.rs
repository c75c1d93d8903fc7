//! The CPU share this process may use and how much of it is spent: the CPU quota of its
//! cgroup (v2 `cpu.max`; v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`), the smallest
//! along its ancestors, or the CPUs it may be scheduled on (affinity), whichever is smaller;
//! this process's own CPU time; and the cgroup's throttling counters (`cpu.stat`).
//! systemd's `CPUQuota=`, a container's `--cpus` and a pod's CPU limit all arrive as such a
//! quota. Admission budgets the share (`transcode::resources`), and the overload
//! controller (`stream::overload`) and the cost calibration read [`CpuMeter`]. Reading is
//! plain files under a directory, so tests lay them out in a temporary one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

/// The cores this process may use and where that figure came from (the log,
/// `/api/v1/node`, `rackcast probe`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CpuShare {
    /// Cores this process may use (a fraction under a fractional quota).
    pub cores: f64,
    /// CPUs the process may be scheduled on.
    pub affinity: usize,
    /// The cgroup quota in cores, when one applies.
    pub quota_cores: Option<f64>,
    /// `cgroup v2 /sys/fs/cgroup/x` or `cgroup v1 /sys/fs/cgroup/cpu/x`, when found.
    pub cgroup: Option<String>,
}

/// Throttling counters of a cgroup's `cpu.stat` (the same names in v1 and v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttling {
    /// Enforcement periods that ran (each `period` long).
    pub periods: u64,
    /// Periods in which the cgroup used its whole quota and was throttled.
    pub throttled: u64,
}

impl Throttling {
    /// Share of the periods between `earlier` and `self` that were throttled, 0..1.
    pub fn throttled_share_since(&self, earlier: &Throttling) -> f64 {
        let periods = self.periods.saturating_sub(earlier.periods);
        if periods == 0 {
            return 0.0;
        }
        (self.throttled.saturating_sub(earlier.throttled) as f64 / periods as f64).min(1.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cpu controller's directory of this process's cgroup, and the mount it lives in
/// (ancestors up to the mount point are read for their quotas too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuCgroup {
    version: Version,
    dir: PathBuf,
    mount: PathBuf,
}

impl CpuCgroup {
    /// This process's cgroup, from `/proc/self/cgroup` and `/proc/self/mountinfo`; `None`
    /// where no cpu controller is mounted (or the files cannot be read).
    pub fn of_this_process() -> Option<Self> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::find(&cgroups, &mounts)
    }

    /// A v2 cgroup at `dir` (tests).
    pub fn v2(dir: &Path) -> Self {
        Self { version: Version::V2, dir: dir.to_owned(), mount: dir.to_owned() }
    }

    /// A v1 cpu-controller cgroup at `dir` (tests).
    pub fn v1(dir: &Path) -> Self {
        Self { version: Version::V1, dir: dir.to_owned(), mount: dir.to_owned() }
    }

    /// Finds the cpu controller's directory from the texts of `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`: a v1 hierarchy that carries `cpu` wins (its quota is the one
    /// enforced where both exist), else the v2 hierarchy.
    fn find(cgroups: &str, mountinfo: &str) -> Option<Self> {
        // /proc/self/cgroup: "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
        let mut v1_path = None;
        let mut v2_path = None;
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.is_empty() {
                v2_path = Some(path);
            } else if controllers.split(',').any(|c| c == "cpu") {
                v1_path = Some(path);
            }
        }
        // mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS".
        let mut v1_mount = None;
        let mut v2_mount = None;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
            let (Some(root), Some(point), Some(fstype)) = (fields.get(3), fields.get(4), fields.get(dash + 1)) else { continue };
            match *fstype {
                "cgroup" if fields.get(dash + 3).is_some_and(|o| o.split(',').any(|o| o == "cpu")) => v1_mount = Some((*root, *point)),
                "cgroup2" => v2_mount = Some((*root, *point)),
                _ => {}
            }
        }
        let (version, path, (root, point)) = match (v1_path, v1_mount, v2_path, v2_mount) {
            (Some(path), Some(mount), _, _) => (Version::V1, path, mount),
            (_, _, Some(path), Some(mount)) => (Version::V2, path, mount),
            _ => return None,
        };
        // Inside a container the mount's root is the container's own cgroup: strip it.
        let relative = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
        let mount = PathBuf::from(unescape(point));
        Some(Self { version, dir: mount.join(relative), mount })
    }

    /// The quota in cores: the smallest set on this cgroup or an ancestor within the mount;
    /// `None` when none is set ("max", -1) or the files are unreadable.
    pub fn quota_cores(&self) -> Option<f64> {
        let mut smallest: Option<f64> = None;
        let mut dir = Some(self.dir.as_path());
        while let Some(d) = dir {
            if let Some(q) = self.quota_at(d) {
                smallest = Some(smallest.map_or(q, |s| s.min(q)));
            }
            if d == self.mount {
                break;
            }
            dir = d.parent().filter(|p| p.starts_with(&self.mount));
        }
        smallest
    }

    fn quota_at(&self, dir: &Path) -> Option<f64> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let (quota, period) = match self.version {
            Version::V2 => {
                let text = read("cpu.max")?;
                let mut parts = text.split_whitespace();
                let quota = parts.next()?;
                (quota.parse::<i64>().ok()?, parts.next()?.parse::<i64>().ok()?)
            }
            Version::V1 => (read("cpu.cfs_quota_us")?.trim().parse::<i64>().ok()?, read("cpu.cfs_period_us")?.trim().parse::<i64>().ok()?),
        };
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
    }

    /// The cgroup's throttling counters, when it has them.
    pub fn throttling(&self) -> Option<Throttling> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok());
        Some(Throttling { periods: field("nr_periods")?, throttled: field("nr_throttled")? })
    }

    fn describe(&self) -> String {
        let version = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        format!("cgroup {version} {}", self.dir.display())
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The CPUs this process may run on: `sched_getaffinity` as the standard library reads it
/// (which also rounds a cgroup quota down to whole cores, so the quota is read apart).
fn affinity() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| count_cpu_list(v.trim()))))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts a CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> usize {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1),
            None => part.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

impl CpuShare {
    /// This process's share: the smaller of its cgroup quota and its affinity.
    pub fn of_this_process(cgroup: Option<&CpuCgroup>) -> Self {
        Self::from_parts(affinity(), cgroup)
    }

    fn from_parts(affinity: usize, cgroup: Option<&CpuCgroup>) -> Self {
        let quota_cores = cgroup.and_then(CpuCgroup::quota_cores);
        let cores = quota_cores.map_or(affinity as f64, |q| q.min(affinity as f64));
        Self { cores, affinity, quota_cores, cgroup: cgroup.map(CpuCgroup::describe) }
    }
}

/// One reading of this process's CPU use against its share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// Cores this process used since the previous reading.
    pub cores: f64,
    /// Cores it may use.
    pub share: f64,
    /// Share of the cgroup's enforcement periods since the previous reading in which it hit
    /// its quota (0 without a quota).
    pub throttled: f64,
    /// The whole host's CPU busy since the previous reading, 0..1: where other work takes
    /// the cores, the process cannot have its share however little it uses.
    pub host: f64,
}

impl CpuUse {
    /// Use over share, 0..1 (may pass 1 briefly: the quota is enforced per period).
    pub fn utilisation(&self) -> f64 {
        if self.share > 0.0 { self.cores / self.share } else { 0.0 }
    }
}

/// Reads this process's CPU time and its cgroup's throttling, as deltas between calls.
pub struct CpuMeter {
    system: sysinfo::System,
    pid: sysinfo::Pid,
    cgroup: Option<CpuCgroup>,
    share: f64,
    previous: Option<(Instant, u64, Option<Throttling>)>,
}

impl CpuMeter {
    pub fn new(share: &CpuShare, cgroup: Option<CpuCgroup>) -> Result<Self, String> {
        let system = sysinfo::System::new().map_err(|e| format!("cannot read process CPU time: {e}"))?;
        let pid = sysinfo::get_current_pid().map_err(|e| format!("cannot find this process: {e}"))?;
        Ok(Self { system, pid, cgroup, share: share.cores, previous: None })
    }

    /// Use since the previous call (`None` on the first call, or when unreadable).
    pub fn read(&mut self) -> Option<CpuUse> {
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[self.pid]),
            false,
            sysinfo::ProcessRefreshKind::nothing().with_cpu(),
        );
        self.system.refresh_cpu_usage();
        let host = f64::from(self.system.global_cpu_usage()) / 100.0;
        let cpu_ms = self.system.process(self.pid)?.accumulated_cpu_time();
        let now = Instant::now();
        let throttling = self.cgroup.as_ref().and_then(CpuCgroup::throttling);
        let previous = self.previous.replace((now, cpu_ms, throttling))?;
        let elapsed_ms = now.duration_since(previous.0).as_secs_f64() * 1000.0;
        if elapsed_ms <= 0.0 {
            return None;
        }
        let throttled = match (throttling, previous.2) {
            (Some(now), Some(before)) => now.throttled_share_since(&before),
            _ => 0.0,
        };
        Some(CpuUse { cores: cpu_ms.saturating_sub(previous.1) as f64 / elapsed_ms, share: self.share, throttled, host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn a_v2_quota_is_read_from_cpu_max_the_smallest_along_the_ancestors() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("system.slice");
        let leaf = parent.join("rackcast.service");
        write(root.path(), "cpu.max", "max 100000\n");
        write(&parent, "cpu.max", "300000 100000\n");
        write(&leaf, "cpu.max", "150000 100000\n");
        write(&leaf, "cpu.stat", "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\nnr_periods 200\nnr_throttled 50\nthrottled_usec 900000\n");
        let cgroup = CpuCgroup { version: Version::V2, dir: leaf.clone(), mount: root.path().to_owned() };
        assert_eq!(cgroup.quota_cores(), Some(1.5));
        assert_eq!(cgroup.throttling(), Some(Throttling { periods: 200, throttled: 50 }));
        // The parent's tighter limit applies to its children too.
        write(&parent, "cpu.max", "50000 100000\n");
        assert_eq!(cgroup.quota_cores(), Some(0.5));
        // No limit anywhere: the affinity decides.
        write(&parent, "cpu.max", "max 100000\n");
        write(&leaf, "cpu.max", "max 100000\n");
        let share = CpuShare::from_parts(8, Some(&cgroup));
        assert_eq!((share.cores, share.quota_cores), (8.0, None));
    }

    #[test]
    fn a_v1_quota_is_cfs_quota_over_period_and_unset_is_minus_one() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = CpuCgroup::v1(dir.path());
        write(dir.path(), "cpu.cfs_quota_us", "-1\n");
        write(dir.path(), "cpu.cfs_period_us", "100000\n");
        write(dir.path(), "cpu.stat", "nr_periods 10\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n");
        assert_eq!(cgroup.quota_cores(), None);
        write(dir.path(), "cpu.cfs_quota_us", "400000\n");
        assert_eq!(cgroup.quota_cores(), Some(4.0));
        // A quota above the CPUs the process may use does not raise its share.
        let share = CpuShare::from_parts(2, Some(&cgroup));
        assert_eq!((share.cores, share.quota_cores), (2.0, Some(4.0)));
        let share = CpuShare::from_parts(64, Some(&cgroup));
        assert_eq!(share.cores, 4.0, "a 4-core quota on a 64-core host is 4 cores");
        let earlier = cgroup.throttling().unwrap();
        write(dir.path(), "cpu.stat", "nr_periods 30\nnr_throttled 5\nthrottled_time 123\n");
        assert_eq!(cgroup.throttling().unwrap().throttled_share_since(&earlier), 0.25);
        assert_eq!(earlier.throttled_share_since(&earlier), 0.0, "no period ran");
    }

    #[test]
    fn the_process_cgroup_is_found_from_proc_files() {
        // This machine's layout: v1 controllers, cpu on its own hierarchy, plus a v2 mount.
        let cgroups = "9:name=systemd:/\n4:memory:/x\n2:cpuacct:/\n1:cpu:/rackcast\n0::/\n";
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
            31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
            32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
            40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let found = CpuCgroup::find(cgroups, mountinfo).unwrap();
        assert_eq!((found.version, found.dir.as_path()), (Version::V1, Path::new("/sys/fs/cgroup/cpu/rackcast")));
        // Co-mounted cpu,cpuacct (most distributions' v1).
        let comounted = "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let found = CpuCgroup::find("3:cpu,cpuacct:/a/b\n", comounted).unwrap();
        assert_eq!(found.dir, Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b"));
        // Pure v2, inside a container whose root is its own cgroup.
        let v2 = "29 1 0:26 /kubepods/pod1/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = CpuCgroup::find("0::/kubepods/pod1/c1\n", v2).unwrap();
        assert_eq!((found.version, found.dir.as_path()), (Version::V2, Path::new("/sys/fs/cgroup")));
        let found = CpuCgroup::find("0::/system.slice/rackcast.service\n", "29 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").unwrap();
        assert_eq!(found.dir, Path::new("/sys/fs/cgroup/system.slice/rackcast.service"));
        // No cpu controller mounted.
        assert_eq!(CpuCgroup::find("1:memory:/\n", "31 30 0:27 / /m rw - cgroup cgroup rw,memory\n"), None);
    }

    #[test]
    fn cpu_lists_and_escaped_mount_points_are_read() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), 7);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(unescape("/sys/fs/cgroup/a\\040b"), "/sys/fs/cgroup/a b");
        let share = CpuShare::of_this_process(CpuCgroup::of_this_process().as_ref());
        assert!(share.cores > 0.0 && share.affinity >= 1, "{share:?}");
    }

    #[test]
    fn the_meter_reads_this_process_spending_cpu() {
        let cgroup = CpuCgroup::of_this_process();
        let mut meter = CpuMeter::new(&CpuShare::of_this_process(cgroup.as_ref()), cgroup).unwrap();
        assert_eq!(meter.read(), None, "the first reading has nothing to compare with");
        // Spin for 300 ms of wall time: this thread alone uses most of a core.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = meter.read().unwrap();
        assert!(used.cores > 0.2, "{used:?}");
        assert!(used.utilisation() > 0.0);
    }
}
