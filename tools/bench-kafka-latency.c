/*
 * bench-kafka-latency - the far end of scripts/bench: a librdkafka consumer
 * that reads one topic from its first offset, counts the records and
 * measures their end-to-end age from the payload's "ts" field (publish time
 * in microseconds since the epoch, written by iotrouter-sim or
 * bench-kafka-produce).
 *
 * It creates the topic if it is missing (so that it can be positioned before
 * the first record is produced), assigns every partition at the beginning,
 * and signals readiness (--ready-file) only once each partition has reached
 * its end, i.e. once it is really fetching.
 *
 * Threading: one thread; librdkafka's own threads fetch in the background.
 *
 * Output: one line on stdout when it ends:
 *   received=N elapsed_s=S rate=R p50_us=A p99_us=B max_us=C no_ts=K
 *   bytes_avg=P cpu_s=U maxrss_kb=M complete=0|1
 * with the same meaning as bench-mqtt-sub's (warm-up records, marked with
 * --warm-marker, are not counted).
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

#include <librdkafka/rdkafka.h>

#define LAT_NAME "bench-kafka-latency"

#define LAT_SAMPLES_DEFAULT	10000000UL
#define LAT_SETUP_TIMEOUT_MS	30000	/* bootstrap, topic, first EOFs */
#define LAT_POLL_MS		100
#define LAT_EXPECT_POLL_MS	100

struct lat_opts {
	const char *brokers;
	const char *bootstrap_file;
	const char *topic;
	int partitions;
	uint64_t count;
	const char *expect_file;
	const char *ready_file;
	const char *warm_marker;	/* payloads with it are not measured */
	const char *warm_file;
	uint64_t warm_count;
	int fetch_wait_ms;
	double idle_s;
	double timeout_s;
	unsigned long max_samples;
};

struct lat {
	struct lat_opts opt;
	rd_kafka_t *rk;
	uint64_t received, no_ts, expected;
	int64_t first_ns, last_ns;	/* CLOCK_MONOTONIC of arrivals */
	int64_t first_ts_us;		/* earliest publish time seen */
	int64_t last_rt_us;		/* CLOCK_REALTIME of the last arrival */
	uint64_t warm;			/* warm-up messages seen */
	uint64_t bytes;			/* payload bytes of those counted */
	uint32_t *lat_us;
	size_t nlat, caplat;
};

static volatile sig_atomic_t lat_stop;

static void lat_on_signal(int signo)
{
	(void)signo;
	lat_stop = 1;
}

static int64_t lat_now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void lat_usage(FILE *f)
{
	fprintf(f,
"Usage: " LAT_NAME " (--brokers LIST | --bootstrap-file FILE) --topic TOPIC\n"
"       [OPTION]...\n"
"Read TOPIC from the beginning, count the records and measure their age from\n"
"the payload's \"ts\" field, then print one line of results.\n"
"\n"
"  -b, --brokers LIST        bootstrap servers\n"
"      --bootstrap-file FILE read the bootstrap servers from FILE, waiting\n"
"                            for it to appear (an embedded cluster's address)\n"
"  -t, --topic TOPIC         the topic\n"
"      --partitions N        partitions if it has to create the topic (default 4)\n"
"  -n, --count N             stop after N records\n"
"      --expect-file FILE    stop after N records, N read from FILE once it\n"
"                            exists\n"
"      --idle SECONDS        stop SECONDS after the last record\n"
"      --timeout SECONDS     stop after SECONDS in all (default 600)\n"
"      --ready-file FILE     create FILE once every partition is being fetched\n"
"      --warm-marker TEXT    payloads holding TEXT are warm-up: not counted\n"
"      --warm-file FILE      create FILE once --warm-count of them arrived\n"
"      --warm-count N        (default 1)\n"
"      --fetch-wait-ms MS    fetch.wait.max.ms (default 10: a mock cluster\n"
"                            holds every empty fetch this long, even when\n"
"                            records arrive meanwhile)\n"
"      --max-samples N       latency samples kept (default %lu)\n"
"      --help                print this help\n", LAT_SAMPLES_DEFAULT);
}

