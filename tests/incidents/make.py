#!/usr/bin/env python3
"""Writes the incident corpus: replay files of realistic incidents among routine
background, each event shaped exactly as docs/event-types.md says its collector emits it,
in the order the collectors would send them (a kubelet poll or a syscall report arrives
late), and for each file its truth: which events belong to which incident, and which one
is the root cause.

    python3 tests/incidents/make.py      # rewrites tests/incidents/*.jsonl and *.truth.json

Deterministic: the same script writes the same files. tests/incidents.rs replays them
through the correlation engine and scores the groups against the truth.
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
# Another draw of the same incidents (names, ids, ports, timings, background) for the
# scorer's robustness run: CORPUS_SEED=N CORPUS_OUT=dir python3 make.py.
OFFSET = int(os.environ.get("CORPUS_SEED", "0"))
OUT = os.environ.get("CORPUS_OUT", HERE)
NODE = "node-a"
NODE_IP = "10.0.1.5"
DNS_IP = "10.96.0.10"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SEC = 1_000_000_000
MS = 1_000_000


def ulid(ms, n):
    value = (ms << 80) | n
    return "".join(ALPHABET[(value >> (125 - 5 * i)) & 0x1F] for i in range(26))


class Pod:
    def __init__(self, rng, index, ns, kind, workload, comm, container, service=None, port=None,
                 labels=None):
        self.ns, self.kind, self.workload, self.comm = ns, kind, workload, comm
        self.container = container
        suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        if kind == "StatefulSet":
            self.name = f"{workload}-0"
        elif kind == "Deployment":
            self.name = f"{workload}-{rng.randrange(16**5):05x}-{suffix}"
        else:
            self.name = f"{workload}-{suffix}"
        self.uid = "%08x-%04x-4%03x-a%03x-%012x" % (
            rng.randrange(16**8), rng.randrange(16**4), rng.randrange(16**3),
            rng.randrange(16**3), rng.randrange(16**12))
        self.ip = f"10.244.0.{10 + index}"
        self.service, self.port = service, port
        self.labels = {"app": workload, **(labels or {})}
        self.cgroup = 5000 + index * 17
        self.pid = 2000 + index * 100
        self.container_id = "%064x" % rng.randrange(16**64)
        self.restarts = 0

    def new_container(self, rng):
        self.container_id = "%064x" % rng.randrange(16**64)
        self.pid += 7
        self.restarts += 1


class Writer:
    """One replay file: events in arrival order, and the truth."""

    def __init__(self, name, seed, start_s):
        self.name = name
        self.rng = random.Random(seed + 1000 * OFFSET)
        self.start = start_s * SEC
        self.n = 0
        self.out = []  # (arrival, seq, event)
        self.truth = {}  # incident -> {"root": id, "events": [ids], "class": text}

    def at(self, seconds):
        return self.start + int(seconds * SEC)

    def emit(self, when, kind, source, severity="info", message="", entities=None,
             attributes=None, arrive=None, incident=None, root=False):
        self.n += 1
        event = {
            "id": ulid(when // MS, self.n),
            "timestamp_unix_nano": when,
            "type": kind,
            "source": source,
            "severity": severity,
            "message": message,
            "entities": {"node": NODE, **(entities or {})},
            "attributes": attributes or {},
        }
        self.out.append((arrive if arrive is not None else when, self.n, event))
        if incident is not None:
            entry = self.truth.setdefault(incident[0], {"class": incident[1], "events": []})
            entry["events"].append(event["id"])
            if root:
                entry["root"] = event["id"]
        return event

    # Shapes, one per collector.

    def kernel(self, when, kind, source, pod, attributes, severity="info", message="", pid=None,
               comm=None, unit=None, **kw):
        entities = {"pid": pid or (pod.pid if pod else 0), "comm": comm or (pod.comm if pod else ""),
                    "cgroup_id": pod.cgroup if pod else 4242}
        if pod:
            entities.update(container_id=pod.container_id, pod_uid=pod.uid)
        if unit:
            entities["unit"] = unit
        return self.emit(when, kind, source, severity, message, entities, attributes, **kw)

    def kubeapi(self, when, kind, pod, attributes, severity, message, container_id=None, **kw):
        entities = {"pod_uid": pod.uid, "pod_namespace": pod.ns, "pod_name": pod.name,
                    "workload_kind": pod.kind, "workload_name": pod.workload}
        if container_id:
            entities["container_id"] = container_id
        attrs = {f"k8s.pod.label.{k}": v for k, v in sorted(pod.labels.items())}
        if pod.service:
            attrs["k8s.service.name"] = pod.service
        attrs["pod_ip"] = pod.ip
        attrs.update(attributes)
        return self.emit(when, kind, "kubeapi", severity, message, entities, attrs, **kw)

    def node(self, when, kind, attributes, severity, message, source="kubeapi", **kw):
        return self.emit(when, kind, source, severity, message, {}, attributes, **kw)

    def tcp(self, when, kind, pod, daddr, dport, error=None, incident=None, duration=900, **kw):
        sport = self.rng.randrange(32768, 60999)
        attrs = {"family": "ipv4", "saddr": pod.ip, "sport": sport, "daddr": daddr, "dport": dport,
                 "duration_us": duration}
        severity = "info"
        if kind == "net.tcp.connect":
            attrs.update(old_state="SYN_SENT", new_state="ESTABLISHED")
            message = f"{pod.comm} connected {pod.ip}:{sport} -> {daddr}:{dport}"
        elif kind == "net.tcp.close":
            attrs.update(old_state="FIN_WAIT1", new_state="CLOSE")
            message = f"{pod.comm} closed {pod.ip}:{sport} <-> {daddr}:{dport}"
        else:
            attrs.update(old_state="SYN_SENT", new_state="CLOSE", error=error)
            severity = "warning"
            message = f"{pod.comm} could not connect {pod.ip}:{sport} -> {daddr}:{dport}: {error}"
        return self.kernel(when, kind, "network", pod, attrs, severity, message, incident=incident, **kw)

    def accept(self, when, server_ip, port, client_ip, pod=None, pid=0, comm="", unit=None, **kw):
        cport = self.rng.randrange(32768, 60999)
        attrs = {"family": "ipv4", "saddr": server_ip, "sport": port, "daddr": client_ip,
                 "dport": cport, "duration_us": 0}
        message = f"{comm or pod.comm} accepted {client_ip}:{cport} on {server_ip}:{port}"
        return self.kernel(when, "net.tcp.accept", "network", pod, attrs, "info", message,
                           pid=pid or None, comm=comm or None, unit=unit, **kw)

    def lookup(self, when, pod, name, rcode="NOERROR", latency_us=900, incident=None, answer_at=None):
        txid = self.rng.randrange(65536)
        client = f"{pod.ip}:{self.rng.randrange(32768, 60999)}"
        base = {"query_name": name, "query_type": "A", "transaction_id": txid, "server": DNS_IP,
                "client": client}
        self.kernel(when, "dns.query", "dns", pod, dict(base), "info", f"A {name} asked {DNS_IP}:53",
                    incident=incident)
        answered = answer_at if answer_at is not None else when + latency_us * 1000
        severity = "warning" if rcode in ("SERVFAIL", "NXDOMAIN") else "info"
        attrs = {**base, "rcode": rcode, "answers": 1 if rcode == "NOERROR" else 0,
                 "latency_us": (answered - when) // 1000}
        return self.kernel(answered, "dns.response", "dns", pod, attrs, severity, f"A {name} -> {rcode}",
                           incident=incident)

    def exec_exit(self, when, pod, path, code=0):
        pid = self.rng.randrange(30000, 90000)
        comm = os.path.basename(path)[:15]
        self.kernel(when, "process.exec", "kernel", pod,
                    {"ppid": pod.pid, "uid": 1000, "filename": path, "args": path},
                    "info", f"{comm} executed {path}", pid=pid, comm=comm)
        end = when + self.rng.randrange(5, 400) * MS
        self.kernel(end, "process.exit", "kernel", pod, {"ppid": pod.pid, "exit_code": code, "signal": 0},
                    "info", f"{comm} exited with code {code}", pid=pid, comm=comm)

    def process_exit(self, when, pod, code=0, signal=0, incident=None, root=False, pid=None, comm=None,
                     unit=None, **kw):
        severity = "warning" if signal else "info"
        who = comm or (pod.comm if pod else "")
        message = f"{who} was killed by signal {signal}" if signal else f"{who} exited with code {code}"
        return self.kernel(when, "process.exit", "kernel", pod,
                           {"ppid": 1, "exit_code": code, "signal": signal}, severity, message,
                           pid=pid, comm=comm, unit=unit, incident=incident, root=root, **kw)

    def syscall_error(self, when, pod, syscall, errno, count, arrive, incident=None, root=False,
                      pid=None):
        pid = pid or pod.pid
        attrs = {"syscall": syscall, "errno": errno, "count": count,
                 "first_seen_unix_nano": when - self.rng.randrange(1, 50) * MS}
        return self.kernel(when, "syscall.error", "syscall-errors", pod, attrs, "info",
                           f"{pod.comm} (pid {pid}): {syscall} failed with {errno} {count} times",
                           pid=pid, arrive=arrive, incident=incident, root=root)

    def oom(self, when, pod, incident=None, root=False, limit_mib=512):
        # The OOM killer's own SIGKILL, as runtime-signals reports it: sent a moment before
        # the victim is marked, from the kernel, in the allocating (here: the victim's)
        # context.
        self.signal(when - 2000, pod, 9, "SIGKILL", pod.pid, pod.comm, sender_pod=pod,
                    incident=incident, from_kernel=True)
        rss = (limit_mib - 6) << 20
        attrs = {"victim_pid": pod.pid, "uid": 1000, "total_vm_bytes": rss * 3,
                 "anon_rss_bytes": rss, "file_rss_bytes": 3 << 20, "shmem_rss_bytes": 0,
                 "oom_score_adj": 985, "killer_pid": pod.pid, "killer_comm": pod.comm}
        return self.kernel(when, "memory.oom_kill", "memory", pod, attrs, "critical",
                           f"OOM killer killed {pod.comm} (pid {pod.pid}) using {rss >> 20} MiB",
                           incident=incident, root=root)

    def container_exit(self, when, pod, code, reason, arrive, incident=None, root=False):
        severity = "error" if code else "info"
        return self.kubeapi(when, "container.exit", pod,
                            {"container": pod.container, "exit_code": code, "reason": reason},
                            severity,
                            f"container {pod.container} of {pod.ns}/{pod.name} exited with {code} ({reason})",
                            container_id=pod.container_id, arrive=arrive, incident=incident, root=root)

    def restart(self, when, pod, code, reason, incident=None):
        pod.new_container(self.rng)
        return self.kubeapi(when, "k8s.pod.restart", pod,
                            {"container": pod.container, "restart_count": pod.restarts,
                             "reason": reason, "exit_code": code}, "warning",
                            f"container {pod.container} of {pod.ns}/{pod.name} restarted "
                            f"({pod.restarts} restarts, last: {reason} {code})",
                            container_id=pod.container_id, incident=incident)

    def crash(self, when, pod, code, reason, incident, root_event=None, backoff=True):
        """A container that died at `when`: the kubelet restarts it ~1 s later, reporting
        the exit with the restart; then it backs off."""
        arrive = when + self.rng.randrange(700, 1500) * MS
        exit_event = self.container_exit(when, pod, code, reason, arrive - 1, incident=incident,
                                         root=root_event == "exit")
        self.restart(arrive, pod, code, reason, incident=incident)
        if backoff:
            self.kubeapi(arrive + 10 * SEC, "k8s.pod.backoff", pod,
                         {"container": pod.container, "reason": "CrashLoopBackOff"}, "warning",
                         f"container {pod.container} of {pod.ns}/{pod.name} is waiting: CrashLoopBackOff",
                         container_id=pod.container_id, incident=incident)
        return exit_event

    def pod_state(self, when, kind, pod, incident=None, root=False, **kw):
        severity = "warning" if kind == "k8s.pod.not_ready" else "info"
        word = "not ready" if kind == "k8s.pod.not_ready" else "ready"
        return self.kubeapi(when, kind, pod, {}, severity, f"{pod.ns}/{pod.name} is {word}",
                            incident=incident, root=root, **kw)

    def journal(self, when, unit, pid, comm, priority, message, incident=None, root=False, **kw):
        kind = "journal.unit_error" if priority <= 3 else "journal.entry"
        severity = {0: "critical", 1: "critical", 2: "critical", 3: "error", 4: "warning",
                    5: "info", 6: "info", 7: "debug"}[priority]
        attrs = {"PRIORITY": str(priority), "SYSLOG_IDENTIFIER": comm, "_PID": str(pid),
                 "_COMM": comm, "_SYSTEMD_UNIT": unit}
        return self.emit(when, kind, "journald", severity, message,
                         {"pid": pid, "comm": comm, "unit": unit}, attrs,
                         incident=incident, root=root, **kw)

    def unit(self, when, kind, unit, pid=0, incident=None, root=False, result=None, **extra):
        states = {"systemd.unit.failed": ("failed", "failed", "error"),
                  "systemd.unit.started": ("active", "running", "info"),
                  "systemd.unit.restarted": ("activating", "auto-restart", "warning"),
                  "systemd.unit.stopped": ("inactive", "dead", "info")}
        active, sub, severity = states[kind]
        attrs = {"unit_type": unit.rsplit(".", 1)[1], "active_state": active, "sub_state": sub}
        if kind != "systemd.unit.restarted":
            attrs["previous_state"] = "active" if kind != "systemd.unit.started" else "activating"
        if result:
            attrs["result"] = result
        attrs.update(extra)
        entities = {"unit": unit}
        if pid:
            entities["pid"] = pid
        verb = {"systemd.unit.failed": "failed", "systemd.unit.started": "started",
                "systemd.unit.restarted": "restarted", "systemd.unit.stopped": "stopped"}[kind]
        return self.emit(when, kind, "systemd", severity, f"{unit} {verb}", entities, attrs,
                         incident=incident, root=root)

    def node_condition(self, when, kind, condition, status, previous, incident=None, root=False):
        severity = {"k8s.node.not_ready": "critical", "k8s.node.pressure": "warning",
                    "k8s.node.ready": "info", "k8s.node.pressure_relieved": "info"}[kind]
        return self.node(when, kind, {"condition": condition, "status": status,
                                      "previous_status": previous}, severity,
                         f"node {NODE} is {condition}={status}", incident=incident, root=root)

    def evicted(self, when, pod, incident=None):
        return self.kubeapi(when, "k8s.pod.evicted", pod, {"reason": "Evicted"}, "warning",
                            f"{pod.ns}/{pod.name} was evicted: The node was low on resource",
                            incident=incident)

    # The newer kernel and cgroup collectors.

    def signal(self, when, pod, number, name, sender_pid, sender_comm, sender_pod=None,
               incident=None, root=False, from_kernel=False):
        # si_code: SI_KERNEL (0x80) for the kernel's own, SI_USER (0) for kill(2).
        attrs = {"signal": number, "signal_name": name, "code": 128 if from_kernel else 0,
                 "from_kernel": from_kernel,
                 "sender_pid": sender_pid, "sender_comm": sender_comm,
                 "sender_cgroup_id": sender_pod.cgroup if sender_pod else 1}
        if sender_pod:
            attrs["sender_container_id"] = sender_pod.container_id
        severity = "info" if name == "SIGTERM" else "warning"
        sender = "the kernel" if from_kernel else f"{sender_comm} (pid {sender_pid})"
        return self.kernel(when, "process.signal", "runtime-signals", pod, attrs, severity,
                           f"{sender} sent {name} to {pod.comm} (pid {pod.pid})",
                           incident=incident, root=root)

    def cgroup_event(self, when, kind, source, pod, attributes, severity, message, **kw):
        """An event about a pod's container cgroup: no process."""
        entities = {"container_id": pod.container_id, "pod_uid": pod.uid}
        return self.emit(when, kind, source, severity, message, entities, attributes, **kw)

    def growth(self, when, pod, per_minute_mib, usage_mib, limit_mib, incident=None, root=False):
        path = f"/kubepods.slice/kubepods-pod{pod.uid.replace('-', '_')}.slice/cri-containerd-{pod.container_id}.scope"
        per_minute = per_minute_mib << 20
        to_limit = (limit_mib - usage_mib) * 60 // per_minute_mib
        attrs = {"cgroup": path, "growth_bytes_per_minute": per_minute, "r_squared": 0.97,
                 "anon_bytes": (usage_mib - 8) << 20, "usage_bytes": usage_mib << 20,
                 "window_seconds": 600, "limit_bytes": limit_mib << 20, "seconds_to_limit": to_limit}
        return self.cgroup_event(when, "memory.growth", "memory-leak-hunter", pod, attrs, "warning",
                                 f"container {pod.container_id[:12]}: memory grows {per_minute_mib} MiB/min "
                                 f"(R² 0.97); its limit is {to_limit} s away",
                                 incident=incident, root=root)

    def throttled(self, when, pod, ratio, arrive, kind="cpu.throttled", incident=None, root=False):
        path = f"/kubepods.slice/kubepods-pod{pod.uid.replace('-', '_')}.slice/cri-containerd-{pod.container_id}.scope"
        attrs = {"cgroup": path, "throttled_ratio": ratio, "throttled_periods": int(ratio * 100),
                 "periods": 100, "throttled_ms": int(ratio * 6000), "quota_us": 20000,
                 "period_us": 100000}
        if kind == "cpu.throttled":
            severity = "warning"
            message = (f"container {pod.container_id[:12]} was throttled in {int(ratio * 100)}% of its "
                       f"CPU periods ({int(ratio * 6000)} ms refused, limit 20000 µs per 100000 µs)")
        else:
            severity = "info"
            message = f"container {pod.container_id[:12]} is no longer throttled"
        return self.cgroup_event(when, kind, "resource-starvation", pod, attrs, severity, message,
                                 arrive=arrive, incident=incident, root=root)

    def block(self, when, kind, device, op, p99_us, arrive, incident=None, root=False):
        attrs = {"device": device, "op": op, "p50_us": 512, "p99_us": p99_us, "p999_us": p99_us,
                 "max_us": p99_us * 2, "requests": 1800, "bytes": 1800 * 16384,
                 "threshold_us": 100000}
        if kind == "block.latency_spike":
            severity = "warning"
            message = f"{device} {op} latency p99 {p99_us} µs over 100000 µs (1800 requests)"
        else:
            severity = "info"
            message = f"{device} {op} latency back under 100000 µs"
        return self.emit(when, kind, "storage-io", severity, message, {}, attrs, arrive=arrive,
                         incident=incident, root=root)

    def slow_fsync(self, when, pid, comm, unit, ms, incident=None, root=False):
        attrs = {"device": "vda", "inode": 131075, "datasync": True, "duration_us": ms * 1000,
                 "result": 0}
        return self.emit(when, "fs.slow_fsync", "storage-io", "warning",
                         f"{comm} (pid {pid}) waited {ms} ms for fdatasync of inode 131075 on vda",
                         {"pid": pid, "comm": comm, "cgroup_id": 4242, "unit": unit}, attrs,
                         incident=incident, root=root)

    def pressure(self, when, kind, resource, avg10, arrive, incident=None, root=False):
        attrs = {"resource": resource, "some_avg10": avg10, "some_avg60": round(avg10 / 2, 2),
                 "full_avg10": round(avg10 / 3, 2), "threshold": 20.0}
        if kind == "pressure.high":
            severity = "warning"
            message = f"{resource} pressure: some task stalled {avg10:.1f}% of the last 10 s"
        else:
            severity = "info"
            message = f"{resource} pressure back under 20%"
        return self.emit(when, kind, "resource-starvation", severity, message, {}, attrs,
                         arrive=arrive, incident=incident, root=root)

    def write(self):
        self.out.sort(key=lambda t: (t[0], t[1]))
        with open(os.path.join(OUT, f"{self.name}.jsonl"), "w") as f:
            for _, _, event in self.out:
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
        truth = [{"incident": name, **entry} for name, entry in sorted(self.truth.items())]
        for entry in truth:
            assert "root" in entry, entry["incident"]
        with open(os.path.join(OUT, f"{self.name}.truth.json"), "w") as f:
            json.dump(truth, f, indent=1)
            f.write("\n")
        return len(self.out), sum(len(t["events"]) for t in truth)


