/*
 * kafka.c - output plugin "kafka": produces router messages to Apache Kafka
 * with librdkafka, or to librdkafka's mock cluster run inside the router.
 *
 * Threading: deliver() runs on several router workers at once; librdkafka is
 * thread-safe, and the plugin's own shared state is atomics plus the
 * embedded-topic cache (kafka_out.topics_lock).  Delivery reports are served
 * by the threads that produce (every KAFKA_OUT_SERVE_EVERY messages, and
 * while waiting on a full queue), by the plugin's poll thread when no
 * producer has served them for KAFKA_OUT_POLL_DEFER_MS, and by flush() and
 * destroy(); so kafka_out_dr_cb() may run on any of them.  It touches only
 * atomics and thread-safe host functions.
 *
 * Why the producers serve them: a report frees the router's message and
 * librdkafka's copy of it, both allocated on the producing thread.  Freed on
 * another thread, every message's memory crosses malloc arenas, and both
 * threads then take the arena lock on each allocation and free; at high
 * rates that cost more than the rest of the producing path together.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "iotrouter/plugin.h"
#include "kafkaconf.h"

/* Embedded cluster: how many topic names deliver() remembers as created.
 * Past this, each message to a topic not remembered asks the mock cluster
 * again (correct, only slower). */
#define KAFKA_OUT_EMBEDDED_TOPICS_MAX 1024

/* How long destroy() (and flush() after its deadline) keep polling for the
 * reports of purged messages before giving up on them. */
#define KAFKA_OUT_DRAIN_MS 5000

/* Kafka's limit on topic names (longer ones are refused by the broker). */
#define KAFKA_OUT_TOPIC_MAX 249

/* Topic handles deliver() keeps, looked up by name without a lock (see
 * kafka_out_topic_get).  Past this many topics, a message to a topic not
 * kept takes librdkafka's by-name path: correct, only slower.  The table
 * has twice as many slots, so that a lookup stays short. */
#define KAFKA_OUT_TOPIC_CACHE 1024
#define KAFKA_OUT_TOPIC_SLOTS (2 * KAFKA_OUT_TOPIC_CACHE)

/* A producing thread serves the delivery reports that are ready after each
 * this many messages it produced (see the top of this file). */
#define KAFKA_OUT_SERVE_EVERY 32

/* The poll thread leaves the reports to the producers while one of them has
 * served reports within this many milliseconds, and serves them itself when
 * the producers go quiet, so that no report waits for the next message. */
#define KAFKA_OUT_POLL_DEFER_MS 5

/* A kept topic handle; never changed once published in the table. */
struct kafka_out_topic {
	uint32_t hash;
	rd_kafka_topic_t *rkt;
	char name[];
};

struct kafka_out {
	struct kafka_base b;         /* first: librdkafka's opaque */

	/* configuration, read in create() */
	char *topic;                 /* default topic, or NULL */
	char *brokers;               /* as configured, for log lines */
	int embedded;                /* brokers = "embedded" */
	int embedded_brokers;
	int embedded_partitions;
	char *bootstrap_file;        /* or NULL */
	int poll_interval_ms;
	int queue_full_retry_ms;
	int copy_headers;

	/* built in create(); rd_kafka_new() takes it over in start() */
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;              /* the producer */

	/* embedded only: a client handle that hosts the mock cluster */
	rd_kafka_t *mock_rk;
	rd_kafka_mock_cluster_t *mcluster;

	pthread_t poll_thread;
	int poll_running;
	atomic_int poll_stop;
	/* monotonic ms when a producing thread last served reports */
	atomic_llong served_ms;

	/* Messages accepted by deliver() whose delivered() call has not yet
	 * returned.  Raised before each produce attempt and lowered when it
	 * fails, so a report can never lower it first. */
	atomic_llong outstanding;
	/* Reports given as IOTR_ERETRY, to count what a purge hit. */
	atomic_llong retried;

	/* topic handles by name: read without a lock, added under
	 * topic_cache_lock (kafka_out_topic_get) */
	_Atomic(struct kafka_out_topic *) *topic_cache;
	atomic_size_t ntopic_cache;  /* written under topic_cache_lock */
	pthread_mutex_t topic_cache_lock;
	atomic_int topic_new_failed; /* said once */

	/* embedded only: topics already created with the configured partition
	 * count, for topics past the handle cache */
	pthread_rwlock_t topics_lock;
	char **topics;
	size_t ntopics;

	iotr_counter *produced;
	iotr_counter *delivered;
	iotr_counter *failed;
	iotr_counter *queue_full;
};

