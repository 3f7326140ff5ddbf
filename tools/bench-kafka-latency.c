/*
 * bench-kafka-latency - the far end of scripts/bench: a librdkafka consumer
 * that reads one topic from its first offset, counts the records and
 * measures their end-to-end age from the payload's "ts" field, or "t" in
 * the --compact form (publish time in microseconds since the epoch, written
 * by iotrouter-sim or bench-kafka-produce).
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
 *   to_stamp_p50_us=D to_stamp_p99_us=E from_stamp_p50_us=F
 *   from_stamp_p99_us=G
 * with the same meaning as bench-mqtt-sub's (warm-up records, marked with
 * --warm-marker, are not counted).  The to_stamp and from_stamp fields
 * split each age at the record's timestamp: iotrouter stamps a record with
 * the time its input received the message, and a bare producer with the
 * time it produced it.  So to_stamp is publish -> router, and from_stamp
 * router -> Kafka -> here.  Kafka keeps milliseconds: the split is taken at
 * the middle of the record's millisecond, within 0.5 ms of the true time.
 *
 * With --read-after it reads nothing while the records of the measurement
 * are produced: it creates the topic with the broker's append time as the
 * records' timestamp (message.timestamp.type=LogAppendTime), pauses every
 * partition once the warm-up has arrived, and reads the rest once
 * --expect-file exists.  Each record then counts as arrived at its append
 * time, so the rate is that of the path up to the broker's log, an age is
 * publish -> append (there is no split), and the consumer's fetches take
 * no CPU from the path while it is measured.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "bench-common.h"

#define LAT_NAME "bench-kafka-latency"

#define LAT_SETUP_TIMEOUT_MS	30000	/* bootstrap, topic, first EOFs */
#define LAT_POLL_MS		100

const char bench_name[] = LAT_NAME;

struct lat_opts {
	const char *brokers;
	const char *bootstrap_file;
	const char *topic;
	int partitions;
	int fetch_wait_ms;
	int fetch_min_bytes;
	bool read_after;
	struct bench_tally_opts tally;
};

struct lat {
	struct lat_opts opt;
	rd_kafka_t *rk;
	struct bench_tally tally;
};

static void lat_usage(FILE *f)
{
	fprintf(f,
"Usage: " LAT_NAME " (--brokers LIST | --bootstrap-file FILE) --topic TOPIC\n"
"       [OPTION]...\n"
"Read TOPIC from the beginning, count the records and measure their age from\n"
"the payload's \"ts\" (or \"t\") field, then print one line of results.\n"
"The age is also split at each record's timestamp (to_stamp_*, from_stamp_*):\n"
"iotrouter stamps a record with the time its input received the message.\n"
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
"      --fetch-min-bytes N   fetch.min.bytes (default 1: a real broker answers\n"
"                            a fetch at the first record; more lets it\n"
"                            gather records for up to --fetch-wait-ms, so\n"
"                            that counting costs the broker fewer fetches)\n"
"      --read-after          read nothing from the end of the warm-up until\n"
"                            --expect-file exists, and count each record as\n"
"                            arrived at its append time in the broker's log\n"
"                            (creates TOPIC with message.timestamp.type=\n"
"                            LogAppendTime; needs --warm-marker and\n"
"                            --expect-file; a real broker only)\n"
"      --max-samples N       latency samples kept (default %lu)\n"
"      --samples-file FILE   write each message's age in microseconds to\n"
"                            FILE, one a line, in arrival order\n"
"      --help                print this help\n", BENCH_SAMPLES_DEFAULT);
}

static void lat_parse_args(struct lat_opts *o, int argc, char **argv)
{
	const struct bench_option options[] = {
		{ "brokers", 'b', .text = &o->brokers },
		{ "bootstrap-file", 0, .text = &o->bootstrap_file },
		{ "topic", 't', .text = &o->topic },
		{ "partitions", 0, .i = &o->partitions, .min = 1, .max = 1024 },
		{ "fetch-wait-ms", 0, .i = &o->fetch_wait_ms, .min = 0, .max = 60000 },
		{ "fetch-min-bytes", 0, .i = &o->fetch_min_bytes, .min = 1, .max = 100000000 },
		{ "read-after", 0, .flag = &o->read_after },
		{ .name = NULL }
	};

	*o = (struct lat_opts){ .partitions = 4, .fetch_wait_ms = 10,
	                         .fetch_min_bytes = 1 };
	bench_tally_opts_init(&o->tally);
	bench_parse_options(argc, argv, options, BENCH_TALLY_OPTIONS(&o->tally),
			    lat_usage);
	if (!o->topic || (!o->brokers == !o->bootstrap_file))
		bench_die_usage("%s", "give --topic and one of --brokers, --bootstrap-file");
	if (o->read_after && (!o->tally.warm_marker || !o->tally.expect_file))
		bench_die_usage("%s", "--read-after needs --warm-marker and --expect-file");
}

