/* pvdev wire format, version 1 (docs/pv-protocol.md): the shared region between nicmuxd (the
 * "host") and one application or guest driver (the "driver"). C, so that the guest library
 * (src/pv/guest/) and the DPDK PMD include it as it is; nicmuxd includes it too.
 *
 * Everything in the region is little-endian and named by offsets from the region's start,
 * never by pointers. Both sides are untrusted by the other: each keeps its own copy of the
 * indexes it owns, reads the other's once per burst, and clamps what it reads.
 *
 * Region layout (every offset is in the header; these are the version-1 values):
 *
 *   0                      struct nmx_pv_header        (one page: the host writes it, once)
 *   ctrl_offset            struct nmx_pv_ctrl          (one page: the control mailbox)
 *   rings_offset           2 * max_queue_pairs rings:  pair q's rx ring (index 2q), then its
 *                          tx ring (2q + 1); each NMX_PV_RING_BYTES(ring_size), page-aligned
 *   bufs_offset            the packet buffer area, bufs_size bytes: the driver's to manage
 *
 * Registered memory (NMX_PV_FEATURE_MEM_REGIONS): the driver may also hand the host files of its
 * own memory (a DPDK application's mbuf memory) on the socket, each as a region id 1..
 * NMX_PV_MAX_MEM_REGIONS; a descriptor whose `region` is k names bytes at `offset` of region k,
 * so the host copies straight from and into the driver's buffers (struct nmx_pv_sock_req).
 *
 * A ring, either direction: the driver posts descriptors (`posted`, free-running u32) and the
 * host finishes them in order (`done`, free-running u32). tx: posted = frames to send, done =
 * sent (the buffer is the driver's again). rx: posted = empty buffers, done = filled (the
 * host wrote len, flags, rss_hash and mark into the descriptor before publishing done).
 */
#ifndef NICMUX_PV_ABI_H
#define NICMUX_PV_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NMX_PV_MAGIC UINT64_C(0x5645445650584d4e) /* "NMXPVDEV" */
#define NMX_PV_VERSION 1u
#define NMX_PV_PAGE 4096u
#define NMX_PV_CACHELINE 64u
#define NMX_PV_MAX_QUEUE_PAIRS 8u
#define NMX_PV_MIN_RING 64u
#define NMX_PV_MAX_RING 4096u
#define NMX_PV_MAX_MEM_REGIONS 64u /* registered memory: region ids 1..64 */

/* Features the host offers (header.features). */
#define NMX_PV_FEATURE_MEM_REGIONS (1ull << 0) /* MEM_ADD / MEM_DEL on the socket */
#define NMX_PV_FEATURE_FLOWS (1ull << 8)       /* FLOW_* requests (GET_INFO says what matches) */

/* ---- header (offset 0) ---------------------------------------------------------------- */

struct nmx_pv_header {
  uint64_t magic;            /* NMX_PV_MAGIC */
  uint32_t version;          /* NMX_PV_VERSION */
  uint32_t header_size;      /* sizeof(struct nmx_pv_header) */
  uint64_t region_size;      /* the whole region, bytes */
  uint32_t generation;       /* new for every region the host offers (a reconnect, a restart) */
  uint32_t max_queue_pairs;  /* 1..NMX_PV_MAX_QUEUE_PAIRS */
  uint32_t ring_size;        /* descriptors per ring: a power of two, 64..4096 */
  uint32_t buf_size;         /* the buffer size the host suggests (a frame of its MTU fits) */
  uint64_t ctrl_offset;      /* struct nmx_pv_ctrl */
  uint64_t rings_offset;     /* the first ring */
  uint64_t ring_stride;      /* bytes from one ring to the next */
  uint64_t bufs_offset;      /* the buffer area */
  uint64_t bufs_size;
  uint64_t features;         /* NMX_PV_FEATURE_*: what the host offers (unknown bits: ignore) */
  uint64_t max_mem_bytes;    /* with FEATURE_MEM_REGIONS: the most bytes all registered regions
                                of this device may hold together (the port's max_memory=) */
  /* Written by the host later: the device's state. */
  uint32_t status;           /* NMX_PV_STATUS_* */
  uint32_t reserved0;
  char broken_reason[256];   /* with NMX_PV_STATUS_BROKEN: what the host found, NUL-terminated */
};

