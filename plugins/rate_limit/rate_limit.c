/*
 * rate_limit.c - transform plugin "rate_limit": a token bucket per key
 * (`rate` messages a second, up to `burst` at once); messages over the limit
 * are dropped, or sampled 1 in `sample_every` (doc/plugin-transforms.md).
 * Threading: process() runs on every worker.  The buckets are one table
 * shared by all workers under rate_limit_state.lock, so that a key changed
 * by an earlier transform still has exactly one bucket; the lock covers one
 * hash lookup and a few arithmetic operations.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iotrouter/plugin.h"
#include "keytable.h"

#define RATE_LIMIT_MAX_RATE 1e6
#define RATE_LIMIT_SAMPLED_HEADER "iotrouter.sampled"

enum rate_limit_policy { RATE_LIMIT_DROP, RATE_LIMIT_SAMPLE };

struct rate_limit_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	double rate;                 /* tokens per microsecond */
	double burst;
	enum rate_limit_policy policy;
	uint64_t sample_every;
	char sample_value[24];       /* sample_every as text, for the header */
	struct keytable *table;      /* guarded by lock */
	pthread_mutex_t lock;
	iotr_counter *passed, *dropped, *sampled, *evicted;
};

static const struct iotr_param rate_limit_params[] = {
	{ .key = "rate", .type = IOTR_PARAM_DOUBLE, .default_value = "1",
	  .doc = "Messages per second each key may send over time (more "
	         "than 0, at most 1000000; 0.1 is one every 10 seconds)." },
	{ .key = "burst", .type = IOTR_PARAM_INT, .default_value = "10",
	  .doc = "Messages a key may send at once after a quiet spell: the "
	         "size of its token bucket.",
	  .min = 1, .max = 1000000 },
	{ .key = "policy", .type = IOTR_PARAM_STRING, .default_value = "drop",
	  .doc = "What happens to a message over the limit: drop, or sample "
	         "(pass the first of each sample_every over-limit messages "
	         "of a key, with header iotrouter.sampled, and drop the "
	         "rest)." },
	{ .key = "sample_every", .type = IOTR_PARAM_INT,
	  .default_value = "10",
	  .doc = "With policy = \"sample\": one over-limit message in this "
	         "many is passed.",
	  .min = 2, .max = 1000000 },
	{ .key = "max_keys", .type = IOTR_PARAM_INT, .default_value = "100000",
	  .doc = "Most keys tracked (about 100 bytes each); when full, the "
	         "least recently seen key is forgotten (counted as evicted) "
	         "and starts again with a full bucket.",
	  .min = 1, .max = 100000000 },
	{ .key = NULL }
};

static void rate_limit_free(struct rate_limit_state *st)
{
	keytable_free(st->table);
	free(st);
}

static int rate_limit_create(iotr_instance *inst, const struct iotr_host *host,
                             void **state)
{
	const char *policy = host->param_string(inst, "policy");
	double rate = host->param_double(inst, "rate");
	struct rate_limit_state *st;

	if (!(rate > 0 && rate <= RATE_LIMIT_MAX_RATE)) {
		host->log(inst, IOTR_LOG_ERROR, "rate = %g is out of range; it "
		          "must be more than 0 and at most %g messages per "
		          "second; fix `rate`", rate, RATE_LIMIT_MAX_RATE);
		return IOTR_EINVAL;
	}
	if (!policy || (strcmp(policy, "drop") != 0 &&
	                strcmp(policy, "sample") != 0)) {
		host->log(inst, IOTR_LOG_ERROR, "policy = \"%s\" is not one of "
		          "drop, sample; fix `policy`", policy ? policy : "");
		return IOTR_EINVAL;
	}
	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "rate_limit transform");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	st->rate = rate / 1e6;
	st->burst = (double)host->param_int(inst, "burst");
	st->policy = strcmp(policy, "sample") == 0 ? RATE_LIMIT_SAMPLE
	                                           : RATE_LIMIT_DROP;
	st->sample_every = (uint64_t)host->param_int(inst, "sample_every");
	snprintf(st->sample_value, sizeof(st->sample_value), "%" PRIu64,
	         st->sample_every);
	st->passed = host->counter(inst, "passed");
	st->dropped = host->counter(inst, "dropped");
	st->sampled = host->counter(inst, "sampled");
	st->evicted = host->counter(inst, "evicted");
	st->table = keytable_new((size_t)host->param_int(inst, "max_keys"));
	if (!st->passed || !st->dropped || !st->sampled || !st->evicted ||
	    !st->table) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "rate_limit transform");
		rate_limit_free(st);
		return IOTR_ENOMEM;
	}
	if (pthread_mutex_init(&st->lock, NULL) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "cannot create a mutex for the "
		          "rate_limit transform");
		rate_limit_free(st);
		return IOTR_ENOMEM;
	}
	*state = st;
	return IOTR_OK;
}

