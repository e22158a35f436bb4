/* `kernel` collector: process exec and exit from the sched tracepoints. */
#include "tapio.h"

#define FILENAME_LEN 256
#define ARGS_LEN 256

struct exec_record {
	struct header h;
	__u32 ppid;
	__u32 args_len; /* bytes of `args` filled: the argv strings, each NUL-terminated */
	char filename[FILENAME_LEN];
	char args[ARGS_LEN];
};

struct exit_record {
	struct header h;
	__u32 ppid;
	__s32 exit_code; /* as wait(2) reports it: status << 8 | terminating signal */
};

/* Layouts of the tracepoints' records, from events/sched/<name>/format. */
struct exec_ctx {
	__u64 common;
	__u32 filename_loc; /* __data_loc: offset in the low 16 bits, length in the high */
	__s32 pid;
	__s32 old_pid;
};

struct exit_ctx {
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;
};

SEC("tracepoint/sched/sched_process_exec")
int tapio_exec(struct exec_ctx *ctx)
{
	struct exec_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_EXEC);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	__u32 offset = ctx->filename_loc & 0xFFFF;
	bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (char *)ctx + offset);
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = end > start ? end - start : 0;
	if (len > ARGS_LEN - 1)
		len = ARGS_LEN - 1;
	len &= ARGS_LEN - 1; /* a bound the verifier can see through clang 14's codegen */
	if (bpf_probe_read_user(r->args, len, (void *)start) != 0)
		len = 0;
	r->args_len = len;
	bpf_ringbuf_submit(r, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tapio_exit(struct exit_ctx *ctx)
{
	/* Once per process: when its last thread goes. */
	if (!ctx->group_dead)
		return 0;
	struct exit_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_EXIT);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	r->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(r, 0);
	return 0;
}
