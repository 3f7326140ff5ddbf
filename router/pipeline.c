/*
 * pipeline.c - the router's engine.
 *
 * Locks: each worker queue has its own mutex; `inflight` (messages accepted
 * and not yet finished) is atomic, with drain_lock/drain_cond only to wake
 * pipeline_drain(); so is a struct wal_share's count, which messages on
 * different workers share; appends to the write-ahead log and the record
 * buffer take wal_lock.  Each worker's lane_lock is held around transform
 * calls in its lane (and all of them, in index order, around a transform's
 * stop()); a transform may take a queue lock or wal_lock under it, never
 * the other way round.  Config, routes and instances are read-only here,
 * except each route's inline_transforms, set once by pipeline_new(); the
 * routes' measured costs (route_cost_ns) are relaxed atomics, each queue's
 * `pending` an atomic.
 *
 * Every accepted message ends in exactly one of: delivered (a dead letter
 * that reached the dead-letter topic counts here too), dropped by a
 * transform, or lost (counted and logged: no dead-letter topic, or the
 * shutdown deadline passed), so received = delivered + dropped + lost, plus
 * unmatched messages when router.unmatched_topic is unset.
 * router.dead_lettered counts the detours to the dead-letter topic.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipeline.h"
#include "template.h"
#include "wal.h"

struct queue {
	pthread_mutex_t lock;
	pthread_cond_t not_empty;
	pthread_cond_t not_full;
	iotr_msg *head, *tail;
	size_t len;
	size_t cap;
	/* Threads asleep on the conditions: a signal is only worth its
	 * syscall when someone waits, which under load is rarely. */
	int waiting_pop;
	int waiting_push;
	/* A worker that just emptied the queue lingers (router.worker_linger_us)
	 * for more before it sleeps; pushes do not wake a lingering worker
	 * until a batch is ready.  Under a steady stream that turns a wake-up
	 * per message into one per linger period. */
	int lingering;
	int may_linger;
	/* Messages pushed and not yet finished by the worker (handed to their
	 * output, or ended), per route (the last slot: messages without
	 * one).  A route in this lane runs inline in auto mode only once its
	 * messages here are all finished, so that none overtakes one queued
	 * before it: its keys' order holds.  An input's thread that waits for
	 * that (lane_drain) counts in waiting_drain and sleeps on `drained`. */
	atomic_size_t *pending;
	atomic_int waiting_drain;
	pthread_cond_t drained;
	_Atomic int64_t drain_retry_ms; /* no waiting before this (monotonic) */
};

/* A worker takes up to this many messages per lock, so that a busy queue
 * costs one lock round and no wake-up per message. */
#define WORKER_BATCH 256

struct worker {
	struct pipeline *p;
	pthread_t thread;
	int running;
	struct queue q;
	size_t index;
	/* The worker's lane: the keys that hash to it.  Held around every
	 * transform call for them, by this worker or by an input's thread
	 * running a route inline, so that one lane's calls never overlap. */
	pthread_mutex_t lane_lock;
};

struct pipeline {
	struct router_config *cfg;
	struct worker *workers;
	size_t nworkers;
	atomic_int stopping;
	_Atomic int64_t deadline_ms;    /* CLOCK_MONOTONIC, once stopping */
	atomic_int quit;
	atomic_uint_least64_t inflight;
	pthread_mutex_t drain_lock;
	pthread_cond_t drain_cond;
	int64_t min_tick_ms;
	size_t max_captures;            /* the most any route's filter has */

	iotr_counter *received, *unmatched, *delivered, *dropped,
		*dead_lettered, *lost, *oversized, *retried, *deferred,
		*inline_runs, *inline_drain_timeouts;
	/* Each route's transforms' time a message (ns, a moving average of
	 * samples; 0: not measured yet), for ROUTER_INLINE_AUTO. */
	_Atomic int64_t *route_cost_ns;
	int64_t inline_max_ns;

	/* The write-ahead log (NULL: off).  wal_lock orders appends with the
	 * switch between queueing directly and spilling: while `spilling`,
	 * intake only appends, and the replayer thread feeds the queues from
	 * the log, in order, until it has caught up. */
	struct wal *wal;
	pthread_mutex_t wal_lock;
	pthread_cond_t wal_cond;
	int spilling;
	uint64_t spill_from;    /* the record the replayer (re)opens at */
	struct msg_buf record;
	pthread_t replayer;
	int replayer_running;
	int wal_full_warned;
	iotr_counter *wal_appended, *wal_spilled, *wal_replayed,
		*wal_dropped;
	atomic_int warned_unmatched;
};

/* What a transform's emit() continues from, set around process()/tick(). */
struct emit_ctx {
	struct worker *w;           /* the lane the call runs in (its lock held),
	                               NULL for none: a transform's stop() */
	const struct route *route;
	size_t stage;               /* next stage after the calling transform */
	struct iotr_instance *output;
	iotr_msg *parent;           /* the message process() runs on, or NULL */
};

/*
 * A log record shared by a message and the messages transforms made from
 * it while it was processed (fan-out, router.emit).  It is released when
 * the last of them ends, and kept when any of them is deferred: a replay
 * runs the transforms again, so what was made from the message is made
 * again (at least once).
 */
struct wal_share {
	atomic_uint refs;
	atomic_bool keep;
	uint64_t id;
};

static _Thread_local struct emit_ctx *current_ctx;

static int64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t monotonic_ms(void)
{
	return monotonic_ns() / 1000000;
}

