/* `memory` collector: OOM kills, from the mark_victim BTF tracepoint, which hands over the
 * victim's task (the plain tracepoint runs in the killer's context and has no cgroup). */
#include "tapio.h"

struct oom_record {
	struct header h; /* the process that ran the OOM killer */
	__u32 victim_pid;
	__u32 victim_uid;
	__u64 victim_cgroup_id;
	char victim_comm[TASK_COMM_LEN];
	__u64 total_vm_pages;
	__s64 anon_pages;
	__s64 file_pages;
	__s64 shmem_pages;
	__s32 oom_score_adj;
	__u32 pad;
};

SEC("tp_btf/mark_victim")
int tapio_oom(__u64 *ctx)
{
	struct task_struct *victim = (struct task_struct *)ctx[0];
	struct oom_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_OOM_KILL);
	r->victim_pid = BPF_CORE_READ(victim, tgid);
	r->victim_uid = (__u32)ctx[1];
	r->victim_cgroup_id = BPF_CORE_READ(victim, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&r->victim_comm, victim, comm);
	struct mm_struct *mm = BPF_CORE_READ(victim, mm);
	r->total_vm_pages = BPF_CORE_READ(mm, total_vm);
	r->file_pages = BPF_CORE_READ(mm, rss_stat[0].count);
	r->anon_pages = BPF_CORE_READ(mm, rss_stat[1].count);
	r->shmem_pages = BPF_CORE_READ(mm, rss_stat[3].count);
	r->oom_score_adj = BPF_CORE_READ(victim, signal, oom_score_adj);
	r->pad = 0;
	bpf_ringbuf_submit(r, 0);
	return 0;
}
