/*
 * kafkaconf.c - librdkafka configuration and logging for both kinds of the
 * kafka plugin.  kafka_log_cb() runs on librdkafka's threads; it only calls
 * the host's (thread-safe) log function.
 */
#define _GNU_SOURCE /* strndup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafkaconf.h"

/* librdkafka levels are syslog(3)'s, as are the host's. */
int kafka_log_level(int level)
{
	if (level <= IOTR_LOG_ERROR)
		return IOTR_LOG_ERROR;
	if (level > IOTR_LOG_DEBUG)
		return IOTR_LOG_DEBUG;
	return level;
}

void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                  const char *buf)
{
	const struct kafka_base *b = rd_kafka_opaque(rk);

	if (!b)
		return;
	/* A broker connection failure is logged as FAIL and also raised to
	 * the error callback, which logs it once, as a warning. */
	if (strcmp(fac, "FAIL") == 0 && level <= IOTR_LOG_WARNING)
		level = IOTR_LOG_DEBUG;
	b->host->log(b->inst, kafka_log_level(level), "librdkafka %s: %s", fac,
	             buf);
}

int kafka_conf_set(const struct kafka_base *b, rd_kafka_conf_t *conf,
                   const char *name, const char *value, const char *origin)
{
	char errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) ==
	    RD_KAFKA_CONF_OK)
		return IOTR_OK;
	b->host->log(b->inst, IOTR_LOG_ERROR,
	             "%s: librdkafka refused %s=%s: %s; see librdkafka's "
	             "CONFIGURATION.md for the property's name and values",
	             origin, name, value, errstr);
	return IOTR_EINVAL;
}

int kafka_conf_properties(const struct kafka_base *b, rd_kafka_conf_t *conf)
{
	const struct iotr_host *h = b->host;
	size_t i, n = h->param_count(b->inst, "properties");

	for (i = 0; i < n; i++) {
		const char *entry = h->param_string_at(b->inst, "properties", i);
		const char *eq = entry ? strchr(entry, '=') : NULL;
		char origin[64];
		char *name;
		int rc;

		if (!eq || eq == entry) {
			h->log(b->inst, IOTR_LOG_ERROR,
			       "properties[%zu] \"%s\" is not of the form "
			       "\"name=value\"", i, entry ? entry : "");
			return IOTR_EINVAL;
		}
		name = strndup(entry, (size_t)(eq - entry));
		if (!name)
			return IOTR_ENOMEM;
		snprintf(origin, sizeof(origin), "properties[%zu]", i);
		rc = kafka_conf_set(b, conf, name, eq + 1, origin);
		free(name);
		if (rc != IOTR_OK)
			return rc;
	}
	return IOTR_OK;
}
