/* net_nicmux_pv: a DPDK 22.11 poll-mode driver for a pvdev (docs/pv-protocol.md), over the
 * driver-side library src/pv/guest/nicmux_pv.h. Loaded into an unmodified DPDK application:
 *
 *   dpdk-testpmd -d librte_net_nicmux_pv.so --vdev net_nicmux_pv0,socket=/run/p0.sock -- -i
 *
 * (nicmuxd serving `--port pv:p0:socket=/run/p0.sock`). Everything the application asks of the
 * device goes to nicmuxd through the library's control calls, and what the device can do is
 * what nicmuxd announces (GET_INFO): queues, ring size, MTU range, MAC, link, tx and rx
 * offloads. A request nicmuxd refuses fails with nicmuxd's reason in the log and its errno.
 *
 * Data path: zero copy where the EAL's memory has file descriptors, else one copy each way.
 *   Zero copy (devarg zerocopy=1, the default): at the first queue setup each memseg list
 *       whose pages are one file (--in-memory --single-file-segments with hugepages, or
 *       --no-huge: a memfd) is registered with nicmuxd (MEM_ADD), and nicmuxd copies straight
 *       from and into the application's mbufs: the only copy of a frame is nicmuxd's.
 *       rx: empty mbufs of the queue's mempool are posted as the ring's buffers (the library
 *       keeps each as the slot's cookie) and handed up filled (data_len = pkt_len = the frame's
 *       length, clamped to the mbuf), the ring refilled from the mempool. Used when the whole
 *       mempool lies in registered memory and its mbufs hold a frame of the device's MTU.
 *       tx: a flat mbuf in registered memory is posted as it is and freed when nicmuxd's done
 *       passes it (the library hands the mbuf back as the slot's cookie).
 *   Copy (zerocopy=0, memory without fds, or what zero copy cannot take):
 *       rx: the library hands out frames in the region's rx buffers; each is copied into an mbuf
 *       of the queue's mempool (chained across mbufs when it is longer than one mbuf's data
 *       room and the application enabled SCATTER; otherwise dropped and counted in ierrors),
 *       then the buffers go back to nicmuxd at once (nmx_pv_rx_done).
 *       tx: the library copies each frame into a tx buffer of the region; a chained mbuf is
 *       first made flat in the queue's scratch buffer. The mbufs the library took are freed.
 *   Which mode each queue uses is logged at dev_start when it changes.
 *
 * Threads: ethdev's rules are the library's: control ops from one thread, each queue's burst
 * function from the one lcore that polls it. Counters the data path writes are single-writer
 * and read with relaxed atomics; stats_reset only moves baselines, so no two threads write one
 * word.
 *
 * Primary process only (the region and the doorbells are this process's fds).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <bus_pci_driver.h>
#include <bus_vdev_driver.h>
#include <ethdev_driver.h>
#include <ethdev_pci.h>
#include <ethdev_vdev.h>
#include <rte_alarm.h>
#include <rte_ether.h>
#include <rte_kvargs.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_mempool.h>
#include <rte_errno.h>
#include <rte_fbarray.h>
#include <rte_flow.h>
#include <rte_flow_driver.h>
#include <sys/queue.h>

#include "pv/guest/nicmux_pv.h"

#define PV_ARG_SOCKET "socket"
#define PV_ARG_ZEROCOPY "zerocopy"
#define PV_BURST 32 /* frames per library call */
#define PV_REFILL 32 /* zero copy rx: post mbufs once this many slots are empty */
/* ethdev's overhead of a frame over the MTU (max_rx_pktlen - max_mtu): Ethernet header, FCS. */
#define PV_FRAME_OVERHEAD (RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN)