static void lat_die_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, LAT_NAME ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry '" LAT_NAME " --help'.\n");
	exit(2);
}

static double lat_parse_num(const char *opt, const char *arg, double min,
			    double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno || v < min || v > max)
		lat_die_usage("bad value for %s", opt);
	return v;
}

static void lat_parse_args(struct lat_opts *o, int argc, char **argv)
{
	enum { OPT_BOOTSTRAP = 256, OPT_PARTITIONS, OPT_EXPECT, OPT_IDLE,
	       OPT_TIMEOUT, OPT_READY, OPT_FETCH_WAIT, OPT_WARM_MARKER,
	       OPT_WARM_FILE, OPT_WARM_COUNT, OPT_SAMPLES, OPT_HELP };
	static const struct option longopts[] = {
		{ "brokers", required_argument, NULL, 'b' },
		{ "topic", required_argument, NULL, 't' },
		{ "count", required_argument, NULL, 'n' },
		{ "bootstrap-file", required_argument, NULL, OPT_BOOTSTRAP },
		{ "partitions", required_argument, NULL, OPT_PARTITIONS },
		{ "expect-file", required_argument, NULL, OPT_EXPECT },
		{ "idle", required_argument, NULL, OPT_IDLE },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "ready-file", required_argument, NULL, OPT_READY },
		{ "fetch-wait-ms", required_argument, NULL, OPT_FETCH_WAIT },
		{ "warm-marker", required_argument, NULL, OPT_WARM_MARKER },
		{ "warm-file", required_argument, NULL, OPT_WARM_FILE },
		{ "warm-count", required_argument, NULL, OPT_WARM_COUNT },
		{ "max-samples", required_argument, NULL, OPT_SAMPLES },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 }
	};
	int ch;

	*o = (struct lat_opts){ .partitions = 4, .timeout_s = 600, .fetch_wait_ms = 10,
				.warm_count = 1,
				.max_samples = LAT_SAMPLES_DEFAULT };
	while ((ch = getopt_long(argc, argv, ":b:t:n:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'b': o->brokers = optarg; break;
		case 't': o->topic = optarg; break;
		case 'n': o->count = (uint64_t)lat_parse_num("--count", optarg, 1, 1e15); break;
		case OPT_BOOTSTRAP: o->bootstrap_file = optarg; break;
		case OPT_PARTITIONS: o->partitions = (int)lat_parse_num("--partitions", optarg, 1, 1024); break;
		case OPT_EXPECT: o->expect_file = optarg; break;
		case OPT_IDLE: o->idle_s = lat_parse_num("--idle", optarg, 0, 86400); break;
		case OPT_TIMEOUT: o->timeout_s = lat_parse_num("--timeout", optarg, 0.1, 86400); break;
		case OPT_READY: o->ready_file = optarg; break;
		case OPT_WARM_MARKER: o->warm_marker = optarg; break;
		case OPT_WARM_FILE: o->warm_file = optarg; break;
		case OPT_WARM_COUNT: o->warm_count = (uint64_t)lat_parse_num("--warm-count", optarg, 1, 1e12); break;
		case OPT_FETCH_WAIT: o->fetch_wait_ms = (int)lat_parse_num("--fetch-wait-ms", optarg, 0, 60000); break;
		case OPT_SAMPLES: o->max_samples = (unsigned long)lat_parse_num("--max-samples", optarg, 0, 1e9); break;
		case OPT_HELP: lat_usage(stdout); exit(0);
		case ':': lat_die_usage("%s needs a value", argv[optind - 1]); break;
		default: lat_die_usage("unknown option %s", argv[optind - 1]); break;
		}
	}
	if (optind < argc)
		lat_die_usage("unexpected argument '%s'", argv[optind]);
	if (!o->topic || (!o->brokers == !o->bootstrap_file))
		lat_die_usage("%s", "give --topic and one of --brokers, --bootstrap-file");
}

