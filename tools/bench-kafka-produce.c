/*
 * bench-kafka-produce - the bare Kafka path of scripts/bench: a librdkafka
 * producer alone, with the kafka output plugin's defaults (acks=all,
 * idempotence, no message timeout, linger.ms=2), producing messages shaped
 * like iotrouter-sim's to one topic as fast as it can or at a set rate.
 *
 * It shows what Kafka and librdkafka alone accept from one producer on this
 * machine, the limit iotrouter's kafka output is measured against.  With
 * --brokers embedded it starts librdkafka's mock cluster in this process,
 * as the plugin does.  Each payload carries "ts" ("t" with --compact:
 * microseconds since the epoch at produce time), so bench-kafka-latency
 * can measure the path.
 *
 * Threading: main() produces and polls; delivery reports run inside its
 * rd_kafka_poll()/rd_kafka_flush() calls, so the counters need no lock.
 *
 * Output: one line on stdout when it ends:
 *   produced=N delivered=D failed=F elapsed_s=S rate=R cpu_s=U maxrss_kb=M
 *   complete=0|1
 * rate is D / (last delivery report - first produce call).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "bench-common.h"
#include "bench-kafka.h"

#define PROD_NAME "bench-kafka-produce"

#define PROD_MAX_PROPS		32
#define PROD_MAX_SIZE		(1024 * 1024)
#define PROD_SETUP_TIMEOUT_MS	30000	/* topic creation and metadata */
#define PROD_POLL_EVERY		1000	/* serve reports every N messages */

struct prod_opts {
	const char *brokers;
	const char *topic;
	uint64_t count;			/* 0: until --duration */
	double duration_s;		/* 0: until --count */
	double rate;			/* 0: as fast as possible */
	unsigned long size;
	bool compact;			/* iotrouter-sim --compact's payloads */
	unsigned long keys;
	int partitions;
	const char *props[PROD_MAX_PROPS];
	int nprops;
	const char *bootstrap_file;
	const char *wait_file;
	const char *hold_file;
	double timeout_s;
};

struct prod {
	struct prod_opts opt;
	rd_kafka_t *rk;
	rd_kafka_t *mock_rk;		/* hosts the embedded cluster */
	rd_kafka_mock_cluster_t *mcluster;
	uint64_t produced, delivered, failed;
	int64_t last_dr_ns;
	rd_kafka_resp_err_t first_err;
};

const char bench_name[] = PROD_NAME;

/* --rate: how far ahead of its due time a message may be produced */
#define PROD_PACE_AHEAD_NS 1000000

static void prod_sleep_until(int64_t deadline)
{
	struct timespec ts = { (time_t)(deadline / 1000000000),
			       (long)(deadline % 1000000000) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR &&
	       !bench_stop)
		;
}

static void prod_usage(FILE *f)
{
	fprintf(f,
"Usage: " PROD_NAME " --brokers HOST:PORT|embedded --topic TOPIC [OPTION]...\n"
"Produce sensor-like JSON messages with the kafka output's defaults and\n"
"print the rate Kafka acknowledged them at.\n"
"\n"
"  -b, --brokers LIST        bootstrap servers, or \"embedded\" for a mock\n"
"                            cluster inside this process\n"
"  -t, --topic TOPIC         topic (created with --partitions if missing)\n"
"  -n, --count N             messages to produce\n"
"  -D, --duration SECONDS    produce for this long (with or without --count)\n"
"  -r, --rate MSGS_PER_SEC   pace the messages (default 0: as fast as possible)\n"
"      --size BYTES          pad each payload to BYTES (default: no padding)\n"
"      --compact             short payloads like iotrouter-sim --compact's\n"
"      --keys N              distinct keys dev-0001..dev-N (default 100)\n"
"      --partitions N        partitions of a topic it creates (default 4)\n"
"  -X, --property NAME=VALUE librdkafka property, after the defaults\n"
"                            (repeatable)\n"
"      --bootstrap-file FILE embedded: write the cluster's address to FILE\n"
"      --wait-file FILE      wait until FILE exists before producing\n"
"      --hold-file FILE      embedded: when done, print the results and keep\n"
"                            the cluster up until FILE exists (so that a\n"
"                            consumer can read everything)\n"
"      --timeout SECONDS     give up after SECONDS in all (default 600)\n"
"      --help                print this help\n");
}

static void prod_take_property(void *ctx, const char *arg)
{
	struct prod_opts *o = ctx;

	if (o->nprops == PROD_MAX_PROPS || !strchr(arg, '='))
		bench_die_usage("-X '%s': give NAME=VALUE, at most 32", arg);
	o->props[o->nprops++] = arg;
}