RTE_LOG_REGISTER(nicmux_pv_logtype, pmd.net.nicmux_pv, NOTICE);
#define PV_LOG(level, fmt, ...) \
  rte_log(RTE_LOG_##level, nicmux_pv_logtype, "net_nicmux_pv: " fmt "\n", ##__VA_ARGS__)

static const char* const pv_valid_args[] = {PV_ARG_SOCKET, PV_ARG_ZEROCOPY, NULL};

/* A counter with one writer (the queue's lcore) and readers elsewhere. */
static inline uint64_t ctr_get(const uint64_t* c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }
static inline void ctr_add(uint64_t* c, uint64_t n) {
  __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* The memory registered with nicmuxd: the application's addresses of each region. Written at
 * the first queue setup (the device stopped), read by the data path. */
struct pv_region {
  uintptr_t va;
  uint64_t len;
  uint16_t id;
};
struct pv_mem_table {
  uint32_t n;
  struct pv_region r[NMX_PV_MAX_MEM_REGIONS];
};

/* The registered region holding [va, va + len) (the last hit first): 1 with its id and va's
 * offset in it, else 0. */
static inline int pv_mem_lookup(const struct pv_mem_table* t, uintptr_t va, uint64_t len, uint32_t* hint,
                                uint16_t* id, uint64_t* off) {
  uint32_t i = *hint;
  if (i >= t->n || va < t->r[i].va || va - t->r[i].va > t->r[i].len || len > t->r[i].len - (va - t->r[i].va)) {
    for (i = 0; i < t->n; ++i) {
      const struct pv_region* r = &t->r[i];
      if (va >= r->va && va - r->va <= r->len && len <= r->len - (va - r->va)) break;
    }
    if (i == t->n) return 0;
    *hint = i;
  }
  *id = t->r[i].id;
  *off = va - t->r[i].va;
  return 1;
}

struct pv_rx_queue {
  struct nmx_pv_dev* pv;
  const struct pv_mem_table* mem; /* the device's registered memory */
  uint16_t qid;
  uint16_t port_id;
  int scatter;           /* chain frames longer than one mbuf */
  uint32_t room;         /* each mbuf's data room after its headroom */
  struct rte_mempool* mp;
  int pv_ready;          /* nmx_pv_queue_setup done since the last CONFIGURE */
  int zc;                /* zero copy: the ring's buffers are mbufs of mp */
  uint32_t unused;       /* zero copy: ring slots left empty (ring_size - the nb_desc asked) */
  uint32_t mem_hint;
  /* Written by the data path only. */
  uint64_t nombuf;       /* frames dropped: no mbuf */
  uint64_t too_long;     /* frames dropped: longer than an mbuf without SCATTER */
  uint64_t dropped_bytes;
  uint64_t alloc_failed; /* zero copy: refills that found the mempool empty */
};

struct pv_tx_queue {
  struct nmx_pv_dev* pv;
  const struct pv_mem_table* mem;
  uint16_t qid;
  uint16_t requests;     /* NMX_PV_DESC_* requests of the offloads configured */
  uint32_t buf_size;     /* the longest frame a tx buffer holds */
  uint8_t* flat;         /* buf_size bytes: a chained mbuf made flat */
  int pv_ready;
  int zc;                /* zero copy: flat mbufs in registered memory are posted as they are */
  uint32_t mem_hint;
  uint64_t too_long;     /* chains longer than buf_size, dropped (written by the data path) */
};

/* A flow rule nicmuxd made (FLOW_CREATE): its id there. */
struct rte_flow {
  TAILQ_ENTRY(rte_flow) next;
  uint32_t id;
};
TAILQ_HEAD(pv_flow_list, rte_flow);

struct pv_internals {
  struct pv_flow_list flows; /* what nicmuxd holds for this device */
  char flow_err[256];        /* the last rte_flow error's text (rte_flow_error.message) */
  struct nmx_pv_dev* pv;
  char socket[256];
  int zerocopy;            /* devarg zerocopy= (default 1) */
  int pci;                 /* the VM transport (net_nicmux_pv_pci) */
  int mem_tried;           /* registration done (once per device) */
  struct pv_mem_table mem; /* what was registered */
  char copy_why[160];      /* why there is no registered memory ("" when there is) */
  char mode_logged[256];   /* the mode line last logged */
  struct nmx_pv_info info; /* the last GET_INFO */
  int events;              /* nmx_pv_events() when info was read */
  /* Link state change events (intr_conf.lsc): the alarm's on/off switch (atomic: the
   * application's thread sets it, the EAL's interrupt thread reads it), and what the alarm saw
   * last (its thread only). */
  int lsc_on;
  int lsc_events, lsc_connected;
  /* stats_reset's baselines of the counters that cannot be reset. */
  uint64_t base_rx_nombuf[NMX_PV_MAX_QUEUE_PAIRS], base_rx_too_long[NMX_PV_MAX_QUEUE_PAIRS],
      base_rx_alloc_failed[NMX_PV_MAX_QUEUE_PAIRS],
      base_rx_dropped_bytes[NMX_PV_MAX_QUEUE_PAIRS], base_tx_dropped[NMX_PV_MAX_QUEUE_PAIRS],
      base_tx_too_long[NMX_PV_MAX_QUEUE_PAIRS];
};

static struct pv_internals* priv(struct rte_eth_dev* dev) { return dev->data->dev_private; }
static void pv_flow_forget(struct pv_internals* in);

/* GET_INFO into the cache. */
static int pv_read_info(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  /* Read the event number first: a change after it makes the next check read again. */
  const int ev = nmx_pv_events(in->pv);
  struct nmx_pv_info info;
  const int rc = nmx_pv_get_info(in->pv, &info);
  if (rc < 0) {
    PV_LOG(ERR, "port %u: GET_INFO failed: %s", dev->data->port_id, nmx_pv_strerror(in->pv));
    return rc;
  }
  in->info = info;
  in->events = ev;
  return 0;
}

/* The cached info, read again when nicmuxd announced a change (event_seq: the uplink came,
 * went or renegotiated, so the offloads or the link speed may differ). */
static int pv_fresh_info(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  if (nmx_pv_events(in->pv) == in->events) return 0;
  PV_LOG(INFO, "port %u: nicmuxd announced a link or capability change; reading the device info again",
         dev->data->port_id);
  return pv_read_info(dev);
}

/* ---- offload maps --------------------------------------------------------------------------- */

static const struct {
  uint64_t pv, eth;
} pv_tx_map[] = {
    {NMX_PV_TX_IPV4_CKSUM, RTE_ETH_TX_OFFLOAD_IPV4_CKSUM},
    {NMX_PV_TX_TCP_CKSUM, RTE_ETH_TX_OFFLOAD_TCP_CKSUM},
    {NMX_PV_TX_UDP_CKSUM, RTE_ETH_TX_OFFLOAD_UDP_CKSUM},
    {NMX_PV_TX_TCP_TSO, RTE_ETH_TX_OFFLOAD_TCP_TSO},
},
  pv_rx_map[] = {
      {NMX_PV_RX_IPV4_CKSUM, RTE_ETH_RX_OFFLOAD_IPV4_CKSUM},
      {NMX_PV_RX_TCP_CKSUM, RTE_ETH_RX_OFFLOAD_TCP_CKSUM},
      {NMX_PV_RX_UDP_CKSUM, RTE_ETH_RX_OFFLOAD_UDP_CKSUM},
      {NMX_PV_RX_RSS_HASH, RTE_ETH_RX_OFFLOAD_RSS_HASH},
};

/* The PMD's own: chains on tx (made flat here) and on rx (built here). nicmuxd never sees them. */
#define PV_TX_LOCAL RTE_ETH_TX_OFFLOAD_MULTI_SEGS
#define PV_RX_LOCAL RTE_ETH_RX_OFFLOAD_SCATTER

static uint64_t pv_tx_to_eth(uint64_t pv) {
  uint64_t e = 0;
  for (size_t i = 0; i < RTE_DIM(pv_tx_map); ++i)
    if (pv & pv_tx_map[i].pv) e |= pv_tx_map[i].eth;
  return e;
}
static uint64_t pv_rx_to_eth(uint64_t pv) {
  uint64_t e = 0;
  for (size_t i = 0; i < RTE_DIM(pv_rx_map); ++i)
    if (pv & pv_rx_map[i].pv) e |= pv_rx_map[i].eth;
  return e;
}
/* ethdev has already refused offloads outside dev_infos_get's capabilities, so an unmapped bit
 * cannot reach here; it is passed on as a bit nicmuxd will name rather than dropped. */
static uint64_t pv_tx_from_eth(uint64_t eth) {
  uint64_t p = 0;
  for (size_t i = 0; i < RTE_DIM(pv_tx_map); ++i)
    if (eth & pv_tx_map[i].eth) p |= pv_tx_map[i].pv;
  return p;
}
static uint64_t pv_rx_from_eth(uint64_t eth) {
  uint64_t p = 0;
  for (size_t i = 0; i < RTE_DIM(pv_rx_map); ++i)
    if (eth & pv_rx_map[i].eth) p |= pv_rx_map[i].pv;
  return p;
}

/* The descriptor requests the configured tx offloads allow. */
static uint16_t pv_tx_requests(uint64_t eth) {
  uint16_t r = 0;
  if (eth & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) r |= NMX_PV_DESC_IP_CKSUM;
  if (eth & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) r |= NMX_PV_DESC_TCP_CKSUM;
  if (eth & RTE_ETH_TX_OFFLOAD_UDP_CKSUM) r |= NMX_PV_DESC_UDP_CKSUM;
  if (eth & RTE_ETH_TX_OFFLOAD_TCP_TSO) r |= NMX_PV_DESC_TSO;
  return r;
}

/* ---- data path ------------------------------------------------------------------------------ */

/* The results nicmuxd wrote into the descriptor, as mbuf flags. L4_GOOD means the L4 checksum
 * is right (the sender's was verified, or nicmuxd completed it). Nothing is said of the IPv4
 * header's: UNKNOWN (no flag). */
static inline void pv_rx_results(struct rte_mbuf* m, const struct nmx_pv_pkt* p) {
  if (p->flags & NMX_PV_DESC_L4_GOOD) m->ol_flags |= RTE_MBUF_F_RX_L4_CKSUM_GOOD;
  if (p->flags & NMX_PV_DESC_RSS) {
    m->ol_flags |= RTE_MBUF_F_RX_RSS_HASH;
    m->hash.rss = p->rss_hash;
  }
  if (p->flags & NMX_PV_DESC_MARK) {
    m->ol_flags |= RTE_MBUF_F_RX_FDIR | RTE_MBUF_F_RX_FDIR_ID;
    m->hash.fdir.hi = p->mark;
  }
}

/* One received frame into a new mbuf (a chain with SCATTER); NULL when dropped (counted). */
static struct rte_mbuf* pv_rx_copy(struct pv_rx_queue* q, const struct nmx_pv_pkt* p) {
  if (p->len > q->room && !q->scatter) {
    ctr_add(&q->too_long, 1);
    ctr_add(&q->dropped_bytes, p->len);
    return NULL;
  }
  struct rte_mbuf* head = rte_pktmbuf_alloc(q->mp);
  if (head == NULL) goto nombuf;
  const uint8_t* src = p->data;
  uint32_t left = p->len;
  struct rte_mbuf* m = head;
  for (;;) {
    const uint32_t n = left < q->room ? left : q->room;
    rte_memcpy(rte_pktmbuf_mtod(m, void*), src, n);
    m->data_len = (uint16_t)n;
    src += n;
    left -= n;
    if (left == 0) break;
    struct rte_mbuf* next = rte_pktmbuf_alloc(q->mp);
    if (next == NULL) {
      rte_pktmbuf_free(head);
      goto nombuf;
    }
    m->next = next;
    head->nb_segs++;
    m = next;
  }
  head->pkt_len = p->len;
  head->port = q->port_id;
  pv_rx_results(head, p);
  return head;
nombuf:
  ctr_add(&q->nombuf, 1);
  ctr_add(&q->dropped_bytes, p->len);
  return NULL;
}

/* Zero copy: posts empty mbufs of the queue's mempool in the ring's empty slots, as many as
 * the application's nb_desc allows (all of them with `all`, else once PV_REFILL are empty). */
static void pv_rx_refill(struct pv_rx_queue* q, int all) {
  const uint32_t room = nmx_pv_zc_rx_room(q->pv, q->qid);
  uint32_t empty = room > q->unused ? room - q->unused : 0;
  if (empty < (all ? 1u : PV_REFILL)) return;
  while (empty > 0) {
    struct rte_mbuf* m[2 * PV_BURST];
    struct nmx_pv_buf b[2 * PV_BURST];
    const uint16_t k = (uint16_t)RTE_MIN(empty, 2u * PV_BURST);
    if (rte_pktmbuf_alloc_bulk(q->mp, m, k) != 0) {
      ctr_add(&q->alloc_failed, 1); /* the host counts the frames that found no buffer */
      return;
    }
    uint16_t n = 0;
    for (; n < k; ++n) {
      /* After rte_pktmbuf_alloc: data_off is the headroom, one segment. */
      const uintptr_t va = (uintptr_t)m[n]->buf_addr + m[n]->data_off;
      const uint32_t cap = (uint32_t)m[n]->buf_len - m[n]->data_off;
      uint64_t off;
      uint16_t id;
      if (!pv_mem_lookup(q->mem, va, cap, &q->mem_hint, &id, &off)) break; /* cannot be: the pool was checked */
      memset(&b[n], 0, sizeof b[n]);
      b[n].offset = off;
      b[n].len = cap;
      b[n].region = id;
      b[n].cookie = m[n];
    }
    const uint16_t took = nmx_pv_zc_rx_post(q->pv, q->qid, b, n);
    if (took < k) rte_pktmbuf_free_bulk(&m[took], k - took);
    if (took < k) return;
    empty -= k;
  }
}

static uint16_t pv_rx_burst_zc(struct pv_rx_queue* q, struct rte_mbuf** bufs, uint16_t nb) {
  struct nmx_pv_pkt pkts[PV_BURST];
  uint16_t got = 0;
  while (got < nb) {
    const uint16_t want = (uint16_t)RTE_MIN(nb - got, PV_BURST);
    const uint16_t n = nmx_pv_zc_rx_burst(q->pv, q->qid, pkts, want);
    for (uint16_t i = 0; i < n; ++i) {
      struct rte_mbuf* m = pkts[i].cookie;
      /* The library clamped the length to what was posted: the mbuf's room (<= UINT16_MAX). */
      m->data_len = (uint16_t)pkts[i].len;
      m->pkt_len = pkts[i].len;
      m->port = q->port_id;
      pv_rx_results(m, &pkts[i]);
      bufs[got++] = m;
    }
    if (n < want) break;
  }
  pv_rx_refill(q, 0);
  return got;
}

static uint16_t pv_rx_burst(void* queue, struct rte_mbuf** bufs, uint16_t nb) {
  struct pv_rx_queue* q = queue;
  if (q->zc) return pv_rx_burst_zc(q, bufs, nb);
  struct nmx_pv_pkt pkts[PV_BURST];
  uint16_t got = 0;
  while (got < nb) {
    const uint16_t want = (uint16_t)RTE_MIN(nb - got, PV_BURST);
    const uint16_t n = nmx_pv_rx_burst(q->pv, q->qid, pkts, want);
    if (n == 0) break;
    for (uint16_t i = 0; i < n; ++i) {
      struct rte_mbuf* m = pv_rx_copy(q, &pkts[i]);
      if (m) bufs[got++] = m;
    }
    /* Copied: the buffers go back now (a frame we dropped is gone as on a NIC out of mbufs). */
    nmx_pv_rx_done(q->pv, q->qid, n);
    if (n < want) break;
  }
  return got;
}

/* An mbuf's tx requests as descriptor fields. Only offloads the application configured are
 * passed (a NIC ignores requests for offloads it was not asked to do; nicmuxd would drop the
 * frame as bad_offload). RTE_MBUF_F_TX_L4_MASK is a 2-bit field: compared with ==. */
static void pv_tx_fill(const struct pv_tx_queue* q, const struct rte_mbuf* m, struct nmx_pv_pkt* p) {
  const uint64_t f = m->ol_flags;
  uint16_t r = 0;
  if (f & RTE_MBUF_F_TX_TCP_SEG) {
    r |= NMX_PV_DESC_TSO | NMX_PV_DESC_TCP_CKSUM; /* TCP_SEG implies the TCP checksum */
  } else {
    const uint64_t l4 = f & RTE_MBUF_F_TX_L4_MASK;
    if (l4 == RTE_MBUF_F_TX_TCP_CKSUM) r |= NMX_PV_DESC_TCP_CKSUM;
    else if (l4 == RTE_MBUF_F_TX_UDP_CKSUM) r |= NMX_PV_DESC_UDP_CKSUM;
  }
  if (f & RTE_MBUF_F_TX_IP_CKSUM) r |= NMX_PV_DESC_IP_CKSUM;
  /* TSO needs the TCP checksum as well: configured TSO without TCP_CKSUM still sums. */
  uint16_t allowed = q->requests;
  if (allowed & NMX_PV_DESC_TSO) allowed |= NMX_PV_DESC_TCP_CKSUM;
  r &= allowed;
  if (r != 0) {
    /* The IP version is required with any request (DPDK's rule too). IP_CKSUM alone says IPv4. */
    if (f & RTE_MBUF_F_TX_IPV4) r |= NMX_PV_DESC_IPV4;
    else if (f & RTE_MBUF_F_TX_IPV6) r |= NMX_PV_DESC_IPV6;
    else if (r == NMX_PV_DESC_IP_CKSUM) r |= NMX_PV_DESC_IPV4;
    else r = 0; /* no way to know: sent as it is */
  }
  p->flags = r;
  p->l2_len = (uint8_t)m->l2_len;
  p->l3_len = (uint16_t)m->l3_len;
  p->l4_len = (uint8_t)m->l4_len;
  p->tso_segsz = (r & NMX_PV_DESC_TSO) ? m->tso_segsz : 0;
}

/* Zero copy: frees the mbufs nicmuxd is done with. */
static void pv_tx_reclaim(struct pv_tx_queue* q) {
  void* done[2 * PV_BURST];
  uint16_t n;
  do {
    n = nmx_pv_zc_tx_reclaim(q->pv, q->qid, done, RTE_DIM(done));
    if (n) rte_pktmbuf_free_bulk((struct rte_mbuf**)done, n);
  } while (n == RTE_DIM(done));
}

/* Zero copy: posts the run of flat mbufs in registered memory at bufs (up to nb); returns how
 * many were taken, *stop set when the ring is full. */
static uint16_t pv_tx_zc_run(struct pv_tx_queue* q, struct rte_mbuf** bufs, uint16_t nb, int* stop) {
  struct nmx_pv_buf zb[PV_BURST];
  uint16_t k = 0;
  while (k < PV_BURST && k < nb) {
    struct rte_mbuf* m = bufs[k];
    uint16_t id;
    uint64_t off;
    if (m->nb_segs != 1 || m->data_len == 0 ||
        !pv_mem_lookup(q->mem, rte_pktmbuf_mtod(m, uintptr_t), m->data_len, &q->mem_hint, &id, &off)) {
      break;
    }
    struct nmx_pv_pkt p;
    memset(&p, 0, sizeof p);
    pv_tx_fill(q, m, &p);
    memset(&zb[k], 0, sizeof zb[k]);
    zb[k].offset = off;
    zb[k].len = m->data_len;
    zb[k].region = id;
    zb[k].flags = p.flags;
    zb[k].l2_len = p.l2_len;
    zb[k].l3_len = p.l3_len;
    zb[k].l4_len = p.l4_len;
    zb[k].tso_segsz = p.tso_segsz;
    zb[k].cookie = m;
    ++k;
  }
  if (k == 0) return 0;
  const uint16_t took = nmx_pv_zc_tx_burst(q->pv, q->qid, zb, k);
  if (took < k) *stop = 1;
  return took;
}

static uint16_t pv_tx_burst(void* queue, struct rte_mbuf** bufs, uint16_t nb) {
  struct pv_tx_queue* q = queue;
  struct nmx_pv_pkt pkts[PV_BURST];
  uint16_t sent = 0;
  if (q->zc) pv_tx_reclaim(q);
  while (sent < nb) {
    if (q->zc) {
      int stop = 0;
      const uint16_t took = pv_tx_zc_run(q, &bufs[sent], (uint16_t)(nb - sent), &stop);
      sent += took;
      if (stop) break;
      if (took > 0) continue;
      /* bufs[sent] is not for zero copy (a chain, empty, outside registered memory): copied. */
    }
    /* A run of flat mbufs: the library copies them straight from the mbufs (zero copy: one). */
    uint16_t k = 0;
    const uint16_t run = q->zc ? 1 : PV_BURST;
    while (k < run && sent + k < nb && bufs[sent + k]->nb_segs == 1) {
      struct rte_mbuf* m = bufs[sent + k];
      memset(&pkts[k], 0, sizeof pkts[k]);
      pkts[k].data = rte_pktmbuf_mtod(m, void*);
      pkts[k].len = m->data_len;
      pv_tx_fill(q, m, &pkts[k]);
      ++k;
    }
    if (k > 0) {
      /* Taken = sent, or dropped by the library (empty, longer than a buffer: its tx_dropped). */
      const uint16_t took = nmx_pv_tx_burst(q->pv, q->qid, pkts, k);
      rte_pktmbuf_free_bulk(&bufs[sent], took);
      sent += took;
      if (took < k) break; /* the ring is full */
      continue;
    }
    /* A chain: made flat in the scratch buffer, then one frame. */
    struct rte_mbuf* m = bufs[sent];
    if (m->pkt_len > q->buf_size) {
      ctr_add(&q->too_long, 1);
      rte_pktmbuf_free(m);
      ++sent;
      continue;
    }
    if (nmx_pv_tx_free(q->pv, q->qid) == 0) break;
    memset(&pkts[0], 0, sizeof pkts[0]);
    pkts[0].data = (void*)(uintptr_t)rte_pktmbuf_read(m, 0, m->pkt_len, q->flat);
    pkts[0].len = m->pkt_len;
    pv_tx_fill(q, m, &pkts[0]);
    if (nmx_pv_tx_burst(q->pv, q->qid, pkts, 1) == 0) break;
    rte_pktmbuf_free(m);
    ++sent;
  }
  return sent;
}

/* ---- control ops ---------------------------------------------------------------------------- */

/* Logs a refused or failed control call with the library's text (nicmuxd's reason when it
 * refused) and returns its errno. */
static int pv_fail(struct rte_eth_dev* dev, const char* what, int rc) {
  struct pv_internals* in = priv(dev);
  PV_LOG(ERR, "port %u: %s: %s", dev->data->port_id, what, in->pv ? nmx_pv_strerror(in->pv) : "device closed");
  return rc;
}

static int pv_dev_infos_get(struct rte_eth_dev* dev, struct rte_eth_dev_info* di) {
  struct pv_internals* in = priv(dev);
  const int rc = pv_fresh_info(dev);
  if (rc < 0) return rc;
  const struct nmx_pv_info* info = &in->info;
  di->max_rx_queues = (uint16_t)info->max_rx_queues;
  di->max_tx_queues = (uint16_t)info->max_tx_queues;
  di->max_mac_addrs = 1;
  di->min_mtu = (uint16_t)info->min_mtu;
  di->max_mtu = (uint16_t)RTE_MIN(info->max_mtu, (uint32_t)UINT16_MAX);
  /* The longest frame an rx buffer holds; nicmuxd's max_mtu is buf_size - 18, so ethdev's
   * overhead (max_rx_pktlen - max_mtu) is the Ethernet header and FCS. */
  di->max_rx_pktlen = info->max_mtu + RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
  di->min_rx_bufsize = RTE_ETHER_MIN_LEN;
  /* Each ring holds ring_size descriptors whatever the application asks; a smaller request
   * gets the whole ring in copy mode (the library posts every rx buffer of the region), and
   * nb_desc mbufs posted in zero copy. */
  di->rx_desc_lim.nb_max = (uint16_t)info->ring_size;
  di->rx_desc_lim.nb_min = (uint16_t)RTE_MIN(NMX_PV_MIN_RING, info->ring_size);
  di->rx_desc_lim.nb_align = 1;
  di->tx_desc_lim = di->rx_desc_lim;
  di->tx_desc_lim.nb_seg_max = UINT16_MAX;
  di->tx_desc_lim.nb_mtu_seg_max = UINT16_MAX;
  di->default_rxportconf.ring_size = (uint16_t)info->ring_size;
  di->default_txportconf.ring_size = (uint16_t)info->ring_size;
  di->default_rxportconf.burst_size = PV_BURST;
  di->default_txportconf.burst_size = PV_BURST;
  di->default_rxportconf.nb_queues = 1;
  di->default_txportconf.nb_queues = 1;
  di->tx_offload_capa = pv_tx_to_eth(info->tx_offloads) | PV_TX_LOCAL;
  di->rx_offload_capa = pv_rx_to_eth(info->rx_offloads) | PV_RX_LOCAL;
  di->tx_queue_offload_capa = 0; /* per port: nicmuxd configures the device as a whole */
  di->rx_queue_offload_capa = 0;
  di->speed_capa = RTE_ETH_LINK_SPEED_FIXED;
  /* Flow rules (nicmuxd's) survive stop and start; CONFIGURE drops them. */
  if (info->flow_items) di->dev_capa |= RTE_ETH_DEV_CAPA_FLOW_RULE_KEEP;
  return 0;
}

/* Zero copy: frees the mbufs a queue the library no longer runs still held (none in copy
 * mode). */
static void pv_take_back(struct pv_internals* in, uint16_t qid, uint32_t dir) {
  void* cookies[2 * PV_BURST];
  int n;
  if (in->pv == NULL) return;
  while ((n = nmx_pv_queue_take_back(in->pv, qid, dir, cookies, RTE_DIM(cookies))) > 0) {
    rte_pktmbuf_free_bulk((struct rte_mbuf**)cookies, (unsigned)n);
  }
}

/* The memseg lists whose pages are one file: each a region to register. */
struct pv_mem_walk {
  struct {
    int fd;
    uint64_t offset, len;
    uintptr_t va;
  } found[NMX_PV_MAX_MEM_REGIONS];
  uint32_t n;
  char why[160]; /* why the first list left out was */
};

static int pv_msl_walk(const struct rte_memseg_list* msl, void* arg) {
  struct pv_mem_walk* w = arg;
  if (msl->external || msl->memseg_arr.count == 0) return 0;
  /* The pages in use, first to last (a region may hold holes: nicmuxd only touches what
   * descriptors name, and they name mbufs). */
  struct rte_fbarray* arr = (struct rte_fbarray*)(uintptr_t)&msl->memseg_arr;
  const int first = rte_fbarray_find_next_used(arr, 0);
  const int last = rte_fbarray_find_prev_used(arr, arr->len - 1);
  if (first < 0 || last < first) return 0;
  const struct rte_memseg* a = rte_fbarray_get(arr, (unsigned)first);
  const struct rte_memseg* b = rte_fbarray_get(arr, (unsigned)last);
  size_t off_a, off_b;
  const int fd = rte_memseg_get_fd_thread_unsafe(a);
  if (fd < 0 || rte_memseg_get_fd_offset_thread_unsafe(a, &off_a) < 0) {
    if (!w->why[0]) {
      snprintf(w->why, sizeof w->why, "the EAL's memory has no file descriptors (%s): run with --in-memory "
               "--single-file-segments, or --no-huge", rte_strerror(rte_errno));
    }
    return 0;
  }
  const uintptr_t va = (uintptr_t)a->addr;
  const uint64_t len = (uintptr_t)b->addr + b->len - va;
  /* One file for the whole range, laid out as the addresses are (single-file segments). */
  if (rte_memseg_get_fd_thread_unsafe(b) != fd || rte_memseg_get_fd_offset_thread_unsafe(b, &off_b) < 0 ||
      off_b - off_a != (uintptr_t)b->addr - va) {
    if (!w->why[0]) {
      snprintf(w->why, sizeof w->why, "the EAL's pages are one file each (run with --single-file-segments)");
    }
    return 0;
  }
  if (w->n == RTE_DIM(w->found)) return 0;
  w->found[w->n].fd = fd;
  w->found[w->n].offset = off_a;
  w->found[w->n].len = len;
  w->found[w->n].va = va;
  ++w->n;
  return 0;
}

/* Registers the EAL's memory with nicmuxd, once per device, before its first queue is set up
 * (the device is stopped then). What cannot be registered leaves the device in copy mode, with
 * the reason kept for the log. */
static void pv_mem_register(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->mem_tried || in->pv == NULL) return;
  in->mem_tried = 1;
  if (in->pci) {
    snprintf(in->copy_why, sizeof in->copy_why, "the VM transport (PCI) has no registered memory");
    return;
  }
  if (!in->zerocopy) {
    snprintf(in->copy_why, sizeof in->copy_why, "zerocopy=0");
    return;
  }
  if (!(nmx_pv_features(in->pv) & NMX_PV_FEATURE_MEM_REGIONS)) {
    snprintf(in->copy_why, sizeof in->copy_why, "nicmuxd does not offer registered memory");
    return;
  }
  struct pv_mem_walk w;
  memset(&w, 0, sizeof w);
  rte_memseg_list_walk(pv_msl_walk, &w);
  for (uint32_t i = 0; i < w.n; ++i) {
    const int id = nmx_pv_mem_add(in->pv, w.found[i].fd, w.found[i].offset, w.found[i].len, (void*)w.found[i].va);
    if (id < 0) {
      PV_LOG(WARNING, "port %u: registering %" PRIu64 " MB of memory at %p: %s", dev->data->port_id,
             w.found[i].len >> 20, (void*)w.found[i].va, nmx_pv_strerror(in->pv));
      if (!w.why[0]) snprintf(w.why, sizeof w.why, "nicmuxd refused the memory: %s", nmx_pv_strerror(in->pv));
      continue;
    }
    struct pv_region* r = &in->mem.r[in->mem.n++];
    r->va = w.found[i].va;
    r->len = w.found[i].len;
    r->id = (uint16_t)id;
  }
  if (in->mem.n == 0) snprintf(in->copy_why, sizeof in->copy_why, "%s", w.why[0] ? w.why : "no memory to register");
}

static int pv_rxq_want_zc(struct rte_eth_dev* dev, const struct pv_rx_queue* q, char* why, size_t n);

/* Logs each queue's mode when it differs from what was logged last. */
static void pv_log_mode(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  char line[256];
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < in->mem.n; ++i) bytes += in->mem.r[i].len;
  unsigned rx_zc = 0, rx_copy = 0, tx_zc = 0, tx_copy = 0;
  char why[160] = "";
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) {
    const struct pv_rx_queue* q = dev->data->rx_queues[i];
    if (q == NULL) continue;
    if (q->zc) {
      ++rx_zc;
    } else {
      ++rx_copy;
      if (!why[0]) pv_rxq_want_zc(dev, q, why, sizeof why);
    }
  }
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) {
    const struct pv_tx_queue* q = dev->data->tx_queues[i];
    if (q) q->zc ? ++tx_zc : ++tx_copy;
  }
  if (rx_copy == 0 && tx_copy == 0) {
    snprintf(line, sizeof line, "zero copy: %u regions (%" PRIu64 " MB) registered with nicmuxd, %u rx and %u tx queues",
             in->mem.n, bytes >> 20, rx_zc, tx_zc);
  } else if (rx_zc == 0 && tx_zc == 0) {
    snprintf(line, sizeof line, "copy mode: %s", why[0] ? why : in->copy_why);
  } else {
    snprintf(line, sizeof line, "zero copy on %u rx and %u tx queues, copy on %u rx and %u tx queues: %s", rx_zc,
             tx_zc, rx_copy, tx_copy, why);
  }
  if (strcmp(line, in->mode_logged) == 0) return;
  snprintf(in->mode_logged, sizeof in->mode_logged, "%s", line);
  PV_LOG(NOTICE, "port %u: %s", dev->data->port_id, line);
}

