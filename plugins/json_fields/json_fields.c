/*
 * json_fields.c - transform plugin "json_fields": reshapes a JSON object
 * payload (keep, drop and rename top-level fields, add tags, cast types, add
 * the receive time) and dead-letters payloads that are not JSON objects
 * (doc/plugin-transforms.md).
 * Threading: the configuration is read-only after create(); process() runs
 * on several workers at once and keeps all its data on its own stack/heap.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "iotrouter/plugin.h"

/* The longest excerpt of a value quoted in a reason. */
#define FIELDS_EXCERPT 40

enum fields_cast_type { CAST_INT, CAST_FLOAT, CAST_STRING, CAST_BOOL };
enum fields_ts_unit { TS_US, TS_MS, TS_S, TS_RFC3339 };

struct fields_pair {            /* rename "from=to" */
	char *from, *to;
};

struct fields_cast {
	char *field;
	enum fields_cast_type type;
};

/* A tag value is literal text with ${capture} references to the route's
 * named captures: parts alternate, is_capture says which. */
struct fields_part {
	char *text;
	int is_capture;
};

struct fields_tag {
	char *name;
	struct fields_part *parts;
	size_t nparts;
};

struct fields_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	char **keep, **drop;                    /* sorted */
	size_t nkeep, ndrop;
	struct fields_pair *rename;             /* sorted by from */
	size_t nrename;
	struct fields_cast *cast;               /* config order */
	size_t ncast;
	struct fields_tag *tags;                /* config order */
	size_t ntags;
	char *ts_field;                         /* NULL: no timestamp */
	enum fields_ts_unit ts_unit;
	int skip_cast_errors;
	iotr_counter *passed, *failed, *cast_skipped;
};

static const struct iotr_param fields_params[] = {
	{ .key = "keep", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Top-level fields to keep (names as received); the others "
	         "are removed.  Empty (the default): keep all." },
	{ .key = "drop", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Top-level fields to remove (names as received)." },
	{ .key = "rename", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Fields to rename, each \"old=new\"; a field keeps its "
	         "place, and replaces a field that already had the new name." },
	{ .key = "tags", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "String fields to add, each \"name=value\"; ${capture} in "
	         "a value is a named capture of the route, $$ a dollar sign. "
	         "A tag replaces a field of the same name." },
	{ .key = "cast", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Fields to convert, each \"field=TYPE\" with TYPE one of "
	         "int, float, string, bool; names after rename and tags." },
	{ .key = "on_cast_error", .type = IOTR_PARAM_STRING,
	  .default_value = "fail",
	  .doc = "When a value cannot be cast: fail (dead-letter the "
	         "message) or skip (leave the field as it was and count it)." },
	{ .key = "timestamp_field", .type = IOTR_PARAM_STRING,
	  .doc = "Add the message's receive time as this field (replacing "
	         "one of that name).  Unset (the default): no timestamp." },
	{ .key = "timestamp_unit", .type = IOTR_PARAM_STRING,
	  .default_value = "us",
	  .doc = "The timestamp's form: us, ms or s (integers since the Unix "
	         "epoch), or rfc3339 (a UTC string with microseconds)." },
	{ .key = NULL }
};

/* --- output: compact JSON, numbers in their shortest exact form ----------- */

/*
 * jansson writes a real with 17 significant digits, so 0.1 would come out
 * as 0.10000000000000001.  This writer prints each real with the fewest
 * digits that read back as the same double, and otherwise writes what
 * jansson's compact encoder writes.  It only writes; jansson parses.
 */
struct fields_buf {
	char *p;
	size_t len, cap;
	int oom;
};

static void buf_put(struct fields_buf *b, const char *s, size_t n)
{
	if (b->oom || n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap < b->len + n)
			cap *= 2;
		if (!(p = realloc(b->p, cap))) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void buf_puts(struct fields_buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

static void buf_string(struct fields_buf *b, const char *s, size_t n)
{
	size_t i, run = 0;
	char esc[8];

	buf_put(b, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *e = NULL;

		switch (c) {
		case '"': e = "\\\""; break;
		case '\\': e = "\\\\"; break;
		case '\b': e = "\\b"; break;
		case '\f': e = "\\f"; break;
		case '\n': e = "\\n"; break;
		case '\r': e = "\\r"; break;
		case '\t': e = "\\t"; break;
		default:
			if (c < 0x20) {
				snprintf(esc, sizeof(esc), "\\u%04x", c);
				e = esc;
			}
		}
		if (!e)
			continue;
		buf_put(b, s + run, i - run);
		buf_puts(b, e);
		run = i + 1;
	}
	buf_put(b, s + run, n - run);
	buf_put(b, "\"", 1);
}

/* The shortest text that reads back as v, always with a '.' or exponent so
 * that it stays a real (as jansson writes it). */
static void fields_real_text(double v, char *s, size_t size)
{
	const char *e;
	int prec, exp;

	for (prec = 1; prec < 17; prec++) {
		snprintf(s, size, "%.*g", prec, v);
		if (strtod(s, NULL) == v)
			break;
	}
	snprintf(s, size, "%.*g", prec, v);
	/* %g turns 1000 into 1e+03 when one digit is enough; below 10^17
	 * write the digits out, as a person (and jansson) would. */
	if ((e = strchr(s, 'e')) && (exp = atoi(e + 1)) >= 0 && exp < 17)
		snprintf(s, size, "%.*g", exp + 1 > prec ? exp + 1 : prec, v);
	if (!strpbrk(s, ".eni"))
		strncat(s, ".0", size - strlen(s) - 1);
}

static void buf_value(struct fields_buf *b, const json_t *v)
{
	char num[40];

	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		json_t *member;
		int first = 1;

		buf_put(b, "{", 1);
		json_object_foreach((json_t *)v, key, member) {
			if (!first)
				buf_put(b, ",", 1);
			first = 0;
			buf_string(b, key, strlen(key));
			buf_put(b, ":", 1);
			buf_value(b, member);
		}
		buf_put(b, "}", 1);
		break;
	}
	case JSON_ARRAY:
		buf_put(b, "[", 1);
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				buf_put(b, ",", 1);
			buf_value(b, json_array_get(v, i));
		}
		buf_put(b, "]", 1);
		break;
	case JSON_STRING:
		buf_string(b, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
		         json_integer_value(v));
		buf_puts(b, num);
		break;
	case JSON_REAL:
		fields_real_text(json_real_value(v), num, sizeof(num));
		buf_puts(b, num);
		break;
	case JSON_TRUE:
		buf_puts(b, "true");
		break;
	case JSON_FALSE:
		buf_puts(b, "false");
		break;
	case JSON_NULL:
		buf_puts(b, "null");
		break;
	}
}

