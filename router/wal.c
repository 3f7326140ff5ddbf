/*
 * wal.c - the write-ahead log: segment files of checksummed records, a
 * bitmap in memory of the ids still live, readers that replay them.
 *
 * Threads: one mutex (wal.lock) guards everything below.  Appends write
 * under it, so that file order is id order.  The sync thread flushes
 * release markers under it, and runs fdatasync(2) on a dup of the active
 * descriptor outside it.  Readers read through descriptors of their own,
 * outside the lock (segment bytes below a segment's committed size never
 * change), and take the lock only to find segments and to check that a
 * record is still live.
 *
 * On disk (all integers little-endian; doc/wal-format.md has the story):
 *
 *   DIR/wal.lock                   flock(2)ed by the process that owns DIR
 *   DIR/<%020llu first id>.wal     segments; by name order is id order
 *
 * A segment is a sequence of records, each a 28-byte header and a payload:
 *
 *    0  4  magic "IWAL"
 *    4  1  type: 1 = DATA, 2 = RELEASE
 *    5  1  format version: 1
 *    6  2  reserved: 0
 *    8  4  payload length
 *   12  4  CRC32C (Castagnoli) of the payload
 *   16  8  id (DATA); 0 (RELEASE)
 *   24  4  CRC32C of header bytes 0..23
 *
 * A RELEASE payload is a list of 12-byte ranges: first id (8), count (4).
 * The live records are the DATA ids minus the released ones.  DATA ids are
 * strictly increasing through the files, and at least the segment's name.
 *
 * Reading resynchronises: where no valid record starts, the decoder moves
 * to the next byte that could start a magic and tries again, so damage
 * costs the records it touches and nothing after them.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "wal.h"

#define WAL_HDR 28
#define WAL_VERSION 1
#define WAL_T_DATA 1
#define WAL_T_RELEASE 2
#define WAL_RANGE_BYTES 12
#define WAL_RANGES_PER_MARKER 4096
#define WAL_PENDING_MAX 4096          /* release ids buffered before a flush */
#define WAL_READ_CHUNK ((size_t)64 << 10)
#define WAL_ID_GAP 64                 /* a wider gap in ids starts a new chunk */
#define WAL_LOCK_NAME "wal.lock"
#define WAL_NAME_MAX 32

#define WAL_DEFAULT_SEGMENT ((uint64_t)64 << 20)
#define WAL_DEFAULT_MAX ((uint64_t)1 << 30)
#define WAL_DEFAULT_INTERVAL 100
#define WAL_DEFAULT_EVERY 1000

static const unsigned char wal_magic[4] = { 'I', 'W', 'A', 'L' };

/* --- CRC32C, slicing by 8 ------------------------------------------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	uint32_t i, c;
	int k;

	for (i = 0; i < 256; i++) {
		c = i;
		for (k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (k = 1; k < 8; k++)
			crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^
			                  crc_table[0][crc_table[k - 1][i] & 0xff];
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t crc32c(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t c = 0xFFFFFFFFu, lo, hi;

	while (len >= 8) {
		lo = c ^ get32(p);
		hi = get32(p + 4);
		c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		    crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		    crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		    crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
	return c ^ 0xFFFFFFFFu;
}

/* --- state ---------------------------------------------------------------- */

/* Live ids id base .. base+nbits-1, one bit each.  Ids are dense in
 * practice (one gap per torn record at most), so a segment of a million
 * records costs 128 KiB; a wide gap starts a new chunk instead of a run of
 * zero words. */
struct wal_chunk {
	uint64_t base;
	uint64_t nbits;
	uint64_t *bits;
	size_t words;
};

struct wal_seg {
	uint64_t serial;     /* unique for the life of the struct wal */
	uint64_t name;       /* the file is <name>.wal; every DATA id >= name */
	uint64_t lo;         /* search key, non-decreasing over segs[] */
	uint64_t first_id;   /* DATA ids held; last_id == 0: none */
	uint64_t last_id;
	uint64_t size;       /* bytes of whole records */
	uint64_t live;
	struct wal_chunk *chunks;
	size_t nchunks, chunks_cap;
};

struct wal {
	pthread_mutex_t lock;
	pthread_cond_t wake;          /* for the sync thread */
	pthread_t thread;
	int thread_started;
	int stopping;

	struct wal_options o;         /* defaults filled in; o.dir is dir */
	char *dir;
	int dirfd, lockfd;
	int fd;                       /* the newest segment, open for writing */

	struct wal_seg **segs;        /* oldest first; the last one is active */
	size_t nsegs, segs_cap;
	uint64_t serial;

	uint64_t last_id;             /* highest id given out or on disk */
	uint64_t max_data_id;         /* highest DATA id accepted by the scan */
	uint64_t bytes;
	uint64_t live;

	uint64_t *pending;            /* released ids, marker not written yet */
	size_t npending, pending_cap;
	int64_t pending_since;
	unsigned char *marker_buf;

	uint64_t unsynced;            /* appends since the last fdatasync */
	int64_t unsynced_since;
	int sync_now;
	int failed;                   /* an fdatasync failed: refuse appends */

	char err[512];
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void seg_filename(char *buf, uint64_t name)
{
	snprintf(buf, WAL_NAME_MAX, "%020" PRIu64 ".wal", name);
}

static void wal_seterr(struct wal *w, const char *fmt, ...) IOTR_PRINTF(2, 3);
static void wal_seterr(struct wal *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->err, sizeof(w->err), fmt, ap);
	va_end(ap);
}