static const struct iotr_param kafka_out_params[] = {
	{ .key = "brokers", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "Bootstrap servers \"host:port,host:port\", or \"embedded\" "
	         "to start librdkafka's mock Kafka cluster inside the router." },
	{ .key = "topic", .type = IOTR_PARAM_STRING,
	  .doc = "Kafka topic for messages whose route set no destination; "
	         "without it such messages are dead-lettered." },
	{ .key = "properties", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "librdkafka configuration properties \"name=value\", applied "
	         "after the plugin's defaults so they override them." },
	{ .key = "embedded_brokers", .type = IOTR_PARAM_INT,
	  .default_value = "1", .min = 1, .max = 16,
	  .doc = "Number of brokers of the embedded cluster." },
	{ .key = "embedded_partitions", .type = IOTR_PARAM_INT,
	  .default_value = "4", .min = 1, .max = 1024,
	  .doc = "Partitions of each topic the plugin creates in the embedded "
	         "cluster." },
	{ .key = "embedded_bootstrap_file", .type = IOTR_PARAM_STRING,
	  .doc = "File to write the embedded cluster's bootstrap address to, "
	         "for scripts and kcat." },
	{ .key = "poll_interval_ms", .type = IOTR_PARAM_INT,
	  .default_value = "100", .min = 1, .max = 10000,
	  .doc = "Longest wait of the delivery report thread in one "
	         "rd_kafka_poll() call." },
	{ .key = "queue_full_retry_ms", .type = IOTR_PARAM_INT,
	  .default_value = "10", .min = 1, .max = 1000,
	  .doc = "How long deliver() serves delivery reports before it retries "
	         "a message librdkafka refused because its queue was full." },
	{ .key = "headers", .type = IOTR_PARAM_BOOL, .default_value = "true",
	  .doc = "Copy the message's headers to the Kafka record's headers." },
	{ .key = NULL }
};

/* Applied before `properties`, so an operator can override each. */
static const char *const kafka_out_defaults[][2] = {
	/* every in-sync replica has the record before it counts as delivered */
	{ "acks", "all" },
	/* no duplicates from producer retries, order kept per partition */
	{ "enable.idempotence", "true" },
	/* never give up on a message: a timeout would turn into loss for a
	 * router running without the write-ahead log; flush() purges instead
	 * at the shutdown deadline */
	{ "message.timeout.ms", "0" },
	/* batches of up to 2 ms: at 5 (librdkafka's default) the p99 end to
	 * end was 2 to 3 ms higher in scripts/bench, at no clear gain in rate
	 * (doc/benchmark.md) */
	{ "linger.ms", "2" },
};

static int64_t kafka_out_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void kafka_out_count(iotr_counter *counter, const struct iotr_host *h)
{
	if (counter)
		h->counter_add(counter, 1);
}

static void kafka_out_mock_log_cb(const rd_kafka_t *rk, int level,
                                  const char *fac, const char *buf)
{
	struct kafka_out *k = rd_kafka_opaque(rk);

	if (k)
		k->b.host->log(k->b.inst, kafka_log_level(level),
		             "embedded cluster %s: %s", fac, buf);
}

static void kafka_out_error_cb(rd_kafka_t *rk, int err, const char *reason,
                               void *opaque)
{
	struct kafka_out *k = opaque;
	char fatal[512];
	rd_kafka_resp_err_t ferr;

	if (err != RD_KAFKA_RESP_ERR__FATAL) {
		k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "Kafka error %s: %s",
		             rd_kafka_err2name(err), reason);
		return;
	}
	ferr = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
	k->b.host->log(k->b.inst, IOTR_LOG_ERROR,
	             "fatal Kafka producer error %s: %s; the producer cannot "
	             "send any more messages, which are reported for retry: "
	             "check the brokers (%s) and restart the router",
	             rd_kafka_err2name(ferr), fatal, k->brokers);
}

/*
 * What a failed delivery report means for the host: IOTR_ERETRY when the
 * message is fine and Kafka (or the way to it) was not, IOTR_FAIL when
 * Kafka refused this message for good.  A message that may have been
 * written is retried: at-least-once allows a duplicate, not a loss.
 */
static int kafka_out_dr_status(rd_kafka_resp_err_t err,
                               rd_kafka_msg_status_t status)
{
	if (status == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED)
		return IOTR_ERETRY;
	switch (err) {
	case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
	case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
	case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
	case RD_KAFKA_RESP_ERR__TRANSPORT:
	case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
	case RD_KAFKA_RESP_ERR__DESTROY:
	case RD_KAFKA_RESP_ERR__FATAL:
	case RD_KAFKA_RESP_ERR__RETRY:
	case RD_KAFKA_RESP_ERR__NODE_UPDATE:
	case RD_KAFKA_RESP_ERR__WAIT_COORD:
	case RD_KAFKA_RESP_ERR__OUTDATED:
	case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
	case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
	case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
	case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
	case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
	case RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER:
	case RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID:
	case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
	case RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS:
	case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
		return IOTR_ERETRY;
	default:
		return IOTR_FAIL;
	}
}

