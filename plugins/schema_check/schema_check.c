/*
 * schema_check.c - transform plugin "schema_check": the payload must be a
 * JSON object with the required fields, of the declared types (nested paths
 * "a.b"), and optionally no others; a message that is not is dead-lettered
 * with a reason naming each bad field (doc/plugin-transforms.md).
 * Threading: the schema is a tree built in create() and only read after;
 * process() runs on several workers at once without locks.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iotrouter/plugin.h"

enum schema_type {
	SCHEMA_STRING = 1 << 0,
	SCHEMA_NUMBER = 1 << 1,
	SCHEMA_INTEGER = 1 << 2,
	SCHEMA_BOOLEAN = 1 << 3,
	SCHEMA_OBJECT = 1 << 4,
	SCHEMA_ARRAY = 1 << 5,
	SCHEMA_NULL = 1 << 6,
	SCHEMA_ANY = (1 << 7) - 1
};

static const struct {
	const char *name;
	unsigned type;
} schema_types[] = {
	{ "string", SCHEMA_STRING }, { "number", SCHEMA_NUMBER },
	{ "integer", SCHEMA_INTEGER }, { "boolean", SCHEMA_BOOLEAN },
	{ "object", SCHEMA_OBJECT }, { "array", SCHEMA_ARRAY },
	{ "null", SCHEMA_NULL }, { "any", SCHEMA_ANY },
};
#define SCHEMA_NTYPES (sizeof(schema_types) / sizeof(schema_types[0]))
#define SCHEMA_TYPE_LIST \
	"string, number, integer, boolean, object, array, null, any"

/* One field of the schema.  A node that only appears as the parent of
 * others ("a" of "a.b") has declared == 0 and must be an object. */
struct schema_node {
	char *name;                  /* member name; NULL at the root */
	char *path;                  /* "a.b", for reasons */
	unsigned types;              /* enum schema_type bits */
	int declared;                /* written as a path of its own */
	int required;
	struct schema_node **children;
	size_t nchildren;
};

struct schema_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	struct schema_node root;
	int allow_extra;
	int max_errors;
	iotr_counter *passed, *failed;
};

static const struct iotr_param schema_params[] = {
	{ .key = "require", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Fields that must be present, each \"path:TYPE\"; path is "
	         "a field name or a dotted path into nested objects "
	         "(\"gps.lat\"), TYPE one of string, number, integer, "
	         "boolean, object, array, null, any, or several joined "
	         "with | (\"number|null\")." },
	{ .key = "optional", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Fields that may be absent but, when present, must have "
	         "the type; written like require." },
	{ .key = "allow_extra", .type = IOTR_PARAM_BOOL,
	  .default_value = "true",
	  .doc = "Allow fields not named in require or optional; false "
	         "refuses them at the top level and inside every object a "
	         "path leads into." },
	{ .key = "max_errors", .type = IOTR_PARAM_INT, .default_value = "3",
	  .doc = "Problems named in the reason of one message; more are "
	         "summed up as \"and N more\".",
	  .min = 1, .max = 100 },
	{ .key = NULL }
};

/* --- the schema tree ---------------------------------------------------------- */

static void schema_node_free(struct schema_node *n)
{
	for (size_t i = 0; i < n->nchildren; i++) {
		schema_node_free(n->children[i]);
		free(n->children[i]);
	}
	free(n->children);
	free(n->name);
	free(n->path);
}

static struct schema_node *schema_child(const struct schema_node *n,
                                        const char *name, size_t len)
{
	for (size_t i = 0; i < n->nchildren; i++)
		if (strlen(n->children[i]->name) == len &&
		    memcmp(n->children[i]->name, name, len) == 0)
			return n->children[i];
	return NULL;
}