/* A value as a short quote for a reason: compact JSON cut at
 * FIELDS_EXCERPT bytes (on a UTF-8 character boundary). */
static void fields_excerpt(const json_t *v, char *out, size_t size)
{
	struct fields_buf b = { 0 };
	size_t n;

	buf_value(&b, v);
	if (b.oom || !b.p) {
		snprintf(out, size, "(value)");
		free(b.p);
		return;
	}
	n = b.len;
	if (n > FIELDS_EXCERPT) {
		n = FIELDS_EXCERPT;
		while (n > 0 && ((unsigned char)b.p[n] & 0xC0) == 0x80)
			n--;
	}
	snprintf(out, size, "%.*s%s", (int)n, b.p, n < b.len ? "..." : "");
	free(b.p);
}

/* --- configuration ---------------------------------------------------------- */

static int fields_cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int fields_cmp_pair(const void *a, const void *b)
{
	return strcmp(((const struct fields_pair *)a)->from,
	              ((const struct fields_pair *)b)->from);
}

static int fields_in(char **list, size_t n, const char *name)
{
	return n && bsearch(&name, list, n, sizeof(*list), fields_cmp_str);
}

static const char *fields_renamed(const struct fields_state *st,
                                  const char *name)
{
	struct fields_pair key = { (char *)name, NULL }, *p;

	if (!st->nrename)
		return name;
	p = bsearch(&key, st->rename, st->nrename, sizeof(key),
	            fields_cmp_pair);
	return p ? p->to : name;
}

static const char *const fields_cast_names[] = { "int", "float", "string",
                                                 "bool" };

