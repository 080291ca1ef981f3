/* nicmux_pv: the driver side of a pvdev. See nicmux_pv.h for the API and its contract, and
 * src/pv/pv_abi.h for the wire format this follows.
 *
 * Invariants kept here (per ring; u32 arithmetic, so every comparison survives the wrap):
 *   tx: reclaimed <= seen <= posted <= reclaimed + ring_size (as distances from reclaimed); seen
 *       is the host's done as last checked. Copy queues: reclaimed = seen, and slot s of the ring
 *       always carries tx buffer s: a free slot is a free buffer, no free list. Zero-copy
 *       queues: slot s carries the caller's buffer and cookie[s] (NULL for a frame copied into
 *       tx buffer s); [reclaimed, seen) are done and wait for nmx_pv_zc_tx_reclaim to hand their
 *       cookies back (a NULL prefix is freed at once).
 *   rx: released <= consumed <= seen <= posted = released + ring_size. Slot s always carries rx
 *       buffer s; the caller holds [released, consumed), the library has [consumed, seen)
 *       filled and not yet handed out, the host has [seen, posted). Zero-copy queues: slot s
 *       carries the caller's buffer recorded in slot[s] (offset, length, cookie); released =
 *       consumed (a buffer handed out is the caller's) and posted <= consumed + ring_size.
 * Shared memory is only touched through `dev->base + offset` with offsets checked at open
 * (the header is copied once and only the copy is used), slot indexes masked with ring_size - 1,
 * and buffer offsets computed from the library's own partition of the buffer area.
 *
 * Every read of host-written memory carries an UNTRUSTED comment naming the check that bounds
 * it. Atomics are the GCC/Clang __atomic builtins on the ABI's plain u32 fields.
 */
#define _GNU_SOURCE
#include "pv/guest/nicmux_pv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pvdev regions are little-endian; this library does not swap"
#endif

_Static_assert(sizeof(struct nmx_pv_header) <= NMX_PV_PAGE, "pv header");
_Static_assert(sizeof(struct nmx_pv_msg) == 16 + NMX_PV_REASON + NMX_PV_MSG_PAYLOAD, "pv message");
_Static_assert(sizeof(struct nmx_pv_info) <= NMX_PV_MSG_PAYLOAD, "pv info");
_Static_assert(sizeof(struct nmx_pv_stats) <= NMX_PV_MSG_PAYLOAD, "pv stats");
_Static_assert(sizeof(struct nmx_pv_hello) == 24, "pv hello");

#define PV_MAX_DOORBELLS (1u + NMX_PV_MAX_QUEUE_PAIRS)
#define PV_MAX_FDS (1u + 2u * PV_MAX_DOORBELLS)
/* Room for more fds than a hello may carry, so that a host sending too many is told so instead
 * of having the surplus silently dropped by the kernel. */
#define PV_FD_ROOM 64u
/* Sanity bounds on what the host offers (the checks against the region do the real work). */
#define PV_MAX_REGION (UINT64_C(1) << 40)
#define PV_MIN_BUF 64u
#define PV_MAX_BUF (1u << 24)
/* A control call's wait is cut in slices so that a lost irq costs at most this much. */
#define PV_CTRL_SLICE_MS 10

#define PV_TX_REQUEST_FLAGS                                                              \
  (NMX_PV_DESC_IPV4 | NMX_PV_DESC_IPV6 | NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_UDP_CKSUM | \
   NMX_PV_DESC_IP_CKSUM | NMX_PV_DESC_TSO)
#define PV_RX_RESULT_FLAGS \
  (NMX_PV_DESC_IPV4 | NMX_PV_DESC_IPV6 | NMX_PV_DESC_L4_GOOD | NMX_PV_DESC_RSS | NMX_PV_DESC_MARK)

/* One owner thread each: own cache lines, so rx and tx threads of a pair do not share one. */
struct pv_txq {
  _Alignas(64) struct nmx_pv_ring* ring;
  uint64_t buf0; /* region offset of tx buffer 0 of this queue */
  uint32_t posted, reclaimed, seen;
  int ready;
  int zc;        /* set up with NMX_PV_QUEUE_ZEROCOPY */
  void** cookie; /* zero copy: ring_size cookies (allocated at the first such setup) */
  uint64_t dropped, kicks; /* single writer; relaxed atomics for readers elsewhere */
};

/* A zero-copy rx slot: the caller's buffer as the library posted it (never read back from the
 * ring, where the host writes). */
struct pv_rx_slot {
  void* cookie;
  uint64_t offset;
  uint32_t cap;
  uint16_t region;
};

struct pv_rxq {
  _Alignas(64) struct nmx_pv_ring* ring;
  uint64_t buf0;
  uint32_t posted, seen, consumed, released;
  int ready;
  int zc;
  struct pv_rx_slot* slot; /* zero copy: ring_size of them */
  uint64_t kicks, len_clamped;
};

/* A registered region (nmx_pv_mem_add): what the caller said, for its own lookups. */
struct pv_mem {
  const uint8_t* addr; /* the caller's address of it, or NULL */
  uint64_t size;
  int used;
};

enum { PV_OK = 0, PV_BREAKING = 1, PV_BROKEN = 2 };

struct nmx_pv_dev {
  int sock; /* -1 over PCI (the VM transport) */
  int memfd;
  int kick[PV_MAX_DOORBELLS];
  int irq[PV_MAX_DOORBELLS];
  uint32_t num_doorbells;
  /* The VM transport: BAR0 mapped (the ivshmem registers), its Doorbell register. */
  uint8_t* bar0;
  size_t bar0_len;
  volatile uint32_t* doorbell;
  int bars_borrowed; /* base and bar0 are the caller's mappings (nmx_pv_open_bars): never unmapped */
  uint8_t* base;
  uint64_t region_size;
  struct nmx_pv_header hdr; /* the checked private copy: the only one used after open */
  uint32_t nqp, ring_size, mask, buf_size;
  struct nmx_pv_header* shdr; /* shared: only status and broken_reason are read later */
  struct nmx_pv_ctrl* ctrl;
  /* Mailbox calls one at a time: an application may ask from two threads (a DPDK PMD's link
   * check on the interrupt thread while the main thread reads stats). */
  pthread_mutex_t ctrl_mu;
  uint32_t seq;
  int timeout_ms;
  char err[512];
  int broken; /* PV_OK / PV_BREAKING / PV_BROKEN, atomic: the data path breaks, anyone reads */
  char broken_reason[160];
  struct pv_rxq rxq[NMX_PV_MAX_QUEUE_PAIRS];
  struct pv_txq txq[NMX_PV_MAX_QUEUE_PAIRS];
  struct pv_mem mem[NMX_PV_MAX_MEM_REGIONS + 1]; /* index 0 unused */
  uint32_t sock_seq;                            /* the last memory request's */
  uint8_t sock_in[sizeof(struct nmx_pv_sock_resp)]; /* an answer being read */
  size_t sock_got;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static void fmt(char* buf, size_t len, const char* f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char* buf, size_t len, const char* f, ...) {
  if (buf == NULL || len == 0) return;
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, len, f, ap);
  va_end(ap);
}

/* Copies a string the host wrote (src, at most srclen bytes, maybe unterminated) into dst:
 * NUL-terminated, non-printable bytes replaced, so that it is safe to print. */
static void copy_host_text(char* dst, size_t dstlen, const char* src, size_t srclen) {
  if (dst == NULL || dstlen == 0) return;
  size_t i = 0;
  for (; i + 1 < dstlen && i < srclen; ++i) {
    const unsigned char c = (unsigned char)src[i];
    if (c == 0) break;
    dst[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
  }
  dst[i] = 0;
}

static void close_fd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Adds 1 to an eventfd. A full counter (EAGAIN) is as good as signalled. */
static void kick_fd(int fd) {
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
}

static void drain_fd(int fd) {
  uint64_t v;
  ssize_t r;
  do {
    r = read(fd, &v, sizeof v); /* the irq fds are O_NONBLOCK (open) */
  } while (r < 0 && errno == EINTR);
}

/* Rings doorbell d of the host: its kick eventfd, or over PCI the ivshmem Doorbell register
 * (QEMU signals the host peer's eventfd d). */
static void ring_doorbell(const struct nmx_pv_dev* dev, uint32_t d) {
  if (dev->doorbell != NULL) {
    *dev->doorbell = (NMX_PV_IVSHMEM_HOST_PEER << 16) | d;
  } else {
    kick_fd(dev->kick[d]);
  }
}

/* The VM transport has no socket whose hangup says the host is gone: nicmuxd writes
 * NMX_PV_STATUS_GONE into the header instead (it cannot when it crashed: then nothing answers). */
static int host_gone(const struct nmx_pv_dev* dev) {
  /* UNTRUSTED: status: only compared. */
  return dev->shdr != NULL && __atomic_load_n(&dev->shdr->status, __ATOMIC_ACQUIRE) == NMX_PV_STATUS_GONE;
}

static int is_broken(const struct nmx_pv_dev* dev) {
  return __atomic_load_n(&dev->broken, __ATOMIC_ACQUIRE) != PV_OK;
}

/* Called from a data-path thread when the host broke the protocol: the first caller records
 * why; from then on every burst returns 0. */
static void mark_broken(struct nmx_pv_dev* dev, const char* f, ...) __attribute__((format(printf, 2, 3)));
static void mark_broken(struct nmx_pv_dev* dev, const char* f, ...) {
  int expected = PV_OK;
  if (!__atomic_compare_exchange_n(&dev->broken, &expected, PV_BREAKING, 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    return;
  }
  va_list ap;
  va_start(ap, f);
  vsnprintf(dev->broken_reason, sizeof dev->broken_reason, f, ap);
  va_end(ap);
  __atomic_store_n(&dev->broken, PV_BROKEN, __ATOMIC_RELEASE);
}

static struct nmx_pv_ring* ring_at(const struct nmx_pv_dev* dev, uint32_t index) {
  return (struct nmx_pv_ring*)(dev->base + dev->hdr.rings_offset + (uint64_t)index * dev->hdr.ring_stride);
}

/* Orders earlier stores before later loads (the store-load barrier of the kick and irq
 * handshakes, see publish()). On x86 a locked add to the stack does that and is cheaper than
 * mfence (Linux's smp_mb() is the same instruction; nicmux's virtio::FullFence too); it is also
 * invisible to ThreadSanitizer, which rejects fences but needs none here: a store-load fence
 * creates no happens-before edge, only the acquire/release pairs do. */
static inline void full_fence(void) {
#if defined(__x86_64__)
  __asm__ volatile("lock addl $0, -4(%%rsp)" ::: "memory", "cc");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static uint64_t counter_get(const uint64_t* c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }
static void counter_add(uint64_t* c, uint64_t n) {
  __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* ---- opening ------------------------------------------------------------------------------- */

static struct nmx_pv_dev* dev_alloc(void) {
  void* p = NULL;
  if (posix_memalign(&p, 64, sizeof(struct nmx_pv_dev)) != 0) return NULL;
  struct nmx_pv_dev* dev = (struct nmx_pv_dev*)p;
  memset(dev, 0, sizeof *dev);
  dev->sock = dev->memfd = -1;
  for (uint32_t d = 0; d < PV_MAX_DOORBELLS; ++d) dev->kick[d] = dev->irq[d] = -1;
  dev->base = MAP_FAILED;
  dev->bar0 = MAP_FAILED;
  dev->timeout_ms = NMX_PV_DEFAULT_TIMEOUT_MS;
  pthread_mutex_init(&dev->ctrl_mu, NULL);
  return dev;
}

void nmx_pv_close(struct nmx_pv_dev* dev) {
  if (dev == NULL) return;
  for (uint32_t q = 0; q < NMX_PV_MAX_QUEUE_PAIRS; ++q) {
    free(dev->txq[q].cookie);
    free(dev->rxq[q].slot);
  }
  if (!dev->bars_borrowed && dev->base != MAP_FAILED) munmap(dev->base, dev->region_size);
  if (!dev->bars_borrowed && dev->bar0 != MAP_FAILED) munmap(dev->bar0, dev->bar0_len);
  close_fd(&dev->memfd);
  for (uint32_t d = 0; d < PV_MAX_DOORBELLS; ++d) {
    close_fd(&dev->kick[d]);
    close_fd(&dev->irq[d]);
  }
  close_fd(&dev->sock);
  pthread_mutex_destroy(&dev->ctrl_mu);
  free(dev);
}

static int wait_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
  for (;;) {
    const int r = poll(&p, 1, timeout_ms);
    if (r >= 0) return r;
    if (errno != EINTR) return -1;
  }
}

/* Receives the hello and its fds. On success the fds are in fds[0..*nfds). On failure every fd
 * received is closed. */
static int recv_hello(struct nmx_pv_dev* dev, struct nmx_pv_hello* hello, int* fds, uint32_t* nfds,
                      char* err, size_t errlen) {
  *nfds = 0;
  union {
    char buf[CMSG_SPACE(sizeof(int) * PV_FD_ROOM)];
    struct cmsghdr align;
  } cbuf;
  size_t got = 0;
  int truncated = 0;
  while (got < sizeof *hello) {
    const int r = wait_readable(dev->sock, dev->timeout_ms);
    if (r <= 0) {
      fmt(err, errlen, "hello: %s after %zu of %zu bytes", r == 0 ? "timed out" : strerror(errno), got,
          sizeof *hello);
      goto fail;
    }
    struct iovec iov = {.iov_base = (char*)hello + got, .iov_len = sizeof *hello - got};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.buf;
    mh.msg_controllen = sizeof cbuf.buf;
    const ssize_t n = recvmsg(dev->sock, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fmt(err, errlen, "hello: %s after %zu of %zu bytes",
          n == 0 ? "the host closed the connection" : strerror(errno), got, sizeof *hello);
      goto fail;
    }
    if (mh.msg_flags & MSG_CTRUNC) truncated = 1;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* in = (const int*)CMSG_DATA(c);
      for (size_t i = 0; i < k; ++i) {
        int fd;
        memcpy(&fd, in + i, sizeof fd);
        if (*nfds < PV_FD_ROOM) {
          fds[(*nfds)++] = fd;
        } else {
          close(fd);
          truncated = 1;
        }
      }
    }
    got += (size_t)n;
  }
  if (truncated) {
    fmt(err, errlen, "hello: the host sent more fds than fit (%u or more; a hello has at most %u)", *nfds,
        PV_MAX_FDS);
    goto fail;
  }
  return 0;
fail:
  for (uint32_t i = 0; i < *nfds; ++i) close(fds[i]);
  *nfds = 0;
  return -1;
}

/* What /proc says the fd is ("anon_inode:[eventfd]"); 0 when it cannot tell (no /proc). */
static int fd_kind(int fd, char* out, size_t outlen) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(path, out, outlen - 1);
  if (n < 0) return 0;
  out[n] = 0;
  return 1;
}

/* Range [off, off + len) inside the region, without computing a sum that could wrap. */
static int in_region(uint64_t off, uint64_t len, uint64_t region) {
  return off <= region && len <= region - off;
}

static int overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen; /* callers checked both ranges in the region: no wrap */
}

