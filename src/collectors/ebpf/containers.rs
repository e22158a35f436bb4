//! Which container and pod a process belongs to, read from its cgroup path.
//!
//! A host service's cgroup is its systemd unit's (`/system.slice/cron.service`), so kernel
//! events of host processes name their unit too.
//!
//! Container runtimes name a container's cgroup after its 64-hex id (`docker-<id>.scope`,
//! `cri-containerd-<id>.scope`, `crio-<id>.scope`, `/docker/<id>`), and the kubelet nests
//! it under the pod's (`kubepods-burstable-pod<uid>.slice` or `/kubepods/burstable/pod<uid>`).
//! The path comes from `/proc/PID/cgroup`; on a cgroup v2 host, a process that is already
//! gone is found by its cgroup id, which is the inode of its cgroup directory. Answers are
//! cached, a bounded number of them.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bounded::Bounded;

/// Identities cached when nothing else is configured.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Most cgroup directories looked at when searching for a cgroup id.
const SEARCH_LIMIT: usize = 20_000;

/// A process's container and pod, or its systemd unit; empty strings when none is found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The runtime's 64-hex container id.
    pub container_id: Arc<str>,
    /// The pod's UID, with dashes.
    pub pod_uid: Arc<str>,
    /// The systemd unit whose cgroup holds a host process, e.g. `cron.service`.
    pub unit: Arc<str>,
}

impl Identity {
    /// How a message names it: its container (short id), pod or unit; empty when none.
    #[must_use]
    pub fn describe(&self) -> String {
        if !self.container_id.is_empty() {
            format!(
                "container {}",
                &self.container_id[..12.min(self.container_id.len())]
            )
        } else if !self.pod_uid.is_empty() {
            format!("pod {}", self.pod_uid)
        } else if !self.unit.is_empty() {
            format!("unit {}", self.unit)
        } else {
            String::new()
        }
    }

    /// Whether no container, pod or unit was found.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.container_id.is_empty() && self.pod_uid.is_empty() && self.unit.is_empty()
    }
}

/// The bounded cache and where it reads from.
#[derive(Debug)]
pub struct Containers {
    known: Bounded<u64, Arc<Identity>>,
    // On a cgroup v2 host the kernel's cgroup id names the container's cgroup, so answers
    // are shared by every process in it; on v1 or hybrid hosts it is the v2 hierarchy's id,
    // the same for everyone, and answers must be per process.
    by_cgroup: bool,
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl Containers {
    /// A cache of at most `capacity` answers about this host.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let by_cgroup = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        Self::with_roots(capacity, by_cgroup, "/proc".into(), "/sys/fs/cgroup".into())
    }

    /// A cache that reads `proc_root` and `cgroup_root` instead of the host's.
    #[must_use]
    pub fn with_roots(
        capacity: usize,
        by_cgroup: bool,
        proc_root: PathBuf,
        cgroup_root: PathBuf,
    ) -> Self {
        Self {
            known: Bounded::new(capacity),
            by_cgroup,
            proc_root,
            cgroup_root,
        }
    }

    /// The container and pod of process `pid` in cgroup `cgroup_id`; `None` on the host or
    /// when it cannot be known.
    pub fn resolve(&mut self, pid: u32, cgroup_id: u64) -> Option<Arc<Identity>> {
        let key = self.key(pid, cgroup_id);
        let identity = if let Some(known) = self.known.get(&key) {
            Arc::clone(known)
        } else {
            let found = Arc::new(self.look_up(pid, cgroup_id));
            self.known.insert(key, Arc::clone(&found));
            found
        };
        (!identity.is_empty()).then_some(identity)
    }

    /// Forgets a process that has exited (its pid may be reused).
    pub fn forget(&mut self, pid: u32) {
        if !self.by_cgroup {
            self.known.remove(&self.key(pid, 0));
        }
    }

    /// How many answers are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn key(&self, pid: u32, cgroup_id: u64) -> u64 {
        if self.by_cgroup {
            cgroup_id
        } else {
            u64::from(pid)
        }
    }

    fn look_up(&self, pid: u32, cgroup_id: u64) -> Identity {
        let file = self.proc_root.join(pid.to_string()).join("cgroup");
        if let Ok(text) = std::fs::read_to_string(file) {
            return from_proc_cgroup(&text);
        }
        if self.by_cgroup
            && cgroup_id != 0
            && let Some(path) = find_cgroup(&self.cgroup_root, cgroup_id)
        {
            return from_path(&path);
        }
        Identity::default()
    }
}

/// The identity in the text of a `/proc/PID/cgroup` file.
#[must_use]
pub fn from_proc_cgroup(text: &str) -> Identity {
    let mut best = Identity::default();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let identity = from_path(path);
        if !identity.container_id.is_empty() {
            return identity;
        }
        if best.is_empty() {
            best = identity;
        }
    }
    best
}

/// The identity in one cgroup path.
#[must_use]
pub fn from_path(path: &str) -> Identity {
    let mut identity = Identity::default();
    for segment in path.split('/').rev() {
        if identity.container_id.is_empty()
            && let Some(id) = container_id(segment)
        {
            identity.container_id = id.into();
            continue;
        }
        if identity.pod_uid.is_empty()
            && let Some(uid) = pod_uid(segment)
        {
            identity.pod_uid = uid.into();
        }
    }
    // A container's scope is a unit too, but the container is the better name for it.
    if identity.container_id.is_empty() && identity.pod_uid.is_empty() {
        identity.unit = path
            .rsplit('/')
            .find(|segment| matches!(segment.rsplit_once('.'), Some((_, "service" | "scope"))))
            .map(Arc::from)
            .unwrap_or_default();
    }
    identity
}

