/*
 * msg.c - create, copy, change and free messages.
 *
 * No locking: a message has one owner at a time (see msg.h).
 */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "msg.h"
#include "route.h"

int64_t msg_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Fill copy (len + 1 bytes, or NULL when their allocation failed) with len
 * bytes and a NUL after them, so text fields are C strings. */
static char *text_into(char *copy, const void *data, size_t len)
{
	if (!copy)
		return NULL;
	if (len)
		memcpy(copy, data, len);
	copy[len] = '\0';
	return copy;
}

/*
 * Room msg_new() adds to each message for what routing attaches to it:
 * captures, destination, key and headers.  Routes that fit (most; a topic's
 * captures and the default headers are about the topic's length again) cost
 * no allocation beyond the message's own; the rest falls back to malloc().
 */
#define MSG_SPARE_MIN 256

#define MSG_ALIGN(n) (((n) + 7) & ~(size_t)7)

/*
 * Message pools.  A message is made on its input's thread and freed on
 * whichever thread its delivery report arrives on; freed there, its memory
 * goes into that thread's malloc caches while the input's thread keeps
 * taking new memory from the shared arena, and both contend for the arena
 * lock on every message.  So each thread that makes messages keeps a pool of
 * blocks in a few fixed sizes: a message freed on its own thread goes back
 * into the pool; one freed elsewhere is pushed onto its pool's return stack
 * (lock-free), which the owning thread takes whole when it runs short.
 * Messages larger than the largest class use malloc() and free() directly.
 * Each pool keeps at most pool_keep_bytes (router.message_pool_bytes);
 * blocks past that are freed.
 * Under AddressSanitizer there are no pools, so that it sees every message's
 * life.
 */
static const size_t pool_class_size[] = { 512, 768, 1024, 2048, 4096 };
#define MSG_POOL_CLASSES (sizeof(pool_class_size) / sizeof(pool_class_size[0]))
#define MSG_POOL_KEEP_BYTES_DEFAULT ((size_t)4 << 20)

#if defined(__SANITIZE_ADDRESS__)
#define MSG_POOLS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MSG_POOLS 0
#endif
#endif
#ifndef MSG_POOLS
#define MSG_POOLS 1
#endif

struct msg_pool {
	_Atomic(iotr_msg *) returned;       /* freed on other threads */
	iotr_msg *free[MSG_POOL_CLASSES];   /* owner only, linked by next */
	size_t kept_bytes;                  /* owner only */
	struct msg_pool *all_next;          /* pools_all */
};

static size_t pool_keep_bytes = MSG_POOL_KEEP_BYTES_DEFAULT;
static _Thread_local struct msg_pool *pool_self;
static struct msg_pool *pools_all;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

static struct msg_pool *pool_of_this_thread(void)
{
	struct msg_pool *pool = pool_self;

	if (pool || !MSG_POOLS)
		return pool;
	if (!(pool = calloc(1, sizeof(*pool))))
		return NULL;
	atomic_init(&pool->returned, NULL);
	pthread_mutex_lock(&pools_lock);
	pool->all_next = pools_all;
	pools_all = pool;
	pthread_mutex_unlock(&pools_lock);
	return pool_self = pool;
}

/* Keep a block in its owner's pool, or free it when the pool is full. */
static void pool_keep(struct msg_pool *pool, iotr_msg *block)
{
	size_t size = pool_class_size[block->pool_class];

	if (pool->kept_bytes + size > pool_keep_bytes) {
		free(block);
		return;
	}
	block->next = pool->free[block->pool_class];
	pool->free[block->pool_class] = block;
	pool->kept_bytes += size;
}

/* A block of class cls from this thread's pool, or NULL. */
static iotr_msg *pool_take(struct msg_pool *pool, unsigned cls)
{
	iotr_msg *block = pool->free[cls], *back, *next;

	if (!block) {
		back = atomic_exchange_explicit(&pool->returned, NULL,
		                                memory_order_acquire);
		for (; back; back = next) {
			next = back->next;
			pool_keep(pool, back);
		}
		if (!(block = pool->free[cls]))
			return NULL;
	}
	pool->free[cls] = block->next;
	pool->kept_bytes -= pool_class_size[cls];
	return block;
}