def cluster(rng):
    pods = [
        Pod(rng, 0, "payments", "Deployment", "checkout", "java", "checkout", "checkout", 8080),
        Pod(rng, 1, "payments", "Deployment", "checkout", "java", "checkout", "checkout", 8080),
        Pod(rng, 2, "payments", "Deployment", "ledger", "ledger", "ledger", "ledger", 8080),
        Pod(rng, 3, "default", "Deployment", "frontend", "node", "frontend", "frontend", 3000),
        Pod(rng, 4, "data", "StatefulSet", "postgres", "postgres", "postgres", "postgres", 5432),
        Pod(rng, 5, "cache", "Deployment", "redis", "redis-server", "redis", "redis", 6379),
        Pod(rng, 6, "kube-system", "Deployment", "coredns", "coredns", "coredns", "kube-dns", 53,
            labels={"k8s-app": "kube-dns"}),
        Pod(rng, 7, "batch", "Job", "report-nightly", "python3", "report"),
        Pod(rng, 8, "monitoring", "DaemonSet", "node-exporter", "node_exporter", "node-exporter",
            "node-exporter", 9100),
        Pod(rng, 9, "default", "Deployment", "search", "java", "search", "search", 9200),
    ]
    return pods


def background(w, pods, seconds, per_second=0.7):
    """Routine traffic, plus unrelated warnings now and then."""
    rng = w.rng
    apps = [p for p in pods if p.workload != "coredns"]
    servers = [p for p in pods if p.service and p.workload != "coredns"]
    t = 0.0
    while t < seconds:
        t += rng.expovariate(per_second)
        when = w.at(t)
        pod = rng.choice(apps)
        r = rng.random()
        if r < 0.25:
            server = rng.choice(servers)
            w.tcp(when, "net.tcp.connect", pod, server.ip, server.port)
            w.accept(when + 200_000, server.ip, server.port, pod.ip, pod=server)
        elif r < 0.35:
            server = rng.choice(servers)
            w.tcp(when, "net.tcp.close", pod, server.ip, server.port, duration=rng.randrange(10**6, 10**8))
        elif r < 0.58:
            target = rng.choice(pods)
            name = f"{target.service or target.workload}.{target.ns}.svc.cluster.local"
            w.lookup(when, pod, name, latency_us=rng.randrange(200, 5000))
        elif r < 0.72:
            w.exec_exit(when, pod, rng.choice(["/bin/sh", "/usr/bin/curl", "/bin/date"]))
        elif r < 0.80:
            w.syscall_error(when, pod, rng.choice(["openat", "newfstatat", "access"]), "ENOENT",
                            rng.randrange(1, 40), arrive=when + rng.randrange(1, 10) * SEC,
                            pid=pod.pid + rng.randrange(1, 5))
        elif r < 0.88:
            w.journal(when, "kubelet.service", 811, "kubelet", 6, "Volume already mounted")
        elif r < 0.91:
            # The host's postgres takes connections from pods.
            w.accept(when, NODE_IP, 5432, pod.ip, pid=1300, comm="postgres", unit="postgresql.service")
        elif r < 0.93:
            w.journal(when, "containerd.service", 612, "containerd", 4,
                      "failed to reserve sandbox name, retrying")
        elif r < 0.94:
            # The kubelet (a host process) talks to the API server.
            sport = rng.randrange(32768, 60999)
            w.kernel(when, "net.tcp.connect", "network", None,
                     {"family": "ipv4", "saddr": NODE_IP, "sport": sport, "daddr": "10.0.1.1",
                      "dport": 6443, "duration_us": 400, "old_state": "SYN_SENT",
                      "new_state": "ESTABLISHED"}, "info",
                     f"kubelet connected {NODE_IP}:{sport} -> 10.0.1.1:6443", pid=811, comm="kubelet",
                     unit="kubelet.service")
        # Unrelated warnings.
        elif r < 0.955:
            w.lookup(when, pod, "chekcout.payments.svc.cluster.local", rcode="NXDOMAIN")
        elif r < 0.97:
            w.tcp(when, "net.tcp.connect_failed", pod, "203.0.113.%d" % rng.randrange(2, 250), 443,
                  error="ECONNREFUSED")
        elif r < 0.98:
            # A unit restarting on its own.
            w.journal(when, "fluent-bit.service", 944, "fluent-bit", 3, "output error, flushing")
            w.unit(when + 400 * MS, "systemd.unit.restarted", "fluent-bit.service",
                   n_restarts=rng.randrange(1, 9))
        else:
            w.kubeapi(when, "k8s.event", pod, {"reason": "Unhealthy", "count": 1,
                                                  "involved_kind": "Pod", "source": "kubelet"},
                      "warning", f"Pod {pod.ns}/{pod.name}: Unhealthy: Readiness probe failed")