static void fields_free(struct fields_state *st)
{
	size_t i, j;

	for (i = 0; i < st->nkeep; i++)
		free(st->keep[i]);
	for (i = 0; i < st->ndrop; i++)
		free(st->drop[i]);
	for (i = 0; i < st->nrename; i++) {
		free(st->rename[i].from);
		free(st->rename[i].to);
	}
	for (i = 0; i < st->ncast; i++)
		free(st->cast[i].field);
	for (i = 0; i < st->ntags; i++) {
		for (j = 0; j < st->tags[i].nparts; j++)
			free(st->tags[i].parts[j].text);
		free(st->tags[i].parts);
		free(st->tags[i].name);
	}
	free(st->keep);
	free(st->drop);
	free(st->rename);
	free(st->cast);
	free(st->tags);
	free(st->ts_field);
	free(st);
}

#define FIELDS_OOM(st) \
	((st)->host->log((st)->inst, IOTR_LOG_ERROR, "out of memory reading " \
	                 "the configuration"), IOTR_ENOMEM)

/* A list of field names, sorted, for keep and drop. */
static int fields_read_names(struct fields_state *st, const char *key,
                             char ***out, size_t *nout)
{
	const struct iotr_host *h = st->host;
	size_t n = h->param_count(st->inst, key), i;

	if (!n)
		return IOTR_OK;
	if (!(*out = calloc(n, sizeof(**out))))
		return FIELDS_OOM(st);
	for (i = 0; i < n; i++) {
		const char *s = h->param_string_at(st->inst, key, i);

		if (!s || !*s) {
			h->log(st->inst, IOTR_LOG_ERROR, "%s entry %zu is empty; "
			       "write a field name", key, i + 1);
			return IOTR_EINVAL;
		}
		if (!((*out)[(*nout)++] = strdup(s)))
			return FIELDS_OOM(st);
	}
	qsort(*out, *nout, sizeof(**out), fields_cmp_str);
	return IOTR_OK;
}

/* Split "left=right" of list `key`; both sides non-empty unless
 * right_may_be_empty.  On error, logs naming the entry. */
static int fields_split(struct fields_state *st, const char *key,
                        const char *entry, const char *form,
                        int right_may_be_empty, char **left, char **right)
{
	const char *eq = entry ? strchr(entry, '=') : NULL;

	if (!eq || eq == entry || (!right_may_be_empty && !eq[1])) {
		st->host->log(st->inst, IOTR_LOG_ERROR, "%s entry \"%s\" %s; "
		              "write it as \"%s\"", key, entry ? entry : "",
		              !eq ? "has no '='" : eq == entry
		              ? "has nothing before '='" : "has nothing after '='",
		              form);
		return IOTR_EINVAL;
	}
	*left = strndup(entry, (size_t)(eq - entry));
	*right = strdup(eq + 1);
	if (!*left || !*right) {
		free(*left);
		free(*right);
		return FIELDS_OOM(st);
	}
	return IOTR_OK;
}

static int fields_read_rename(struct fields_state *st)
{
	const struct iotr_host *h = st->host;
	size_t n = h->param_count(st->inst, "rename"), i;
	int rc;

	if (!n)
		return IOTR_OK;
	if (!(st->rename = calloc(n, sizeof(*st->rename))))
		return FIELDS_OOM(st);
	for (i = 0; i < n; i++) {
		struct fields_pair *p = &st->rename[st->nrename];

		rc = fields_split(st, "rename",
		                  h->param_string_at(st->inst, "rename", i),
		                  "old=new", 0, &p->from, &p->to);
		if (rc)
			return rc;
		st->nrename++;
	}
	qsort(st->rename, st->nrename, sizeof(*st->rename), fields_cmp_pair);
	for (i = 1; i < st->nrename; i++) {
		if (strcmp(st->rename[i - 1].from, st->rename[i].from) == 0) {
			h->log(st->inst, IOTR_LOG_ERROR, "rename names field "
			       "\"%s\" twice; keep one entry for it",
			       st->rename[i].from);
			return IOTR_EINVAL;
		}
	}
	return IOTR_OK;
}