#define NMX_PV_STATUS_OK 0u
#define NMX_PV_STATUS_BROKEN 1u /* the driver broke the protocol: reconnect to recover */
#define NMX_PV_STATUS_GONE 2u   /* the VM transport: nicmuxd no longer serves this region (its
                                   connection to QEMU closed, the port was deleted, nicmuxd
                                   stopped); broken_reason says which. Nothing answers any more */

/* The VM transport (docs/pv-protocol.md): QEMU's ivshmem-doorbell device with nicmuxd as its
 * ivshmem server. BAR2 is the region (its size a power of two: the region is padded, and
 * header.region_size is BAR2's size); doorbell v of the host is interrupt vector v of peer
 * NMX_PV_IVSHMEM_HOST_PEER: the guest kicks it by writing (HOST_PEER << 16 | v) to BAR0's
 * Doorbell register; the guest is peer NMX_PV_IVSHMEM_GUEST_PEER and its vector v is doorbell
 * v's irq. The device needs vectors >= 1 + queue pairs. */
#define NMX_PV_IVSHMEM_HOST_PEER 0u
#define NMX_PV_IVSHMEM_GUEST_PEER 1u
#define NMX_PV_IVSHMEM_VENDOR 0x1af4u
#define NMX_PV_IVSHMEM_DEVICE 0x1110u
#define NMX_PV_IVSHMEM_REG_DOORBELL 12u /* BAR0: write-only, (peer << 16) | vector */
#define NMX_PV_IVSHMEM_REG_IVPOSITION 8u /* BAR0: read-only, the guest's own peer id */

/* ---- rings ------------------------------------------------------------------------------ */

/* Descriptor flags. Requests (tx, driver -> host) and results (rx, host -> driver). */
#define NMX_PV_DESC_IPV4 0x0001u        /* the frame is IPv4 (with a checksum or TSO request) */
#define NMX_PV_DESC_IPV6 0x0002u        /* the frame is IPv6 (with a checksum or TSO request) */
#define NMX_PV_DESC_TCP_CKSUM 0x0004u   /* tx: compute the TCP checksum (l2/l3_len say where) */
#define NMX_PV_DESC_UDP_CKSUM 0x0008u   /* tx: compute the UDP checksum */
#define NMX_PV_DESC_IP_CKSUM 0x0010u    /* tx: compute the IPv4 header checksum */
#define NMX_PV_DESC_TSO 0x0020u         /* tx: TCP segmentation, tso_segsz bytes per segment */
#define NMX_PV_DESC_L4_GOOD 0x0100u     /* rx: the L4 checksum is known good */
#define NMX_PV_DESC_RSS 0x0200u         /* rx: rss_hash is valid */
#define NMX_PV_DESC_MARK 0x0400u        /* rx: a flow rule's MARK: mark is valid */

struct nmx_pv_desc {
  uint64_t offset;    /* the buffer: bytes from its region's start (region 0: within the buffer
                         area; region k: within registered region k) */
  uint32_t len;       /* tx: frame bytes; rx posted: buffer capacity; rx done: frame bytes */
  uint16_t flags;     /* NMX_PV_DESC_* */
  uint16_t region;    /* 0: this region's buffer area; 1..NMX_PV_MAX_MEM_REGIONS: the driver's
                         registered memory (MEM_ADD) */
  uint8_t l2_len;     /* with a request: Ethernet header bytes (14, 18 with a VLAN tag) */
  uint8_t l4_len;     /* with NMX_PV_DESC_TSO: the TCP header's bytes */
  uint16_t l3_len;    /* with a request: IP header bytes (with IPv6 extension headers) */
  uint16_t tso_segsz; /* with NMX_PV_DESC_TSO: payload bytes per segment */
  uint16_t reserved;
  uint32_t rss_hash;  /* rx, with NMX_PV_DESC_RSS */
  uint32_t mark;      /* rx, with NMX_PV_DESC_MARK */
};

/* Ring flags. */
#define NMX_PV_DRIVER_WANTS_IRQ 1u /* in driver_flags: signal the queue's irq when done moves */
#define NMX_PV_HOST_NEEDS_KICK 1u  /* in host_flags: the host sleeps; kick after posting */

struct nmx_pv_ring {
  /* cache line 0: the driver writes */
  uint32_t posted;
  uint32_t driver_flags;
  uint8_t pad0[NMX_PV_CACHELINE - 8];
  /* cache line 1: the host writes */
  uint32_t done;
  uint32_t host_flags;
  uint8_t pad1[NMX_PV_CACHELINE - 8];
  struct nmx_pv_desc desc[]; /* ring_size of them */
};

