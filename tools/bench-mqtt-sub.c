/*
 * bench-mqtt-sub - the bare broker path of scripts/bench: an MQTT subscriber
 * that does nothing with a message but count it and note how old it is.
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

#define SUB_NAME "bench-mqtt-sub"

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
};

static void sub_usage(FILE *f)
{
	fprintf(f,
"Usage: " SUB_NAME " -t FILTER [OPTION]...\n"
"Subscribe, count messages and measure their age from the payload's \"ts\"\n"
"field, or \"t\" (microseconds since the epoch), then print one line of\n"
"results.\n"
"\n"
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
		{ .name = NULL }
	};

	*o = (struct sub_opts){
		.host = "127.0.0.1", .port = 1883, .qos = 1,
		.protocol = MQTT_PROTOCOL_V5, .receive_maximum = 100,
	};
	bench_tally_opts_init(&o->tally);
	bench_parse_options(argc, argv, options, BENCH_TALLY_OPTIONS(&o->tally),
			    sub_usage);
	if (o->ntopics == 0)
		bench_die_usage("%s", "give at least one --topic");
}

static void sub_on_message(struct mosquitto *mosq, void *obj,
			   const struct mosquitto_message *mm)
{
	struct sub *s = obj;

	(void)mosq;
	s->messages++;
	bench_tally_add(&s->tally, mm->payloadlen > 0 ? mm->payload : NULL,
			(size_t)mm->payloadlen);
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
		state = bench_tally_check(&s->tally, now, "messages");
		if (state != BENCH_RUNNING)
			break;
	}
	if (bench_stop || state == BENCH_COMPLETE || state == BENCH_IDLE)
		status = 0;
	bench_tally_report(&s->tally, state == BENCH_COMPLETE);
	mosquitto_disconnect(s->mosq);
out:
	if (s->mosq)
		mosquitto_destroy(s->mosq);
	mosquitto_lib_cleanup();
	bench_tally_free(&s->tally);
	return status;
}