static void pool_give_back(iotr_msg *block)
{
	struct msg_pool *pool = block->pool;

	if (pool == pool_self) {
		pool_keep(pool, block);
		return;
	}
	block->next = atomic_load_explicit(&pool->returned,
	                                   memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(
			&pool->returned, &block->next, block,
			memory_order_release, memory_order_relaxed))
		;
}

void msg_pools_set_keep(size_t bytes)
{
	pool_keep_bytes = bytes;
}

void msg_pools_free(void)
{
	struct msg_pool *pool, *next_pool;
	iotr_msg *block, *next;
	size_t c;

	pthread_mutex_lock(&pools_lock);
	for (pool = pools_all; pool; pool = next_pool) {
		next_pool = pool->all_next;
		for (c = 0; c < MSG_POOL_CLASSES; c++)
			for (block = pool->free[c]; block; block = next) {
				next = block->next;
				free(block);
			}
		for (block = atomic_load(&pool->returned); block; block = next) {
			next = block->next;
			free(block);
		}
		free(pool);
	}
	pools_all = NULL;
	pthread_mutex_unlock(&pools_lock);
	pool_self = NULL;
}

/* A block of at least size bytes for a new message; its size in *got. */
static iotr_msg *msg_block(size_t size, size_t *got)
{
	struct msg_pool *pool = pool_of_this_thread();
	iotr_msg *block = NULL;
	unsigned c;

	for (c = 0; pool && c < MSG_POOL_CLASSES; c++) {
		if (size > pool_class_size[c])
			continue;
		if (!(block = pool_take(pool, c)) &&
		    !(block = malloc(pool_class_size[c])))
			return NULL;
		block->pool = pool;
		block->pool_class = (unsigned char)c;
		*got = pool_class_size[c];
		return block;
	}
	if ((block = malloc(size)) != NULL)
		block->pool = NULL;
	*got = size;
	return block;
}

/*
 * One allocation holds the message, its topic, its first payload and the
 * spare room: the hot path makes one allocation where it would make ten.  A
 * payload set later gets its own buffer (see msg_set_payload).
 */
iotr_msg *msg_new(const char *topic, const void *payload, size_t len)
{
	size_t tlen = topic ? strlen(topic) : 0;
	size_t head, got;
	iotr_msg *msg;
	struct msg_pool *pool;
	unsigned char cls;
	char *p;

	if (!payload)
		len = 0;
	head = MSG_ALIGN(sizeof(*msg) + tlen + 1 + len + 1);
	msg = msg_block(head + MSG_SPARE_MIN + 2 * tlen, &got);
	if (!msg)
		return NULL;
	pool = msg->pool;
	cls = msg->pool_class;
	memset(msg, 0, sizeof(*msg));
	msg->pool = pool;
	msg->pool_class = cls;
	p = (char *)(msg + 1);
	msg->topic = p;
	memcpy(p, topic ? topic : "", tlen + 1);
	p += tlen + 1;
	msg->payload = p;
	if (len)
		memcpy(p, payload, len);
	p[len] = '\0';
	msg->payload_len = len;
	msg->time_us = msg_now_us();
	/* all of the block past the head: a pooled block may give more */
	msg->spare = (char *)msg + head;
	msg->spare_len = got - head;
	msg->block_end = (char *)msg + got;
	return msg;
}

void *msg_alloc(iotr_msg *msg, size_t size)
{
	void *part;

	size = MSG_ALIGN(size ? size : 1);
	if (size > msg->spare_len)
		return malloc(size);
	part = msg->spare;
	msg->spare += size;
	msg->spare_len -= size;
	return part;
}

void msg_release(const iotr_msg *msg, void *part)
{
	const char *c = part;

	/* the spare room is freed with the message */
	if (c >= (const char *)(msg + 1) && c < msg->block_end)
		return;
	free(part);
}