static int check_header(struct nmx_pv_dev* dev, const struct nmx_pv_hello* hello, char* err, size_t errlen) {
  /* UNTRUSTED: the whole header; copied once into dev->hdr and every field checked below before
   * any is used. */
  memcpy(&dev->hdr, dev->base, sizeof dev->hdr);
  const struct nmx_pv_header* h = &dev->hdr;
  const uint64_t region = dev->region_size;
  if (h->magic != NMX_PV_MAGIC) {
    fmt(err, errlen, "header.magic 0x%016llx is not NMX_PV_MAGIC", (unsigned long long)h->magic);
    return -1;
  }
  if (h->version != NMX_PV_VERSION) {
    fmt(err, errlen, "header.version %u: this library speaks version %u", h->version, NMX_PV_VERSION);
    return -1;
  }
  if (h->header_size != sizeof(struct nmx_pv_header)) {
    fmt(err, errlen, "header.header_size %u, expected %zu", h->header_size, sizeof(struct nmx_pv_header));
    return -1;
  }
  if (h->region_size != region) {
    fmt(err, errlen, "header.region_size %llu differs from the hello's and the memfd's %llu",
        (unsigned long long)h->region_size, (unsigned long long)region);
    return -1;
  }
  if (h->max_queue_pairs < 1 || h->max_queue_pairs > NMX_PV_MAX_QUEUE_PAIRS) {
    fmt(err, errlen, "header.max_queue_pairs %u is not in 1..%u", h->max_queue_pairs, NMX_PV_MAX_QUEUE_PAIRS);
    return -1;
  }
  if (hello->num_doorbells != 1 + h->max_queue_pairs) {
    fmt(err, errlen, "hello.num_doorbells %u does not match header.max_queue_pairs %u (1 + max_queue_pairs)",
        hello->num_doorbells, h->max_queue_pairs);
    return -1;
  }
  if (h->ring_size < NMX_PV_MIN_RING || h->ring_size > NMX_PV_MAX_RING || (h->ring_size & (h->ring_size - 1))) {
    fmt(err, errlen, "header.ring_size %u is not a power of two in %u..%u", h->ring_size, NMX_PV_MIN_RING,
        NMX_PV_MAX_RING);
    return -1;
  }
  if (h->buf_size < PV_MIN_BUF || h->buf_size > PV_MAX_BUF) {
    fmt(err, errlen, "header.buf_size %u is not in %u..%u", h->buf_size, PV_MIN_BUF, PV_MAX_BUF);
    return -1;
  }
  /* The mailbox and the rings hold atomics and per-side cache lines: cache-line aligned. */
  if (h->ctrl_offset % NMX_PV_CACHELINE || !in_region(h->ctrl_offset, sizeof(struct nmx_pv_ctrl), region)) {
    fmt(err, errlen, "header.ctrl_offset %llu: the mailbox (%zu bytes) is not cache-line aligned inside the "
        "region (%llu bytes)", (unsigned long long)h->ctrl_offset, sizeof(struct nmx_pv_ctrl),
        (unsigned long long)region);
    return -1;
  }
  const uint64_t ring_bytes = NMX_PV_RING_BYTES(h->ring_size);
  if (h->ring_stride < ring_bytes || h->ring_stride > region || h->ring_stride % NMX_PV_CACHELINE) {
    fmt(err, errlen, "header.ring_stride %llu: a ring of %u descriptors needs %llu bytes, cache-line aligned, "
        "inside the region", (unsigned long long)h->ring_stride, h->ring_size, (unsigned long long)ring_bytes);
    return -1;
  }
  /* ring_stride <= region <= 2^40 and at most 15 strides: no wrap. */
  const uint64_t rings_len = (uint64_t)(2 * h->max_queue_pairs - 1) * h->ring_stride + ring_bytes;
  if (h->rings_offset % NMX_PV_CACHELINE || !in_region(h->rings_offset, rings_len, region)) {
    fmt(err, errlen, "header.rings_offset %llu: %u rings (%llu bytes) are not cache-line aligned inside the "
        "region (%llu bytes)", (unsigned long long)h->rings_offset, 2 * h->max_queue_pairs,
        (unsigned long long)rings_len, (unsigned long long)region);
    return -1;
  }
  if (!in_region(h->bufs_offset, h->bufs_size, region)) {
    fmt(err, errlen, "header.bufs_offset %llu + bufs_size %llu is outside the region (%llu bytes)",
        (unsigned long long)h->bufs_offset, (unsigned long long)h->bufs_size, (unsigned long long)region);
    return -1;
  }
  /* <= 8 * 2 * 4096 * 2^24 = 2^40: no wrap. */
  const uint64_t need = (uint64_t)h->max_queue_pairs * 2u * h->ring_size * h->buf_size;
  if (h->bufs_size < need) {
    fmt(err, errlen, "header.bufs_size %llu is too small: %u queue pairs x 2 rings x %u buffers x %u bytes "
        "(header.buf_size) need %llu", (unsigned long long)h->bufs_size, h->max_queue_pairs, h->ring_size,
        h->buf_size, (unsigned long long)need);
    return -1;
  }
  struct {
    const char* name;
    uint64_t off, len;
  } parts[4] = {{"header", 0, sizeof(struct nmx_pv_header)},
                {"ctrl (header.ctrl_offset)", h->ctrl_offset, sizeof(struct nmx_pv_ctrl)},
                {"rings (header.rings_offset)", h->rings_offset, rings_len},
                {"buffers (header.bufs_offset)", h->bufs_offset, h->bufs_size}};
  for (int i = 0; i < 4; ++i) {
    for (int j = i + 1; j < 4; ++j) {
      if (overlap(parts[i].off, parts[i].len, parts[j].off, parts[j].len)) {
        fmt(err, errlen, "the %s [%llu, +%llu) overlaps the %s [%llu, +%llu)", parts[j].name,
            (unsigned long long)parts[j].off, (unsigned long long)parts[j].len, parts[i].name,
            (unsigned long long)parts[i].off, (unsigned long long)parts[i].len);
        return -1;
      }
    }
  }
  if (h->status != NMX_PV_STATUS_OK) {
    char why[sizeof h->broken_reason];
    copy_host_text(why, sizeof why, h->broken_reason, sizeof h->broken_reason);
    if (h->status == NMX_PV_STATUS_GONE) {
      /* The VM transport: a region nicmuxd served once and no longer does (QEMU keeps it). */
      fmt(err, errlen, "header.status %u: the host no longer serves this region (%s)", h->status, why);
    } else {
      fmt(err, errlen, "header.status %u: the host offers a broken device (%s)", h->status, why);
    }
    return -1;
  }
  return 0;
}

static void finish_open(struct nmx_pv_dev* dev);

struct nmx_pv_dev* nmx_pv_open(const char* socket_path, char* err, size_t errlen) {
  fmt(err, errlen, "%s", "");
  if (socket_path == NULL) {
    fmt(err, errlen, "no socket path");
    return NULL;
  }
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  const size_t len = strlen(socket_path);
  if (len == 0 || len >= sizeof a.sun_path) {
    fmt(err, errlen, "socket path '%s': %zu bytes, expected 1..%zu", socket_path, len, sizeof a.sun_path - 1);
    return NULL;
  }
  memcpy(a.sun_path, socket_path, len);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fmt(err, errlen, "socket: %s", strerror(errno));
    return NULL;
  }
  int r;
  do {
    r = connect(fd, (const struct sockaddr*)&a, sizeof a);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    fmt(err, errlen, "connect %s: %s", socket_path, strerror(errno));
    close(fd);
    return NULL;
  }
  return nmx_pv_open_fd(fd, err, errlen);
}

