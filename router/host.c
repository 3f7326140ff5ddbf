/*
 * host.c - struct iotr_host: what a plugin may call.  Thin wrappers over
 * msg.c, metrics.c, log.c and pipeline.c; thread-safety is theirs.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "instance.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipeline.h"

static void host_log(iotr_instance *inst, int level, const char *fmt, ...)
{
	char prefix[300];
	va_list ap;

	snprintf(prefix, sizeof(prefix), "plugin:%s", inst ? inst->name : "?");
	va_start(ap, fmt);
	log_vmsg(level, prefix, fmt, ap);
	va_end(ap);
}

static int host_log_enabled(iotr_instance *inst, int level)
{
	(void)inst;
	return level <= log_get_level();
}

static const char *host_instance_name(const iotr_instance *inst)
{
	return inst->name;
}

/* The value of key if it has the given type, else NULL. */
static const struct param_value *param(const iotr_instance *inst,
                                       const char *key, int type)
{
	int i = instance_param_index(inst, key);

	if (i < 0 || inst->plugin->params[i].type != type)
		return NULL;
	return &inst->params[i];
}

static const struct param_value *param_list(const iotr_instance *inst,
                                            const char *key)
{
	int i = instance_param_index(inst, key);

	if (i < 0 || (inst->plugin->params[i].type != IOTR_PARAM_STRING_LIST &&
	              inst->plugin->params[i].type != IOTR_PARAM_INT_LIST))
		return NULL;
	return &inst->params[i];
}

static const char *host_param_string(const iotr_instance *inst,
                                     const char *key)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_STRING);

	return v ? v->str : NULL;
}

static int64_t host_param_int(const iotr_instance *inst, const char *key)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_INT);

	return v ? v->i : 0;
}

static int host_param_bool(const iotr_instance *inst, const char *key)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_BOOL);

	return v ? (int)v->i : 0;
}

static double host_param_double(const iotr_instance *inst, const char *key)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_DOUBLE);

	return v ? v->d : 0.0;
}

static size_t host_param_count(const iotr_instance *inst, const char *key)
{
	const struct param_value *v = param_list(inst, key);

	return v ? v->count : 0;
}

static const char *host_param_string_at(const iotr_instance *inst,
                                        const char *key, size_t i)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_STRING_LIST);

	return v && i < v->count ? v->strs[i] : NULL;
}

static int64_t host_param_int_at(const iotr_instance *inst, const char *key,
                                 size_t i)
{
	const struct param_value *v = param(inst, key, IOTR_PARAM_INT_LIST);

	return v && i < v->count ? v->ints[i] : 0;
}

static int host_param_is_set(const iotr_instance *inst, const char *key)
{
	int i = instance_param_index(inst, key);

	return i >= 0 && inst->params[i].set;
}

static const char *host_msg_topic(const iotr_msg *m) { return m->topic; }

static const void *host_msg_payload(const iotr_msg *m, size_t *len)
{
	if (len)
		*len = m->payload_len;
	return m->payload;
}

static const char *host_msg_key(const iotr_msg *m, size_t *len)
{
	if (len)
		*len = m->key_len;
	return m->key;
}

static const char *host_msg_dest(const iotr_msg *m) { return m->dest; }
static int host_msg_qos(const iotr_msg *m) { return m->qos; }
static int host_msg_retain(const iotr_msg *m) { return m->retain; }
static int64_t host_msg_time(const iotr_msg *m) { return m->time_us; }
static size_t host_msg_header_count(const iotr_msg *m) { return m->nheaders; }

static int host_msg_header_at(const iotr_msg *m, size_t i, const char **name,
                              const void **value, size_t *len)
{
	if (i >= m->nheaders)
		return IOTR_EINVAL;
	if (name)
		*name = m->headers[i].name;
	if (value)
		*value = m->headers[i].value;
	if (len)
		*len = m->headers[i].len;
	return IOTR_OK;
}

static int host_emit(iotr_instance *inst, iotr_msg *msg)
{
	if (inst->kind == IOTR_PLUGIN_TRANSFORM)
		return pipeline_transform_emit(inst, msg);
	if (inst->kind == IOTR_PLUGIN_INPUT)
		return pipeline_ingest(inst, msg);
	log_error("[plugin:%s] an output cannot emit() messages; dropped one "
	          "on '%s'", inst->name, msg ? msg->topic : "?");
	msg_free(msg);
	return IOTR_EINVAL;
}

static void host_delivered(iotr_instance *inst, iotr_msg *msg, int status,
                           const char *reason)
{
	pipeline_delivered(inst, msg, status, reason);
}

static int host_stopping(const iotr_instance *inst)
{
	return inst->pipeline ? pipeline_stopping(inst->pipeline) : 0;
}

static iotr_counter *host_counter(iotr_instance *inst, const char *name)
{
	char full[512];

	snprintf(full, sizeof(full), "%s.%s", inst->name, name);
	return metrics_counter(full);
}

static const struct iotr_host host = {
	.abi_major = IOTR_ABI_MAJOR,
	.abi_minor = IOTR_ABI_MINOR,
	.size = sizeof(struct iotr_host),
	.log = host_log,
	.log_enabled = host_log_enabled,
	.instance_name = host_instance_name,
	.param_string = host_param_string,
	.param_int = host_param_int,
	.param_bool = host_param_bool,
	.param_double = host_param_double,
	.param_count = host_param_count,
	.param_string_at = host_param_string_at,
	.param_int_at = host_param_int_at,
	.param_is_set = host_param_is_set,
	.msg_new = msg_new,
	.msg_clone = msg_clone,
	.msg_free = msg_free,
	.msg_topic = host_msg_topic,
	.msg_payload = host_msg_payload,
	.msg_key = host_msg_key,
	.msg_dest = host_msg_dest,
	.msg_qos = host_msg_qos,
	.msg_retain = host_msg_retain,
	.msg_time = host_msg_time,
	.msg_header_count = host_msg_header_count,
	.msg_header_at = host_msg_header_at,
	.msg_header = msg_header,
	.msg_capture = msg_capture,
	.msg_set_payload = msg_set_payload,
	.msg_set_key = msg_set_key,
	.msg_set_dest = msg_set_dest,
	.msg_set_qos = msg_set_qos,
	.msg_set_time = msg_set_time,
	.msg_add_header = msg_add_header,
	.msg_remove_header = msg_remove_header,
	.msg_set_error = msg_set_error,
	.emit = host_emit,
	.delivered = host_delivered,
	.stopping = host_stopping,
	.counter = host_counter,
	.counter_add = metrics_add,
	.alloc = malloc,
	.free = free,
	.lane = pipeline_current_lane,
};

const struct iotr_host *host_table(void)
{
	return &host;
}