static int fields_read_cast(struct fields_state *st)
{
	const struct iotr_host *h = st->host;
	size_t n = h->param_count(st->inst, "cast"), i, k;
	char *type = NULL;
	int rc;

	if (!n)
		return IOTR_OK;
	if (!(st->cast = calloc(n, sizeof(*st->cast))))
		return FIELDS_OOM(st);
	for (i = 0; i < n; i++) {
		const char *entry = h->param_string_at(st->inst, "cast", i);
		struct fields_cast *c = &st->cast[st->ncast];

		rc = fields_split(st, "cast", entry, "field=TYPE", 0,
		                  &c->field, &type);
		if (rc)
			return rc;
		for (k = 0; k < 4 && strcmp(type, fields_cast_names[k]); k++)
			;
		free(type);
		if (k == 4) {
			h->log(st->inst, IOTR_LOG_ERROR, "cast entry \"%s\": the "
			       "type must be one of int, float, string, bool",
			       entry);
			free(c->field);
			return IOTR_EINVAL;
		}
		c->type = (enum fields_cast_type)k;
		st->ncast++;
		for (k = 0; k + 1 < st->ncast; k++) {
			if (strcmp(st->cast[k].field, c->field) == 0) {
				h->log(st->inst, IOTR_LOG_ERROR, "cast names "
				       "field \"%s\" twice; keep one entry for "
				       "it", c->field);
				return IOTR_EINVAL;
			}
		}
	}
	return IOTR_OK;
}

static int fields_add_part(struct fields_state *st, struct fields_tag *t,
                           const char *s, size_t len, int is_capture)
{
	struct fields_part *parts;

	parts = realloc(t->parts, (t->nparts + 1) * sizeof(*parts));
	if (!parts)
		return FIELDS_OOM(st);
	t->parts = parts;
	if (!(parts[t->nparts].text = strndup(s, len)))
		return FIELDS_OOM(st);
	parts[t->nparts++].is_capture = is_capture;
	return IOTR_OK;
}

/* Cut a tag value into literal text and ${capture} references. */
static int fields_parse_tag(struct fields_state *st, const char *entry,
                            struct fields_tag *t, const char *value)
{
	const char *p = value, *lit = value;
	int rc;

	while ((p = strchr(p, '$'))) {
		if (p[1] == '$') {
			/* "$$": the text so far and one '$'. */
			if ((rc = fields_add_part(st, t, lit, (size_t)(p + 1 - lit),
			                          0)))
				return rc;
			lit = p += 2;
		} else if (p[1] == '{') {
			const char *name = p + 2, *end = strchr(name, '}');
			const char *c;

			for (c = name; end && c < end; c++)
				if (!((*c >= 'a' && *c <= 'z') ||
				      (*c >= 'A' && *c <= 'Z') ||
				      (*c >= '0' && *c <= '9') || *c == '_'))
					break;
			if (!end || end == name || c != end) {
				st->host->log(st->inst, IOTR_LOG_ERROR, "tags "
				              "entry \"%s\": \"${\" must be "
				              "followed by a capture name "
				              "(letters, digits, _) and \"}\"; "
				              "write $$ for a dollar sign", entry);
				return IOTR_EINVAL;
			}
			if ((p > lit && (rc = fields_add_part(st, t, lit,
			                    (size_t)(p - lit), 0))) ||
			    (rc = fields_add_part(st, t, name,
			                          (size_t)(end - name), 1)))
				return rc;
			lit = p = end + 1;
		} else {
			p++;
		}
	}
	if (*lit || !t->nparts)
		return fields_add_part(st, t, lit, strlen(lit), 0);
	return IOTR_OK;
}

static int fields_read_tags(struct fields_state *st)
{
	const struct iotr_host *h = st->host;
	size_t n = h->param_count(st->inst, "tags"), i;
	int rc;

	if (!n)
		return IOTR_OK;
	if (!(st->tags = calloc(n, sizeof(*st->tags))))
		return FIELDS_OOM(st);
	for (i = 0; i < n; i++) {
		const char *entry = h->param_string_at(st->inst, "tags", i);
		struct fields_tag *t = &st->tags[st->ntags];
		char *value = NULL;

		rc = fields_split(st, "tags", entry, "name=value", 1, &t->name,
		                  &value);
		if (rc)
			return rc;
		st->ntags++;
		rc = fields_parse_tag(st, entry, t, value);
		free(value);
		if (rc)
			return rc;
	}
	return IOTR_OK;
}