/* A part of msg holding len bytes and a NUL after them. */
static char *msg_dup(iotr_msg *msg, const void *data, size_t len)
{
	return text_into(msg_alloc(msg, len + 1), data, len);
}

/* Whether the payload lives in the message's own block. */
static int payload_inline(const iotr_msg *msg)
{
	return msg->payload == msg->topic + strlen(msg->topic) + 1;
}

/* The captures array and its strings are one allocation (route.c). */
static void msg_drop_captures(iotr_msg *msg)
{
	msg_release(msg, msg->captures);
	msg->captures = NULL;
}

void msg_free(iotr_msg *msg)
{
	size_t i;

	if (!msg)
		return;
	msg_drop_captures(msg);
	for (i = 0; i < msg->nheaders; i++)  /* value is in the same part */
		msg_release(msg, msg->headers[i].name);
	msg_release(msg, msg->headers);
	if (msg->json)
		json_decref(msg->json);
	if (!payload_inline(msg))
		free(msg->payload);
	msg->payload = NULL;
	msg_release(msg, msg->key);
	msg_release(msg, msg->dest);
	msg_release(msg, msg->error);
	if (msg->pool)
		pool_give_back(msg);
	else
		free(msg);
}

char **captures_copy(char *const *src, size_t n)
{
	size_t i, size = n * sizeof(char *);
	char **dst, *p;

	for (i = 0; i < n; i++)
		size += src[i] ? strlen(src[i]) + 1 : 0;
	if (!(dst = malloc(size ? size : 1)))
		return NULL;
	p = (char *)(dst + n);
	for (i = 0; i < n; i++) {
		if (!src[i]) {
			dst[i] = NULL;
			continue;
		}
		dst[i] = p;
		p = stpcpy(p, src[i]) + 1;
	}
	return dst;
}

iotr_msg *msg_clone(const iotr_msg *src)
{
	iotr_msg *msg = msg_new(src->topic, src->payload, src->payload_len);
	size_t i;

	if (!msg)
		return NULL;
	msg->qos = src->qos;
	msg->retain = src->retain;
	msg->time_us = src->time_us;
	msg->route = src->route;
	msg->source = src->source;
	msg->stage = src->stage;
	msg->dead_letter = src->dead_letter;
	if (src->key && msg_set_key(msg, src->key, src->key_len))
		goto fail;
	if (src->dest && msg_set_dest(msg, src->dest))
		goto fail;
	if (src->error)
		msg_set_error(msg, src->error);
	for (i = 0; i < src->nheaders; i++)
		if (msg_add_header(msg, src->headers[i].name,
		                   src->headers[i].value, src->headers[i].len))
			goto fail;
	if (src->captures &&
	    !(msg->captures = captures_copy(src->captures,
	                                    src->route->filter.ncaptures)))
		goto fail;
	return msg;
fail:
	msg_free(msg);
	return NULL;
}

int msg_set_payload(iotr_msg *msg, const void *payload, size_t len)
{
	size_t n = payload ? len : 0;
	void *copy = text_into(malloc(n + 1), payload, n);

	if (!copy)
		return IOTR_ENOMEM;
	if (!payload_inline(msg))
		free(msg->payload);
	msg->payload = copy;
	msg->payload_len = n;
	if (msg->json)
		json_decref(msg->json);
	msg->json = NULL;
	msg->json_state = 0;
	return IOTR_OK;
}

int msg_set_key(iotr_msg *msg, const char *key, size_t len)
{
	char *copy = NULL;

	if (key && !(copy = msg_dup(msg, key, len)))
		return IOTR_ENOMEM;
	msg_release(msg, msg->key);
	msg->key = copy;
	msg->key_len = key ? len : 0;
	return IOTR_OK;
}

int msg_set_dest(iotr_msg *msg, const char *topic)
{
	char *copy = NULL;

	if (topic && !(copy = msg_dup(msg, topic, strlen(topic))))
		return IOTR_ENOMEM;
	msg_release(msg, msg->dest);
	msg->dest = copy;
	return IOTR_OK;
}