static void kafka_out_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m,
                            void *opaque)
{
	struct kafka_out *k = opaque;
	const struct iotr_host *h = k->b.host;
	iotr_msg *msg = m->_private;
	char reason[512];
	int status;

	(void)rk;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		h->delivered(k->b.inst, msg, IOTR_OK, NULL);
		kafka_out_count(k->delivered, h);
	} else {
		status = kafka_out_dr_status(m->err, rd_kafka_message_status(m));
		if (m->partition >= 0)
			snprintf(reason, sizeof(reason),
			         "kafka topic %s partition %" PRId32 ": %s",
			         rd_kafka_topic_name(m->rkt), m->partition,
			         rd_kafka_err2str(m->err));
		else
			snprintf(reason, sizeof(reason),
			         "kafka topic %s (no partition assigned): %s",
			         rd_kafka_topic_name(m->rkt),
			         rd_kafka_err2str(m->err));
		h->delivered(k->b.inst, msg, status, reason);
		kafka_out_count(k->failed, h);
		if (status == IOTR_ERETRY)
			atomic_fetch_add(&k->retried, 1);
	}
	/* last: once flush() sees zero, every delivered() has returned */
	atomic_fetch_sub(&k->outstanding, 1);
}

/* Kafka topic names: 1..249 of [A-Za-z0-9._-], and not "." or "..". */
static int kafka_out_topic_valid(const char *topic)
{
	size_t n;

	for (n = 0; topic[n]; n++) {
		char c = topic[n];

		if (n >= KAFKA_OUT_TOPIC_MAX)
			return 0;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-'))
			return 0;
	}
	return n > 0 && strcmp(topic, ".") != 0 && strcmp(topic, "..") != 0;
}

/*
 * Embedded cluster: create `topic` with embedded_partitions partitions
 * before the producer first asks for it, because the mock cluster of
 * librdkafka 2.0 auto-creates topics with a fixed 4 partitions and has no
 * setting for that.  A failure here is not fatal: auto-creation remains.
 */
static void kafka_out_embedded_topic(struct kafka_out *k, const char *topic)
{
	rd_kafka_resp_err_t err;
	size_t i;
	int known = 0;
	int rf = k->embedded_brokers < 3 ? k->embedded_brokers : 3;
	char *copy;

	pthread_rwlock_rdlock(&k->topics_lock);
	for (i = 0; i < k->ntopics && !known; i++)
		known = strcmp(k->topics[i], topic) == 0;
	pthread_rwlock_unlock(&k->topics_lock);
	if (known)
		return;

	err = rd_kafka_mock_topic_create(k->mcluster, topic,
	                                 k->embedded_partitions, rf);
	if (err && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
		k->b.host->log(k->b.inst, IOTR_LOG_WARNING,
		             "embedded cluster: creating topic %s with %d "
		             "partitions failed: %s; it is auto-created instead",
		             topic, k->embedded_partitions,
		             rd_kafka_err2str(err));

	pthread_rwlock_wrlock(&k->topics_lock);
	for (i = 0; i < k->ntopics && !known; i++)
		known = strcmp(k->topics[i], topic) == 0;
	if (!known && k->ntopics < KAFKA_OUT_EMBEDDED_TOPICS_MAX &&
	    (copy = strdup(topic)) != NULL)
		k->topics[k->ntopics++] = copy;
	pthread_rwlock_unlock(&k->topics_lock);
}

static uint32_t kafka_out_topic_hash(const char *name)
{
	uint32_t h = 2166136261u;   /* FNV-1a */

	while (*name)
		h = (h ^ (unsigned char)*name++) * 16777619u;
	return h;
}

/*
 * The kept handle of topic, or NULL when it is not kept yet (or the table
 * is full).  librdkafka's own by-name lookup takes the client's write lock
 * and walks its topic list, and deliver() would check the name each time;
 * here a message costs a hash and a compare.  Slots only ever go from NULL
 * to a handle, so a reader that finds NULL has reached the end of the probe.
 */
static rd_kafka_topic_t *kafka_out_topic_find(struct kafka_out *k,
                                              const char *topic, uint32_t hash)
{
	size_t i = hash & (KAFKA_OUT_TOPIC_SLOTS - 1);
	struct kafka_out_topic *t;

	while ((t = atomic_load_explicit(&k->topic_cache[i],
	                                 memory_order_acquire)) != NULL) {
		if (t->hash == hash && strcmp(t->name, topic) == 0)
			return t->rkt;
		i = (i + 1) & (KAFKA_OUT_TOPIC_SLOTS - 1);
	}
	return NULL;
}

/* Keep a handle for topic (a valid name; created in the embedded cluster
 * first); the kept handle, or NULL when the table is full or on error. */
static rd_kafka_topic_t *kafka_out_topic_keep(struct kafka_out *k,
                                              const char *topic, uint32_t hash)
{
	struct kafka_out_topic *t = NULL;
	rd_kafka_topic_t *rkt;
	size_t i, len = strlen(topic);

	/* full: no lock for the topics past the table */
	if (atomic_load_explicit(&k->ntopic_cache, memory_order_relaxed) >=
	    KAFKA_OUT_TOPIC_CACHE)
		return NULL;
	pthread_mutex_lock(&k->topic_cache_lock);
	if ((rkt = kafka_out_topic_find(k, topic, hash)) != NULL ||
	    atomic_load(&k->ntopic_cache) >= KAFKA_OUT_TOPIC_CACHE)
		goto out;
	if (k->embedded)
		kafka_out_embedded_topic(k, topic);
	if (!(t = malloc(sizeof(*t) + len + 1)))
		goto out;
	if (!(t->rkt = rd_kafka_topic_new(k->rk, topic, NULL))) {
		/* produce by name instead; said once, not per message */
		if (!atomic_exchange(&k->topic_new_failed, 1))
			k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "kafka topic "
			             "%s: no topic handle (%s); messages to "
			             "topics without one are produced by name",
			             topic,
			             rd_kafka_err2str(rd_kafka_last_error()));
		free(t);
		goto out;
	}
	t->hash = hash;
	memcpy(t->name, topic, len + 1);
	i = hash & (KAFKA_OUT_TOPIC_SLOTS - 1);
	while (atomic_load_explicit(&k->topic_cache[i], memory_order_relaxed))
		i = (i + 1) & (KAFKA_OUT_TOPIC_SLOTS - 1);
	atomic_store_explicit(&k->topic_cache[i], t, memory_order_release);
	atomic_fetch_add(&k->ntopic_cache, 1);
	rkt = t->rkt;
out:
	pthread_mutex_unlock(&k->topic_cache_lock);
	return rkt;
}

