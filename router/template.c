/*
 * template.c - parse "${...}" templates once, render them per message.
 * Parsed templates are immutable; rendering only touches the message (which
 * caches its parsed JSON payload), so any thread may render.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "route.h"
#include "template.h"

enum seg_kind { SEG_TEXT, SEG_CAPTURE, SEG_TOPIC, SEG_LEVEL, SEG_JSON,
                SEG_HEADER, SEG_QOS, SEG_KEY };

struct segment {
	enum seg_kind kind;
	char *text;        /* SEG_TEXT: literal; SEG_JSON: path; SEG_HEADER */
	size_t len;
	long index;        /* SEG_CAPTURE: capture index; SEG_LEVEL: level */
	char *pathbuf;     /* SEG_JSON: a copy of text, split at '.' */
	char **path;       /* SEG_JSON: pointers into pathbuf */
	size_t npath;
};

struct template {
	char *source;
	struct segment *segs;
	size_t nsegs;
};

static struct segment *template_add(struct template *t)
{
	struct segment *s = realloc(t->segs, (t->nsegs + 1) * sizeof(*s));

	if (!s)
		return NULL;
	t->segs = s;
	s = &t->segs[t->nsegs++];
	memset(s, 0, sizeof(*s));
	return s;
}

static int split_path(struct segment *s, char *err, size_t errlen,
                      const char *tpl)
{
	char *p;

	/* Split a copy: text stays whole for error messages. */
	if (!(p = s->pathbuf = strdup(s->text))) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}

	for (;;) {
		char *dot = strchr(p, '.');
		char **path;

		if (dot)
			*dot = '\0';
		if (!*p) {
			snprintf(err, errlen, "template '%s': empty field name "
			         "in ${json:...}", tpl);
			return -1;
		}
		path = realloc(s->path, (s->npath + 1) * sizeof(*path));
		if (!path) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		s->path = path;
		path[s->npath++] = p;
		if (!dot)
			return 0;
		p = dot + 1;
	}
}