def file_pods(w):
    pods = cluster(random.Random(7 + 1000 * OFFSET))
    # Every pod was seen ready at start: its IP and service are known.
    for i, pod in enumerate(pods):
        w.pod_state(w.at(0.1 * i), "k8s.pod.ready", pod)
    return {p.workload + ("-%d" % i if p.workload == "checkout" else ""): p
            for i, p in enumerate(pods)}


def corpus_a():
    w = Writer("a-pods", 11, 1_790_000_000)
    p = file_pods(w)
    background(w, list(p.values()), 600)
    # 1. OOM cascade on checkout-0.
    i = ("oom-checkout", "oom cascade")
    t = w.at(40)
    pod = p["checkout-0"]
    w.oom(t, pod, i, root=True)
    w.process_exit(t + 2 * MS, pod, signal=9, incident=i)
    w.pod_state(t + 600 * MS, "k8s.pod.not_ready", pod, i)
    w.crash(t + 5 * MS, pod, 137, "OOMKilled", i)
    # 2. A crash loop: the config file is missing (reported at the next interval).
    i = ("crashloop-ledger", "missing file, late cause")
    pod = p["ledger"]
    for n, start in enumerate([100, 111.5, 133]):
        t = w.at(start)
        w.syscall_error(t - 3 * MS, pod, "openat", "ENOENT", 1, arrive=w.at(start + 9), incident=i,
                        root=n == 0)
        w.process_exit(t, pod, code=1, incident=i)
        w.crash(t + 1 * MS, pod, 1, "Error", i, backoff=n < 2)
    # 3. The cluster DNS crashes: clients' lookups fail, a TCP fallback times out.
    i = ("dns-crash", "infrastructure pod seen in its clients")
    dns = p["coredns"]
    t = w.at(200)
    w.pod_state(t + 300 * MS, "k8s.pod.not_ready", dns, i)
    for k, client in enumerate([p["frontend"], p["checkout-1"], p["search"]]):
        w.lookup(t + (1 + k) * SEC, client, "redis.cache.svc.cluster.local", rcode="SERVFAIL",
                 incident=i, answer_at=t + (3 + k) * SEC)
    w.tcp(t + 6 * SEC, "net.tcp.connect_failed", p["frontend"], DNS_IP, 53, error="ETIMEDOUT",
          incident=i, duration=3_000_000)
    w.crash(t, dns, 1, "Error", i, root_event="exit", backoff=False)
    # 4. postgres (a pod) is OOM-killed; its clients are refused.
    i = ("postgres-oom", "server pod seen in its clients")
    db = p["postgres"]
    t = w.at(300)
    w.oom(t, db, i, root=True, limit_mib=1024)
    w.process_exit(t + 3 * MS, db, signal=9, incident=i)
    for k, client in enumerate([p["checkout-0"], p["ledger"], p["checkout-1"]]):
        w.tcp(t + (2 + k) * SEC, "net.tcp.connect_failed", client, db.ip, 5432, error="ECONNREFUSED",
              incident=i)
    w.crash(t + 4 * MS, db, 137, "OOMKilled", i, backoff=False)
    # 5 and 6. Two unrelated incidents at the same moment: redis crashes (its clients
    # refused), and checkout-1 is OOM-killed.
    i = ("redis-crash", "server pod seen in its clients, with another incident at once")
    redis = p["redis"]
    t = w.at(420)
    w.process_exit(t, redis, code=1, incident=i, root=True)
    w.tcp(t + 1 * SEC, "net.tcp.connect_failed", p["search"], redis.ip, 6379, error="ECONNREFUSED",
          incident=i)
    w.tcp(t + 1500 * MS, "net.tcp.connect_failed", p["frontend"], redis.ip, 6379,
          error="ECONNREFUSED", incident=i)
    w.crash(t + 2 * MS, redis, 1, "Error", i)
    i = ("oom-checkout-1", "oom cascade at the same moment as another")
    pod = p["checkout-1"]
    w.oom(t + 300 * MS, pod, i, root=True)
    w.process_exit(t + 302 * MS, pod, signal=9, incident=i)
    w.crash(t + 305 * MS, pod, 137, "OOMKilled", i)
    # 7. A crash loop that starts with an exit code and no syscall error.
    i = ("crashloop-search", "crash loop")
    pod = p["search"]
    for n, start in enumerate([520, 531, 552]):
        t = w.at(start)
        w.process_exit(t, pod, code=2, incident=i, root=n == 0)
        w.crash(t + 1 * MS, pod, 2, "Error", i, backoff=n < 2)
    return w