static struct schema_node *schema_add_child(struct schema_node *n,
                                            const char *name, size_t len)
{
	struct schema_node **kids, *c;
	size_t plen = n->path ? strlen(n->path) + 1 : 0;

	kids = realloc(n->children, (n->nchildren + 1) * sizeof(*kids));
	if (!kids)
		return NULL;
	n->children = kids;
	if (!(c = calloc(1, sizeof(*c))))
		return NULL;
	c->types = SCHEMA_OBJECT;
	c->name = strndup(name, len);
	c->path = malloc(plen + len + 1);
	if (!c->name || !c->path) {
		free(c->name);
		free(c->path);
		free(c);
		return NULL;
	}
	if (plen) {
		memcpy(c->path, n->path, plen - 1);
		c->path[plen - 1] = '.';
	}
	memcpy(c->path + plen, name, len);
	c->path[plen + len] = '\0';
	kids[n->nchildren++] = c;
	return c;
}

/* "number|null" -> bits; 0 if a name is unknown. */
static unsigned schema_parse_types(const char *s)
{
	unsigned bits = 0;

	while (*s) {
		size_t len = strcspn(s, "|"), i;

		for (i = 0; i < SCHEMA_NTYPES; i++)
			if (strlen(schema_types[i].name) == len &&
			    strncmp(schema_types[i].name, s, len) == 0)
				break;
		if (i == SCHEMA_NTYPES)
			return 0;
		bits |= schema_types[i].type;
		s += len;
		if (*s == '|' && !*++s)
			return 0;
	}
	return bits;
}

/* Add one "path:TYPE" entry of list `key` to the tree; logs naming the
 * entry on error. */
static int schema_add_entry(struct schema_state *st, const char *key,
                            const char *entry, int required)
{
	const struct iotr_host *h = st->host;
	const char *colon = entry ? strrchr(entry, ':') : NULL;
	const char *p, *end;
	struct schema_node *n = &st->root, *c = NULL;
	unsigned types;

	if (!colon || colon == entry) {
		h->log(st->inst, IOTR_LOG_ERROR, "%s entry \"%s\" %s; write it "
		       "as \"path:TYPE\"", key, entry ? entry : "",
		       colon ? "has no path before ':'" : "has no ':TYPE'");
		return IOTR_EINVAL;
	}
	if (!(types = schema_parse_types(colon + 1))) {
		h->log(st->inst, IOTR_LOG_ERROR, "%s entry \"%s\": the type "
		       "must be one of " SCHEMA_TYPE_LIST ", or several "
		       "joined with |", key, entry);
		return IOTR_EINVAL;
	}
	for (p = entry; p < colon; p = end + 1) {
		end = memchr(p, '.', (size_t)(colon - p));
		if (!end)
			end = colon;
		if (end == p) {
			h->log(st->inst, IOTR_LOG_ERROR, "%s entry \"%s\": the "
			       "path has an empty name (two dots, or a dot at "
			       "an end)", key, entry);
			return IOTR_EINVAL;
		}
		if (!(c = schema_child(n, p, (size_t)(end - p))) &&
		    !(c = schema_add_child(n, p, (size_t)(end - p)))) {
			h->log(st->inst, IOTR_LOG_ERROR, "out of memory reading "
			       "the schema");
			return IOTR_ENOMEM;
		}
		/* A required field needs its parents. */
		if (required)
			c->required = 1;
		n = c;
	}
	if (c->declared) {
		h->log(st->inst, IOTR_LOG_ERROR, "%s entry \"%s\": field '%s' "
		       "is declared twice in require and optional; keep one",
		       key, entry, c->path);
		return IOTR_EINVAL;
	}
	c->declared = 1;
	c->types = types;
	return IOTR_OK;
}

/* A field with fields of its own must be allowed to be an object. */
static int schema_check_tree(struct schema_state *st,
                             const struct schema_node *n)
{
	if (n->name && n->nchildren && !(n->types & SCHEMA_OBJECT)) {
		st->host->log(st->inst, IOTR_LOG_ERROR, "field '%s' is "
		              "declared without type object, but '%s' is a "
		              "path into it; add |object or remove one",
		              n->path, n->children[0]->path);
		return IOTR_EINVAL;
	}
	for (size_t i = 0; i < n->nchildren; i++)
		if (schema_check_tree(st, n->children[i]))
			return IOTR_EINVAL;
	return IOTR_OK;
}