#define NMX_PV_RING_BYTES(ring_size) \
  ((((uint64_t)sizeof(struct nmx_pv_ring) + (uint64_t)(ring_size) * sizeof(struct nmx_pv_desc)) + NMX_PV_PAGE - 1) & \
   ~(uint64_t)(NMX_PV_PAGE - 1))

/* ---- control mailbox -------------------------------------------------------------------- */

#define NMX_PV_MSG_PAYLOAD 512u
#define NMX_PV_REASON 128u

enum nmx_pv_msg_type {
  NMX_PV_MSG_GET_INFO = 1,      /* -> struct nmx_pv_info */
  NMX_PV_MSG_CONFIGURE = 2,     /* struct nmx_pv_configure */
  NMX_PV_MSG_QUEUE_SETUP = 3,   /* struct nmx_pv_queue_req */
  NMX_PV_MSG_QUEUE_RELEASE = 4, /* struct nmx_pv_queue_req */
  NMX_PV_MSG_START = 5,
  NMX_PV_MSG_STOP = 6,
  NMX_PV_MSG_STATS_GET = 7,     /* -> struct nmx_pv_stats */
  NMX_PV_MSG_STATS_RESET = 8,
  NMX_PV_MSG_LINK_GET = 9,      /* -> struct nmx_pv_link */
  NMX_PV_MSG_MTU_SET = 10,      /* struct nmx_pv_u32 */
  NMX_PV_MSG_MAC_SET = 11,      /* struct nmx_pv_mac */
  NMX_PV_MSG_PROMISC_SET = 12,  /* struct nmx_pv_u32 (0 or 1) */
  NMX_PV_MSG_FLOW_VALIDATE = 13, /* struct nmx_pv_flow_rule: would CREATE take it? */
  NMX_PV_MSG_FLOW_CREATE = 14,  /* struct nmx_pv_flow_rule -> struct nmx_pv_flow_id */
  NMX_PV_MSG_FLOW_DESTROY = 15, /* struct nmx_pv_flow_id */
  NMX_PV_MSG_FLOW_FLUSH = 16,   /* every rule of the device */
  NMX_PV_MSG_MAX_TYPE = 16,
};

struct nmx_pv_msg {
  uint32_t seq;      /* request: the driver's number; response: the request's */
  uint16_t type;     /* enum nmx_pv_msg_type */
  uint16_t len;      /* payload bytes used */
  int32_t status;    /* response: 0 or a negative errno */
  uint32_t reserved;
  char reason[NMX_PV_REASON]; /* response with status < 0: why, NUL-terminated */
  uint8_t payload[NMX_PV_MSG_PAYLOAD];
};

struct nmx_pv_ctrl {
  /* cache line 0: the driver writes */
  uint32_t req_seq;  /* bumped (release) after the request is written: the host answers it */
  uint32_t driver_flags;
  uint8_t pad0[NMX_PV_CACHELINE - 8];
  /* cache line 1: the host writes */
  uint32_t resp_seq;  /* = req_seq of the answer in resp, stored (release) after resp */
  uint32_t event_seq; /* bumped when the link or the capabilities changed: GET_INFO again */
  uint8_t pad1[NMX_PV_CACHELINE - 8];
  struct nmx_pv_msg req;
  struct nmx_pv_msg resp;
};

/* Offload capabilities (GET_INFO, CONFIGURE). */
#define NMX_PV_TX_IPV4_CKSUM (1ull << 0)
#define NMX_PV_TX_TCP_CKSUM (1ull << 1)
#define NMX_PV_TX_UDP_CKSUM (1ull << 2)
#define NMX_PV_TX_TCP_TSO (1ull << 3)
#define NMX_PV_RX_IPV4_CKSUM (1ull << 0)
#define NMX_PV_RX_TCP_CKSUM (1ull << 1)
#define NMX_PV_RX_UDP_CKSUM (1ull << 2)
#define NMX_PV_RX_RSS_HASH (1ull << 3)