def corpus_b():
    w = Writer("b-node", 12, 1_790_010_000)
    p = file_pods(w)
    pods = list(p.values())
    background(w, pods, 900)
    # 8. containerd fails: the node goes NotReady, its pods not ready.
    i = ("containerd-failure", "node agent failure")
    t = w.at(60)
    w.journal(t, "containerd.service", 612, "containerd", 3,
              "failed to write snapshot: context deadline exceeded", i, root=True)
    w.journal(t + 2 * SEC, "containerd.service", 612, "containerd", 2, "shim disconnected", i)
    w.process_exit(t + 4 * SEC, None, signal=6, pid=612, comm="containerd", unit="containerd.service",
                   incident=i)
    w.unit(t + 4100 * MS, "systemd.unit.failed", "containerd.service", pid=612, incident=i,
           result="signal", n_restarts=0, exit_code="killed", exit_status=6)
    w.node_condition(t + 40 * SEC, "k8s.node.not_ready", "Ready", "False", "True", i)
    for k, pod in enumerate([p["frontend"], p["ledger"], p["search"]]):
        w.pod_state(t + (45 + k) * SEC, "k8s.pod.not_ready", pod, i)
    # It comes back: the unit, the node, the pods.
    w.unit(t + 70 * SEC, "systemd.unit.started", "containerd.service", pid=2612, incident=i)
    w.node_condition(t + 80 * SEC, "k8s.node.ready", "Ready", "True", "False", i)
    for k, pod in enumerate([p["frontend"], p["ledger"]]):
        w.pod_state(t + (90 + k) * SEC, "k8s.pod.ready", pod, i)
    # 9. Memory pressure: the kubelet sees it first, then the API; pods evicted.
    i = ("memory-pressure", "node condition and its pods")
    t = w.at(300)
    w.node(t, "kubelet.node.pressure", {"resource": "memory", "ratio": 0.93, "limit_ratio": 0.9},
           "warning", "node memory under pressure: 93% in use", source="kubelet", incident=i, root=True)
    w.node_condition(t + 8 * SEC, "k8s.node.pressure", "MemoryPressure", "True", "False", i)
    for k, pod in enumerate([p["report-nightly"], p["search"]]):
        w.evicted(t + (20 + k) * SEC, pod, i)
    w.node(t + 60 * SEC, "kubelet.node.pressure_relieved",
           {"resource": "memory", "ratio": 0.71, "limit_ratio": 0.9}, "info",
           "node memory no longer under pressure: 71% in use", source="kubelet", incident=i)
    w.node_condition(t + 70 * SEC, "k8s.node.pressure_relieved", "MemoryPressure", "False", "True", i)
    # 10. The host's postgres (a systemd unit) fails; pods are refused on its port.
    i = ("host-postgres", "host unit seen in pods")
    t = w.at(450)
    w.journal(t, "postgresql.service", 1300, "postgres", 2,
              "PANIC: could not write to file \"pg_wal/xlogtemp.1300\": No space left on device",
              i, root=True)
    w.process_exit(t + 200 * MS, None, signal=6, pid=1300, comm="postgres", unit="postgresql.service",
                   incident=i)
    w.unit(t + 300 * MS, "systemd.unit.failed", "postgresql.service", pid=1300, incident=i,
           result="core-dump", n_restarts=0, exit_code="dumped", exit_status=6)
    for k, pod in enumerate([p["checkout-0"], p["ledger"], p["checkout-1"]]):
        w.tcp(t + (1 + k) * SEC, "net.tcp.connect_failed", pod, NODE_IP, 5432, error="ECONNREFUSED",
              incident=i)
    w.tcp(t + 5 * SEC, "net.tcp.connect_failed", p["ledger"], NODE_IP, 5432, error="ECONNREFUSED",
          incident=i)
    # 11. Disk pressure: evictions.
    i = ("disk-pressure", "node condition and its pods")
    t = w.at(650)
    w.node_condition(t, "k8s.node.pressure", "DiskPressure", "True", "False", i, root=True)
    for k, pod in enumerate([p["report-nightly"], p["frontend"], p["node-exporter"]]):
        w.evicted(t + (30 + k * 2) * SEC, pod, i)
    # 12. kubelet dies: node NotReady, pods not ready.
    i = ("kubelet-failure", "node agent failure")
    t = w.at(800)
    w.process_exit(t, None, signal=9, pid=811, comm="kubelet", unit="kubelet.service", incident=i,
                   root=True)
    w.unit(t + 100 * MS, "systemd.unit.failed", "kubelet.service", pid=811, incident=i,
           result="signal", n_restarts=0, exit_code="killed", exit_status=9)
    w.node_condition(t + 41 * SEC, "k8s.node.not_ready", "Ready", "Unknown", "True", i)
    for k, pod in enumerate([p["checkout-0"], p["redis"]]):
        w.pod_state(t + (42 + k) * SEC, "k8s.pod.not_ready", pod, i)
    return w


