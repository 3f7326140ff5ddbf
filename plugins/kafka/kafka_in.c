/*
 * kafka_in.c - the kafka plugin's input: consumes Kafka topics in a consumer
 * group and hands each record to the router (the reverse path: Kafka to
 * MQTT, e.g. commands to vehicles).
 *
 * Threading: one thread per instance polls the consumer and calls emit(),
 * which blocks while the router's queues are full; librdkafka then stops
 * fetching once its own queue is full, so backpressure reaches Kafka.  A
 * record's offset is stored for commit only after emit() has taken it, which
 * is the moment the router is responsible for it (with the write-ahead log
 * on: on disk); librdkafka commits stored offsets in the background and when
 * the consumer closes.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "iotrouter/plugin.h"
#include "kafkaconf.h"

/* Longest wait in one rd_kafka_consumer_poll(): how soon stop() is seen
 * when no records come.  Records are handed over as soon as they arrive. */
#define KAFKA_IN_POLL_MS 100

/* Out of memory, how long to wait before making a record's message again. */
#define KAFKA_IN_NOMEM_RETRY_MS 100

struct kafka_in {
	struct kafka_base b;         /* first: librdkafka's opaque */

	char *brokers;               /* as configured, for log lines */
	rd_kafka_conf_t *conf;       /* rd_kafka_new() takes it in start() */
	rd_kafka_topic_partition_list_t *topics;
	rd_kafka_t *rk;

	pthread_t thread;
	bool thread_running;
	atomic_bool stop;
	/* said once, not per record */
	atomic_bool shutdown_logged;
	atomic_bool emit_error_logged;

	iotr_counter *received;
	iotr_counter *errors;
};

static const struct iotr_param kafka_in_params[] = {
	{ .key = "brokers", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "Bootstrap servers \"host:port,host:port\"." },
	{ .key = "group_id", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "Consumer group: routers with the same group share the "
	         "topics' partitions, and the group's committed offsets say "
	         "where a restarted router goes on." },
	{ .key = "topics", .type = IOTR_PARAM_STRING_LIST, .required = 1,
	  .doc = "Topics to consume; a name starting with '^' is a regular "
	         "expression matching topic names." },
	{ .key = "properties", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "librdkafka consumer properties \"name=value\", applied "
	         "after the plugin's defaults so they override them." },
	{ .key = NULL }
};

/* Applied before `properties`, so an operator can override each. */
static const char *const kafka_in_defaults[][2] = {
	/* offsets are stored by the plugin once the router has the record */
	{ "enable.auto.offset.store", "false" },
	/* a new group starts at the oldest record, so that nothing produced
	 * before the router first ran is skipped */
	{ "auto.offset.reset", "earliest" },
};

static void kafka_in_error_cb(rd_kafka_t *rk, int err, const char *reason,
                              void *opaque)
{
	struct kafka_in *k = opaque;

	(void)rk;
	k->b.host->counter_add(k->errors, 1);
	k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "Kafka error %s: %s "
	               "(brokers %s)", rd_kafka_err2name(err), reason,
	               k->brokers);
}

/* Kafka's record headers become the message's headers. */
static int kafka_in_headers(struct kafka_in *k, iotr_msg *msg,
                            rd_kafka_message_t *m)
{
	rd_kafka_headers_t *hdrs;
	const char *name;
	const void *value;
	size_t i, len;
	int rc;

	if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return IOTR_OK;
	for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &len) ==
	            RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
		/* a header without a value (NULL) is carried as empty */
		rc = k->b.host->msg_add_header(msg, name, value ? value : "",
		                               value ? len : 0);
		if (rc != IOTR_OK)
			return rc;
	}
	return IOTR_OK;
}

