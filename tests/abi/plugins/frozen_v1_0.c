/*
 * frozen_v1_0.c - a transform compiled against the frozen ABI 1.0 header
 * (tests/abi/v1.0/iotrouter/plugin.h), never against the current one.  Every
 * router of major version 1 must load it and run it unchanged.
 *
 * It calls most of the 1.0 host table and reports what it saw in a header,
 * so a field that moved or changed meaning in struct iotr_host or struct
 * iotr_plugin shows up in tests/abi/abi.sh as a wrong value, not a hope.
 * Threading: process() runs on several workers; the state is read-only
 * after create() and the counter is the host's (thread-safe).
 */
#include <stdio.h>
#include <string.h>

#include <iotrouter/plugin.h>

#if IOTR_ABI_MAJOR != 1 || IOTR_ABI_MINOR != 0
#error "frozen_v1_0.c must be compiled with -I tests/abi/v1.0"
#endif

struct frozen {
	iotr_instance *inst;
	const struct iotr_host *host;
	char params[512];        /* the parameters as the host gave them */
	iotr_counter *seen;
};

static const struct iotr_param frozen_params[] = {
	{ "tag", IOTR_PARAM_STRING, NULL, 1, "a required string", 0, 0 },
	{ "n", IOTR_PARAM_INT, "3", 0, "an integer in 1..10", 1, 10 },
	{ "on", IOTR_PARAM_BOOL, "false", 0, "a boolean", 0, 0 },
	{ "ratio", IOTR_PARAM_DOUBLE, "0.5", 0, "a number", 0, 0 },
	{ "names", IOTR_PARAM_STRING_LIST, NULL, 0, "a list of strings", 0, 0 },
	{ "levels", IOTR_PARAM_INT_LIST, "7", 0, "integers in 0..9", 0, 9 },
	{ NULL, 0, NULL, 0, NULL, 0, 0 }
};

/* Append printf output to buf (of size n), truncating quietly. */
static void frozen_cat(char *buf, size_t n, const char *fmt, ...)
	IOTR_PRINTF(3, 4);

static void frozen_cat(char *buf, size_t n, const char *fmt, ...)
{
	size_t used = strlen(buf);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf + used, n - used, fmt, ap);
	va_end(ap);
}

static int frozen_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	struct frozen *f;
	size_t i;

	/* A 1.x host has at least the functions this header knows. */
	if (host->abi_major != 1 || host->size < sizeof(struct iotr_host)) {
		host->log(inst, IOTR_LOG_ERROR, "host ABI %u.%u with a %zu-byte "
		          "table; this plugin needs 1.x and %zu bytes",
		          host->abi_major, host->abi_minor, host->size,
		          sizeof(struct iotr_host));
		return IOTR_EINVAL;
	}
	if (!(f = host->alloc(sizeof(*f))))
		return IOTR_ENOMEM;
	memset(f, 0, sizeof(*f));
	f->inst = inst;
	f->host = host;
	frozen_cat(f->params, sizeof(f->params),
	           "tag=%s n=%lld on=%d ratio=%g set=%d%d names=",
	           host->param_string(inst, "tag"),
	           (long long)host->param_int(inst, "n"),
	           host->param_bool(inst, "on"),
	           host->param_double(inst, "ratio"),
	           host->param_is_set(inst, "tag"),
	           host->param_is_set(inst, "ratio"));
	for (i = 0; i < host->param_count(inst, "names"); i++)
		frozen_cat(f->params, sizeof(f->params), "%s%s", i ? "+" : "",
		           host->param_string_at(inst, "names", i));
	frozen_cat(f->params, sizeof(f->params), " levels=");
	for (i = 0; i < host->param_count(inst, "levels"); i++)
		frozen_cat(f->params, sizeof(f->params), "%s%lld", i ? "+" : "",
		           (long long)host->param_int_at(inst, "levels", i));
	f->seen = host->counter(inst, "seen");
	host->log(inst, IOTR_LOG_NOTICE, "frozen ABI 1.0 plugin '%s' runs in "
	          "a host of ABI %u.%u: %s", host->instance_name(inst),
	          host->abi_major, host->abi_minor, f->params);
	*state = f;
	return IOTR_OK;
}

