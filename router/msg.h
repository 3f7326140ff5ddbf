/*
 * msg.h - the router's message: what iotr_msg is inside the host.
 *
 * A message is owned by exactly one party at a time (an input until emit(),
 * a worker queue, a worker, an output until delivered()), so its fields need
 * no lock.  The counters in pipeline.c are what is shared.
 */
#ifndef IOTR_MSG_H
#define IOTR_MSG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "iotrouter/plugin.h"

struct route;
struct wal_share;


struct msg_header {
	char *name;
	void *value;
	size_t len;
};

struct iotr_msg {
	char *topic;            /* source topic, never NULL; in the message's
	                         * own allocation, like its first payload */
	void *payload;
	size_t payload_len;
	char *key;              /* NULL: no key */
	size_t key_len;
	char *dest;             /* destination topic, NULL until routed */
	int qos;
	int retain;
	int64_t time_us;
	struct msg_header *headers;
	size_t nheaders;
	size_t headers_cap;
	char *error;            /* why it failed, for the dead-letter headers */

	/* Host-only routing state. */
	const struct route *route;
	char **captures;        /* parallel to route->filter.captures; one
	                         * allocation (captures_copy) */
	struct iotr_instance *source;
	struct iotr_instance *output; /* where it goes: the route's output, or
	                               * the unmatched / dead-letter output */
	size_t stage;           /* next transform of route->transforms to run */
	unsigned dead_letter:1; /* on its way to the dead-letter topic */
	unsigned made:1;        /* decoded from a record a transform made
	                         * outside process(): the record's source
	                         * names that transform (msg_encode_made) */
	unsigned retries;       /* redeliveries after IOTR_ERETRY */
	json_t *json;           /* payload parsed on first ${json:...}, or NULL */
	int json_state;         /* 0 not parsed, 1 parsed, -1 not JSON */
	uint64_t wal_id;        /* its record in the write-ahead log, or 0 */
	struct wal_share *wal_share; /* that record, when shared with messages
	                         * a transform made from it (pipeline.c) */
	unsigned wal_keep:1;    /* the record stays in the log for the next
	                         * start, whatever becomes of the message */
	struct iotr_msg *next;  /* queue link */

	/* Room left at the end of the message's own allocation, which
	 * msg_alloc() hands out before it turns to malloc (see msg_new). */
	char *spare;
	size_t spare_len;
	char *block_end;
	/* the pool of the thread that allocated the message, or NULL when it
	 * came from malloc() alone (see msg.c) */
	struct msg_pool *pool;
	unsigned char pool_class;
};

iotr_msg *msg_new(const char *topic, const void *payload, size_t len);
/* size bytes (8-aligned) for a part of msg, from the spare room of its own
 * allocation when they fit, else from malloc(); give them back with
 * msg_release().  NULL when out of memory. */
void *msg_alloc(iotr_msg *msg, size_t size);
/* Free a part msg_alloc() gave (nothing to do for the spare room's). */
void msg_release(const iotr_msg *msg, void *part);
/* A deep copy, without the log record (wal_id, wal_share, wal_keep): a
 * clone that is emitted gets its own share of one (pipeline.c). */
iotr_msg *msg_clone(const iotr_msg *msg);
/* n capture strings (NULL allowed) copied into one allocation: the array
 * followed by the strings; one free() releases it. */
char **captures_copy(char *const *src, size_t n);
void msg_free(iotr_msg *msg);
/* How many bytes of freed messages each thread's pool keeps for reuse
 * (router.message_pool_bytes); 0 keeps none.  Set before messages flow. */
void msg_pools_set_keep(size_t bytes);
/* Free the blocks the message pools keep for reuse; at exit, after every
 * thread that makes or frees messages has stopped. */
void msg_pools_free(void);

int msg_set_payload(iotr_msg *msg, const void *payload, size_t len);
int msg_set_key(iotr_msg *msg, const char *key, size_t len);
int msg_set_dest(iotr_msg *msg, const char *topic);
int msg_set_qos(iotr_msg *msg, int qos, int retain);
int msg_set_time(iotr_msg *msg, int64_t time_us);
int msg_add_header(iotr_msg *msg, const char *name, const void *value,
                   size_t len);
void msg_remove_header(iotr_msg *msg, const char *name);
void msg_set_error(iotr_msg *msg, const char *reason);
const void *msg_header(const iotr_msg *msg, const char *name, size_t *len);
const char *msg_capture(const iotr_msg *msg, const char *name);

/* The payload as JSON (parsed once), or NULL when it is not valid JSON. */
json_t *msg_json(iotr_msg *msg);

/* Bytes the message holds, for the max_message_bytes limit. */
size_t msg_size(const iotr_msg *msg);

int64_t msg_now_us(void);

/* A growable byte buffer (records, rendered templates); data stays
 * NUL-terminated after len.  It may start in caller's memory (MSG_BUF_ON):
 * it moves to the heap only when it outgrows that. */
struct msg_buf {
	char *data;
	size_t len, cap;
	char *fixed;            /* the caller's memory, or NULL */
	size_t fixed_cap;
};

#define MSG_BUF_ON(mem) \
	{ .data = (mem), .cap = sizeof(mem), .fixed = (mem), \
	  .fixed_cap = sizeof(mem) }

/* Append len bytes; 0, or -1 when out of memory. */
int msg_buf_add(struct msg_buf *b, const void *data, size_t len);
/* Free what the buffer took from the heap and empty it. */
void msg_buf_release(struct msg_buf *b);

/*
 * The message as its input handed it over (topic, payload, QoS, retain,
 * time, headers) and the name of that input, as one record for the
 * write-ahead log, written into b (reused across calls; free b->data when
 * done).  Returns IOTR_OK or IOTR_ENOMEM.
 */
int msg_encode(const iotr_msg *msg, const char *source, struct msg_buf *b);
/*
 * The record of a message a transform made outside process() (on_tick, its
 * stop: a closed window), which no input handed over: as msg_encode(), with
 * the transform's instance name as the source, marked so that a replay goes
 * on after that transform, and with the destination topic if one is set.
 */
int msg_encode_made(const iotr_msg *msg, const char *transform,
                    struct msg_buf *b);
/* The message back from a record, and its input's name in source (may be
 * NULL); NULL if the record is not a valid one.  For a record of
 * msg_encode_made(), msg->made is set and source is the transform's name. */
iotr_msg *msg_decode(const void *data, size_t len, char *source,
                     size_t sourcelen);

#endif