def corpus_c():
    w = Writer("c-mixed", 13, 1_790_020_000)
    p = file_pods(w)
    pods = list(p.values())
    background(w, pods, 800)
    # 13. etcd: slow fsync, the leader changes, proposals fail.
    i = ("etcd-slow-disk", "etcd")
    t = w.at(50)
    ep = {"endpoint": "https://127.0.0.1:2379"}
    w.node(t, "etcd.slow_fsync", {**ep, "p99_seconds": 0.512, "limit_seconds": 0.1}, "warning",
           "WAL fsync p99 up to 512 ms", source="etcd-metrics", incident=i, root=True)
    w.node(t + 15 * SEC, "etcd.leader_changed", {**ep, "leader_changes": 1.0}, "warning",
           "the leader changed 1 time(s)", source="etcd-metrics", incident=i)
    w.node(t + 15 * SEC + 1, "etcd.proposals_failed", {**ep, "proposals_failed": 3.0}, "warning",
           "3 proposal(s) failed", source="etcd-metrics", incident=i)
    # 14. A unit that keeps restarting after errors.
    i = ("worker-restarts", "unit restart loop")
    t = w.at(150)
    for k in range(3):
        w.journal(t + k * 20 * SEC, "queue-worker.service", 1500 + k, "queue-worker", 3,
                  "fatal: cannot connect to broker", i, root=k == 0)
        w.process_exit(t + k * 20 * SEC + 100 * MS, None, code=1, pid=1500 + k, comm="queue-worker",
                       unit="queue-worker.service", incident=i)
        w.unit(t + k * 20 * SEC + 5 * SEC, "systemd.unit.restarted", "queue-worker.service",
               incident=i, n_restarts=k + 1)
    # 15. The pod's memory nears its limit (kubelet poll), then it is OOM-killed.
    i = ("near-limit-oom", "memory limit approached, then OOM")
    pod = p["report-nightly"]
    t = w.at(250)
    w.emit(t, "kubelet.pod.memory_near_limit", "kubelet", "warning",
           f"{pod.ns}/{pod.name} uses 93% of its memory limit",
           {"pod_uid": pod.uid, "pod_namespace": pod.ns, "pod_name": pod.name},
           {"memory_working_set_bytes": 999292928.0, "memory_limit_bytes": 1073741824.0,
            "ratio": 0.93}, incident=i, root=True)
    w.oom(t + 70 * SEC, pod, i, limit_mib=1024)
    w.process_exit(t + 70 * SEC + 2 * MS, pod, signal=9, incident=i)
    w.crash(t + 70 * SEC + 4 * MS, pod, 137, "OOMKilled", i, backoff=False)
    # 16. OOM kills spreading through a workload under one limit.
    i = ("oom-spread", "oom in two pods of one workload")
    t = w.at(400)
    w.oom(t, p["checkout-0"], i, root=True)
    w.process_exit(t + 2 * MS, p["checkout-0"], signal=9, incident=i)
    w.crash(t + 5 * MS, p["checkout-0"], 137, "OOMKilled", i, backoff=False)
    w.oom(t + 50 * SEC, p["checkout-1"], i)
    w.process_exit(t + 50 * SEC + 2 * MS, p["checkout-1"], signal=9, incident=i)
    w.crash(t + 50 * SEC + 5 * MS, p["checkout-1"], 137, "OOMKilled", i, backoff=False)
    # 17. The cluster DNS is OOM-killed: lookups fail in two pods.
    i = ("dns-oom", "infrastructure pod seen in its clients")
    dns = p["coredns"]
    t = w.at(560)
    w.oom(t, dns, i, root=True, limit_mib=170)
    w.process_exit(t + 2 * MS, dns, signal=9, incident=i)
    for k, client in enumerate([p["ledger"], p["frontend"]]):
        w.lookup(t + (1 + k) * SEC, client, "postgres.data.svc.cluster.local", rcode="SERVFAIL",
                 incident=i, answer_at=t + (3 + k) * SEC)
    w.crash(t + 4 * MS, dns, 137, "OOMKilled", i, backoff=False)
    # 18. The search pod is evicted for memory; its clients cannot connect.
    i = ("search-evicted", "server pod gone, seen in its clients")
    srv = p["search"]
    t = w.at(700)
    w.node_condition(t, "k8s.node.pressure", "MemoryPressure", "True", "False", i, root=True)
    w.evicted(t + 10 * SEC, srv, i)
    for k, client in enumerate([p["frontend"], p["checkout-1"]]):
        w.tcp(t + (12 + k) * SEC, "net.tcp.connect_failed", client, srv.ip, 9200,
              error="ECONNREFUSED", incident=i)
    return w