static void kafka_out_topics_free(struct kafka_out *k)
{
	size_t i;

	if (!k->topic_cache)
		return;
	for (i = 0; i < KAFKA_OUT_TOPIC_SLOTS; i++) {
		struct kafka_out_topic *t = atomic_load(&k->topic_cache[i]);

		if (t) {
			rd_kafka_topic_destroy(t->rkt);
			free(t);
		}
	}
	free(k->topic_cache);
	k->topic_cache = NULL;
}

static rd_kafka_headers_t *kafka_out_headers(struct kafka_out *k,
                                             const iotr_msg *msg)
{
	const struct iotr_host *h = k->b.host;
	size_t i, n = h->msg_header_count(msg);
	rd_kafka_headers_t *hdrs;

	if (n == 0)
		return NULL;
	hdrs = rd_kafka_headers_new(n);
	for (i = 0; i < n; i++) {
		const char *name;
		const void *value;
		size_t len;

		if (h->msg_header_at(msg, i, &name, &value, &len) != IOTR_OK)
			break;
		rd_kafka_header_add(hdrs, name, -1, value, (ssize_t)len);
	}
	return hdrs;
}

/* After every KAFKA_OUT_SERVE_EVERY messages this thread produced, serve
 * the delivery reports that are ready, here, where their memory came from. */
static void kafka_out_serve(struct kafka_out *k)
{
	static _Thread_local unsigned produced;

	if (++produced % KAFKA_OUT_SERVE_EVERY)
		return;
	atomic_store_explicit(&k->served_ms, kafka_out_now_ms(),
	                      memory_order_relaxed);
	rd_kafka_poll(k->rk, 0);
}