struct nmx_pv_dev* nmx_pv_open_fd(int fd, char* err, size_t errlen) {
  fmt(err, errlen, "%s", "");
  struct nmx_pv_dev* dev = dev_alloc();
  if (dev == NULL) {
    fmt(err, errlen, "out of memory");
    if (fd >= 0) close(fd);
    return NULL;
  }
  dev->sock = fd;
  if (fd < 0) {
    fmt(err, errlen, "bad socket fd %d", fd);
    goto fail;
  }
  struct nmx_pv_hello hello;
  int fds[PV_FD_ROOM];
  uint32_t nfds = 0;
  if (recv_hello(dev, &hello, fds, &nfds, err, errlen) < 0) goto fail;
  /* UNTRUSTED: the hello; every field checked here before use; the fds are owned by dev from
   * here on, so every exit closes them. */
  if (nfds > 0) dev->memfd = fds[0];
  for (uint32_t d = 0; d < PV_MAX_DOORBELLS; ++d) {
    if (1 + 2 * d < nfds) dev->kick[d] = fds[1 + 2 * d];
    if (2 + 2 * d < nfds) dev->irq[d] = fds[2 + 2 * d];
  }
  for (uint32_t i = PV_MAX_FDS; i < nfds; ++i) close(fds[i]);
  if (hello.magic != NMX_PV_MAGIC) {
    fmt(err, errlen, "hello.magic 0x%016llx is not NMX_PV_MAGIC", (unsigned long long)hello.magic);
    goto fail;
  }
  if (hello.version != NMX_PV_VERSION) {
    fmt(err, errlen, "hello.version %u: this library speaks version %u", hello.version, NMX_PV_VERSION);
    goto fail;
  }
  if (hello.num_doorbells < 2 || hello.num_doorbells > PV_MAX_DOORBELLS) {
    fmt(err, errlen, "hello.num_doorbells %u is not in 2..%u", hello.num_doorbells, PV_MAX_DOORBELLS);
    goto fail;
  }
  dev->num_doorbells = hello.num_doorbells;
  if (nfds != 1 + 2 * hello.num_doorbells) {
    fmt(err, errlen, "hello: %u fds, expected %u (a memfd, then a kick and an irq eventfd for each of "
        "hello.num_doorbells %u)", nfds, 1 + 2 * hello.num_doorbells, hello.num_doorbells);
    goto fail;
  }
  if (hello.region_size < 2 * NMX_PV_PAGE || hello.region_size > PV_MAX_REGION) {
    fmt(err, errlen, "hello.region_size %llu is not in %u..%llu", (unsigned long long)hello.region_size,
        2 * NMX_PV_PAGE, (unsigned long long)PV_MAX_REGION);
    goto fail;
  }
  struct stat st;
  if (fstat(dev->memfd, &st) < 0 || !S_ISREG(st.st_mode)) {
    fmt(err, errlen, "hello: the region fd is not a memfd (fstat: %s)", strerror(errno));
    goto fail;
  }
  /* A host that could shrink the file under our mapping could make any access SIGBUS. */
  const int seals = fcntl(dev->memfd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    fmt(err, errlen, "hello: the region memfd is not sealed against shrinking (F_SEAL_SHRINK)%s",
        seals < 0 ? "; not a memfd with sealing" : "");
    goto fail;
  }
  if ((uint64_t)st.st_size != hello.region_size) {
    fmt(err, errlen, "hello.region_size %llu differs from the memfd's size %llu",
        (unsigned long long)hello.region_size, (unsigned long long)st.st_size);
    goto fail;
  }
  for (uint32_t d = 0; d < hello.num_doorbells; ++d) {
    for (int k = 0; k < 2; ++k) {
      const int efd = k == 0 ? dev->kick[d] : dev->irq[d];
      char kind[64];
      if (fd_kind(efd, kind, sizeof kind) && strcmp(kind, "anon_inode:[eventfd]") != 0) {
        fmt(err, errlen, "hello: doorbell %u's %s fd is not an eventfd (%s)", d, k == 0 ? "kick" : "irq", kind);
        goto fail;
      }
    }
    /* We only read the irqs after poll() says so; non-blocking all the same, so that no read
     * can hang (the host only writes them, where O_NONBLOCK changes nothing but a full
     * counter's EAGAIN). */
    const int fl = fcntl(dev->irq[d], F_GETFL);
    if (fl < 0 || fcntl(dev->irq[d], F_SETFL, fl | O_NONBLOCK) < 0) {
      fmt(err, errlen, "doorbell %u's irq fd: fcntl: %s", d, strerror(errno));
      goto fail;
    }
  }
  dev->region_size = hello.region_size;
  void* base = mmap(NULL, (size_t)dev->region_size, PROT_READ | PROT_WRITE, MAP_SHARED, dev->memfd, 0);
  if (base == MAP_FAILED) {
    fmt(err, errlen, "mmap of the %llu-byte region: %s", (unsigned long long)dev->region_size, strerror(errno));
    goto fail;
  }
  dev->base = (uint8_t*)base;
  if (check_header(dev, &hello, err, errlen) < 0) goto fail;
  finish_open(dev);
  return dev;
fail:
  nmx_pv_close(dev);
  return NULL;
}

/* After the header checked out: the partition of the buffer area and the mailbox's start. */
static void finish_open(struct nmx_pv_dev* dev) {
  dev->nqp = dev->hdr.max_queue_pairs;
  dev->ring_size = dev->hdr.ring_size;
  dev->mask = dev->ring_size - 1;
  dev->buf_size = dev->hdr.buf_size;
  dev->shdr = (struct nmx_pv_header*)dev->base;
  dev->ctrl = (struct nmx_pv_ctrl*)(dev->base + dev->hdr.ctrl_offset);
  /* The buffer area: per pair q, ring_size rx buffers then ring_size tx buffers. */
  const uint64_t per_ring = (uint64_t)dev->ring_size * dev->buf_size;
  for (uint32_t q = 0; q < dev->nqp; ++q) {
    dev->rxq[q].ring = ring_at(dev, 2 * q);
    dev->rxq[q].buf0 = dev->hdr.bufs_offset + (2 * q) * per_ring;
    dev->txq[q].ring = ring_at(dev, 2 * q + 1);
    dev->txq[q].buf0 = dev->hdr.bufs_offset + (2 * q + 1) * per_ring;
  }
  /* A fresh region's mailbox starts at 0; continue from whatever the driver side holds.
   * UNTRUSTED: req_seq lies in memory the host can write too; any value is only a starting
   * number (an answer counts only when resp_seq and resp.seq both equal the new number). */
  dev->seq = __atomic_load_n(&dev->ctrl->req_seq, __ATOMIC_RELAXED);
}

/* ---- the VM transport: QEMU's ivshmem-doorbell through sysfs --------------------------------- */

#define PV_SYSFS_PCI "/sys/bus/pci/devices"

static int read_hex_file(const char* dir, const char* name, unsigned long* out) {
  char path[512];
  fmt(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "re");
  if (f == NULL) return -1;
  const int ok = fscanf(f, "%lx", out) == 1;
  fclose(f);
  return ok ? 0 : -1;
}

/* Opens resource file `name` of the device at dir and maps it whole (at least `min` bytes,
 * at most `max`); the fd in *fd, the size in *len. */
static uint8_t* map_resource(const char* dir, const char* name, uint64_t min, uint64_t max, int* fd, size_t* len,
                             char* err, size_t errlen) {
  char path[512];
  fmt(path, sizeof path, "%s/%s", dir, name);
  *fd = open(path, O_RDWR | O_CLOEXEC);
  if (*fd < 0) {
    fmt(err, errlen, "%s: %s", path, strerror(errno));
    return MAP_FAILED;
  }
  struct stat st;
  if (fstat(*fd, &st) < 0 || (uint64_t)st.st_size < min || (uint64_t)st.st_size > max) {
    fmt(err, errlen, "%s: %lld bytes, expected %llu..%llu", path, (long long)st.st_size, (unsigned long long)min,
        (unsigned long long)max);
    return MAP_FAILED;
  }
  *len = (size_t)st.st_size;
  void* m = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  if (m == MAP_FAILED) fmt(err, errlen, "mmap %s (%zu bytes): %s", path, *len, strerror(errno));
  return (uint8_t*)m;
}

static int has_magic(const struct nmx_pv_dev* dev, const char* name, char* err, size_t errlen);
static int open_over_bars(struct nmx_pv_dev* dev, const char* bdf, char* err, size_t errlen);

static struct nmx_pv_dev* open_pci_dir(const char* dir, const char* bdf, char* err, size_t errlen) {
  unsigned long vendor = 0, device = 0;
  if (read_hex_file(dir, "vendor", &vendor) < 0 || read_hex_file(dir, "device", &device) < 0) {
    fmt(err, errlen, "PCI device %s: cannot read its vendor and device ids in %s", bdf, dir);
    return NULL;
  }
  if (vendor != NMX_PV_IVSHMEM_VENDOR || device != NMX_PV_IVSHMEM_DEVICE) {
    fmt(err, errlen, "PCI device %s is %04lx:%04lx, not QEMU's ivshmem (%04x:%04x)", bdf, vendor, device,
        NMX_PV_IVSHMEM_VENDOR, NMX_PV_IVSHMEM_DEVICE);
    return NULL;
  }
  /* No kernel driver enabled the device's memory decoding: ask sysfs (root; harmless when it is
   * on already, and a failure shows as a region without the magic below). */
  char path[512];
  fmt(path, sizeof path, "%s/enable", dir);
  const int efd = open(path, O_WRONLY | O_CLOEXEC);
  if (efd >= 0) {
    if (write(efd, "1", 1) < 0) { /* already enabled, or not allowed: the magic decides */
    }
    close(efd);
  }
  struct nmx_pv_dev* dev = dev_alloc();
  if (dev == NULL) {
    fmt(err, errlen, "out of memory");
    return NULL;
  }
  size_t len = 0;
  /* BAR2: the region. QEMU maps nicmuxd's memfd there; its size is the BAR's. */
  dev->base = map_resource(dir, "resource2", 2 * NMX_PV_PAGE, PV_MAX_REGION, &dev->memfd, &len, err, errlen);
  if (dev->base == MAP_FAILED) goto fail;
  dev->region_size = len;
  if (!has_magic(dev, bdf, err, errlen)) goto fail;
  /* BAR0: the registers (256 bytes; the Doorbell at 12). */
  int bar0_fd = -1;
  dev->bar0 = map_resource(dir, "resource0", NMX_PV_IVSHMEM_REG_DOORBELL + 4, 1u << 20, &bar0_fd, &dev->bar0_len, err,
                           errlen);
  if (bar0_fd >= 0) close(bar0_fd); /* the mapping stays */
  if (dev->bar0 == MAP_FAILED) goto fail;
  if (open_over_bars(dev, bdf, err, errlen) < 0) goto fail;
  return dev;
fail:
  nmx_pv_close(dev);
  return NULL;
}

/* BAR2 (dev->base, region_size bytes) starts with the pvdev magic. */
static int has_magic(const struct nmx_pv_dev* dev, const char* name, char* err, size_t errlen) {
  /* UNTRUSTED: the magic: only compared, to tell a pvdev from another ivshmem user. */
  uint64_t magic;
  memcpy(&magic, dev->base, sizeof magic);
  if (magic == NMX_PV_MAGIC) return 1;
  fmt(err, errlen, "PCI device %s: BAR2 does not start with the pvdev magic (magic 0x%016llx: not a nicmuxd pv "
      "port with transport=ivshmem, or the device's memory is not enabled)", name, (unsigned long long)magic);
  return 0;
}

/* The VM transport's open, once BAR2 (base, region_size) and BAR0 (bar0, bar0_len) are mapped:
 * the header checked, the doorbell found, the device taken over. 0, or -1 (err says why). */