def corpus_d():
    w = Writer("d-late", 14, 1_790_030_000)
    p = file_pods(w)
    pods = list(p.values())
    background(w, pods, 700)
    # 19. A permission error, reported at the syscall collector's next interval.
    i = ("permission-denied", "late cause from an interval collector")
    pod = p["frontend"]
    t = w.at(60)
    w.syscall_error(t - 2 * MS, pod, "openat", "EACCES", 1, arrive=t + 8 * SEC, incident=i, root=True)
    w.process_exit(t, pod, code=13, incident=i)
    w.crash(t + 1 * MS, pod, 13, "Error", i)
    # 20. The kubelet's poll reports a restart before the API's watch: a late exit.
    i = ("kubelet-first", "late cause from the API after the kubelet's poll")
    pod = p["ledger"]
    t = w.at(200)
    w.emit(t + 800 * MS, "kubelet.container.restart", "kubelet", "warning",
           f"container {pod.container} of {pod.ns}/{pod.name} restarted (1 restarts, last: Error 1)",
           {"pod_uid": pod.uid, "pod_namespace": pod.ns, "pod_name": pod.name},
           {"container": pod.container, "restart_count": 1, "reason": "Error", "exit_code": 1},
           incident=i)
    w.crash(t, pod, 1, "Error", i, root_event="exit")
    # 21. An ENOSPC write failure kills redis, reported late; its clients are refused.
    i = ("redis-enospc", "late cause, then clients")
    redis = p["redis"]
    t = w.at(330)
    w.syscall_error(t - 5 * MS, redis, "write", "ENOSPC", 4, arrive=t + 9 * SEC, incident=i, root=True)
    w.process_exit(t, redis, code=1, incident=i)
    w.tcp(t + 2 * SEC, "net.tcp.connect_failed", p["checkout-0"], redis.ip, 6379, error="ECONNREFUSED",
          incident=i)
    w.crash(t + 2 * MS, redis, 1, "Error", i, backoff=False)
    # 22. etcd loses its leader: proposals fail.
    i = ("etcd-no-leader", "etcd")
    t = w.at(480)
    ep = {"endpoint": "https://127.0.0.1:2379"}
    w.node(t, "etcd.no_leader", ep, "critical", "the member has no leader", source="etcd-metrics",
           incident=i, root=True)
    w.node(t + 15 * SEC, "etcd.proposals_failed", {**ep, "proposals_failed": 12.0}, "warning",
           "12 proposal(s) failed", source="etcd-metrics", incident=i)
    # 24. A host unit no connection to was seen before fails; pods are refused on the
    # node's address.
    i = ("host-pgbouncer", "host unit, port not seen before")
    t = w.at(520)
    w.process_exit(t, None, code=1, pid=1700, comm="pgbouncer", unit="pgbouncer.service", incident=i,
                   root=True)
    w.unit(t + 100 * MS, "systemd.unit.failed", "pgbouncer.service", pid=1700, incident=i,
           result="exit-code", n_restarts=0, exit_code="exited", exit_status=1)
    for k, pod in enumerate([p["ledger"], p["checkout-0"]]):
        w.tcp(t + (2 + k) * SEC, "net.tcp.connect_failed", pod, NODE_IP, 6432, error="ECONNREFUSED",
              incident=i)
    # 25. A new version's image cannot be pulled.
    i = ("image-pull", "a pod that cannot start")
    pod = p["node-exporter"]
    t = w.at(560)
    w.kubeapi(t, "k8s.event", pod, {"reason": "Failed", "count": 1, "involved_kind": "Pod",
                                    "source": "kubelet"}, "warning",
              f"Pod {pod.ns}/{pod.name}: Failed: Failed to pull image: not found", incident=i)
    w.kubeapi(t + 200 * MS, "k8s.pod.image_pull_backoff", pod,
              {"container": pod.container, "reason": "ErrImagePull"}, "warning",
              f"container {pod.container} of {pod.ns}/{pod.name} is waiting: ErrImagePull",
              incident=i, root=True)
    w.kubeapi(t + 15 * SEC, "k8s.event", pod, {"reason": "BackOff", "count": 3, "involved_kind": "Pod",
                                               "source": "kubelet"}, "warning",
              f"Pod {pod.ns}/{pod.name}: BackOff: Back-off pulling image", incident=i)
    # 23. A crash loop with its second round's cause late as well.
    i = ("crashloop-checkout", "missing file, late cause, two rounds")
    pod = p["checkout-1"]
    for n, start in enumerate([600, 612]):
        t = w.at(start)
        w.syscall_error(t - 2 * MS, pod, "openat", "ENOENT", 1, arrive=t + 9 * SEC, incident=i,
                        root=n == 0)
        w.process_exit(t, pod, code=1, incident=i)
        w.crash(t + 1 * MS, pod, 1, "Error", i, backoff=n == 0)
    return w


