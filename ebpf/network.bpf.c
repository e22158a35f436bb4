/* `network` collector: TCP connect, accept, close and failed connects from
 * sock:inet_sock_set_state, with the owning process tracked per socket (the handshake
 * completes in softirq context, where the current task is whoever was interrupted):
 * connect() and listen() run in their caller's context. */
#include "tapio.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* TCP states, include/net/tcp_states.h. */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/* Set by the loader: attribute accepted connections at the exit of accept()/accept4()
 * (exact, but a syscall tracepoint slows every syscall on the host) rather than to the
 * process that called listen() on the port. */
const volatile __u8 accept_from_syscalls = 0;

/* Who called listen() on a port: the owner of the connections it accepts. */
struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 pad;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* family << 16 | port */
	__type(value, struct owner);
} listeners SEC(".maps");

struct conn {
	__u64 start_ktime;  /* connect(): SYN sent; then: established */
	__u64 cgroup_id;
	__u32 pid;          /* 0 until an accepted socket is handed to its process */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 server;
	__u8 pad;
	char comm[TASK_COMM_LEN];
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 pad2; /* explicit: the record is read field by field in user space */
};

struct tcp_record {
	struct header h; /* the context of the transition: may be softirq */
	struct conn c;   /* the connection as tracked */
	__u64 duration_ns;
	__s32 oldstate;
	__s32 newstate;
	__s32 err;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

struct set_state_ctx {
	__u64 common;
	const void *skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

struct accept_exit_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__s64 ret;
};

static __always_inline void fill_addresses(struct conn *c, struct set_state_ctx *ctx)
{
	c->family = ctx->family;
	c->sport = ctx->sport;
	c->dport = ctx->dport;
	if (ctx->family == AF_INET) {
		__builtin_memcpy(c->saddr, ctx->saddr, 4);
		__builtin_memcpy(c->daddr, ctx->daddr, 4);
	} else {
		__builtin_memcpy(c->saddr, ctx->saddr_v6, 16);
		__builtin_memcpy(c->daddr, ctx->daddr_v6, 16);
	}
}

static __always_inline void emit(__u32 kind, struct conn *c, __u64 duration, struct set_state_ctx *ctx, __s32 err)
{
	struct tcp_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return;
	}
	fill_header(&r->h, kind);
	__builtin_memcpy(&r->c, c, sizeof(*c));
	r->duration_ns = duration;
	r->oldstate = ctx ? ctx->oldstate : 0;
	r->newstate = ctx ? ctx->newstate : 0;
	r->err = err;
	r->pad = 0;
	bpf_ringbuf_submit(r, 0);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tapio_tcp_state(struct set_state_ctx *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)ctx->skaddr;
	__u64 now = bpf_ktime_get_ns();
	__s32 old = ctx->oldstate, new = ctx->newstate;

	__u32 listener = (__u32)ctx->family << 16 | ctx->sport;
	if (new == TCP_LISTEN) {
		/* listen(): the calling process's own context. */
		struct owner o = {};
		o.cgroup_id = bpf_get_current_cgroup_id();
		o.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(o.comm, sizeof(o.comm));
		bpf_map_update_elem(&listeners, &listener, &o, BPF_ANY);
		return 0;
	}
	if (old == TCP_LISTEN) {
		bpf_map_delete_elem(&listeners, &listener);
		return 0;
	}
	if (new == TCP_SYN_SENT) {
		/* connect(): the calling process's own context. */
		struct conn c = {};
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		c.start_ktime = now;
		c.cgroup_id = bpf_get_current_cgroup_id();
		c.pid = pid_tgid >> 32;
		bpf_get_current_comm(c.comm, sizeof(c.comm));
		fill_addresses(&c, ctx);
		bpf_map_update_elem(&conns, &sk, &c, BPF_ANY);
		return 0;
	}
	if (old == TCP_SYN_RECV && new == TCP_ESTABLISHED) {
		/* A connection a listener will accept; its process is known at accept(). */
		struct conn c = {};
		c.start_ktime = now;
		c.server = 1;
		fill_addresses(&c, ctx);
		if (!accept_from_syscalls) {
			struct owner *o = bpf_map_lookup_elem(&listeners, &listener);
			if (o) {
				c.pid = o->pid;
				c.cgroup_id = o->cgroup_id;
				__builtin_memcpy(c.comm, o->comm, sizeof(c.comm));
			}
			/* pid 0: a listener from before the probe; user space looks it up. */
			emit(KIND_TCP_ACCEPT, &c, 0, ctx, 0);
		}
		bpf_map_update_elem(&conns, &sk, &c, BPF_ANY);
		return 0;
	}
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (!c)
		return 0;
	if (old == TCP_SYN_SENT && new == TCP_ESTABLISHED) {
		__u64 handshake = now - c->start_ktime;
		fill_addresses(c, ctx); /* the source address is chosen by now */
		emit(KIND_TCP_CONNECT, c, handshake, ctx, 0);
		c->start_ktime = now;
		return 0;
	}
	if (new != TCP_CLOSE)
		return 0;
	if (old == TCP_SYN_SENT) {
		__s32 err = BPF_CORE_READ((struct sock *)sk, sk_err);
		emit(KIND_TCP_FAILED, c, now - c->start_ktime, ctx, err);
	} else {
		emit(KIND_TCP_CLOSE, c, now - c->start_ktime, ctx, 0);
	}
	bpf_map_delete_elem(&conns, &sk);
	return 0;
}

/* The socket behind descriptor `fd` of the current process. */
static __always_inline __u64 socket_of(__s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	struct socket *socket = BPF_CORE_READ(file, private_data);
	return (__u64)BPF_CORE_READ(socket, sk);
}

static __always_inline int on_accept(struct accept_exit_ctx *ctx)
{
	__u64 sk = socket_of(ctx->ret);
	if (!sk)
		return 0;
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (!c || !c->server || c->pid || !accept_from_syscalls)
		return 0;
	c->pid = bpf_get_current_pid_tgid() >> 32;
	c->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(c->comm, sizeof(c->comm));
	emit(KIND_TCP_ACCEPT, c, bpf_ktime_get_ns() - c->start_ktime, 0, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tapio_accept4(struct accept_exit_ctx *ctx)
{
	return on_accept(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tapio_accept(struct accept_exit_ctx *ctx)
{
	return on_accept(ctx);
}
