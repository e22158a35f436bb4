/* Shared by every probe: the few kernel types the probes read, declared with
 * preserve_access_index so clang records CO-RE relocations and the loader fixes the
 * offsets against this kernel's BTF. Only the fields read are declared; the layout
 * here does not matter, the names do. */
#ifndef TAPIO_H
#define TAPIO_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define TASK_COMM_LEN 16

struct kernfs_node {
	__u64 id;
	const char *name;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));

/* Only the name matters: the loader sets the value from this kernel's BTF. */
enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

struct css_set {
	struct cgroup_subsys_state *subsys[1]; /* the length is the kernel's; read by offset */
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct percpu_counter {
	__s64 count;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	unsigned long total_vm;
	struct percpu_counter rss_stat[4]; /* MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES */
} __attribute__((preserve_access_index));

struct signal_struct {
	short oom_score_adj;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct file {
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	struct css_set *cgroups;
	struct signal_struct *signal;
	struct files_struct *files;
	char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

/* Every record starts with this header; `Header::read` in src/collectors/ebpf/mod.rs reads it. */
struct header {
	__u32 kind;
	__u32 pid;  /* thread group id: the process */
	__u32 tid;
	__u32 uid;
	__u64 ktime; /* CLOCK_MONOTONIC ns, mapped to wall time in user space */
	__u64 cgroup_id;
	char comm[TASK_COMM_LEN];
};

/* Every probe object has one ring buffer named `events` (its size set by the loader
 * from the collector's options) and one per-CPU count of records it had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1; /* per-CPU slot: no other writer */
}

static __always_inline void fill_header(struct header *h, __u32 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->ktime = bpf_ktime_get_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Latency histograms (storage.bpf.c, sched.bpf.c): log2 buckets of microseconds, [0, 2),
 * [2, 4), ... [2^23, inf); src/collectors/ebpf/histogram.rs reads them. */
#define SLOTS 24

static __always_inline __u32 slot_of(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 slot = 0;
	/* Unrolled: the verifier wants a bounded loop it can see. */
#pragma unroll
	for (int i = 1; i < SLOTS; i++)
		if (us >= (1ULL << i))
			slot = i;
	return slot;
}

/* Record kinds, one number space across all probes. */
#define KIND_EXEC 1
#define KIND_EXIT 2
#define KIND_TCP_CONNECT 10
#define KIND_TCP_ACCEPT 11
#define KIND_TCP_CLOSE 12
#define KIND_TCP_FAILED 13
#define KIND_OOM_KILL 30
#define KIND_SIGNAL 40
#define KIND_CORE_DUMP 41
#define KIND_IO_ERROR 50
#define KIND_SLOW_FSYNC 51
#define KIND_CGROUP_MKDIR 60
#define KIND_CGROUP_RMDIR 61

char LICENSE[] SEC("license") = "GPL";

#endif