static int pv_dev_configure(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  const struct rte_eth_conf* c = &dev->data->dev_conf;
  if (in->pv == NULL) return -ENODEV;
  struct nmx_pv_configure conf;
  memset(&conf, 0, sizeof conf);
  conf.nb_rx_queues = dev->data->nb_rx_queues;
  conf.nb_tx_queues = dev->data->nb_tx_queues;
  conf.tx_offloads = pv_tx_from_eth(c->txmode.offloads & ~(uint64_t)PV_TX_LOCAL);
  conf.rx_offloads = pv_rx_from_eth(c->rxmode.offloads & ~(uint64_t)PV_RX_LOCAL);
  /* A TSO frame carries a TCP checksum request too (pv_tx_fill), which nicmuxd accepts only
   * when TCP_CKSUM is configured: DPDK's TCP_TSO implies it. */
  if (conf.tx_offloads & NMX_PV_TX_TCP_TSO) conf.tx_offloads |= NMX_PV_TX_TCP_CKSUM;
  conf.mtu = dev->data->mtu; /* ethdev set it from rxmode.mtu (1500 by default) and checked it */
  if (c->rxmode.mq_mode != RTE_ETH_MQ_RX_NONE && c->rxmode.mq_mode != RTE_ETH_MQ_RX_RSS) {
    PV_LOG(ERR, "port %u: rx mq_mode %d is not supported", dev->data->port_id, c->rxmode.mq_mode);
    return -ENOTSUP;
  }
  const int rc = nmx_pv_configure(in->pv, &conf);
  if (rc < 0) {
    /* nicmuxd's reason, e.g. "CONFIGURE refused by the host: CONFIGURE: tx offload tcp_tso is
     * not offered (uplink: none) (Operation not supported)". The capabilities may have changed
     * since the application read them: the next dev_infos_get reads them again. */
    in->events = ~nmx_pv_events(in->pv);
    return pv_fail(dev, "configure refused", rc);
  }
  /* nicmuxd forgets every queue and every flow rule on CONFIGURE: queues are set up again
   * (queue setup or start); the application makes its rules again. */
  pv_flow_forget(in);
  /* Zero copy: the mbufs the forgotten queues held are ours again. */
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) {
    struct pv_rx_queue* q = dev->data->rx_queues[i];
    if (q) q->pv_ready = 0;
    if (q) pv_take_back(in, i, NMX_PV_QUEUE_RX);
  }
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) {
    struct pv_tx_queue* q = dev->data->tx_queues[i];
    if (q) q->pv_ready = 0;
    if (q) pv_take_back(in, i, NMX_PV_QUEUE_TX);
  }
  return 0;
}