static void deadline_ts(struct timespec *ts, int64_t ms_from_now)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms_from_now / 1000;
	ts->tv_nsec += (ms_from_now % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void deadline_ts_us(struct timespec *ts, int64_t us_from_now)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += us_from_now / 1000000;
	ts->tv_nsec += (us_from_now % 1000000) * 1000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static int cond_init_monotonic(pthread_cond_t *c)
{
	pthread_condattr_t a;
	int rc;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	rc = pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
	return rc;
}

/* --- queues --------------------------------------------------------------- */

static int queue_init(struct queue *q, size_t cap, size_t nroutes)
{
	memset(q, 0, sizeof(*q));
	q->cap = cap;
	if (!(q->pending = calloc(nroutes + 1, sizeof(*q->pending))))
		return -1;
	atomic_init(&q->waiting_drain, 0);
	atomic_init(&q->drain_retry_ms, 0);
	if (pthread_mutex_init(&q->lock, NULL) ||
	    cond_init_monotonic(&q->not_empty) ||
	    cond_init_monotonic(&q->not_full) ||
	    cond_init_monotonic(&q->drained))
		return -1;
	return 0;
}

/*
 * How queue_push() treats a full queue:
 *   PUSH_FORCE       ignore the bound, for messages already in flight that
 *                    must come back (retries, dead letters, fan-out), so no
 *                    thread the workers wait on can block here;
 *   PUSH_BLOCK       wait for room until the shutdown deadline;
 *   PUSH_TRY         return IOTR_ERETRY at once;
 *   PUSH_UNTIL_STOP  wait for room, but give up (IOTR_ESHUTDOWN) as soon as
 *                    the router begins to stop: for replays from the
 *                    write-ahead log, which keeps the message anyway.
 */
enum push_mode { PUSH_FORCE, PUSH_BLOCK, PUSH_TRY, PUSH_UNTIL_STOP };

/* The count in q->pending of msg's route (which stays the same from the
 * push until the worker is done with the message). */
static atomic_size_t *pending_of(struct pipeline *p, struct queue *q,
                                 const iotr_msg *msg)
{
	return &q->pending[msg->route ? (size_t)(msg->route - p->cfg->routes) :
	                                p->cfg->nroutes];
}

static int queue_push(struct pipeline *p, struct queue *q, iotr_msg *msg,
                      enum push_mode mode)
{
	pthread_mutex_lock(&q->lock);
	while (mode != PUSH_FORCE && q->len >= q->cap) {
		struct timespec ts;
		int stopping = pipeline_stopping(p);

		if (mode == PUSH_TRY || stopping >= 2 ||
		    (mode == PUSH_UNTIL_STOP && stopping)) {
			pthread_mutex_unlock(&q->lock);
			return mode == PUSH_TRY ? IOTR_ERETRY : IOTR_ESHUTDOWN;
		}
		deadline_ts(&ts, 100);
		q->waiting_push++;
		pthread_cond_timedwait(&q->not_full, &q->lock, &ts);
		q->waiting_push--;
	}
	msg->next = NULL;
	if (q->tail)
		q->tail->next = msg;
	else
		q->head = msg;
	q->tail = msg;
	q->len++;
	atomic_fetch_add(pending_of(p, q, msg), 1);
	if (q->waiting_pop || (q->lingering && q->len >= WORKER_BATCH))
		pthread_cond_signal(&q->not_empty);
	pthread_mutex_unlock(&q->lock);
	return IOTR_OK;
}

/* The next message, or NULL after waiting until wake_ms (monotonic). */
/*
 * Up to `max` messages in queue order, linked through msg->next, or NULL
 * after waiting until wake_ms (monotonic) or quit.
 */
static iotr_msg *queue_pop(struct pipeline *p, struct queue *q,
                           int64_t wake_ms, size_t max)
{
	iotr_msg *first, *last;
	size_t n;

	pthread_mutex_lock(&q->lock);
	while (!q->head && !atomic_load(&p->quit)) {
		struct timespec ts;
		int64_t wait = wake_ms - monotonic_ms();

		if (wait <= 0)
			break;
		if (q->may_linger && p->cfg->worker_linger_us) {
			/* Once per batch; a quiet linger ends in a real sleep,
			 * so an idle router does not wake. */
			q->may_linger = 0;
			deadline_ts_us(&ts, p->cfg->worker_linger_us);
			q->lingering = 1;
			pthread_cond_timedwait(&q->not_empty, &q->lock, &ts);
			q->lingering = 0;
			continue;
		}
		deadline_ts(&ts, wait > 1000 ? 1000 : wait);
		q->waiting_pop++;
		pthread_cond_timedwait(&q->not_empty, &q->lock, &ts);
		q->waiting_pop--;
	}
	first = last = q->head;
	if (first) {
		for (n = 1; n < max && last->next; n++)
			last = last->next;
		q->head = last->next;
		if (!q->head)
			q->tail = NULL;
		q->len -= n;
		last->next = NULL;
		q->may_linger = 1;
		if (q->waiting_push)
			pthread_cond_broadcast(&q->not_full);
	}
	pthread_mutex_unlock(&q->lock);
	return first;
}

/* --- accounting ------------------------------------------------------------ */

static void inflight_done(struct pipeline *p)
{
	/* The last one out wakes pipeline_drain(). */
	if (atomic_fetch_sub(&p->inflight, 1) == 1) {
		pthread_mutex_lock(&p->drain_lock);
		pthread_cond_broadcast(&p->drain_cond);
		pthread_mutex_unlock(&p->drain_lock);
	}
}

/* msg no longer needs its log record; with keep, the record stays in the
 * log for the next start. */
static void wal_done(struct pipeline *p, iotr_msg *msg, int keep)
{
	struct wal_share *s = msg->wal_share;

	if (!s) {
		if (msg->wal_id && !keep && !msg->wal_keep)
			wal_release(p->wal, msg->wal_id);
		return;
	}
	msg->wal_share = NULL;
	if (keep)
		atomic_store(&s->keep, true);
	if (atomic_fetch_sub(&s->refs, 1) == 1) {
		if (!atomic_load(&s->keep))
			wal_release(p->wal, s->id);
		free(s);
	}
}

/* msg, which a transform made while it processed parent, holds parent's log
 * record too, so that a crash before msg is delivered replays parent. */
static void wal_share_with(iotr_msg *parent, iotr_msg *msg)
{
	struct wal_share *s = parent->wal_share;

	msg->wal_id = parent->wal_id;
	if (!s && !parent->wal_keep) {
		if (!(s = malloc(sizeof(*s)))) {
			/* Without a count nobody may release the record: it is
			 * replayed at the next start. */
			log_error("out of memory sharing write-ahead log record "
			          "%llu; it stays in the log until the next "
			          "start", (unsigned long long)parent->wal_id);
			parent->wal_keep = 1;
		} else {
			atomic_init(&s->refs, 1);
			atomic_init(&s->keep, false);
			s->id = parent->wal_id;
			parent->wal_share = s;
		}
	}
	if (!s) {
		msg->wal_keep = 1;
		return;
	}
	atomic_fetch_add(&s->refs, 1);
	msg->wal_share = s;
}

/* The message's journey ends: count it, release its log record, free it. */
static void finish(struct pipeline *p, iotr_msg *msg, iotr_counter *outcome)
{
	metrics_add(outcome, 1);
	wal_done(p, msg, outcome == p->deferred);
	msg_free(msg);
	inflight_done(p);
}

static void lose(struct pipeline *p, iotr_msg *msg, const char *why)
{
	log_error("message lost: topic '%s'%s%s: %s", msg->topic,
	          msg->dest ? ", destination " : "", msg->dest ? msg->dest : "",
	          why);
	finish(p, msg, p->lost);
}

/*
 * The shutdown deadline passed before the message was delivered.  With the
 * write-ahead log it stays there and is sent after the next start; without
 * it, it is lost.
 */
static void defer(struct pipeline *p, iotr_msg *msg, const char *why)
{
	if (!msg->wal_id) {
		lose(p, msg, why);
		return;
	}
	log_debug("message on '%s' kept in the write-ahead log for the next "
	          "start: %s", msg->topic, why);
	finish(p, msg, p->deferred);
}

static uint32_t hash_bytes(const char *s, size_t len)
{
	uint32_t h = 2166136261u;    /* FNV-1a */
	size_t i;

	for (i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static struct worker *worker_for(struct pipeline *p, const iotr_msg *msg)
{
	uint32_t h = msg->key ? hash_bytes(msg->key, msg->key_len) :
		hash_bytes(msg->topic, strlen(msg->topic));

	return &p->workers[h % p->nworkers];
}

/*
 * Send a failed message to the dead-letter topic, with the reason, route and
 * source topic in headers; or, without a dead-letter topic, count it lost.
 */
static void dead_letter(struct pipeline *p, iotr_msg *msg, const char *reason)
{
	struct router_config *cfg = p->cfg;
	const char *route = msg->route ? msg->route->name : "(no route)";

	if (!reason)
		reason = msg->error ? msg->error : "unknown failure";
	if (msg->dead_letter || !cfg->dead_letter_topic) {
		char why[1024];

		snprintf(why, sizeof(why), "%s%s", reason, msg->dead_letter ?
		         " (while sending it to the dead-letter topic)" :
		         "; set router.dead_letter_topic to keep such messages");
		lose(p, msg, why);
		return;
	}
	if (atomic_load(&p->quit)) {
		/* An output's final flush() refused it: no worker is left to
		 * take it to the dead-letter topic. */
		char why[1024];

		snprintf(why, sizeof(why), "%s (after the workers had stopped, "
		         "so not dead-lettered)", reason);
		defer(p, msg, why);
		return;
	}
	log_warning("dead-lettering message from topic '%s' (%s) to '%s': %s",
	            msg->topic, route, cfg->dead_letter_topic, reason);
	msg_remove_header(msg, "iotrouter.error");
	msg_remove_header(msg, "iotrouter.route");
	msg_remove_header(msg, "iotrouter.source_topic");
	if (msg_add_header(msg, "iotrouter.error", reason, strlen(reason)) ||
	    msg_add_header(msg, "iotrouter.route", route, strlen(route)) ||
	    msg_add_header(msg, "iotrouter.source_topic", msg->topic,
	                   strlen(msg->topic)) ||
	    msg_set_dest(msg, cfg->dead_letter_topic)) {
		lose(p, msg, "out of memory while dead-lettering");
		return;
	}
	msg->dead_letter = 1;
	msg->output = cfg->dead_letter_output;
	metrics_add(p->dead_lettered, 1);
	queue_push(p, &worker_for(p, msg)->q, msg, PUSH_FORCE);
}

/* --- ingress ------------------------------------------------------------ */

static const struct route *route_find(struct pipeline *p,
                                      const struct iotr_instance *src,
                                      const char *topic, size_t *spans)
{
	size_t i;

	for (i = 0; i < p->cfg->nroutes; i++) {
		const struct route *r = &p->cfg->routes[i];

		if (r->input && r->input != src)
			continue;
		if (filter_match(&r->filter, topic, spans))
			return r;
	}
	return NULL;
}

/* Without a route: count it, and send it to router.unmatched_topic if set.
 * Returns 1 when the message goes on, 0 when it was dropped here. */
static int ingest_unmatched(struct pipeline *p, iotr_msg *msg)
{
	struct router_config *cfg = p->cfg;

	metrics_add(p->unmatched, 1);
	if (!cfg->unmatched_topic) {
		if (!atomic_exchange(&p->warned_unmatched, 1))
			log_notice("messages on topic '%s' match no route; they "
			           "are counted as router.unmatched and not "
			           "sent; set router.unmatched_topic to keep "
			           "them (logged once)", msg->topic);
		if (msg->wal_id)
			wal_release(p->wal, msg->wal_id);
		msg_free(msg);
		return 0;
	}
	msg->output = cfg->unmatched_output;
	return 1;
}

/* An oversized message goes to the dead-letter topic with its payload cut
 * to half the limit, so the dead letter itself fits. */
static void ingest_oversized(struct pipeline *p, iotr_msg *msg, size_t size)
{
	size_t keep = (size_t)p->cfg->max_message_bytes / 2;
	char why[256], num[32];
	int n;

	metrics_add(p->oversized, 1);
	snprintf(why, sizeof(why), "message of %zu bytes exceeds "
	         "router.max_message_bytes (%lld); the dead letter keeps the "
	         "first %zu bytes of the payload", size,
	         (long long)p->cfg->max_message_bytes, keep);
	n = snprintf(num, sizeof(num), "%zu", msg->payload_len);
	if (msg->payload_len > keep &&
	    (msg_set_payload(msg, msg->payload, keep) ||
	     msg_add_header(msg, "iotrouter.original_size", num, (size_t)n))) {
		lose(p, msg, "out of memory while dead-lettering");
		return;
	}
	dead_letter(p, msg, why);
}

static void run_output(struct pipeline *p, iotr_msg *msg);
static int run_transforms(struct worker *w, iotr_msg *msg);

/* After a wait in lane_drain() that timed out (an output holding the
 * worker back, say), the lane's messages go to its worker without waiting
 * for this many times router.inline_drain_wait_us. */
#define LANE_DRAIN_RETRY_FACTOR 50

/*
 * Wait until worker w has finished every message of route r it was given,
 * for at most router.inline_drain_wait_us; 1 if it has.  Without this, a
 * route that went to the workers for a while would stay there as long as
 * messages keep coming: each would find the one before it still queued.
 */
static int lane_drain(struct pipeline *p, struct worker *w,
                      const struct route *r)
{
	struct queue *q = &w->q;
	atomic_size_t *pending = &q->pending[r - p->cfg->routes];
	int64_t wait_us = p->cfg->inline_drain_wait_us;
	struct timespec ts;
	int drained;

	if (!wait_us ||
	    monotonic_ms() < atomic_load_explicit(&q->drain_retry_ms,
	                                          memory_order_relaxed))
		return 0;
	deadline_ts_us(&ts, wait_us);
	pthread_mutex_lock(&q->lock);
	atomic_fetch_add(&q->waiting_drain, 1);
	while (atomic_load(pending)) {
		/* a worker lingering for a batch would not come sooner */
		if (q->lingering || q->waiting_pop)
			pthread_cond_signal(&q->not_empty);
		if (pthread_cond_timedwait(&q->drained, &q->lock, &ts) ==
		    ETIMEDOUT)
			break;
	}
	atomic_fetch_sub(&q->waiting_drain, 1);
	drained = atomic_load(pending) == 0;
	pthread_mutex_unlock(&q->lock);
	if (!drained) {
		metrics_add(p->inline_drain_timeouts, 1);
		atomic_store_explicit(&q->drain_retry_ms, monotonic_ms() +
		                      wait_us * LANE_DRAIN_RETRY_FACTOR / 1000,
		                      memory_order_relaxed);
	}
	return drained;
}

/*
 * Whether the route of msg, which has transforms, runs on this thread now
 * (see route_choose_inline): always when router.inline_transforms is on;
 * in auto mode while its transforms cost under router.inline_max_us a
 * message, once the worker of the message's lane (w) has finished all it
 * has of the route (lane_drain).  Never from inside a transform call: a
 * plugin that is also an input and emits from process() would take a
 * lane it holds.
 */
static int route_inline_now(struct pipeline *p, const iotr_msg *msg,
                            struct worker *w)
{
	const struct route *r = msg->route;
	size_t i = (size_t)(r - p->cfg->routes);

	if (current_ctx || r->inline_transforms == ROUTER_INLINE_OFF)
		return 0;
	if (r->inline_transforms == ROUTER_INLINE_ON)
		return 1;
	if (atomic_load_explicit(&p->route_cost_ns[i], memory_order_relaxed) >=
	    p->inline_max_ns)
		return 0;
	return atomic_load(&w->q.pending[i]) == 0 || lane_drain(p, w, r);
}

/*
 * Route a message and queue it (see enum push_mode).  Returns IOTR_OK when
 * the pipeline took it (queued, dead-lettered, or dropped as unmatched);
 * IOTR_ERETRY / IOTR_ESHUTDOWN when a full queue or the stop refused it,
 * after freeing it (its write-ahead log record, if any, stays); or an error
 * after counting it lost.
 */
static int admit(struct pipeline *p, iotr_msg *msg, enum push_mode mode)
{
	struct router_config *cfg = p->cfg;
	size_t spans_small[32], *spans = spans_small;
	const struct route *r;
	struct worker *w;
	size_t size = 0;
	int rc = IOTR_OK, oversized = 0;

	if (2 * p->max_captures > sizeof(spans_small) / sizeof(spans_small[0]) &&
	    !(spans = malloc(2 * p->max_captures * sizeof(*spans)))) {
		atomic_fetch_add(&p->inflight, 1);
		lose(p, msg, "out of memory routing it");
		return IOTR_ENOMEM;
	}
	r = route_find(p, msg->source, msg->topic, spans);
	if (!r) {
		if (!ingest_unmatched(p, msg)) {
			if (spans != spans_small)
				free(spans);
			return IOTR_OK;
		}
		if (msg_set_dest(msg, cfg->unmatched_topic) ||
		    (cfg->default_headers && route_default_headers(msg)))
			rc = IOTR_ENOMEM;
	} else if ((size = msg_size(msg)) > (size_t)cfg->max_message_bytes) {
		/* Checked before the templates: the size is the first thing
		 * wrong with it, and the dead letter should say so. */
		msg->route = r;
		msg->output = r->output;
		oversized = 1;
	} else {
		msg->output = r->output;
		rc = route_apply(r, msg, spans);
	}
	if (spans != spans_small)
		free(spans);
	/* From here the message is accepted: it ends delivered, dropped by a
	 * transform, or lost, and pipeline_drain() waits for it. */
	atomic_fetch_add(&p->inflight, 1);
	if (rc == IOTR_FAIL) {
		dead_letter(p, msg, NULL);
		return IOTR_OK;
	}
	if (rc) {
		lose(p, msg, "out of memory routing it");
		return rc;
	}
	if (oversized ||
	    (size = msg_size(msg)) > (size_t)cfg->max_message_bytes) {
		ingest_oversized(p, msg, size);
		return IOTR_OK;
	}
	w = worker_for(p, msg);
	if (mode == PUSH_BLOCK && cfg->direct_output &&
	    (!msg->route || !msg->route->ntransforms ||
	     route_inline_now(p, msg, w))) {
		/* Run the route on this thread, saving a queue and a thread
		 * switch per message: its transforms in the key's lane (see
		 * struct worker), then the output.  Order holds per input
		 * connection; an output that is full blocks this thread,
		 * which is the backpressure we want. */
		if (msg->route && msg->route->ntransforms) {
			metrics_add(p->inline_runs, 1);
			if (!run_transforms(w, msg))
				return IOTR_OK;
		}
		run_output(p, msg);
		return IOTR_OK;
	}
	rc = queue_push(p, &w->q, msg, mode);
	if (rc == IOTR_OK)
		return IOTR_OK;
	if (mode == PUSH_TRY || mode == PUSH_UNTIL_STOP) {
		msg_free(msg);          /* the log still has it */
		inflight_done(p);
		return rc;
	}
	defer(p, msg, "the shutdown deadline passed before the message could "
	      "be queued");
	return rc;
}

/* Write the message to the log before its input acknowledges it; queue it
 * too unless the queues are full (then spill: the replayer brings it). */
static int wal_ingest(struct pipeline *p, iotr_msg *msg)
{
	uint64_t id = 0;
	int rc;

	pthread_mutex_lock(&p->wal_lock);
	if (msg_encode(msg, msg->source ? msg->source->name : "",
	               &p->record)) {
		pthread_mutex_unlock(&p->wal_lock);
		atomic_fetch_add(&p->inflight, 1);
		lose(p, msg, "out of memory writing it to the write-ahead log");
		return IOTR_ENOMEM;
	}
	while ((rc = wal_append(p->wal, p->record.data, p->record.len,
	                        &id)) == WAL_EFULL) {
		if (p->cfg->wal_drop_oldest) {
			uint64_t n = wal_drop_oldest(p->wal);

			metrics_add(p->wal_dropped, n);
			log_error("write-ahead log reached router.wal_max_bytes "
			          "(%lld bytes): dropped its oldest segment, %llu "
			          "undelivered messages (counted in "
			          "router.wal_dropped)",
			          (long long)p->cfg->wal_max_bytes,
			          (unsigned long long)n);
			if (!n && wal_bytes(p->wal) == 0)
				break;
			continue;
		}
		if (!p->wal_full_warned) {
			p->wal_full_warned = 1;
			log_warning("write-ahead log is full (router.wal_max_bytes "
			            "= %lld): intake waits until outputs catch up",
			            (long long)p->cfg->wal_max_bytes);
		}
		if (pipeline_stopping(p)) {
			/* The input is closing and has acknowledged this
			 * one: keep it, a record past the cap. */
			rc = wal_append_over_cap(p->wal, p->record.data,
			                         p->record.len, &id);
			if (rc == IOTR_OK) {
				metrics_add(p->wal_appended, 1);
				metrics_add(p->wal_spilled, 1);
				pthread_mutex_unlock(&p->wal_lock);
				msg_free(msg);
				return IOTR_OK;
			}
			pthread_mutex_unlock(&p->wal_lock);
			atomic_fetch_add(&p->inflight, 1);
			lose(p, msg, "the write-ahead log and its disk were "
			     "full when the router stopped");
			return IOTR_ESHUTDOWN;
		}
		pthread_mutex_unlock(&p->wal_lock);
		nanosleep(&(struct timespec){ 0, 50 * 1000000 }, NULL);
		pthread_mutex_lock(&p->wal_lock);
	}
	if (rc) {
		/* An I/O error: keep the message moving in memory and say that
		 * it is not protected. */
		pthread_mutex_unlock(&p->wal_lock);
		log_error("write-ahead log in %s: append failed (%d); message on "
		          "'%s' goes on unlogged", p->cfg->wal_dir, rc,
		          msg->topic);
		return admit(p, msg, PUSH_BLOCK);
	}
	p->wal_full_warned = 0;
	metrics_add(p->wal_appended, 1);
	msg->wal_id = id;
	if (!p->spilling) {
		rc = admit(p, msg, PUSH_TRY);
		if (rc == IOTR_ERETRY) {
			p->spilling = 1;
			p->spill_from = id;
			metrics_add(p->wal_spilled, 1);
			log_info("queues full: new messages wait in the "
			         "write-ahead log from record %llu",
			         (unsigned long long)id);
			pthread_cond_signal(&p->wal_cond);
			rc = IOTR_OK;
		}
	} else {
		metrics_add(p->wal_spilled, 1);
		msg_free(msg);
		rc = IOTR_OK;
	}
	pthread_mutex_unlock(&p->wal_lock);
	return rc;
}

int pipeline_current_lane(void)
{
	return current_ctx && current_ctx->w ? (int)current_ctx->w->index : -1;
}

int pipeline_ingest(struct iotr_instance *src, iotr_msg *msg)
{
	struct pipeline *p = src->pipeline;

	if (!msg)
		return IOTR_EINVAL;
	msg->source = src;
	metrics_add(p->received, 1);
	if (p->wal)
		return wal_ingest(p, msg);
	return admit(p, msg, PUSH_BLOCK);
}

/* Where a message t made outside process() goes on: after t, in the first
 * route that has it.  0, or -1 when no route has t. */
static int after_transform(const struct router_config *cfg,
                           const struct iotr_instance *t, struct emit_ctx *ctx)
{
	size_t k, s;

	for (k = 0; k < cfg->nroutes; k++)
		for (s = 0; s < cfg->routes[k].ntransforms; s++)
			if (cfg->routes[k].transforms[s] == t) {
				ctx->route = &cfg->routes[k];
				ctx->stage = s + 1;
				ctx->output = cfg->routes[k].output;
				return 0;
			}
	return -1;
}

/* A record a transform made (see wal_made) goes on after that transform,
 * without being routed again.  As replay_record(). */
static int replay_made(struct pipeline *p, uint64_t id, iotr_msg *msg,
                       const char *name)
{
	struct iotr_instance *t = config_instance(p->cfg, name);
	struct emit_ctx at = { NULL, NULL, 0, NULL, NULL };
	int rc;

	msg->wal_id = id;
	metrics_add(p->wal_replayed, 1);
	atomic_fetch_add(&p->inflight, 1);
	if (!t || t->kind != IOTR_PLUGIN_TRANSFORM ||
	    after_transform(p->cfg, t, &at)) {
		char why[400];

		snprintf(why, sizeof(why), "write-ahead log record %llu was "
		         "made by transform '%.200s', which no route of this "
		         "configuration has", (unsigned long long)id, name);
		lose(p, msg, why);
		return 0;
	}
	msg->route = at.route;
	msg->stage = at.stage;
	msg->output = at.output;
	rc = queue_push(p, &worker_for(p, msg)->q, msg, PUSH_UNTIL_STOP);
	if (rc == IOTR_OK)
		return 0;
	msg_free(msg);          /* the log still has it */
	inflight_done(p);
	return rc == IOTR_ESHUTDOWN ? -1 : 0;
}

/* One record from the log back into the pipeline.  Returns 0, or -1 when
 * the router began to stop (the record stays in the log). */
static int replay_record(struct pipeline *p, uint64_t id, void *data,
                         size_t len)
{
	char source[CONF_NAME_MAX + 1];
	iotr_msg *msg = msg_decode(data, len, source, sizeof(source));
	struct iotr_instance *src;

	free(data);
	if (!msg) {
		log_error("write-ahead log record %llu is not a message this "
		          "router can read; skipped", (unsigned long long)id);
		wal_release(p->wal, id);
		return 0;
	}
	if (msg->made)
		return replay_made(p, id, msg, source);
	src = config_instance(p->cfg, source);
	msg->source = src && src->kind == IOTR_PLUGIN_INPUT ? src : NULL;
	msg->wal_id = id;
	metrics_add(p->wal_replayed, 1);
	return admit(p, msg, PUSH_UNTIL_STOP) == IOTR_ESHUTDOWN ? -1 : 0;
}

/* Feed the queues from the log while `spilling`; see struct pipeline. */
static void *replayer_main(void *arg)
{
	struct pipeline *p = arg;

	pthread_mutex_lock(&p->wal_lock);
	for (;;) {
		struct wal_reader *r;
		uint64_t id, next;
		void *data;
		size_t len;
		int rc;

		while (!p->spilling && !pipeline_stopping(p)) {
			struct timespec ts;

			deadline_ts(&ts, 200);
			pthread_cond_timedwait(&p->wal_cond, &p->wal_lock, &ts);
		}
		if (pipeline_stopping(p))
			break;
		next = p->spill_from;
		r = wal_reader_open(p->wal, next);
		pthread_mutex_unlock(&p->wal_lock);
		if (!r) {
			log_error("cannot read the write-ahead log in %s; "
			          "retrying in 1 s", p->cfg->wal_dir);
			sleep(1);
			pthread_mutex_lock(&p->wal_lock);
			continue;
		}
		for (;;) {
			rc = wal_reader_next(r, &id, &data, &len);
			if (rc == 0) {
				/* Caught up?  Ask again under the lock, so no
				 * append slips in between. */
				pthread_mutex_lock(&p->wal_lock);
				rc = wal_reader_next(r, &id, &data, &len);
				if (rc == 0) {
					p->spilling = 0;
					log_info("write-ahead log caught up; "
					         "messages are queued directly "
					         "again");
					break;          /* locked */
				}
				pthread_mutex_unlock(&p->wal_lock);
			}
			if (rc < 0) {
				log_error("reading the write-ahead log in %s "
				          "failed (%d); retrying in 1 s",
				          p->cfg->wal_dir, rc);
				sleep(1);
				/* Go on after the last record queued: the
				 * ones before it are live until delivered,
				 * and reading them again would queue them
				 * twice. */
				pthread_mutex_lock(&p->wal_lock);
				p->spill_from = next;
				break;                  /* locked */
			}
			if (replay_record(p, id, data, len)) {
				pthread_mutex_lock(&p->wal_lock);
				break;                  /* locked */
			}
			next = id + 1;
		}
		wal_reader_close(r);
	}
	pthread_mutex_unlock(&p->wal_lock);
	return NULL;
}

/* --- workers ------------------------------------------------------------ */

static void run_output(struct pipeline *p, iotr_msg *msg)
{
	struct iotr_instance *out = msg->output;
	int rc;

	for (;;) {
		rc = out->plugin->deliver(out->state, msg);
		if (rc == IOTR_OK)
			return;   /* delivered() finishes it */
		if (rc == IOTR_ERETRY && pipeline_stopping(p) < 2) {
			struct timespec ts = {
				.tv_sec = p->cfg->retry_backoff_ms / 1000,
				.tv_nsec = (p->cfg->retry_backoff_ms % 1000) *
					1000000 };

			metrics_add(p->retried, 1);
			nanosleep(&ts, NULL);
			continue;
		}
		break;
	}
	if (rc == IOTR_FAIL) {
		char why[1024];

		snprintf(why, sizeof(why), "output '%s' refused it: %s",
		         out->name, msg->error ? msg->error : "no reason given");
		dead_letter(p, msg, why);
		return;
	}
	if (rc == IOTR_ESHUTDOWN)
		defer(p, msg, "the shutdown deadline passed before the output "
		      "took it");
	else
		lose(p, msg, "the output could not take it");
}

/* About one message in this many has its transforms timed, wherever they
 * run, for route_inline_now(); the first ones of a route always are.  The
 * choice is random: a count per thread would keep meeting the same route
 * where routes take turns (one device's readings on a, b, a, b, ...). */
#define COST_SAMPLE 16

/* A per-thread xorshift generator: cheap, and good enough to pick samples. */
static int cost_sample_now(void)
{
	static _Thread_local uint32_t x;

	if (!x)
		x = (uint32_t)(uintptr_t)&x | 1;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return x % COST_SAMPLE == 0;
}

/* Fold a sample into a route's cost: a moving average over about eight
 * samples, never 0 once measured.  A sample counts for at most four times
 * router.inline_max_us, so that one slow call (the first in a lane, which
 * builds a Lua state; a garbage collection) moves the average by half the
 * threshold at most.  Two threads may race here; losing a sample does no
 * harm. */
static void cost_sample(struct pipeline *p, _Atomic int64_t *cost, int64_t ns)
{
	int64_t old = atomic_load_explicit(cost, memory_order_relaxed);
	int64_t now;

	if (ns > 4 * p->inline_max_ns)
		ns = 4 * p->inline_max_ns;
	now = old + (ns - old) / 8;

	atomic_store_explicit(cost, now > 0 ? now : 1, memory_order_relaxed);
}

/*
 * Run the rest of the message's transform chain in lane w; 1 if it goes on.
 * The lane's lock is held for the whole chain, so that the messages of a
 * lane pass every transform in the same order, whichever threads bring
 * them.
 */
static int run_transforms(struct worker *w, iotr_msg *msg)
{
	struct pipeline *p = w->p;
	const struct route *r = msg->route;
	struct iotr_instance *t = NULL;
	_Atomic int64_t *cost = NULL;
	int64_t t0 = 0;
	int rc = IOTR_OK;

	if (!r || msg->stage >= r->ntransforms)
		return 1;
	pthread_mutex_lock(&w->lane_lock);
	if (r->inline_transforms == ROUTER_INLINE_AUTO) {
		cost = &p->route_cost_ns[r - p->cfg->routes];
		if (!atomic_load_explicit(cost, memory_order_relaxed) ||
		    cost_sample_now())
			t0 = monotonic_ns();
	}
	while (rc == IOTR_OK && msg->stage < r->ntransforms) {
		struct emit_ctx ctx = { w, r, msg->stage + 1, msg->output, msg };

		t = r->transforms[msg->stage++];
		current_ctx = &ctx;
		rc = t->plugin->process(t->state, msg);
		current_ctx = NULL;
	}
	if (t0)
		cost_sample(p, cost, monotonic_ns() - t0);
	pthread_mutex_unlock(&w->lane_lock);
	if (rc == IOTR_OK)
		return 1;
	if (rc == IOTR_DROP) {
		finish(p, msg, p->dropped);
		return 0;
	}
	{
		char why[1024];

		snprintf(why, sizeof(why), "transform '%s' failed: %s", t->name,
		         msg->error ? msg->error : "no reason given");
		dead_letter(p, msg, why);
	}
	return 0;
}

static void run_ticks(struct worker *w, int64_t now_us)
{
	struct router_config *cfg = w->p->cfg;
	size_t i;

	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *t = cfg->instances[i];
		struct emit_ctx ctx = { w, NULL, 0, NULL, NULL };

		if (t->kind != IOTR_PLUGIN_TRANSFORM || !t->tick_ms ||
		    t->plugin->size <= offsetof(struct iotr_plugin, tick) ||
		    !t->plugin->tick || after_transform(cfg, t, &ctx))
			continue;
		pthread_mutex_lock(&w->lane_lock);
		current_ctx = &ctx;
		t->plugin->tick(t->state, now_us);
		current_ctx = NULL;
		pthread_mutex_unlock(&w->lane_lock);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pipeline *p = w->p;
	int64_t tick = p->min_tick_ms;
	int64_t next_tick = tick ? monotonic_ms() + tick : INT64_MAX;

	for (;;) {
		iotr_msg *batch = queue_pop(p, &w->q, next_tick, WORKER_BATCH);

		if (!batch && atomic_load(&p->quit))
			break;
		if (tick && monotonic_ms() >= next_tick) {
			run_ticks(w, msg_now_us());
			next_tick += tick;
			if (next_tick < monotonic_ms())
				next_tick = monotonic_ms() + tick;
		}
		while (batch) {
			iotr_msg *msg = batch;
			atomic_size_t *pending = pending_of(p, &w->q, msg);

			batch = msg->next;
			msg->next = NULL;
			if (msg->dead_letter || run_transforms(w, msg))
				run_output(p, msg);
			/* (msg may be gone: only its route's count is used.)
			 * See lane_drain: the waiter counted itself before it
			 * read the count, so one of the two sees the other. */
			if (atomic_fetch_sub(pending, 1) == 1 &&
			    atomic_load(&w->q.waiting_drain)) {
				pthread_mutex_lock(&w->q.lock);
				pthread_cond_broadcast(&w->q.drained);
				pthread_mutex_unlock(&w->q.lock);
			}
		}
	}
	return NULL;
}

/*
 * A message t made outside process() (a tick, its stop: a closed window)
 * has no input's record to share, so it gets one of its own, which a
 * replay continues after t.  Then it is queued like any emitted message,
 * unless the router is spilling: then it waits in the log, in order.
 */
static int wal_made(struct pipeline *p, struct iotr_instance *t, iotr_msg *msg)
{
	uint64_t id = 0;
	int rc;

	metrics_add(p->received, 1);
	pthread_mutex_lock(&p->wal_lock);
	rc = msg_encode_made(msg, t->name, &p->record);
	if (rc == IOTR_OK) {
		rc = wal_append(p->wal, p->record.data, p->record.len, &id);
		/* nothing may wait in a tick: past the cap, as at a stop */
		if (rc == WAL_EFULL)
			rc = wal_append_over_cap(p->wal, p->record.data,
			                         p->record.len, &id);
	}
	if (rc == IOTR_OK) {
		metrics_add(p->wal_appended, 1);
		if (p->spilling) {
			metrics_add(p->wal_spilled, 1);
			pthread_mutex_unlock(&p->wal_lock);
			msg_free(msg);
			return IOTR_OK;
		}
		msg->wal_id = id;
	}
	pthread_mutex_unlock(&p->wal_lock);
	if (rc != IOTR_OK)
		log_error("write-ahead log in %s: cannot log a message "
		          "transform '%s' made (%d); it goes on unlogged",
		          p->cfg->wal_dir, t->name, rc);
	atomic_fetch_add(&p->inflight, 1);
	return queue_push(p, &worker_for(p, msg)->q, msg, PUSH_FORCE);
}

int pipeline_transform_emit(struct iotr_instance *t, iotr_msg *msg)
{
	struct emit_ctx *ctx = current_ctx;
	struct pipeline *p = t->pipeline;

	if (!msg)
		return IOTR_EINVAL;
	if (!ctx) {
		log_error("[plugin:%s] emit() called outside process(), tick() "
		          "or stop(); message on '%s' dropped", t->name,
		          msg->topic);
		msg_free(msg);
		return IOTR_EINVAL;
	}
	/* What process() makes stays on its message's route; what a tick or
	 * a stop makes goes on in the first route that has the transform,
	 * where a replay of its record (replay_made) sends it too. */
	if ((!msg->route || !ctx->parent) && ctx->route &&
	    msg->route != ctx->route) {
		msg_release(msg, msg->captures);
		msg->route = ctx->route;
		msg->captures = NULL;
	}
	msg->stage = ctx->stage;
	msg->output = ctx->output;
	if (!msg->output) {
		msg_free(msg);
		return IOTR_EINVAL;
	}
	if (ctx->parent && ctx->parent->wal_id && !msg->wal_id)
		wal_share_with(ctx->parent, msg);
	else if (!ctx->parent && p->wal && !msg->wal_id)
		return wal_made(p, t, msg);
	atomic_fetch_add(&p->inflight, 1);
	metrics_add(p->received, 1);
	return queue_push(p, &worker_for(p, msg)->q, msg, PUSH_FORCE);
}

/* stop() runs in no lane but holds them all (in order), so that it never
 * overlaps a tick() or a process() the workers still run. */
void pipeline_stop_transform(struct pipeline *p, struct iotr_instance *t)
{
	struct emit_ctx ctx = { NULL, NULL, 0, NULL, NULL };
	size_t i;

	if (!t->plugin->stop)
		return;
	for (i = 0; i < p->nworkers; i++)
		pthread_mutex_lock(&p->workers[i].lane_lock);
	current_ctx = after_transform(p->cfg, t, &ctx) == 0 ? &ctx : NULL;
	t->plugin->stop(t->state);
	current_ctx = NULL;
	for (i = p->nworkers; i-- > 0;)
		pthread_mutex_unlock(&p->workers[i].lane_lock);
}

void pipeline_delivered(struct iotr_instance *out, iotr_msg *msg, int status,
                        const char *reason)
{
	struct pipeline *p = out->pipeline;

	if (!msg)
		return;
	switch (status) {
	case IOTR_OK:
		finish(p, msg, p->delivered);
		return;
	case IOTR_ERETRY:
		if (pipeline_stopping(p) < 2 &&
		    msg->retries < UINT32_MAX) {
			msg->retries++;
			metrics_add(p->retried, 1);
			queue_push(p, &worker_for(p, msg)->q, msg, PUSH_FORCE);
			return;
		}
		defer(p, msg, reason ? reason : "not delivered before the "
		      "shutdown deadline");
		return;
	default: {
		char why[1024];

		snprintf(why, sizeof(why), "output '%s' rejected it: %s",
		         out->name, reason ? reason : msg->error ? msg->error :
		         "no reason given");
		dead_letter(p, msg, why);
		return;
	}
	}
}

/* --- life cycle ------------------------------------------------------------ */

static int pipeline_open_wal(struct pipeline *p)
{
	struct router_config *cfg = p->cfg;
	struct wal_options o = {
		.dir = cfg->wal_dir,
		.segment_bytes = (uint64_t)cfg->wal_segment_bytes,
		.max_bytes = (uint64_t)cfg->wal_max_bytes,
		.sync = cfg->wal_fdatasync ? WAL_SYNC_FDATASYNC :
			WAL_SYNC_WRITE,
		.sync_interval_ms = cfg->wal_sync_interval_ms,
		.sync_every = (uint64_t)cfg->wal_sync_every,
	};
	struct wal_open_report rep = { 0 };
	char err[1024];

	if (pthread_mutex_init(&p->wal_lock, NULL) ||
	    cond_init_monotonic(&p->wal_cond))
		return -1;
	p->wal_appended = metrics_counter("router.wal_appended");
	p->wal_spilled = metrics_counter("router.wal_spilled");
	p->wal_replayed = metrics_counter("router.wal_replayed");
	p->wal_dropped = metrics_counter("router.wal_dropped");
	if (wal_open(&p->wal, &o, &rep, err, sizeof(err))) {
		log_error("write-ahead log: %s", err);
		return -1;
	}
	if (rep.bytes_truncated || rep.bytes_skipped)
		log_warning("write-ahead log in %s was damaged (a crash during "
		            "a write, or a bad disk): truncated a torn tail of "
		            "%llu bytes, skipped %llu bytes in %llu corrupt "
		            "regions; every intact record is kept",
		            cfg->wal_dir,
		            (unsigned long long)rep.bytes_truncated,
		            (unsigned long long)rep.bytes_skipped,
		            (unsigned long long)rep.corrupt_regions);
	if (rep.records_live) {
		log_notice("write-ahead log in %s holds %llu undelivered "
		           "messages from before; sending them first", cfg->wal_dir,
		           (unsigned long long)rep.records_live);
		p->spilling = 1;
		p->spill_from = 0;
	} else {
		log_info("write-ahead log in %s is empty", cfg->wal_dir);
	}
	return 0;
}

/*
 * Whether a route's transforms may run on the thread of the input that took
 * the message (router.inline_transforms, with direct_output; in auto mode
 * route_inline_now() decides each time): only when each of them was built
 * against plugin ABI 1.2 or later, which tells a transform that its lane,
 * not its thread, holds a key (host->lane()).
 */
static void route_choose_inline(const struct router_config *cfg,
                                struct route *r)
{
	size_t i;

	r->inline_transforms = ROUTER_INLINE_OFF;
	/* with the write-ahead log, intake never waits on a route: it queues */
	if (!r->ntransforms || !cfg->inline_transforms || !cfg->direct_output ||
	    cfg->wal_dir)
		return;
	for (i = 0; i < r->ntransforms; i++) {
		const struct iotr_plugin *d = r->transforms[i]->plugin;

		if (d->abi_major == 1 && d->abi_minor < 2) {
			log_notice("route '%s': transform '%s' was built for "
			           "plugin ABI %u.%u, before lanes (1.2), so the "
			           "route's transforms run on the workers",
			           r->name, r->transforms[i]->name,
			           (unsigned)d->abi_major, (unsigned)d->abi_minor);
			return;
		}
	}
	r->inline_transforms = cfg->inline_transforms;
}

struct pipeline *pipeline_new(struct router_config *cfg)
{
	struct pipeline *p = calloc(1, sizeof(*p));
	size_t i;

	if (!p)
		return NULL;
	p->cfg = cfg;
	p->nworkers = (size_t)cfg->workers;
	p->workers = calloc(p->nworkers, sizeof(*p->workers));
	p->route_cost_ns = calloc(cfg->nroutes ? cfg->nroutes : 1,
	                          sizeof(*p->route_cost_ns));
	if (!p->workers || !p->route_cost_ns ||
	    pthread_mutex_init(&p->drain_lock, NULL) ||
	    cond_init_monotonic(&p->drain_cond)) {
		free(p->route_cost_ns);
		free(p->workers);
		free(p);
		return NULL;
	}
	p->inline_max_ns = cfg->inline_max_us * 1000;
	for (i = 0; i < p->nworkers; i++) {
		p->workers[i].p = p;
		p->workers[i].index = i;
		if (pthread_mutex_init(&p->workers[i].lane_lock, NULL) ||
		    queue_init(&p->workers[i].q, (size_t)cfg->queue_size,
		               cfg->nroutes)) {
			for (i = 0; i < p->nworkers; i++)   /* calloc'd */
				free(p->workers[i].q.pending);
			free(p->route_cost_ns);
			free(p->workers);
			free(p);
			return NULL;
		}
	}
	for (i = 0; i < cfg->nroutes; i++) {
		if (cfg->routes[i].filter.ncaptures > p->max_captures)
			p->max_captures = cfg->routes[i].filter.ncaptures;
		route_choose_inline(cfg, &cfg->routes[i]);
	}
	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *t = cfg->instances[i];

		t->pipeline = p;
		if (t->kind == IOTR_PLUGIN_TRANSFORM && t->tick_ms &&
		    (!p->min_tick_ms || t->tick_ms < p->min_tick_ms))
			p->min_tick_ms = t->tick_ms;
	}
	p->received = metrics_counter("router.received");
	p->unmatched = metrics_counter("router.unmatched");
	p->delivered = metrics_counter("router.delivered");
	p->dropped = metrics_counter("router.dropped");
	p->dead_lettered = metrics_counter("router.dead_lettered");
	p->oversized = metrics_counter("router.oversized");
	p->retried = metrics_counter("router.retried");
	p->lost = metrics_counter("router.lost");
	p->deferred = metrics_counter("router.deferred");
	p->inline_runs = metrics_counter("router.inline");
	p->inline_drain_timeouts = metrics_counter("router.inline_drain_timeouts");
	if (cfg->wal_dir && pipeline_open_wal(p)) {
		pipeline_free(p);
		return NULL;
	}
	return p;
}

int pipeline_start(struct pipeline *p)
{
	size_t i;
	int rc;

	for (i = 0; i < p->nworkers; i++) {
		rc = pthread_create(&p->workers[i].thread, NULL, worker_main,
		                    &p->workers[i]);
		if (rc) {
			log_error("cannot start worker thread %zu: %s", i,
			          strerror(rc));
			return -1;
		}
		p->workers[i].running = 1;
	}
	if (p->wal) {
		rc = pthread_create(&p->replayer, NULL, replayer_main, p);
		if (rc) {
			log_error("cannot start the write-ahead log's replay "
			          "thread: %s", strerror(rc));
			return -1;
		}
		p->replayer_running = 1;
	}
	return 0;
}

void pipeline_begin_stop(struct pipeline *p, int64_t deadline_ms)
{
	atomic_store(&p->deadline_ms, deadline_ms);
	atomic_store(&p->stopping, 1);
	if (p->wal) {
		pthread_mutex_lock(&p->wal_lock);
		pthread_cond_broadcast(&p->wal_cond);
		pthread_mutex_unlock(&p->wal_lock);
	}
}

void pipeline_deadline_passed(struct pipeline *p)
{
	atomic_store(&p->stopping, 2);
}

int pipeline_stopping(const struct pipeline *p)
{
	struct pipeline *pp = (struct pipeline *)p;
	int level = atomic_load(&pp->stopping);

	/* Past the deadline, whoever asks first moves everyone to 2, so that a
	 * thread blocked for backpressure gives up on time even while the main
	 * thread still waits in an input's stop(). */
	if (level == 1 && monotonic_ms() >= atomic_load(&pp->deadline_ms)) {
		atomic_store(&pp->stopping, 2);
		level = 2;
	}
	return level;
}

uint64_t pipeline_drain(struct pipeline *p, int64_t deadline_ms)
{
	uint64_t left;

	pthread_mutex_lock(&p->drain_lock);
	while ((left = atomic_load(&p->inflight)) > 0) {
		struct timespec ts;
		int64_t wait = deadline_ms - monotonic_ms();

		if (wait <= 0)
			break;
		deadline_ts(&ts, wait > 200 ? 200 : wait);
		pthread_cond_timedwait(&p->drain_cond, &p->drain_lock, &ts);
	}
	pthread_mutex_unlock(&p->drain_lock);
	return left;
}

void pipeline_stop_workers(struct pipeline *p)
{
	size_t i;

	if (p->replayer_running) {
		pthread_join(p->replayer, NULL);
		p->replayer_running = 0;
	}
	atomic_store(&p->quit, 1);
	for (i = 0; i < p->nworkers; i++) {
		struct queue *q = &p->workers[i].q;

		pthread_mutex_lock(&q->lock);
		pthread_cond_broadcast(&q->not_empty);
		pthread_mutex_unlock(&q->lock);
	}
	for (i = 0; i < p->nworkers; i++)
		if (p->workers[i].running)
			pthread_join(p->workers[i].thread, NULL);
	/* Workers leave only on an empty queue or at quit; what is left was
	 * never given to an output. */
	for (i = 0; i < p->nworkers; i++) {
		iotr_msg *msg;

		while ((msg = p->workers[i].q.head)) {
			p->workers[i].q.head = msg->next;
			defer(p, msg, "still queued when the router stopped");
		}
		p->workers[i].q.tail = NULL;
	}
}

void pipeline_free(struct pipeline *p)
{
	size_t i;

	if (!p)
		return;
	for (i = 0; i < p->nworkers; i++) {
		pthread_mutex_destroy(&p->workers[i].lane_lock);
		pthread_mutex_destroy(&p->workers[i].q.lock);
		pthread_cond_destroy(&p->workers[i].q.not_empty);
		pthread_cond_destroy(&p->workers[i].q.not_full);
		pthread_cond_destroy(&p->workers[i].q.drained);
	}
	pthread_mutex_destroy(&p->drain_lock);
	pthread_cond_destroy(&p->drain_cond);
	if (p->wal) {
		wal_close(p->wal);
		pthread_mutex_destroy(&p->wal_lock);
		pthread_cond_destroy(&p->wal_cond);
	}
	for (i = 0; i < p->nworkers; i++)
		free(p->workers[i].q.pending);
	free(p->record.data);
	free(p->route_cost_ns);
	free(p->workers);
	free(p);
}
