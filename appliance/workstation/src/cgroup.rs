//! Resource limits with cgroup v2: memory and CPU per workstation, where the kernel offers them.
//!
//! Layout: `<root>/periphery/<workstation>/` with `memory.max` and `cpu.max`; each process the
//! workstation starts is moved in at once and its descendants inherit the group. Where cgroup
//! v2 is not mounted, or its memory and cpu controllers cannot be delegated, [`Cgroups::detect`]
//! says why, and workstations run without limits.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Limits for one workstation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit, MiB.
    pub memory_mib: u64,
    /// CPU limit, in CPUs.
    pub cpus: u32,
}

/// A cgroup v2 hierarchy that can hold workstation limits.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

impl Cgroups {
    /// Checks `root` (normally `/sys/fs/cgroup`) and prepares `<root>/periphery`; the error says
    /// why limits cannot be enforced.
    pub fn detect(root: &Path) -> Result<Self, String> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|_| format!("cgroup v2 is not mounted at {}", root.display()))?;
        for c in ["memory", "cpu"] {
            if !controllers.split_whitespace().any(|x| x == c) {
                return Err(format!("the cgroup v2 {c} controller is not available"));
            }
        }
        let base = root.join("periphery");
        let prepare = || -> std::io::Result<()> {
            write(&root.join("cgroup.subtree_control"), "+memory +cpu")?;
            if !base.exists() {
                std::fs::create_dir(&base)?;
            }
            write(&base.join("cgroup.subtree_control"), "+memory +cpu")
        };
        prepare().map_err(|e| format!("cannot delegate memory and cpu controllers: {e}"))?;
        Ok(Self { base })
    }

    /// Creates (or reuses) the group of workstation `name` with `limits`.
    pub fn create(&self, name: &str, limits: CgroupLimits) -> std::io::Result<Cgroup> {
        let path = self.base.join(name);
        if !path.exists() {
            std::fs::create_dir(&path)?;
        }
        write(
            &path.join("memory.max"),
            &(limits.memory_mib * 1024 * 1024).to_string(),
        )?;
        // cpu.max: quota and period in microseconds; N CPUs = N periods per period.
        write(
            &path.join("cpu.max"),
            &format!("{} 100000", u64::from(limits.cpus.max(1)) * 100_000),
        )?;
        Ok(Cgroup { path, limits })
    }
}

/// One workstation's group.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    limits: CgroupLimits,
}

impl Cgroup {
    /// Moves a process (and so its future children) into the group.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// The limits, for people.
    pub fn describe(&self) -> String {
        format!(
            "cgroup v2 {}: memory.max {} MiB, cpu.max {} CPU(s)",
            self.path.display(),
            self.limits.memory_mib,
            self.limits.cpus
        )
    }

    /// Kills everything in the group (`cgroup.kill`) and removes it.
    pub fn remove(&self) {
        let _ = write(&self.path.join("cgroup.kill"), "1");
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup v2 root (the kernel's files are plain files here).
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        d
    }

    #[test]
    fn limits_are_written_as_the_kernel_expects() {
        let root = fake_root("cpuset cpu io memory pids");
        std::fs::create_dir(root.path().join("periphery")).unwrap();
        std::fs::write(root.path().join("periphery/cgroup.subtree_control"), "").unwrap();
        let cg = Cgroups::detect(root.path()).unwrap();
        let ws = root.path().join("periphery/w-1");
        std::fs::create_dir(&ws).unwrap();
        for f in ["memory.max", "cpu.max", "cgroup.procs"] {
            std::fs::write(ws.join(f), "").unwrap();
        }
        let g = cg
            .create(
                "w-1",
                CgroupLimits {
                    memory_mib: 2048,
                    cpus: 2,
                },
            )
            .unwrap();
        g.add(4242).unwrap();
        let read = |f: &str| std::fs::read_to_string(ws.join(f)).unwrap();
        assert_eq!(read("memory.max"), (2048u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("cgroup.procs"), "4242");
        assert_eq!(
            std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu"
        );
    }

    #[test]
    fn missing_cgroup_v2_or_controllers_are_explained() {
        let none = tempfile::tempdir().unwrap();
        let e = Cgroups::detect(none.path()).unwrap_err();
        assert!(e.contains("cgroup v2 is not mounted"), "{e}");
        let no_mem = fake_root("cpu io pids");
        let e = Cgroups::detect(no_mem.path()).unwrap_err();
        assert!(e.contains("memory controller"), "{e}");
    }
}