struct nmx_pv_info {
  uint32_t max_rx_queues;
  uint32_t max_tx_queues;
  uint32_t ring_size;
  uint32_t buf_size;
  uint32_t min_mtu;
  uint32_t max_mtu;
  uint32_t mtu;
  uint32_t max_frame;        /* the longest frame (a TSO frame included) tx takes */
  uint8_t mac[6];
  uint8_t link_up;
  uint8_t promisc;
  uint32_t link_speed_mbps;
  uint32_t reserved1;        /* (explicit: the next field is 8-byte aligned) */
  uint64_t tx_offloads;      /* NMX_PV_TX_*: what the host takes; derived from the uplink */
  uint64_t rx_offloads;      /* NMX_PV_RX_* */
  uint32_t generation;       /* the header's */
  uint32_t reserved;
  char uplink[64];           /* where the capabilities come from: "dpdk up0 (net_virtio_user)" */
  /* Flow rules (NMX_PV_FEATURE_FLOWS): what nicmuxd matches and does, from its own code. */
  uint32_t flow_items;       /* NMX_PV_FLOW_ITEM_* a pattern may hold (0: no flow rules) */
  uint32_t flow_actions;     /* NMX_PV_FLOW_ACTION_* */
  uint32_t max_flows;        /* rules per device (the port's flows=) */
  uint32_t flow_rss_queues;  /* the longest RSS action queue list */
  uint64_t flow_rss_types;   /* NMX_PV_RSS_* the RSS action hashes on */
  struct nmx_pv_flow_fields_mask {
    uint8_t bytes[64];       /* a struct nmx_pv_flow_fields: 0xff where a mask may have bits */
  } flow_fields;
};

struct nmx_pv_configure {
  uint32_t nb_rx_queues;
  uint32_t nb_tx_queues;
  uint64_t tx_offloads;      /* must be within info.tx_offloads */
  uint64_t rx_offloads;      /* must be within info.rx_offloads */
  uint32_t mtu;              /* 0: keep */
  uint32_t reserved;
};

#define NMX_PV_QUEUE_RX 0u
#define NMX_PV_QUEUE_TX 1u
struct nmx_pv_queue_req {
  uint32_t queue;            /* the queue pair's index */
  uint32_t dir;              /* NMX_PV_QUEUE_RX or NMX_PV_QUEUE_TX */
};

struct nmx_pv_u32 {
  uint32_t value;
};

/* ---- flow rules (FLOW_VALIDATE / CREATE / DESTROY / FLUSH) ----------------------------------
 * The rte_flow model, flattened: a pattern is the items present (in the order eth, vlan, ipv4
 * or ipv6, tcp or udp) and one spec and one mask over every field those items carry; a frame
 * matches when it has each item's protocol (an item without mask bits matches any of it) and
 * (field & mask) == (spec & mask). Rules apply to the frames nicmuxd puts in the device's rx
 * rings, in priority order (lower first; equal priorities in creation order); the first match
 * decides: the rx queue (QUEUE, RSS over a list of queues) or DROP, and MARK writes `mark` into
 * the descriptor (NMX_PV_DESC_MARK). No rule matching: the ring the switch chose. */
#define NMX_PV_FLOW_ITEM_ETH 0x01u  /* eth_dst, eth_src, eth_type (the outer EtherType) */
#define NMX_PV_FLOW_ITEM_VLAN 0x02u /* the frame carries one 802.1Q/802.1ad tag: vlan_tci,
                                       vlan_inner_type */
#define NMX_PV_FLOW_ITEM_IPV4 0x04u /* ip_src/ip_dst (first 4 bytes), ip_proto, ip_tos */
#define NMX_PV_FLOW_ITEM_IPV6 0x08u /* ip_src, ip_dst, ip_proto (next header), ip_tos (class) */
#define NMX_PV_FLOW_ITEM_TCP 0x10u  /* l4_src, l4_dst (needs IPV4 or IPV6) */
#define NMX_PV_FLOW_ITEM_UDP 0x20u  /* l4_src, l4_dst (needs IPV4 or IPV6) */

#define NMX_PV_FLOW_ACTION_QUEUE 0x01u /* to rx queue `queue` */
#define NMX_PV_FLOW_ACTION_DROP 0x02u  /* dropped (counted: nicmuxd's flow_drop) */
#define NMX_PV_FLOW_ACTION_MARK 0x04u  /* `mark` in the descriptor (with a fate or alone) */
#define NMX_PV_FLOW_ACTION_RSS 0x08u   /* to rss_queues[hash % rss_queue_num], hash in the
                                          descriptor (NMX_PV_DESC_RSS) */

/* RSS types: what the hash covers for each kind of frame (a frame of a kind not listed: not
 * hashed, the list's first queue). The hash is Toeplitz over (src ip, dst ip[, src port, dst
 * port]) as on the wire, with the rule's 40-byte key (or the host's default). */