/* The first line of path, once the file exists and has one; NULL on timeout. */
static char *lat_read_line(const char *path, int64_t deadline)
{
	while (!lat_stop && lat_now_ns(CLOCK_MONOTONIC) < deadline) {
		FILE *f = fopen(path, "r");
		char *line = NULL;
		size_t cap = 0;

		if (f) {
			ssize_t n = getline(&line, &cap, f);

			fclose(f);
			if (n > 1 && line[n - 1] == '\n') {
				line[n - 1] = '\0';
				return line;
			}
			free(line);
		}
		usleep(50000);
	}
	return NULL;
}

static uint64_t lat_read_expected(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long long n = 0;
	char nl = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%llu%c", &n, &nl) != 2 || nl != '\n')
		n = 0;
	fclose(f);
	return n;
}

static int64_t lat_payload_ts(const void *payload, size_t len)
{
	static const char key[] = "\"ts\":";
	const char *p = memmem(payload, len, key, sizeof(key) - 1);
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

static void lat_touch(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f || fclose(f) != 0)
		fprintf(stderr, LAT_NAME ": cannot create %s: %s\n", path,
			strerror(errno));
}

static void lat_record(struct lat *l, const rd_kafka_message_t *m)
{
	int64_t now = lat_now_ns(CLOCK_MONOTONIC);
	int64_t now_rt = lat_now_ns(CLOCK_REALTIME) / 1000;
	int64_t ts;

	if (l->opt.warm_marker && m->payload &&
	    memmem(m->payload, m->len, l->opt.warm_marker,
		   strlen(l->opt.warm_marker))) {
		if (++l->warm == l->opt.warm_count && l->opt.warm_file)
			lat_touch(l->opt.warm_file);
		return;
	}
	ts = m->payload ? lat_payload_ts(m->payload, m->len) : -1;
	l->bytes += m->len;
	if (l->received++ == 0)
		l->first_ns = now;
	l->last_ns = now;
	l->last_rt_us = now_rt;
	if (ts < 0) {
		l->no_ts++;
		return;
	}
	if (l->first_ts_us == 0 || ts < l->first_ts_us)
		l->first_ts_us = ts;
	if (l->nlat == l->caplat && l->caplat < l->opt.max_samples) {
		size_t cap = l->caplat ? l->caplat * 2 : 65536;
		uint32_t *p;

		if (cap > l->opt.max_samples)
			cap = l->opt.max_samples;
		p = realloc(l->lat_us, cap * sizeof(*p));
		if (p) {
			l->lat_us = p;
			l->caplat = cap;
		}
	}
	if (l->nlat < l->caplat) {
		int64_t age = now_rt - ts;

		if (age < 0)
			age = 0;
		if (age > UINT32_MAX)
			age = UINT32_MAX;
		l->lat_us[l->nlat++] = (uint32_t)age;
	}
}

/* Create the topic unless it exists (an embedded mock cluster may not
 * support CreateTopics; then the metadata request below creates it). */
static void lat_create_topic(struct lat *l)
{
	rd_kafka_NewTopic_t *nt;
	rd_kafka_queue_t *q;
	rd_kafka_event_t *ev;
	char errstr[256];

	nt = rd_kafka_NewTopic_new(l->opt.topic, l->opt.partitions, 1, errstr,
				   sizeof(errstr));
	if (!nt)
		return;
	q = rd_kafka_queue_new(l->rk);
	rd_kafka_CreateTopics(l->rk, &nt, 1, NULL, q);
	ev = rd_kafka_queue_poll(q, 10000);
	if (ev)
		rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	rd_kafka_NewTopic_destroy(nt);
}

/* Assign every partition of the topic at its beginning.  Returns the number
 * of partitions, or -1. */