/* Zero copy rx for queue q? 1, or 0 with why. */
struct pv_pool_check {
  const struct pv_mem_table* mem;
  int outside;
};
static void pv_pool_chunk(struct rte_mempool* mp, void* opaque, struct rte_mempool_memhdr* memhdr, unsigned idx) {
  struct pv_pool_check* c = opaque;
  uint32_t hint = 0;
  uint16_t id;
  uint64_t off;
  (void)mp;
  (void)idx;
  if (!pv_mem_lookup(c->mem, (uintptr_t)memhdr->addr, memhdr->len, &hint, &id, &off)) c->outside = 1;
}
static int pv_rxq_want_zc(struct rte_eth_dev* dev, const struct pv_rx_queue* q, char* why, size_t n) {
  struct pv_internals* in = priv(dev);
  if (in->mem.n == 0) {
    snprintf(why, n, "%s", in->copy_why);
    return 0;
  }
  const uint32_t frame = (uint32_t)dev->data->mtu + PV_FRAME_OVERHEAD;
  if (q->room < frame) {
    snprintf(why, n, "its mbufs hold %u bytes, less than a frame of MTU %u (%u)", q->room, dev->data->mtu, frame);
    return 0;
  }
  struct pv_pool_check c = {.mem = &in->mem, .outside = 0};
  rte_mempool_mem_iter(q->mp, pv_pool_chunk, &c);
  if (c.outside) {
    snprintf(why, n, "mempool %s lies outside the registered memory", q->mp->name);
    return 0;
  }
  return 1;
}

static int pv_rxq_setup_pv(struct rte_eth_dev* dev, struct pv_rx_queue* q) {
  struct pv_internals* in = priv(dev);
  char why[160];
  const int zc = pv_rxq_want_zc(dev, q, why, sizeof why);
  const int rc = nmx_pv_queue_setup_ex(in->pv, q->qid, NMX_PV_QUEUE_RX, zc ? NMX_PV_QUEUE_ZEROCOPY : 0);
  if (rc < 0) return pv_fail(dev, "rx queue setup", rc);
  q->zc = zc;
  q->pv_ready = 1;
  if (zc) pv_rx_refill(q, 1); /* every slot an mbuf (as far as the mempool has them) */
  return 0;
}
static int pv_txq_setup_pv(struct rte_eth_dev* dev, struct pv_tx_queue* q) {
  struct pv_internals* in = priv(dev);
  const int zc = in->mem.n > 0;
  const int rc = nmx_pv_queue_setup_ex(in->pv, q->qid, NMX_PV_QUEUE_TX, zc ? NMX_PV_QUEUE_ZEROCOPY : 0);
  if (rc < 0) return pv_fail(dev, "tx queue setup", rc);
  q->zc = zc;
  q->pv_ready = 1;
  return 0;
}

static void pv_rx_queue_release(struct rte_eth_dev* dev, uint16_t qid) {
  struct pv_internals* in = priv(dev);
  struct pv_rx_queue* q = dev->data->rx_queues[qid];
  if (q == NULL) return;
  /* nicmuxd may have forgotten it already (CONFIGURE); its refusal then changes nothing. */
  if (q->pv_ready && in->pv && nmx_pv_queue_release(in->pv, qid, NMX_PV_QUEUE_RX) < 0)
    PV_LOG(DEBUG, "port %u: rx queue %u release: %s", dev->data->port_id, qid, nmx_pv_strerror(in->pv));
  pv_take_back(in, qid, NMX_PV_QUEUE_RX);
  rte_free(q);
  dev->data->rx_queues[qid] = NULL;
}

static void pv_tx_queue_release(struct rte_eth_dev* dev, uint16_t qid) {
  struct pv_internals* in = priv(dev);
  struct pv_tx_queue* q = dev->data->tx_queues[qid];
  if (q == NULL) return;
  if (q->pv_ready && in->pv && nmx_pv_queue_release(in->pv, qid, NMX_PV_QUEUE_TX) < 0)
    PV_LOG(DEBUG, "port %u: tx queue %u release: %s", dev->data->port_id, qid, nmx_pv_strerror(in->pv));
  pv_take_back(in, qid, NMX_PV_QUEUE_TX);
  rte_free(q->flat);
  rte_free(q);
  dev->data->tx_queues[qid] = NULL;
}

static int pv_rx_queue_setup(struct rte_eth_dev* dev, uint16_t qid, uint16_t nb_desc, unsigned int socket_id,
                             const struct rte_eth_rxconf* conf, struct rte_mempool* mp) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  if (nb_desc < in->info.ring_size)
    PV_LOG(DEBUG, "port %u: rx queue %u: %u descriptors asked, the ring has %u", dev->data->port_id, qid, nb_desc,
           in->info.ring_size);
  const uint32_t room = rte_pktmbuf_data_room_size(mp);
  if (room <= RTE_PKTMBUF_HEADROOM) {
    PV_LOG(ERR, "port %u: rx queue %u: the mempool's mbufs have no data room past the headroom",
           dev->data->port_id, qid);
    return -EINVAL;
  }
  pv_mem_register(dev);
  struct pv_rx_queue* q = rte_zmalloc_socket("nicmux_pv_rxq", sizeof *q, RTE_CACHE_LINE_SIZE, (int)socket_id);
  if (q == NULL) return -ENOMEM;
  q->pv = in->pv;
  q->mem = &in->mem;
  q->qid = qid;
  q->port_id = dev->data->port_id;
  q->mp = mp;
  q->room = room - RTE_PKTMBUF_HEADROOM;
  /* Zero copy holds nb_desc mbufs in the ring (copy mode posts the device's own buffers). */
  q->unused = in->info.ring_size - RTE_MIN((uint32_t)nb_desc, in->info.ring_size);
  q->scatter = ((dev->data->dev_conf.rxmode.offloads | conf->offloads) & RTE_ETH_RX_OFFLOAD_SCATTER) != 0;
  /* ethdev released a previous queue qid before calling us. */
  const int rc = pv_rxq_setup_pv(dev, q);
  if (rc < 0) {
    rte_free(q);
    return rc;
  }
  dev->data->rx_queues[qid] = q;
  return 0;
}

static int pv_tx_queue_setup(struct rte_eth_dev* dev, uint16_t qid, uint16_t nb_desc, unsigned int socket_id,
                             const struct rte_eth_txconf* conf) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  (void)nb_desc;
  pv_mem_register(dev);
  struct pv_tx_queue* q = rte_zmalloc_socket("nicmux_pv_txq", sizeof *q, RTE_CACHE_LINE_SIZE, (int)socket_id);
  if (q == NULL) return -ENOMEM;
  q->pv = in->pv;
  q->mem = &in->mem;
  q->qid = qid;
  q->buf_size = nmx_pv_buf_size(in->pv);
  q->requests = pv_tx_requests(dev->data->dev_conf.txmode.offloads | conf->offloads);
  q->flat = rte_malloc_socket("nicmux_pv_flat", q->buf_size, RTE_CACHE_LINE_SIZE, (int)socket_id);
  if (q->flat == NULL) {
    rte_free(q);
    return -ENOMEM;
  }
  const int rc = pv_txq_setup_pv(dev, q);
  if (rc < 0) {
    rte_free(q->flat);
    rte_free(q);
    return rc;
  }
  dev->data->tx_queues[qid] = q;
  return 0;
}

/* The link as nicmuxd reports it (LINK_GET), and down while the port is stopped or nicmuxd is
 * gone; 0, or -errno when nicmuxd is there but LINK_GET failed (link then says down). From the
 * LSC alarm (`watch`: the EAL's interrupt thread) LINK_GET is nmx_pv_link_poll: it never waits
 * behind another thread's control call (-EBUSY), waits PV_LSC_TIMEOUT_MS at most, and leaves
 * the error text alone. Nothing here writes the device's private state. */
#define PV_LSC_TIMEOUT_MS 100
static int pv_link_now(struct rte_eth_dev* dev, struct rte_eth_link* link, int watch) {
  struct pv_internals* in = priv(dev);
  memset(link, 0, sizeof *link);
  link->link_duplex = RTE_ETH_LINK_FULL_DUPLEX;
  link->link_autoneg = RTE_ETH_LINK_FIXED;
  link->link_speed = RTE_ETH_SPEED_NUM_UNKNOWN;
  if (in->pv == NULL || !nmx_pv_connected(in->pv)) return 0;
  struct nmx_pv_link l;
  const int rc = watch ? nmx_pv_link_poll(in->pv, &l, PV_LSC_TIMEOUT_MS) : nmx_pv_link_get(in->pv, &l);
  if (rc < 0) {
    if (!watch) PV_LOG(DEBUG, "port %u: LINK_GET: %s", dev->data->port_id, nmx_pv_strerror(in->pv));
    return rc;
  }
  link->link_status = (l.up && dev->data->dev_started) ? RTE_ETH_LINK_UP : RTE_ETH_LINK_DOWN;
  if (l.speed_mbps) link->link_speed = l.speed_mbps;
  return 0;
}

static int pv_link_update(struct rte_eth_dev* dev, int wait_to_complete) {
  struct pv_internals* in = priv(dev);
  (void)wait_to_complete; /* the answer is immediate */
  if (in->pv && nmx_pv_connected(in->pv)) (void)pv_fresh_info(dev); /* a capability change is noticed here at the latest */
  struct rte_eth_link link;
  (void)pv_link_now(dev, &link, 0);
  return rte_eth_linkstatus_set(dev, &link);
}

