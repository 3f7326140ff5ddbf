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

/* librdkafka's warnings and errors on stderr, after the tool's name. */
static inline void bench_kafka_log_cb(const rd_kafka_t *rk, int level,
				      const char *fac, const char *buf)
{
	(void)rk;
	if (level <= 4)
		fprintf(stderr, "%s: librdkafka %s: %s\n", bench_name, fac, buf);
}

#endif
