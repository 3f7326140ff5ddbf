/*
 * passthru.c - a test transform with one parameter of every type.  It passes
 * messages on, tagging them with a header, so tests can see it ran; the
 * config tests use its schema to check validation.
 */
#include <stdlib.h>
#include <string.h>

#include <iotrouter/plugin.h>

struct passthru {
	iotr_instance *inst;
	const struct iotr_host *host;
	char *tag;
	int drop_all;
};

static const struct iotr_param params[] = {
	{ "tag", IOTR_PARAM_STRING, "passthru", 0,
	  "value of the x-passthru header added to each message", 0, 0 },
	{ "count", IOTR_PARAM_INT, "3", 0, "an integer in 1..10", 1, 10 },
	{ "enabled", IOTR_PARAM_BOOL, "true", 0, "a boolean", 0, 0 },
	{ "ratio", IOTR_PARAM_DOUBLE, "0.5", 0, "a number", 0, 0 },
	{ "names", IOTR_PARAM_STRING_LIST, NULL, 0, "a list of strings", 0, 0 },
	{ "levels", IOTR_PARAM_INT_LIST, "1", 0, "integers in 0..2", 0, 2 },
	{ "drop_all", IOTR_PARAM_BOOL, "false", 0, "drop every message", 0, 0 },
	{ "must", IOTR_PARAM_STRING, NULL, 0, "unused", 0, 0 },
	{ NULL, 0, NULL, 0, NULL, 0, 0 }
};

static int passthru_create(iotr_instance *inst, const struct iotr_host *host,
                           void **state)
{
	struct passthru *p = calloc(1, sizeof(*p));

	if (!p)
		return IOTR_ENOMEM;
	p->inst = inst;
	p->host = host;
	p->tag = strdup(host->param_string(inst, "tag"));
	p->drop_all = host->param_bool(inst, "drop_all");
	*state = p;
	return p->tag ? IOTR_OK : IOTR_ENOMEM;
}

static int passthru_process(void *state, iotr_msg *msg)
{
	struct passthru *p = state;

	if (p->drop_all)
		return IOTR_DROP;
	return p->host->msg_add_header(msg, "x-passthru", p->tag,
	                               strlen(p->tag));
}

static void passthru_destroy(void *state)
{
	struct passthru *p = state;

	free(p->tag);
	free(p);
}

static const struct iotr_plugin passthru = {
	IOTR_PLUGIN_HEADER,
	.name = "passthru",
	.version = "1.0.0",
	.description = "test transform: passes messages on, tagged",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = params,
	.create = passthru_create,
	.process = passthru_process,
	.destroy = passthru_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &passthru;
}