/* Link state change events. nicmuxd announces a change of the link or the capabilities by
 * moving the mailbox's event_seq (and ringing the control doorbell, which the library's
 * control calls wait on), and leaves by closing the socket or marking the region gone. The
 * PMD looks at both every PV_LSC_PERIOD_US on an EAL alarm (two memory reads and a poll(2) of
 * the socket, no message) and, when something moved, asks LINK_GET: a link that changed
 * (status, speed or duplex) is stored and RTE_ETH_EVENT_INTR_LSC raised. With lsc on,
 * ethdev's rte_eth_link_get answers from what is stored, so the alarm also keeps the speed
 * current. A LINK_GET that fails (another thread's control call runs, no answer within
 * PV_LSC_TIMEOUT_MS) changes nothing and is asked again at the next tick. An alarm rather than
 * the control doorbell's eventfd: the library's control calls drain that fd while they wait,
 * and the VM transport (polling) has none.
 *
 * The application's LSC callback runs on this thread: it may stop and close the port (the
 * alarm touches nothing of the device after the callbacks), but it must not wait for a lock
 * that the application holds around rte_eth_dev_stop or close (those wait for a running
 * alarm: the usual DPDK rule for interrupt-thread callbacks). */
#define PV_LSC_PERIOD_US 100000

static void pv_lsc_alarm(void* arg) {
  struct rte_eth_dev* dev = arg;
  struct pv_internals* in = priv(dev);
  if (!__atomic_load_n(&in->lsc_on, __ATOMIC_ACQUIRE) || in->pv == NULL) return;
  const uint16_t port = dev->data->port_id;
  const int ev = nmx_pv_events(in->pv);
  const int conn = nmx_pv_connected(in->pv);
  int changed = 0;
  struct rte_eth_link link;
  if ((ev != in->lsc_events || conn != in->lsc_connected) && pv_link_now(dev, &link, 1) == 0) {
    in->lsc_events = ev;
    in->lsc_connected = conn;
    struct rte_eth_link old;
    rte_eth_linkstatus_get(dev, &old);
    /* rte_eth_linkstatus_set says "changed" for the status only: speed and duplex count too. */
    changed = old.link_status != link.link_status || old.link_speed != link.link_speed ||
              old.link_duplex != link.link_duplex;
    rte_eth_linkstatus_set(dev, &link);
  }
  /* The next tick is set before the callbacks run: one that stops or closes the port cancels
   * it from here (a cancel inside an alarm removes the pending ones), and nothing below reads
   * the device. */
  const int rc = rte_eal_alarm_set(PV_LSC_PERIOD_US, pv_lsc_alarm, dev);
  if (rc < 0) PV_LOG(ERR, "port %u: no more link state change events: rte_eal_alarm_set: %s", port, strerror(-rc));
  if (changed) {
    PV_LOG(NOTICE, "port %u: link %s, %u Mbit/s%s", port, link.link_status ? "up" : "down", link.link_speed,
           conn ? "" : " (nicmuxd is gone)");
    rte_eth_dev_callback_process(dev, RTE_ETH_EVENT_INTR_LSC, NULL);
  }
}

/* Called before the link is first read at dev_start: whatever moves after this is seen. */
static void pv_lsc_snapshot(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return;
  in->lsc_events = nmx_pv_events(in->pv);
  in->lsc_connected = nmx_pv_connected(in->pv);
}

/* dev_start fails when it cannot arm the alarm: with lsc on, ethdev would answer the stored
 * link for ever. */
static int pv_lsc_start(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (!dev->data->dev_conf.intr_conf.lsc || in->pv == NULL || __atomic_load_n(&in->lsc_on, __ATOMIC_ACQUIRE)) return 0;
  __atomic_store_n(&in->lsc_on, 1, __ATOMIC_RELEASE);
  const int rc = rte_eal_alarm_set(PV_LSC_PERIOD_US, pv_lsc_alarm, dev);
  if (rc < 0) {
    __atomic_store_n(&in->lsc_on, 0, __ATOMIC_RELEASE);
    PV_LOG(ERR, "port %u: no link state change events: rte_eal_alarm_set: %s", dev->data->port_id, strerror(-rc));
  }
  return rc;
}

/* From another thread: returns once no alarm runs or is pending (rte_eal_alarm_cancel waits
 * for a running one, and removes the tick it set). From the application's LSC callback (on the
 * alarm's thread): removes the pending tick; the running alarm reads nothing after it. */
static void pv_lsc_stop(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  __atomic_store_n(&in->lsc_on, 0, __ATOMIC_RELEASE);
  rte_eal_alarm_cancel(pv_lsc_alarm, dev);
}

static int pv_dev_stop(struct rte_eth_dev* dev);

static int pv_dev_start(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  if (!nmx_pv_connected(in->pv)) {
    PV_LOG(ERR, "port %u: nicmuxd closed the connection (%s): the device is gone", dev->data->port_id, in->socket);
    return -ENOTCONN;
  }
  int rc;
  pv_mem_register(dev);
  /* An rx queue whose mode no longer fits (the MTU grew past its mbufs) is set up again. */
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) {
    struct pv_rx_queue* q = dev->data->rx_queues[i];
    char why[160];
    if (q == NULL || !q->pv_ready || q->zc == pv_rxq_want_zc(dev, q, why, sizeof why)) continue;
    if ((rc = nmx_pv_queue_release(in->pv, i, NMX_PV_QUEUE_RX)) < 0) return pv_fail(dev, "rx queue release", rc);
    q->pv_ready = 0;
    pv_take_back(in, i, NMX_PV_QUEUE_RX);
  }
  /* Queues set up before a reconfigure are set up again at nicmuxd (it forgot them). */
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) {
    struct pv_rx_queue* q = dev->data->rx_queues[i];
    if (q && !q->pv_ready && (rc = pv_rxq_setup_pv(dev, q)) < 0) return rc;
  }
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) {
    struct pv_tx_queue* q = dev->data->tx_queues[i];
    if (q && !q->pv_ready && (rc = pv_txq_setup_pv(dev, q)) < 0) return rc;
  }
  pv_log_mode(dev);
  rc = nmx_pv_start(in->pv);
  if (rc < 0) return pv_fail(dev, "start refused", rc);
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) dev->data->rx_queue_state[i] = RTE_ETH_QUEUE_STATE_STARTED;
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) dev->data->tx_queue_state[i] = RTE_ETH_QUEUE_STATE_STARTED;
  dev->data->dev_started = 1; /* for link_update; ethdev sets it too */
  pv_lsc_snapshot(dev);
  pv_link_update(dev, 0);
  if ((rc = pv_lsc_start(dev)) < 0) {
    pv_dev_stop(dev);
    return rc;
  }
  return 0;
}

static int pv_dev_stop(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  pv_lsc_stop(dev);
  dev->data->dev_started = 0;
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) dev->data->rx_queue_state[i] = RTE_ETH_QUEUE_STATE_STOPPED;
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) dev->data->tx_queue_state[i] = RTE_ETH_QUEUE_STATE_STOPPED;
  struct rte_eth_link down;
  memset(&down, 0, sizeof down);
  down.link_speed = RTE_ETH_SPEED_NUM_UNKNOWN;
  down.link_duplex = RTE_ETH_LINK_FULL_DUPLEX;
  rte_eth_linkstatus_set(dev, &down);
  if (in->pv == NULL || !nmx_pv_connected(in->pv)) return 0; /* nothing is running at nicmuxd */
  const int rc = nmx_pv_stop(in->pv);
  return rc < 0 ? pv_fail(dev, "stop", rc) : 0;
}

static int pv_dev_close(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (rte_eal_process_type() != RTE_PROC_PRIMARY) return 0;
  pv_lsc_stop(dev); /* before the device goes: the alarm reads it */
  /* Over PCI no socket closes to tell nicmuxd: a device removed while started (rte_dev_remove,
   * the EAL's cleanup) is stopped first, so nicmuxd stops filling its rings. */
  if (dev->data->dev_started) pv_dev_stop(dev);
  for (uint16_t i = 0; i < dev->data->nb_rx_queues; ++i) pv_rx_queue_release(dev, i);
  for (uint16_t i = 0; i < dev->data->nb_tx_queues; ++i) pv_tx_queue_release(dev, i);
  /* Closing the connection stops the device at nicmuxd and frees its region. */
  nmx_pv_close(in->pv);
  in->pv = NULL;
  pv_flow_forget(in); /* nicmuxd dropped the rules with the connection */
  /* mac_addrs (rte_zmalloc'd) and dev_private are freed by rte_eth_dev_release_port. */
  return 0;
}

static int pv_stats_get(struct rte_eth_dev* dev, struct rte_eth_stats* st) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  struct nmx_pv_stats s;
  const int rc = nmx_pv_stats_get(in->pv, &s);
  if (rc < 0) return pv_fail(dev, "stats", rc);
  /* nicmuxd's view: rx = frames it put in our rx rings, tx = frames it took from the tx rings.
   * Frames this PMD dropped after receiving them (no mbuf, too long) are not the
   * application's: subtracted from ipackets and counted in rx_nombuf / ierrors. */
  uint64_t nombuf = 0, too_long = 0;
  for (uint32_t i = 0; i < s.nb_rx_queues && i < NMX_PV_MAX_QUEUE_PAIRS; ++i) {
    const struct pv_rx_queue* q = i < dev->data->nb_rx_queues ? dev->data->rx_queues[i] : NULL;
    uint64_t dp = 0, db = 0;
    if (q) {
      /* Zero copy: refills that found the mempool empty (no frame is dropped here: nicmuxd
       * counts those that found no buffer, imissed). */
      nombuf += ctr_get(&q->alloc_failed) - in->base_rx_alloc_failed[i];
      const uint64_t a = ctr_get(&q->nombuf) - in->base_rx_nombuf[i], b = ctr_get(&q->too_long) - in->base_rx_too_long[i];
      nombuf += a;
      too_long += b;
      dp = a + b;
      db = ctr_get(&q->dropped_bytes) - in->base_rx_dropped_bytes[i];
    }
    const uint64_t pk = s.rx[i].packets > dp ? s.rx[i].packets - dp : 0;
    const uint64_t by = s.rx[i].bytes > db ? s.rx[i].bytes - db : 0;
    st->ipackets += pk;
    st->ibytes += by;
    if (i < RTE_ETHDEV_QUEUE_STAT_CNTRS) {
      st->q_ipackets[i] = pk;
      st->q_ibytes[i] = by;
    }
  }
  uint64_t oerr = 0;
  for (uint32_t i = 0; i < s.nb_tx_queues && i < NMX_PV_MAX_QUEUE_PAIRS; ++i) {
    st->opackets += s.tx[i].packets;
    st->obytes += s.tx[i].bytes;
    if (i < RTE_ETHDEV_QUEUE_STAT_CNTRS) {
      st->q_opackets[i] = s.tx[i].packets;
      st->q_obytes[i] = s.tx[i].bytes;
    }
    const struct pv_tx_queue* q = i < dev->data->nb_tx_queues ? dev->data->tx_queues[i] : NULL;
    struct nmx_pv_queue_counters c;
    if (nmx_pv_queue_counters_get(in->pv, i, &c) == 0) oerr += c.tx_dropped - in->base_tx_dropped[i];
    if (q) oerr += ctr_get(&q->too_long) - in->base_tx_too_long[i];
  }
  st->imissed = s.rx_no_buffers; /* nicmuxd had a frame and no posted rx buffer */
  st->ierrors = too_long;
  st->rx_nombuf = nombuf;
  st->oerrors = oerr;
  return 0;
}

static int pv_stats_reset(struct rte_eth_dev* dev) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  const int rc = nmx_pv_stats_reset(in->pv);
  if (rc < 0) return pv_fail(dev, "stats reset", rc);
  for (uint32_t i = 0; i < NMX_PV_MAX_QUEUE_PAIRS; ++i) {
    const struct pv_rx_queue* rq = i < dev->data->nb_rx_queues ? dev->data->rx_queues[i] : NULL;
    const struct pv_tx_queue* tq = i < dev->data->nb_tx_queues ? dev->data->tx_queues[i] : NULL;
    in->base_rx_nombuf[i] = rq ? ctr_get(&rq->nombuf) : 0;
    in->base_rx_alloc_failed[i] = rq ? ctr_get(&rq->alloc_failed) : 0;
    in->base_rx_too_long[i] = rq ? ctr_get(&rq->too_long) : 0;
    in->base_rx_dropped_bytes[i] = rq ? ctr_get(&rq->dropped_bytes) : 0;
    in->base_tx_too_long[i] = tq ? ctr_get(&tq->too_long) : 0;
    struct nmx_pv_queue_counters c;
    in->base_tx_dropped[i] = nmx_pv_queue_counters_get(in->pv, i, &c) == 0 ? c.tx_dropped : 0;
  }
  return 0;
}