static int open_over_bars(struct nmx_pv_dev* dev, const char* bdf, char* err, size_t errlen) {
  /* UNTRUSTED: max_queue_pairs, read once here for the doorbell count; check_header then checks
   * its own copy against it (a host changing it meanwhile is refused). */
  const uint32_t nqp = __atomic_load_n(&((const struct nmx_pv_header*)dev->base)->max_queue_pairs, __ATOMIC_RELAXED);
  if (nqp < 1 || nqp > NMX_PV_MAX_QUEUE_PAIRS) {
    fmt(err, errlen, "header.max_queue_pairs %u is not in 1..%u", nqp, NMX_PV_MAX_QUEUE_PAIRS);
    return -1;
  }
  struct nmx_pv_hello hello;
  memset(&hello, 0, sizeof hello);
  hello.magic = NMX_PV_MAGIC;
  hello.version = NMX_PV_VERSION;
  hello.num_doorbells = 1 + nqp;
  hello.region_size = dev->region_size;
  dev->num_doorbells = hello.num_doorbells;
  if (check_header(dev, &hello, err, errlen) < 0) return -1;
  dev->doorbell = (volatile uint32_t*)(dev->bar0 + NMX_PV_IVSHMEM_REG_DOORBELL);
  finish_open(dev);
  /* No socket, so no registered memory, whatever the header says. */
  dev->hdr.features &= ~NMX_PV_FEATURE_MEM_REGIONS;
  /* Nothing tells nicmuxd that an earlier user of the device in this VM went away (no socket
   * closes): an open takes the device over. STOP (the earlier user's queues are forgotten at the
   * next CONFIGURE) and STATS_RESET; its MAC, MTU and promiscuous mode stay as it left them.
   * This is also the first round trip: a host that does not answer fails the open. */
  if (nmx_pv_stop(dev) < 0 || nmx_pv_stats_reset(dev) < 0) {
    fmt(err, errlen, "PCI device %s: %s", bdf, dev->err);
    return -1;
  }
  return 0;
}

struct nmx_pv_dev* nmx_pv_open_bars(void* bar2, uint64_t bar2_len, void* bar0, uint64_t bar0_len, const char* name,
                                    char* err, size_t errlen) {
  fmt(err, errlen, "%s", "");
  if (name == NULL) name = "?";
  if (bar2 == NULL || bar0 == NULL) {
    fmt(err, errlen, "PCI device %s: BAR%d is not mapped (bind the device to vfio-pci or uio_pci_generic)", name,
        bar2 == NULL ? 2 : 0);
    return NULL;
  }
  if (bar2_len < 2 * NMX_PV_PAGE || bar2_len > PV_MAX_REGION || bar0_len < NMX_PV_IVSHMEM_REG_DOORBELL + 4) {
    fmt(err, errlen, "PCI device %s: BAR2 of %llu bytes (%u..%llu) or BAR0 of %llu (at least %u): not an ivshmem "
        "device serving a pvdev", name, (unsigned long long)bar2_len, 2 * NMX_PV_PAGE,
        (unsigned long long)PV_MAX_REGION, (unsigned long long)bar0_len, NMX_PV_IVSHMEM_REG_DOORBELL + 4);
    return NULL;
  }
  struct nmx_pv_dev* dev = dev_alloc();
  if (dev == NULL) {
    fmt(err, errlen, "out of memory");
    return NULL;
  }
  dev->bars_borrowed = 1;
  dev->base = bar2;
  dev->region_size = bar2_len;
  dev->bar0 = bar0;
  dev->bar0_len = (size_t)bar0_len;
  if (!has_magic(dev, name, err, errlen) || open_over_bars(dev, name, err, errlen) < 0) {
    nmx_pv_close(dev);
    return NULL;
  }
  return dev;
}

static int pci_entry(const struct dirent* e) { return e->d_name[0] != '.'; }

struct nmx_pv_dev* nmx_pv_open_pci(const char* bdf, char* err, size_t errlen) {
  fmt(err, errlen, "%s", "");
  char dir[512];
  if (bdf != NULL && bdf[0] != 0) {
    if (strchr(bdf, '/') != NULL || strlen(bdf) > 64) {
      fmt(err, errlen, "PCI address '%s': expected DDDD:BB:DD.F", bdf);
      return NULL;
    }
    fmt(dir, sizeof dir, "%s/%s", PV_SYSFS_PCI, bdf);
    return open_pci_dir(dir, bdf, err, errlen);
  }
  struct dirent** list = NULL;
  const int n = scandir(PV_SYSFS_PCI, &list, pci_entry, alphasort);
  if (n < 0) {
    fmt(err, errlen, "%s: %s", PV_SYSFS_PCI, strerror(errno));
    return NULL;
  }
  struct nmx_pv_dev* dev = NULL;
  int ivshmem = 0;
  char last[512] = "";
  for (int i = 0; i < n; ++i) {
    if (dev == NULL) {
      unsigned long vendor = 0, device = 0;
      fmt(dir, sizeof dir, "%s/%s", PV_SYSFS_PCI, list[i]->d_name);
      if (read_hex_file(dir, "vendor", &vendor) == 0 && read_hex_file(dir, "device", &device) == 0 &&
          vendor == NMX_PV_IVSHMEM_VENDOR && device == NMX_PV_IVSHMEM_DEVICE) {
        ++ivshmem;
        dev = open_pci_dir(dir, list[i]->d_name, last, sizeof last);
      }
    }
    free(list[i]);
  }
  free(list);
  if (dev == NULL) {
    if (ivshmem == 0) {
      fmt(err, errlen, "no ivshmem PCI device (%04x:%04x) in %s", NMX_PV_IVSHMEM_VENDOR, NMX_PV_IVSHMEM_DEVICE,
          PV_SYSFS_PCI);
    } else {
      fmt(err, errlen, "%d ivshmem device(s), none a pvdev; the last: %s", ivshmem, last);
    }
  }
  return dev;
}

uint32_t nmx_pv_max_queue_pairs(const struct nmx_pv_dev* dev) { return dev->nqp; }
uint32_t nmx_pv_ring_size(const struct nmx_pv_dev* dev) { return dev->ring_size; }
uint32_t nmx_pv_buf_size(const struct nmx_pv_dev* dev) { return dev->buf_size; }
uint32_t nmx_pv_generation(const struct nmx_pv_dev* dev) { return dev->hdr.generation; }
uint64_t nmx_pv_features(const struct nmx_pv_dev* dev) { return dev->hdr.features; }
uint64_t nmx_pv_max_mem_bytes(const struct nmx_pv_dev* dev) {
  return (dev->hdr.features & NMX_PV_FEATURE_MEM_REGIONS) ? dev->hdr.max_mem_bytes : 0;
}

void nmx_pv_set_timeout(struct nmx_pv_dev* dev, int timeout_ms) {
  if (timeout_ms > 0) dev->timeout_ms = timeout_ms;
}

/* ---- control ------------------------------------------------------------------------------- */

static const char* msg_name(uint16_t type) {
  static const char* const names[] = {"?",          "GET_INFO",    "CONFIGURE",   "QUEUE_SETUP", "QUEUE_RELEASE",
                                      "START",      "STOP",        "STATS_GET",   "STATS_RESET", "LINK_GET",
                                      "MTU_SET",    "MAC_SET",     "PROMISC_SET", "FLOW_VALIDATE", "FLOW_CREATE",
                                      "FLOW_DESTROY", "FLOW_FLUSH"};
  _Static_assert(sizeof names / sizeof names[0] == NMX_PV_MSG_MAX_TYPE + 1, "a name per request type");
  return type <= NMX_PV_MSG_MAX_TYPE ? names[type] : "?";
}

const char* nmx_pv_strerror(const struct nmx_pv_dev* dev) { return dev->err; }

/* One request/response through the mailbox. out (out_len bytes) receives the response's
 * payload, which must hold at least out_len bytes. */
static int ctrl_call_locked(struct nmx_pv_dev* dev, uint16_t type, const void* req, uint16_t req_len, void* out,
                            uint16_t out_len) {
  struct nmx_pv_ctrl* c = dev->ctrl;
  const char* name = msg_name(type);
  uint32_t seq = dev->seq + 1;
  if (seq == 0) seq = 1; /* 0 is what a fresh mailbox says was answered */
  dev->seq = seq;
  /* The request, then (release) its number, then the kick. */
  struct nmx_pv_msg* m = &c->req;
  memset(m, 0, sizeof *m);
  m->seq = seq;
  m->type = type;
  m->len = req_len;
  if (req_len) memcpy(m->payload, req, req_len);
  __atomic_store_n(&c->req_seq, seq, __ATOMIC_RELEASE);
  ring_doorbell(dev, 0);

  const uint64_t deadline = now_ms() + (uint64_t)dev->timeout_ms;
  for (;;) {
    /* UNTRUSTED: resp_seq: only compared with our seq. */
    if (__atomic_load_n(&c->resp_seq, __ATOMIC_ACQUIRE) == seq) break;
    const uint64_t t = now_ms();
    if (t >= deadline) {
      char why[sizeof dev->shdr->broken_reason + 64] = "";
      if (nmx_pv_status(dev, why + 2, sizeof why - 3)) memcpy(why, "; ", 2);
      fmt(dev->err, sizeof dev->err, "%s (seq %u): no answer from the host within %d ms%s", name, seq,
          dev->timeout_ms, why[0] ? why : "");
      return -ETIMEDOUT;
    }
    const uint64_t left = deadline - t;
    struct pollfd p[2] = {{.fd = dev->irq[0], .events = POLLIN, .revents = 0},
                          {.fd = dev->sock, .events = POLLRDHUP, .revents = 0}};
    const int r = poll(p, 2, left < PV_CTRL_SLICE_MS ? (int)left : PV_CTRL_SLICE_MS);
    if (r < 0 && errno != EINTR) {
      fmt(dev->err, sizeof dev->err, "%s: poll: %s", name, strerror(errno));
      return -errno;
    }
    if (r > 0 && (p[0].revents & POLLIN)) drain_fd(dev->irq[0]);
    /* UNTRUSTED: resp_seq again: only compared (an answer that came with the hangup is taken). */
    if (r > 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) &&
        __atomic_load_n(&c->resp_seq, __ATOMIC_ACQUIRE) != seq) {
      fmt(dev->err, sizeof dev->err, "%s (seq %u): the host closed the connection", name, seq);
      return -ENOTCONN;
    }
    if (host_gone(dev) && __atomic_load_n(&c->resp_seq, __ATOMIC_ACQUIRE) != seq) {
      char why[sizeof dev->shdr->broken_reason];
      copy_host_text(why, sizeof why, dev->shdr->broken_reason, sizeof why);
      fmt(dev->err, sizeof dev->err, "%s (seq %u): the host no longer serves the device: %s", name, seq, why);
      return -ENOTCONN;
    }
  }
  /* UNTRUSTED: the response; copied once, seq/status/len checked below, reason copied bounded
   * and made printable, the payload copied at most out_len bytes. */
  struct nmx_pv_msg resp;
  memcpy(&resp, &c->resp, sizeof resp);
  if (resp.seq != seq) {
    fmt(dev->err, sizeof dev->err, "%s: the host's resp_seq says %u but resp.seq is %u", name, seq, resp.seq);
    return -EPROTO;
  }
  if (resp.status > 0 || resp.status < -4095) {
    fmt(dev->err, sizeof dev->err, "%s: the host answered status %d (not 0 or a negative errno)", name,
        resp.status);
    return -EPROTO;
  }
  if (resp.status < 0) {
    char reason[NMX_PV_REASON];
    copy_host_text(reason, sizeof reason, resp.reason, sizeof resp.reason);
    fmt(dev->err, sizeof dev->err, "%s refused by the host: %s (%s)", name, reason[0] ? reason : "no reason given",
        strerror(-resp.status));
    return resp.status;
  }
  if (resp.len > NMX_PV_MSG_PAYLOAD || resp.len < out_len) {
    fmt(dev->err, sizeof dev->err, "%s: the host's answer has %u payload bytes, expected %u..%u", name, resp.len,
        out_len, NMX_PV_MSG_PAYLOAD);
    return -EPROTO;
  }
  if (out_len) memcpy(out, resp.payload, out_len);
  dev->err[0] = 0;
  return 0;
}

