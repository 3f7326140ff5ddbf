/*
 * bench-mqtt-sub - the bare broker path of scripts/bench: an MQTT subscriber
 * that does nothing with a message but count it and note how old it is.
 * Built with BENCH_BRIDGE it is bench-mqtt-bridge, the bare bridge of
 * scripts/bench (see below).
 *
 * It shows what the broker and libmosquitto alone can deliver to one client
 * on this machine, the limit iotrouter's MQTT input is measured against.  The
 * age of a message is taken from the "ts" field (publish time, microseconds
 * since the epoch) that iotrouter-sim writes into each payload, or "t" in
 * its --compact form.
 *
 * Threading: one thread.  The handle runs without libmosquitto's threads;
 * main() runs the network loop and every callback runs inside it.  Once
 * subscribed, the loop reads every packet waiting on the socket per wake-up,
 * as iotrouter's mqtt input does (mosquitto_loop() reads one per select()),
 * so that the bare path is not measured with a slower client than the
 * router's.
 *
 * Output: one line on stdout when it ends, "key=value" pairs:
 *   received=N elapsed_s=S rate=R p50_us=A p99_us=B max_us=C no_ts=K
 *   bytes_avg=P cpu_s=U maxrss_kb=M complete=0|1
 * rate is N / (last arrival - earliest publish time); the percentiles are
 * over the messages that carried a "ts" or "t"; complete=1 when the
 * expected count arrived.  Warm-up messages (--warm-marker) are not
 * counted at all.
 *
 * bench-mqtt-bridge: the same client, which instead of counting a message
 * produces it to Kafka with librdkafka and the kafka output's defaults,
 * the least any MQTT-to-Kafka bridge built on these two libraries does:
 * no routing, no templates, no rules, no queue, no second thread of its
 * own.  The record's topic is the message topic's first BRIDGE_LEVELS
 * levels joined with '.', its key the next level (the mapping of
 * scripts/bench's route: bench/RUN/SITE/DEVICE/... -> bench.RUN.SITE, key
 * DEVICE); a topic with fewer levels is skipped and counted.  Delivery
 * reports are served on the loop's thread every BRIDGE_POLL_EVERY
 * messages, as the kafka output serves them.  It runs until SIGTERM or
 * --timeout, then flushes (at most --flush-ms) and prints
 *   forwarded=N delivered=D failed=F skipped=K cpu_s=U maxrss_kb=M
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "bench-common.h"
#ifdef BENCH_BRIDGE
#include "bench-kafka.h"
#endif

#ifdef BENCH_BRIDGE
#define SUB_NAME "bench-mqtt-bridge"
#define BRIDGE_LEVELS		3	/* topic levels that name the record's topic */
#define BRIDGE_POLL_EVERY	32	/* KAFKA_OUT_SERVE_EVERY of the kafka output */
#define BRIDGE_FULL_WAIT_MS	10	/* queue_full_retry_ms of the kafka output */
#define BRIDGE_FLUSH_MS		30000	/* --flush-ms default */
#define BRIDGE_MAX_TOPIC	256
#else
#define SUB_NAME "bench-mqtt-sub"
#endif

#define SUB_MAX_TOPICS		16
#define SUB_LOOP_MS		100	/* longest wait in one round of the loop */
#define SUB_READ_BATCH		1024	/* most packets read per wake-up */
#define SUB_CONNECT_TIMEOUT_S	10

const char bench_name[] = SUB_NAME;

struct sub_opts {
	const char *host;
	int port;
	const char *client_id;
	const char *topics[SUB_MAX_TOPICS];
	int ntopics;
	int qos;
	int protocol;
	int receive_maximum;
	const char *brokers;		/* bench-mqtt-bridge: bootstrap servers */
	int flush_ms;			/* and how long it flushes at the end */
	struct bench_tally_opts tally;
};

struct sub {
	struct sub_opts opt;
	struct mosquitto *mosq;
	int granted;			/* SUBACKs received */
	int refused;			/* filters the broker refused */
	bool connected;
	int connack;			/* -1 until CONNACK */
	unsigned long messages;		/* on_message calls, warm-up included */
	struct bench_tally tally;
#ifdef BENCH_BRIDGE
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;		/* the topic of the last record, */
	char rkt_prefix[BRIDGE_MAX_TOPIC]; /* from this message topic prefix */
	size_t rkt_prefix_len;
	uint64_t forwarded, delivered, failed, skipped;
	rd_kafka_resp_err_t first_err;
#endif
};