static int frozen_process(void *state, iotr_msg *msg)
{
	struct frozen *f = state;
	const struct iotr_host *h = f->host;
	size_t len = 0, klen = 0, vlen = 0;
	const void *payload = h->msg_payload(msg, &len);
	const char *key = h->msg_key(msg, &klen);
	const char *dest = h->msg_dest(msg);
	const char *dev = h->msg_capture(msg, "dev");
	const void *sensor = h->msg_header(msg, "sensor", &vlen);
	char seen[1024] = "", newkey[128], newdest[256];
	const char *name;
	const void *value;
	unsigned char *wrapped;
	size_t i, n;
	int rc;

	h->counter_add(f->seen, 1);
	if (len == 4 && memcmp(payload, "drop", 4) == 0)
		return IOTR_DROP;
	if (len == 4 && memcmp(payload, "fail", 4) == 0) {
		h->msg_set_error(msg, "frozen_v1_0 was asked to fail");
		return IOTR_FAIL;
	}

	frozen_cat(seen, sizeof(seen), "%s topic=%s dest=%s key=%.*s dev=%s "
	           "sensor=%.*s qos=%d retain=%d time=%s headers=",
	           f->params, h->msg_topic(msg), dest ? dest : "-",
	           (int)klen, key ? key : "", dev ? dev : "-",
	           (int)vlen, sensor ? (const char *)sensor : "",
	           h->msg_qos(msg), h->msg_retain(msg),
	           h->msg_time(msg) > 1500000000000000LL ? "ok" : "bad");
	for (i = 0; i < h->msg_header_count(msg); i++)
		if (h->msg_header_at(msg, i, &name, &value, &n) == IOTR_OK)
			frozen_cat(seen, sizeof(seen), "%s%s", i ? "+" : "",
			           name);
	frozen_cat(seen, sizeof(seen), " past_end=%s",
	           h->msg_header_at(msg, i, &name, &value, &n) == IOTR_EINVAL ?
	           "einval" : "bad");
	if (h->log_enabled(f->inst, IOTR_LOG_DEBUG))
		h->log(f->inst, IOTR_LOG_DEBUG, "saw %s", seen);

	/* The new payload is built in the host's memory and copied by the
	 * setter, like any replacement payload. */
	if (!(wrapped = h->alloc(len + 2)))
		return IOTR_ENOMEM;
	wrapped[0] = '[';
	if (len)
		memcpy(wrapped + 1, payload, len);
	wrapped[len + 1] = ']';
	rc = h->msg_set_payload(msg, wrapped, len + 2);
	h->free(wrapped);

	snprintf(newkey, sizeof(newkey), "v1.0-%.*s", (int)klen,
	         key ? key : "");
	snprintf(newdest, sizeof(newdest), "%s.frozen", dest ? dest : "none");
	h->msg_remove_header(msg, "x-remove-me");
	if (rc == IOTR_OK)
		rc = h->msg_set_key(msg, newkey, strlen(newkey));
	if (rc == IOTR_OK)
		rc = h->msg_set_dest(msg, newdest);
	if (rc == IOTR_OK)
		rc = h->msg_add_header(msg, "x-frozen", seen, strlen(seen));
	return rc;
}

static void frozen_destroy(void *state)
{
	struct frozen *f = state;

	f->host->free(f);
}

static const struct iotr_plugin frozen_v1_0 = {
	IOTR_PLUGIN_HEADER,
	.name = "frozen_v1_0",
	.version = "1.0.0",
	.description = "test transform built against the frozen ABI 1.0 header",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = frozen_params,
	.create = frozen_create,
	.process = frozen_process,
	.destroy = frozen_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &frozen_v1_0;
}