def corpus_e():
    """The classes the kernel and cgroup collectors of the second wave make observable."""
    w = Writer("e-kernel", 15, 1_790_040_000)
    p = file_pods(w)
    pods = list(p.values())
    background(w, pods, 2400, per_second=0.5)
    rng = w.rng
    # Routine: a rolling update stops pods with SIGTERM from the kubelet, and they exit 0.
    for k, start in enumerate([150, 1500]):
        pod = p["frontend"] if k == 0 else p["node-exporter"]
        t = w.at(start)
        w.signal(t, pod, 15, "SIGTERM", 811, "kubelet")
        w.process_exit(t + 300 * MS, pod, code=0)
        w.container_exit(t + 350 * MS, pod, 0, "Completed", arrive=t + 2 * SEC)
    # Routine: a short spike on the node's second disk during a backup, nothing follows.
    t = w.at(1300)
    w.block(t, "block.latency_spike", "vdb", "read", 131072, arrive=t + 10 * SEC)
    w.block(t + 10 * SEC, "block.latency_recovered", "vdb", "read", 2048, arrive=t + 20 * SEC)
    # 26. The disk under etcd turns slow: its fsyncs stall, then etcd reports them.
    i = ("slow-disk-etcd", "slow disk behind a failing database")
    t = w.at(300)
    w.block(t, "block.latency_spike", "vda", "write", 262144, arrive=t + 10 * SEC, incident=i,
            root=True)
    w.slow_fsync(t + 3 * SEC, 1200, "etcd", "etcd.service", 1800, incident=i)
    w.slow_fsync(t + 6 * SEC, 1200, "etcd", "etcd.service", 2400, incident=i)
    w.node(t + 15 * SEC, "etcd.slow_fsync", {"endpoint": "https://127.0.0.1:2379",
                                             "p99_seconds": 2.1, "limit_seconds": 0.5},
           "warning", "WAL fsync p99 2.1 s over 0.5 s", source="etcd-metrics", incident=i)
    w.block(t + 40 * SEC, "block.latency_recovered", "vda", "write", 4096, arrive=t + 50 * SEC)
    # 27. A CPU limit too tight: the readiness probe times out, the pod turns not ready.
    i = ("throttled-search", "CPU-throttled container")
    pod = p["search"]
    t = w.at(600)
    w.throttled(t, pod, 0.82, arrive=t + 10 * SEC, incident=i, root=True)
    w.kubeapi(t + 18 * SEC, "k8s.event", pod, {"reason": "Unhealthy", "count": 3,
                                               "involved_kind": "Pod", "source": "kubelet"},
              "warning", f"Pod {pod.ns}/{pod.name}: Unhealthy: Readiness probe failed: timeout",
              incident=i)
    w.pod_state(t + 20 * SEC, "k8s.pod.not_ready", pod, i)
    w.throttled(t + 90 * SEC, pod, 0.05, arrive=t + 100 * SEC, kind="cpu.throttled_ended")
    # 28. A sidecar in another pod kills the database's process with SIGKILL.
    i = ("sigkill-postgres", "a process killed by a signal from another")
    pod = p["postgres"]
    t = w.at(900)
    w.signal(t, pod, 9, "SIGKILL", p["report-nightly"].pid + 3, "pkill", sender_pod=p["report-nightly"],
             incident=i, root=True)
    w.process_exit(t + 2 * MS, pod, signal=9, incident=i)
    w.crash(t + 5 * MS, pod, 137, "Error", i, backoff=False)
    # 29. Memory that grows for minutes before the OOM kill.
    i = ("leak-ledger", "memory growth before an OOM")
    pod = p["ledger"]
    t = w.at(1100)
    w.growth(t, pod, 24, 330, 512, incident=i, root=True)
    t += 7 * 60 * SEC + rng.randrange(0, 30) * SEC
    w.oom(t, pod, i, limit_mib=512)
    w.process_exit(t + 2 * MS, pod, signal=9, incident=i)
    w.crash(t + 5 * MS, pod, 137, "OOMKilled", i, backoff=False)
    # 30. Memory pressure on the node: the kubelet sees it, then evicts pods.
    i = ("memory-pressure", "node memory pressure")
    t = w.at(1800)
    w.pressure(t, "pressure.high", "memory", 34.5, arrive=t + 10 * SEC, incident=i, root=True)
    w.emit(t + 12 * SEC, "kubelet.node.pressure", "kubelet", "warning",
           f"node {NODE} memory at 0.95 of capacity, over 0.90",
           {}, {"resource": "memory", "ratio": 0.95, "limit_ratio": 0.9}, incident=i)
    for k, name in enumerate(["report-nightly", "frontend"]):
        w.evicted(t + (20 + k) * SEC, p[name], incident=i)
    w.pressure(t + 120 * SEC, "pressure.relieved", "memory", 4.0, arrive=t + 130 * SEC)
    return w


def main():
    total_events = total_incident = incidents = 0
    for make in (corpus_a, corpus_b, corpus_c, corpus_d, corpus_e):
        w = make()
        events, incident_events = w.write()
        total_events += events
        total_incident += incident_events
        incidents += len(w.truth)
    background = total_events - total_incident
    print(f"{incidents} incidents, {total_incident} incident events, {background} background "
          f"({background / total_incident:.1f}x)")
    assert incidents >= 20 and background >= 10 * total_incident


if __name__ == "__main__":
    main()