static void schema_free(struct schema_state *st)
{
	schema_node_free(&st->root);
	free(st);
}

static int schema_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	static const char *const lists[] = { "require", "optional" };
	struct schema_state *st;
	int rc = IOTR_OK;

	json_object_seed(0); /* on the host's thread; see json_fields.c */
	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "schema_check transform");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	st->root.types = SCHEMA_OBJECT;
	st->allow_extra = host->param_bool(inst, "allow_extra");
	st->max_errors = (int)host->param_int(inst, "max_errors");
	for (size_t l = 0; l < 2 && rc == IOTR_OK; l++) {
		size_t n = host->param_count(inst, lists[l]);

		for (size_t i = 0; i < n && rc == IOTR_OK; i++)
			rc = schema_add_entry(st, lists[l],
			                      host->param_string_at(inst,
			                              lists[l], i), l == 0);
	}
	if (rc == IOTR_OK)
		rc = schema_check_tree(st, &st->root);
	if (rc == IOTR_OK) {
		st->passed = host->counter(inst, "passed");
		st->failed = host->counter(inst, "failed");
		if (!st->passed || !st->failed) {
			host->log(inst, IOTR_LOG_ERROR, "out of memory "
			          "registering counters");
			rc = IOTR_ENOMEM;
		}
	}
	if (rc != IOTR_OK) {
		schema_free(st);
		return rc;
	}
	*state = st;
	return IOTR_OK;
}

/* --- checking ----------------------------------------------------------------- */

/* Problems found in one message, written into a reason as they come. */
struct schema_report {
	char *buf;
	size_t size, len;
	int n, max;
};

static void schema_problem(struct schema_report *r, const char *fmt, ...)
	IOTR_PRINTF(2, 3);

/* After a cut at r->len, drop a UTF-8 character left incomplete (field
 * names come from the payload), so the reason stays text. */
static void schema_trim_utf8(struct schema_report *r)
{
	size_t i = r->len, need;
	unsigned char c;

	while (i > 0 && ((unsigned char)r->buf[i - 1] & 0xC0) == 0x80)
		i--;
	if (i == 0)
		return;
	c = (unsigned char)r->buf[i - 1];
	need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
	if (r->len - (i - 1) < need)
		r->len = i - 1;
	r->buf[r->len] = '\0';
}

static void schema_problem(struct schema_report *r, const char *fmt, ...)
{
	va_list ap;
	size_t room;
	int w;

	if (r->n++ >= r->max || r->len + 1 >= r->size)
		return;
	room = r->size - r->len;
	w = r->n > 1 ? snprintf(r->buf + r->len, room, "; ") : 0;
	if (w >= 0 && (size_t)w < room) {
		r->len += (size_t)w;
		room -= (size_t)w;
		va_start(ap, fmt);
		w = vsnprintf(r->buf + r->len, room, fmt, ap);
		va_end(ap);
	}
	if (w < 0)
		return;
	if ((size_t)w < room) {
		r->len += (size_t)w;
	} else {
		r->len = r->size - 1;
		schema_trim_utf8(r);
	}
}

static const char *schema_type_of(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "number";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	default: return "null";
	}
}

static int schema_type_ok(const json_t *v, unsigned types)
{
	double d;

	switch (json_typeof(v)) {
	case JSON_OBJECT: return types & SCHEMA_OBJECT;
	case JSON_ARRAY: return types & SCHEMA_ARRAY;
	case JSON_STRING: return types & SCHEMA_STRING;
	case JSON_INTEGER: return types & (SCHEMA_INTEGER | SCHEMA_NUMBER);
	case JSON_REAL:
		/* As in JSON Schema, 3.0 is an integer. */
		d = json_real_value(v);
		return (types & SCHEMA_NUMBER) ||
		       ((types & SCHEMA_INTEGER) && d > -9007199254740992.0 &&
		        d < 9007199254740992.0 && d == (double)(int64_t)d);
	case JSON_TRUE:
	case JSON_FALSE: return types & SCHEMA_BOOLEAN;
	default: return types & SCHEMA_NULL;
	}
}

