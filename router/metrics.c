/*
 * metrics.c - a list of named atomic counters.  The list only grows, under
 * metrics_lock; readers walk it without the lock because nodes are never
 * moved or freed before metrics_free() at exit.
 */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

struct iotr_counter {
	char *name;
	atomic_uint_least64_t value;
	struct iotr_counter *_Atomic next;
};

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static struct iotr_counter *_Atomic metrics_head;
static struct iotr_counter *metrics_tail;    /* under metrics_lock */

static struct iotr_counter *metrics_find(const char *name)
{
	struct iotr_counter *c;

	for (c = atomic_load(&metrics_head); c; c = atomic_load(&c->next))
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

iotr_counter *metrics_counter(const char *name)
{
	struct iotr_counter *c;

	pthread_mutex_lock(&metrics_lock);
	if ((c = metrics_find(name)))
		goto out;
	if (!(c = calloc(1, sizeof(*c))) || !(c->name = strdup(name))) {
		free(c);
		c = NULL;
		goto out;
	}
	/* Append, so counters print in the order they were made. */
	if (metrics_tail)
		atomic_store(&metrics_tail->next, c);
	else
		atomic_store(&metrics_head, c);
	metrics_tail = c;
out:
	pthread_mutex_unlock(&metrics_lock);
	return c;
}

void metrics_add(iotr_counter *c, uint64_t delta)
{
	if (c)
		atomic_fetch_add_explicit(&c->value, delta,
		                          memory_order_relaxed);
}

uint64_t metrics_value(const iotr_counter *c)
{
	return c ? atomic_load(&((iotr_counter *)c)->value) : 0;
}

uint64_t metrics_get(const char *name)
{
	return metrics_value(metrics_find(name));
}

void metrics_log(int level, const char *what)
{
	char line[3072];
	size_t n = 0;
	struct iotr_counter *c;

	line[0] = '\0';
	for (c = atomic_load(&metrics_head); c; c = atomic_load(&c->next)) {
		int k = snprintf(line + n, sizeof(line) - n, "%s%s=%llu",
		                 n ? " " : "", c->name,
		                 (unsigned long long)atomic_load(&c->value));

		if (k < 0 || (size_t)k >= sizeof(line) - n) {
			log_msg(level, "%s: %s", what, line);
			n = 0;
			line[0] = '\0';
			k = snprintf(line, sizeof(line), "%s=%llu", c->name,
			             (unsigned long long)atomic_load(&c->value));
			if (k < 0)
				continue;
		}
		n += (size_t)k;
	}
	log_msg(level, "%s: %s", what, line);
}

void metrics_free(void)
{
	struct iotr_counter *c = atomic_exchange(&metrics_head, NULL);

	metrics_tail = NULL;

	while (c) {
		struct iotr_counter *next = atomic_load(&c->next);

		free(c->name);
		free(c);
		c = next;
	}
}