/* One mailbox call: the request, the wait for its answer, the answer (serialized, ctrl_mu). */
static int ctrl_call(struct nmx_pv_dev* dev, uint16_t type, const void* req, uint16_t req_len, void* out,
                     uint16_t out_len) {
  pthread_mutex_lock(&dev->ctrl_mu);
  const int rc = ctrl_call_locked(dev, type, req, req_len, out, out_len);
  pthread_mutex_unlock(&dev->ctrl_mu);
  return rc;
}

static int bad_arg(struct nmx_pv_dev* dev, const char* f, ...) __attribute__((format(printf, 2, 3)));
static int bad_arg(struct nmx_pv_dev* dev, const char* f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(dev->err, sizeof dev->err, f, ap);
  va_end(ap);
  return -EINVAL;
}

int nmx_pv_get_info(struct nmx_pv_dev* dev, struct nmx_pv_info* info) {
  struct nmx_pv_info i;
  memset(&i, 0, sizeof i);
  /* A host without flow rules may answer the info as it was before them (without the flow
   * fields at its end); with NMX_PV_FEATURE_FLOWS the whole of it. */
  const uint16_t want = (dev->hdr.features & NMX_PV_FEATURE_FLOWS) ? (uint16_t)sizeof i
                                                                    : (uint16_t)offsetof(struct nmx_pv_info, flow_items);
  const int rc = ctrl_call(dev, NMX_PV_MSG_GET_INFO, NULL, 0, &i, want);
  if (rc < 0) return rc;
  /* UNTRUSTED: the info; the fields the library relies on are checked, the text sanitized. */
  const char* bad = NULL;
  if (i.max_rx_queues < 1 || i.max_rx_queues > dev->nqp) bad = "max_rx_queues";
  else if (i.max_tx_queues < 1 || i.max_tx_queues > dev->nqp) bad = "max_tx_queues";
  else if (i.ring_size != dev->ring_size) bad = "ring_size";
  else if (i.buf_size != dev->buf_size) bad = "buf_size";
  if (bad) {
    fmt(dev->err, sizeof dev->err, "GET_INFO: info.%s (rx %u tx %u queues, ring %u, buf %u) does not fit the "
        "region (%u queue pairs, ring %u, buf %u)", bad, i.max_rx_queues, i.max_tx_queues, i.ring_size,
        i.buf_size, dev->nqp, dev->ring_size, dev->buf_size);
    return -EPROTO;
  }
  char up[sizeof i.uplink];
  copy_host_text(up, sizeof up, i.uplink, sizeof i.uplink);
  memcpy(i.uplink, up, sizeof up);
  i.link_up = i.link_up ? 1 : 0;
  i.promisc = i.promisc ? 1 : 0;
  /* UNTRUSTED: the flow capabilities: only with the header's NMX_PV_FEATURE_FLOWS, only bits
   * this library knows, the RSS list no longer than the wire holds. */
  if (!(dev->hdr.features & NMX_PV_FEATURE_FLOWS)) {
    i.flow_items = i.flow_actions = i.max_flows = i.flow_rss_queues = 0;
    i.flow_rss_types = 0;
    memset(&i.flow_fields, 0, sizeof i.flow_fields);
  }
  i.flow_items &= NMX_PV_FLOW_ITEM_ETH | NMX_PV_FLOW_ITEM_VLAN | NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_IPV6 |
                  NMX_PV_FLOW_ITEM_TCP | NMX_PV_FLOW_ITEM_UDP;
  i.flow_actions &= NMX_PV_FLOW_ACTION_QUEUE | NMX_PV_FLOW_ACTION_DROP | NMX_PV_FLOW_ACTION_MARK | NMX_PV_FLOW_ACTION_RSS;
  i.flow_rss_types &= NMX_PV_RSS_IPV4 | NMX_PV_RSS_IPV4_TCP | NMX_PV_RSS_IPV4_UDP | NMX_PV_RSS_IPV6 |
                      NMX_PV_RSS_IPV6_TCP | NMX_PV_RSS_IPV6_UDP;
  if (i.flow_rss_queues > NMX_PV_FLOW_RSS_MAX_QUEUES) i.flow_rss_queues = NMX_PV_FLOW_RSS_MAX_QUEUES;
  *info = i;
  return 0;
}

int nmx_pv_configure(struct nmx_pv_dev* dev, const struct nmx_pv_configure* conf) {
  const int rc = ctrl_call(dev, NMX_PV_MSG_CONFIGURE, conf, sizeof *conf, NULL, 0);
  if (rc < 0) return rc;
  /* A configured device has no queue set up (the host forgets them too). */
  for (uint32_t q = 0; q < dev->nqp; ++q) {
    dev->rxq[q].ready = 0;
    dev->txq[q].ready = 0;
  }
  return 0;
}

static int check_queue(struct nmx_pv_dev* dev, const char* what, uint32_t q, uint32_t dir) {
  if (q >= dev->nqp) return bad_arg(dev, "%s: queue %u, the device has %u queue pairs", what, q, dev->nqp);
  if (dir != NMX_PV_QUEUE_RX && dir != NMX_PV_QUEUE_TX) return bad_arg(dev, "%s: direction %u", what, dir);
  return 0;
}

/* Cookies of the caller's a zero-copy queue still holds (tx: not reclaimed; rx: posted). */
static uint32_t zc_held(const struct nmx_pv_dev* dev, uint32_t q, uint32_t dir) {
  uint32_t n = 0;
  if (dir == NMX_PV_QUEUE_TX) {
    const struct pv_txq* t = &dev->txq[q];
    if (t->cookie == NULL) return 0;
    for (uint32_t i = t->reclaimed; i != t->posted; ++i) n += t->cookie[i & dev->mask] != NULL;
  } else {
    const struct pv_rxq* x = &dev->rxq[q];
    if (x->slot == NULL) return 0;
    for (uint32_t i = x->consumed; i != x->posted; ++i) n += x->slot[i & dev->mask].cookie != NULL;
  }
  return n;
}

int nmx_pv_queue_setup(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir) { return nmx_pv_queue_setup_ex(dev, q, dir, 0); }

int nmx_pv_queue_setup_ex(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir, uint32_t flags) {
  int rc = check_queue(dev, "QUEUE_SETUP", q, dir);
  if (rc < 0) return rc;
  const int rx = dir == NMX_PV_QUEUE_RX;
  if (flags & ~NMX_PV_QUEUE_ZEROCOPY) return bad_arg(dev, "QUEUE_SETUP: unknown flags 0x%x", flags);
  const int zc = (flags & NMX_PV_QUEUE_ZEROCOPY) != 0;
  if (rx ? dev->rxq[q].ready : dev->txq[q].ready) {
    fmt(dev->err, sizeof dev->err, "QUEUE_SETUP: %s queue %u is set up; release it first", rx ? "rx" : "tx", q);
    return -EBUSY;
  }
  const uint32_t held = zc_held(dev, q, dir);
  if (held) {
    fmt(dev->err, sizeof dev->err, "QUEUE_SETUP: %s queue %u still holds %u buffers of the caller's: "
        "nmx_pv_queue_take_back first", rx ? "rx" : "tx", q, held);
    return -EBUSY;
  }
  if (zc && rx && dev->rxq[q].slot == NULL) {
    dev->rxq[q].slot = calloc(dev->ring_size, sizeof *dev->rxq[q].slot);
    if (dev->rxq[q].slot == NULL) {
      fmt(dev->err, sizeof dev->err, "QUEUE_SETUP: out of memory");
      return -ENOMEM;
    }
  }
  if (zc && !rx && dev->txq[q].cookie == NULL) {
    dev->txq[q].cookie = calloc(dev->ring_size, sizeof *dev->txq[q].cookie);
    if (dev->txq[q].cookie == NULL) {
      fmt(dev->err, sizeof dev->err, "QUEUE_SETUP: out of memory");
      return -ENOMEM;
    }
  }
  struct nmx_pv_ring* r = ring_at(dev, 2 * q + dir);
  /* Ordered before the host sees the request by req_seq's release. */
  __atomic_store_n(&r->posted, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&r->driver_flags, 0, __ATOMIC_RELAXED);
  const struct nmx_pv_queue_req req = {.queue = q, .dir = dir};
  rc = ctrl_call(dev, NMX_PV_MSG_QUEUE_SETUP, &req, sizeof req, NULL, 0);
  if (rc < 0) return rc;
  /* UNTRUSTED: done: the ring's start; any value is a consistent start (nothing is posted). */
  const uint32_t start = __atomic_load_n(&r->done, __ATOMIC_ACQUIRE);
  if (!rx) {
    struct pv_txq* t = &dev->txq[q];
    t->posted = t->reclaimed = t->seen = start;
    t->zc = zc;
    if (t->cookie) memset(t->cookie, 0, dev->ring_size * sizeof *t->cookie);
    __atomic_store_n(&r->posted, start, __ATOMIC_RELEASE);
    t->ready = 1;
    return 0;
  }
  struct pv_rxq* x = &dev->rxq[q];
  x->seen = x->consumed = x->released = start;
  x->zc = zc;
  if (zc) {
    /* Empty: the caller posts its buffers (nmx_pv_zc_rx_post). */
    memset(x->slot, 0, dev->ring_size * sizeof *x->slot);
    x->posted = start;
    __atomic_store_n(&r->posted, start, __ATOMIC_RELEASE);
    x->ready = 1;
    return 0;
  }
  for (uint32_t i = 0; i < dev->ring_size; ++i) {
    const uint32_t slot = (start + i) & dev->mask;
    struct nmx_pv_desc d;
    memset(&d, 0, sizeof d);
    d.offset = x->buf0 + (uint64_t)slot * dev->buf_size;
    d.len = dev->buf_size;
    memcpy(&r->desc[slot], &d, sizeof d);
  }
  x->posted = start + dev->ring_size;
  __atomic_store_n(&r->posted, x->posted, __ATOMIC_RELEASE);
  full_fence(); /* see publish() */
  /* UNTRUSTED: host_flags: only its NEEDS_KICK bit is tested (a wrong bit costs a kick). */
  if (__atomic_load_n(&r->host_flags, __ATOMIC_ACQUIRE) & NMX_PV_HOST_NEEDS_KICK) {
    ring_doorbell(dev, 1 + q);
    counter_add(&x->kicks, 1);
  }
  x->ready = 1;
  return 0;
}

int nmx_pv_queue_release(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir) {
  int rc = check_queue(dev, "QUEUE_RELEASE", q, dir);
  if (rc < 0) return rc;
  const struct nmx_pv_queue_req req = {.queue = q, .dir = dir};
  rc = ctrl_call(dev, NMX_PV_MSG_QUEUE_RELEASE, &req, sizeof req, NULL, 0);
  if (rc < 0) return rc;
  __atomic_store_n(&ring_at(dev, 2 * q + dir)->driver_flags, 0, __ATOMIC_RELAXED);
  if (dir == NMX_PV_QUEUE_RX) {
    dev->rxq[q].ready = 0;
  } else {
    dev->txq[q].ready = 0;
  }
  return 0;
}

