/*
 * keytable.h - a bounded table of per-key state for the dedupe and rate_limit
 * transforms: keys are stored as 128-bit keyed digests (so an entry has a
 * fixed size whatever the key or payload), entries sit on a list from least
 * to most recently touched, and a full table gives up its least recent entry.
 * Not thread-safe: the caller holds its own lock around every call.
 * Compiled into each plugin's .so and hidden there.
 */
#ifndef IOTR_KEYTABLE_H
#define IOTR_KEYTABLE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define KEYTABLE_HIDDEN __attribute__((visibility("hidden")))
#else
#define KEYTABLE_HIDDEN
#endif

/* A 128-bit keyed digest (two SipHash-2-4 values with independent keys):
 * without the table's random keys nobody can make two inputs collide, and by
 * chance two different inputs collide about once in 2^128 pairs. */
struct keytable_digest {
	uint64_t h[2];
};

/* One key's state.  The fields after the list links are the plugin's. */
struct keytable_entry {
	struct keytable_digest d;
	struct keytable_entry *hnext;          /* hash chain */
	struct keytable_entry *prev, *next;    /* touch order, oldest first */
	int64_t time;    /* microseconds since the epoch; the plugin's meaning */
	double level;    /* rate_limit: tokens in the bucket */
	uint64_t count;  /* rate_limit: over-limit messages in the current run */
};

struct keytable;

/*
 * keytable_new - an empty table that holds at most max_entries (>= 1).
 * Its digest keys come from getrandom(2).  NULL when out of memory.
 */
KEYTABLE_HIDDEN struct keytable *keytable_new(size_t max_entries);
KEYTABLE_HIDDEN void keytable_free(struct keytable *t);

/*
 * keytable_digest - the digest of the byte string a, or of the pair (a, b)
 * when b is not NULL (then ("x", "yz") and ("xy", "z") differ).
 */
KEYTABLE_HIDDEN void keytable_digest(const struct keytable *t,
                                     const void *a, size_t alen,
                                     const void *b, size_t blen,
                                     struct keytable_digest *out);

/* The entry with digest d, or NULL.  Does not change the touch order. */
KEYTABLE_HIDDEN struct keytable_entry *
keytable_find(const struct keytable *t, const struct keytable_digest *d);

/*
 * keytable_add - a new entry for d (which must not be in the table), as the
 * most recently touched, with time, level and count zero.  When the table is
 * full, the least recently touched entry is removed first and *evicted is
 * set to 1 (else 0).  NULL only when out of memory with an empty table.
 */
KEYTABLE_HIDDEN struct keytable_entry *
keytable_add(struct keytable *t, const struct keytable_digest *d,
             int *evicted);

/* Make e the most recently touched entry. */
KEYTABLE_HIDDEN void keytable_touch(struct keytable *t,
                                    struct keytable_entry *e);

/* The least recently touched entry, or NULL when the table is empty. */
KEYTABLE_HIDDEN struct keytable_entry *keytable_oldest(const struct keytable *t);

/* Remove e from the table and free it. */
KEYTABLE_HIDDEN void keytable_remove(struct keytable *t,
                                     struct keytable_entry *e);

/* Number of entries. */
KEYTABLE_HIDDEN size_t keytable_size(const struct keytable *t);

#endif