static void prod_parse_args(struct prod_opts *o, int argc, char **argv)
{
	const struct bench_option options[] = {
		{ "brokers", 'b', .text = &o->brokers },
		{ "topic", 't', .text = &o->topic },
		{ "count", 'n', .u64 = &o->count, .min = 1, .max = 1e15 },
		{ "duration", 'D', .d = &o->duration_s, .min = 0.001, .max = 86400 },
		{ "rate", 'r', .d = &o->rate, .min = 0, .max = 1e8 },
		{ "size", 0, .ul = &o->size, .min = 0, .max = PROD_MAX_SIZE },
		{ "compact", 0, .flag = &o->compact },
		{ "keys", 0, .ul = &o->keys, .min = 1, .max = 1e6 },
		{ "partitions", 0, .i = &o->partitions, .min = 1, .max = 1024 },
		{ "property", 'X', .take = prod_take_property, .ctx = o },
		{ "bootstrap-file", 0, .text = &o->bootstrap_file },
		{ "wait-file", 0, .text = &o->wait_file },
		{ "hold-file", 0, .text = &o->hold_file },
		{ "timeout", 0, .d = &o->timeout_s, .min = 0.1, .max = 86400 },
		{ .name = NULL }
	};

	*o = (struct prod_opts){ .keys = 100, .partitions = 4, .timeout_s = 600 };
	bench_parse_options(argc, argv, options, NULL, prod_usage);
	if (!o->brokers || !o->topic)
		bench_die_usage("%s", "--brokers and --topic are required");
	if (!o->count && !o->duration_s)
		bench_die_usage("%s", "give --count, --duration or both");
}

static void prod_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct prod *p = opaque;

	(void)rk;
	p->last_dr_ns = bench_now_ns(CLOCK_MONOTONIC);
	if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		p->delivered++;
	} else {
		if (p->failed++ == 0)
			p->first_err = m->err;
	}
}

static int prod_conf_set(rd_kafka_conf_t *conf, const char *name,
			 const char *value)
{
	char errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) ==
	    RD_KAFKA_CONF_OK)
		return 0;
	fprintf(stderr, PROD_NAME ": %s=%s: %s\n", name, value, errstr);
	return -1;
}

/* Start the mock cluster; its bootstrap address goes to --bootstrap-file. */
static const char *prod_start_embedded(struct prod *p)
{
	rd_kafka_conf_t *mconf = rd_kafka_conf_new();
	const char *addr;
	char errstr[512];
	FILE *f;

	rd_kafka_conf_set(mconf, "log_level", "4", errstr, sizeof(errstr));
	p->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, mconf, errstr, sizeof(errstr));
	if (!p->mock_rk) {
		fprintf(stderr, PROD_NAME ": cannot create the mock cluster's handle: %s\n",
			errstr);
		rd_kafka_conf_destroy(mconf);
		return NULL;
	}
	p->mcluster = rd_kafka_mock_cluster_new(p->mock_rk, 1);
	if (!p->mcluster) {
		fprintf(stderr, PROD_NAME ": cannot start the mock cluster\n");
		return NULL;
	}
	addr = rd_kafka_mock_cluster_bootstraps(p->mcluster);
	if (rd_kafka_mock_topic_create(p->mcluster, p->opt.topic,
				       p->opt.partitions, 1) != 0)
		fprintf(stderr, PROD_NAME ": creating %s in the mock cluster failed; "
			"it is auto-created\n", p->opt.topic);
	if (p->opt.bootstrap_file) {
		char tmp[4096];

		/* through a temporary file, so a reader never sees half of it */
		snprintf(tmp, sizeof(tmp), "%s.tmp", p->opt.bootstrap_file);
		f = fopen(tmp, "w");
		if (!f || fprintf(f, "%s\n", addr) < 0 || fclose(f) != 0 ||
		    rename(tmp, p->opt.bootstrap_file) != 0) {
			fprintf(stderr, PROD_NAME ": cannot write %s: %s\n",
				p->opt.bootstrap_file, strerror(errno));
			return NULL;
		}
	}
	return addr;
}

/* Create the topic on a real cluster (an existing one is fine), then wait
 * until its metadata lists every partition with a leader, so that the
 * measurement does not include topic creation. */
