/* nicmux_pv: the driver side of a pvdev (src/pv/pv_abi.h), as a small C11 library without DPDK.
 *
 * A pvdev is a para-virtual NIC served by nicmuxd's `pv` port: nicmuxd (the "host") offers a
 * shared-memory region over a UNIX stream socket; the region holds a control mailbox and one
 * rx and one tx ring per queue pair; each ring names packet buffers by offset in the region's
 * buffer area, which this library partitions itself. Doorbells are eventfds: a kick (driver ->
 * host) and an irq (host -> driver) for the mailbox (doorbell 0) and each queue pair q
 * (doorbell 1 + q).
 *
 * Trust: the host is untrusted like the driver is to the host. open() checks every field of the
 * hello and the header and keeps a private copy of the header; the data path reads the host's
 * `done` indexes once per burst and clamps them against what was posted (a lie marks the device
 * broken locally: every burst then returns 0), takes buffer offsets only from its own records
 * (never from a descriptor the host wrote) and clamps received lengths to the buffer. Nothing
 * the host writes can make the library read or write outside the region, or abort.
 *
 * Threads: control calls (everything but the data path) from one thread at a time, except that
 * nmx_pv_link_get, nmx_pv_stats_get and nmx_pv_get_info may also come from a second thread
 * while another control call runs (the mailbox takes one call at a time; a DPDK PMD checks the
 * link from its interrupt thread); nmx_pv_strerror then tells the last call's error. The data
 * path is lock-free with one owner per queue: nmx_pv_rx_burst/nmx_pv_rx_done from the thread
 * that owns rx queue q, nmx_pv_tx_burst from the one that owns tx queue q, nmx_pv_wait and the
 * irq functions from a thread that owns both queues of pair q. Queue q may not be used by the
 * data path while nmx_pv_queue_setup/nmx_pv_queue_release run on it; other queues may.
 *
 * Ring indexes: `posted` and `done` are free-running u32 and wrap past 2^32. When QUEUE_SETUP
 * for a ring succeeds the library takes the ring's `done` as it finds it as the start (the host
 * may reset it to 0 or keep it; before the request the library writes posted = 0 and clears
 * driver_flags) and publishes posted = done (+ ring_size on rx: every rx buffer is posted).
 *
 * Zero copy: with the host's NMX_PV_FEATURE_MEM_REGIONS the caller can register files of its own
 * memory (nmx_pv_mem_add) and set queues up with NMX_PV_QUEUE_ZEROCOPY: descriptors then carry
 * the caller's buffers with a cookie each, as a DPDK PMD's sw ring carries an mbuf per slot.
 *
 * Return values: 0 or a negative errno; nmx_pv_strerror() has the last control error's text
 * (the host's reason when it refused). Linux only (memfd, eventfd, SCM_RIGHTS), little-endian.
 */
#ifndef NICMUX_PV_GUEST_NICMUX_PV_H
#define NICMUX_PV_GUEST_NICMUX_PV_H

#include <stddef.h>
#include <stdint.h>

#include "pv/pv_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

struct nmx_pv_dev;

/* Default wait for the hello and for each control answer. */
#define NMX_PV_DEFAULT_TIMEOUT_MS 5000

/* ---- opening ---------------------------------------------------------------------------- */

/* Connects to the host's UNIX stream socket at socket_path, receives the hello with its fds
 * (the region's memfd, sealed against shrinking, then a kick and an irq eventfd per doorbell),
 * maps the region and checks it. NULL on any failure, with a message naming the field or call in err (errlen bytes,
 * NUL-terminated; err may be NULL). The connection stays open until nmx_pv_close(). */
struct nmx_pv_dev* nmx_pv_open(const char* socket_path, char* err, size_t errlen);

/* The same over an already connected stream socket (a socketpair, an inherited fd). Takes
 * ownership of fd: it is closed on failure and by nmx_pv_close(). */
struct nmx_pv_dev* nmx_pv_open_fd(int fd, char* err, size_t errlen);

