/*
 * bench-mqtt-sub - the bare broker path of scripts/bench: an MQTT subscriber
 * that does nothing with a message but count it and note how old it is.
 *
 * It shows what the broker and libmosquitto alone can deliver to one client
 * on this machine, the limit iotrouter's MQTT input is measured against.  The
 * age of a message is taken from the "ts" field (publish time, microseconds
 * since the epoch) that iotrouter-sim writes into each payload.
 *
 * Threading: one thread.  The handle runs without libmosquitto's threads;
 * main() calls mosquitto_loop() and every callback runs inside that call.
 *
 * Output: one line on stdout when it ends, "key=value" pairs:
 *   received=N elapsed_s=S rate=R p50_us=A p99_us=B max_us=C no_ts=K
 *   bytes_avg=P cpu_s=U maxrss_kb=M complete=0|1
 * rate is N / (last arrival - earliest publish time); the percentiles are
 * over the messages that carried a "ts"; complete=1 when the expected count
 * arrived.  Warm-up messages (--warm-marker) are not counted at all.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#define SUB_NAME "bench-mqtt-sub"

#define SUB_MAX_TOPICS		16
#define SUB_LOOP_MS		100	/* longest wait in one mosquitto_loop() */
#define SUB_EXPECT_POLL_MS	100	/* how often --expect-file is re-read */
#define SUB_SAMPLES_DEFAULT	10000000UL
#define SUB_CONNECT_TIMEOUT_S	10

struct sub_opts {
	const char *host;
	int port;
	const char *client_id;
	const char *topics[SUB_MAX_TOPICS];
	int ntopics;
	int qos;
	int protocol;
	int receive_maximum;
	uint64_t count;			/* 0: none */
	const char *expect_file;
	const char *ready_file;
	const char *warm_marker;	/* payloads with it are not measured */
	const char *warm_file;
	uint64_t warm_count;
	double idle_s;			/* 0: none */
	double timeout_s;
	unsigned long max_samples;
};

struct sub {
	struct sub_opts opt;
	struct mosquitto *mosq;
	int granted;			/* SUBACKs received */
	int refused;			/* filters the broker refused */
	bool connected;
	int connack;			/* -1 until CONNACK */

	uint64_t received;
	uint64_t no_ts;
	uint64_t expected;		/* 0 until known */
	int64_t first_ns, last_ns;	/* CLOCK_MONOTONIC of arrivals */
	int64_t first_ts_us;		/* earliest publish time seen */
	int64_t last_rt_us;		/* CLOCK_REALTIME of the last arrival */
	uint64_t warm;			/* warm-up messages seen */
	uint64_t bytes;			/* payload bytes of those counted */
	uint32_t *lat_us;		/* latency samples, grown on demand */
	size_t nlat, caplat;
};

static volatile sig_atomic_t sub_stop;

static void sub_on_signal(int signo)
{
	(void)signo;
	sub_stop = 1;
}

static int64_t sub_now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sub_usage(FILE *f)
{
	fprintf(f,
"Usage: " SUB_NAME " -t FILTER [OPTION]...\n"
"Subscribe, count messages and measure their age from the payload's \"ts\"\n"
"field (microseconds since the epoch), then print one line of results.\n"
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
"      --help               print this help\n",
		SUB_MAX_TOPICS, SUB_SAMPLES_DEFAULT);
}

static void sub_die_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, SUB_NAME ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry '" SUB_NAME " --help'.\n");
	exit(2);
}

static double sub_parse_num(const char *opt, const char *arg, double min,
			    double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno || v < min || v > max)
		sub_die_usage("bad value for %s", opt);
	return v;
}