static int prod_prepare_topic(struct prod *p)
{
	int64_t deadline = bench_now_ns(CLOCK_MONOTONIC) +
			   PROD_SETUP_TIMEOUT_MS * 1000000LL;
	rd_kafka_topic_t *rkt;

	if (!p->mcluster) {
		rd_kafka_NewTopic_t *nt;
		rd_kafka_queue_t *q = rd_kafka_queue_new(p->rk);
		rd_kafka_event_t *ev;
		char errstr[256];

		nt = rd_kafka_NewTopic_new(p->opt.topic, p->opt.partitions, 1,
					   errstr, sizeof(errstr));
		if (!nt) {
			fprintf(stderr, PROD_NAME ": %s\n", errstr);
			rd_kafka_queue_destroy(q);
			return -1;
		}
		rd_kafka_CreateTopics(p->rk, &nt, 1, NULL, q);
		ev = rd_kafka_queue_poll(q, PROD_SETUP_TIMEOUT_MS);
		if (ev) {
			const rd_kafka_CreateTopics_result_t *res =
				rd_kafka_event_CreateTopics_result(ev);
			size_t n = 0;
			const rd_kafka_topic_result_t **tr =
				res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;

			if (n == 1 && rd_kafka_topic_result_error(tr[0]) &&
			    rd_kafka_topic_result_error(tr[0]) !=
			    RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
				fprintf(stderr, PROD_NAME ": creating %s: %s; relying on "
					"auto-creation\n", p->opt.topic,
					rd_kafka_topic_result_error_string(tr[0]));
			rd_kafka_event_destroy(ev);
		}
		rd_kafka_NewTopic_destroy(nt);
		rd_kafka_queue_destroy(q);
	}

	rkt = rd_kafka_topic_new(p->rk, p->opt.topic, NULL);
	while (bench_now_ns(CLOCK_MONOTONIC) < deadline && !bench_stop) {
		const struct rd_kafka_metadata *md = NULL;
		bool ready = false;

		if (rd_kafka_metadata(p->rk, 0, rkt, &md, 2000) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
		    md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
		    md->topics[0].partition_cnt > 0) {
			ready = true;
			for (int i = 0; i < md->topics[0].partition_cnt; i++)
				if (md->topics[0].partitions[i].leader < 0)
					ready = false;
		}
		if (md)
			rd_kafka_metadata_destroy(md);
		if (ready) {
			rd_kafka_topic_destroy(rkt);
			return 0;
		}
		usleep(100000);
	}
	rd_kafka_topic_destroy(rkt);
	fprintf(stderr, PROD_NAME ": topic %s has no leaders after %d ms\n",
		p->opt.topic, PROD_SETUP_TIMEOUT_MS);
	return -1;
}

/* A payload like iotrouter-sim's (or its --compact one), padded to --size
 * as the simulator does: with a "pad" ("p") field of 'x's, or with spaces
 * before the '}' where a field does not fit. */
static size_t prod_payload(const struct prod *p, char *buf, size_t cap,
			   unsigned long dev, uint64_t seq)
{
	const char *pad = p->opt.compact ? ",\"p\":\"" : ",\"pad\":\"";
	size_t len, want = p->opt.size, padlen = strlen(pad);
	double value = 20.0 + (double)(seq % 100) / 10.0;
	int64_t ts = bench_now_ns(CLOCK_REALTIME) / 1000;
	int n;

	if (p->opt.compact)
		n = snprintf(buf, cap, "{\"d\":\"dev-%04lu\",\"q\":%" PRIu64
			     ",\"v\":%.1f,\"t\":%" PRId64, dev, seq, value, ts);
	else
		n = snprintf(buf, cap, "{\"device\":\"dev-%04lu\",\"site\":\"site-1\","
			     "\"sensor\":\"temperature\",\"value\":%.2f,\"unit\":\"C\","
			     "\"seq\":%" PRIu64 ",\"ts\":%" PRId64, dev, value, seq, ts);
	len = (size_t)n;
	/* cap is --size + 512: room for both */
	if (want >= len + padlen + 2) {
		memcpy(buf + len, pad, padlen);
		memset(buf + len + padlen, 'x', want - 2 - len - padlen);
		buf[want - 2] = '"';
		len = want - 1;
	} else if (want > len + 1) {
		memset(buf + len, ' ', want - 1 - len);
		len = want - 1;
	}
	buf[len++] = '}';
	return len;
}

static int prod_wait_file(const char *path, double timeout_s)
{
	int64_t deadline = bench_now_ns(CLOCK_MONOTONIC) + (int64_t)(timeout_s * 1e9);

	while (access(path, F_OK) != 0) {
		if (bench_stop || bench_now_ns(CLOCK_MONOTONIC) >= deadline) {
			fprintf(stderr, PROD_NAME ": %s did not appear\n", path);
			return -1;
		}
		usleep(20000);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct prod prod;
	struct prod *p = &prod;
	rd_kafka_conf_t *conf;
	char key[32];
	char *buf;
	int64_t t0, deadline, end_produce;
	double elapsed, cpu;
	long maxrss;
	size_t cap;
	uint64_t i;
	int status = 1;
	bool embedded;

	prod_parse_args(&p->opt, argc, argv);
	embedded = strcmp(p->opt.brokers, "embedded") == 0;
	cap = p->opt.size + 512;
	buf = malloc(cap);
	if (!buf)
		return 1;

	bench_catch_signals(false);

	conf = rd_kafka_conf_new();
	/* the kafka output's defaults, before -X so it can override them */
	if (bench_kafka_set_defaults(conf) != 0) {
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	prod_conf_set(conf, "client.id", PROD_NAME);
	if (embedded) {
		const char *addr = prod_start_embedded(p);

		if (!addr || prod_conf_set(conf, "bootstrap.servers", addr))
			goto out;
	} else if (prod_conf_set(conf, "bootstrap.servers", p->opt.brokers)) {
		goto out;
	}
	for (int k = 0; k < p->opt.nprops; k++) {
		char name[256];
		const char *eq = strchr(p->opt.props[k], '=');

		snprintf(name, sizeof(name), "%.*s", (int)(eq - p->opt.props[k]),
			 p->opt.props[k]);
		if (prod_conf_set(conf, name, eq + 1))
			goto out;
	}
	if (!(p->rk = bench_kafka_producer_new(conf, p, prod_dr_cb)))
		goto out;
	if (prod_prepare_topic(p) != 0)
		goto out;
	if (p->opt.wait_file && prod_wait_file(p->opt.wait_file, p->opt.timeout_s) != 0)
		goto out;

	t0 = bench_now_ns(CLOCK_MONOTONIC);
	deadline = t0 + (int64_t)(p->opt.timeout_s * 1e9);
	end_produce = p->opt.duration_s > 0 ? t0 + (int64_t)(p->opt.duration_s * 1e9)
					    : INT64_MAX;
	for (i = 0; (!p->opt.count || i < p->opt.count) && !bench_stop; i++) {
		unsigned long dev = (unsigned long)(i % p->opt.keys) + 1;
		rd_kafka_resp_err_t err;
		size_t len;
		int64_t now;

		if (p->opt.rate > 0) {
			/* paced like iotrouter-sim: a message due within the
			 * next millisecond goes now, so that pacing wakes up
			 * once a millisecond, not once a message */
			int64_t due = t0 + (int64_t)((double)i * 1e9 / p->opt.rate);

			if (due - bench_now_ns(CLOCK_MONOTONIC) > PROD_PACE_AHEAD_NS)
				prod_sleep_until(due);
		}
		now = bench_now_ns(CLOCK_MONOTONIC);
		if (now >= end_produce || now >= deadline)
			break;
		snprintf(key, sizeof(key), "dev-%04lu", dev);
		len = prod_payload(p, buf, cap, dev, i / p->opt.keys + 1);
		for (;;) {
			err = rd_kafka_producev(p->rk,
				RD_KAFKA_V_TOPIC(p->opt.topic),
				RD_KAFKA_V_KEY(key, strlen(key)),
				RD_KAFKA_V_VALUE(buf, len),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || bench_stop ||
			    bench_now_ns(CLOCK_MONOTONIC) >= deadline)
				break;
			rd_kafka_poll(p->rk, 1);
		}
		if (err) {
			fprintf(stderr, PROD_NAME ": produce failed: %s\n",
				rd_kafka_err2str(err));
			break;
		}
		p->produced++;
		if (p->produced % PROD_POLL_EVERY == 0)
			rd_kafka_poll(p->rk, 0);
	}
	while (p->delivered + p->failed < p->produced && !bench_stop &&
	       bench_now_ns(CLOCK_MONOTONIC) < deadline)
		rd_kafka_flush(p->rk, 100);
	if (p->delivered + p->failed < p->produced) {
		fprintf(stderr, PROD_NAME ": %" PRIu64 " messages unacknowledged; "
			"purging\n", p->produced - p->delivered - p->failed);
		rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(p->rk, 1000);
	}
	if (p->failed)
		fprintf(stderr, PROD_NAME ": %" PRIu64 " messages failed, the first "
			"with %s\n", p->failed, rd_kafka_err2str(p->first_err));

	elapsed = p->last_dr_ns > t0 ? (double)(p->last_dr_ns - t0) / 1e9 : 0;
	cpu = bench_cpu_s(&maxrss);
	status = p->delivered == p->produced && p->produced > 0 ? 0 : 1;
	printf("produced=%" PRIu64 " delivered=%" PRIu64 " failed=%" PRIu64
	       " elapsed_s=%.3f rate=%.1f cpu_s=%.3f maxrss_kb=%ld complete=%d\n",
	       p->produced, p->delivered, p->failed, elapsed,
	       elapsed > 0 ? (double)p->delivered / elapsed : 0.0, cpu,
	       maxrss, status == 0);
	fflush(stdout);
	if (p->opt.hold_file && p->mcluster)
		prod_wait_file(p->opt.hold_file, p->opt.timeout_s);
out:
	if (p->rk)
		rd_kafka_destroy(p->rk);
	if (p->mcluster)
		rd_kafka_mock_cluster_destroy(p->mcluster);
	if (p->mock_rk)
		rd_kafka_destroy(p->mock_rk);
	free(buf);
	return status;
}