/* One ${...} reference: ref points after "${", len excludes the '}'. */
static int parse_ref(struct template *t, const char *ref, size_t len,
                     const struct topic_filter *filter, char *err,
                     size_t errlen)
{
	struct segment *s = template_add(t);
	char name[256];

	if (!s)
		goto nomem;
	if (len == 0 || len >= sizeof(name)) {
		snprintf(err, errlen, "template '%s': %s reference ${%.*s}",
		         t->source, len ? "overlong" : "empty",
		         (int)(len > 40 ? 40 : len), ref);
		return -1;
	}
	memcpy(name, ref, len);
	name[len] = '\0';
	if (strncmp(name, "json:", 5) == 0) {
		s->kind = SEG_JSON;
		if (!(s->text = strdup(name + 5)))
			goto nomem;
		return split_path(s, err, errlen, t->source);
	}
	if (strncmp(name, "header:", 7) == 0) {
		if (!name[7]) {
			snprintf(err, errlen, "template '%s': ${header:} needs "
			         "a header name, as in ${header:sensor}",
			         t->source);
			return -1;
		}
		s->kind = SEG_HEADER;
		if (!(s->text = strdup(name + 7)))
			goto nomem;
		return 0;
	}
	if (strcmp(name, "topic") == 0) {
		s->kind = SEG_TOPIC;
		return 0;
	}
	if (strcmp(name, "qos") == 0) {
		s->kind = SEG_QOS;
		return 0;
	}
	if (strncmp(name, "topic[", 6) == 0) {
		char *end;

		errno = 0;
		s->index = strtol(name + 6, &end, 10);
		if (errno || end == name + 6 || s->index < 0 ||
		    strcmp(end, "]") != 0) {
			snprintf(err, errlen, "template '%s': ${%s} needs a "
			         "level number, as in ${topic[1]}", t->source,
			         name);
			return -1;
		}
		s->kind = SEG_LEVEL;
		return 0;
	}
	s->kind = SEG_CAPTURE;
	s->index = filter ? filter_capture_index(filter, name) : -1;
	/* The message's key, unless the filter names a capture "key" (which
	 * keeps the meaning it had before ${key} existed). */
	if (s->index < 0 && strcmp(name, "key") == 0) {
		s->kind = SEG_KEY;
		return 0;
	}
	if (s->index < 0) {
		if (filter && filter->ncaptures) {
			char names[512] = "";
			size_t i;

			for (i = 0; i < filter->ncaptures; i++) {
				if (i)
					strncat(names, ", ", sizeof(names) -
					        strlen(names) - 1);
				strncat(names, filter->captures[i],
				        sizeof(names) - strlen(names) - 1);
			}
			snprintf(err, errlen, "template '%s': no capture "
			         "'%s' in filter '%s' (it has: %s)", t->source,
			         name, filter->source, names);
		} else {
			snprintf(err, errlen, "template '%s': no capture '%s'; "
			         "name it in the route's match filter, as in "
			         "'sensors/+%s/#'", t->source, name, name);
		}
		return -1;
	}
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

struct template *template_parse(const char *text,
                                const struct topic_filter *filter,
                                char *err, size_t errlen)
{
	struct template *t = calloc(1, sizeof(*t));
	struct msg_buf lit = { 0 };
	const char *p = text;

	if (!t || !(t->source = strdup(text)))
		goto nomem;
	while (*p) {
		if (p[0] == '$' && p[1] == '$') {
			if (msg_buf_add(&lit, "$", 1))
				goto nomem;
			p += 2;
			continue;
		}
		if (p[0] == '$' && p[1] == '{') {
			const char *end = strchr(p + 2, '}');
			struct segment *s;

			if (!end) {
				snprintf(err, errlen, "template '%s': '${' "
				         "without a closing '}'", text);
				goto fail;
			}
			if (lit.len) {
				if (!(s = template_add(t)))
					goto nomem;
				s->kind = SEG_TEXT;
				s->text = lit.data;
				s->len = lit.len;
				memset(&lit, 0, sizeof(lit));
			}
			if (parse_ref(t, p + 2, (size_t)(end - p - 2), filter,
			              err, errlen))
				goto fail;
			p = end + 1;
			continue;
		}
		if (msg_buf_add(&lit, p, 1))
			goto nomem;
		p++;
	}
	if (lit.len) {
		struct segment *s = template_add(t);

		if (!s)
			goto nomem;
		s->kind = SEG_TEXT;
		s->text = lit.data;
		s->len = lit.len;
		memset(&lit, 0, sizeof(lit));
	}
	return t;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	free(lit.data);
	template_free(t);
	return NULL;
}

void template_free(struct template *t)
{
	size_t i;

	if (!t)
		return;
	for (i = 0; i < t->nsegs; i++) {
		free(t->segs[i].text);
		free(t->segs[i].pathbuf);
		free(t->segs[i].path);
	}
	free(t->segs);
	free(t->source);
	free(t);
}

int template_is_literal(const struct template *t)
{
	size_t i;

	for (i = 0; i < t->nsegs; i++)
		if (t->segs[i].kind != SEG_TEXT)
			return 0;
	return 1;
}

const char *template_source(const struct template *t)
{
	return t->source;
}

static json_t *json_walk(json_t *v, const struct segment *s)
{
	size_t i;

	for (i = 0; v && i < s->npath; i++) {
		if (json_is_object(v)) {
			v = json_object_get(v, s->path[i]);
		} else if (json_is_array(v)) {
			char *end;
			long idx = strtol(s->path[i], &end, 10);

			v = (*end || end == s->path[i] || idx < 0) ? NULL :
				json_array_get(v, (size_t)idx);
		} else {
			v = NULL;
		}
	}
	return v;
}

static int render_json(const struct segment *s, iotr_msg *msg, struct msg_buf *b,
                       char *err, size_t errlen)
{
	json_t *root = msg_json(msg), *v;
	char num[64];
	int n;

	if (!root) {
		snprintf(err, errlen, "${json:%s}: payload is not JSON", s->text);
		return IOTR_FAIL;
	}
	v = json_walk(root, s);
	if (!v || json_is_null(v)) {
		snprintf(err, errlen, "${json:%s}: payload has no such field",
		         s->text);
		return IOTR_FAIL;
	}
	switch (json_typeof(v)) {
	case JSON_STRING:
		return msg_buf_add(b, json_string_value(v),
		               json_string_length(v)) ? IOTR_ENOMEM : IOTR_OK;
	case JSON_INTEGER:
		n = snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
		             json_integer_value(v));
		return msg_buf_add(b, num, (size_t)n) ? IOTR_ENOMEM : IOTR_OK;
	case JSON_TRUE:
	case JSON_FALSE:
		return msg_buf_add(b, json_is_true(v) ? "true" : "false",
		               json_is_true(v) ? 4 : 5) ? IOTR_ENOMEM : IOTR_OK;
	default: {
		/* 15 digits: 21.3 stays 21.3, not 21.300000000000001. */
		char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
		                        JSON_REAL_PRECISION(15));
		int rc;

		if (!text)
			return IOTR_ENOMEM;
		rc = msg_buf_add(b, text, strlen(text)) ? IOTR_ENOMEM : IOTR_OK;
		free(text);
		return rc;
	}
	}
}