fn container_id(segment: &str) -> Option<&str> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = name.rsplit(['-', ':']).next().unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = name.rfind("pod")?;
    let uid = &name[at + 3..];
    // The systemd cgroup driver writes the UID with underscores.
    let uid = uid.replace('_', "-");
    let shaped = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    shaped.then_some(uid)
}

/// The cgroup directories below `root`, at most `max` of them; the second value says
/// whether there were more.
#[must_use]
pub fn cgroup_dirs(root: &Path, max: usize) -> (Vec<std::path::PathBuf>, bool) {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if found.len() >= max {
                return (found, true);
            }
            let path = entry.path();
            pending.push(path.clone());
            found.push(path);
        }
    }
    (found, false)
}

/// The hierarchy a cgroup collector reads: `configured`, else `/sys/fs/cgroup` on a
/// cgroup v2 host, else v1's `/sys/fs/cgroup/<controller>`; and whether it is v2.
#[must_use]
pub fn hierarchy(configured: Option<&Path>, controller: &str) -> (std::path::PathBuf, bool) {
    match configured {
        Some(root) => (root.to_path_buf(), root.join("cgroup.controllers").exists()),
        None if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
            ("/sys/fs/cgroup".into(), true)
        }
        None => (Path::new("/sys/fs/cgroup").join(controller), false),
    }
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup`, or beside v1 on a hybrid host.
#[must_use]
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (_, at, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| at.into())
    })
}

/// The path below `root` of the cgroup directory whose inode is `cgroup_id`.
fn find_cgroup(root: &Path, cgroup_id: u64) -> Option<String> {
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        seen += 1;
        if seen > SEARCH_LIMIT {
            return None;
        }
        let Ok(metadata) = std::fs::metadata(&dir) else {
            continue;
        };
        if metadata.ino() == cgroup_id {
            let relative = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", relative.display()));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        pending.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a1c2b9d8e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    #[test]
    fn runtimes_and_kubelet_drivers_name_the_container_and_pod() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), ""),
            (format!("/docker/{ID}"), ""),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d3c2f1e_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-{ID}.scope"
                ),
                "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            ),
            (
                format!("/kubepods/besteffort/pod0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f/{ID}"),
                "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            ),
            (format!("/kubepods.slice/crio-{ID}.scope"), ""),
        ];
        for (path, pod) in cases {
            let identity = from_path(&path);
            assert_eq!(&*identity.container_id, ID, "{path}");
            assert_eq!(&*identity.pod_uid, pod, "{path}");
        }
    }

    #[test]
    fn host_processes_are_named_by_their_unit_when_they_have_one() {
        assert!(from_path("/").is_empty());
        assert!(from_path("/user.slice/user-0.slice").is_empty());
        let cases = [
            ("/system.slice/cron.service", "cron.service"),
            (
                "/user.slice/user-0.slice/session-1.scope",
                "session-1.scope",
            ),
            (
                "/system.slice/containerd.service/kubepods-burstable.slice",
                "containerd.service",
            ),
        ];
        for (path, unit) in cases {
            let identity = from_path(path);
            assert_eq!(&*identity.unit, unit, "{path}");
            assert!(identity.container_id.is_empty(), "{path}");
        }
        assert!(
            from_path(&format!("/system.slice/docker-{ID}.scope"))
                .unit
                .is_empty()
        );
    }

    #[test]
    fn a_v1_file_is_searched_line_by_line() {
        let text = format!("12:pids:/\n4:memory:/docker/{ID}\n0::/\n");
        assert_eq!(&*from_proc_cgroup(&text).container_id, ID);
    }

    #[test]
    fn answers_are_cached_within_the_bound_and_forgotten_on_exit() {
        let proc = tempfile::tempdir().expect("temp dir");
        for pid in 1..=3u32 {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).expect("creates");
            std::fs::write(dir.join("cgroup"), format!("0::/docker/{ID}\n")).expect("writes");
        }
        let mut cache = Containers::with_roots(2, false, proc.path().into(), proc.path().into());
        assert_eq!(
            cache.resolve(1, 0).map(|i| i.container_id.to_string()),
            Some(ID.to_owned())
        );
        cache.resolve(2, 0);
        cache.resolve(3, 0);
        assert_eq!(cache.len(), 2, "bounded");
        // Cached answers survive their file: the process is gone but its events still come.
        std::fs::remove_file(proc.path().join("3/cgroup")).expect("removes");
        assert!(cache.resolve(3, 0).is_some());
        cache.forget(3);
        assert!(
            cache.resolve(3, 0).is_none(),
            "a forgotten pid is read again"
        );
    }

    #[test]
    fn a_gone_process_is_found_by_its_cgroup_inode() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root
            .path()
            .join("kubepods")
            .join(format!("cri-containerd-{ID}.scope"));
        std::fs::create_dir_all(&dir).expect("creates");
        let inode = std::fs::metadata(&dir).expect("stat").ino();
        let empty_proc = tempfile::tempdir().expect("temp dir");
        let mut cache =
            Containers::with_roots(8, true, empty_proc.path().into(), root.path().into());
        let identity = cache.resolve(4242, inode).expect("found by inode");
        assert_eq!(&*identity.container_id, ID);
    }
}
