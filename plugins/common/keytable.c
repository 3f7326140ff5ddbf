/*
 * keytable.c - bounded per-key state for transforms (see keytable.h).
 * No locking here: each plugin instance guards its table with its own mutex.
 */
#include "keytable.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct keytable {
	uint64_t keys[8];        /* SipHash keys: 2 per function, 4 functions */
	struct keytable_entry **buckets;
	size_t nbuckets;         /* a power of two */
	size_t max_buckets;      /* the power of two the table grows to */
	size_t n, max;
	struct keytable_entry *oldest, *newest;
};

/* --- SipHash-2-4 (Aumasson and Bernstein, 2012), 64-bit output ---------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND \
	do { \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

static uint64_t keytable_siphash(const void *data, size_t len, uint64_t k0,
                                 uint64_t k1)
{
	const unsigned char *p = data;
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
	uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
	uint64_t v3 = 0x7465646279746573ULL ^ k1;
	uint64_t m, b = (uint64_t)len << 56;
	size_t i, left = len & 7;

	for (i = 0; i + 8 <= len; i += 8) {
		m = 0;
		for (int j = 7; j >= 0; j--)
			m = (m << 8) | p[i + j];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < left; j++)
		b |= (uint64_t)p[i + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

void keytable_digest(const struct keytable *t, const void *a, size_t alen,
                     const void *b, size_t blen, struct keytable_digest *out)
{
	const uint64_t *k = t->keys;

	out->h[0] = keytable_siphash(a, alen, k[0], k[1]);
	out->h[1] = keytable_siphash(a, alen, k[2], k[3]);
	if (b) {
		out->h[0] ^= keytable_siphash(b, blen, k[4], k[5]);
		out->h[1] ^= keytable_siphash(b, blen, k[6], k[7]);
	}
}

/* --- the table ------------------------------------------------------------ */

static void keytable_seed(uint64_t *keys, size_t n)
{
	size_t got = 0;

	while (got < n * sizeof(*keys)) {
		ssize_t r = getrandom((char *)keys + got,
		                      n * sizeof(*keys) - got, GRND_NONBLOCK);

		if (r <= 0)
			break;
		got += (size_t)r;
	}
	if (got < n * sizeof(*keys)) {
		/* No entropy yet (early boot): the keys then only spread
		 * the buckets; the digests stay 128 bits wide. */
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		for (size_t i = 0; i < n; i++)
			keys[i] = keytable_siphash(&ts, sizeof(ts), i,
			                           (uint64_t)getpid());
	}
}

struct keytable *keytable_new(size_t max_entries)
{
	struct keytable *t = calloc(1, sizeof(*t));
	size_t max_buckets = 16;

	if (!t)
		return NULL;
	if (max_entries < 1)
		max_entries = 1;
	while (max_buckets < max_entries && max_buckets < ((size_t)1 << 40))
		max_buckets <<= 1;
	t->max = max_entries;
	t->max_buckets = max_buckets;
	t->nbuckets = max_buckets < 1024 ? max_buckets : 1024;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	if (!t->buckets) {
		free(t);
		return NULL;
	}
	keytable_seed(t->keys, 8);
	return t;
}

void keytable_free(struct keytable *t)
{
	struct keytable_entry *e, *next;

	if (!t)
		return;
	for (e = t->oldest; e; e = next) {
		next = e->next;
		free(e);
	}
	free(t->buckets);
	free(t);
}

size_t keytable_size(const struct keytable *t)
{
	return t->n;
}

static size_t keytable_bucket(const struct keytable *t,
                              const struct keytable_digest *d)
{
	return (size_t)(d->h[0] & (t->nbuckets - 1));
}

struct keytable_entry *keytable_find(const struct keytable *t,
                                     const struct keytable_digest *d)
{
	struct keytable_entry *e;

	for (e = t->buckets[keytable_bucket(t, d)]; e; e = e->hnext)
		if (e->d.h[0] == d->h[0] && e->d.h[1] == d->h[1])
			return e;
	return NULL;
}

static void keytable_unlink(struct keytable *t, struct keytable_entry *e)
{
	struct keytable_entry **pp = &t->buckets[keytable_bucket(t, &e->d)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	if (e->prev)
		e->prev->next = e->next;
	else
		t->oldest = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->newest = e->prev;
	t->n--;
}

static void keytable_link(struct keytable *t, struct keytable_entry *e)
{
	size_t b = keytable_bucket(t, &e->d);

	e->hnext = t->buckets[b];
	t->buckets[b] = e;
	e->next = NULL;
	e->prev = t->newest;
	if (t->newest)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
	t->n++;
}

/* Double the buckets; on failure keep the old ones (chains get longer). */
static void keytable_grow(struct keytable *t)
{
	size_t n = t->nbuckets * 2, i;
	struct keytable_entry **b = calloc(n, sizeof(*b));
	struct keytable_entry *e;

	if (!b)
		return;
	for (e = t->oldest; e; e = e->next) {
		i = (size_t)(e->d.h[0] & (n - 1));
		e->hnext = b[i];
		b[i] = e;
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

struct keytable_entry *keytable_add(struct keytable *t,
                                    const struct keytable_digest *d,
                                    int *evicted)
{
	struct keytable_entry *e = NULL;

	*evicted = 0;
	if (t->n < t->max)
		e = malloc(sizeof(*e));
	if (!e) {
		/* Full, or out of memory: reuse the least recent entry. */
		e = t->oldest;
		if (!e)
			return NULL;
		keytable_unlink(t, e);
		*evicted = 1;
	}
	memset(e, 0, sizeof(*e));
	e->d = *d;
	if (t->n + 1 > t->nbuckets / 4 * 3 && t->nbuckets < t->max_buckets)
		keytable_grow(t);
	keytable_link(t, e);
	return e;
}

void keytable_touch(struct keytable *t, struct keytable_entry *e)
{
	if (t->newest == e)
		return;
	/* Unlink from the list only; the hash chain stays as it is. */
	if (e->prev)
		e->prev->next = e->next;
	else
		t->oldest = e->next;
	e->next->prev = e->prev;
	e->prev = t->newest;
	e->next = NULL;
	t->newest->next = e;
	t->newest = e;
}

struct keytable_entry *keytable_oldest(const struct keytable *t)
{
	return t->oldest;
}

void keytable_remove(struct keytable *t, struct keytable_entry *e)
{
	keytable_unlink(t, e);
	free(e);
}
