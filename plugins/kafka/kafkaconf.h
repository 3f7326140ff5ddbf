/*
 * kafkaconf.h - what the kafka plugin's output (kafka.c) and input
 * (kafka_in.c) share: librdkafka configuration from the plugin's
 * parameters, and librdkafka's log lines in the router's log.
 */
#ifndef IOTR_KAFKACONF_H
#define IOTR_KAFKACONF_H

#include <librdkafka/rdkafka.h>

#include "iotrouter/plugin.h"

/* The first member of each kind's state, which is librdkafka's opaque. */
struct kafka_base {
	iotr_instance *inst;
	const struct iotr_host *host;
};

/* The input kind of the kafka plugin (kafka_in.c). */
extern const struct iotr_plugin kafka_in_plugin;

/* A librdkafka (syslog(3)) level as the host's. */
int kafka_log_level(int level);

/* rd_kafka_conf_set_log_cb() callback; the opaque is a struct kafka_base. */
void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                  const char *buf);

/* Set one property; on refusal log "ORIGIN: librdkafka refused NAME=VALUE"
 * with librdkafka's reason and return IOTR_EINVAL. */
int kafka_conf_set(const struct kafka_base *b, rd_kafka_conf_t *conf,
                   const char *name, const char *value, const char *origin);

/* Apply the instance's `properties` ("name=value" each), in order. */
int kafka_conf_properties(const struct kafka_base *b, rd_kafka_conf_t *conf);

#endif