/* Tokens in e's bucket at time now (never more than burst; a clock set
 * back adds nothing). */
static double rate_limit_level(const struct rate_limit_state *st,
                               const struct keytable_entry *e, int64_t now)
{
	double level = e->level;

	if (now > e->time)
		level += (double)(now - e->time) * st->rate;
	return level < st->burst ? level : st->burst;
}

enum rate_limit_verdict { VERDICT_PASS, VERDICT_SAMPLE, VERDICT_DROP };

static int rate_limit_process(void *state, iotr_msg *msg)
{
	struct rate_limit_state *st = state;
	const struct iotr_host *h = st->host;
	struct keytable_digest d;
	struct keytable_entry *e;
	enum rate_limit_verdict verdict = VERDICT_PASS;
	int64_t now = h->msg_time(msg);
	size_t klen = 0;
	const char *key = h->msg_key(msg, &klen);
	int evicted = 0;

	/* A message without a key is limited by its source topic, as the
	 * router picks its worker by the topic then. */
	if (!key) {
		key = h->msg_topic(msg);
		klen = strlen(key);
	}
	keytable_digest(st->table, key, klen, NULL, 0, &d);

	pthread_mutex_lock(&st->lock);
	e = keytable_find(st->table, &d);
	if (!e) {
		/* Keys whose buckets have filled up again carry no state
		 * (their next message passes and ends any over-limit run):
		 * forget them before a key with state has to go. */
		struct keytable_entry *old;

		while ((old = keytable_oldest(st->table)) &&
		       rate_limit_level(st, old, now) >= st->burst)
			keytable_remove(st->table, old);
		if ((e = keytable_add(st->table, &d, &evicted))) {
			e->level = st->burst;
			e->time = now;
		}
	} else {
		e->level = rate_limit_level(st, e, now);
		if (now > e->time)
			e->time = now;
		keytable_touch(st->table, e);
	}
	if (e) {
		if (e->level >= 1) {
			e->level -= 1;
			e->count = 0;
		} else if (st->policy == RATE_LIMIT_SAMPLE &&
		           e->count++ % st->sample_every == 0) {
			verdict = VERDICT_SAMPLE;
		} else {
			verdict = VERDICT_DROP;
		}
	}
	/* Out of memory with an empty table (e == NULL): the message passes
	 * unlimited rather than be lost. */
	pthread_mutex_unlock(&st->lock);

	if (evicted)
		h->counter_add(st->evicted, 1);
	switch (verdict) {
	case VERDICT_DROP:
		h->counter_add(st->dropped, 1);
		return IOTR_DROP;
	case VERDICT_SAMPLE:
		h->msg_remove_header(msg, RATE_LIMIT_SAMPLED_HEADER);
		if (h->msg_add_header(msg, RATE_LIMIT_SAMPLED_HEADER,
		                      st->sample_value,
		                      strlen(st->sample_value)) != IOTR_OK) {
			/* Unmarked, it would read as an unsampled message. */
			h->counter_add(st->dropped, 1);
			return IOTR_DROP;
		}
		h->counter_add(st->sampled, 1);
		return IOTR_OK;
	case VERDICT_PASS:
		break;
	}
	h->counter_add(st->passed, 1);
	return IOTR_OK;
}

static void rate_limit_destroy(void *state)
{
	struct rate_limit_state *st = state;

	pthread_mutex_destroy(&st->lock);
	rate_limit_free(st);
}

static const struct iotr_plugin rate_limit_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "rate_limit",
	.version = "1.0.0",
	.description = "Limits each key to a rate with a burst; drops or "
	               "samples the messages over it.",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = rate_limit_params,
	.create = rate_limit_create,
	.process = rate_limit_process,
	.destroy = rate_limit_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &rate_limit_plugin;
}