static void sub_usage(FILE *f)
{
	fprintf(f,
#ifdef BENCH_BRIDGE
"Usage: " SUB_NAME " -t FILTER -b BROKERS [OPTION]...\n"
"Subscribe and produce every message to Kafka (topic: the first %d topic\n"
"levels joined with '.', key: the next level) until SIGTERM or --timeout,\n"
"then flush and print one line of counts.  Of the counting options below,\n"
"only --ready-file and --timeout apply.\n"
"\n"
"  -b, --brokers LIST       Kafka bootstrap servers\n"
"      --flush-ms MS        how long to wait at the end for the records still\n"
"                           undelivered (default %d); any left fail the run\n"
#else
"Usage: " SUB_NAME " -t FILTER [OPTION]...\n"
"Subscribe, count messages and measure their age from the payload's \"ts\"\n"
"field, or \"t\" (microseconds since the epoch), then print one line of\n"
"results.\n"
"\n"
#endif
"  -h, --host HOST          broker address (default 127.0.0.1)\n"
"  -p, --port PORT          broker port (default 1883)\n"
"  -i, --id ID              client id (default " SUB_NAME "-PID)\n"
"  -t, --topic FILTER       subscription filter (repeatable, up to %d)\n"
"  -q, --qos 0|1|2          subscription QoS (default 1)\n"
"      --protocol 5|311     MQTT version (default 5, like iotrouter's input)\n"
"      --receive-maximum N  MQTT 5 Receive Maximum (default 100, like iotrouter)\n"
"  -n, --count N            stop after N messages\n"
"      --expect-file FILE   stop after N messages, N read from FILE once it\n"
"                           exists (written when the publisher is done)\n"
"      --idle SECONDS       stop SECONDS after the last message\n"
"      --timeout SECONDS    stop after SECONDS in all (default 600)\n"
"      --ready-file FILE    create FILE once every filter is subscribed\n"
"      --warm-marker TEXT   payloads holding TEXT are warm-up: not counted\n"
"      --warm-file FILE     create FILE once --warm-count of them arrived\n"
"      --warm-count N       (default 1)\n"
"      --max-samples N      latency samples kept (default %lu)\n"
"      --samples-file FILE  write each message's age in microseconds to\n"
"                           FILE, one a line, in arrival order\n"
"      --help               print this help\n",
#ifdef BENCH_BRIDGE
		BRIDGE_LEVELS, BRIDGE_FLUSH_MS,
#endif
		SUB_MAX_TOPICS, BENCH_SAMPLES_DEFAULT);
}

static void sub_take_topic(void *ctx, const char *arg)
{
	struct sub_opts *o = ctx;

	if (o->ntopics == SUB_MAX_TOPICS)
		bench_die_usage("too many --topic (%s)", arg);
	o->topics[o->ntopics++] = arg;
}

static void sub_take_protocol(void *ctx, const char *arg)
{
	struct sub_opts *o = ctx;

	if (strcmp(arg, "5") == 0)
		o->protocol = MQTT_PROTOCOL_V5;
	else if (strcmp(arg, "311") == 0 || strcmp(arg, "3.1.1") == 0)
		o->protocol = MQTT_PROTOCOL_V311;
	else
		bench_die_usage("--protocol: '%s' is not 5 or 311", arg);
}

static void sub_parse_args(struct sub_opts *o, int argc, char **argv)
{
	const struct bench_option options[] = {
		{ "host", 'h', .text = &o->host },
		{ "port", 'p', .i = &o->port, .min = 1, .max = 65535 },
		{ "id", 'i', .text = &o->client_id },
		{ "topic", 't', .take = sub_take_topic, .ctx = o },
		{ "qos", 'q', .i = &o->qos, .min = 0, .max = 2 },
		{ "protocol", 0, .take = sub_take_protocol, .ctx = o },
		{ "receive-maximum", 0, .i = &o->receive_maximum, .min = 1, .max = 65535 },
#ifdef BENCH_BRIDGE
		{ "brokers", 'b', .text = &o->brokers },
		{ "flush-ms", 0, .i = &o->flush_ms, .min = 0, .max = 3600000 },
#endif
		{ .name = NULL }
	};

	*o = (struct sub_opts){
		.host = "127.0.0.1", .port = 1883, .qos = 1,
		.protocol = MQTT_PROTOCOL_V5, .receive_maximum = 100,
	};
#ifdef BENCH_BRIDGE
	o->flush_ms = BRIDGE_FLUSH_MS;
#endif
	bench_tally_opts_init(&o->tally);
	bench_parse_options(argc, argv, options, BENCH_TALLY_OPTIONS(&o->tally),
			    sub_usage);
	if (o->ntopics == 0)
		bench_die_usage("%s", "give at least one --topic");
#ifdef BENCH_BRIDGE
	if (!o->brokers)
		bench_die_usage("%s", "give the Kafka bootstrap servers (--brokers)");
#endif
}