static void sub_parse_args(struct sub_opts *o, int argc, char **argv)
{
	enum { OPT_PROTOCOL = 256, OPT_RECVMAX, OPT_EXPECT, OPT_IDLE,
	       OPT_TIMEOUT, OPT_READY, OPT_WARM_MARKER, OPT_WARM_FILE,
	       OPT_WARM_COUNT, OPT_SAMPLES, OPT_HELP };
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'h' },
		{ "port", required_argument, NULL, 'p' },
		{ "id", required_argument, NULL, 'i' },
		{ "topic", required_argument, NULL, 't' },
		{ "qos", required_argument, NULL, 'q' },
		{ "count", required_argument, NULL, 'n' },
		{ "protocol", required_argument, NULL, OPT_PROTOCOL },
		{ "receive-maximum", required_argument, NULL, OPT_RECVMAX },
		{ "expect-file", required_argument, NULL, OPT_EXPECT },
		{ "idle", required_argument, NULL, OPT_IDLE },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "ready-file", required_argument, NULL, OPT_READY },
		{ "warm-marker", required_argument, NULL, OPT_WARM_MARKER },
		{ "warm-file", required_argument, NULL, OPT_WARM_FILE },
		{ "warm-count", required_argument, NULL, OPT_WARM_COUNT },
		{ "max-samples", required_argument, NULL, OPT_SAMPLES },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 }
	};
	int ch;

	*o = (struct sub_opts){
		.host = "127.0.0.1", .port = 1883, .qos = 1,
		.protocol = MQTT_PROTOCOL_V5, .receive_maximum = 100,
		.timeout_s = 600, .max_samples = SUB_SAMPLES_DEFAULT,
		.warm_count = 1,
	};
	while ((ch = getopt_long(argc, argv, ":h:p:i:t:q:n:", longopts,
				 NULL)) != -1) {
		switch (ch) {
		case 'h': o->host = optarg; break;
		case 'p': o->port = (int)sub_parse_num("--port", optarg, 1, 65535); break;
		case 'i': o->client_id = optarg; break;
		case 't':
			if (o->ntopics == SUB_MAX_TOPICS)
				sub_die_usage("too many --topic (%s)", optarg);
			o->topics[o->ntopics++] = optarg;
			break;
		case 'q': o->qos = (int)sub_parse_num("--qos", optarg, 0, 2); break;
		case 'n':
			o->count = (uint64_t)sub_parse_num("--count", optarg, 1, 1e15);
			break;
		case OPT_PROTOCOL:
			if (strcmp(optarg, "5") == 0)
				o->protocol = MQTT_PROTOCOL_V5;
			else if (strcmp(optarg, "311") == 0 || strcmp(optarg, "3.1.1") == 0)
				o->protocol = MQTT_PROTOCOL_V311;
			else
				sub_die_usage("--protocol: '%s' is not 5 or 311", optarg);
			break;
		case OPT_RECVMAX:
			o->receive_maximum = (int)sub_parse_num("--receive-maximum",
								optarg, 1, 65535);
			break;
		case OPT_EXPECT: o->expect_file = optarg; break;
		case OPT_IDLE: o->idle_s = sub_parse_num("--idle", optarg, 0, 86400); break;
		case OPT_TIMEOUT:
			o->timeout_s = sub_parse_num("--timeout", optarg, 0.1, 86400);
			break;
		case OPT_READY: o->ready_file = optarg; break;
		case OPT_WARM_MARKER: o->warm_marker = optarg; break;
		case OPT_WARM_FILE: o->warm_file = optarg; break;
		case OPT_WARM_COUNT:
			o->warm_count = (uint64_t)sub_parse_num("--warm-count", optarg, 1, 1e12);
			break;
		case OPT_SAMPLES:
			o->max_samples = (unsigned long)sub_parse_num("--max-samples",
								      optarg, 0, 1e9);
			break;
		case OPT_HELP: sub_usage(stdout); exit(0);
		case ':': sub_die_usage("%s needs a value", argv[optind - 1]); break;
		default: sub_die_usage("unknown option %s", argv[optind - 1]); break;
		}
	}
	if (optind < argc)
		sub_die_usage("unexpected argument '%s'", argv[optind]);
	if (o->ntopics == 0)
		sub_die_usage("%s", "give at least one --topic");
}