static int fields_read_choices(struct fields_state *st)
{
	const struct iotr_host *h = st->host;
	const char *s = h->param_string(st->inst, "on_cast_error");
	static const char *const units[] = { "us", "ms", "s", "rfc3339" };
	size_t k;

	if (s && strcmp(s, "skip") == 0) {
		st->skip_cast_errors = 1;
	} else if (!s || strcmp(s, "fail") != 0) {
		h->log(st->inst, IOTR_LOG_ERROR, "on_cast_error = \"%s\" is not "
		       "one of fail, skip; fix `on_cast_error`", s ? s : "");
		return IOTR_EINVAL;
	}
	s = h->param_string(st->inst, "timestamp_field");
	if (s) {
		if (!*s) {
			h->log(st->inst, IOTR_LOG_ERROR, "timestamp_field is "
			       "empty; name the field, or leave it out for no "
			       "timestamp");
			return IOTR_EINVAL;
		}
		if (!(st->ts_field = strdup(s)))
			return FIELDS_OOM(st);
	}
	s = h->param_string(st->inst, "timestamp_unit");
	for (k = 0; k < 4 && s && strcmp(s, units[k]); k++)
		;
	if (k == 4 || !s) {
		h->log(st->inst, IOTR_LOG_ERROR, "timestamp_unit = \"%s\" is not "
		       "one of us, ms, s, rfc3339; fix `timestamp_unit`",
		       s ? s : "");
		return IOTR_EINVAL;
	}
	st->ts_unit = (enum fields_ts_unit)k;
	return IOTR_OK;
}

static int fields_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	struct fields_state *st;
	int rc;

	/* Seed jansson's hashing here, on the host's thread: its lazy
	 * seeding on the first json_object() is not thread-safe. */
	json_object_seed(0);
	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "json_fields transform");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	if ((rc = fields_read_names(st, "keep", &st->keep, &st->nkeep)) ||
	    (rc = fields_read_names(st, "drop", &st->drop, &st->ndrop)) ||
	    (rc = fields_read_rename(st)) || (rc = fields_read_cast(st)) ||
	    (rc = fields_read_tags(st)) || (rc = fields_read_choices(st))) {
		fields_free(st);
		return rc;
	}
	st->passed = host->counter(inst, "passed");
	st->failed = host->counter(inst, "failed");
	st->cast_skipped = host->counter(inst, "cast_skipped");
	if (!st->passed || !st->failed || !st->cast_skipped) {
		rc = FIELDS_OOM(st);
		fields_free(st);
		return rc;
	}
	*state = st;
	return IOTR_OK;
}

/* --- casting ---------------------------------------------------------------- */

/* A number written in a string, read by jansson; NULL if it is none. */
static json_t *fields_number_in(const json_t *v)
{
	json_t *n = json_loadb(json_string_value(v), json_string_length(v),
	                       JSON_DECODE_ANY, NULL);

	if (n && !json_is_number(n)) {
		json_decref(n);
		n = NULL;
	}
	return n;
}

static json_t *fields_to_int(const json_t *v, const char **why)
{
	json_t *n = NULL, *out = NULL;
	double d;

	switch (json_typeof(v)) {
	case JSON_INTEGER:
		return json_incref((json_t *)v);
	case JSON_TRUE:
	case JSON_FALSE:
		return json_integer(json_is_true(v));
	case JSON_STRING:
		if (!(n = fields_number_in(v))) {
			*why = "is not a number";
			return NULL;
		}
		if (json_is_integer(n))
			return n;
		v = n; /* a real in a string: on as a real */
		/* fall through */
	case JSON_REAL:
		d = json_real_value(v);
		/* Truncated toward zero, as C and most casts do. */
		if (d >= -9223372036854775808.0 && d < 9223372036854775808.0)
			out = json_integer((json_int_t)d);
		else
			*why = "is outside the 64-bit integer range";
		json_decref(n);
		return out;
	default:
		*why = "is not a number";
		return NULL;
	}
}

static json_t *fields_to_float(const json_t *v, const char **why)
{
	json_t *n, *out;

	switch (json_typeof(v)) {
	case JSON_REAL:
		return json_incref((json_t *)v);
	case JSON_INTEGER:
		return json_real((double)json_integer_value(v));
	case JSON_TRUE:
	case JSON_FALSE:
		return json_real(json_is_true(v) ? 1.0 : 0.0);
	case JSON_STRING:
		if (!(n = fields_number_in(v))) {
			*why = "is not a number";
			return NULL;
		}
		out = json_real(json_number_value(n));
		json_decref(n);
		return out;
	default:
		*why = "is not a number";
		return NULL;
	}
}