int nmx_pv_queue_take_back(struct nmx_pv_dev* dev, uint32_t q, uint32_t dir, void** cookies, uint32_t n) {
  const int rc = check_queue(dev, "take back", q, dir);
  if (rc < 0) return rc;
  const int rx = dir == NMX_PV_QUEUE_RX;
  /* A set-up queue's buffers are the host's, unless the device is gone or broken: then nothing
   * will use them any more (the queue is then off here too). */
  if (rx ? dev->rxq[q].ready : dev->txq[q].ready) {
    if (nmx_pv_connected(dev) && nmx_pv_status(dev, NULL, 0) == NMX_PV_STATUS_OK) {
      fmt(dev->err, sizeof dev->err, "take back: %s queue %u is set up; release it first", rx ? "rx" : "tx", q);
      return -EBUSY;
    }
    if (rx) {
      dev->rxq[q].ready = 0;
    } else {
      dev->txq[q].ready = 0;
    }
  }
  uint32_t k = 0;
  if (!rx) {
    struct pv_txq* t = &dev->txq[q];
    if (t->cookie == NULL) return 0;
    for (; t->reclaimed != t->posted; ++t->reclaimed) {
      void** c = &t->cookie[t->reclaimed & dev->mask];
      if (*c == NULL) continue;
      if (k == n) break;
      cookies[k++] = *c;
      *c = NULL;
    }
    return (int)k;
  }
  struct pv_rxq* x = &dev->rxq[q];
  if (x->slot == NULL) return 0;
  for (; x->consumed != x->posted; ++x->consumed) {
    struct pv_rx_slot* sl = &x->slot[x->consumed & dev->mask];
    if (sl->cookie == NULL) continue;
    if (k == n) break;
    cookies[k++] = sl->cookie;
    sl->cookie = NULL;
  }
  return (int)k;
}

int nmx_pv_start(struct nmx_pv_dev* dev) { return ctrl_call(dev, NMX_PV_MSG_START, NULL, 0, NULL, 0); }
int nmx_pv_stop(struct nmx_pv_dev* dev) { return ctrl_call(dev, NMX_PV_MSG_STOP, NULL, 0, NULL, 0); }

int nmx_pv_stats_get(struct nmx_pv_dev* dev, struct nmx_pv_stats* stats) {
  struct nmx_pv_stats s;
  const int rc = ctrl_call(dev, NMX_PV_MSG_STATS_GET, NULL, 0, &s, sizeof s);
  if (rc < 0) return rc;
  /* UNTRUSTED: the counts are only reported; the queue counts bound loops of callers. */
  if (s.nb_rx_queues > NMX_PV_MAX_QUEUE_PAIRS) s.nb_rx_queues = NMX_PV_MAX_QUEUE_PAIRS;
  if (s.nb_tx_queues > NMX_PV_MAX_QUEUE_PAIRS) s.nb_tx_queues = NMX_PV_MAX_QUEUE_PAIRS;
  *stats = s;
  return 0;
}

int nmx_pv_stats_reset(struct nmx_pv_dev* dev) { return ctrl_call(dev, NMX_PV_MSG_STATS_RESET, NULL, 0, NULL, 0); }

int nmx_pv_link_get(struct nmx_pv_dev* dev, struct nmx_pv_link* link) {
  struct nmx_pv_link l;
  const int rc = ctrl_call(dev, NMX_PV_MSG_LINK_GET, NULL, 0, &l, sizeof l);
  if (rc < 0) return rc;
  /* UNTRUSTED: reported only; up normalized to 0/1. */
  l.up = l.up ? 1 : 0;
  *link = l;
  return 0;
}

int nmx_pv_link_poll(struct nmx_pv_dev* dev, struct nmx_pv_link* link, int timeout_ms) {
  if (pthread_mutex_trylock(&dev->ctrl_mu) != 0) return -EBUSY;
  /* Another thread's error text and timeout stay as they were. */
  char saved[sizeof dev->err];
  memcpy(saved, dev->err, sizeof saved);
  const int saved_timeout = dev->timeout_ms;
  if (timeout_ms > 0) dev->timeout_ms = timeout_ms;
  struct nmx_pv_link l;
  const int rc = ctrl_call_locked(dev, NMX_PV_MSG_LINK_GET, NULL, 0, &l, sizeof l);
  dev->timeout_ms = saved_timeout;
  memcpy(dev->err, saved, sizeof saved);
  pthread_mutex_unlock(&dev->ctrl_mu);
  if (rc < 0) return rc;
  /* UNTRUSTED: reported only; up normalized to 0/1. */
  l.up = l.up ? 1 : 0;
  *link = l;
  return 0;
}

int nmx_pv_mtu_set(struct nmx_pv_dev* dev, uint32_t mtu) {
  const struct nmx_pv_u32 v = {.value = mtu};
  return ctrl_call(dev, NMX_PV_MSG_MTU_SET, &v, sizeof v, NULL, 0);
}

int nmx_pv_mac_set(struct nmx_pv_dev* dev, const uint8_t mac[6]) {
  struct nmx_pv_mac m;
  memset(&m, 0, sizeof m);
  memcpy(m.mac, mac, 6);
  return ctrl_call(dev, NMX_PV_MSG_MAC_SET, &m, sizeof m, NULL, 0);
}

int nmx_pv_promisc_set(struct nmx_pv_dev* dev, int on) {
  const struct nmx_pv_u32 v = {.value = on ? 1u : 0u};
  return ctrl_call(dev, NMX_PV_MSG_PROMISC_SET, &v, sizeof v, NULL, 0);
}

/* ---- flow rules --------------------------------------------------------------------------- */

static int flows_offered(struct nmx_pv_dev* dev, const char* what) {
  if (dev->hdr.features & NMX_PV_FEATURE_FLOWS) return 0;
  fmt(dev->err, sizeof dev->err, "%s: the host offers no flow rules (header.features 0x%llx)", what,
      (unsigned long long)dev->hdr.features);
  return -ENOTSUP;
}

int nmx_pv_flow_validate(struct nmx_pv_dev* dev, const struct nmx_pv_flow_rule* rule) {
  const int rc = flows_offered(dev, "FLOW_VALIDATE");
  if (rc < 0) return rc;
  return ctrl_call(dev, NMX_PV_MSG_FLOW_VALIDATE, rule, sizeof *rule, NULL, 0);
}

int nmx_pv_flow_create(struct nmx_pv_dev* dev, const struct nmx_pv_flow_rule* rule, uint32_t* id) {
  int rc = flows_offered(dev, "FLOW_CREATE");
  if (rc < 0) return rc;
  struct nmx_pv_flow_id out;
  rc = ctrl_call(dev, NMX_PV_MSG_FLOW_CREATE, rule, sizeof *rule, &out, sizeof out);
  if (rc < 0) return rc;
  /* UNTRUSTED: the id is the host's name for the rule, only ever sent back to it. */
  *id = out.id;
  return 0;
}

int nmx_pv_flow_destroy(struct nmx_pv_dev* dev, uint32_t id) {
  const int rc = flows_offered(dev, "FLOW_DESTROY");
  if (rc < 0) return rc;
  const struct nmx_pv_flow_id in = {.id = id, .reserved = 0};
  return ctrl_call(dev, NMX_PV_MSG_FLOW_DESTROY, &in, sizeof in, NULL, 0);
}

int nmx_pv_flow_flush(struct nmx_pv_dev* dev) {
  const int rc = flows_offered(dev, "FLOW_FLUSH");
  if (rc < 0) return rc;
  return ctrl_call(dev, NMX_PV_MSG_FLOW_FLUSH, NULL, 0, NULL, 0);
}

/* ---- registered memory --------------------------------------------------------------------- */

/* One memory request on the socket and its answer (the one with our seq: answers to requests
 * that timed out earlier are skipped). fd (>= 0) goes with the request. */
