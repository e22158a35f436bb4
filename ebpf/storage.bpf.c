/* `storage-io` collector: block request latency from the block_rq_issue and
 * block_rq_complete tracepoints, kept in the kernel as log2 histograms per (device,
 * operation, issuing cgroup) that user space reads every interval; failed requests and
 * slow ext4 fsyncs (ext4_sync_file_enter/exit) as records. A busy disk costs one map
 * update per request and produces no records. */
#include "tapio.h"

#define RWBS_LEN 10

#define OP_READ 0
#define OP_WRITE 1
#define OP_FLUSH 2
#define OP_DISCARD 3
#define OP_OTHER 4

/* [0]: fsync duration in ns from which a record is sent; set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} settings SEC(".maps");

struct request_key {
	__u32 dev;
	__u32 pad;
	__u64 sector;
};

struct started_request {
	__u64 ktime;
	__u64 cgroup_id;
	__u32 bytes;
	__u32 op;
};

/* Requests in flight; a request whose issue found the map full is counted lost. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct request_key);
	__type(value, struct started_request);
} started SEC(".maps");

struct hist_key {
	__u32 dev;
	__u32 op;
	__u64 cgroup_id;
};

struct hist {
	__u64 slots[SLOTS];
	__u64 count;
	__u64 bytes;
};

/* Running totals; user space reports what grew since its last read. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct hist_key);
	__type(value, struct hist);
} hists SEC(".maps");

struct io_error_record {
	struct header h; /* the task running at completion, often not the issuer */
	__u32 dev;
	__u32 op;
	__u64 sector;
	__s32 error;
	__u32 bytes;
	__u64 issuer_cgroup_id;
};

struct fsync_record {
	struct header h;
	__u32 dev;
	__s32 ret;
	__u64 ino;
	__u64 duration_ns;
	__u32 datasync;
	__u32 pad;
};

struct fsync_start {
	__u64 ktime;
	__u32 datasync;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct fsync_start);
} fsyncs SEC(".maps");

/* Layouts of the tracepoints' records, from events/<category>/<name>/format. */
struct rq_issue_ctx {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__u64 sector;
	__u32 nr_sector;
	__u32 bytes;
	__u16 ioprio;
	char rwbs[RWBS_LEN];
};

struct rq_complete_ctx {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__u64 sector;
	__u32 nr_sector;
	__s32 error;
	__u16 ioprio;
	char rwbs[RWBS_LEN];
};

struct sync_enter_ctx {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__u64 ino;
	__u64 parent;
	__s32 datasync;
};

struct sync_exit_ctx {
	__u64 common;
	__u32 dev;
	__u32 pad;
	__u64 ino;
	__s32 ret;
};

/* The operation from blktrace's rwbs text: "R", "W", "WS", "FWS", "D", "N", ... */
static __always_inline __u32 op_of(const char *rwbs)
{
	switch (rwbs[0]) {
	case 'R':
		return OP_READ;
	case 'W':
		return OP_WRITE;
	case 'F':
		return OP_FLUSH;
	case 'D':
		return OP_DISCARD;
	default:
		return OP_OTHER;
	}
}

SEC("tracepoint/block/block_rq_issue")
int tapio_rq_issue(struct rq_issue_ctx *ctx)
{
	struct request_key key = {.dev = ctx->dev, .sector = ctx->sector};
	struct started_request start = {
		.ktime = bpf_ktime_get_ns(),
		.cgroup_id = bpf_get_current_cgroup_id(),
		.bytes = ctx->bytes,
		.op = op_of(ctx->rwbs),
	};
	if (bpf_map_update_elem(&started, &key, &start, BPF_ANY) != 0)
		count_lost();
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int tapio_rq_complete(struct rq_complete_ctx *ctx)
{
	struct request_key key = {.dev = ctx->dev, .sector = ctx->sector};
	struct started_request *start = bpf_map_lookup_elem(&started, &key);
	if (!start)
		return 0; /* issued before the probe was attached */
	__u64 now = bpf_ktime_get_ns();
	struct hist_key hk = {.dev = ctx->dev, .op = start->op, .cgroup_id = start->cgroup_id};
	__u64 ns = now > start->ktime ? now - start->ktime : 0;
	__u32 bytes = start->bytes;
	__u64 issuer = start->cgroup_id;
	__u32 op = start->op;
	bpf_map_delete_elem(&started, &key);

	struct hist *h = bpf_map_lookup_elem(&hists, &hk);
	if (!h) {
		struct hist zero = {};
		if (bpf_map_update_elem(&hists, &hk, &zero, BPF_NOEXIST) != 0 &&
		    !bpf_map_lookup_elem(&hists, &hk)) {
			count_lost();
			return 0;
		}
		h = bpf_map_lookup_elem(&hists, &hk);
		if (!h)
			return 0;
	}
	__u32 slot = slot_of(ns);
	if (slot < SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->bytes, bytes);

	if (ctx->error != 0) {
		struct io_error_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
		if (!r) {
			count_lost();
			return 0;
		}
		fill_header(&r->h, KIND_IO_ERROR);
		r->dev = ctx->dev;
		r->op = op;
		r->sector = ctx->sector;
		r->error = ctx->error;
		r->bytes = bytes;
		r->issuer_cgroup_id = issuer;
		bpf_ringbuf_submit(r, 0);
	}
	return 0;
}

SEC("tracepoint/ext4/ext4_sync_file_enter")
int tapio_fsync_enter(struct sync_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct fsync_start start = {.ktime = bpf_ktime_get_ns(), .datasync = ctx->datasync != 0};
	bpf_map_update_elem(&fsyncs, &id, &start, BPF_ANY);
	return 0;
}

SEC("tracepoint/ext4/ext4_sync_file_exit")
int tapio_fsync_exit(struct sync_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct fsync_start *start = bpf_map_lookup_elem(&fsyncs, &id);
	if (!start)
		return 0;
	__u64 ns = bpf_ktime_get_ns() - start->ktime;
	__u32 datasync = start->datasync;
	bpf_map_delete_elem(&fsyncs, &id);
	__u32 zero = 0;
	__u64 *threshold = bpf_map_lookup_elem(&settings, &zero);
	if (!threshold || ns < *threshold)
		return 0;
	struct fsync_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	fill_header(&r->h, KIND_SLOW_FSYNC);
	r->dev = ctx->dev;
	r->ret = ctx->ret;
	r->ino = ctx->ino;
	r->duration_ns = ns;
	r->datasync = datasync;
	r->pad = 0;
	bpf_ringbuf_submit(r, 0);
	return 0;
}