/* The VM transport: a QEMU ivshmem-doorbell device served by a nicmuxd pv port with
 * transport=ivshmem, through sysfs (root; no kernel driver, no vfio): bdf "0000:00:04.0", or NULL
 * or "" for the first ivshmem device (1af4:1110) whose BAR2 starts with the pvdev magic. Maps
 * /sys/bus/pci/devices/BDF/resource2 (the region: every header field checked as for open) and
 * resource0 (the registers: kicks are writes of (NMX_PV_IVSHMEM_HOST_PEER << 16 | doorbell) to
 * its Doorbell). Polling only: no irq fds (nmx_pv_irq_fd returns -1, nmx_pv_wait polls the
 * rings every millisecond, a control call looks every 10 ms), no registered memory. Nothing
 * tells nicmuxd that an earlier user of the device went away, so the open takes the device over:
 * STOP and STATS_RESET (MAC, MTU and promiscuous mode stay as that user left them); a host that
 * does not answer them fails the open. nicmuxd
 * going away shows as NMX_PV_STATUS_GONE in nmx_pv_status (nmx_pv_connected 0), or, when
 * nicmuxd crashed, as control calls timing out: a restarted nicmuxd cannot give a running VM a
 * new region, the VM must be restarted (docs/pv-protocol.md). */
struct nmx_pv_dev* nmx_pv_open_pci(const char* bdf, char* err, size_t errlen);

/* The VM transport over BARs the caller mapped itself (a DPDK PCI driver: the rte_pci_device's
 * mem_resource[2] and [0], with the device bound to vfio-pci or uio_pci_generic): BAR2 is the
 * region, BAR0 the ivshmem registers. The same checks and takeover as nmx_pv_open_pci; the
 * library never unmaps them (nmx_pv_close leaves them to the caller). name is for messages
 * (the PCI address). NULL with err set when BAR2 is not a pvdev's. */
struct nmx_pv_dev* nmx_pv_open_bars(void* bar2, uint64_t bar2_len, void* bar0, uint64_t bar0_len, const char* name,
                                    char* err, size_t errlen);

/* Unmaps the region and closes every fd. The host stops the device when the socket closes.
 * NULL is ignored. */
void nmx_pv_close(struct nmx_pv_dev* dev);

/* What open() found in the (checked) header. */
uint32_t nmx_pv_max_queue_pairs(const struct nmx_pv_dev* dev);
uint32_t nmx_pv_ring_size(const struct nmx_pv_dev* dev);
uint32_t nmx_pv_buf_size(const struct nmx_pv_dev* dev); /* every buffer's capacity */
uint32_t nmx_pv_generation(const struct nmx_pv_dev* dev);

/* The wait for each control answer, milliseconds (> 0; default NMX_PV_DEFAULT_TIMEOUT_MS). */
void nmx_pv_set_timeout(struct nmx_pv_dev* dev, int timeout_ms);

/* NMX_PV_FEATURE_* the host offers (header.features), and its bound on registered memory. */
uint64_t nmx_pv_features(const struct nmx_pv_dev* dev);
uint64_t nmx_pv_max_mem_bytes(const struct nmx_pv_dev* dev);

/* ---- control calls (one thread at a time) ------------------------------------------------- */

/* The last error's text: a refused or failed control call (the host's reason with -E... when
 * it refused), or a bad argument. "" when there was none. */
const char* nmx_pv_strerror(const struct nmx_pv_dev* dev);

/* GET_INFO. Checked: max_rx_queues and max_tx_queues 1..nmx_pv_max_queue_pairs(), ring_size
 * and buf_size those of the header, uplink NUL-terminated (non-printable bytes become '?'). */
int nmx_pv_get_info(struct nmx_pv_dev* dev, struct nmx_pv_info* info);
/* CONFIGURE. Afterwards no queue is set up (the host forgets them: set them up again). (The
 * function hides pv_abi.h's struct of the same name in C++: write `struct nmx_pv_configure`.) */
int nmx_pv_configure(struct nmx_pv_dev* dev, const struct nmx_pv_configure* conf);
/* QUEUE_SETUP of queue pair q's rx or tx ring (dir NMX_PV_QUEUE_RX or NMX_PV_QUEUE_TX), with
 * the device stopped. After an rx setup every rx buffer of the queue is posted. -EBUSY for a
 * queue that is set up: release it first (its ring may be live; the library never resets a
 * live ring's index). */
int nmx_pv_queue_setup(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir);
/* QUEUE_RELEASE. The data path returns 0 on the queue afterwards; rx buffers the caller holds
 * stay readable until close (they are reposted by the next setup). A zero-copy queue's buffers
 * still posted are the caller's again: nmx_pv_queue_take_back. */
