/* `resource-starvation` collector: run-queue latency (from a task's wakeup, or its
 * preemption, until it runs) kept in the kernel as log2 histograms per cgroup, from the
 * sched_wakeup, sched_wakeup_new and sched_switch BTF tracepoints. User space reads the
 * histograms every interval; nothing is sent per context switch. */
#include "tapio.h"

#define TASK_RUNNING 0

/* Tasks waiting on a run queue, by thread id: when they were queued. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} queued SEC(".maps");

struct hist {
	__u64 slots[SLOTS];
	__u64 count;
	__u64 total_ns;
};

/* Running totals per cgroup id; user space reports what grew since its last read. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct hist);
} waits SEC(".maps");

static __always_inline void enqueue(struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	if (tid == 0)
		return; /* the idle task */
	__u64 now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&queued, &tid, &now, BPF_ANY) != 0)
		count_lost();
}

SEC("tp_btf/sched_wakeup")
int tapio_wakeup(__u64 *ctx)
{
	enqueue((struct task_struct *)ctx[0]);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int tapio_wakeup_new(__u64 *ctx)
{
	enqueue((struct task_struct *)ctx[0]);
	return 0;
}

SEC("tp_btf/sched_switch")
int tapio_switch(__u64 *ctx)
{
	/* (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state) */
	struct task_struct *prev = (struct task_struct *)ctx[1];
	struct task_struct *next = (struct task_struct *)ctx[2];
	/* A preempted task is still runnable: it waits on the run queue from now. */
	if ((unsigned int)ctx[3] == TASK_RUNNING)
		enqueue(prev);
	__u32 tid = BPF_CORE_READ(next, pid);
	__u64 *since = bpf_map_lookup_elem(&queued, &tid);
	if (!since)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 ns = now > *since ? now - *since : 0;
	bpf_map_delete_elem(&queued, &tid);
	__u64 cgroup = BPF_CORE_READ(next, cgroups, dfl_cgrp, kn, id);
	struct hist *h = bpf_map_lookup_elem(&waits, &cgroup);
	if (!h) {
		struct hist zero = {};
		bpf_map_update_elem(&waits, &cgroup, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&waits, &cgroup);
		if (!h) {
			count_lost();
			return 0;
		}
	}
	__u32 slot = slot_of(ns);
	if (slot < SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->total_ns, ns);
	return 0;
}