/* "number or null" for types. */
static void schema_type_names(unsigned types, char *out, size_t size)
{
	size_t len = 0;
	int first = 1;

	out[0] = '\0';
	if (types == SCHEMA_ANY) {
		snprintf(out, size, "any");
		return;
	}
	for (size_t i = 0; i < SCHEMA_NTYPES; i++) {
		if (!(types & schema_types[i].type) ||
		    schema_types[i].type == SCHEMA_ANY)
			continue;
		len += (size_t)snprintf(out + len, len < size ? size - len : 0,
		                        "%s%s", first ? "" : " or ",
		                        schema_types[i].name);
		first = 0;
	}
}

static void schema_check_object(const struct schema_state *st,
                                const struct schema_node *n,
                                const json_t *obj, struct schema_report *r)
{
	const char *key;
	json_t *v;
	char want[96];

	for (size_t i = 0; i < n->nchildren; i++) {
		const struct schema_node *c = n->children[i];

		if (!(v = json_object_get(obj, c->name))) {
			if (c->required)
				schema_problem(r, "field '%s' is missing",
				               c->path);
			continue;
		}
		if (!schema_type_ok(v, c->types)) {
			schema_type_names(c->types, want, sizeof(want));
			schema_problem(r, "field '%s' must be %s, not %s",
			               c->path, want, schema_type_of(v));
			continue;
		}
		if (c->nchildren && json_is_object(v))
			schema_check_object(st, c, v, r);
	}
	if (st->allow_extra)
		return;
	json_object_foreach((json_t *)obj, key, v) {
		if (schema_child(n, key, strlen(key)))
			continue;
		schema_problem(r, "field '%s%s%s' is not allowed "
		               "(allow_extra = false)", n->path ? n->path : "",
		               n->path ? "." : "", key);
	}
}

static int schema_fail(struct schema_state *st, iotr_msg *msg,
                       const char *reason)
{
	st->host->msg_set_error(msg, reason);
	st->host->counter_add(st->failed, 1);
	return IOTR_FAIL;
}

static int schema_process(void *state, iotr_msg *msg)
{
	struct schema_state *st = state;
	const struct iotr_host *h = st->host;
	json_error_t error;
	json_t *root;
	const void *payload;
	size_t len = 0;
	char reason[768];
	struct schema_report r = { reason, 0, 0, 0, st->max_errors };

	payload = h->msg_payload(msg, &len);
	if (!len)
		return schema_fail(st, msg, "payload is empty, not a JSON "
		                   "object");
	root = json_loadb(payload, len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
	                  &error);
	if (!root) {
		snprintf(reason, sizeof(reason), "payload is not JSON: %s "
		         "(line %d, column %d)", error.text, error.line,
		         error.column);
		return schema_fail(st, msg, reason);
	}
	if (!json_is_object(root)) {
		snprintf(reason, sizeof(reason), "payload is a JSON %s, not an "
		         "object", schema_type_of(root));
		json_decref(root);
		return schema_fail(st, msg, reason);
	}
	/* Room for " (and N more)" after the problems. */
	r.size = sizeof(reason) - 32;
	reason[0] = '\0';
	schema_check_object(st, &st->root, root, &r);
	json_decref(root);
	if (r.n) {
		if (r.n > r.max)
			snprintf(reason + r.len, sizeof(reason) - r.len,
			         " (and %d more)", r.n - r.max);
		return schema_fail(st, msg, reason);
	}
	h->counter_add(st->passed, 1);
	return IOTR_OK;
}

static void schema_destroy(void *state)
{
	schema_free(state);
}

static const struct iotr_plugin schema_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "schema_check",
	.version = "1.0.0",
	.description = "Dead-letters a payload that is not a JSON object with "
	               "the required fields and types.",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = schema_params,
	.create = schema_create,
	.process = schema_process,
	.destroy = schema_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &schema_plugin;
}