static int lat_assign(struct lat *l, int64_t deadline)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(l->rk, l->opt.topic, NULL);

	while (!lat_stop && lat_now_ns(CLOCK_MONOTONIC) < deadline) {
		const struct rd_kafka_metadata *md = NULL;
		int n = -1;

		if (rd_kafka_metadata(l->rk, 0, rkt, &md, 2000) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
		    md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			n = md->topics[0].partition_cnt;
		for (int i = 0; n > 0 && i < n; i++)
			if (md->topics[0].partitions[i].leader < 0)
				n = -1;
		if (md)
			rd_kafka_metadata_destroy(md);
		if (n > 0) {
			rd_kafka_topic_partition_list_t *parts =
				rd_kafka_topic_partition_list_new(n);
			rd_kafka_resp_err_t err;

			for (int i = 0; i < n; i++)
				rd_kafka_topic_partition_list_add(parts, l->opt.topic, i)
					->offset = RD_KAFKA_OFFSET_BEGINNING;
			err = rd_kafka_assign(l->rk, parts);
			rd_kafka_topic_partition_list_destroy(parts);
			rd_kafka_topic_destroy(rkt);
			if (err) {
				fprintf(stderr, LAT_NAME ": assign failed: %s\n",
					rd_kafka_err2str(err));
				return -1;
			}
			return n;
		}
		usleep(100000);
	}
	rd_kafka_topic_destroy(rkt);
	fprintf(stderr, LAT_NAME ": topic %s has no leaders within %d ms\n",
		l->opt.topic, LAT_SETUP_TIMEOUT_MS);
	return -1;
}

static int lat_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static uint32_t lat_percentile(const uint32_t *v, size_t n, double p)
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

static void lat_log_cb(const rd_kafka_t *rk, int level, const char *fac,
		       const char *buf)
{
	(void)rk;
	if (level <= 3)
		fprintf(stderr, LAT_NAME ": librdkafka %s: %s\n", fac, buf);
}