#ifdef BENCH_BRIDGE
static void bridge_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct sub *s = opaque;

	(void)rk;
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		s->delivered++;
		return;
	}
	if (!s->failed++)
		s->first_err = m->err;
}

/* The producer, with the kafka output's defaults. */
static int bridge_start(struct sub *s)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[512];

	if (bench_kafka_set_defaults(conf) != 0) {
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	rd_kafka_conf_set(conf, "client.id", SUB_NAME, NULL, 0);
	if (rd_kafka_conf_set(conf, "bootstrap.servers", s->opt.brokers, errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK) {
		fprintf(stderr, SUB_NAME ": --brokers %s: %s\n", s->opt.brokers, errstr);
		rd_kafka_conf_destroy(conf);
		return -1;
	}
	s->rk = bench_kafka_producer_new(conf, s, bridge_dr_cb);
	return s->rk ? 0 : -1;
}

/* The handle of the record topic for the message topic prefix @prefix
 * (@len bytes, shorter than BRIDGE_MAX_TOPIC): the prefix with '.' for
 * '/'.  Kept while messages come with the same prefix. */
static rd_kafka_topic_t *bridge_topic(struct sub *s, const char *prefix, size_t len)
{
	char name[BRIDGE_MAX_TOPIC];

	if (s->rkt && s->rkt_prefix_len == len && !memcmp(s->rkt_prefix, prefix, len))
		return s->rkt;
	if (s->rkt)
		rd_kafka_topic_destroy(s->rkt);
	for (size_t i = 0; i < len; i++)
		name[i] = prefix[i] == '/' ? '.' : prefix[i];
	name[len] = '\0';
	memcpy(s->rkt_prefix, prefix, len);
	s->rkt_prefix_len = len;
	s->rkt = rd_kafka_topic_new(s->rk, name, NULL);
	return s->rkt;
}

/* Produce one message: bench/RUN/SITE/DEVICE/... -> bench.RUN.SITE, key
 * DEVICE.  A full librdkafka queue is waited out, as the kafka output
 * does; nothing is dropped while the bridge runs. */
static void bridge_forward(struct sub *s, const struct mosquitto_message *mm)
{
	const char *key, *end;
	rd_kafka_topic_t *rkt;
	size_t len;
	int level = 0;

	for (key = mm->topic; *key && level < BRIDGE_LEVELS; key++)
		if (*key == '/')
			level++;
	len = (size_t)(key - mm->topic) - 1;
	if (level < BRIDGE_LEVELS || len >= BRIDGE_MAX_TOPIC) {
		s->skipped++;
		return;
	}
	end = strchrnul(key, '/');
	if (!(rkt = bridge_topic(s, mm->topic, len))) {
		s->skipped++;
		return;
	}
	while (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
				mm->payload, (size_t)mm->payloadlen, key,
				(size_t)(end - key), NULL) != 0) {
		if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL ||
		    bench_stop) {
			if (!s->failed++)
				s->first_err = rd_kafka_last_error();
			return;
		}
		rd_kafka_poll(s->rk, BRIDGE_FULL_WAIT_MS);
	}
	if (++s->forwarded % BRIDGE_POLL_EVERY == 0)
		rd_kafka_poll(s->rk, 0);
}

/* Flush what is left and print the counts; -1 when a record failed or
 * was still undelivered after --flush-ms. */