static json_t *fields_to_bool(const json_t *v, const char **why)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };
	const char *s;
	size_t i;

	switch (json_typeof(v)) {
	case JSON_TRUE:
	case JSON_FALSE:
		return json_incref((json_t *)v);
	case JSON_INTEGER:
	case JSON_REAL:
		if (json_number_value(v) == 0)
			return json_false();
		if (json_number_value(v) == 1)
			return json_true();
		*why = "is neither 0 nor 1";
		return NULL;
	case JSON_STRING:
		s = json_string_value(v);
		for (i = 0; i < 4; i++) {
			if (strcasecmp(s, yes[i]) == 0)
				return json_true();
			if (strcasecmp(s, no[i]) == 0)
				return json_false();
		}
		*why = "is not one of true, false, yes, no, on, off, 1, 0";
		return NULL;
	default:
		*why = "is not a boolean";
		return NULL;
	}
}

static json_t *fields_to_string(const json_t *v)
{
	struct fields_buf b = { 0 };
	char num[40];
	json_t *out;

	switch (json_typeof(v)) {
	case JSON_STRING:
		return json_incref((json_t *)v);
	case JSON_INTEGER:
		snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
		         json_integer_value(v));
		return json_string(num);
	case JSON_REAL:
		fields_real_text(json_real_value(v), num, sizeof(num));
		return json_string(num);
	case JSON_TRUE:
		return json_string("true");
	case JSON_FALSE:
		return json_string("false");
	default:
		/* An object or array becomes its compact JSON text. */
		buf_value(&b, v);
		out = b.oom ? NULL : json_stringn(b.p, b.len);
		free(b.p);
		return out;
	}
}

/*
 * The value of v cast to type: a new reference, or NULL with *why set
 * (why stays NULL when out of memory).  null stays null whatever the type.
 */
static json_t *fields_cast_value(const json_t *v, enum fields_cast_type type,
                                 const char **why)
{
	*why = NULL;
	if (json_is_null(v))
		return json_null();
	switch (type) {
	case CAST_INT: return fields_to_int(v, why);
	case CAST_FLOAT: return fields_to_float(v, why);
	case CAST_BOOL: return fields_to_bool(v, why);
	case CAST_STRING: return fields_to_string(v);
	}
	return NULL;
}

/* --- processing ------------------------------------------------------------- */

static int fields_fail(struct fields_state *st, iotr_msg *msg,
                       const char *reason)
{
	st->host->msg_set_error(msg, reason);
	st->host->counter_add(st->failed, 1);
	return IOTR_FAIL;
}

static const char *fields_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER:
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/* The text of a tag for msg; NULL with reason set if a capture is missing
 * or memory ran out. */
static json_t *fields_tag_value(const struct fields_state *st,
                                const iotr_msg *msg,
                                const struct fields_tag *t,
                                char *reason, size_t size)
{
	struct fields_buf b = { 0 };
	json_t *out;

	for (size_t i = 0; i < t->nparts; i++) {
		const char *s = t->parts[i].text;

		if (t->parts[i].is_capture &&
		    !(s = st->host->msg_capture(msg, t->parts[i].text))) {
			snprintf(reason, size, "tag '%s': the route has no "
			         "capture '%s'", t->name, t->parts[i].text);
			free(b.p);
			return NULL;
		}
		buf_puts(&b, s);
	}
	out = b.oom ? NULL : json_stringn(b.p ? b.p : "", b.len);
	free(b.p);
	if (!out)
		snprintf(reason, size, "out of memory");
	return out;
}

static json_t *fields_timestamp(const struct fields_state *st, int64_t us)
{
	struct tm tm;
	time_t secs;
	char text[64];
	int64_t frac;

	switch (st->ts_unit) {
	case TS_US: return json_integer(us);
	case TS_MS: return json_integer(us / 1000);
	case TS_S: return json_integer(us / 1000000);
	case TS_RFC3339:
		break;
	}
	secs = (time_t)(us / 1000000);
	frac = us % 1000000;
	if (frac < 0) {
		frac += 1000000;
		secs--;
	}
	if (!gmtime_r(&secs, &tm))
		return json_integer(us);
	snprintf(text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
	         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	         tm.tm_min, tm.tm_sec, (int)frac);
	return json_string(text);
}

