/* `cri-ebpf` collector: container lifecycle without a CRI socket. The cgroup v2 mkdir and
 * rmdir tracepoints give a container's birth and end (its id is in the path), and
 * sched_process_exit keeps, for each container cgroup user space watches, how its last
 * process exited: the container's exit code. Cgroups are made and removed a few times per
 * container, so the records are few on any host. */
#include "tapio.h"

#define PATH_LEN 256
#define EXIT_UNKNOWN -1

struct last_exit {
	__s32 status; /* wait(2)'s status, or EXIT_UNKNOWN */
	__u32 pid;
};

/* Container cgroups being watched (user space adds them at mkdir), by cgroup id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct last_exit);
} exits SEC(".maps");

struct cgroup_record {
	struct header h; /* the task that made or removed the cgroup (runc, systemd, ...) */
	__u64 id;
	__s32 status;
	__u32 exit_pid;
	char path[PATH_LEN];
};

/* Layout of cgroup_mkdir's and cgroup_rmdir's records, from their format files. */
struct cgroup_ctx {
	__u64 common;
	__s32 root;
	__s32 level;
	__u64 id;
	__u32 path_loc; /* __data_loc: offset in the low 16 bits */
};

struct exit_ctx {
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;
};

static __always_inline int report(struct cgroup_ctx *ctx, __u32 kind)
{
	/* Hierarchy 0 is cgroup v2: a v1-hybrid host makes the same directory once per v1
	 * controller as well. */
	if (ctx->root != 0)
		return 0;
	struct cgroup_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, kind);
	r->id = ctx->id;
	r->status = EXIT_UNKNOWN;
	r->exit_pid = 0;
	if (kind == KIND_CGROUP_RMDIR) {
		__u64 id = ctx->id; /* a map key must be on the stack, not in the context */
		struct last_exit *seen = bpf_map_lookup_elem(&exits, &id);
		if (seen) {
			r->status = seen->status;
			r->exit_pid = seen->pid;
		}
	}
	bpf_probe_read_kernel_str(r->path, sizeof(r->path), (char *)ctx + (ctx->path_loc & 0xFFFF));
	bpf_ringbuf_submit(r, 0);
	return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int tapio_cgroup_mkdir(struct cgroup_ctx *ctx)
{
	return report(ctx, KIND_CGROUP_MKDIR);
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int tapio_cgroup_rmdir(struct cgroup_ctx *ctx)
{
	return report(ctx, KIND_CGROUP_RMDIR);
}

SEC("tracepoint/sched/sched_process_exit")
int tapio_container_exit(struct exit_ctx *ctx)
{
	if (!ctx->group_dead)
		return 0;
	__u64 cgroup = bpf_get_current_cgroup_id();
	struct last_exit *seen = bpf_map_lookup_elem(&exits, &cgroup);
	if (!seen)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	seen->status = BPF_CORE_READ(task, exit_code);
	seen->pid = bpf_get_current_pid_tgid() >> 32;
	return 0;
}
