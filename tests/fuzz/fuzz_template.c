/*
 * fuzz_template.c - libFuzzer target for topic filters, templates and JSON
 * field extraction.  The input is four lines: a route filter, a template, a
 * topic and a payload (the rest).  Parsing must refuse bad text with a
 * message; matching and rendering must never crash or read out of bounds.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "route.h"
#include "template.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* The next line of the input as a C string (malloc'd), advancing *p. */
static char *line(const unsigned char **p, const unsigned char *end)
{
	const unsigned char *nl = memchr(*p, '\n', (size_t)(end - *p));
	size_t len = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
	char *s = strndup((const char *)*p, len);

	*p = nl ? nl + 1 : end;
	return s;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	const unsigned char *p = data, *end = data + size;
	char *filter = line(&p, end), *tpl = line(&p, end);
	char *topic = line(&p, end);
	struct route r;
	struct template *t;
	char err[512], *out;
	size_t len, *spans;
	iotr_msg *msg;

	memset(&r, 0, sizeof(r));
	if (!filter || !tpl || !topic ||
	    filter_parse(filter, &r.filter, err, sizeof(err)))
		goto out;
	t = template_parse(tpl, &r.filter, err, sizeof(err));
	spans = calloc(2 * r.filter.ncaptures + 2, sizeof(*spans));
	msg = msg_new(topic, p, (size_t)(end - p));
	if (spans && msg && filter_match(&r.filter, topic, spans)) {
		r.name = strdup("route");
		r.key = t;
		t = NULL;
		if (r.name && route_apply(&r, msg, spans) == IOTR_OK &&
		    msg->key)
			(void)strlen(msg->key);
	} else if (t && msg &&
	           template_render(t, msg, &out, &len, err, sizeof(err)) ==
	           IOTR_OK) {
		free(out);
	}
	msg_free(msg);
	free(spans);
	template_free(t);
out:
	route_free(&r);
	free(filter);
	free(tpl);
	free(topic);
	return 0;
}