int nmx_pv_queue_release(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir);

/* nmx_pv_queue_setup with flags: NMX_PV_QUEUE_ZEROCOPY makes the queue carry the caller's
 * buffers in registered memory, each with a cookie (the caller's sw ring, e.g. an mbuf per
 * slot): an rx queue posts nothing at setup (nmx_pv_zc_rx_post does; nmx_pv_rx_burst returns
 * 0 on it); a tx queue takes nmx_pv_zc_tx_burst's buffers and gives their cookies back when the
 * host is done (nmx_pv_zc_tx_reclaim), and nmx_pv_tx_burst's copies alongside. -EBUSY while
 * the queue still holds buffers of a previous zero-copy setup (take them back first). */
#define NMX_PV_QUEUE_ZEROCOPY 1u
int nmx_pv_queue_setup_ex(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir, uint32_t flags);

/* After QUEUE_RELEASE or CONFIGURE (the queue not set up): up to n cookies of the buffers the
 * zero-copy queue still held (rx: posted, filled or not; tx: not yet reclaimed), oldest first;
 * each is given back once. Returns how many; 0 when none is left. -EBUSY while the queue is set
 * up. */
int nmx_pv_queue_take_back(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir, void** cookies, uint32_t n);
int nmx_pv_start(struct nmx_pv_dev* dev);
int nmx_pv_stop(struct nmx_pv_dev* dev);
/* STATS_GET; nb_rx_queues and nb_tx_queues are clamped to NMX_PV_MAX_QUEUE_PAIRS. */
int nmx_pv_stats_get(struct nmx_pv_dev* dev, struct nmx_pv_stats* stats);
int nmx_pv_stats_reset(struct nmx_pv_dev* dev);
int nmx_pv_link_get(struct nmx_pv_dev* dev, struct nmx_pv_link* link);
/* LINK_GET for a watcher on another thread (a PMD's link check): -EBUSY at once when another
 * control call runs, at most timeout_ms waiting for the answer (> 0; else the device's
 * timeout), and nmx_pv_strerror's text left as it was. 0 or -errno. */
int nmx_pv_link_poll(struct nmx_pv_dev* dev, struct nmx_pv_link* link, int timeout_ms);
int nmx_pv_mtu_set(struct nmx_pv_dev* dev, uint32_t mtu);
int nmx_pv_mac_set(struct nmx_pv_dev* dev, const uint8_t mac[6]);
int nmx_pv_promisc_set(struct nmx_pv_dev* dev, int on);

/* ---- flow rules (needs NMX_PV_FEATURE_FLOWS) ---------------------------------------------------
 *
 * Rules over the frames the host puts in the device's rx rings (struct nmx_pv_flow_rule in
 * pv_abi.h: eth/vlan/ipv4/ipv6/tcp/udp spec and mask; queue, rss, drop, mark). GET_INFO's
 * flow_items, flow_actions, flow_fields, flow_rss_types and max_flows say what the host takes
 * (zero without the feature); the host checks every rule again and refuses with its reason
 * (nmx_pv_strerror). After nmx_pv_configure (which drops every rule). -ENOTSUP without the
 * feature. */
int nmx_pv_flow_validate(struct nmx_pv_dev* dev, const struct nmx_pv_flow_rule* rule);
/* The host's id for the new rule in *id (for nmx_pv_flow_destroy). */
int nmx_pv_flow_create(struct nmx_pv_dev* dev, const struct nmx_pv_flow_rule* rule, uint32_t* id);
int nmx_pv_flow_destroy(struct nmx_pv_dev* dev, uint32_t id);
int nmx_pv_flow_flush(struct nmx_pv_dev* dev);

/* ---- registered memory (zero copy; needs NMX_PV_FEATURE_MEM_REGIONS) ----------------------
 *
 * The caller's own memory, given to the host as files: descriptors then name buffers in it as
 * (region, offset), and the host copies frames straight from and into them (one copy per
 * frame instead of two). Control calls: only while the device is stopped (never started, or
 * after nmx_pv_stop), and with no data-path call running. */