int msg_set_qos(iotr_msg *msg, int qos, int retain)
{
	if (qos < 0 || qos > 2)
		return IOTR_EINVAL;
	msg->qos = qos;
	msg->retain = !!retain;
	return IOTR_OK;
}

int msg_set_time(iotr_msg *msg, int64_t time_us)
{
	msg->time_us = time_us;
	return IOTR_OK;
}

int msg_add_header(iotr_msg *msg, const char *name, const void *value,
                   size_t len)
{
	struct msg_header *h;

	if (!name)
		return IOTR_EINVAL;
	if (msg->nheaders == msg->headers_cap) {
		size_t cap = msg->headers_cap ? msg->headers_cap * 2 : 4;

		h = msg_alloc(msg, cap * sizeof(*h));
		if (!h)
			return IOTR_ENOMEM;
		if (msg->nheaders)
			memcpy(h, msg->headers, msg->nheaders * sizeof(*h));
		msg_release(msg, msg->headers);
		msg->headers = h;
		msg->headers_cap = cap;
	}
	/* Name and value in one part. */
	h = &msg->headers[msg->nheaders];
	if (!value)
		len = 0;
	{
		size_t nlen = strlen(name);
		char *block = msg_alloc(msg, nlen + 1 + len + 1);

		if (!block)
			return IOTR_ENOMEM;
		memcpy(block, name, nlen + 1);
		h->name = block;
		h->value = block + nlen + 1;
		if (len)
			memcpy(h->value, value, len);
		((char *)h->value)[len] = '\0';
		h->len = len;
	}
	msg->nheaders++;
	return IOTR_OK;
}

void msg_remove_header(iotr_msg *msg, const char *name)
{
	size_t i, kept = 0;

	for (i = 0; i < msg->nheaders; i++) {
		if (strcmp(msg->headers[i].name, name) == 0) {
			msg_release(msg, msg->headers[i].name);
			continue;
		}
		msg->headers[kept++] = msg->headers[i];
	}
	msg->nheaders = kept;
}

const void *msg_header(const iotr_msg *msg, const char *name, size_t *len)
{
	size_t i;

	for (i = 0; i < msg->nheaders; i++) {
		if (strcmp(msg->headers[i].name, name) == 0) {
			if (len)
				*len = msg->headers[i].len;
			return msg->headers[i].value;
		}
	}
	return NULL;
}

void msg_set_error(iotr_msg *msg, const char *reason)
{
	msg_release(msg, msg->error);
	msg->error = reason ? msg_dup(msg, reason, strlen(reason)) : NULL;
}

const char *msg_capture(const iotr_msg *msg, const char *name)
{
	int i;

	if (!msg->route || !msg->captures)
		return NULL;
	i = filter_capture_index(&msg->route->filter, name);
	return i < 0 ? NULL : msg->captures[i];
}

json_t *msg_json(iotr_msg *msg)
{
	if (msg->json_state == 0) {
		msg->json = json_loadb(msg->payload, msg->payload_len,
		                       JSON_DECODE_ANY, NULL);
		msg->json_state = msg->json ? 1 : -1;
	}
	return msg->json;
}

size_t msg_size(const iotr_msg *msg)
{
	size_t n = msg->payload_len + msg->key_len + strlen(msg->topic);
	size_t i;

	for (i = 0; i < msg->nheaders; i++)
		n += strlen(msg->headers[i].name) + msg->headers[i].len;
	return n;
}