static int pv_mtu_set(struct rte_eth_dev* dev, uint16_t mtu) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  /* Zero-copy rx buffers are the mbufs: while started, a frame of the new MTU must fit them
   * (stopped, dev_start sets such a queue up again in copy mode). */
  for (uint16_t i = 0; dev->data->dev_started && i < dev->data->nb_rx_queues; ++i) {
    const struct pv_rx_queue* q = dev->data->rx_queues[i];
    if (q && q->zc && q->room < (uint32_t)mtu + PV_FRAME_OVERHEAD) {
      PV_LOG(ERR, "port %u: MTU %u: rx queue %u's zero-copy mbufs hold %u bytes: stop the port first",
             dev->data->port_id, mtu, i, q->room);
      return -EBUSY;
    }
  }
  const int rc = nmx_pv_mtu_set(in->pv, mtu);
  return rc < 0 ? pv_fail(dev, "mtu set refused", rc) : 0;
}

static int pv_mac_addr_set(struct rte_eth_dev* dev, struct rte_ether_addr* addr) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  const int rc = nmx_pv_mac_set(in->pv, addr->addr_bytes);
  return rc < 0 ? pv_fail(dev, "mac set refused", rc) : 0; /* ethdev copies it into mac_addrs */
}

static int pv_promisc(struct rte_eth_dev* dev, int on) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return -ENODEV;
  const int rc = nmx_pv_promisc_set(in->pv, on);
  return rc < 0 ? pv_fail(dev, on ? "promiscuous enable refused" : "promiscuous disable refused", rc) : 0;
}
static int pv_promiscuous_enable(struct rte_eth_dev* dev) { return pv_promisc(dev, 1); }
static int pv_promiscuous_disable(struct rte_eth_dev* dev) { return pv_promisc(dev, 0); }

/* ---- rte_flow ------------------------------------------------------------------------------- *
 * Rules go to nicmuxd (FLOW_VALIDATE/CREATE/DESTROY/FLUSH), which applies them in software to
 * the frames it puts in this device's rx rings. The translation takes what the wire can say
 * (struct nmx_pv_flow_rule: eth/vlan/ipv4/ipv6/tcp/udp, queue/drop/mark/rss) and refuses the
 * rest with a reason; then what nicmuxd announced in GET_INFO (flow_items, flow_actions,
 * flow_fields, flow_rss_types, flow_rss_queues) bounds it, so that what the application is told
 * is what nicmuxd does; nicmuxd checks every rule again and its refusal comes back as the error's
 * message. */

static int pv_flow_fail(struct pv_internals* in, struct rte_flow_error* e, int code, enum rte_flow_error_type type,
                        const void* cause, const char* f, ...) __attribute__((format(printf, 6, 7)));
static int pv_flow_fail(struct pv_internals* in, struct rte_flow_error* e, int code, enum rte_flow_error_type type,
                        const void* cause, const char* f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(in->flow_err, sizeof in->flow_err, f, ap);
  va_end(ap);
  return rte_flow_error_set(e, code, type, cause, in->flow_err);
}

static int pv_mask_zero(const void* p, size_t n) {
  const uint8_t* b = p;
  for (size_t i = 0; i < n; ++i)
    if (b[i]) return 0;
  return 1;
}

static const char* pv_item_name(enum rte_flow_item_type t) {
  switch (t) {
    case RTE_FLOW_ITEM_TYPE_ETH: return "eth";
    case RTE_FLOW_ITEM_TYPE_VLAN: return "vlan";
    case RTE_FLOW_ITEM_TYPE_IPV4: return "ipv4";
    case RTE_FLOW_ITEM_TYPE_IPV6: return "ipv6";
    case RTE_FLOW_ITEM_TYPE_TCP: return "tcp";
    case RTE_FLOW_ITEM_TYPE_UDP: return "udp";
    case RTE_FLOW_ITEM_TYPE_SCTP: return "sctp";
    case RTE_FLOW_ITEM_TYPE_ICMP: return "icmp";
    case RTE_FLOW_ITEM_TYPE_VXLAN: return "vxlan";
    case RTE_FLOW_ITEM_TYPE_GRE: return "gre";
    case RTE_FLOW_ITEM_TYPE_RAW: return "raw";
    case RTE_FLOW_ITEM_TYPE_ANY: return "any";
    default: return "(another)";
  }
}

/* RTE_ETH_RSS_* -> NMX_PV_RSS_*; bits with no counterpart in *rest. */
static uint64_t pv_rss_types(uint64_t eth, uint64_t* rest) {
  static const struct {
    uint64_t eth, pv;
  } map[] = {
      {RTE_ETH_RSS_IPV4, NMX_PV_RSS_IPV4},
      {RTE_ETH_RSS_FRAG_IPV4, NMX_PV_RSS_IPV4},
      {RTE_ETH_RSS_NONFRAG_IPV4_OTHER, NMX_PV_RSS_IPV4},
      {RTE_ETH_RSS_NONFRAG_IPV4_TCP, NMX_PV_RSS_IPV4_TCP},
      {RTE_ETH_RSS_NONFRAG_IPV4_UDP, NMX_PV_RSS_IPV4_UDP},
      {RTE_ETH_RSS_IPV6, NMX_PV_RSS_IPV6},
      {RTE_ETH_RSS_FRAG_IPV6, NMX_PV_RSS_IPV6},
      {RTE_ETH_RSS_NONFRAG_IPV6_OTHER, NMX_PV_RSS_IPV6},
      {RTE_ETH_RSS_IPV6_EX, NMX_PV_RSS_IPV6},
      {RTE_ETH_RSS_NONFRAG_IPV6_TCP, NMX_PV_RSS_IPV6_TCP},
      {RTE_ETH_RSS_IPV6_TCP_EX, NMX_PV_RSS_IPV6_TCP},
      {RTE_ETH_RSS_NONFRAG_IPV6_UDP, NMX_PV_RSS_IPV6_UDP},
      {RTE_ETH_RSS_IPV6_UDP_EX, NMX_PV_RSS_IPV6_UDP},
  };
  uint64_t pv = 0, seen = 0;
  for (size_t i = 0; i < RTE_DIM(map); ++i) {
    if (eth & map[i].eth) {
      pv |= map[i].pv;
      seen |= map[i].eth;
    }
  }
  *rest = eth & ~seen;
  return pv;
}