static void msg(char *err, size_t errlen, const char *fmt, ...) IOTR_PRINTF(3, 4);
static void msg(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* --- the id set ----------------------------------------------------------- */

/* Room to mark id live in s, where id is above every id in s: the chunk
 * to pass to chunk_set(), or NULL when out of memory. */
static struct wal_chunk *seg_chunk_for_new(struct wal_seg *s, uint64_t id)
{
	struct wal_chunk *c = s->nchunks ? &s->chunks[s->nchunks - 1] : NULL;
	size_t need, words;
	uint64_t *bits;

	if (!c || id - c->base >= c->nbits + WAL_ID_GAP) {
		if (s->nchunks == s->chunks_cap) {
			size_t cap = s->chunks_cap ? s->chunks_cap * 2 : 4;
			struct wal_chunk *v = realloc(s->chunks, cap * sizeof(*v));

			if (!v)
				return NULL;
			s->chunks = v;
			s->chunks_cap = cap;
		}
		c = &s->chunks[s->nchunks];
		memset(c, 0, sizeof(*c));
		c->base = id;
		c->bits = calloc(4, sizeof(uint64_t));
		if (!c->bits)
			return NULL;
		c->words = 4;
		s->nchunks++;
	}
	need = (size_t)((id - c->base) / 64 + 1);
	if (need > c->words) {
		words = c->words * 2;
		while (words < need)
			words *= 2;
		bits = realloc(c->bits, words * sizeof(uint64_t));
		if (!bits)
			return NULL;
		memset(bits + c->words, 0, (words - c->words) * sizeof(uint64_t));
		c->bits = bits;
		c->words = words;
	}
	return c;
}

static void chunk_set(struct wal_chunk *c, uint64_t id)
{
	uint64_t b = id - c->base;

	c->bits[b / 64] |= (uint64_t)1 << (b % 64);
	if (b + 1 > c->nbits)
		c->nbits = b + 1;
}

/* Index of the last chunk of s whose base <= id, or -1. */
static ptrdiff_t seg_chunk_index(const struct wal_seg *s, uint64_t id)
{
	size_t lo = 0, hi = s->nchunks, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (s->chunks[mid].base <= id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ptrdiff_t)lo - 1;
}

static int seg_is_live(const struct wal_seg *s, uint64_t id)
{
	ptrdiff_t i = seg_chunk_index(s, id);
	const struct wal_chunk *c;
	uint64_t b;

	if (i < 0)
		return 0;
	c = &s->chunks[i];
	b = id - c->base;
	return b < c->nbits && (c->bits[b / 64] >> (b % 64)) & 1;
}

/* Clear ids [a, b) of c; returns how many were live. */
static uint64_t chunk_clear(struct wal_chunk *c, uint64_t a, uint64_t b)
{
	uint64_t lo, hi, i, n, mask, cleared = 0;
	unsigned sh;

	if (b <= c->base)
		return 0;
	lo = a > c->base ? a - c->base : 0;
	hi = b - c->base < c->nbits ? b - c->base : c->nbits;
	for (i = lo; i < hi; i += n) {
		sh = (unsigned)(i % 64);
		n = 64 - sh;
		if (n > hi - i)
			n = hi - i;
		mask = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << sh;
		cleared += (uint64_t)__builtin_popcountll(c->bits[i / 64] & mask);
		c->bits[i / 64] &= ~mask;
	}
	return cleared;
}

/* Index of the last segment whose lo <= id (the only one that can hold id),
 * or -1. */
static ptrdiff_t seg_index_for_id(const struct wal *w, uint64_t id)
{
	size_t lo = 0, hi = w->nsegs, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (w->segs[mid]->lo <= id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ptrdiff_t)lo - 1;
}

/* Index of the first segment with serial >= serial (nsegs if none). */
static size_t seg_index_from_serial(const struct wal *w, uint64_t serial)
{
	size_t lo = 0, hi = w->nsegs, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (w->segs[mid]->serial < serial)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static ptrdiff_t seg_index_by_serial(const struct wal *w, uint64_t serial)
{
	size_t i = seg_index_from_serial(w, serial);

	return i < w->nsegs && w->segs[i]->serial == serial ? (ptrdiff_t)i : -1;
}

/* Release ids [first, first+count); returns how many were live. */
static uint64_t wal_release_range(struct wal *w, uint64_t first,
                                  uint64_t count)
{
	uint64_t end = first + count, total = 0, n;
	ptrdiff_t i, k;
	struct wal_seg *s;

	if (end < first)
		end = UINT64_MAX;
	i = seg_index_for_id(w, first);
	for (i = i < 0 ? 0 : i; (size_t)i < w->nsegs; i++) {
		s = w->segs[i];
		if (s->lo >= end)
			break;
		if (!s->last_id || s->last_id < first)
			continue;
		k = seg_chunk_index(s, first);
		for (k = k < 0 ? 0 : k; (size_t)k < s->nchunks; k++) {
			if (s->chunks[k].base >= end)
				break;
			n = chunk_clear(&s->chunks[k], first, end);
			s->live -= n;
			w->live -= n;
			total += n;
		}
	}
	return total;
}

/* The key seg_index_for_id() searches on, for a segment with no DATA yet:
 * above everything before it, so that lo stays non-decreasing. */
static uint64_t seg_lo_after(const struct wal *w)
{
	const struct wal_seg *p = w->nsegs ? w->segs[w->nsegs - 1] : NULL;

	if (!p)
		return 0;
	return p->last_id ? p->last_id + 1 : p->lo;
}

static struct wal_seg *seg_new(struct wal *w, uint64_t name)
{
	struct wal_seg *s, **v;
	size_t cap;

	if (w->nsegs == w->segs_cap) {
		cap = w->segs_cap ? w->segs_cap * 2 : 8;
		v = realloc(w->segs, cap * sizeof(*v));
		if (!v)
			return NULL;
		w->segs = v;
		w->segs_cap = cap;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->serial = ++w->serial;
	s->name = name;
	s->lo = seg_lo_after(w);
	w->segs[w->nsegs++] = s;
	return s;
}

static void seg_clear_ids(struct wal_seg *s)
{
	size_t i;

	for (i = 0; i < s->nchunks; i++)
		free(s->chunks[i].bits);
	free(s->chunks);
	s->chunks = NULL;
	s->nchunks = s->chunks_cap = 0;
	s->first_id = s->last_id = 0;
	s->live = 0;
}

static void seg_free(struct wal_seg *s)
{
	seg_clear_ids(s);
	free(s);
}

/* Remove segs[0] from memory (its file is already gone). */
static void seg_pop_oldest(struct wal *w)
{
	struct wal_seg *s = w->segs[0];

	w->bytes -= s->size;
	w->live -= s->live;
	seg_free(s);
	memmove(w->segs, w->segs + 1, (w->nsegs - 1) * sizeof(*w->segs));
	w->nsegs--;
}

/* Delete the oldest segments while they hold nothing live; never the
 * active one.  Returns how many went. */
static uint64_t wal_gc(struct wal *w)
{
	char name[WAL_NAME_MAX];
	uint64_t n = 0;

	while (w->nsegs > 1 && w->segs[0]->live == 0) {
		seg_filename(name, w->segs[0]->name);
		if (unlinkat(w->dirfd, name, 0) < 0 && errno != ENOENT) {
			wal_seterr(w, "wal: cannot delete %s/%s: %s (the router "
			           "needs write access to %s)", w->dir, name,
			           strerror(errno), w->dir);
			break;
		}
		seg_pop_oldest(w);
		n++;
	}
	return n;
}

/* --- reading: a cursor over one segment file ------------------------------ */

struct wal_rec {
	uint64_t off;
	uint64_t id;
	uint32_t len;
	int type, version;
	const unsigned char *payload;   /* in the cursor's buffer */
};

struct wal_cursor {
	int fd;
	uint64_t off;              /* the next byte to decode */
	unsigned char *buf;
	size_t cap;
	uint64_t buf_off;          /* file offset of buf[0] */
	size_t buf_len;
	uint64_t skipped;          /* bytes passed over by the last cur_next() */
	uint64_t max_hdr_id;       /* highest id in a sound DATA header */
	int err;                   /* errno of a failed read */
};

enum { CUR_END = 0, CUR_REC = 1, CUR_SHORT = 2, CUR_ERR = -1, CUR_ENOMEM = -2 };

static void cur_init(struct wal_cursor *c, int fd)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
}

/* Switch to another file, from its start. */
static void cur_reset(struct wal_cursor *c, int fd)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = fd;
	c->off = c->buf_off = 0;
	c->buf_len = 0;
}

static void cur_free(struct wal_cursor *c)
{
	free(c->buf);
	c->buf = NULL;
	c->cap = 0;
}

/* Make file bytes [off, off+n) available in the buffer (n <= end - off):
 * 1, or 0 when the file is shorter than that, or CUR_ERR / CUR_ENOMEM. */
static int cur_need(struct wal_cursor *c, uint64_t off, size_t n, uint64_t end)
{
	size_t want, got = 0;
	unsigned char *b;
	ssize_t r;

	if (off >= c->buf_off && off + n <= c->buf_off + c->buf_len)
		return 1;
	want = n > WAL_READ_CHUNK ? n : WAL_READ_CHUNK;
	if (want > end - off)
		want = (size_t)(end - off);
	if (want > c->cap || (c->cap > 4 * WAL_READ_CHUNK &&
	                      want <= WAL_READ_CHUNK)) {
		/* grow, or give back what one huge record needed */
		b = realloc(c->buf, want);
		if (!b)
			return CUR_ENOMEM;
		c->buf = b;
		c->cap = want;
	}
	c->buf_off = off;
	c->buf_len = 0;
	while (got < want) {
		r = pread(c->fd, c->buf + got, want - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			c->err = errno;
			return CUR_ERR;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	c->buf_len = got;
	return got >= n ? 1 : 0;
}

/*
 * Decode the next sound record in [c->off, end): CUR_REC with *rec, or
 * CUR_END at end.  Either way c->skipped says how many bytes before it
 * (or before end) held no sound record.  CUR_SHORT: the file ended before
 * end (it was emptied under a reader).
 */
static int cur_next(struct wal_cursor *c, uint64_t end, struct wal_rec *rec)
{
	const unsigned char *h, *from, *lim, *q;
	uint64_t id, next;
	uint32_t len;
	int rc;

	c->skipped = 0;
	while (c->off < end) {
		if (end - c->off < WAL_HDR) {
			c->skipped += end - c->off;
			c->off = end;
			break;
		}
		rc = cur_need(c, c->off, WAL_HDR, end);
		if (rc != 1)
			return rc == 0 ? CUR_SHORT : rc;
		h = c->buf + (c->off - c->buf_off);
		if (memcmp(h, wal_magic, 4) == 0 && get32(h + 24) == crc32c(h, 24)) {
			len = get32(h + 8);
			id = get64(h + 16);
			if (h[4] == WAL_T_DATA && id > c->max_hdr_id)
				c->max_hdr_id = id;
			if (len <= WAL_MAX_PAYLOAD && len <= end - c->off - WAL_HDR) {
				rc = cur_need(c, c->off, WAL_HDR + (size_t)len, end);
				if (rc != 1)
					return rc == 0 ? CUR_SHORT : rc;
				h = c->buf + (c->off - c->buf_off);
				if (crc32c(h + WAL_HDR, len) == get32(h + 12)) {
					rec->off = c->off;
					rec->type = h[4];
					rec->version = h[5];
					rec->len = len;
					rec->id = id;
					rec->payload = h + WAL_HDR;
					c->off += WAL_HDR + (uint64_t)len;
					return CUR_REC;
				}
			}
		}
		/* No sound record starts here: try the next byte that could
		 * start a magic.  (Even when the header was sound and only the
		 * payload was not, its length is not trusted to skip: moving
		 * byte by byte can never jump over a good record.) */
		from = c->buf + (c->off - c->buf_off) + 1;
		lim = c->buf + c->buf_len;
		q = from < lim ? memchr(from, wal_magic[0], (size_t)(lim - from)) : NULL;
		next = q ? c->buf_off + (uint64_t)(q - c->buf)
		         : c->buf_off + c->buf_len;
		if (next > end)
			next = end;
		c->skipped += next - c->off;
		c->off = next;
	}
	return CUR_END;
}

/* --- writing -------------------------------------------------------------- */

static void hdr_build(unsigned char *h, int type, uint64_t id, uint32_t len,
                      uint32_t dcrc)
{
	memcpy(h, wal_magic, 4);
	h[4] = (unsigned char)type;
	h[5] = WAL_VERSION;
	h[6] = h[7] = 0;
	put32(h + 8, len);
	put32(h + 12, dcrc);
	put64(h + 16, id);
	put32(h + 24, crc32c(h, 24));
}

static struct wal_seg *wal_active(const struct wal *w)
{
	return w->segs[w->nsegs - 1];
}

static int errno_is_full(int e)
{
	return e == ENOSPC || e == EDQUOT || e == EFBIG;
}

/* Write one record at the end of the active segment, with one pwritev(2)
 * unless the kernel writes less.  A failed write is cut off again so that
 * the next record follows the last whole one. */
static int wal_write_record(struct wal *w, int type, uint64_t id,
                            const void *payload, size_t len, uint32_t dcrc)
{
	struct wal_seg *s = wal_active(w);
	unsigned char h[WAL_HDR];
	struct iovec iov[2];
	struct iovec *v = iov;
	int nv = len ? 2 : 1, e = 0;
	size_t total = WAL_HDR + len, done = 0;
	char name[WAL_NAME_MAX];
	ssize_t r;

	hdr_build(h, type, id, (uint32_t)len, dcrc);
	iov[0].iov_base = h;
	iov[0].iov_len = WAL_HDR;
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	while (done < total) {
		r = pwritev(w->fd, v, nv, (off_t)(s->size + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			e = r < 0 ? errno : EIO;
			goto fail;
		}
		done += (size_t)r;
		while (nv && (size_t)r >= v->iov_len) {
			r -= (ssize_t)v->iov_len;
			v++;
			nv--;
		}
		if (nv) {
			v->iov_base = (char *)v->iov_base + r;
			v->iov_len -= (size_t)r;
		}
	}
	s->size += total;
	w->bytes += total;
	return IOTR_OK;
fail:
	if (done && ftruncate(w->fd, (off_t)s->size) < 0) {
		/* the next write at s->size overwrites it; a tail left by a
		 * crash before that is cut at the next open */
	}
	seg_filename(name, s->name);
	wal_seterr(w, "wal: cannot write %s/%s: %s%s", w->dir, name,
	           strerror(e), errno_is_full(e) ?
	           " (the disk is full: free space, or lower wal.max_bytes)" :
	           " (check the disk)");
	return errno_is_full(e) ? WAL_EFULL : WAL_EIO;
}

/* Create segment <name>.wal and make it the active one. */
static int wal_segment_create(struct wal *w, uint64_t name)
{
	char fname[WAL_NAME_MAX];
	int fd, e;

	seg_filename(fname, name);
	fd = openat(w->dirfd, fname, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0) {
		e = errno;
		wal_seterr(w, "wal: cannot create %s/%s: %s (the router needs "
		           "write access to %s)", w->dir, fname, strerror(e),
		           w->dir);
		return errno_is_full(e) ? WAL_EFULL : WAL_EIO;
	}
	if (w->o.sync == WAL_SYNC_FDATASYNC && fsync(w->dirfd) < 0) {
		/* the file's name may not survive a power loss; its
		 * records would then be replayed, not lost: go on */
	}
	if (!seg_new(w, name)) {
		close(fd);
		unlinkat(w->dirfd, fname, 0);
		return IOTR_ENOMEM;
	}
	if (w->fd >= 0)
		close(w->fd);
	w->fd = fd;
	return IOTR_OK;
}

/* Start a new segment for id last_id+1; older ones may then go. */
static int wal_roll(struct wal *w)
{
	char name[WAL_NAME_MAX];
	int rc;

	if (w->o.sync == WAL_SYNC_FDATASYNC && w->unsynced) {
		if (fdatasync(w->fd) < 0) {
			seg_filename(name, wal_active(w)->name);
			wal_seterr(w, "wal: fdatasync(%s/%s) failed: %s (check "
			           "the disk; appends are refused from now on)",
			           w->dir, name, strerror(errno));
			w->failed = 1;
			return WAL_EIO;
		}
		w->unsynced = 0;
	}
	rc = wal_segment_create(w, w->last_id + 1);
	if (rc == IOTR_OK)
		wal_gc(w);
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Write the buffered release markers, as ranges.  What cannot be written
 * stays buffered for the next try. */
static void wal_flush_markers(struct wal *w)
{
	size_t i = 0, start, nr, k;
	uint64_t first, count;
	unsigned char *p;

	if (!w->npending)
		return;
	for (k = 1; k < w->npending; k++)
		if (w->pending[k] < w->pending[k - 1])
			break;
	if (k < w->npending)
		qsort(w->pending, w->npending, sizeof(uint64_t), cmp_u64);
	while (i < w->npending) {
		start = i;
		nr = 0;
		p = w->marker_buf;
		while (i < w->npending && nr < WAL_RANGES_PER_MARKER) {
			first = w->pending[i++];
			count = 1;
			while (i < w->npending && w->pending[i] == first + count &&
			       count < UINT32_MAX) {
				count++;
				i++;
			}
			put64(p, first);
			put32(p + 8, (uint32_t)count);
			p += WAL_RANGE_BYTES;
			nr++;
		}
		if (wal_write_record(w, WAL_T_RELEASE, 0, w->marker_buf,
		                     nr * WAL_RANGE_BYTES,
		                     crc32c(w->marker_buf, nr * WAL_RANGE_BYTES))) {
			memmove(w->pending, w->pending + start,
			        (w->npending - start) * sizeof(uint64_t));
			w->npending -= start;
			w->pending_since = now_ms();
			return;
		}
	}
	w->npending = 0;
}

/* --- the sync thread ------------------------------------------------------ */

static void *wal_sync_main(void *arg)
{
	struct wal *w = arg;
	int64_t now, next, iv = w->o.sync_interval_ms;
	char name[WAL_NAME_MAX];
	struct timespec ts;
	int fd, r, e, stop;

	pthread_mutex_lock(&w->lock);
	for (;;) {
		now = now_ms();
		next = INT64_MAX;
		stop = w->stopping;
		if (w->npending) {
			if (stop || now - w->pending_since >= iv)
				wal_flush_markers(w);
			if (w->npending)
				next = w->pending_since + iv;
		}
		if (w->o.sync == WAL_SYNC_FDATASYNC && w->unsynced) {
			if (stop || w->sync_now || now - w->unsynced_since >= iv) {
				seg_filename(name, wal_active(w)->name);
				fd = dup(w->fd);
				w->unsynced = 0;
				w->sync_now = 0;
				pthread_mutex_unlock(&w->lock);
				r = fd >= 0 ? fdatasync(fd) : -1;
				e = errno;
				if (fd >= 0)
					close(fd);
				pthread_mutex_lock(&w->lock);
				if (r < 0) {
					wal_seterr(w, "wal: fdatasync(%s/%s) failed: %s "
					           "(check the disk; appends are "
					           "refused from now on)", w->dir, name,
					           strerror(e));
					w->failed = 1;
				}
				continue;
			}
			if (w->unsynced_since + iv < next)
				next = w->unsynced_since + iv;
		}
		if (stop)
			break;
		if (next == INT64_MAX) {
			pthread_cond_wait(&w->wake, &w->lock);
		} else {
			ts.tv_sec = (time_t)(next / 1000);
			ts.tv_nsec = (long)(next % 1000) * 1000000;
			pthread_cond_timedwait(&w->wake, &w->lock, &ts);
		}
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* --- open ----------------------------------------------------------------- */

static int mkdir_p(const char *dir, char *err, size_t errlen)
{
	char *p = strdup(dir), *s;
	struct stat st;
	int rc = IOTR_OK;

	if (!p)
		return IOTR_ENOMEM;
	for (s = p + 1; ; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		if (s[-1] != '/') {
			char c = *s;

			*s = '\0';
			if (mkdir(p, 0750) < 0 && errno != EEXIST) {
				msg(err, errlen, "wal: cannot create directory %s: %s "
				    "(create it, writable by the router's user, or "
				    "change wal.dir)", p, strerror(errno));
				rc = WAL_EIO;
				break;
			}
			*s = c;
		}
		if (*s == '\0')
			break;
	}
	if (rc == IOTR_OK && (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))) {
		msg(err, errlen, "wal: %s is not a directory (change wal.dir)", dir);
		rc = WAL_EIO;
	}
	free(p);
	return rc;
}

/* Segment file names: 20 digits and ".wal". */
static int parse_seg_name(const char *s, uint64_t *v)
{
	unsigned long long x;
	char *end;
	int i;

	if (strlen(s) != 24 || strcmp(s + 20, ".wal") != 0)
		return 0;
	for (i = 0; i < 20; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno || end != s + 20)
		return 0;
	*v = x;
	return 1;
}

static int wal_list(struct wal *w, uint64_t **out, size_t *n, char *err,
                    size_t errlen)
{
	uint64_t *v = NULL, *nv, name;
	size_t cap = 0;
	struct dirent *de;
	DIR *d;
	int fd;

	*n = 0;
	fd = dup(w->dirfd);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		msg(err, errlen, "wal: cannot list %s: %s", w->dir, strerror(errno));
		if (fd >= 0)
			close(fd);
		return WAL_EIO;
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		if (!parse_seg_name(de->d_name, &name))
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				free(v);
				closedir(d);
				return IOTR_ENOMEM;
			}
			v = nv;
		}
		v[(*n)++] = name;
	}
	closedir(d);
	if (*n)
		qsort(v, *n, sizeof(*v), cmp_u64);
	*out = v;
	return IOTR_OK;
}

/* One record found by the scan: 1 taken, 0 not consistent with the rest
 * (treated as corrupt bytes), IOTR_ENOMEM. */
static int wal_scan_record(struct wal *w, struct wal_seg *s,
                           const struct wal_rec *r, struct wal_open_report *rep)
{
	struct wal_chunk *c;
	const unsigned char *p;
	uint32_t i;

	if (r->version != WAL_VERSION)
		return 0;
	switch (r->type) {
	case WAL_T_DATA:
		if (r->id < s->name || r->id <= w->max_data_id)
			return 0;
		c = seg_chunk_for_new(s, r->id);
		if (!c)
			return IOTR_ENOMEM;
		chunk_set(c, r->id);
		if (!s->last_id)
			s->first_id = s->lo = r->id;
		s->last_id = r->id;
		s->live++;
		w->live++;
		w->max_data_id = r->id;
		return 1;
	case WAL_T_RELEASE:
		if (r->len == 0 || r->len % WAL_RANGE_BYTES)
			return 0;
		for (i = 0, p = r->payload; i < r->len; i += WAL_RANGE_BYTES,
		     p += WAL_RANGE_BYTES)
			rep->records_released +=
				wal_release_range(w, get64(p), get32(p + 8));
		return 1;
	default:
		return 0;
	}
}

/* Read one segment file into memory, checking every record.  The newest
 * keeps its descriptor as the active segment and loses a bad tail. */
static int wal_scan(struct wal *w, struct wal_seg *s, int newest,
                    struct wal_open_report *rep, char *err, size_t errlen)
{
	char name[WAL_NAME_MAX];
	struct wal_cursor c;
	struct wal_rec r;
	uint64_t size, good_end = 0, bad = 0;
	struct stat st;
	int fd, rc;

	seg_filename(name, s->name);
	fd = openat(w->dirfd, name, (newest ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		msg(err, errlen, "wal: cannot open %s/%s: %s (the router's user "
		    "needs read and write access to %s)", w->dir, name,
		    strerror(errno), w->dir);
		if (fd >= 0)
			close(fd);
		return WAL_EIO;
	}
	size = (uint64_t)st.st_size;
	cur_init(&c, fd);
	for (;;) {
		rc = cur_next(&c, size, &r);
		bad += c.skipped;
		if (rc != CUR_REC)
			break;
		rc = wal_scan_record(w, s, &r, rep);
		if (rc < 0)
			break;
		if (rc) {
			if (bad) {
				rep->corrupt_regions++;
				rep->bytes_skipped += bad;
				bad = 0;
			}
			good_end = r.off + WAL_HDR + r.len;
		} else {
			bad += WAL_HDR + (uint64_t)r.len;
		}
	}
	cur_free(&c);
	if (c.max_hdr_id > w->last_id)
		w->last_id = c.max_hdr_id;
	if (rc != CUR_END) {
		if (rc == IOTR_ENOMEM || rc == CUR_ENOMEM) {
			msg(err, errlen, "wal: out of memory reading %s/%s", w->dir, name);
			rc = IOTR_ENOMEM;
		} else {
			msg(err, errlen, "wal: cannot read %s/%s: %s (check the "
			    "disk)", w->dir, name, rc == CUR_SHORT ?
			    "the file shrank while being read" : strerror(c.err));
			rc = WAL_EIO;
		}
		close(fd);
		return rc;
	}
	if (bad && newest) {
		/* a torn write (or damage) at the very end: cut it, so that
		 * appends follow the last whole record */
		if (ftruncate(fd, (off_t)good_end) < 0) {
			msg(err, errlen, "wal: cannot truncate the torn tail of %s/%s: "
			    "%s (the router needs write access to %s)", w->dir,
			    name, strerror(errno), w->dir);
			close(fd);
			return WAL_EIO;
		}
		rep->bytes_truncated += size - good_end;
		size = good_end;
	} else if (bad) {
		rep->corrupt_regions++;
		rep->bytes_skipped += bad;
	}
	s->size = size;
	w->bytes += size;
	if (newest)
		w->fd = fd;
	else
		close(fd);
	return IOTR_OK;
}

static void wal_free(struct wal *w)
{
	size_t i;

	for (i = 0; i < w->nsegs; i++)
		seg_free(w->segs[i]);
	free(w->segs);
	if (w->fd >= 0)
		close(w->fd);
	if (w->lockfd >= 0)
		close(w->lockfd);
	if (w->dirfd >= 0)
		close(w->dirfd);
	free(w->pending);
	free(w->marker_buf);
	free(w->dir);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

static int wal_options_check(struct wal *w, const struct wal_options *o,
                             char *err, size_t errlen)
{
	w->o = *o;
	if (!w->o.segment_bytes)
		w->o.segment_bytes = WAL_DEFAULT_SEGMENT;
	if (!w->o.max_bytes)
		w->o.max_bytes = WAL_DEFAULT_MAX;
	if (w->o.sync_interval_ms <= 0)
		w->o.sync_interval_ms = WAL_DEFAULT_INTERVAL;
	if (!w->o.sync_every)
		w->o.sync_every = WAL_DEFAULT_EVERY;
	if (w->o.sync != WAL_SYNC_WRITE && w->o.sync != WAL_SYNC_FDATASYNC) {
		msg(err, errlen, "wal: unknown sync mode %d (use write or "
		    "fdatasync)", w->o.sync);
		return IOTR_EINVAL;
	}
	if (w->o.segment_bytes > w->o.max_bytes) {
		msg(err, errlen, "wal: segment_bytes (%" PRIu64 ") is larger than "
		    "max_bytes (%" PRIu64 "): raise max_bytes to a few segments",
		    w->o.segment_bytes, w->o.max_bytes);
		return IOTR_EINVAL;
	}
	w->o.dir = w->dir;
	return IOTR_OK;
}

int wal_open(struct wal **out, const struct wal_options *o,
             struct wal_open_report *rep, char *err, size_t errlen)
{
	struct wal_open_report dummy;
	pthread_condattr_t ca;
	uint64_t *names = NULL;
	size_t n = 0, i;
	struct wal_seg *s;
	struct wal *w;
	int rc;

	if (!rep)
		rep = &dummy;
	memset(rep, 0, sizeof(*rep));
	msg(err, errlen, "%s", "");
	if (!out || !o || !o->dir || !*o->dir) {
		msg(err, errlen, "wal: no directory given (set wal.dir)");
		return IOTR_EINVAL;
	}
	*out = NULL;
	pthread_once(&crc_once, crc_init);

	w = calloc(1, sizeof(*w));
	if (!w)
		return IOTR_ENOMEM;
	w->fd = w->dirfd = w->lockfd = -1;
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->wake, &ca);
	pthread_condattr_destroy(&ca);
	w->dir = strdup(o->dir);
	w->marker_buf = malloc(WAL_RANGES_PER_MARKER * WAL_RANGE_BYTES);
	if (!w->dir || !w->marker_buf) {
		rc = IOTR_ENOMEM;
		goto fail;
	}
	rc = wal_options_check(w, o, err, errlen);
	if (rc)
		goto fail;

	rc = mkdir_p(w->dir, err, errlen);
	if (rc)
		goto fail;
	w->dirfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w->dirfd < 0) {
		msg(err, errlen, "wal: cannot open directory %s: %s (the router's "
		    "user needs access to it)", w->dir, strerror(errno));
		rc = WAL_EIO;
		goto fail;
	}
	w->lockfd = openat(w->dirfd, WAL_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC,
	                   0640);
	if (w->lockfd < 0) {
		msg(err, errlen, "wal: cannot create %s/%s: %s (the router needs "
		    "write access to %s)", w->dir, WAL_LOCK_NAME, strerror(errno),
		    w->dir);
		rc = WAL_EIO;
		goto fail;
	}
	if (flock(w->lockfd, LOCK_EX | LOCK_NB) < 0) {
		msg(err, errlen, "wal: %s is in use by another process (%s/%s "
		    "is locked): give each router its own wal.dir", w->dir,
		    w->dir, WAL_LOCK_NAME);
		rc = WAL_EIO;
		goto fail;
	}

	rc = wal_list(w, &names, &n, err, errlen);
	if (rc)
		goto fail;
	rep->segments = n;
	for (i = 0; i < n; i++) {
		s = seg_new(w, names[i]);
		if (!s) {
			rc = IOTR_ENOMEM;
			goto fail;
		}
		rc = wal_scan(w, s, i == n - 1, rep, err, errlen);
		if (rc)
			goto fail;
		if (names[i] && names[i] - 1 > w->last_id)
			w->last_id = names[i] - 1;
	}
	free(names);
	names = NULL;
	rep->segments_deleted = wal_gc(w);
	if (!w->nsegs) {
		rc = wal_segment_create(w, w->last_id == UINT64_MAX ?
		                           UINT64_MAX : w->last_id + 1);
		if (rc) {
			msg(err, errlen, "%s", w->err);
			goto fail;
		}
	}
	rep->records_live = w->live;
	rep->last_id = w->last_id;

	if (pthread_create(&w->thread, NULL, wal_sync_main, w) != 0) {
		msg(err, errlen, "wal: cannot start its sync thread");
		rc = IOTR_ENOMEM;
		goto fail;
	}
	w->thread_started = 1;
	w->err[0] = '\0';
	*out = w;
	return IOTR_OK;
fail:
	if (rc == IOTR_ENOMEM && err && errlen && !err[0])
		msg(err, errlen, "wal: out of memory opening %s", o->dir);
	free(names);
	wal_free(w);
	return rc;
}

/* --- append, release, drop ------------------------------------------------ */

static int wal_append_cap(struct wal *w, const void *data, size_t len,
                          uint64_t *id, int over_cap);

int wal_append(struct wal *w, const void *data, size_t len, uint64_t *id)
{
	return wal_append_cap(w, data, len, id, 0);
}

int wal_append_over_cap(struct wal *w, const void *data, size_t len,
                        uint64_t *id)
{
	return wal_append_cap(w, data, len, id, 1);
}

static int wal_append_cap(struct wal *w, const void *data, size_t len,
                          uint64_t *id, int over_cap)
{
	uint64_t rec = WAL_HDR + (uint64_t)len, nid;
	struct wal_chunk *c;
	struct wal_seg *s;
	uint32_t dcrc;
	int rc = IOTR_OK;

	if (!w || (!data && len))
		return IOTR_EINVAL;
	if (len > WAL_MAX_PAYLOAD || rec > w->o.max_bytes)
		return IOTR_EINVAL;
	dcrc = crc32c(data, len);

	pthread_mutex_lock(&w->lock);
	if (w->failed) {
		rc = WAL_EIO;
		goto out;
	}
	if (w->last_id == UINT64_MAX) {
		wal_seterr(w, "wal: the ids in %s are used up (move the "
		           "directory away to start afresh)", w->dir);
		rc = WAL_EIO;
		goto out;
	}
	s = wal_active(w);
	/* Released records in the active segment are freed only by a roll:
	 * do one before calling the log full. */
	if (w->bytes + rec > w->o.max_bytes && s->last_id && !s->live) {
		rc = wal_roll(w);
		if (rc)
			goto out;
		s = wal_active(w);
	}
	if (w->bytes + rec > w->o.max_bytes && !over_cap) {
		wal_seterr(w, "wal: %s is full: %" PRIu64 " of %" PRIu64 " bytes "
		           "(wal.max_bytes) hold records not yet delivered; "
		           "deliveries free space, a larger wal.max_bytes holds "
		           "a longer outage", w->dir, w->bytes, w->o.max_bytes);
		rc = WAL_EFULL;
		goto out;
	}
	if (s->last_id && s->size + rec > w->o.segment_bytes) {
		rc = wal_roll(w);
		if (rc)
			goto out;
		s = wal_active(w);
	}
	nid = w->last_id + 1;
	c = seg_chunk_for_new(s, nid);
	if (!c) {
		rc = IOTR_ENOMEM;
		goto out;
	}
	rc = wal_write_record(w, WAL_T_DATA, nid, data, len, dcrc);
	if (rc)
		goto out;
	chunk_set(c, nid);
	if (!s->last_id)
		s->first_id = s->lo = nid;
	s->last_id = nid;
	s->live++;
	w->live++;
	w->last_id = nid;
	if (w->o.sync == WAL_SYNC_FDATASYNC) {
		if (w->unsynced++ == 0) {
			w->unsynced_since = now_ms();
			pthread_cond_signal(&w->wake);
		}
		if (w->unsynced >= w->o.sync_every && !w->sync_now) {
			w->sync_now = 1;
			pthread_cond_signal(&w->wake);
		}
	}
	if (id)
		*id = nid;
out:
	pthread_mutex_unlock(&w->lock);
	return rc;
}

static void wal_pending_add(struct wal *w, uint64_t id)
{
	uint64_t *v;
	size_t cap;

	if (w->npending == w->pending_cap) {
		cap = w->pending_cap ? w->pending_cap * 2 : 64;
		v = realloc(w->pending, cap * sizeof(*v));
		if (v) {
			w->pending = v;
			w->pending_cap = cap;
		} else {
			wal_flush_markers(w);
			if (w->npending == w->pending_cap)
				return;   /* no marker: the record is replayed again */
		}
	}
	w->pending[w->npending++] = id;
	if (w->npending == 1) {
		w->pending_since = now_ms();
		pthread_cond_signal(&w->wake);
	}
	if (w->npending >= WAL_PENDING_MAX)
		wal_flush_markers(w);
}

void wal_release(struct wal *w, uint64_t id)
{
	ptrdiff_t i;
	struct wal_seg *s;

	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	i = seg_index_for_id(w, id);
	if (i >= 0) {
		s = w->segs[i];
		if (seg_is_live(s, id)) {
			wal_release_range(w, id, 1);
			wal_pending_add(w, id);
			if (i == 0 && !s->live)
				wal_gc(w);
		}
	}
	pthread_mutex_unlock(&w->lock);
}

uint64_t wal_drop_oldest(struct wal *w)
{
	char name[WAL_NAME_MAX], to[WAL_NAME_MAX];
	struct wal_seg *s;
	uint64_t n;

	if (!w)
		return 0;
	pthread_mutex_lock(&w->lock);
	s = w->segs[0];
	n = s->live;
	seg_filename(name, s->name);
	if (w->nsegs > 1) {
		if (unlinkat(w->dirfd, name, 0) < 0 && errno != ENOENT) {
			wal_seterr(w, "wal: cannot delete %s/%s: %s (the router "
			           "needs write access to %s)", w->dir, name,
			           strerror(errno), w->dir);
			n = 0;
			goto out;
		}
		seg_pop_oldest(w);
		wal_gc(w);
		goto out;
	}
	/* The only segment is the active one: empty it in place, then give it
	 * the next id's name (a crash in between leaves an empty segment) and
	 * a new serial, so that readers inside it start over. */
	if (ftruncate(w->fd, 0) < 0) {
		wal_seterr(w, "wal: cannot empty %s/%s: %s", w->dir, name,
		           strerror(errno));
		n = 0;
		goto out;
	}
	w->bytes -= s->size;
	w->live -= s->live;
	seg_clear_ids(s);
	s->size = 0;
	s->serial = ++w->serial;
	s->lo = w->last_id + 1;
	if (w->last_id + 1 != s->name) {
		seg_filename(to, w->last_id + 1);
		if (renameat(w->dirfd, name, w->dirfd, to) == 0)
			s->name = w->last_id + 1;
		else
			wal_seterr(w, "wal: cannot rename %s/%s: %s", w->dir,
			           name, strerror(errno));
	}
out:
	pthread_mutex_unlock(&w->lock);
	return n;
}

/* --- readers -------------------------------------------------------------- */

struct wal_reader {
	struct wal *w;
	uint64_t next_id;     /* return ids >= this */
	uint64_t serial;      /* segment being read; 0 before the first */
	int done;             /* read to the end of a sealed segment */
	struct wal_cursor cur;
};

struct wal_reader *wal_reader_open(struct wal *w, uint64_t from_id)
{
	struct wal_reader *r;

	if (!w)
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->w = w;
	r->next_id = from_id;
	cur_init(&r->cur, -1);
	return r;
}

/* Move r into the segment it reads next (lock held): its index, -1 when
 * there is none, or WAL_EIO. */
static ptrdiff_t reader_enter(struct wal_reader *r)
{
	struct wal *w = r->w;
	char name[WAL_NAME_MAX];
	ptrdiff_t i = -1;
	size_t k;
	int fd;

	if (r->serial && !r->done)
		i = seg_index_by_serial(w, r->serial);
	if (i >= 0)
		return i;
	if (!r->serial) {
		i = seg_index_for_id(w, r->next_id);
		k = i < 0 ? 0 : (size_t)i;
	} else {
		k = seg_index_from_serial(w, r->serial + 1);
	}
	if (k >= w->nsegs)
		return -1;
	seg_filename(name, w->segs[k]->name);
	fd = openat(w->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		wal_seterr(w, "wal: cannot open %s/%s to replay it: %s", w->dir,
		           name, strerror(errno));
		return WAL_EIO;
	}
	cur_reset(&r->cur, fd);
	r->serial = w->segs[k]->serial;
	r->done = 0;
	return (ptrdiff_t)k;
}

int wal_reader_next(struct wal_reader *r, uint64_t *id, void **data,
                    size_t *len)
{
	struct wal *w;
	struct wal_rec rec;
	uint64_t end;
	ptrdiff_t i;
	int newest, live, rc;
	void *p;

	if (!r || !id || !data || !len)
		return IOTR_EINVAL;
	w = r->w;
	for (;;) {
		pthread_mutex_lock(&w->lock);
		i = reader_enter(r);
		if (i < 0) {
			pthread_mutex_unlock(&w->lock);
			return i == -1 ? 0 : (int)i;
		}
		end = w->segs[i]->size;
		newest = (size_t)i == w->nsegs - 1;
		pthread_mutex_unlock(&w->lock);

		rc = cur_next(&r->cur, end, &rec);
		if (rc == CUR_ENOMEM)
			return IOTR_ENOMEM;
		if (rc == CUR_ERR) {
			pthread_mutex_lock(&w->lock);
			wal_seterr(w, "wal: cannot read %s: %s (check the disk)",
			           w->dir, strerror(r->cur.err));
			pthread_mutex_unlock(&w->lock);
			return WAL_EIO;
		}
		if (rc == CUR_REC) {
			if (rec.type != WAL_T_DATA || rec.version != WAL_VERSION ||
			    rec.id < r->next_id)
				continue;
			pthread_mutex_lock(&w->lock);
			i = seg_index_by_serial(w, r->serial);
			live = i >= 0 && seg_is_live(w->segs[i], rec.id);
			pthread_mutex_unlock(&w->lock);
			if (!live)
				continue;
			p = malloc(rec.len ? rec.len : 1);
			if (!p)
				return IOTR_ENOMEM;
			memcpy(p, rec.payload, rec.len);
			*id = rec.id;
			*data = p;
			*len = rec.len;
			r->next_id = rec.id + 1;
			return 1;
		}
		if (rc == CUR_END && newest) {
			pthread_mutex_lock(&w->lock);
			i = seg_index_by_serial(w, r->serial);
			live = i >= 0 && (size_t)i == w->nsegs - 1 &&
			       w->segs[i]->size == end;
			pthread_mutex_unlock(&w->lock);
			if (live)
				return 0;     /* caught up */
			continue;         /* it grew, or was sealed, or went */
		}
		r->done = 1;          /* sealed and read, or emptied under us */
	}
}

void wal_reader_close(struct wal_reader *r)
{
	if (!r)
		return;
	if (r->cur.fd >= 0)
		close(r->cur.fd);
	cur_free(&r->cur);
	free(r);
}

/* --- accessors, close ----------------------------------------------------- */

uint64_t wal_last_id(struct wal *w)
{
	uint64_t v;

	pthread_mutex_lock(&w->lock);
	v = w->last_id;
	pthread_mutex_unlock(&w->lock);
	return v;
}

uint64_t wal_bytes(struct wal *w)
{
	uint64_t v;

	pthread_mutex_lock(&w->lock);
	v = w->bytes;
	pthread_mutex_unlock(&w->lock);
	return v;
}

uint64_t wal_live_records(struct wal *w)
{
	uint64_t v;

	pthread_mutex_lock(&w->lock);
	v = w->live;
	pthread_mutex_unlock(&w->lock);
	return v;
}

const char *wal_error(struct wal *w, char *buf, size_t len)
{
	if (!buf || !len)
		return buf;
	buf[0] = '\0';
	if (!w)
		return buf;
	pthread_mutex_lock(&w->lock);
	snprintf(buf, len, "%s", w->err);
	pthread_mutex_unlock(&w->lock);
	return buf;
}

void wal_close(struct wal *w)
{
	if (!w)
		return;
	if (w->thread_started) {
		pthread_mutex_lock(&w->lock);
		w->stopping = 1;
		pthread_cond_signal(&w->wake);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->thread, NULL);
	}
	pthread_mutex_lock(&w->lock);
	wal_flush_markers(w);
	if (w->o.sync == WAL_SYNC_FDATASYNC && w->fd >= 0 && fdatasync(w->fd) < 0) {
		/* nothing left to tell: the process is closing the log */
	}
	pthread_mutex_unlock(&w->lock);
	wal_free(w);
}
