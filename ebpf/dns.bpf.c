/* `dns` collector: DNS packets (UDP port 53) seen by a socket filter on a packet socket.
 * The filter copies each DNS packet into the ring buffer and returns 0, so nothing is
 * queued on the socket; user space parses the copies. */
#include "tapio.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define DNS_PORT 53
#define PACKET_MAX 512
#define PACKET_OUTGOING 4
#define LOOPBACK_IFINDEX 1

struct dns_record {
	__u32 kind;
	__u32 pid;       /* the sender, for packets sent from this host; else 0 */
	__u64 ktime;
	__u64 cgroup_id;
	__u32 ifindex;
	__u32 pkt_type;  /* PACKET_HOST, PACKET_OUTGOING, ... */
	__u16 protocol;  /* ETH_P_IP or ETH_P_IPV6 */
	__u16 len;       /* bytes of `packet` filled, from the IP header on */
	__u32 pad;
	char comm[TASK_COMM_LEN];
	__u8 packet[PACKET_MAX];
};

#define KIND_DNS_PACKET 20

static __always_inline int is_dns(struct __sk_buff *skb, __u16 protocol)
{
	__u32 udp;
	if (protocol == ETH_P_IP) {
		__u8 vihl, proto;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1))
			return 0;
		if (proto != IPPROTO_UDP)
			return 0;
		udp = (vihl & 0x0F) * 4;
	} else if (protocol == ETH_P_IPV6) {
		__u8 next;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != IPPROTO_UDP)
			return 0;
		udp = 40;
	} else {
		return 0;
	}
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, udp, ports, sizeof(ports)))
		return 0;
	return ports[0] == __builtin_bswap16(DNS_PORT) || ports[1] == __builtin_bswap16(DNS_PORT);
}

SEC("socket")
int tapio_dns(struct __sk_buff *skb)
{
	__u16 protocol = __builtin_bswap16((__u16)skb->protocol);
	/* On loopback every packet passes twice, out and in: keep the outgoing copy. */
	if (skb->ifindex == LOOPBACK_IFINDEX && skb->pkt_type != PACKET_OUTGOING)
		return 0;
	if (!is_dns(skb, protocol))
		return 0;
	struct dns_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return 0;
	}
	r->kind = KIND_DNS_PACKET;
	r->ktime = bpf_ktime_get_ns();
	r->ifindex = skb->ifindex;
	r->pkt_type = skb->pkt_type;
	r->protocol = protocol;
	r->pad = 0;
	r->pid = 0;
	r->cgroup_id = 0;
	__builtin_memset(r->comm, 0, sizeof(r->comm));
	if (skb->pkt_type == PACKET_OUTGOING) {
		/* Sent from this host: the filter runs in the sender's context. */
		r->pid = bpf_get_current_pid_tgid() >> 32;
		r->cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(r->comm, sizeof(r->comm));
	}
	__u32 len = skb->len;
	if (len >= PACKET_MAX) {
		bpf_skb_load_bytes(skb, 0, r->packet, PACKET_MAX);
		r->len = PACKET_MAX;
	} else {
		__u32 n = len & (PACKET_MAX - 1);
		if (n == 0 || bpf_skb_load_bytes(skb, 0, r->packet, n)) {
			bpf_ringbuf_discard(r, 0);
			return 0;
		}
		r->len = n;
	}
	bpf_ringbuf_submit(r, 0);
	return 0;
}