static int sock_call(struct nmx_pv_dev* dev, struct nmx_pv_sock_req* req, int fd) {
  const char* name = req->type == NMX_PV_SOCK_MEM_ADD ? "MEM_ADD" : "MEM_DEL";
  uint32_t seq = dev->sock_seq + 1;
  if (seq == 0) seq = 1;
  dev->sock_seq = seq;
  req->seq = seq;
  struct iovec iov = {.iov_base = req, .iov_len = sizeof *req};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  memset(&cbuf, 0, sizeof cbuf);
  if (fd >= 0) {
    mh.msg_control = cbuf.buf;
    mh.msg_controllen = sizeof cbuf.buf;
    struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t w;
  do {
    w = sendmsg(dev->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (w < 0 && errno == EINTR);
  if (w != (ssize_t)sizeof *req) {
    const int e = w < 0 ? errno : EIO;
    fmt(dev->err, sizeof dev->err, "%s: sending the request: %s", name,
        w < 0 ? strerror(e) : "sent in part (the stream is out of step)");
    return -e;
  }
  const uint64_t deadline = now_ms() + (uint64_t)dev->timeout_ms;
  struct nmx_pv_sock_resp resp;
  for (;;) {
    /* UNTRUSTED: the host's bytes: collected into whole answers; recv() takes no fds (any the
     * host sends are closed by the kernel). */
    const ssize_t n = recv(dev->sock, dev->sock_in + dev->sock_got, sizeof dev->sock_in - dev->sock_got, MSG_DONTWAIT);
    if (n > 0) {
      dev->sock_got += (size_t)n;
      if (dev->sock_got < sizeof dev->sock_in) continue;
      dev->sock_got = 0;
      memcpy(&resp, dev->sock_in, sizeof resp);
      if (resp.seq == seq) break;
      continue; /* an answer to a request that timed out */
    }
    if (n == 0) {
      fmt(dev->err, sizeof dev->err, "%s (seq %u): the host closed the connection", name, seq);
      return -ENOTCONN;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      const int e = errno;
      fmt(dev->err, sizeof dev->err, "%s: recv: %s", name, strerror(e));
      return -e;
    }
    const uint64_t t = now_ms();
    if (t >= deadline) {
      fmt(dev->err, sizeof dev->err, "%s (seq %u): no answer from the host within %d ms", name, seq, dev->timeout_ms);
      return -ETIMEDOUT;
    }
    struct pollfd p = {.fd = dev->sock, .events = POLLIN | POLLRDHUP, .revents = 0};
    const uint64_t left = deadline - t;
    (void)poll(&p, 1, left < PV_CTRL_SLICE_MS ? (int)left : PV_CTRL_SLICE_MS);
  }
  /* UNTRUSTED: the answer: type and id must be the request's, status 0 or a negative errno,
   * the reason copied bounded and printable. */
  if (resp.type != req->type || resp.id != req->id) {
    fmt(dev->err, sizeof dev->err, "%s: the host answered type %u for region %u (asked: type %u, region %u)", name,
        resp.type, resp.id, req->type, req->id);
    return -EPROTO;
  }
  if (resp.status > 0 || resp.status < -4095) {
    fmt(dev->err, sizeof dev->err, "%s: the host answered status %d (not 0 or a negative errno)", name, resp.status);
    return -EPROTO;
  }
  if (resp.status < 0) {
    char reason[NMX_PV_REASON];
    copy_host_text(reason, sizeof reason, resp.reason, sizeof resp.reason);
    fmt(dev->err, sizeof dev->err, "%s refused by the host: %s (%s)", name, reason[0] ? reason : "no reason given",
        strerror(-resp.status));
    return resp.status;
  }
  dev->err[0] = 0;
  return 0;
}

int nmx_pv_mem_add(struct nmx_pv_dev* dev, int fd, uint64_t offset, uint64_t size, const void* addr) {
  if (!(dev->hdr.features & NMX_PV_FEATURE_MEM_REGIONS)) {
    fmt(dev->err, sizeof dev->err, "MEM_ADD: the host does not offer registered memory (header.features 0x%llx)",
        (unsigned long long)dev->hdr.features);
    return -ENOTSUP;
  }
  if (fd < 0 || size == 0) return bad_arg(dev, "MEM_ADD: fd %d, size %llu", fd, (unsigned long long)size);
  uint32_t id = 1;
  while (id <= NMX_PV_MAX_MEM_REGIONS && dev->mem[id].used) ++id;
  if (id > NMX_PV_MAX_MEM_REGIONS) {
    fmt(dev->err, sizeof dev->err, "MEM_ADD: all %u region ids are registered", NMX_PV_MAX_MEM_REGIONS);
    return -ENOSPC;
  }
  struct nmx_pv_sock_req req;
  memset(&req, 0, sizeof req);
  req.type = NMX_PV_SOCK_MEM_ADD;
  req.id = id;
  req.fd_offset = offset;
  req.size = size;
  req.addr = (uint64_t)(uintptr_t)addr;
  const int rc = sock_call(dev, &req, fd);
  if (rc < 0) return rc;
  dev->mem[id].addr = addr;
  dev->mem[id].size = size;
  dev->mem[id].used = 1;
  return (int)id;
}

int nmx_pv_mem_del(struct nmx_pv_dev* dev, int id) {
  if (id < 1 || id > (int)NMX_PV_MAX_MEM_REGIONS || !dev->mem[id].used) {
    fmt(dev->err, sizeof dev->err, "MEM_DEL: region %d is not registered", id);
    return -ENOENT;
  }
  struct nmx_pv_sock_req req;
  memset(&req, 0, sizeof req);
  req.type = NMX_PV_SOCK_MEM_DEL;
  req.id = (uint32_t)id;
  const int rc = sock_call(dev, &req, -1);
  if (rc < 0) return rc;
  memset(&dev->mem[id], 0, sizeof dev->mem[id]);
  return 0;
}

int nmx_pv_mem_find(const struct nmx_pv_dev* dev, const void* p, uint64_t len, uint16_t* region, uint64_t* offset) {
  const uintptr_t a = (uintptr_t)p;
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    const struct pv_mem* m = &dev->mem[id];
    if (!m->used || m->addr == NULL) continue;
    const uintptr_t base = (uintptr_t)m->addr;
    if (a < base || a - base > m->size || len > m->size - (a - base)) continue;
    *region = (uint16_t)id;
    *offset = a - base;
    return 0;
  }
  return -ENOENT;
}

/* [offset, offset + len) inside registered region `region` (the caller's record). */
static int mem_ok(const struct nmx_pv_dev* dev, uint16_t region, uint64_t offset, uint32_t len) {
  if (region < 1 || region > NMX_PV_MAX_MEM_REGIONS) return 0;
  const struct pv_mem* m = &dev->mem[region];
  return m->used && len > 0 && offset <= m->size && len <= m->size - offset;
}

int nmx_pv_connected(const struct nmx_pv_dev* dev) {
  if (host_gone(dev)) return 0;
  if (dev->sock < 0) return 1; /* the VM transport: only the header can say */
  struct pollfd p = {.fd = dev->sock, .events = POLLRDHUP, .revents = 0};
  int r;
  do {
    r = poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  return !(r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)));
}

int nmx_pv_events(const struct nmx_pv_dev* dev) {
  /* UNTRUSTED: only compared for change by callers. */
  return (int)__atomic_load_n(&dev->ctrl->event_seq, __ATOMIC_ACQUIRE);
}

int nmx_pv_status(const struct nmx_pv_dev* dev, char* reason, size_t n) {
  if (reason && n) reason[0] = 0;
  const int local = __atomic_load_n(&dev->broken, __ATOMIC_ACQUIRE);
  if (local != PV_OK) {
    if (local == PV_BROKEN) {
      fmt(reason, n, "%s", dev->broken_reason);
    } else {
      fmt(reason, n, "the library found the host breaking the protocol");
    }
    return NMX_PV_STATUS_BROKEN;
  }
  /* UNTRUSTED: status (any value other than OK is broken) and broken_reason (copied bounded,
   * printable). */
  const uint32_t status = __atomic_load_n(&dev->shdr->status, __ATOMIC_ACQUIRE);
  if (status == NMX_PV_STATUS_OK) return NMX_PV_STATUS_OK;
  char why[sizeof dev->shdr->broken_reason];
  copy_host_text(why, sizeof why, dev->shdr->broken_reason, sizeof why);
  if (status == NMX_PV_STATUS_BROKEN) {
    fmt(reason, n, "the host marked the device broken: %s", why[0] ? why : "no reason given");
  } else if (status == NMX_PV_STATUS_GONE) {
    fmt(reason, n, "the host no longer serves the device: %s", why[0] ? why : "no reason given");
    return NMX_PV_STATUS_GONE;
  } else {
    fmt(reason, n, "the host's header.status is %u (unknown): %s", status, why);
  }
  return NMX_PV_STATUS_BROKEN;
}

/* ---- data path ----------------------------------------------------------------------------- */

/* Publishes a ring's new posted index and kicks the host if it sleeps.
 *
 * Why the fence and the order: the host, before sleeping, sets NEEDS_KICK in host_flags, issues
 * a full fence, and reads posted once more (sleeping only if nothing new was posted). We store
 * posted, issue a full fence, then read host_flags. Each side stores, fences, then loads the
 * other's word (the store-buffering / Dekker pattern), so at least one of them sees the
 * other's store: either the host sees the new posted and does not sleep, or we see NEEDS_KICK
 * and kick. Without the fence the load of host_flags could be satisfied before our store of
 * posted is visible (a store-load reordering that x86 does too); both would then miss each
 * other and the frames would sit in the ring until something else woke the host. */
static int publish(const struct nmx_pv_dev* dev, struct nmx_pv_ring* r, uint32_t posted, uint32_t doorbell) {
  __atomic_store_n(&r->posted, posted, __ATOMIC_RELEASE);
  full_fence();
  /* UNTRUSTED: host_flags: only its NEEDS_KICK bit is tested (a wrong bit costs a kick, or the
   * host's own sleep). */
  if (__atomic_load_n(&r->host_flags, __ATOMIC_ACQUIRE) & NMX_PV_HOST_NEEDS_KICK) {
    ring_doorbell(dev, doorbell);
    return 1;
  }
  return 0;
}

/* Takes back the tx buffers the host finished; the free slots, or -1 when the host lied (the
 * device is then broken). */
static int tx_reclaim(struct nmx_pv_dev* dev, uint32_t q, struct pv_txq* t) {
  /* UNTRUSTED: done: accepted only if it moved forward by at most what is outstanding
   * (done - seen <= posted - seen, u32); anything else (beyond posted, backwards) breaks the
   * device. */
  const uint32_t done = __atomic_load_n(&t->ring->done, __ATOMIC_ACQUIRE);
  if ((uint32_t)(done - t->seen) > (uint32_t)(t->posted - t->seen)) {
    mark_broken(dev, "tx queue %u: the host's done %u is beyond posted %u (last done %u)", q, done, t->posted,
                t->seen);
    return -1;
  }
  t->seen = done;
  if (!t->zc) {
    t->reclaimed = done;
  } else {
    /* Copied frames have no cookie to hand back: their slots are free at once. */
    while (t->reclaimed != t->seen && t->cookie[t->reclaimed & dev->mask] == NULL) ++t->reclaimed;
  }
  return (int)(dev->ring_size - (t->posted - t->reclaimed));
}

uint32_t nmx_pv_tx_free(struct nmx_pv_dev* dev, uint32_t q) {
  if (q >= dev->nqp) return 0;
  struct pv_txq* t = &dev->txq[q];
  if (!t->ready || is_broken(dev)) return 0;
  const int room = tx_reclaim(dev, q, t);
  return room < 0 ? 0 : (uint32_t)room;
}

uint16_t nmx_pv_tx_burst(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_pkt* pkts, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_txq* t = &dev->txq[q];
  if (!t->ready || is_broken(dev)) return 0;
  struct nmx_pv_ring* r = t->ring;
  const int free_slots = tx_reclaim(dev, q, t);
  if (free_slots < 0) return 0;
  uint32_t room = (uint32_t)free_slots;
  uint32_t pos = t->posted;
  uint64_t dropped = 0;
  uint16_t i = 0;
  for (; i < n; ++i) {
    const struct nmx_pv_pkt* p = &pkts[i];
    if (p->len == 0 || p->len > dev->buf_size || p->data == NULL) {
      ++dropped;
      continue;
    }
    if (room == 0) break;
    const uint32_t slot = pos & dev->mask;
    const uint64_t off = t->buf0 + (uint64_t)slot * dev->buf_size;
    memcpy(dev->base + off, p->data, p->len);
    if (t->zc) t->cookie[slot] = NULL;
    struct nmx_pv_desc d;
    memset(&d, 0, sizeof d);
    d.offset = off;
    d.len = p->len;
    d.flags = (uint16_t)(p->flags & PV_TX_REQUEST_FLAGS);
    d.l2_len = p->l2_len;
    d.l4_len = p->l4_len;
    d.l3_len = p->l3_len;
    d.tso_segsz = p->tso_segsz;
    memcpy(&r->desc[slot], &d, sizeof d);
    ++pos;
    --room;
  }
  if (dropped) counter_add(&t->dropped, dropped);
  if (pos != t->posted) {
    t->posted = pos;
    if (publish(dev, r, pos, 1 + q)) counter_add(&t->kicks, 1);
  }
  return i;
}

/* Checks the host's done of rx queue q and takes it as seen: 0, or -1 when it lied (broken). */
static int rx_seen(struct nmx_pv_dev* dev, uint32_t q, struct pv_rxq* x) {
  /* UNTRUSTED: done: accepted only if done - seen <= posted - seen (u32): the host filled at most
   * what was posted; beyond, or backwards, breaks the device. */
  const uint32_t done = __atomic_load_n(&x->ring->done, __ATOMIC_ACQUIRE);
  if ((uint32_t)(done - x->seen) > (uint32_t)(x->posted - x->seen)) {
    mark_broken(dev, "rx queue %u: the host's done %u is beyond posted %u (last done %u)", q, done, x->posted,
                x->seen);
    return -1;
  }
  x->seen = done;
  return 0;
}

uint16_t nmx_pv_rx_burst(struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_pkt* pkts, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_rxq* x = &dev->rxq[q];
  if (!x->ready || x->zc || is_broken(dev)) return 0;
  struct nmx_pv_ring* r = x->ring;
  if (rx_seen(dev, q, x) < 0) return 0;
  uint32_t k = x->seen - x->consumed;
  if (k > n) k = n;
  uint64_t clamped = 0;
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t slot = (x->consumed + i) & dev->mask;
    /* UNTRUSTED: the descriptor the host filled; copied once. offset is ignored (slot s holds
     * rx buffer s, by our own record); len clamped to the buffer's capacity; flags masked to
     * the rx results; rss_hash and mark are opaque values. */
    struct nmx_pv_desc d;
    memcpy(&d, &r->desc[slot], sizeof d);
    uint32_t len = d.len;
    if (len > dev->buf_size) {
      len = dev->buf_size;
      ++clamped;
    }
    struct nmx_pv_pkt* p = &pkts[i];
    memset(p, 0, sizeof *p);
    p->data = dev->base + x->buf0 + (uint64_t)slot * dev->buf_size;
    p->len = len;
    p->flags = (uint16_t)(d.flags & PV_RX_RESULT_FLAGS);
    p->rss_hash = d.rss_hash;
    p->mark = d.mark;
  }
  if (clamped) counter_add(&x->len_clamped, clamped);
  x->consumed += k;
  return (uint16_t)k;
}

