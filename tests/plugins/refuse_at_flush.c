/*
 * refuse_at_flush.c - a test output that accepts every message and keeps it
 * until the router's final flush(), which rejects each one for good
 * (IOTR_FAIL).  It stands for a destination that turns messages down only
 * once the router is stopping, so tests can see what the router does with a
 * rejection that arrives after its workers have stopped.
 */
#include <pthread.h>
#include <stdlib.h>

#include <iotrouter/plugin.h>

struct refuse {
	iotr_instance *inst;
	const struct iotr_host *host;
	pthread_mutex_t lock;   /* deliver() runs on workers and inputs */
	iotr_msg **held;
	size_t n, cap;
};

static int refuse_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	struct refuse *r = calloc(1, sizeof(*r));

	if (!r)
		return IOTR_ENOMEM;
	r->inst = inst;
	r->host = host;
	pthread_mutex_init(&r->lock, NULL);
	*state = r;
	return IOTR_OK;
}

static int refuse_deliver(void *state, iotr_msg *msg)
{
	struct refuse *r = state;
	int rc = IOTR_OK;

	pthread_mutex_lock(&r->lock);
	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 64;
		iotr_msg **held = realloc(r->held, cap * sizeof(*held));

		if (held) {
			r->held = held;
			r->cap = cap;
		}
	}
	if (r->n < r->cap)
		r->held[r->n++] = msg;
	else
		rc = IOTR_ERETRY;
	pthread_mutex_unlock(&r->lock);
	return rc;
}

static int refuse_flush(void *state, int64_t deadline_ms)
{
	struct refuse *r = state;
	size_t i, n;
	iotr_msg **held;

	(void)deadline_ms;
	pthread_mutex_lock(&r->lock);
	held = r->held;
	n = r->n;
	r->held = NULL;
	r->n = r->cap = 0;
	pthread_mutex_unlock(&r->lock);
	for (i = 0; i < n; i++)
		r->host->delivered(r->inst, held[i], IOTR_FAIL,
		                   "refused by refuse_at_flush at the final flush");
	free(held);
	return IOTR_OK;
}

static void refuse_destroy(void *state)
{
	struct refuse *r = state;

	pthread_mutex_destroy(&r->lock);
	free(r->held);
	free(r);
}

static const struct iotr_plugin refuse_at_flush = {
	IOTR_PLUGIN_HEADER,
	.name = "refuse_at_flush",
	.version = "1.0.0",
	.description = "test output: holds messages, rejects them at the final flush",
	.kind = IOTR_PLUGIN_OUTPUT,
	.create = refuse_create,
	.deliver = refuse_deliver,
	.flush = refuse_flush,
	.destroy = refuse_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &refuse_at_flush;
}