/*
 * The record a message becomes in the write-ahead log: what its input
 * handed over, before any route touched it, so that a replay routes it again
 * under the config of the day.  Little-endian, lengths before bytes:
 *
 *   u8 version (1), u8 qos, u8 retain, u8 flags, i64 time_us,
 *   u16+bytes source instance, u32+bytes topic, u32+bytes payload,
 *   u32 header count, then per header u16+bytes name, u32+bytes value,
 *   then, if flags has MSG_RECORD_KEY, u32+bytes key,
 *   then, if flags has MSG_RECORD_DEST, u32+bytes destination topic
 *
 * An input may set a key (the kafka input: the record's key).  Records
 * without one keep flags 0, as every record had before keys were kept, so
 * a log written by an older router replays unchanged.  MSG_RECORD_MADE
 * marks a message a transform made outside process(): the source is that
 * transform, and a replay goes on after it rather than routing it again.
 */
#define MSG_RECORD_VERSION 1
#define MSG_RECORD_KEY 0x01
#define MSG_RECORD_MADE 0x02
#define MSG_RECORD_DEST 0x04
#define MSG_RECORD_FLAGS (MSG_RECORD_KEY | MSG_RECORD_MADE | MSG_RECORD_DEST)

int msg_buf_add(struct msg_buf *b, const void *data, size_t len)
{
	/* One byte more than asked, kept NUL, so text built here is a C
	 * string (template.c relies on it). */
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		char *p;

		while (cap < b->len + len + 1)
			cap *= 2;
		if (b->data && b->data == b->fixed) {
			/* out of the caller's memory, onto the heap */
			if (!(p = malloc(cap)))
				return -1;
			memcpy(p, b->data, b->len + 1);
		} else if (!(p = realloc(b->data, cap))) {
			return -1;
		}
		b->data = p;
		b->cap = cap;
	}
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

void msg_buf_release(struct msg_buf *b)
{
	if (b->data != b->fixed)
		free(b->data);
	b->data = b->fixed;
	b->len = 0;
	b->cap = b->fixed_cap;
	if (b->data)
		b->data[0] = '\0';
}

static int put_u(struct msg_buf *b, uint64_t v, int bytes)
{
	unsigned char le[8];
	int i;

	for (i = 0; i < bytes; i++)
		le[i] = (unsigned char)(v >> (8 * i));
	return msg_buf_add(b, le, (size_t)bytes);
}

static int put_bytes(struct msg_buf *b, const void *data, size_t len,
                     int lenbytes)
{
	if (lenbytes == 2 && len > UINT16_MAX)
		len = UINT16_MAX;
	if (len > UINT32_MAX)
		return -1;
	return put_u(b, len, lenbytes) || msg_buf_add(b, data, len);
}

int msg_encode(const iotr_msg *msg, const char *source, struct msg_buf *b)
{
	unsigned char head[4] = { MSG_RECORD_VERSION, (unsigned char)msg->qos,
	                          (unsigned char)msg->retain,
	                          msg->key ? MSG_RECORD_KEY : 0 };
	size_t i;

	b->len = 0;
	if (!source)
		source = "";
	if (msg_buf_add(b, head, 4) || put_u(b, (uint64_t)msg->time_us, 8) ||
	    put_bytes(b, source, strlen(source), 2) ||
	    put_bytes(b, msg->topic, strlen(msg->topic), 4) ||
	    put_bytes(b, msg->payload, msg->payload_len, 4) ||
	    put_u(b, msg->nheaders, 4))
		return IOTR_ENOMEM;
	for (i = 0; i < msg->nheaders; i++)
		if (put_bytes(b, msg->headers[i].name,
		              strlen(msg->headers[i].name), 2) ||
		    put_bytes(b, msg->headers[i].value, msg->headers[i].len, 4))
			return IOTR_ENOMEM;
	if (msg->key && put_bytes(b, msg->key, msg->key_len, 4))
		return IOTR_ENOMEM;
	return IOTR_OK;
}

int msg_encode_made(const iotr_msg *msg, const char *transform,
                    struct msg_buf *b)
{
	if (msg_encode(msg, transform, b))
		return IOTR_ENOMEM;
	b->data[3] |= MSG_RECORD_MADE;
	if (msg->dest) {
		b->data[3] |= MSG_RECORD_DEST;
		if (put_bytes(b, msg->dest, strlen(msg->dest), 4))
			return IOTR_ENOMEM;
	}
	return IOTR_OK;
}