int main(int argc, char **argv)
{
	static struct lat lat;
	struct lat *l = &lat;
	rd_kafka_conf_t *conf;
	struct sigaction sa;
	struct rusage ru = { 0 };
	char errstr[512], group[64], fetch_wait[16];
	char *brokers = NULL;
	int64_t start, deadline, next_expect_poll = 0;
	double elapsed, cpu = 0;
	int nparts, eofs = 0, status = 1;
	bool ready = false, complete = false;
	char *eof_seen = NULL;

	lat_parse_args(&l->opt, argc, argv);
	if (l->opt.count)
		l->expected = l->opt.count;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = lat_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	start = lat_now_ns(CLOCK_MONOTONIC);
	deadline = start + LAT_SETUP_TIMEOUT_MS * 1000000LL;
	if (l->opt.bootstrap_file) {
		brokers = lat_read_line(l->opt.bootstrap_file, deadline);
		if (!brokers) {
			fprintf(stderr, LAT_NAME ": no address in %s within %d ms\n",
				l->opt.bootstrap_file, LAT_SETUP_TIMEOUT_MS);
			return 1;
		}
	} else if (!(brokers = strdup(l->opt.brokers))) {
		return 1;
	}

	conf = rd_kafka_conf_new();
	snprintf(group, sizeof(group), LAT_NAME "-%ld", (long)getpid());
	snprintf(fetch_wait, sizeof(fetch_wait), "%d", l->opt.fetch_wait_ms);
	/* assign() needs a group id but joins no group; nothing is committed.
	 * EOF events tell when every partition is being fetched.  A real
	 * broker answers a fetch as soon as a record arrives; librdkafka's mock
	 * cluster waits out fetch.wait.max.ms, so a short one keeps the
	 * consumer's own share of the latency small on both. */
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "allow.auto.create.topics", "true", errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "fetch.wait.max.ms", fetch_wait, errstr, sizeof(errstr)) ||
	    rd_kafka_conf_set(conf, "fetch.error.backoff.ms", "20", errstr, sizeof(errstr))) {
		fprintf(stderr, LAT_NAME ": %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		free(brokers);
		return 1;
	}
	rd_kafka_conf_set_log_cb(conf, lat_log_cb);
	l->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (!l->rk) {
		fprintf(stderr, LAT_NAME ": cannot create the consumer: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		free(brokers);
		return 1;
	}
	rd_kafka_poll_set_consumer(l->rk);

	lat_create_topic(l);
	nparts = lat_assign(l, deadline);
	if (nparts < 0)
		goto out;
	eof_seen = calloc((size_t)nparts, 1);
	if (!eof_seen)
		goto out;

	for (;;) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(l->rk, LAT_POLL_MS);
		int64_t now = lat_now_ns(CLOCK_MONOTONIC);

		if (m) {
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
				if (m->partition >= 0 && m->partition < nparts &&
				    !eof_seen[m->partition]) {
					eof_seen[m->partition] = 1;
					eofs++;
				}
			} else if (m->err) {
				fprintf(stderr, LAT_NAME ": %s\n", rd_kafka_message_errstr(m));
			} else {
				lat_record(l, m);
			}
			rd_kafka_message_destroy(m);
		}
		if (!ready && (eofs == nparts || l->received > 0 || l->warm > 0)) {
			ready = true;
			if (l->opt.ready_file)
				lat_touch(l->opt.ready_file);
		}
		if (!ready && now >= deadline) {
			fprintf(stderr, LAT_NAME ": the partitions of %s did not start "
				"fetching within %d ms\n", l->opt.topic,
				LAT_SETUP_TIMEOUT_MS);
			break;
		}
		if (lat_stop) {
			status = 0;
			break;
		}
		if (l->opt.expect_file && !l->expected && now >= next_expect_poll) {
			l->expected = lat_read_expected(l->opt.expect_file);
			next_expect_poll = now + LAT_EXPECT_POLL_MS * 1000000LL;
		}
		if (l->expected && l->received >= l->expected) {
			complete = true;
			status = 0;
			break;
		}
		if (l->opt.idle_s > 0 && l->received > 0 &&
		    (double)(now - l->last_ns) / 1e9 >= l->opt.idle_s) {
			status = 0;
			break;
		}
		if ((double)(now - start) / 1e9 >= l->opt.timeout_s) {
			fprintf(stderr, LAT_NAME ": timed out after %.0f s with %" PRIu64
				" records\n", l->opt.timeout_s, l->received);
			break;
		}
	}

	/* From the first publish to the last arrival: what the whole path
	 * sustained, a slow start included. */
	if (l->first_ts_us > 0 && l->last_rt_us > l->first_ts_us)
		elapsed = (double)(l->last_rt_us - l->first_ts_us) / 1e6;
	else
		elapsed = (double)(l->last_ns - l->first_ns) / 1e9;
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		      (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	qsort(l->lat_us, l->nlat, sizeof(*l->lat_us), lat_cmp_u32);
	printf("received=%" PRIu64 " elapsed_s=%.3f rate=%.1f p50_us=%" PRIu32
	       " p99_us=%" PRIu32 " max_us=%" PRIu32 " no_ts=%" PRIu64
	       " bytes_avg=%.0f cpu_s=%.3f maxrss_kb=%ld complete=%d\n",
	       l->received, elapsed,
	       elapsed > 0 ? (double)l->received / elapsed : 0.0,
	       lat_percentile(l->lat_us, l->nlat, 50),
	       lat_percentile(l->lat_us, l->nlat, 99),
	       l->nlat ? l->lat_us[l->nlat - 1] : 0, l->no_ts,
	       l->received ? (double)l->bytes / (double)l->received : 0.0, cpu,
	       ru.ru_maxrss,
	       complete ? 1 : 0);
	fflush(stdout);
out:
	rd_kafka_consumer_close(l->rk);
	rd_kafka_destroy(l->rk);
	free(eof_seen);
	free(l->lat_us);
	free(brokers);
	return status;
}