static int kafka_out_deliver(void *state, iotr_msg *msg)
{
	struct kafka_out *k = state;
	const struct iotr_host *h = k->b.host;
	const char *topic = h->msg_dest(msg);
	const char *key;
	const void *payload;
	size_t key_len = 0, len = 0;
	int64_t time_ms;
	rd_kafka_headers_t *hdrs = NULL;
	rd_kafka_topic_t *rkt, *own_rkt = NULL;
	rd_kafka_resp_err_t err;
	uint32_t hash;
	char reason[512];
	int rc;

	if (!topic)
		topic = k->topic;
	if (!topic) {
		h->msg_set_error(msg, "no destination topic: the route set "
		                 "none and the kafka output has no `topic`");
		kafka_out_count(k->failed, h);
		return IOTR_FAIL;
	}
	if (!k->rk) {
		/* deliver() before a successful start(): a host bug */
		h->log(k->b.inst, IOTR_LOG_ERROR, "deliver() called before the "
		       "Kafka producer was started");
		return IOTR_ERETRY;
	}
	hash = kafka_out_topic_hash(topic);
	if (!(rkt = kafka_out_topic_find(k, topic, hash))) {
		/* a topic not seen yet: its name is checked once */
		if (!kafka_out_topic_valid(topic)) {
			snprintf(reason, sizeof(reason), "kafka topic \"%.300s\": "
			         "not a valid Kafka topic name (1 to %d of "
			         "letters, digits, '.', '_', '-')", topic,
			         KAFKA_OUT_TOPIC_MAX);
			h->msg_set_error(msg, reason);
			kafka_out_count(k->failed, h);
			return IOTR_FAIL;
		}
		rkt = kafka_out_topic_keep(k, topic, hash);
	}
	if (!rkt) {
		/* past the kept topics: a handle for this message only, which
		 * is what producing by name does inside librdkafka */
		if (k->embedded)
			kafka_out_embedded_topic(k, topic);
		if (!(rkt = own_rkt = rd_kafka_topic_new(k->rk, topic, NULL)))
			return IOTR_ERETRY;
	}

	key = h->msg_key(msg, &key_len);
	payload = h->msg_payload(msg, &len);
	if (!payload)
		payload = "";  /* an empty value, not null: a null value is a
		                * tombstone on a compacted topic */
	time_ms = h->msg_time(msg) / 1000;
	if (time_ms < 0)
		time_ms = 0;   /* librdkafka: 0 = now */
	if (k->copy_headers)
		hdrs = kafka_out_headers(k, msg);

	for (;;) {
		atomic_fetch_add(&k->outstanding, 1);
		/* The payload is borrowed, not copied: the host keeps msg alive
		 * until kafka_out_dr_cb() has called delivered() for it. */
		err = rd_kafka_producev(
			k->rk,
			RD_KAFKA_V_RKT(rkt),
			RD_KAFKA_V_KEY(key, key ? key_len : 0),
			RD_KAFKA_V_VALUE((void *)(uintptr_t)payload, len),
			RD_KAFKA_V_TIMESTAMP(time_ms),
			RD_KAFKA_V_HEADERS(hdrs),
			RD_KAFKA_V_OPAQUE(msg),
			RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
			hdrs = NULL;   /* librdkafka owns them now */
			kafka_out_count(k->produced, h);
			kafka_out_serve(k);
			rc = IOTR_OK;
			break;
		}
		atomic_fetch_sub(&k->outstanding, 1);
		if (err == RD_KAFKA_RESP_ERR__FATAL) {
			rc = IOTR_ERETRY;  /* the producer is broken, not the
			                    * message; kafka_out_error_cb() said so */
			break;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			snprintf(reason, sizeof(reason), "kafka topic %s: "
			         "produce refused: %s", topic,
			         rd_kafka_err2str(err));
			h->msg_set_error(msg, reason);
			kafka_out_count(k->failed, h);
			rc = IOTR_FAIL;
			break;
		}
		/* Backpressure: serve delivery reports (which frees room)
		 * and try again.  Never drop. */
		kafka_out_count(k->queue_full, h);
		if (h->stopping(k->b.inst) == 2) {
			rc = IOTR_ESHUTDOWN;
			break;
		}
		rd_kafka_poll(k->rk, k->queue_full_retry_ms);
	}
	if (hdrs)
		rd_kafka_headers_destroy(hdrs);
	if (own_rkt)
		rd_kafka_topic_destroy(own_rkt);
	return rc;
}

/*
 * Purge what librdkafka still holds and serve the purge reports, so that
 * every accepted message gets its delivered() call (IOTR_ERETRY).  Purges
 * again each round in case a worker was still producing.  Returns how many
 * messages were reported for retry meanwhile (some of those outstanding
 * may still be acknowledged while the purge runs).
 */
static long long kafka_out_purge(struct kafka_out *k)
{
	long long before = atomic_load(&k->retried);
	int64_t end = kafka_out_now_ms() + KAFKA_OUT_DRAIN_MS;

	while (atomic_load(&k->outstanding) > 0 && kafka_out_now_ms() < end) {
		rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE |
		                      RD_KAFKA_PURGE_F_INFLIGHT);
		/* short: the poll thread may be the one serving them */
		rd_kafka_poll(k->rk, 10);
	}
	if (atomic_load(&k->outstanding) > 0)
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR,
		             "%lld messages still have no delivery report %d ms "
		             "after purging them; they are lost to this run",
		             (long long)atomic_load(&k->outstanding),
		             KAFKA_OUT_DRAIN_MS);
	return atomic_load(&k->retried) - before;
}

static int kafka_out_flush(void *state, int64_t deadline_ms)
{
	struct kafka_out *k = state;
	int64_t left;
	long long n;

	if (!k->rk)
		return IOTR_OK;
	while (atomic_load(&k->outstanding) > 0) {
		left = deadline_ms - kafka_out_now_ms();
		if (left <= 0)
			break;
		/* in slices: flush() returns when librdkafka is empty, which
		 * may be a moment before another thread's report callback
		 * has returned */
		rd_kafka_flush(k->rk, (int)(left < 100 ? left : 100));
	}
	if (atomic_load(&k->outstanding) == 0)
		return IOTR_OK;

	n = kafka_out_purge(k);
	k->b.host->log(k->b.inst, IOTR_LOG_WARNING,
	             "%lld messages were not delivered to Kafka (%s) by the "
	             "flush deadline; they were purged and reported for retry",
	             n, k->embedded ? "embedded cluster" : k->brokers);
	return IOTR_ETIMEDOUT;
}

