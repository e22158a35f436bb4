/* `syscall-errors` collector: failing syscalls from the sys_exit raw tracepoint, counted in the
 * kernel per (cgroup, process, syscall, errno); user space reads the counts every interval
 * and reports what changed, so the cost per syscall is one map update. */
#include "tapio.h"

#define MAX_ERRNO 4095
#define MAX_SYSCALL 1024

/* Set by the loader from the collector's options. */
const volatile __u8 only_listed_errnos = 0;
const volatile __u8 only_listed_syscalls = 0;

struct key {
	__u64 cgroup_id;
	__u32 pid;
	__u32 syscall;
	__u32 err;
	__u32 pad;
};

struct count {
	__u64 count;
	__u64 first_ktime;
	__u64 last_ktime;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct key);
	__type(value, struct count);
} counts SEC(".maps");

/* 1 = report (with only_listed_*) or ignore (errnos without it): see syscalls.rs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ERRNO + 1);
	__type(key, __u32);
	__type(value, __u8);
} errno_list SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SYSCALL);
	__type(key, __u32);
	__type(value, __u8);
} syscall_list SEC(".maps");

struct pt_regs {
	long orig_ax;
} __attribute__((preserve_access_index));

/* The BTF flavour of raw_syscalls:sys_exit (args: regs, ret): no perf record is built per
 * syscall, which is most of a classic tracepoint's cost on a syscall-heavy host. */
SEC("tp_btf/sys_exit")
int tapio_sys_exit(__u64 *ctx)
{
	__s64 ret = (__s64)ctx[1];
	if (ret >= 0 || ret < -MAX_ERRNO)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	__u32 err = (__u32)(-ret);
	__u32 syscall = (__u32)BPF_CORE_READ(regs, orig_ax);
	__u8 *listed = bpf_map_lookup_elem(&errno_list, &err);
	if (only_listed_errnos ? !(listed && *listed) : (listed && *listed))
		return 0;
	if (only_listed_syscalls) {
		listed = bpf_map_lookup_elem(&syscall_list, &syscall);
		if (!listed || !*listed)
			return 0;
	}
	struct key key = {
		.cgroup_id = bpf_get_current_cgroup_id(),
		.pid = bpf_get_current_pid_tgid() >> 32,
		.syscall = syscall,
		.err = err,
	};
	__u64 now = bpf_ktime_get_ns();
	struct count *c = bpf_map_lookup_elem(&counts, &key);
	if (c) {
		__sync_fetch_and_add(&c->count, 1);
		c->last_ktime = now;
		return 0;
	}
	struct count fresh = { .count = 1, .first_ktime = now, .last_ktime = now };
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	long inserted = bpf_map_update_elem(&counts, &key, &fresh, BPF_NOEXIST);
	if (inserted == 0)
		return 0;
	/* Another CPU inserted the key first: add to its count. */
	c = bpf_map_lookup_elem(&counts, &key);
	if (c)
		__sync_fetch_and_add(&c->count, 1);
	else
		count_lost(); /* the map is full */
	return 0;
}
