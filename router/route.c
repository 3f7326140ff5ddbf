/*
 * route.c - topic filters with named captures, and applying a route to a
 * message.  Everything here is read-only after config load; route_apply()
 * runs on input threads, concurrently, and only writes to the message.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "instance.h"
#include "msg.h"
#include "route.h"
#include "template.h"

static int capture_name_valid(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
		return 0;
	for (i = 1; i < len; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
			return 0;
	return 1;
}

/* Names a template uses for other things; a capture may not take them. */
static int capture_name_reserved(const char *s, size_t len)
{
	static const char *const reserved[] = { "topic", "qos", NULL };
	size_t i;

	for (i = 0; reserved[i]; i++)
		if (strlen(reserved[i]) == len && memcmp(s, reserved[i], len) == 0)
			return 1;
	return 0;
}

static int filter_add_capture(struct topic_filter *f, const char *name,
                              size_t len, char *err, size_t errlen)
{
	char **names;
	size_t i;

	if (!capture_name_valid(name, len)) {
		snprintf(err, errlen, "filter '%s': capture name '%.*s' must be "
		         "letters, digits and '_', not starting with a digit",
		         f->source, (int)len, name);
		return -1;
	}
	if (capture_name_reserved(name, len)) {
		snprintf(err, errlen, "filter '%s': capture name '%.*s' is "
		         "reserved; choose another name", f->source, (int)len,
		         name);
		return -1;
	}
	for (i = 0; i < f->ncaptures; i++) {
		if (strlen(f->captures[i]) == len &&
		    memcmp(f->captures[i], name, len) == 0) {
			snprintf(err, errlen, "filter '%s': capture '%.*s' is "
			         "named twice", f->source, (int)len, name);
			return -1;
		}
	}
	names = realloc(f->captures, (f->ncaptures + 1) * sizeof(*names));
	if (!names)
		goto nomem;
	f->captures = names;
	if (!(names[f->ncaptures] = strndup(name, len)))
		goto nomem;
	return (int)f->ncaptures++;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

int filter_parse(const char *text, struct topic_filter *f, char *err,
                 size_t errlen)
{
	const char *p = text;
	size_t n = 1, mlen = 0;

	memset(f, 0, sizeof(*f));
	if (!text || !*text) {
		snprintf(err, errlen, "empty topic filter");
		return -1;
	}
	for (const char *c = text; *c; c++)
		n += *c == '/';
	f->source = strdup(text);
	f->mqtt = malloc(strlen(text) + 1);
	f->levels = calloc(n, sizeof(*f->levels));
	if (!f->source || !f->mqtt || !f->levels) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (;;) {
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		struct filter_level *lv = &f->levels[f->nlevels++];

		lv->capture = -1;
		if (len > 0 && (p[0] == '+' || p[0] == '#')) {
			lv->kind = p[0] == '+' ? LEVEL_PLUS : LEVEL_HASH;
			if (lv->kind == LEVEL_HASH && end) {
				snprintf(err, errlen, "filter '%s': '#' must be "
				         "the last level", text);
				goto fail;
			}
			if (len > 1 && (lv->capture = filter_add_capture(f,
			                 p + 1, len - 1, err, errlen)) < 0)
				goto fail;
			f->mqtt[mlen++] = p[0];
		} else {
			if (memchr(p, '+', len) || memchr(p, '#', len)) {
				snprintf(err, errlen, "filter '%s': '+' and '#' "
				         "must stand alone in a level, as in "
				         "'a/+name/#'", text);
				goto fail;
			}
			lv->kind = LEVEL_LITERAL;
			if (!(lv->text = strndup(p, len))) {
				snprintf(err, errlen, "out of memory");
				goto fail;
			}
			memcpy(f->mqtt + mlen, p, len);
			mlen += len;
		}
		if (!end)
			break;
		f->mqtt[mlen++] = '/';
		p = end + 1;
	}
	f->mqtt[mlen] = '\0';
	return 0;
fail:
	filter_free(f);
	return -1;
}

void filter_free(struct topic_filter *f)
{
	size_t i;

	for (i = 0; i < f->nlevels; i++)
		free(f->levels[i].text);
	for (i = 0; i < f->ncaptures; i++)
		free(f->captures[i]);
	free(f->levels);
	free(f->captures);
	free(f->source);
	free(f->mqtt);
	memset(f, 0, sizeof(*f));
}

int filter_match(const struct topic_filter *f, const char *topic,
                 size_t *spans)
{
	const char *p = topic;
	size_t i;

	/* MQTT: a wildcard never matches a topic beginning with '$'. */
	if (topic[0] == '$' && f->nlevels && f->levels[0].kind != LEVEL_LITERAL)
		return 0;
	for (i = 0; i < f->nlevels; i++) {
		const struct filter_level *lv = &f->levels[i];
		const char *end;
		size_t len;

		if (lv->kind == LEVEL_HASH) {
			if (spans && lv->capture >= 0) {
				spans[2 * lv->capture] = (size_t)(p - topic);
				spans[2 * lv->capture + 1] = strlen(p);
			}
			return 1;
		}
		if (!p)
			return 0;       /* the topic has fewer levels */
		end = strchr(p, '/');
		len = end ? (size_t)(end - p) : strlen(p);
		if (lv->kind == LEVEL_LITERAL) {
			if (strlen(lv->text) != len ||
			    memcmp(lv->text, p, len) != 0)
				return 0;
		} else if (spans && lv->capture >= 0) {
			spans[2 * lv->capture] = (size_t)(p - topic);
			spans[2 * lv->capture + 1] = len;
		}
		p = end ? end + 1 : NULL;
		/* "a/#" also matches "a": the topic ended just before a
		 * final '#', which then captures nothing. */
		if (!p && i + 2 == f->nlevels &&
		    f->levels[i + 1].kind == LEVEL_HASH) {
			if (spans && f->levels[i + 1].capture >= 0) {
				spans[2 * f->levels[i + 1].capture] =
					strlen(topic);
				spans[2 * f->levels[i + 1].capture + 1] = 0;
			}
			return 1;
		}
	}
	return p == NULL;
}

int filter_capture_index(const struct topic_filter *f, const char *name)
{
	size_t i;

	for (i = 0; i < f->ncaptures; i++)
		if (strcmp(f->captures[i], name) == 0)
			return (int)i;
	return -1;
}

int route_default_headers(iotr_msg *msg)
{
	char buf[32];
	int n;

	if (msg_add_header(msg, "mqtt.topic", msg->topic, strlen(msg->topic)))
		return IOTR_ENOMEM;
	n = snprintf(buf, sizeof(buf), "%d", msg->qos);
	if (msg_add_header(msg, "mqtt.qos", buf, (size_t)n))
		return IOTR_ENOMEM;
	n = snprintf(buf, sizeof(buf), "%lld", (long long)msg->time_us);
	if (msg_add_header(msg, "received_at", buf, (size_t)n))
		return IOTR_ENOMEM;
	return IOTR_OK;
}

static int route_fail(iotr_msg *msg, const struct route *r, const char *what,
                      const char *why)
{
	char reason[512];

	snprintf(reason, sizeof(reason), "%s: %s: %s", r->name, what, why);
	msg_set_error(msg, reason);
	return IOTR_FAIL;
}

int route_apply(const struct route *r, iotr_msg *msg, const size_t *spans)
{
	char err[256], text[256];
	struct msg_buf b = MSG_BUF_ON(text);
	size_t i;
	int rc = IOTR_OK;

	msg->route = r;
	if (r->filter.ncaptures) {
		/* The array and its strings in one part (captures_copy's
		 * layout), cut from the topic. */
		size_t n = r->filter.ncaptures, size = n * sizeof(char *);
		char *p;

		for (i = 0; i < n; i++)
			size += spans[2 * i + 1] + 1;
		if (!(msg->captures = msg_alloc(msg, size)))
			return IOTR_ENOMEM;
		p = (char *)(msg->captures + n);
		for (i = 0; i < n; i++) {
			msg->captures[i] = p;
			memcpy(p, msg->topic + spans[2 * i], spans[2 * i + 1]);
			p += spans[2 * i + 1];
			*p++ = '\0';
		}
	}
	/* Each template renders into b (on the stack unless it is long) and
	 * is copied into the message's own room. */
	if (r->topic) {
		rc = template_render_to(r->topic, msg, &b, err, sizeof(err));
		if (rc == IOTR_OK && strlen(b.data) < b.len) {
			/* a header's bytes, say: the topic would be cut */
			snprintf(err, sizeof(err), "the topic has a NUL byte");
			rc = IOTR_FAIL;
		}
		if (rc == IOTR_FAIL)
			rc = route_fail(msg, r, "topic", err);
		else if (rc == IOTR_OK && msg_set_dest(msg, b.data))
			rc = IOTR_ENOMEM;
		if (rc)
			goto out;
	}
	if (r->key) {
		rc = template_render_to(r->key, msg, &b, err, sizeof(err));
		if (rc == IOTR_FAIL)
			rc = route_fail(msg, r, "key", err);
		else if (rc == IOTR_OK && msg_set_key(msg, b.data, b.len))
			rc = IOTR_ENOMEM;
		if (rc)
			goto out;
	}
	if (r->default_headers && route_default_headers(msg)) {
		rc = IOTR_ENOMEM;
		goto out;
	}
	for (i = 0; i < r->nheaders; i++) {
		rc = template_render_to(r->headers[i].value, msg, &b, err,
		                        sizeof(err));
		if (rc == IOTR_FAIL)
			rc = route_fail(msg, r, r->headers[i].name, err);
		else if (rc == IOTR_OK)
			rc = msg_add_header(msg, r->headers[i].name, b.data,
			                    b.len);
		if (rc)
			goto out;
	}
out:
	msg_buf_release(&b);
	return rc;
}

void route_free(struct route *r)
{
	size_t i;

	if (!r)
		return;
	filter_free(&r->filter);
	template_free(r->topic);
	template_free(r->key);
	for (i = 0; i < r->nheaders; i++) {
		free(r->headers[i].name);
		template_free(r->headers[i].value);
	}
	free(r->headers);
	free(r->transforms);
	free(r->name);
}