/* The "ts" field of a JSON payload, or -1.  A scan, not a JSON parser: the
 * payloads are iotrouter-sim's, and the cost must stay far below the
 * broker's. */
static int64_t sub_payload_ts(const void *payload, int len)
{
	static const char key[] = "\"ts\":";
	const char *p = memmem(payload, (size_t)len, key, sizeof(key) - 1);
	const char *end = (const char *)payload + len;
	int64_t v = 0;

	if (!p)
		return -1;
	p += sizeof(key) - 1;
	if (p >= end || *p < '0' || *p > '9')
		return -1;
	while (p < end && *p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

static void sub_touch(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f || fclose(f) != 0)
		fprintf(stderr, SUB_NAME ": cannot create %s: %s\n", path,
			strerror(errno));
}

static void sub_on_message(struct mosquitto *mosq, void *obj,
			   const struct mosquitto_message *mm)
{
	struct sub *s = obj;
	int64_t now = sub_now_ns(CLOCK_MONOTONIC);
	int64_t now_rt = sub_now_ns(CLOCK_REALTIME) / 1000;
	int64_t ts;

	(void)mosq;
	if (s->opt.warm_marker && mm->payloadlen > 0 &&
	    memmem(mm->payload, (size_t)mm->payloadlen, s->opt.warm_marker,
		   strlen(s->opt.warm_marker))) {
		if (++s->warm == s->opt.warm_count && s->opt.warm_file)
			sub_touch(s->opt.warm_file);
		return;
	}
	ts = sub_payload_ts(mm->payload, mm->payloadlen);
	s->bytes += (uint64_t)mm->payloadlen;
	if (s->received++ == 0)
		s->first_ns = now;
	s->last_ns = now;
	s->last_rt_us = now_rt;
	if (ts < 0) {
		s->no_ts++;
		return;
	}
	if (s->first_ts_us == 0 || ts < s->first_ts_us)
		s->first_ts_us = ts;
	if (s->nlat == s->caplat && s->caplat < s->opt.max_samples) {
		size_t cap = s->caplat ? s->caplat * 2 : 65536;
		uint32_t *p;

		if (cap > s->opt.max_samples)
			cap = s->opt.max_samples;
		p = realloc(s->lat_us, cap * sizeof(*p));
		if (p) {
			s->lat_us = p;
			s->caplat = cap;
		}
	}
	if (s->nlat < s->caplat) {
		int64_t age = now_rt - ts;

		if (age < 0)
			age = 0;
		if (age > UINT32_MAX)
			age = UINT32_MAX;
		s->lat_us[s->nlat++] = (uint32_t)age;
	}
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
	if (s->granted == s->opt.ntopics && s->opt.ready_file)
		sub_touch(s->opt.ready_file);
}

static void sub_on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
	struct sub *s = obj;

	(void)mosq;
	if (rc != 0 && !sub_stop)
		fprintf(stderr, SUB_NAME ": lost the connection to %s:%d after %"
			PRIu64 " messages: %s\n", s->opt.host, s->opt.port,
			s->received, mosquitto_strerror(rc));
	s->connected = false;
}

/* The count in --expect-file, or 0 while it is missing or incomplete. */
static uint64_t sub_read_expected(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long long n = 0;
	char nl = 0;

	if (!f)
		return 0;
	/* The writer ends the line last; without the newline it is not done. */
	if (fscanf(f, "%llu%c", &n, &nl) != 2 || nl != '\n')
		n = 0;
	fclose(f);
	return n;
}