/* A consumer error in place of a record: log it, and go on. */
static void kafka_in_record_error(struct kafka_in *k, rd_kafka_message_t *m)
{
	const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "-";

	k->b.host->counter_add(k->errors, 1);
	if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
	    m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC)
		k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "topic \"%s\" does "
		               "not exist on %s (yet): create it, or fix "
		               "`topics`; consuming goes on when it appears",
		               topic, k->brokers);
	else
		k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "consuming \"%s\" "
		               "[%d] from %s: %s", topic, (int)m->partition,
		               k->brokers, rd_kafka_message_errstr(m));
}

/* The message for one record, or NULL when out of memory. */
static iotr_msg *kafka_in_message(struct kafka_in *k, rd_kafka_message_t *m)
{
	const struct iotr_host *h = k->b.host;
	iotr_msg *msg = h->msg_new(rd_kafka_topic_name(m->rkt), m->payload,
	                           m->len);

	if (msg &&
	    ((m->key && h->msg_set_key(msg, m->key, m->key_len) != IOTR_OK) ||
	     kafka_in_headers(k, msg, m) != IOTR_OK)) {
		h->msg_free(msg);
		msg = NULL;
	}
	return msg;
}

/*
 * One record to the router; its offset is stored once the router has it.
 * Out of memory, the same record is tried again: skipping it would let the
 * next record's offset commit past it.  Returns false when the router is
 * past its shutdown deadline and the record was not taken: then no later
 * record of the partition may store its offset either, and consuming ends.
 */
static bool kafka_in_record(struct kafka_in *k, rd_kafka_message_t *m)
{
	const struct iotr_host *h = k->b.host;
	const char *topic = rd_kafka_topic_name(m->rkt);
	const struct timespec pause = { 0, KAFKA_IN_NOMEM_RETRY_MS * 1000000L };
	rd_kafka_resp_err_t err;
	bool said = false;
	iotr_msg *msg;
	int rc;

	h->counter_add(k->received, 1);
	for (;;) {
		rc = IOTR_ENOMEM;
		if ((msg = kafka_in_message(k, m)))
			rc = h->emit(k->b.inst, msg);
		if (rc != IOTR_ENOMEM)
			break;
		if (h->stopping(k->b.inst) == 2) {
			rc = IOTR_ESHUTDOWN;
			break;
		}
		if (!said)
			h->log(k->b.inst, IOTR_LOG_ERROR, "out of memory taking "
			       "record \"%s\" [%d] at offset %lld; trying again "
			       "every %d ms", topic, (int)m->partition,
			       (long long)m->offset, KAFKA_IN_NOMEM_RETRY_MS);
		said = true;
		nanosleep(&pause, NULL);
	}
	if (rc == IOTR_ESHUTDOWN) {
		if (!atomic_exchange(&k->shutdown_logged, true))
			h->log(k->b.inst, IOTR_LOG_WARNING, "the router is "
			       "past its shutdown deadline and refused a record "
			       "of \"%s\" [%d] at offset %lld; it is not "
			       "committed, and is read again when the router "
			       "restarts", topic, (int)m->partition,
			       (long long)m->offset);
		return false;
	}
	if (rc != IOTR_OK && !atomic_exchange(&k->emit_error_logged, true))
		/* The router has counted and logged it (dead letter or lost);
		 * reading it again would end the same way. */
		h->log(k->b.inst, IOTR_LOG_ERROR, "the router refused a record "
		       "of \"%s\" (status %d); later refusals are not logged",
		       topic, rc);
	err = rd_kafka_offset_store(m->rkt, m->partition, m->offset);
	if (err)
		h->log(k->b.inst, IOTR_LOG_WARNING, "could not store the "
		       "offset of \"%s\" [%d] at %lld: %s; the record may be "
		       "read again after a restart", topic, (int)m->partition,
		       (long long)m->offset, rd_kafka_err2str(err));
	return true;
}