#define NMX_PV_RSS_IPV4 (1ull << 0)
#define NMX_PV_RSS_IPV4_TCP (1ull << 1)
#define NMX_PV_RSS_IPV4_UDP (1ull << 2)
#define NMX_PV_RSS_IPV6 (1ull << 3)
#define NMX_PV_RSS_IPV6_TCP (1ull << 4)
#define NMX_PV_RSS_IPV6_UDP (1ull << 5)

#define NMX_PV_FLOW_RSS_MAX_QUEUES 16u
#define NMX_PV_FLOW_RSS_KEY 40u

struct nmx_pv_flow_fields { /* every field as on the wire (network byte order) */
  uint8_t eth_dst[6];
  uint8_t eth_src[6];
  uint16_t eth_type;        /* the frame's EtherType after the MACs (0x8100 when tagged) */
  uint16_t vlan_tci;
  uint16_t vlan_inner_type;
  uint8_t ip_proto;
  uint8_t ip_tos;
  uint16_t l4_src;
  uint16_t l4_dst;
  uint8_t ip_src[16];       /* IPv4: bytes 0..3, the rest 0 */
  uint8_t ip_dst[16];
  uint64_t reserved;        /* 0 */
};

struct nmx_pv_flow_rule {
  uint32_t priority;        /* 0 first */
  uint32_t items;           /* NMX_PV_FLOW_ITEM_* */
  uint32_t actions;         /* NMX_PV_FLOW_ACTION_*: at most one of QUEUE, DROP, RSS */
  uint32_t queue;           /* QUEUE: < the configured rx queues */
  uint32_t mark;            /* MARK */
  uint32_t rss_queue_num;   /* RSS: 1..NMX_PV_FLOW_RSS_MAX_QUEUES */
  uint64_t rss_types;       /* RSS: NMX_PV_RSS_*, within GET_INFO's (0: all of those) */
  uint16_t rss_queues[NMX_PV_FLOW_RSS_MAX_QUEUES]; /* RSS: each < the configured rx queues */
  uint32_t rss_key_len;     /* RSS: 0 (the host's key) or NMX_PV_FLOW_RSS_KEY */
  uint32_t reserved;        /* 0 */
  uint8_t rss_key[NMX_PV_FLOW_RSS_KEY];
  struct nmx_pv_flow_fields spec, mask;
};

struct nmx_pv_flow_id {
  uint32_t id;              /* the host's number for a rule (CREATE answers it) */
  uint32_t reserved;
};

struct nmx_pv_mac {
  uint8_t mac[6];
  uint8_t pad[2];
};

struct nmx_pv_queue_stats {
  uint64_t packets, bytes, dropped;
};
struct nmx_pv_stats {
  uint32_t nb_rx_queues, nb_tx_queues;
  struct nmx_pv_queue_stats rx[NMX_PV_MAX_QUEUE_PAIRS]; /* frames the host put in rx rings */
  struct nmx_pv_queue_stats tx[NMX_PV_MAX_QUEUE_PAIRS]; /* frames the host took from tx rings */
  uint64_t rx_no_buffers;    /* frames for the driver dropped: no posted rx buffer */
};

struct nmx_pv_link {
  uint32_t up;
  uint32_t speed_mbps;
};

/* ---- the process transport's handshake (a UNIX stream socket) ------------------------------
 * On connect the host sends one struct nmx_pv_hello with SCM_RIGHTS fds: the region's memfd,
 * then per doorbell a kick eventfd (driver -> host) and an irq eventfd (host -> driver):
 * doorbell 0 is the control mailbox, doorbell 1 + q is queue pair q. The connection stays open;
 * when it closes the host stops the device and offers a fresh region to the next connection. */
struct nmx_pv_hello {
  uint64_t magic;            /* NMX_PV_MAGIC */
  uint32_t version;          /* NMX_PV_VERSION */
  uint32_t num_doorbells;    /* 1 + max_queue_pairs */
  uint64_t region_size;
};