/* The first line of path, once the file exists and has one; NULL on timeout. */
static char *lat_read_line(const char *path, int64_t deadline)
{
	while (!bench_stop && bench_now_ns(CLOCK_MONOTONIC) < deadline) {
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

/* Create the topic unless it exists (an embedded mock cluster may not
 * support CreateTopics; then the metadata request below creates it).  With
 * --read-after, its records carry the broker's append time. */
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
	if (l->opt.read_after &&
	    rd_kafka_NewTopic_set_config(nt, "message.timestamp.type",
					 "LogAppendTime")) {
		rd_kafka_NewTopic_destroy(nt);
		return;
	}
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

	while (!bench_stop && bench_now_ns(CLOCK_MONOTONIC) < deadline) {
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

static void lat_log_cb(const rd_kafka_t *rk, int level, const char *fac,
		       const char *buf)
{
	(void)rk;
	if (level <= 3)
		fprintf(stderr, LAT_NAME ": librdkafka %s: %s\n", fac, buf);
}

/* The record's timestamp in microseconds, at the middle of its
 * millisecond, when it is of the given type; else -1.  The split wants
 * the producer's (CREATE_TIME: a broker's append time would put the
 * broker's share on the router's side of it), --read-after the broker's
 * (LOG_APPEND_TIME). */
static int64_t lat_stamp_us(const rd_kafka_message_t *m,
			    rd_kafka_timestamp_type_t want)
{
	rd_kafka_timestamp_type_t type;
	int64_t ms = rd_kafka_message_timestamp(m, &type);

	if (type != want || ms <= 0)
		return -1;
	return ms * 1000 + 500;
}

/* Pause or resume fetching every assigned partition. */
static int lat_pause(struct lat *l, bool pause)
{
	rd_kafka_topic_partition_list_t *parts = NULL;
	rd_kafka_resp_err_t err = rd_kafka_assignment(l->rk, &parts);

	if (!err)
		err = pause ? rd_kafka_pause_partitions(l->rk, parts) :
			rd_kafka_resume_partitions(l->rk, parts);
	if (parts)
		rd_kafka_topic_partition_list_destroy(parts);
	if (err)
		fprintf(stderr, LAT_NAME ": cannot %s fetching: %s\n",
			pause ? "pause" : "resume", rd_kafka_err2str(err));
	return err ? -1 : 0;
}

int main(int argc, char **argv)
{
	static struct lat lat;
	struct lat *l = &lat;
	struct bench_tally *t = &l->tally;
	enum bench_tally_state state = BENCH_RUNNING;
	rd_kafka_conf_t *conf;
	char errstr[512], group[64], fetch_wait[16], fetch_min[16];
	char *brokers = NULL;
	int64_t deadline;
	int nparts, eofs = 0, status = 1;
	bool ready = false, paused = false, resumed = false;
	char *eof_seen = NULL;

	lat_parse_args(&l->opt, argc, argv);
	bench_catch_signals(false);

	/* --timeout counts from here */
	bench_tally_start(t, &l->opt.tally);
	deadline = t->start_ns + LAT_SETUP_TIMEOUT_MS * 1000000LL;
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
	snprintf(fetch_min, sizeof(fetch_min), "%d", l->opt.fetch_min_bytes);
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
	    rd_kafka_conf_set(conf, "fetch.min.bytes", fetch_min, errstr, sizeof(errstr)) ||
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
		int64_t now = bench_now_ns(CLOCK_MONOTONIC);

		if (m) {
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
				if (m->partition >= 0 && m->partition < nparts &&
				    !eof_seen[m->partition]) {
					eof_seen[m->partition] = 1;
					eofs++;
				}
			} else if (m->err) {
				fprintf(stderr, LAT_NAME ": %s\n", rd_kafka_message_errstr(m));
			} else if (!l->opt.read_after) {
				bench_tally_add_split(t, m->payload,
						      m->payload ? m->len : 0,
						      lat_stamp_us(m,
							RD_KAFKA_TIMESTAMP_CREATE_TIME));
			} else {
				int64_t at = lat_stamp_us(m,
					RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME);

				if (at < 0) {
					/* a topic it did not create */
					fprintf(stderr, LAT_NAME ": topic %s "
						"keeps the producers' timestamps, "
						"not the broker's append time: "
						"--read-after needs a topic it "
						"creates itself (use a new topic "
						"name, and a real broker)\n",
						l->opt.topic);
					rd_kafka_message_destroy(m);
					break;
				}
				bench_tally_add_at(t, m->payload,
						   m->payload ? m->len : 0,
						   -1, at);
			}
			rd_kafka_message_destroy(m);
		}
		if (l->opt.read_after && !paused &&
		    t->warm >= l->opt.tally.warm_count) {
			/* the warm-up is in: nothing more until the end */
			if (lat_pause(l, true))
				break;
			paused = true;
		}
		if (paused && !resumed && t->expected > 0) {
			/* the publisher is done (bench_tally_check() below
			 * read --expect-file): read them all */
			if (lat_pause(l, false))
				break;
			resumed = true;
		}
		if (!ready && (eofs == nparts || t->received > 0 || t->warm > 0)) {
			ready = true;
			if (l->opt.tally.ready_file)
				bench_touch(l->opt.tally.ready_file);
		}
		if (!ready && now >= deadline) {
			fprintf(stderr, LAT_NAME ": the partitions of %s did not start "
				"fetching within %d ms\n", l->opt.topic,
				LAT_SETUP_TIMEOUT_MS);
			break;
		}
		if (bench_stop) {
			status = 0;
			break;
		}
		state = bench_tally_check(t, now, "records");
		if (state == BENCH_COMPLETE || state == BENCH_IDLE)
			status = 0;
		if (state != BENCH_RUNNING)
			break;
	}
	bench_tally_report(t, state == BENCH_COMPLETE);
out:
	rd_kafka_consumer_close(l->rk);
	rd_kafka_destroy(l->rk);
	free(eof_seen);
	bench_tally_free(t);
	free(brokers);
	return status;
}