void nmx_pv_rx_done(struct nmx_pv_dev* dev, uint32_t q, uint16_t n) {
  if (q >= dev->nqp) return;
  struct pv_rxq* x = &dev->rxq[q];
  if (!x->ready || x->zc || is_broken(dev)) return;
  uint32_t k = x->consumed - x->released;
  if (k > n) k = n;
  if (k == 0) return;
  struct nmx_pv_ring* r = x->ring;
  /* posted == released + ring_size: the slot posted next is the one released next, and slot s
   * carries buffer s. */
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t slot = (x->posted + i) & dev->mask;
    struct nmx_pv_desc d;
    memset(&d, 0, sizeof d);
    d.offset = x->buf0 + (uint64_t)slot * dev->buf_size;
    d.len = dev->buf_size;
    memcpy(&r->desc[slot], &d, sizeof d);
  }
  x->released += k;
  x->posted += k;
  if (publish(dev, r, x->posted, 1 + q)) counter_add(&x->kicks, 1);
}

/* ---- zero-copy data path ------------------------------------------------------------------- */

uint16_t nmx_pv_zc_tx_burst(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_buf* bufs, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_txq* t = &dev->txq[q];
  if (!t->ready || !t->zc || is_broken(dev)) return 0;
  struct nmx_pv_ring* r = t->ring;
  const int free_slots = tx_reclaim(dev, q, t);
  if (free_slots < 0) return 0;
  uint32_t room = (uint32_t)free_slots;
  uint32_t pos = t->posted;
  uint16_t i = 0;
  for (; i < n && room > 0; ++i) {
    const struct nmx_pv_buf* b = &bufs[i];
    /* The caller's buffer: only inside what it registered (the host would break the device). */
    if (!mem_ok(dev, b->region, b->offset, b->len)) break;
    const uint32_t slot = pos & dev->mask;
    struct nmx_pv_desc d;
    memset(&d, 0, sizeof d);
    d.offset = b->offset;
    d.len = b->len;
    d.region = b->region;
    d.flags = (uint16_t)(b->flags & PV_TX_REQUEST_FLAGS);
    d.l2_len = b->l2_len;
    d.l4_len = b->l4_len;
    d.l3_len = b->l3_len;
    d.tso_segsz = b->tso_segsz;
    memcpy(&r->desc[slot], &d, sizeof d);
    t->cookie[slot] = b->cookie;
    ++pos;
    --room;
  }
  if (pos != t->posted) {
    t->posted = pos;
    if (publish(dev, r, pos, 1 + q)) counter_add(&t->kicks, 1);
  }
  return i;
}

uint16_t nmx_pv_zc_tx_reclaim(struct nmx_pv_dev* dev, uint32_t q, void** cookies, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_txq* t = &dev->txq[q];
  if (!t->ready || !t->zc || is_broken(dev)) return 0;
  if (tx_reclaim(dev, q, t) < 0) return 0;
  uint16_t k = 0;
  for (; t->reclaimed != t->seen; ++t->reclaimed) {
    void** c = &t->cookie[t->reclaimed & dev->mask];
    if (*c == NULL) continue;
    if (k == n) break;
    cookies[k++] = *c;
    *c = NULL;
  }
  return k;
}

uint32_t nmx_pv_zc_rx_room(struct nmx_pv_dev* dev, uint32_t q) {
  if (q >= dev->nqp) return 0;
  const struct pv_rxq* x = &dev->rxq[q];
  if (!x->ready || !x->zc || is_broken(dev)) return 0;
  return dev->ring_size - (x->posted - x->consumed);
}

uint16_t nmx_pv_zc_rx_post(struct nmx_pv_dev* dev, uint32_t q, const struct nmx_pv_buf* bufs, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_rxq* x = &dev->rxq[q];
  if (!x->ready || !x->zc || is_broken(dev)) return 0;
  struct nmx_pv_ring* r = x->ring;
  uint32_t room = dev->ring_size - (x->posted - x->consumed);
  uint16_t i = 0;
  for (; i < n && room > 0; ++i, --room) {
    const struct nmx_pv_buf* b = &bufs[i];
    if (!mem_ok(dev, b->region, b->offset, b->len)) break;
    const uint32_t slot = x->posted & dev->mask;
    struct nmx_pv_desc d;
    memset(&d, 0, sizeof d);
    d.offset = b->offset;
    d.len = b->len;
    d.region = b->region;
    memcpy(&r->desc[slot], &d, sizeof d);
    x->slot[slot] = (struct pv_rx_slot){.cookie = b->cookie, .offset = b->offset, .cap = b->len, .region = b->region};
    ++x->posted;
  }
  if (i > 0 && publish(dev, r, x->posted, 1 + q)) counter_add(&x->kicks, 1);
  return i;
}

uint16_t nmx_pv_zc_rx_burst(struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_pkt* pkts, uint16_t n) {
  if (q >= dev->nqp) return 0;
  struct pv_rxq* x = &dev->rxq[q];
  if (!x->ready || !x->zc || is_broken(dev)) return 0;
  if (rx_seen(dev, q, x) < 0) return 0;
  uint32_t k = x->seen - x->consumed;
  if (k > n) k = n;
  uint64_t clamped = 0;
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t slot = (x->consumed + i) & dev->mask;
    struct pv_rx_slot* sl = &x->slot[slot];
    /* UNTRUSTED: the descriptor the host filled; copied once. offset and region are ignored (the
     * buffer is the one our own record says); len clamped to what was posted; flags masked to
     * the rx results; rss_hash and mark are opaque values. */
    struct nmx_pv_desc d;
    memcpy(&d, &x->ring->desc[slot], sizeof d);
    uint32_t len = d.len;
    if (len > sl->cap) {
      len = sl->cap;
      ++clamped;
    }
    const struct pv_mem* m = &dev->mem[sl->region];
    struct nmx_pv_pkt* p = &pkts[i];
    memset(p, 0, sizeof *p);
    p->data = (m->used && m->addr != NULL) ? (void*)(uintptr_t)(m->addr + sl->offset) : NULL;
    p->len = len;
    p->flags = (uint16_t)(d.flags & PV_RX_RESULT_FLAGS);
    p->rss_hash = d.rss_hash;
    p->mark = d.mark;
    p->cookie = sl->cookie;
    sl->cookie = NULL;
  }
  if (clamped) counter_add(&x->len_clamped, clamped);
  x->consumed += k;
  x->released = x->consumed;
  return (uint16_t)k;
}

/* Work on pair q: frames filled that the caller has not received, or tx buffers finished while
 * some are outstanding. */
static int pair_has_work(struct nmx_pv_dev* dev, uint32_t q) {
  struct pv_rxq* x = &dev->rxq[q];
  struct pv_txq* t = &dev->txq[q];
  /* UNTRUSTED: done (both rings): only compared for change here; the bursts check it. */
  if (x->ready && (x->consumed != x->seen || __atomic_load_n(&x->ring->done, __ATOMIC_ACQUIRE) != x->seen)) {
    return 1;
  }
  if (t->ready && t->posted != t->seen && __atomic_load_n(&t->ring->done, __ATOMIC_ACQUIRE) != t->seen) return 1;
  if (t->ready && t->zc && t->reclaimed != t->seen) return 1; /* cookies to hand back */
  return 0;
}

int nmx_pv_irq_fd(const struct nmx_pv_dev* dev, uint32_t q) { return q < dev->nqp ? dev->irq[1 + q] : -1; }

int nmx_pv_irq_arm(struct nmx_pv_dev* dev, uint32_t q) {
  if (q >= dev->nqp || (!dev->rxq[q].ready && !dev->txq[q].ready)) return -EINVAL;
  if (is_broken(dev)) return -EIO;
  /* The VM transport polls: no irq can reach it, so none is asked for (each would cost nicmuxd an
   * eventfd write and QEMU an interrupt nobody takes). */
  if (dev->doorbell != NULL) return pair_has_work(dev, q);
  if (dev->rxq[q].ready) __atomic_store_n(&dev->rxq[q].ring->driver_flags, NMX_PV_DRIVER_WANTS_IRQ, __ATOMIC_RELAXED);
  if (dev->txq[q].ready) __atomic_store_n(&dev->txq[q].ring->driver_flags, NMX_PV_DRIVER_WANTS_IRQ, __ATOMIC_RELAXED);
  /* The mirror of publish(): the host publishes done, fences, then reads driver_flags; we set
   * the flag, fence, then read done. Either it sees our request and signals, or we see its
   * work and do not sleep. */
  full_fence();
  return pair_has_work(dev, q);
}

void nmx_pv_irq_disarm(struct nmx_pv_dev* dev, uint32_t q) {
  if (q >= dev->nqp) return;
  if (dev->rxq[q].ready) __atomic_store_n(&dev->rxq[q].ring->driver_flags, 0, __ATOMIC_RELAXED);
  if (dev->txq[q].ready) __atomic_store_n(&dev->txq[q].ring->driver_flags, 0, __ATOMIC_RELAXED);
  drain_fd(dev->irq[1 + q]);
}

int nmx_pv_wait(struct nmx_pv_dev* dev, uint32_t q, int timeout_ms) {
  int rc = nmx_pv_irq_arm(dev, q);
  if (rc != 0) {
    if (rc > 0) nmx_pv_irq_disarm(dev, q);
    return rc;
  }
  if (dev->doorbell != NULL) {
    /* The VM transport, polling only (no interrupt without a kernel driver): the pair is looked
     * at every millisecond until the timeout. */
    const uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_ms() + (uint64_t)timeout_ms;
    for (;;) {
      if (pair_has_work(dev, q)) break;
      if (host_gone(dev)) {
        nmx_pv_irq_disarm(dev, q);
        return -ENOTCONN;
      }
      if (now_ms() >= deadline) break;
      poll(NULL, 0, 1);
    }
    nmx_pv_irq_disarm(dev, q);
    return pair_has_work(dev, q);
  }
  struct pollfd p[2] = {{.fd = dev->irq[1 + q], .events = POLLIN, .revents = 0},
                        {.fd = dev->sock, .events = POLLRDHUP, .revents = 0}};
  const int r = poll(p, 2, timeout_ms < 0 ? -1 : timeout_ms);
  const int err = errno;
  nmx_pv_irq_disarm(dev, q);
  if (r < 0) return err == EINTR ? 1 : -err;
  if (r > 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) return -ENOTCONN;
  if (r > 0) return 1;
  return pair_has_work(dev, q);
}

int nmx_pv_queue_counters_get(const struct nmx_pv_dev* dev, uint32_t q, struct nmx_pv_queue_counters* c) {
  if (q >= dev->nqp) return -EINVAL;
  c->tx_dropped = counter_get(&dev->txq[q].dropped);
  c->tx_kicks = counter_get(&dev->txq[q].kicks);
  c->rx_kicks = counter_get(&dev->rxq[q].kicks);
  c->rx_len_clamped = counter_get(&dev->rxq[q].len_clamped);
  return 0;
}