static int bridge_finish(struct sub *s)
{
	uint64_t pending = 0;
	long maxrss_kb = 0;
	double cpu_s;

	if (s->rk) {
		rd_kafka_flush(s->rk, s->opt.flush_ms);
		pending = s->forwarded - s->delivered - s->failed;
	}
	cpu_s = bench_cpu_s(&maxrss_kb);
	printf("forwarded=%" PRIu64 " delivered=%" PRIu64 " failed=%" PRIu64
	       " skipped=%" PRIu64 " cpu_s=%.3f maxrss_kb=%ld\n", s->forwarded,
	       s->delivered, s->failed, s->skipped, cpu_s, maxrss_kb);
	if (s->failed)
		fprintf(stderr, SUB_NAME ": %" PRIu64 " records failed, the first "
			"with: %s\n", s->failed, rd_kafka_err2str(s->first_err));
	if (pending)
		fprintf(stderr, SUB_NAME ": %" PRIu64 " records not delivered "
			"within %d ms of the end (is Kafka at %s up?)\n", pending,
			s->opt.flush_ms, s->opt.brokers);
	if (s->rkt)
		rd_kafka_topic_destroy(s->rkt);
	if (s->rk)
		rd_kafka_destroy(s->rk);
	return s->failed || pending ? -1 : 0;
}
#endif

static void sub_on_message(struct mosquitto *mosq, void *obj,
			   const struct mosquitto_message *mm)
{
	struct sub *s = obj;

	(void)mosq;
	s->messages++;
#ifdef BENCH_BRIDGE
	bridge_forward(s, mm);
#else
	bench_tally_add(&s->tally, mm->payloadlen > 0 ? mm->payload : NULL,
			(size_t)mm->payloadlen);
#endif
}

/*
 * One round of the loop once subscribed: wait for the socket, read every
 * packet on it, write what is queued, keep house.  After a message it reads
 * on without asking; otherwise errno is no guide (a PUBACK's write to
 * libmosquitto's wake-up pipe may leave EAGAIN), so it asks the socket.
 */
static int sub_loop_batch(struct sub *s)
{
	struct pollfd pfd = { .fd = mosquitto_socket(s->mosq), .events = POLLIN };
	unsigned long seen;
	int i, rc, n;

	if (pfd.fd < 0)
		return MOSQ_ERR_NO_CONN;
	if (mosquitto_want_write(s->mosq))
		pfd.events |= POLLOUT;
	if (poll(&pfd, 1, SUB_LOOP_MS) < 0)
		return errno == EINTR ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ERRNO;
	if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
		for (i = 0; i < SUB_READ_BATCH; i++) {
			seen = s->messages;
			errno = 0;
			rc = mosquitto_loop_read(s->mosq, 1);
			if (rc != MOSQ_ERR_SUCCESS)
				return rc;
			if (mosquitto_socket(s->mosq) < 0)
				return MOSQ_ERR_NO_CONN;
			n = 0;
			if (s->messages == seen &&
			    (errno == EAGAIN || errno == EWOULDBLOCK) &&
			    (ioctl(pfd.fd, FIONREAD, &n) != 0 || n <= 0))
				break;
		}
	}
	if (mosquitto_want_write(s->mosq)) {
		rc = mosquitto_loop_write(s->mosq, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			return rc;
	}
	return mosquitto_loop_misc(s->mosq);
}

static void sub_on_connect(struct mosquitto *mosq, void *obj, int rc)
{
	struct sub *s = obj;

	s->connack = rc;
	if (rc != 0) {
		fprintf(stderr, SUB_NAME ": %s:%d refused the connection: %s\n",
			s->opt.host, s->opt.port, mosquitto_connack_string(rc));
		return;
	}
	s->connected = true;
	for (int i = 0; i < s->opt.ntopics; i++) {
		int rc2 = mosquitto_subscribe(mosq, NULL, s->opt.topics[i], s->opt.qos);

		if (rc2 != MOSQ_ERR_SUCCESS)
			fprintf(stderr, SUB_NAME ": cannot subscribe to '%s': %s\n",
				s->opt.topics[i], mosquitto_strerror(rc2));
	}
}

static void sub_on_subscribe(struct mosquitto *mosq, void *obj, int mid,
			     int n, const int *granted)
{
	struct sub *s = obj;

	(void)mosq;
	(void)mid;
	for (int i = 0; i < n; i++)
		if (granted[i] >= 0x80)
			s->refused++;
	s->granted++;
	if (s->granted == s->opt.ntopics && s->opt.tally.ready_file)
		bench_touch(s->opt.tally.ready_file);
}

