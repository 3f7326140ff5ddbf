/*
 * bench-kafka.h - what the Kafka producers among scripts/bench's tools
 * (bench-kafka-produce, bench-mqtt-bridge) share: the kafka output's
 * producer settings and the way librdkafka's warnings are shown.
 */
#ifndef IOTROUTER_BENCH_KAFKA_H
#define IOTROUTER_BENCH_KAFKA_H

#include <stdio.h>

#include <librdkafka/rdkafka.h>

#include "bench-common.h"

/* The kafka output plugin's defaults (plugins/kafka/kafka.c), so that the
 * bare paths produce as the router does. */
static const char *const bench_kafka_output_defaults[][2] = {
	{ "acks", "all" },
	{ "enable.idempotence", "true" },
	{ "message.timeout.ms", "0" },
	{ "linger.ms", "2" },
};

/* Set the kafka output's defaults on @conf; -1, said on stderr, when
 * librdkafka refuses one. */
static inline int bench_kafka_set_defaults(rd_kafka_conf_t *conf)
{
	char errstr[512];

	for (size_t i = 0; i < sizeof(bench_kafka_output_defaults) /
			       sizeof(*bench_kafka_output_defaults); i++)
		if (rd_kafka_conf_set(conf, bench_kafka_output_defaults[i][0],
				      bench_kafka_output_defaults[i][1], errstr,
				      sizeof(errstr)) != RD_KAFKA_CONF_OK) {
			fprintf(stderr, "%s: %s=%s: %s\n", bench_name,
				bench_kafka_output_defaults[i][0],
				bench_kafka_output_defaults[i][1], errstr);
			return -1;
		}
	return 0;
}

/* librdkafka's warnings and errors on stderr, after the tool's name. */
static inline void bench_kafka_log_cb(const rd_kafka_t *rk, int level,
				      const char *fac, const char *buf)
{
	(void)rk;
	if (level <= 4)
		fprintf(stderr, "%s: librdkafka %s: %s\n", bench_name, fac, buf);
}

/* A producer on @conf (which it takes, also on failure) with @opaque,
 * @dr_cb for delivery reports and bench_kafka_log_cb; NULL, said on
 * stderr, when librdkafka refuses. */
static inline rd_kafka_t *bench_kafka_producer_new(
	rd_kafka_conf_t *conf, void *opaque,
	void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *))
{
	char errstr[512];
	rd_kafka_t *rk;

	rd_kafka_conf_set_opaque(conf, opaque);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_log_cb(conf, bench_kafka_log_cb);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (!rk) {
		fprintf(stderr, "%s: cannot create the producer: %s\n", bench_name,
			errstr);
		rd_kafka_conf_destroy(conf);
	}
	return rk;
}

#endif
