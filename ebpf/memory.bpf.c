/* `memory` collector: OOM kills, from the mark_victim BTF tracepoint, which hands over the
 * victim's task (the plain tracepoint runs in the killer's context and has no cgroup). */
#include "tapio.h"

#define NAME_LEN 128

/* memcg_name and memcg_parent name the victim's memory cgroup and its parent: on a
 * cgroup v1 host a killed process is back in the root of every hierarchy before user space
 * can read its /proc/PID/cgroup, so its container is named here, at the moment of the kill. */
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
	char memcg_name[NAME_LEN];
	char memcg_parent[NAME_LEN];
};

static __always_inline void read_memcg(struct task_struct *task, char *name, char *parent)
{
	name[0] = 0;
	parent[0] = 0;
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return;
	__u32 id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = 0;
	/* subsys[] is indexed by a value known only at load time, so by offset by hand. */
	void *slot = (void *)cset + bpf_core_field_offset(struct css_set, subsys) +
		     (__u64)id * sizeof(css);
	if (bpf_probe_read_kernel(&css, sizeof(css), slot) || !css)
		return;
	const char *leaf = BPF_CORE_READ(css, cgroup, kn, name);
	bpf_probe_read_kernel_str(name, NAME_LEN, leaf);
	struct cgroup_subsys_state *up = BPF_CORE_READ(css, parent);
	if (!up)
		return;
	const char *above = BPF_CORE_READ(up, cgroup, kn, name);
	bpf_probe_read_kernel_str(parent, NAME_LEN, above);
}

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
	read_memcg(victim, r->memcg_name, r->memcg_parent);
	bpf_ringbuf_submit(r, 0);
	return 0;
}
