/* `runtime-signals` collector: signals the kernel delivered, from the signal_generate BTF
 * tracepoint (sender, target and who sent it), and core dumps from sched_process_exit.
 * Only the signals user space lists in `watched` leave the kernel, so a host busy with
 * SIGCHLD and SIGALRM produces no records. */
#include "tapio.h"

#define MAX_SIGNAL 64
#define TRACE_SIGNAL_DELIVERED 0
/* si_code of a signal the kernel sent itself: `SEND_SIG_PRIV` (the OOM killer) becomes
 * SI_KERNEL in the tracepoint's own record, and faults have a positive code. */
#define SI_KERNEL 0x80
#define SEND_SIG_PRIV 1

/* 1 = report this signal number; filled by the loader from the collector's options. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SIGNAL + 1);
	__type(key, __u32);
	__type(value, __u8);
} watched SEC(".maps");

struct signal_record {
	struct header h; /* the sender: the task running when the signal was generated */
	__u32 target_pid;
	__s32 sig;
	__s32 code;
	__u32 pad;
	__u64 target_cgroup_id;
	char target_comm[TASK_COMM_LEN];
};

struct core_record {
	struct header h; /* the process that dumped core, as it exits */
	__s32 exit_code;
	__u32 pad;
};

/* Layout of sched_process_exit's record, from events/sched/sched_process_exit/format. */
struct exit_ctx {
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;
};

SEC("tp_btf/signal_generate")
int tapio_signal(__u64 *ctx)
{
	/* (int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result) */
	__u32 sig = (__u32)ctx[0];
	if ((int)ctx[4] != TRACE_SIGNAL_DELIVERED || sig > MAX_SIGNAL)
		return 0;
	__u8 *wanted = bpf_map_lookup_elem(&watched, &sig);
	if (!wanted || !*wanted)
		return 0;
	struct signal_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_SIGNAL);
	__u64 info = ctx[1];
	__s32 code = 0; /* SEND_SIG_NOINFO: SI_USER */
	if (info == SEND_SIG_PRIV)
		code = SI_KERNEL;
	else if (info > SEND_SIG_PRIV)
		/* si_signo, si_errno, si_code: the user-space ABI's order on x86 and arm64. */
		bpf_probe_read_kernel(&code, sizeof(code), (void *)(info + 8));
	struct task_struct *task = (struct task_struct *)ctx[2];
	r->target_pid = BPF_CORE_READ(task, tgid);
	r->sig = sig;
	r->code = code;
	r->pad = 0;
	r->target_cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&r->target_comm, task, comm);
	bpf_ringbuf_submit(r, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tapio_core(struct exit_ctx *ctx)
{
	if (!ctx->group_dead)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__s32 exit_code = BPF_CORE_READ(task, exit_code);
	/* wait(2)'s status: the terminating signal in the low 7 bits, 0x80 when core was dumped. */
	if (!(exit_code & 0x80))
		return 0;
	struct core_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_CORE_DUMP);
	r->exit_code = exit_code;
	r->pad = 0;
	bpf_ringbuf_submit(r, 0);
	return 0;
}