static void *kafka_in_main(void *arg)
{
	struct kafka_in *k = arg;

	while (!atomic_load(&k->stop)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk,
		                                               KAFKA_IN_POLL_MS);

		if (!m)
			continue;
		if (m->err)
			kafka_in_record_error(k, m);
		else if (!kafka_in_record(k, m))
			atomic_store(&k->stop, true);
		rd_kafka_message_destroy(m);
	}
	return NULL;
}

/* Refuse properties that would commit a record before the router has it,
 * or never commit at all. */
static int kafka_in_conf_check(struct kafka_in *k)
{
	char v[16];
	size_t n = sizeof(v);

	if (rd_kafka_conf_get(k->conf, "enable.auto.offset.store", v, &n) ==
	    RD_KAFKA_CONF_OK && strcmp(v, "true") == 0) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "properties: "
		               "enable.auto.offset.store=true would commit "
		               "records before the router has them; remove it");
		return IOTR_EINVAL;
	}
	n = sizeof(v);
	if (rd_kafka_conf_get(k->conf, "enable.auto.commit", v, &n) ==
	    RD_KAFKA_CONF_OK && strcmp(v, "false") == 0) {
		k->b.host->log(k->b.inst, IOTR_LOG_ERROR, "properties: "
		               "enable.auto.commit=false: the kafka input "
		               "commits through librdkafka's automatic commit, "
		               "and would commit nothing; remove it");
		return IOTR_EINVAL;
	}
	return IOTR_OK;
}

static int kafka_in_build_conf(struct kafka_in *k)
{
	const struct iotr_host *h = k->b.host;
	const char *group = h->param_string(k->b.inst, "group_id");
	char client_id[256];
	size_t i;
	int rc;

	if (!(k->conf = rd_kafka_conf_new()))
		return IOTR_ENOMEM;
	for (i = 0; i < sizeof(kafka_in_defaults) / sizeof(*kafka_in_defaults);
	     i++)
		if ((rc = kafka_conf_set(&k->b, k->conf,
		                         kafka_in_defaults[i][0],
		                         kafka_in_defaults[i][1],
		                         "default")) != IOTR_OK)
			return rc;
	snprintf(client_id, sizeof(client_id), "iotrouter.%s",
	         h->instance_name(k->b.inst));
	if ((rc = kafka_conf_set(&k->b, k->conf, "client.id", client_id,
	                         "default")) != IOTR_OK ||
	    (rc = kafka_conf_set(&k->b, k->conf, "bootstrap.servers",
	                         k->brokers, "brokers")) != IOTR_OK ||
	    (rc = kafka_conf_set(&k->b, k->conf, "group.id", group,
	                         "group_id")) != IOTR_OK ||
	    (rc = kafka_conf_properties(&k->b, k->conf)) != IOTR_OK ||
	    (rc = kafka_in_conf_check(k)) != IOTR_OK)
		return rc;
	rd_kafka_conf_set_opaque(k->conf, k);
	rd_kafka_conf_set_error_cb(k->conf, kafka_in_error_cb);
	rd_kafka_conf_set_log_cb(k->conf, kafka_log_cb);
	return IOTR_OK;
}

static int kafka_in_build_topics(struct kafka_in *k)
{
	const struct iotr_host *h = k->b.host;
	size_t i, n = h->param_count(k->b.inst, "topics");

	if (n == 0) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "topics is empty: name at "
		       "least one topic to consume");
		return IOTR_EINVAL;
	}
	if (!(k->topics = rd_kafka_topic_partition_list_new((int)n)))
		return IOTR_ENOMEM;
	for (i = 0; i < n; i++) {
		const char *t = h->param_string_at(k->b.inst, "topics", i);

		if (!t || !*t) {
			h->log(k->b.inst, IOTR_LOG_ERROR, "topics[%zu] is "
			       "empty: give a topic name or a '^' regular "
			       "expression", i);
			return IOTR_EINVAL;
		}
		rd_kafka_topic_partition_list_add(k->topics, t,
		                                  RD_KAFKA_PARTITION_UA);
	}
	return IOTR_OK;
}