static void sub_on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
	struct sub *s = obj;

	(void)mosq;
	if (rc != 0 && !bench_stop)
		fprintf(stderr, SUB_NAME ": lost the connection to %s:%d after %"
			PRIu64 " messages: %s\n", s->opt.host, s->opt.port,
			s->tally.received, mosquitto_strerror(rc));
	s->connected = false;
}

int main(int argc, char **argv)
{
	static struct sub sub;
	struct sub *s = &sub;
	enum bench_tally_state state = BENCH_RUNNING;
	char id[64];
	int rc, status = 1;

	sub_parse_args(&s->opt, argc, argv);
	s->connack = -1;
	if (!s->opt.client_id) {
		snprintf(id, sizeof(id), SUB_NAME "-%ld", (long)getpid());
		s->opt.client_id = id;
	}
	bench_catch_signals(true);

	mosquitto_lib_init();
#ifdef BENCH_BRIDGE
	if (bridge_start(s) != 0)
		goto out;
#endif
	s->mosq = mosquitto_new(s->opt.client_id, true, s);
	if (!s->mosq) {
		fprintf(stderr, SUB_NAME ": mosquitto_new failed: %s\n", strerror(errno));
		goto out;
	}
	mosquitto_int_option(s->mosq, MOSQ_OPT_PROTOCOL_VERSION, s->opt.protocol);
	mosquitto_int_option(s->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, s->opt.receive_maximum);
	mosquitto_connect_callback_set(s->mosq, sub_on_connect);
	mosquitto_subscribe_callback_set(s->mosq, sub_on_subscribe);
	mosquitto_message_callback_set(s->mosq, sub_on_message);
	mosquitto_disconnect_callback_set(s->mosq, sub_on_disconnect);

	rc = mosquitto_connect(s->mosq, s->opt.host, s->opt.port, 60);
	if (rc != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, SUB_NAME ": cannot connect to %s:%d: %s\n", s->opt.host,
			s->opt.port, rc == MOSQ_ERR_ERRNO ? strerror(errno)
							  : mosquitto_strerror(rc));
		goto out;
	}

	/* --timeout counts from here */
	bench_tally_start(&s->tally, &s->opt.tally);
	while (!bench_stop) {
#ifdef BENCH_BRIDGE
		unsigned long seen = s->messages;
#endif
		int64_t now;

		rc = s->granted == s->opt.ntopics ? sub_loop_batch(s) :
			mosquitto_loop(s->mosq, SUB_LOOP_MS, 1);
		now = bench_now_ns(CLOCK_MONOTONIC);
		if (rc != MOSQ_ERR_SUCCESS) {
			/* Lost connection: a benchmark does not reconnect, the
			 * numbers would mean nothing. */
			fprintf(stderr, SUB_NAME ": %s\n", rc == MOSQ_ERR_ERRNO ?
				strerror(errno) : mosquitto_strerror(rc));
			break;
		}
		if (s->connack > 0)
			break;
		if (s->connack < 0 &&
		    now - s->tally.start_ns > SUB_CONNECT_TIMEOUT_S * 1000000000LL) {
			fprintf(stderr, SUB_NAME ": no CONNACK from %s:%d within %d s\n",
				s->opt.host, s->opt.port, SUB_CONNECT_TIMEOUT_S);
			break;
		}
		if (s->refused) {
			fprintf(stderr, SUB_NAME ": the broker refused %d subscriptions\n",
				s->refused);
			break;
		}
#ifdef BENCH_BRIDGE
		/* a quiet round: serve the reports the last messages left */
		if (s->messages == seen)
			rd_kafka_poll(s->rk, 0);
		if ((double)(now - s->tally.start_ns) / 1e9 >= s->opt.tally.timeout_s) {
			state = BENCH_COMPLETE;	/* the end of its time */
			break;
		}
#else
		state = bench_tally_check(&s->tally, now, "messages");
		if (state != BENCH_RUNNING)
			break;
#endif
	}
	if (bench_stop || state == BENCH_COMPLETE || state == BENCH_IDLE)
		status = 0;
#ifdef BENCH_BRIDGE
	mosquitto_disconnect(s->mosq);
	if (bridge_finish(s) != 0)
		status = 1;
#else
	bench_tally_report(&s->tally, state == BENCH_COMPLETE);
	mosquitto_disconnect(s->mosq);
#endif
out:
	if (s->mosq)
		mosquitto_destroy(s->mosq);
	mosquitto_lib_cleanup();
	bench_tally_free(&s->tally);
	return status;
}