static int sub_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank) of sorted v[0..n-1]. */
static uint32_t sub_percentile(const uint32_t *v, size_t n, double p)
{
	size_t rank;

	if (n == 0)
		return 0;
	rank = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

static void sub_report(struct sub *s, bool complete)
{
	struct rusage ru;
	double elapsed;
	double cpu = 0;
	long maxrss = 0;

	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		      (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
		maxrss = ru.ru_maxrss;
	}
	/* From the first publish to the last arrival: what the whole path
	 * sustained, a slow start included. */
	if (s->first_ts_us > 0 && s->last_rt_us > s->first_ts_us)
		elapsed = (double)(s->last_rt_us - s->first_ts_us) / 1e6;
	else
		elapsed = (double)(s->last_ns - s->first_ns) / 1e9;
	qsort(s->lat_us, s->nlat, sizeof(*s->lat_us), sub_cmp_u32);
	printf("received=%" PRIu64 " elapsed_s=%.3f rate=%.1f p50_us=%" PRIu32
	       " p99_us=%" PRIu32 " max_us=%" PRIu32 " no_ts=%" PRIu64
	       " bytes_avg=%.0f cpu_s=%.3f maxrss_kb=%ld complete=%d\n",
	       s->received, elapsed, elapsed > 0 ? (double)s->received / elapsed : 0.0,
	       sub_percentile(s->lat_us, s->nlat, 50),
	       sub_percentile(s->lat_us, s->nlat, 99),
	       s->nlat ? s->lat_us[s->nlat - 1] : 0, s->no_ts,
	       s->received ? (double)s->bytes / (double)s->received : 0.0, cpu, maxrss,
	       complete ? 1 : 0);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static struct sub sub;
	struct sub *s = &sub;
	struct sigaction sa;
	char id[64];
	int64_t start, next_expect_poll = 0;
	bool complete = false;
	int rc, status = 1;

	sub_parse_args(&s->opt, argc, argv);
	s->connack = -1;
	if (!s->opt.client_id) {
		snprintf(id, sizeof(id), SUB_NAME "-%ld", (long)getpid());
		s->opt.client_id = id;
	}
	if (s->opt.count)
		s->expected = s->opt.count;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sub_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

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

	start = sub_now_ns(CLOCK_MONOTONIC);
	while (!sub_stop) {
		int64_t now;

		rc = mosquitto_loop(s->mosq, SUB_LOOP_MS, 1);
		now = sub_now_ns(CLOCK_MONOTONIC);
		if (rc != MOSQ_ERR_SUCCESS) {
			/* Lost connection: a benchmark does not reconnect, the
			 * numbers would mean nothing. */
			fprintf(stderr, SUB_NAME ": %s\n", rc == MOSQ_ERR_ERRNO ?
				strerror(errno) : mosquitto_strerror(rc));
			break;
		}
		if (s->connack > 0)
			break;
		if (s->connack < 0 && now - start > SUB_CONNECT_TIMEOUT_S * 1000000000LL) {
			fprintf(stderr, SUB_NAME ": no CONNACK from %s:%d within %d s\n",
				s->opt.host, s->opt.port, SUB_CONNECT_TIMEOUT_S);
			break;
		}
		if (s->refused) {
			fprintf(stderr, SUB_NAME ": the broker refused %d subscriptions\n",
				s->refused);
			break;
		}
		if (s->opt.expect_file && !s->expected && now >= next_expect_poll) {
			s->expected = sub_read_expected(s->opt.expect_file);
			next_expect_poll = now + SUB_EXPECT_POLL_MS * 1000000LL;
		}
		if (s->expected && s->received >= s->expected) {
			complete = true;
			status = 0;
			break;
		}
		if (s->opt.idle_s > 0 && s->received > 0 &&
		    (double)(now - s->last_ns) / 1e9 >= s->opt.idle_s) {
			status = 0;
			break;
		}
		if ((double)(now - start) / 1e9 >= s->opt.timeout_s) {
			fprintf(stderr, SUB_NAME ": timed out after %.0f s with %" PRIu64
				" messages%s\n", s->opt.timeout_s, s->received,
				s->expected ? "" : " (expected count unknown)");
			break;
		}
	}
	if (sub_stop)
		status = 0;
	sub_report(s, complete);
	mosquitto_disconnect(s->mosq);
out:
	if (s->mosq)
		mosquitto_destroy(s->mosq);
	mosquitto_lib_cleanup();
	free(s->lat_us);
	return status;
}