static void kafka_in_destroy(void *state);

static int kafka_in_create(iotr_instance *inst, const struct iotr_host *host,
                           void **state)
{
	struct kafka_in *k = calloc(1, sizeof(*k));
	int rc;

	if (!k) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "kafka input");
		return IOTR_ENOMEM;
	}
	k->b.inst = inst;
	k->b.host = host;
	k->received = host->counter(inst, "received");
	k->errors = host->counter(inst, "errors");
	if (!(k->brokers = strdup(host->param_string(inst, "brokers"))))
		rc = IOTR_ENOMEM;
	else if ((rc = kafka_in_build_conf(k)) == IOTR_OK)
		rc = kafka_in_build_topics(k);
	if (rc != IOTR_OK) {
		if (rc == IOTR_ENOMEM)
			host->log(inst, IOTR_LOG_ERROR, "out of memory "
			          "configuring the kafka input");
		kafka_in_destroy(k);
		return rc;
	}
	*state = k;
	return IOTR_OK;
}

static int kafka_in_start(void *state)
{
	struct kafka_in *k = state;
	const struct iotr_host *h = k->b.host;
	rd_kafka_resp_err_t err;
	char errstr[512];

	k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, k->conf, errstr,
	                     sizeof(errstr));
	if (!k->rk) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "cannot create the Kafka "
		       "consumer: %s", errstr);
		return IOTR_FAIL;
	}
	k->conf = NULL; /* rd_kafka_new() took it */
	rd_kafka_poll_set_consumer(k->rk);
	if ((err = rd_kafka_subscribe(k->rk, k->topics))) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "cannot subscribe to the "
		       "topics: %s; check `topics`", rd_kafka_err2str(err));
		return IOTR_FAIL;
	}
	if (pthread_create(&k->thread, NULL, kafka_in_main, k)) {
		h->log(k->b.inst, IOTR_LOG_ERROR, "cannot start the consumer "
		       "thread");
		return IOTR_FAIL;
	}
	k->thread_running = true;
	h->log(k->b.inst, IOTR_LOG_INFO, "consuming %d topic(s) from %s in "
	       "group \"%s\" with librdkafka %s", k->topics->cnt, k->brokers,
	       h->param_string(k->b.inst, "group_id"), rd_kafka_version_str());
	return IOTR_OK;
}

static int kafka_in_stop(void *state)
{
	struct kafka_in *k = state;

	atomic_store(&k->stop, true);
	if (k->thread_running) {
		pthread_join(k->thread, NULL);
		k->thread_running = false;
	}
	return IOTR_OK;
}

/* After the router has drained what the input emitted: commit the stored
 * offsets and leave the group, so its partitions go to another member. */
static void kafka_in_destroy(void *state)
{
	struct kafka_in *k = state;
	rd_kafka_resp_err_t err;

	if (!k)
		return;
	kafka_in_stop(k);
	if (k->rk) {
		if ((err = rd_kafka_consumer_close(k->rk)))
			k->b.host->log(k->b.inst, IOTR_LOG_WARNING, "closing "
			               "the consumer: %s; the last offsets may "
			               "not be committed, and their records are "
			               "read again", rd_kafka_err2str(err));
		rd_kafka_destroy(k->rk);
	}
	if (k->conf)
		rd_kafka_conf_destroy(k->conf);
	if (k->topics)
		rd_kafka_topic_partition_list_destroy(k->topics);
	free(k->brokers);
	free(k);
}

const struct iotr_plugin kafka_in_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "kafka",
	.version = "1.0.0",
	.description = "Consume Apache Kafka topics in a consumer group with "
	               "librdkafka; offsets are committed once the router has "
	               "each record",
	.kind = IOTR_PLUGIN_INPUT,
	.params = kafka_in_params,
	.create = kafka_in_create,
	.start = kafka_in_start,
	.stop = kafka_in_stop,
	.destroy = kafka_in_destroy,
};