/* attr/pattern/actions -> r; 0 or a negative errno with the error set. */
static int pv_flow_translate(struct rte_eth_dev* dev, const struct rte_flow_attr* attr,
                             const struct rte_flow_item items[], const struct rte_flow_action actions[],
                             struct nmx_pv_flow_rule* r, struct rte_flow_error* e) {
  struct pv_internals* in = priv(dev);
  const uint16_t port = dev->data->port_id;
  memset(r, 0, sizeof *r);
  if (in->pv == NULL) return pv_flow_fail(in, e, ENODEV, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL, "device closed");
  int rc = pv_fresh_info(dev);
  if (rc < 0) return pv_flow_fail(in, e, -rc, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL, "GET_INFO failed");
  const struct nmx_pv_info* info = &in->info;
  if (!(nmx_pv_features(in->pv) & NMX_PV_FEATURE_FLOWS) || info->flow_items == 0) {
    return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL,
                        "port %u: nicmuxd offers no flow rules on this device (its pv port has flows=0)", port);
  }
  if (attr == NULL) return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ATTR, NULL, "no attributes");
  if (!attr->ingress || attr->egress || attr->transfer) {
    return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ATTR, attr,
                        "only ingress rules (nicmuxd applies them to the frames it delivers to the device)");
  }
  if (attr->group) return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ATTR_GROUP, attr, "only group 0");
  r->priority = attr->priority;

  /* The pattern: eth, vlan, ipv4|ipv6, tcp|udp, in that order, each at most once. */
  int stage = 0;
  for (const struct rte_flow_item* it = items; it && it->type != RTE_FLOW_ITEM_TYPE_END; ++it) {
    if (it->type == RTE_FLOW_ITEM_TYPE_VOID) continue;
    uint32_t bit = 0;
    int at = 0;
    switch (it->type) {
      case RTE_FLOW_ITEM_TYPE_ETH: bit = NMX_PV_FLOW_ITEM_ETH, at = 1; break;
      case RTE_FLOW_ITEM_TYPE_VLAN: bit = NMX_PV_FLOW_ITEM_VLAN, at = 2; break;
      case RTE_FLOW_ITEM_TYPE_IPV4: bit = NMX_PV_FLOW_ITEM_IPV4, at = 3; break;
      case RTE_FLOW_ITEM_TYPE_IPV6: bit = NMX_PV_FLOW_ITEM_IPV6, at = 3; break;
      case RTE_FLOW_ITEM_TYPE_TCP: bit = NMX_PV_FLOW_ITEM_TCP, at = 4; break;
      case RTE_FLOW_ITEM_TYPE_UDP: bit = NMX_PV_FLOW_ITEM_UDP, at = 4; break;
      default:
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM, it,
                            "item %s (type %d) is not offered: nicmuxd matches eth, vlan, ipv4, ipv6, tcp, udp",
                            pv_item_name(it->type), (int)it->type);
    }
    const char* name = pv_item_name(it->type);
    if (!(info->flow_items & bit)) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM, it, "item %s is not offered by nicmuxd", name);
    }
    if (at <= stage) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM, it,
                          "item %s out of place: a pattern is eth / vlan / ipv4 or ipv6 / tcp or udp, each once", name);
    }
    stage = at;
    r->items |= bit;
    if (it->last) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_LAST, it, "item %s: ranges (last) are not offered",
                          name);
    }
    if (it->spec == NULL) continue; /* any frame of the protocol */
    struct nmx_pv_flow_fields* sp = &r->spec;
    struct nmx_pv_flow_fields* mk = &r->mask;
    int rest = 0; /* mask bits on fields the wire cannot carry */
    switch (it->type) {
      case RTE_FLOW_ITEM_TYPE_ETH: {
        const struct rte_flow_item_eth* s = it->spec;
        struct rte_flow_item_eth m = it->mask ? *(const struct rte_flow_item_eth*)it->mask : rte_flow_item_eth_mask;
        memcpy(sp->eth_dst, s->hdr.dst_addr.addr_bytes, 6);
        memcpy(sp->eth_src, s->hdr.src_addr.addr_bytes, 6);
        sp->eth_type = s->hdr.ether_type;
        memcpy(mk->eth_dst, m.hdr.dst_addr.addr_bytes, 6);
        memcpy(mk->eth_src, m.hdr.src_addr.addr_bytes, 6);
        mk->eth_type = m.hdr.ether_type;
        memset(&m.hdr, 0, sizeof m.hdr);
        rest = !pv_mask_zero(&m, sizeof m) ? 1 : 0; /* has_vlan */
        if (rest) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item eth: has_vlan is not offered (a vlan item asks for a tag)");
        }
        break;
      }
      case RTE_FLOW_ITEM_TYPE_VLAN: {
        const struct rte_flow_item_vlan* s = it->spec;
        struct rte_flow_item_vlan m = it->mask ? *(const struct rte_flow_item_vlan*)it->mask : rte_flow_item_vlan_mask;
        sp->vlan_tci = s->hdr.vlan_tci;
        sp->vlan_inner_type = s->hdr.eth_proto;
        mk->vlan_tci = m.hdr.vlan_tci;
        mk->vlan_inner_type = m.hdr.eth_proto;
        memset(&m.hdr, 0, sizeof m.hdr);
        if (!pv_mask_zero(&m, sizeof m)) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item vlan: has_more_vlan is not offered (nicmuxd matches tci and inner_type)");
        }
        break;
      }
      case RTE_FLOW_ITEM_TYPE_IPV4: {
        const struct rte_flow_item_ipv4* s = it->spec;
        struct rte_flow_item_ipv4 m = it->mask ? *(const struct rte_flow_item_ipv4*)it->mask : rte_flow_item_ipv4_mask;
        memcpy(sp->ip_src, &s->hdr.src_addr, 4);
        memcpy(sp->ip_dst, &s->hdr.dst_addr, 4);
        sp->ip_proto = s->hdr.next_proto_id;
        sp->ip_tos = s->hdr.type_of_service;
        memcpy(mk->ip_src, &m.hdr.src_addr, 4);
        memcpy(mk->ip_dst, &m.hdr.dst_addr, 4);
        mk->ip_proto = m.hdr.next_proto_id;
        mk->ip_tos = m.hdr.type_of_service;
        m.hdr.src_addr = m.hdr.dst_addr = 0;
        m.hdr.next_proto_id = m.hdr.type_of_service = 0;
        if (!pv_mask_zero(&m, sizeof m)) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item ipv4: nicmuxd matches src, dst, proto and tos only (the mask has bits elsewhere)");
        }
        break;
      }
      case RTE_FLOW_ITEM_TYPE_IPV6: {
        const struct rte_flow_item_ipv6* s = it->spec;
        struct rte_flow_item_ipv6 m = it->mask ? *(const struct rte_flow_item_ipv6*)it->mask : rte_flow_item_ipv6_mask;
        memcpy(sp->ip_src, s->hdr.src_addr, 16);
        memcpy(sp->ip_dst, s->hdr.dst_addr, 16);
        sp->ip_proto = s->hdr.proto;
        sp->ip_tos = (uint8_t)(rte_be_to_cpu_32(s->hdr.vtc_flow) >> 20);
        memcpy(mk->ip_src, m.hdr.src_addr, 16);
        memcpy(mk->ip_dst, m.hdr.dst_addr, 16);
        mk->ip_proto = m.hdr.proto;
        const uint32_t vtc = rte_be_to_cpu_32(m.hdr.vtc_flow);
        mk->ip_tos = (uint8_t)(vtc >> 20);
        memset(m.hdr.src_addr, 0, 16);
        memset(m.hdr.dst_addr, 0, 16);
        m.hdr.proto = 0;
        m.hdr.vtc_flow = rte_cpu_to_be_32(vtc & ~0x0ff00000u);
        if (!pv_mask_zero(&m, sizeof m)) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item ipv6: nicmuxd matches src, dst, proto and tc only (the mask has bits elsewhere)");
        }
        break;
      }
      case RTE_FLOW_ITEM_TYPE_TCP: {
        const struct rte_flow_item_tcp* s = it->spec;
        struct rte_flow_item_tcp m = it->mask ? *(const struct rte_flow_item_tcp*)it->mask : rte_flow_item_tcp_mask;
        sp->l4_src = s->hdr.src_port;
        sp->l4_dst = s->hdr.dst_port;
        mk->l4_src = m.hdr.src_port;
        mk->l4_dst = m.hdr.dst_port;
        m.hdr.src_port = m.hdr.dst_port = 0;
        if (!pv_mask_zero(&m, sizeof m)) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item tcp: nicmuxd matches src and dst ports only (flags, seq, ... are not offered)");
        }
        break;
      }
      case RTE_FLOW_ITEM_TYPE_UDP: {
        const struct rte_flow_item_udp* s = it->spec;
        struct rte_flow_item_udp m = it->mask ? *(const struct rte_flow_item_udp*)it->mask : rte_flow_item_udp_mask;
        sp->l4_src = s->hdr.src_port;
        sp->l4_dst = s->hdr.dst_port;
        mk->l4_src = m.hdr.src_port;
        mk->l4_dst = m.hdr.dst_port;
        m.hdr.src_port = m.hdr.dst_port = 0;
        if (!pv_mask_zero(&m, sizeof m)) {
          return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, it,
                              "item udp: nicmuxd matches src and dst ports only");
        }
        break;
      }
      default:
        break;
    }
  }
  /* What nicmuxd matches (GET_INFO's flow_fields): no mask bit outside it. */
  const uint8_t* mb = (const uint8_t*)&r->mask;
  for (size_t i = 0; i < sizeof r->mask; ++i) {
    if (mb[i] & ~info->flow_fields.bytes[i]) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM_MASK, NULL,
                          "nicmuxd does not match byte %zu of the flow fields (GET_INFO flow_fields)", i);
    }
  }
  if ((r->items & (NMX_PV_FLOW_ITEM_TCP | NMX_PV_FLOW_ITEM_UDP)) &&
      !(r->items & (NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_IPV6))) {
    return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ITEM, NULL, "a tcp or udp item needs an ipv4 or ipv6 item");
  }

  /* The actions. */
  for (const struct rte_flow_action* a = actions; a && a->type != RTE_FLOW_ACTION_TYPE_END; ++a) {
    uint32_t bit;
    const char* name;
    switch (a->type) {
      case RTE_FLOW_ACTION_TYPE_VOID: continue;
      case RTE_FLOW_ACTION_TYPE_QUEUE: bit = NMX_PV_FLOW_ACTION_QUEUE, name = "queue"; break;
      case RTE_FLOW_ACTION_TYPE_DROP: bit = NMX_PV_FLOW_ACTION_DROP, name = "drop"; break;
      case RTE_FLOW_ACTION_TYPE_MARK: bit = NMX_PV_FLOW_ACTION_MARK, name = "mark"; break;
      case RTE_FLOW_ACTION_TYPE_RSS: bit = NMX_PV_FLOW_ACTION_RSS, name = "rss"; break;
      default:
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION, a,
                            "action type %d is not offered: nicmuxd does queue, drop, mark, rss", (int)a->type);
    }
    if (!(info->flow_actions & bit)) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION, a, "action %s is not offered by nicmuxd", name);
    }
    if (r->actions & bit) {
      return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION, a, "action %s twice", name);
    }
    r->actions |= bit;
    if (a->conf == NULL && bit != NMX_PV_FLOW_ACTION_DROP) {
      return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a, "action %s without its conf", name);
    }
    if (bit == NMX_PV_FLOW_ACTION_QUEUE) {
      const struct rte_flow_action_queue* q = a->conf;
      if (q->index >= dev->data->nb_rx_queues) {
        return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                            "action queue %u: the port has %u rx queues", q->index, dev->data->nb_rx_queues);
      }
      r->queue = q->index;
    } else if (bit == NMX_PV_FLOW_ACTION_MARK) {
      r->mark = ((const struct rte_flow_action_mark*)a->conf)->id;
    } else if (bit == NMX_PV_FLOW_ACTION_RSS) {
      const struct rte_flow_action_rss* rss = a->conf;
      if (rss->func != RTE_ETH_HASH_FUNCTION_DEFAULT && rss->func != RTE_ETH_HASH_FUNCTION_TOEPLITZ) {
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a, "action rss: only the Toeplitz hash");
      }
      if (rss->level > 1) {
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                            "action rss: level %u (inner headers) is not offered", rss->level);
      }
      uint64_t rest;
      r->rss_types = pv_rss_types(rss->types, &rest);
      if (rest || (r->rss_types & ~info->flow_rss_types)) {
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                            "action rss: types 0x%" PRIx64 " are not offered (nicmuxd hashes ipv4, ipv6 and their "
                            "tcp and udp on addresses and ports)", rss->types);
      }
      if (rss->key_len != 0 && rss->key_len != NMX_PV_FLOW_RSS_KEY) {
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                            "action rss: a key of %u bytes (0 or %u)", rss->key_len, NMX_PV_FLOW_RSS_KEY);
      }
      if (rss->key_len) {
        if (rss->key == NULL) {
          return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a, "action rss: key_len without a key");
        }
        memcpy(r->rss_key, rss->key, NMX_PV_FLOW_RSS_KEY);
        r->rss_key_len = NMX_PV_FLOW_RSS_KEY;
      }
      const uint32_t most = RTE_MIN(info->flow_rss_queues, NMX_PV_FLOW_RSS_MAX_QUEUES);
      if (rss->queue_num < 1 || rss->queue_num > most || rss->queue == NULL) {
        return pv_flow_fail(in, e, ENOTSUP, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                            "action rss: %u queues (nicmuxd takes 1..%u)", rss->queue_num, most);
      }
      for (uint32_t i = 0; i < rss->queue_num; ++i) {
        if (rss->queue[i] >= dev->data->nb_rx_queues) {
          return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ACTION_CONF, a,
                              "action rss: queue %u: the port has %u rx queues", rss->queue[i],
                              dev->data->nb_rx_queues);
        }
        r->rss_queues[i] = rss->queue[i];
      }
      r->rss_queue_num = rss->queue_num;
    }
  }
  if (r->actions == 0) return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_ACTION_NUM, NULL, "no action");
  return 0;
}

/* nicmuxd's refusal as the error: its reason, its errno. */
static int pv_flow_host_fail(struct rte_eth_dev* dev, struct rte_flow_error* e, int rc) {
  struct pv_internals* in = priv(dev);
  PV_LOG(ERR, "port %u: flow rule refused: %s", dev->data->port_id, nmx_pv_strerror(in->pv));
  return pv_flow_fail(in, e, -rc, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL, "%s", nmx_pv_strerror(in->pv));
}

static int pv_flow_validate(struct rte_eth_dev* dev, const struct rte_flow_attr* attr,
                            const struct rte_flow_item items[], const struct rte_flow_action actions[],
                            struct rte_flow_error* e) {
  struct nmx_pv_flow_rule r;
  const int rc = pv_flow_translate(dev, attr, items, actions, &r, e);
  if (rc < 0) return rc;
  const int hr = nmx_pv_flow_validate(priv(dev)->pv, &r);
  return hr < 0 ? pv_flow_host_fail(dev, e, hr) : 0;
}

static struct rte_flow* pv_flow_create(struct rte_eth_dev* dev, const struct rte_flow_attr* attr,
                                       const struct rte_flow_item items[], const struct rte_flow_action actions[],
                                       struct rte_flow_error* e) {
  struct pv_internals* in = priv(dev);
  struct nmx_pv_flow_rule r;
  if (pv_flow_translate(dev, attr, items, actions, &r, e) < 0) return NULL;
  struct rte_flow* f = rte_zmalloc("nicmux_pv_flow", sizeof *f, 0);
  if (f == NULL) {
    pv_flow_fail(in, e, ENOMEM, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL, "no memory for the rule");
    return NULL;
  }
  const int rc = nmx_pv_flow_create(in->pv, &r, &f->id);
  if (rc < 0) {
    rte_free(f);
    pv_flow_host_fail(dev, e, rc);
    return NULL;
  }
  TAILQ_INSERT_TAIL(&in->flows, f, next);
  return f;
}

static int pv_flow_destroy(struct rte_eth_dev* dev, struct rte_flow* f, struct rte_flow_error* e) {
  struct pv_internals* in = priv(dev);
  struct rte_flow* x;
  TAILQ_FOREACH(x, &in->flows, next)
    if (x == f) break;
  if (x == NULL) return pv_flow_fail(in, e, EINVAL, RTE_FLOW_ERROR_TYPE_HANDLE, f, "not a rule of this port");
  const int rc = in->pv ? nmx_pv_flow_destroy(in->pv, f->id) : -ENODEV;
  /* -ENOENT: nicmuxd has forgotten it already (a reconfiguration): gone either way. */
  if (rc < 0 && rc != -ENOENT) return pv_flow_host_fail(dev, e, rc);
  TAILQ_REMOVE(&in->flows, f, next);
  rte_free(f);
  return 0;
}

/* The local records only (nicmuxd forgot the rules itself: CONFIGURE, close). */
static void pv_flow_forget(struct pv_internals* in) {
  struct rte_flow* f;
  while ((f = TAILQ_FIRST(&in->flows)) != NULL) {
    TAILQ_REMOVE(&in->flows, f, next);
    rte_free(f);
  }
}