static int render_level(const struct segment *s, const iotr_msg *msg,
                        struct msg_buf *b, char *err, size_t errlen)
{
	const char *p = msg->topic;
	long level = 0;
	const char *end;

	while (level < s->index) {
		if (!(p = strchr(p, '/'))) {
			snprintf(err, errlen, "${topic[%ld]}: topic '%s' has "
			         "only %ld levels", s->index, msg->topic,
			         level + 1);
			return IOTR_FAIL;
		}
		p++;
		level++;
	}
	end = strchr(p, '/');
	return msg_buf_add(b, p, end ? (size_t)(end - p) : strlen(p)) ?
		IOTR_ENOMEM : IOTR_OK;
}

int template_render_to(const struct template *t, iotr_msg *msg,
                       struct msg_buf *out, char *err, size_t errlen)
{
	struct msg_buf b = *out;
	size_t i, hlen;
	const void *hval;
	char num[8];
	int rc = IOTR_OK;

	b.len = 0;
	if (msg_buf_add(&b, "", 0))
		return IOTR_ENOMEM;
	for (i = 0; i < t->nsegs && rc == IOTR_OK; i++) {
		const struct segment *s = &t->segs[i];

		switch (s->kind) {
		case SEG_TEXT:
			rc = msg_buf_add(&b, s->text, s->len) ? IOTR_ENOMEM : 0;
			break;
		case SEG_CAPTURE: {
			const char *v = msg->captures ?
				msg->captures[s->index] : NULL;

			if (!v) {
				snprintf(err, errlen, "capture #%ld is not "
				         "set", s->index);
				rc = IOTR_FAIL;
				break;
			}
			rc = msg_buf_add(&b, v, strlen(v)) ? IOTR_ENOMEM : 0;
			break;
		}
		case SEG_TOPIC:
			rc = msg_buf_add(&b, msg->topic, strlen(msg->topic)) ?
				IOTR_ENOMEM : 0;
			break;
		case SEG_LEVEL:
			rc = render_level(s, msg, &b, err, errlen);
			break;
		case SEG_JSON:
			rc = render_json(s, msg, &b, err, errlen);
			break;
		case SEG_HEADER:
			if (!(hval = msg_header(msg, s->text, &hlen))) {
				snprintf(err, errlen, "${header:%s}: message "
				         "has no such header", s->text);
				rc = IOTR_FAIL;
				break;
			}
			rc = msg_buf_add(&b, hval, hlen) ? IOTR_ENOMEM : 0;
			break;
		case SEG_KEY:
			if (!msg->key) {
				snprintf(err, errlen, "${key}: message has no "
				         "key");
				rc = IOTR_FAIL;
				break;
			}
			/* A key is one topic level: it must not add levels
			 * or wildcards to the topic it goes into (a Kafka
			 * key is any bytes).  The key is stored with a NUL
			 * after it, at which strcspn() also stops, so a NUL
			 * inside it is caught too. */
			if (strcspn(msg->key, "/+#") < msg->key_len) {
				snprintf(err, errlen, "${key}: the key has a "
				         "'/', '+', '#' or NUL, and cannot be "
				         "one topic level");
				rc = IOTR_FAIL;
				break;
			}
			rc = msg_buf_add(&b, msg->key, msg->key_len) ?
				IOTR_ENOMEM : 0;
			break;
		case SEG_QOS:
			snprintf(num, sizeof(num), "%d", msg->qos);
			rc = msg_buf_add(&b, num, strlen(num)) ? IOTR_ENOMEM : 0;
			break;
		}
	}
	*out = b;   /* also on failure: what moved to the heap is freed by
	             * the caller's msg_buf_release() */
	return rc;
}

int template_render(const struct template *t, iotr_msg *msg, char **out,
                    size_t *outlen, char *err, size_t errlen)
{
	struct msg_buf b = { 0 };
	int rc = template_render_to(t, msg, &b, err, errlen);

	if (rc) {
		msg_buf_release(&b);
		return rc;
	}
	*out = b.data;
	if (outlen)
		*outlen = b.len;
	return IOTR_OK;
}
