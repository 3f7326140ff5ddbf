/*
 * dedupe.c - transform plugin "dedupe": drops a message when one with the
 * same key (or payload, or both) passed less than window_ms before it, with
 * a bounded table of what passed (doc/plugin-transforms.md).
 * Threading: process() runs on every worker.  The table is shared by all of
 * them under dedupe_state.lock, not kept per worker, because identical
 * payloads arrive on any worker, and a transform earlier in the chain may
 * have changed the key the worker was chosen by.  The lock covers one hash
 * lookup and a list move.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "iotrouter/plugin.h"
#include "keytable.h"

enum dedupe_by { DEDUPE_KEY, DEDUPE_PAYLOAD, DEDUPE_BOTH };

struct dedupe_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	enum dedupe_by by;
	int64_t window_us;
	struct keytable *table;      /* guarded by lock */
	pthread_mutex_t lock;
	iotr_counter *passed, *dropped, *evicted;
};

static const struct iotr_param dedupe_params[] = {
	{ .key = "by", .type = IOTR_PARAM_STRING, .default_value = "key",
	  .doc = "What makes two messages the same: key (the message key, or "
	         "the source topic when it has none), payload (the payload "
	         "bytes, from any key), or both (key and payload)." },
	{ .key = "window_ms", .type = IOTR_PARAM_INT, .default_value = "60000",
	  .doc = "A message is dropped when an equal one passed less than this "
	         "many milliseconds before it (by receive time).",
	  .min = 1, .max = 604800000 },
	{ .key = "max_entries", .type = IOTR_PARAM_INT,
	  .default_value = "100000",
	  .doc = "Most messages remembered (about 100 bytes each); when full, "
	         "the one whose window started longest ago is forgotten and "
	         "counted as evicted.",
	  .min = 1, .max = 100000000 },
	{ .key = NULL }
};

static int dedupe_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	const char *by = host->param_string(inst, "by");
	struct dedupe_state *st;

	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "dedupe transform");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	if (by && strcmp(by, "key") == 0) {
		st->by = DEDUPE_KEY;
	} else if (by && strcmp(by, "payload") == 0) {
		st->by = DEDUPE_PAYLOAD;
	} else if (by && strcmp(by, "both") == 0) {
		st->by = DEDUPE_BOTH;
	} else {
		host->log(inst, IOTR_LOG_ERROR, "by = \"%s\" is not one of key, "
		          "payload, both; fix `by`", by ? by : "");
		free(st);
		return IOTR_EINVAL;
	}
	st->window_us = host->param_int(inst, "window_ms") * 1000;
	st->passed = host->counter(inst, "passed");
	st->dropped = host->counter(inst, "dropped");
	st->evicted = host->counter(inst, "evicted");
	st->table = keytable_new((size_t)host->param_int(inst, "max_entries"));
	if (!st->passed || !st->dropped || !st->evicted || !st->table) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "dedupe transform");
		keytable_free(st->table);
		free(st);
		return IOTR_ENOMEM;
	}
	if (pthread_mutex_init(&st->lock, NULL) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "cannot create a mutex for the "
		          "dedupe transform");
		keytable_free(st->table);
		free(st);
		return IOTR_ENOMEM;
	}
	*state = st;
	return IOTR_OK;
}

/* The digest of what makes msg a duplicate.  A message without a key is
 * known by its source topic, as the router does when it picks a worker. */
static void dedupe_digest(const struct dedupe_state *st, const iotr_msg *msg,
                          struct keytable_digest *d)
{
	const struct iotr_host *h = st->host;
	size_t klen = 0, plen = 0;
	const char *key = NULL;
	const void *payload = NULL;

	if (st->by != DEDUPE_PAYLOAD) {
		key = h->msg_key(msg, &klen);
		if (!key) {
			key = h->msg_topic(msg);
			klen = strlen(key);
		}
	}
	if (st->by != DEDUPE_KEY) {
		payload = h->msg_payload(msg, &plen);
		if (!payload)
			payload = "";
	}
	if (st->by == DEDUPE_KEY)
		keytable_digest(st->table, key, klen, NULL, 0, d);
	else if (st->by == DEDUPE_PAYLOAD)
		keytable_digest(st->table, payload, plen, NULL, 0, d);
	else
		keytable_digest(st->table, key, klen, payload, plen, d);
}

static int dedupe_process(void *state, iotr_msg *msg)
{
	struct dedupe_state *st = state;
	struct keytable_digest d;
	struct keytable_entry *e;
	int64_t now = st->host->msg_time(msg);
	int evicted = 0, dup = 0;

	dedupe_digest(st, msg, &d);
	pthread_mutex_lock(&st->lock);
	/* Forget what has left its window.  The list is in the order
	 * messages passed, so the expired ones are at its head (up to the
	 * small disorder of receive times between workers). */
	while ((e = keytable_oldest(st->table)) && e->time <= now - st->window_us)
		keytable_remove(st->table, e);
	e = keytable_find(st->table, &d);
	if (e) {
		/* Either side: a receive time far "before" the entry means
		 * the clock was set back; then the window starts anew. */
		int64_t age = now - e->time;

		if (age < st->window_us && age > -st->window_us) {
			dup = 1;
		} else {
			e->time = now;
			keytable_touch(st->table, e);
		}
	} else if ((e = keytable_add(st->table, &d, &evicted))) {
		e->time = now;
	}
	pthread_mutex_unlock(&st->lock);

	if (evicted)
		st->host->counter_add(st->evicted, 1);
	if (dup) {
		st->host->counter_add(st->dropped, 1);
		return IOTR_DROP;
	}
	/* Out of memory with an empty table (e == NULL) lets the message
	 * pass: a duplicate is better than a loss. */
	st->host->counter_add(st->passed, 1);
	return IOTR_OK;
}

static void dedupe_destroy(void *state)
{
	struct dedupe_state *st = state;

	pthread_mutex_destroy(&st->lock);
	keytable_free(st->table);
	free(st);
}

static const struct iotr_plugin dedupe_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "dedupe",
	.version = "1.0.0",
	.description = "Drops a message whose key or payload was seen within "
	               "a time window, with a bounded table.",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = dedupe_params,
	.create = dedupe_create,
	.process = dedupe_process,
	.destroy = dedupe_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &dedupe_plugin;
}