/* After the hello, with NMX_PV_FEATURE_MEM_REGIONS: the driver registers memory of its own on the
 * socket, one struct nmx_pv_sock_req at a time (exactly its size; MEM_ADD with one fd as
 * SCM_RIGHTS on its bytes), and waits for the host's struct nmx_pv_sock_resp with the same seq
 * before the next. Both only while the device is stopped (never STARTed, or after STOP);
 * otherwise refused with -EBUSY and nothing changes. A region may not be deleted while
 * descriptors posted in a ring still name it: the host finds them when the device runs again
 * and the device breaks.
 *
 *   MEM_ADD {id, fd_offset, size, addr} + fd: maps [fd_offset, fd_offset + size) of the fd as
 *     region `id`. Refused: id outside 1..NMX_PV_MAX_MEM_REGIONS (-EINVAL) or in use (-EEXIST);
 *     not exactly one fd, not a memfd, tmpfs or hugetlbfs file (a file on a disk or a FUSE
 *     mount is refused: nicmuxd would wait on its filesystem), size 0, fd_offset or size
 *     not a multiple of the file's page size, or the range past the file's end (-EINVAL); all
 *     regions together over header.max_mem_bytes (-ENOSPC); the device broken (-EIO); mmap
 *     failing (its errno). addr (the driver's virtual address of the region) is for logs only.
 *   MEM_DEL {id}: unmaps region id (-ENOENT when none).
 *
 * The file stays the driver's: if it shrinks (or a page of it cannot be allocated again) under
 * the host's access, that access is recovered (it reads zeros), the device is broken with the
 * region named in broken_reason, and the driver's hanging up then quarantines the port. A
 * driver that sends requests without reading the answers is disconnected when its socket's
 * buffer is full. */
enum nmx_pv_sock_type {
  NMX_PV_SOCK_MEM_ADD = 1,
  NMX_PV_SOCK_MEM_DEL = 2,
};

struct nmx_pv_sock_req {     /* driver -> host */
  uint32_t type;             /* enum nmx_pv_sock_type */
  uint32_t seq;              /* the driver's number, echoed in the answer */
  uint32_t id;               /* the region: 1..NMX_PV_MAX_MEM_REGIONS */
  uint32_t reserved;
  uint64_t fd_offset;        /* MEM_ADD: where the region starts in the file */
  uint64_t size;             /* MEM_ADD: its bytes */
  uint64_t addr;             /* MEM_ADD: the driver's address of it (information only) */
};

struct nmx_pv_sock_resp {    /* host -> driver */
  uint32_t type;             /* the request's */
  uint32_t seq;              /* the request's */
  uint32_t id;               /* the request's */
  int32_t status;            /* 0 or a negative errno */
  char reason[NMX_PV_REASON]; /* with status < 0: why, NUL-terminated */
};

#ifdef __cplusplus
}
#endif

#if defined(__cplusplus)
static_assert(sizeof(struct nmx_pv_desc) == 32, "pv descriptor");
static_assert(sizeof(struct nmx_pv_ring) == 128, "pv ring header");
static_assert(sizeof(struct nmx_pv_msg) == 16 + NMX_PV_REASON + NMX_PV_MSG_PAYLOAD, "pv message");
static_assert(sizeof(struct nmx_pv_header) <= NMX_PV_PAGE, "pv header");
static_assert(sizeof(struct nmx_pv_ctrl) <= NMX_PV_PAGE, "pv control page");
static_assert(sizeof(struct nmx_pv_stats) <= NMX_PV_MSG_PAYLOAD, "pv stats");
static_assert(sizeof(struct nmx_pv_info) <= NMX_PV_MSG_PAYLOAD, "pv info");
static_assert(sizeof(struct nmx_pv_flow_fields) == 64, "pv flow fields");
static_assert(sizeof(struct nmx_pv_flow_rule) <= NMX_PV_MSG_PAYLOAD, "pv flow rule");
static_assert(sizeof(struct nmx_pv_flow_rule) == 240, "pv flow rule");
static_assert(sizeof(struct nmx_pv_header) == 360, "pv header");
static_assert(sizeof(struct nmx_pv_hello) == 24, "pv hello");
static_assert(sizeof(struct nmx_pv_sock_req) == 40, "pv socket request");
static_assert(sizeof(struct nmx_pv_sock_resp) == 16 + NMX_PV_REASON, "pv socket answer");
#else
_Static_assert(sizeof(struct nmx_pv_desc) == 32, "pv descriptor");
_Static_assert(sizeof(struct nmx_pv_ring) == 128, "pv ring header");
_Static_assert(sizeof(struct nmx_pv_header) == 360, "pv header");
_Static_assert(sizeof(struct nmx_pv_flow_fields) == 64, "pv flow fields");
_Static_assert(sizeof(struct nmx_pv_flow_rule) == 240, "pv flow rule");
_Static_assert(sizeof(struct nmx_pv_sock_req) == 40, "pv socket request");
_Static_assert(sizeof(struct nmx_pv_sock_resp) == 16 + NMX_PV_REASON, "pv socket answer");
#endif

#endif /* NICMUX_PV_ABI_H */