/* Registers [offset, offset + size) of fd (a memfd, hugetlbfs or tmpfs file of the caller's,
 * mapped MAP_SHARED by the caller at addr, or addr NULL) with the host. Returns the region id
 * (1..NMX_PV_MAX_MEM_REGIONS), or -ENOTSUP (the host does not offer it), -ENOSPC (every id
 * taken), -EINVAL (size 0, fd < 0), the host's refusal (nmx_pv_strerror: its reason: past the
 * file's end, not a multiple of the file's page size, over max_mem_bytes, ...), -ETIMEDOUT,
 * -ENOTCONN. The fd stays the caller's (the host has its own). */
int nmx_pv_mem_add(struct nmx_pv_dev* dev, int fd, uint64_t offset, uint64_t size, const void* addr);
/* Unregisters region id. No buffer posted in a ring may name it any more (the host would break
 * the device); nmx_pv_queue_take_back gives them back first. */
int nmx_pv_mem_del(struct nmx_pv_dev* dev, int id);
/* The registered region holding [p, p + len) (registered with its addr), and p's offset in it:
 * 0, or -ENOENT. Any thread (no mem_add or mem_del running). */
int nmx_pv_mem_find(const struct nmx_pv_dev* dev, const void* p, uint64_t len, uint16_t* region, uint64_t* offset);

/* 1 while the host keeps the connection open, 0 once it closed it (the device is gone: open a
 * new one). Any thread. */
int nmx_pv_connected(const struct nmx_pv_dev* dev);

/* The mailbox's event_seq: it changes when the link or the capabilities changed (GET_INFO
 * again). Compare for inequality only: it wraps. */
int nmx_pv_events(const struct nmx_pv_dev* dev);

/* NMX_PV_STATUS_OK (0), or NMX_PV_STATUS_BROKEN (1) when the host marked the device broken
 * (reason: its broken_reason) or the library did (reason: what the host did wrong: a ring
 * index beyond what was posted, ...). reason (n bytes, may be NULL) is always NUL-terminated.
 * Any thread. */
int nmx_pv_status(const struct nmx_pv_dev* dev, char* reason, size_t n);

/* ---- data path ---------------------------------------------------------------------------- */

/* One packet. tx: data/len are the frame (copied by nmx_pv_tx_burst), flags are
 * NMX_PV_DESC_* requests (IPV4, IPV6, TCP_CKSUM, UDP_CKSUM, IP_CKSUM, TSO; other bits are
 * ignored) with l2_len, l3_len, l4_len and tso_segsz as pv_abi.h describes them; cookie is
 * ignored. rx: data points into the region (the caller's until nmx_pv_rx_done), flags are
 * NMX_PV_DESC_* results (L4_GOOD, RSS, MARK, IPV4, IPV6), rss_hash and mark valid with RSS and
 * MARK; cookie is NULL. From nmx_pv_zc_rx_burst: data points into the caller's registered
 * memory (NULL when it was registered with addr NULL) and cookie is the posted buffer's. */
struct nmx_pv_pkt {
  void* data;
  uint32_t len;
  uint16_t flags;
  uint8_t l2_len, l4_len;
  uint16_t l3_len, tso_segsz;
  uint32_t rss_hash, mark;
  void* cookie;
};

/* Reclaims finished tx buffers, then copies up to n frames into free tx buffers of queue q and
 * publishes them; kicks the host if it sleeps. Returns how many of pkts were taken: sent, or
 * dropped because empty or longer than nmx_pv_buf_size() (counted in tx_dropped). Fewer than n
 * when the ring is full; 0 when q is not set up or the device is broken. */
uint16_t nmx_pv_tx_burst(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_pkt* pkts, uint16_t n);

/* Free slots of tx queue q after taking back what the host finished: a tx_burst of up to this
 * many frames takes them all. 0 when q is not set up or the device is broken. */
uint32_t nmx_pv_tx_free(struct nmx_pv_dev* dev, uint32_t q);

/* Up to n received frames of queue q. Their buffers stay the caller's, in order, until
 * nmx_pv_rx_done gives them back; a caller holding every buffer receives nothing more. */
uint16_t nmx_pv_rx_burst(struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_pkt* pkts, uint16_t n);

/* Gives back the first n of the buffers rx_burst handed out (oldest first) as empty buffers and
 * kicks the host if it sleeps. n beyond what the caller holds is clamped. */
void nmx_pv_rx_done(struct nmx_pv_dev* dev, uint32_t q, uint16_t n);