static void *kafka_out_poll_main(void *arg)
{
	struct kafka_out *k = arg;

	while (!atomic_load(&k->poll_stop)) {
		int64_t quiet = kafka_out_now_ms() -
			atomic_load_explicit(&k->served_ms,
			                     memory_order_relaxed);

		if (quiet < KAFKA_OUT_POLL_DEFER_MS) {
			/* the producers are serving them */
			struct timespec ts = {
				.tv_nsec = (KAFKA_OUT_POLL_DEFER_MS - quiet) *
					1000000L };

			nanosleep(&ts, NULL);
			continue;
		}
		rd_kafka_poll(k->rk, k->poll_interval_ms);
	}
	return NULL;
}

static int kafka_out_conf_get(struct kafka_out *k, const char *name,
                              char *buf, size_t size)
{
	size_t n = size;

	if (rd_kafka_conf_get(k->conf, name, buf, &n) != RD_KAFKA_CONF_OK) {
		buf[0] = '\0';
		return -1;
	}
	return 0;
}

/* Refuse properties that break the plugin's promise, and say which
 * overrides weaken it. */
static int kafka_out_conf_check(struct kafka_out *k)
{
	const struct iotr_host *h = k->b.host;
	char v[256];

	if (kafka_out_conf_get(k, "delivery.report.only.error", v,
	                       sizeof(v)) == 0 && strcmp(v, "true") == 0) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "properties: "
		       "delivery.report.only.error=true hides the "
		       "acknowledgements the router waits for; remove it");
		return IOTR_EINVAL;
	}
	if (kafka_out_conf_get(k, "transactional.id", v, sizeof(v)) == 0 &&
	    v[0]) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "properties: transactional.id "
		       "is not supported by the kafka output (it produces "
		       "idempotently, without transactions); remove it");
		return IOTR_EINVAL;
	}
	if (kafka_out_conf_get(k, "acks", v, sizeof(v)) == 0 &&
	    strcmp(v, "-1") != 0 && strcmp(v, "all") != 0)
		h->log(k->b.inst, IOTR_LOG_WARNING, "properties: acks=%s: a "
		       "message acknowledged by fewer than all in-sync "
		       "replicas can be lost when a broker fails", v);
	if (kafka_out_conf_get(k, "enable.idempotence", v, sizeof(v)) == 0 &&
	    strcmp(v, "false") == 0)
		h->log(k->b.inst, IOTR_LOG_WARNING, "properties: "
		       "enable.idempotence=false: retries may duplicate "
		       "messages and reorder them within a key");
	return IOTR_OK;
}

static int kafka_out_build_conf(struct kafka_out *k)
{
	char client_id[256];
	size_t i;
	int rc;

	k->conf = rd_kafka_conf_new();
	if (!k->conf)
		return IOTR_ENOMEM;
	for (i = 0; i < sizeof(kafka_out_defaults) / sizeof(*kafka_out_defaults);
	     i++) {
		rc = kafka_conf_set(&k->b, k->conf, kafka_out_defaults[i][0],
		                        kafka_out_defaults[i][1],
		                        "default");
		if (rc != IOTR_OK)
			return rc;
	}
	snprintf(client_id, sizeof(client_id), "iotrouter.%s",
	         k->b.host->instance_name(k->b.inst));
	if ((rc = kafka_conf_set(&k->b, k->conf, "client.id", client_id,
	                             "default")) != IOTR_OK)
		return rc;
	if (!k->embedded &&
	    (rc = kafka_conf_set(&k->b, k->conf, "bootstrap.servers", k->brokers,
	                             "brokers")) != IOTR_OK)
		return rc;
	if ((rc = kafka_conf_properties(&k->b, k->conf)) != IOTR_OK)
		return rc;
	if ((rc = kafka_out_conf_check(k)) != IOTR_OK)
		return rc;

	rd_kafka_conf_set_opaque(k->conf, k);
	rd_kafka_conf_set_dr_msg_cb(k->conf, kafka_out_dr_cb);
	rd_kafka_conf_set_error_cb(k->conf, kafka_out_error_cb);
	rd_kafka_conf_set_log_cb(k->conf, kafka_log_cb);
	return IOTR_OK;
}

static char *kafka_out_strdup_param(struct kafka_out *k, const char *key,
                                    int *rc)
{
	const char *v = k->b.host->param_string(k->b.inst, key);
	char *copy;

	if (!v)
		return NULL;
	copy = strdup(v);
	if (!copy)
		*rc = IOTR_ENOMEM;
	return copy;
}

static void kafka_out_destroy(void *state);