/* Build the new object from in; IOTR_OK, or IOTR_FAIL with reason. */
static int fields_reshape(struct fields_state *st, const iotr_msg *msg,
                          json_t *in, json_t *out, char *reason,
                          size_t size)
{
	const char *key, *why;
	json_t *v, *cast;
	size_t i;

	json_object_foreach(in, key, v) {
		const char *name = fields_renamed(st, key);

		if ((st->nkeep && !fields_in(st->keep, st->nkeep, key)) ||
		    fields_in(st->drop, st->ndrop, key))
			continue;
		/* A field renamed to this name came first and wins; input
		 * names are unique, so only a rename can have set it. */
		if (name == key && json_object_get(out, name))
			continue;
		if (json_object_set(out, name, v))
			goto oom;
	}
	for (i = 0; i < st->ntags; i++) {
		if (!(v = fields_tag_value(st, msg, &st->tags[i], reason, size)))
			return IOTR_FAIL;
		if (json_object_set_new(out, st->tags[i].name, v))
			goto oom;
	}
	for (i = 0; i < st->ncast; i++) {
		const struct fields_cast *c = &st->cast[i];
		char quote[FIELDS_EXCERPT + 8];

		if (!(v = json_object_get(out, c->field)))
			continue;
		if ((cast = fields_cast_value(v, c->type, &why))) {
			if (json_object_set_new(out, c->field, cast))
				goto oom;
			continue;
		}
		if (!why)
			goto oom;
		fields_excerpt(v, quote, sizeof(quote));
		if (st->skip_cast_errors) {
			st->host->counter_add(st->cast_skipped, 1);
			if (st->host->log_enabled(st->inst, IOTR_LOG_DEBUG))
				st->host->log(st->inst, IOTR_LOG_DEBUG, "topic "
				              "'%s': field '%s' left as it was: "
				              "%s %s %s", st->host->msg_topic(msg),
				              c->field, fields_type_name(v),
				              quote, why);
			continue;
		}
		snprintf(reason, size, "cannot cast field '%s' to %s: %s %s %s",
		         c->field, fields_cast_names[c->type],
		         fields_type_name(v), quote, why);
		return IOTR_FAIL;
	}
	if (st->ts_field) {
		v = fields_timestamp(st, st->host->msg_time(msg));
		if (!v || json_object_set_new(out, st->ts_field, v))
			goto oom;
	}
	return IOTR_OK;
oom:
	snprintf(reason, size, "out of memory");
	return IOTR_FAIL;
}

static int fields_process(void *state, iotr_msg *msg)
{
	struct fields_state *st = state;
	const struct iotr_host *h = st->host;
	struct fields_buf b = { 0 };
	json_error_t error;
	json_t *in, *out;
	const void *payload;
	size_t len = 0;
	char reason[512];
	int rc;

	payload = h->msg_payload(msg, &len);
	if (!len)
		return fields_fail(st, msg, "payload is empty, not a JSON object");
	in = json_loadb(payload, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
	if (!in) {
		snprintf(reason, sizeof(reason), "payload is not JSON: %s "
		         "(line %d, column %d)", error.text, error.line,
		         error.column);
		return fields_fail(st, msg, reason);
	}
	if (!json_is_object(in)) {
		snprintf(reason, sizeof(reason), "payload is %s, not a JSON "
		         "object", fields_type_name(in));
		json_decref(in);
		return fields_fail(st, msg, reason);
	}
	if (!(out = json_object())) {
		json_decref(in);
		return fields_fail(st, msg, "out of memory");
	}
	rc = fields_reshape(st, msg, in, out, reason, sizeof(reason));
	json_decref(in);
	if (rc == IOTR_OK) {
		buf_value(&b, out);
		if (b.oom || h->msg_set_payload(msg, b.p, b.len) != IOTR_OK) {
			snprintf(reason, sizeof(reason), "out of memory");
			rc = IOTR_FAIL;
		}
	}
	free(b.p);
	json_decref(out);
	if (rc != IOTR_OK)
		return fields_fail(st, msg, reason);
	h->counter_add(st->passed, 1);
	return IOTR_OK;
}

static void fields_destroy(void *state)
{
	fields_free(state);
}

static const struct iotr_plugin fields_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "json_fields",
	.version = "1.0.0",
	.description = "Keeps, drops and renames fields of a JSON object "
	               "payload, casts types, adds tags and the receive time.",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = fields_params,
	.create = fields_create,
	.process = fields_process,
	.destroy = fields_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &fields_plugin;
}