/* ---- zero-copy data path (queues set up with NMX_PV_QUEUE_ZEROCOPY) ------------------------ */

/* A buffer in registered memory. tx: the frame (len bytes), its requests (flags, l2_len, l3_len,
 * l4_len, tso_segsz as in nmx_pv_pkt). rx: an empty buffer of len bytes (the other fields
 * ignored). cookie: the caller's, returned with the buffer. */
struct nmx_pv_buf {
  uint64_t offset; /* bytes from the registered region's start */
  uint32_t len;
  uint16_t region; /* an id from nmx_pv_mem_add */
  uint16_t flags;
  uint8_t l2_len, l4_len;
  uint16_t l3_len, tso_segsz;
  void* cookie;
};

/* Posts up to n frames of the caller's on tx queue q (no copy: the host reads them from the
 * caller's memory until it is done with them) and kicks the host if it sleeps. Returns how
 * many were taken: fewer than n when the ring is full, or at a buffer not inside a registered
 * region or of length 0 (that one and the rest are not taken). Their cookies come back from
 * nmx_pv_zc_tx_reclaim. 0 on a queue not set up for zero copy, or a broken device. */
uint16_t nmx_pv_zc_tx_burst(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_buf* bufs, uint16_t n);

/* Up to n cookies of tx queue q's frames the host is done with, in posting order (frames
 * nmx_pv_tx_burst copied have none: their slots are freed without a cookie). Returns how
 * many. */
uint16_t nmx_pv_zc_tx_reclaim(struct nmx_pv_dev* dev, uint32_t q, void** cookies, uint16_t n);

/* Empty ring slots of zero-copy rx queue q (what nmx_pv_zc_rx_post takes at most). */
uint32_t nmx_pv_zc_rx_room(struct nmx_pv_dev* dev, uint32_t q);

/* Posts up to n empty buffers of the caller's on rx queue q and kicks the host if it sleeps.
 * Returns how many were taken (fewer when the ring is full, or at a buffer not inside a
 * registered region or of length 0: that one and the rest are not taken). */
uint16_t nmx_pv_zc_rx_post(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_buf* bufs, uint16_t n);

/* Up to n filled buffers of rx queue q, in posting order: pkts[i].cookie is the posted
 * buffer's, len its frame's bytes (clamped to the buffer's length: never more than posted),
 * data its address (from the region's addr), the results in flags, rss_hash, mark. The
 * buffers are the caller's again; their slots take new ones (nmx_pv_zc_rx_post). */
uint16_t nmx_pv_zc_rx_burst(struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_pkt* pkts, uint16_t n);

/* Sleeps until queue pair q has work (a received frame, or a tx buffer finished while some are
 * outstanding) or timeout_ms passes (-1: no limit). > 0: work or woken; 0: timeout; < 0: an
 * error (the pair is not set up, the device is broken). */
int nmx_pv_wait(struct nmx_pv_dev* dev, uint32_t q, int timeout_ms);

/* nmx_pv_wait in pieces, for one thread sleeping on several pairs (poll() on several irq fds):
 * arm asks the host for irqs on pair q (NMX_PV_DRIVER_WANTS_IRQ on both its rings) and then
 * checks for work: > 0 means work is already there (do not sleep; disarm), 0 means sleep on
 * nmx_pv_irq_fd(q) (POLLIN). disarm clears the requests and drains the fd. */
int nmx_pv_irq_fd(const struct nmx_pv_dev* dev, uint32_t q);
int nmx_pv_irq_arm(struct nmx_pv_dev* dev, uint32_t q);
void nmx_pv_irq_disarm(struct nmx_pv_dev* dev, uint32_t q);

/* The library's own counters of queue pair q (each written by the queue's thread; read from
 * any). */
struct nmx_pv_queue_counters {
  uint64_t tx_dropped;     /* frames tx_burst took but could not send: empty, or > buf_size */
  uint64_t tx_kicks;       /* kicks after posting tx (the host slept) */
  uint64_t rx_kicks;       /* kicks after reposting rx buffers */
  uint64_t rx_len_clamped; /* received lengths beyond the buffer (a host bug), clamped */
};
int nmx_pv_queue_counters_get(const struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_queue_counters* c);

#ifdef __cplusplus
}
#endif

#endif /* NICMUX_PV_GUEST_NICMUX_PV_H */