static int kafka_out_create(iotr_instance *inst, const struct iotr_host *host,
                            void **state)
{
	struct kafka_out *k;
	int rc = IOTR_OK;

	k = calloc(1, sizeof(*k));
	if (!k) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "kafka output");
		return IOTR_ENOMEM;
	}
	k->b.inst = inst;
	k->b.host = host;
	pthread_rwlock_init(&k->topics_lock, NULL);
	pthread_mutex_init(&k->topic_cache_lock, NULL);
	atomic_init(&k->outstanding, 0);
	atomic_init(&k->retried, 0);
	atomic_init(&k->poll_stop, 0);
	atomic_init(&k->served_ms, 0);

	k->brokers = kafka_out_strdup_param(k, "brokers", &rc);
	k->topic = kafka_out_strdup_param(k, "topic", &rc);
	k->bootstrap_file = kafka_out_strdup_param(k, "embedded_bootstrap_file",
	                                           &rc);
	if (rc != IOTR_OK)
		goto fail_nomem;
	if (!k->brokers || !k->brokers[0]) {
		host->log(inst, IOTR_LOG_ERROR, "`brokers` is empty: set it to "
		          "\"host:port,...\" or to \"embedded\"");
		rc = IOTR_EINVAL;
		goto fail;
	}
	k->embedded = strcmp(k->brokers, "embedded") == 0;
	k->embedded_brokers = (int)host->param_int(inst, "embedded_brokers");
	k->embedded_partitions =
		(int)host->param_int(inst, "embedded_partitions");
	k->poll_interval_ms = (int)host->param_int(inst, "poll_interval_ms");
	k->queue_full_retry_ms =
		(int)host->param_int(inst, "queue_full_retry_ms");
	k->copy_headers = host->param_bool(inst, "headers");

	if (k->topic && !kafka_out_topic_valid(k->topic)) {
		host->log(inst, IOTR_LOG_ERROR, "`topic` \"%s\" is not a valid "
		          "Kafka topic name: use 1 to %d of letters, digits, "
		          "'.', '_' and '-'", k->topic, KAFKA_OUT_TOPIC_MAX);
		rc = IOTR_EINVAL;
		goto fail;
	}
	if (!k->embedded && (host->param_is_set(inst, "embedded_brokers") ||
	                     host->param_is_set(inst, "embedded_partitions") ||
	                     k->bootstrap_file))
		host->log(inst, IOTR_LOG_WARNING, "embedded_* parameters are "
		          "ignored: brokers is \"%s\", not \"embedded\"",
		          k->brokers);
	if (k->embedded) {
		k->topics = calloc(KAFKA_OUT_EMBEDDED_TOPICS_MAX,
		                   sizeof(*k->topics));
		if (!k->topics)
			goto fail_nomem;
	}
	k->topic_cache = calloc(KAFKA_OUT_TOPIC_SLOTS, sizeof(*k->topic_cache));
	if (!k->topic_cache)
		goto fail_nomem;

	if ((rc = kafka_out_build_conf(k)) != IOTR_OK) {
		if (rc == IOTR_ENOMEM)
			goto fail_nomem;
		goto fail;
	}

	k->produced = host->counter(inst, "produced");
	k->delivered = host->counter(inst, "delivered");
	k->failed = host->counter(inst, "failed");
	k->queue_full = host->counter(inst, "queue_full");
	if (!k->produced || !k->delivered || !k->failed || !k->queue_full)
		goto fail_nomem;

	*state = k;
	return IOTR_OK;

fail_nomem:
	host->log(inst, IOTR_LOG_ERROR, "out of memory creating the kafka "
	          "output");
	rc = IOTR_ENOMEM;
fail:
	kafka_out_destroy(k);
	return rc;
}

/* Write the embedded cluster's address where scripts look for it; through
 * a temporary file, so a reader never sees half of it. */
static int kafka_out_write_bootstrap(struct kafka_out *k, const char *addr)
{
	size_t n = strlen(k->bootstrap_file) + 5;
	char *tmp = malloc(n);
	FILE *f;
	int ok;

	if (!tmp)
		return IOTR_ENOMEM;
	snprintf(tmp, n, "%s.tmp", k->bootstrap_file);
	f = fopen(tmp, "w");
	ok = f && fprintf(f, "%s\n", addr) > 0;
	if (f && fclose(f) != 0)
		ok = 0;
	if (ok && rename(tmp, k->bootstrap_file) != 0)
		ok = 0;
	if (!ok) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "cannot write the "
		             "embedded cluster's address to "
		             "embedded_bootstrap_file %s: %s; check the "
		             "directory exists and is writable",
		             k->bootstrap_file, strerror(errno));
		if (f)
			unlink(tmp);
	}
	free(tmp);
	return ok ? IOTR_OK : IOTR_EINVAL;
}