static int pv_flow_flush(struct rte_eth_dev* dev, struct rte_flow_error* e) {
  struct pv_internals* in = priv(dev);
  if (in->pv == NULL) return pv_flow_fail(in, e, ENODEV, RTE_FLOW_ERROR_TYPE_UNSPECIFIED, NULL, "device closed");
  if (nmx_pv_features(in->pv) & NMX_PV_FEATURE_FLOWS) {
    const int rc = nmx_pv_flow_flush(in->pv);
    if (rc < 0) return pv_flow_host_fail(dev, e, rc);
  }
  pv_flow_forget(in);
  return 0;
}

static const struct rte_flow_ops pv_flow_ops = {
    .validate = pv_flow_validate,
    .create = pv_flow_create,
    .destroy = pv_flow_destroy,
    .flush = pv_flow_flush,
};

static int pv_flow_ops_get(struct rte_eth_dev* dev, const struct rte_flow_ops** ops) {
  (void)dev;
  *ops = &pv_flow_ops;
  return 0;
}

static const struct eth_dev_ops pv_ops = {
    .flow_ops_get = pv_flow_ops_get,
    .dev_configure = pv_dev_configure,
    .dev_start = pv_dev_start,
    .dev_stop = pv_dev_stop,
    .dev_close = pv_dev_close,
    .dev_infos_get = pv_dev_infos_get,
    .link_update = pv_link_update,
    .stats_get = pv_stats_get,
    .stats_reset = pv_stats_reset,
    .mtu_set = pv_mtu_set,
    .mac_addr_set = pv_mac_addr_set,
    .promiscuous_enable = pv_promiscuous_enable,
    .promiscuous_disable = pv_promiscuous_disable,
    .rx_queue_setup = pv_rx_queue_setup,
    .tx_queue_setup = pv_tx_queue_setup,
    .rx_queue_release = pv_rx_queue_release,
    .tx_queue_release = pv_tx_queue_release,
};

/* ---- probe and remove ----------------------------------------------------------------------- */

static int pv_arg_socket(const char* key, const char* value, void* opaque) {
  char* out = opaque;
  (void)key;
  if (value == NULL || value[0] == 0 || strlen(value) >= 256) return -EINVAL;
  snprintf(out, 256, "%s", value);
  return 0;
}

static int pv_arg_bool(const char* key, const char* value, void* opaque) {
  int* out = opaque;
  (void)key;
  if (value == NULL || (strcmp(value, "0") != 0 && strcmp(value, "1") != 0)) return -EINVAL;
  *out = value[0] == '1';
  return 0;
}

static int pv_eth_setup(struct rte_eth_dev* dev, struct nmx_pv_dev* pv, const char* name, const char* where,
                        int zerocopy);

static int pv_probe(struct rte_vdev_device* vdev) {
  const char* name = rte_vdev_device_name(vdev);
  const char* params = rte_vdev_device_args(vdev);
  if (rte_eal_process_type() != RTE_PROC_PRIMARY) {
    PV_LOG(ERR, "%s: secondary processes are not supported (the device's fds are the primary's)", name);
    return -ENOTSUP;
  }
  char socket[256] = "";
  int zerocopy = 1;
  struct rte_kvargs* kv = rte_kvargs_parse(params ? params : "", pv_valid_args);
  if (kv == NULL) {
    PV_LOG(ERR, "%s: cannot parse devargs '%s' (known: " PV_ARG_SOCKET "=PATH, " PV_ARG_ZEROCOPY "=0|1)", name,
           params ? params : "");
    return -EINVAL;
  }
  int rc = rte_kvargs_count(kv, PV_ARG_SOCKET) == 1 ? rte_kvargs_process(kv, PV_ARG_SOCKET, pv_arg_socket, socket) : -EINVAL;
  const int zrc = rte_kvargs_count(kv, PV_ARG_ZEROCOPY) <= 1
                      ? rte_kvargs_process(kv, PV_ARG_ZEROCOPY, pv_arg_bool, &zerocopy)
                      : -EINVAL;
  rte_kvargs_free(kv);
  if (rc < 0 || socket[0] == 0) {
    PV_LOG(ERR, "%s: needs exactly one " PV_ARG_SOCKET "=PATH (nicmuxd's pv port socket, under 256 bytes)", name);
    return -EINVAL;
  }
  if (zrc < 0) {
    PV_LOG(ERR, "%s: " PV_ARG_ZEROCOPY "= takes 0 or 1", name);
    return -EINVAL;
  }

  char err[256] = "";
  struct nmx_pv_dev* pv = nmx_pv_open(socket, err, sizeof err);
  if (pv == NULL) {
    PV_LOG(ERR, "%s: cannot open the pv device at %s: %s", name, socket, err);
    return -ENODEV;
  }
  if (vdev->device.numa_node == SOCKET_ID_ANY) vdev->device.numa_node = (int)rte_socket_id();
  struct rte_eth_dev* dev = rte_eth_vdev_allocate(vdev, sizeof(struct pv_internals));
  if (dev == NULL) {
    nmx_pv_close(pv);
    return -ENOMEM;
  }
  return pv_eth_setup(dev, pv, name, socket, zerocopy);
}

/* A new ethdev (allocated, private data zeroed) over the opened device pv: its ops, info, MAC
 * and flags, then probing finished. `where` names the device in messages: the socket, or the
 * PCI address. On failure the device is closed and the port released. */
static int pv_eth_setup(struct rte_eth_dev* dev, struct nmx_pv_dev* pv, const char* name, const char* where,
                        int zerocopy) {
  int rc;
  struct pv_internals* in = priv(dev);
  in->pv = pv;
  in->zerocopy = zerocopy;
  TAILQ_INIT(&in->flows);
  snprintf(in->socket, sizeof in->socket, "%s", where);
  dev->dev_ops = &pv_ops;
  if ((rc = pv_read_info(dev)) < 0) goto fail;
  dev->data->mac_addrs = rte_zmalloc_socket("nicmux_pv_mac", RTE_ETHER_ADDR_LEN, 0, dev->device->numa_node);
  if (dev->data->mac_addrs == NULL) {
    rc = -ENOMEM;
    goto fail;
  }
  memcpy(dev->data->mac_addrs->addr_bytes, in->info.mac, RTE_ETHER_ADDR_LEN);
  dev->data->mtu = (uint16_t)in->info.mtu;
  dev->data->promiscuous = in->info.promisc;
  dev->data->all_multicast = 1; /* nicmuxd filters unicast only */
  /* LSC: link state change events when the application asks (intr_conf.lsc; pv_lsc_alarm). */
  dev->data->dev_flags |= RTE_ETH_DEV_AUTOFILL_QUEUE_XSTATS | RTE_ETH_DEV_INTR_LSC;
  dev->data->dev_link.link_status = RTE_ETH_LINK_DOWN;
  dev->data->dev_link.link_speed = RTE_ETH_SPEED_NUM_UNKNOWN;
  dev->data->dev_link.link_duplex = RTE_ETH_LINK_FULL_DUPLEX;
  dev->rx_pkt_burst = pv_rx_burst;
  dev->tx_pkt_burst = pv_tx_burst;
  rte_eth_dev_probing_finish(dev);
  PV_LOG(INFO, "%s: port %u on %s: %u queue pairs, ring %u, buffers of %u bytes, mtu %u (%u..%u), uplink %s",
         name, dev->data->port_id, where, in->info.max_rx_queues, in->info.ring_size, in->info.buf_size,
         in->info.mtu, in->info.min_mtu, in->info.max_mtu, in->info.uplink);
  return 0;
fail:
  nmx_pv_close(in->pv);
  in->pv = NULL;
  rte_eth_dev_release_port(dev);
  return rc;
}

static int pv_remove(struct rte_vdev_device* vdev) {
  struct rte_eth_dev* dev = rte_eth_dev_allocated(rte_vdev_device_name(vdev));
  if (dev == NULL) return 0; /* closed already (rte_eth_dev_close releases the port) */
  pv_dev_close(dev);
  return rte_eth_dev_release_port(dev);
}

static struct rte_vdev_driver pv_vdev_driver = {
    .probe = pv_probe,
    .remove = pv_remove,
};

RTE_PMD_REGISTER_VDEV(net_nicmux_pv, pv_vdev_driver);
RTE_PMD_REGISTER_PARAM_STRING(net_nicmux_pv, PV_ARG_SOCKET "=<path> " PV_ARG_ZEROCOPY "=<0|1>");

/* ---- the VM transport: the PCI driver ------------------------------------------------------ */

/* In a QEMU guest, the pvdev is an ivshmem-doorbell device (1af4:1110) whose BAR2 is the region
 * nicmuxd serves and BAR0 its registers (the Doorbell). The EAL maps both when the device is
 * bound to vfio-pci (no-IOMMU mode is enough: nothing is DMA'd, frames live in the region) or
 * uio_pci_generic. An ivshmem device that is not a pvdev (BAR2 without the magic) is left
 * alone: probe returns 1, "not mine". Copy mode only: registered memory needs the process
 * transport's socket. Interrupts are not used (the device's MSI-X vectors would need vfio and
 * an eventfd per vector): the application polls, and the control calls poll the mailbox. */
static const struct rte_pci_id pv_pci_ids[] = {
    {RTE_PCI_DEVICE(NMX_PV_IVSHMEM_VENDOR, NMX_PV_IVSHMEM_DEVICE)},
    {.vendor_id = 0},
};

static int pv_pci_probe(struct rte_pci_driver* drv, struct rte_pci_device* pci) {
  (void)drv;
  char name[RTE_DEV_NAME_MAX_LEN];
  rte_pci_device_name(&pci->addr, name, sizeof name);
  if (rte_eal_process_type() != RTE_PROC_PRIMARY) {
    PV_LOG(ERR, "%s: secondary processes are not supported", name);
    return -ENOTSUP;
  }
  char err[256] = "";
  /* UNTRUSTED: the BARs' contents (the host's region): the library checks the header, clamps
   * everything it reads there, and never trusts an offset; the lengths are the EAL's. */
  struct nmx_pv_dev* pv = nmx_pv_open_bars(pci->mem_resource[2].addr, pci->mem_resource[2].len,
                                           pci->mem_resource[0].addr, pci->mem_resource[0].len, name, err, sizeof err);
  if (pv == NULL) {
    if (pci->mem_resource[2].addr != NULL && pci->mem_resource[2].len >= sizeof(uint64_t) &&
        *(const volatile uint64_t*)pci->mem_resource[2].addr != NMX_PV_MAGIC) {
      PV_LOG(INFO, "%s: an ivshmem device, but not a pvdev: %s", name, err);
      return 1; /* another ivshmem user's: not for this driver */
    }
    PV_LOG(ERR, "%s: cannot open the pv device: %s", name, err);
    return -ENODEV;
  }
  struct rte_eth_dev* dev = rte_eth_dev_pci_allocate(pci, sizeof(struct pv_internals));
  if (dev == NULL) {
    nmx_pv_close(pv);
    return -ENOMEM;
  }
  priv(dev)->pci = 1;
  return pv_eth_setup(dev, pv, name, name, 0);
}

static int pv_pci_remove(struct rte_pci_device* pci) {
  /* The port's name is the device's (rte_eth_dev_pci_allocate), which may be the devargs'
   * spelling of the address (-a 00:04.0), not rte_pci_device_name's. */
  struct rte_eth_dev* dev = rte_eth_dev_allocated(pci->device.name);
  if (dev == NULL) return 0; /* closed already (rte_eth_dev_close releases the port) */
  pv_dev_close(dev);
  return rte_eth_dev_release_port(dev);
}

static struct rte_pci_driver pv_pci_driver = {
    .id_table = pv_pci_ids,
    .drv_flags = RTE_PCI_DRV_NEED_MAPPING,
    .probe = pv_pci_probe,
    .remove = pv_pci_remove,
};

RTE_PMD_REGISTER_PCI(net_nicmux_pv_pci, pv_pci_driver);
RTE_PMD_REGISTER_PCI_TABLE(net_nicmux_pv_pci, pv_pci_ids);
RTE_PMD_REGISTER_KMOD_DEP(net_nicmux_pv_pci, "* vfio-pci | uio_pci_generic");