struct reader {
	const unsigned char *p, *end;
};

static int get_u(struct reader *r, int bytes, uint64_t *v)
{
	int i;

	if (r->end - r->p < bytes)
		return -1;
	*v = 0;
	for (i = 0; i < bytes; i++)
		*v |= (uint64_t)r->p[i] << (8 * i);
	r->p += bytes;
	return 0;
}

static int get_bytes(struct reader *r, int lenbytes, const void **data,
                     size_t *len)
{
	uint64_t n;

	if (get_u(r, lenbytes, &n) || (uint64_t)(r->end - r->p) < n)
		return -1;
	*data = r->p;
	*len = (size_t)n;
	r->p += n;
	return 0;
}

iotr_msg *msg_decode(const void *data, size_t len, char *source,
                     size_t sourcelen)
{
	struct reader r = { data, (const unsigned char *)data + len };
	const void *topic, *payload, *src, *name, *value;
	size_t topic_len, payload_len, src_len, name_len, value_len;
	uint64_t time_us, n, i;
	unsigned char flags;
	char *topic_z;
	iotr_msg *msg;

	if (len < 12 || r.p[0] != MSG_RECORD_VERSION || r.p[1] > 2 ||
	    r.p[2] > 1 || (r.p[3] & ~MSG_RECORD_FLAGS) ||
	    /* only a made record keeps its destination */
	    (r.p[3] & (MSG_RECORD_DEST | MSG_RECORD_MADE)) == MSG_RECORD_DEST)
		return NULL;
	flags = r.p[3];
	r.p += 4;
	if (get_u(&r, 8, &time_us) || get_bytes(&r, 2, &src, &src_len) ||
	    get_bytes(&r, 4, &topic, &topic_len) ||
	    get_bytes(&r, 4, &payload, &payload_len) || get_u(&r, 4, &n))
		return NULL;
	if (memchr(topic, '\0', topic_len) || memchr(src, '\0', src_len) ||
	    !(topic_z = malloc(topic_len + 1)))
		return NULL;
	memcpy(topic_z, topic, topic_len);
	topic_z[topic_len] = '\0';
	msg = msg_new(topic_z, payload, payload_len);
	free(topic_z);
	if (!msg)
		return NULL;
	msg->qos = ((const unsigned char *)data)[1];
	msg->retain = ((const unsigned char *)data)[2];
	msg->time_us = (int64_t)time_us;
	for (i = 0; i < n; i++) {
		char *hname;
		int rc;

		if (get_bytes(&r, 2, &name, &name_len) ||
		    get_bytes(&r, 4, &value, &value_len) ||
		    memchr(name, '\0', name_len) ||
		    !(hname = strndup(name, name_len)))
			goto bad;
		rc = msg_add_header(msg, hname, value, value_len);
		free(hname);
		if (rc)
			goto bad;
	}
	if (flags & MSG_RECORD_KEY) {
		const void *key;
		size_t key_len;

		if (get_bytes(&r, 4, &key, &key_len) ||
		    msg_set_key(msg, key, key_len))
			goto bad;
	}
	if (flags & MSG_RECORD_DEST) {
		const void *dest;
		size_t dest_len;
		char *dest_z;
		int rc;

		if (get_bytes(&r, 4, &dest, &dest_len) ||
		    memchr(dest, '\0', dest_len) ||
		    !(dest_z = strndup(dest, dest_len)))
			goto bad;
		rc = msg_set_dest(msg, dest_z);
		free(dest_z);
		if (rc)
			goto bad;
	}
	msg->made = (flags & MSG_RECORD_MADE) != 0;
	if (r.p != r.end)
		goto bad;
	if (source && sourcelen) {
		size_t k = src_len < sourcelen - 1 ? src_len : sourcelen - 1;

		memcpy(source, src, k);
		source[k] = '\0';
	}
	return msg;
bad:
	msg_free(msg);
	return NULL;
}