static int kafka_out_start_embedded(struct kafka_out *k)
{
	rd_kafka_conf_t *mconf = rd_kafka_conf_new();
	const char *addr;
	char errstr[512];
	int rc;

	if (!mconf)
		return IOTR_ENOMEM;
	rd_kafka_conf_set_opaque(mconf, k);
	rd_kafka_conf_set_log_cb(mconf, kafka_out_mock_log_cb);
	/* This handle only hosts the cluster: its notice that it has no
	 * bootstrap.servers of its own would only confuse. */
	rd_kafka_conf_set(mconf, "log_level", "4", errstr, sizeof(errstr));
	k->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, mconf, errstr,
	                          sizeof(errstr));
	if (!k->mock_rk) {
		rd_kafka_conf_destroy(mconf);
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "cannot start the "
		             "embedded Kafka cluster: %s", errstr);
		return IOTR_FAIL;
	}
	k->mcluster = rd_kafka_mock_cluster_new(k->mock_rk,
	                                        k->embedded_brokers);
	if (!k->mcluster) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "cannot start the "
		             "embedded Kafka cluster of %d brokers (see the "
		             "librdkafka messages above)", k->embedded_brokers);
		return IOTR_FAIL;
	}
	addr = rd_kafka_mock_cluster_bootstraps(k->mcluster);
	k->b.host->log(k->b.inst, IOTR_LOG_NOTICE,
	             "embedded Kafka cluster listening on %s", addr);
	if ((rc = kafka_conf_set(&k->b, k->conf, "bootstrap.servers", addr,
	                             "embedded cluster")) != IOTR_OK)
		return rc;
	if (k->bootstrap_file &&
	    (rc = kafka_out_write_bootstrap(k, addr)) != IOTR_OK)
		return rc;
	if (k->topic)
		kafka_out_embedded_topic(k, k->topic);
	return IOTR_OK;
}

static int kafka_out_start(void *state)
{
	struct kafka_out *k = state;
	sigset_t all, old;
	char errstr[512];
	int rc;

	if (k->embedded && (rc = kafka_out_start_embedded(k)) != IOTR_OK)
		return rc;

	k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, k->conf, errstr,
	                     sizeof(errstr));
	if (!k->rk) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "cannot create the Kafka "
		             "producer: %s; check `properties`", errstr);
		return IOTR_EINVAL;
	}
	k->conf = NULL;   /* rd_kafka_new() took it */

	/* The poll thread takes no signals; they are the router's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&k->poll_thread, NULL, kafka_out_poll_main, k);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "cannot start the Kafka "
		             "delivery report thread: %s", strerror(rc));
		return IOTR_ENOMEM;
	}
	k->poll_running = 1;
	k->b.host->log(k->b.inst, IOTR_LOG_INFO, "producing to %s with librdkafka "
	             "%s", k->embedded ? "the embedded cluster" : k->brokers,
	             rd_kafka_version_str());
	return IOTR_OK;
}

static void kafka_out_destroy(void *state)
{
	struct kafka_out *k = state;
	size_t i;

	if (!k)
		return;
	if (k->poll_running) {
		atomic_store(&k->poll_stop, 1);
		rd_kafka_yield(k->rk);
		pthread_join(k->poll_thread, NULL);
	}
	if (k->rk) {
		/* Without a flush() first (or after a failed one), messages
		 * may remain; each still gets its delivered() call. */
		if (atomic_load(&k->outstanding) > 0) {
			long long n = kafka_out_purge(k);

			if (n > 0)
				k->b.host->log(k->b.inst, IOTR_LOG_WARNING,
				             "%lld messages were still on their "
				             "way to Kafka when the output was "
				             "destroyed; purged and reported for "
				             "retry", n);
		}
		kafka_out_topics_free(k);
		rd_kafka_destroy(k->rk);
	}
	kafka_out_topics_free(k);
	if (k->conf)
		rd_kafka_conf_destroy(k->conf);
	if (k->mcluster)
		rd_kafka_mock_cluster_destroy(k->mcluster);
	if (k->mock_rk)
		rd_kafka_destroy(k->mock_rk);
	for (i = 0; i < k->ntopics; i++)
		free(k->topics[i]);
	free(k->topics);
	pthread_rwlock_destroy(&k->topics_lock);
	pthread_mutex_destroy(&k->topic_cache_lock);
	free(k->bootstrap_file);
	free(k->topic);
	free(k->brokers);
	free(k);
}

static const struct iotr_plugin kafka_out_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "kafka",
	.version = "1.0.0",
	.description = "Produce messages to Apache Kafka with librdkafka "
	               "(acks=all, idempotent), or to an embedded mock cluster",
	.kind = IOTR_PLUGIN_OUTPUT,
	.params = kafka_out_params,
	.create = kafka_out_create,
	.start = kafka_out_start,
	.deliver = kafka_out_deliver,
	.flush = kafka_out_flush,
	.destroy = kafka_out_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &kafka_out_plugin;
}

IOTR_PLUGIN_EXPORT const struct iotr_plugin *const *iotr_plugin_entries(void)
{
	static const struct iotr_plugin *const kinds[] = {
		&kafka_out_plugin, &kafka_in_plugin, NULL
	};

	return kinds;
}
