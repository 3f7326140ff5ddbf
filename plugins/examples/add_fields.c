/*
 * add_fields.c - example transform "add_fields": tags each message with
 * static values, as headers and as members of a JSON object payload
 * ({"v":1} becomes {"site":"north","v":1}).
 *
 * An example of a plugin built outside iotrouter's tree: it includes only
 * <iotrouter/plugin.h>, found with pkg-config, and links nothing of the
 * router.  Read it with iotrouter-plugin(3) beside you.
 *
 * Threading: process() runs on several worker threads at once.  Everything
 * in struct add_fields is written in create() and only read afterwards, so
 * it needs no lock; the counters are the host's and are thread-safe.
 */
#include <stdlib.h>
#include <string.h>

#include <iotrouter/plugin.h>

struct add_fields {
	iotr_instance *inst;
	const struct iotr_host *host;   /* valid until destroy() */
	char *members;                  /* "\"site\":\"north\",..." or NULL */
	size_t members_len;
	struct header {
		char *name;
		const char *value;      /* borrowed from the parameters */
	} *headers;
	size_t nheaders;
	int require_object;             /* dead-letter other payloads */
	iotr_counter *tagged;
	iotr_counter *not_object;
};

/* The schema: the router checks the config against it before create(), and
 * `iotrouter --help-plugin add_fields` prints it. */
static const struct iotr_param add_fields_params[] = {
	{ .key = "fields", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "NAME=VALUE pairs added as string members at the front of a "
	         "JSON object payload." },
	{ .key = "headers", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "NAME=VALUE pairs added to each message as headers." },
	{ .key = "require_object", .type = IOTR_PARAM_BOOL,
	  .default_value = "false",
	  .doc = "Dead-letter a message whose payload is not a JSON object, "
	         "instead of passing it on with the headers only." },
	{ .key = NULL }
};

/* Append s to out (NULL: only count) as the inside of a JSON string;
 * returns the length written. */
static size_t json_escape(char *out, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
		size_t k = 1;

		if (c == '"' || c == '\\') {
			esc[1] = (char)c;
			k = 2;
		} else if (c < 0x20) {
			k = 6;
		} else {
			esc[0] = (char)c;
		}
		if (out)
			memcpy(out + n, esc, k);
		n += k;
	}
	return n;
}

/* Split "NAME=VALUE" at the first '='; NULL if there is none or NAME is
 * empty. */
static const char *split_pair(const char *pair, size_t *name_len)
{
	const char *eq = strchr(pair, '=');

	if (!eq || eq == pair)
		return NULL;
	*name_len = (size_t)(eq - pair);
	return eq + 1;
}

/* Copy k bytes of s to out at n (out NULL: only count); the new length. */
static size_t put(char *out, size_t n, const char *s, size_t k)
{
	if (out)
		memcpy(out + n, s, k);
	return n + k;
}

/* Build, once, the JSON members added to each object payload from the
 * `fields` list: measure in the first pass, write in the second. */
static int build_members(struct add_fields *af)
{
	const struct iotr_host *host = af->host;
	size_t count = host->param_count(af->inst, "fields");
	char *out = NULL;

	for (int pass = 0; pass < 2; pass++) {
		size_t n = 0;

		for (size_t i = 0; i < count; i++) {
			const char *pair = host->param_string_at(af->inst,
			                                         "fields", i);
			size_t name_len;
			const char *value = split_pair(pair, &name_len);

			if (!value) {
				host->log(af->inst, IOTR_LOG_ERROR, "fields: "
				          "\"%s\" is not NAME=VALUE; write it "
				          "as \"site=north\"", pair);
				free(out);
				return IOTR_EINVAL;
			}
			if (i)
				n = put(out, n, ",", 1);
			n = put(out, n, "\"", 1);
			n += json_escape(out ? out + n : NULL, pair, name_len);
			n = put(out, n, "\":\"", 3);
			n += json_escape(out ? out + n : NULL, value,
			                 strlen(value));
			n = put(out, n, "\"", 1);
		}
		if (pass == 0 && (n == 0 || !(out = malloc(n))))
			return n == 0 ? IOTR_OK : IOTR_ENOMEM;
		af->members_len = n;
	}
	af->members = out;
	return IOTR_OK;
}

/* Split the `headers` list into names (copied, to end them with a NUL) and
 * values (borrowed: parameter strings live until destroy()). */
static int build_headers(struct add_fields *af)
{
	const struct iotr_host *host = af->host;
	size_t count = host->param_count(af->inst, "headers");

	if (count && !(af->headers = calloc(count, sizeof(*af->headers))))
		return IOTR_ENOMEM;
	for (size_t i = 0; i < count; i++) {
		const char *pair = host->param_string_at(af->inst, "headers",
		                                         i);
		size_t name_len;
		const char *value = split_pair(pair, &name_len);

		if (!value) {
			host->log(af->inst, IOTR_LOG_ERROR, "headers: \"%s\" is "
			          "not NAME=VALUE; write it as \"fleet=f1\"",
			          pair);
			return IOTR_EINVAL;
		}
		if (!(af->headers[i].name = malloc(name_len + 1)))
			return IOTR_ENOMEM;
		memcpy(af->headers[i].name, pair, name_len);
		af->headers[i].name[name_len] = '\0';
		af->headers[i].value = value;
		af->nheaders++;
	}
	return IOTR_OK;
}

static void add_fields_destroy(void *state)
{
	struct add_fields *af = state;

	for (size_t i = 0; i < af->nheaders; i++)
		free(af->headers[i].name);
	free(af->headers);
	free(af->members);
	free(af);
}

/* create(): read and check the parameters; no threads or I/O here, so that
 * a bad config fails fast and cheaply. */
static int add_fields_create(iotr_instance *inst, const struct iotr_host *host,
                             void **state)
{
	struct add_fields *af = calloc(1, sizeof(*af));
	int rc;

	if (!af)
		return IOTR_ENOMEM;
	af->inst = inst;
	af->host = host;
	af->require_object = host->param_bool(inst, "require_object");
	if ((rc = build_headers(af)) != IOTR_OK ||
	    (rc = build_members(af)) != IOTR_OK) {
		if (rc == IOTR_ENOMEM)
			host->log(inst, IOTR_LOG_ERROR, "out of memory");
		add_fields_destroy(af);
		return rc;
	}
	af->tagged = host->counter(inst, "tagged");
	af->not_object = host->counter(inst, "not_object");
	*state = af;
	return IOTR_OK;
}

/* Where the members of a JSON object start: just after its '{', or NULL
 * if the payload does not look like an object.  Only the first character
 * is checked; a transform that must know the payload is valid JSON parses
 * it. */
static const char *object_body(const char *p, size_t len)
{
	size_t i = 0;

	while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' ||
	                   p[i] == '\n'))
		i++;
	return i < len && p[i] == '{' ? p + i + 1 : NULL;
}

/* Does the object whose members start at body have none? */
static int object_empty(const char *body, const char *end)
{
	while (body < end && (*body == ' ' || *body == '\t' ||
	                      *body == '\r' || *body == '\n'))
		body++;
	return body < end && *body == '}';
}

/* process(): called on a worker thread with a message the host owns.  Read
 * it with the host's getters, change it with its setters (which copy), and
 * say what becomes of it: IOTR_OK (pass on), IOTR_DROP, or IOTR_FAIL after
 * msg_set_error() (dead-letter). */
static int add_fields_process(void *state, iotr_msg *msg)
{
	struct add_fields *af = state;
	const struct iotr_host *host = af->host;
	size_t len = 0;
	const char *payload = host->msg_payload(msg, &len);
	const char *body = payload ? object_body(payload, len) : NULL;
	int rc;

	for (size_t i = 0; i < af->nheaders; i++) {
		rc = host->msg_add_header(msg, af->headers[i].name,
		                          af->headers[i].value,
		                          strlen(af->headers[i].value));
		if (rc != IOTR_OK)
			return rc;
	}

	if (!body) {
		host->counter_add(af->not_object, 1);
		if (!af->require_object)
			return IOTR_OK;
		host->msg_set_error(msg, "add_fields: the payload is not a "
		                    "JSON object");
		return IOTR_FAIL;
	}
	if (af->members) {
		/* "{" + members + ("," unless the object is empty) + rest */
		size_t head = (size_t)(body - payload);
		size_t rest = len - head;
		int comma = !object_empty(body, payload + len);
		size_t n = head + af->members_len + (size_t)comma + rest;
		char *out = malloc(n);

		if (!out)
			return IOTR_ENOMEM;
		memcpy(out, payload, head);
		memcpy(out + head, af->members, af->members_len);
		if (comma)
			out[head + af->members_len] = ',';
		memcpy(out + head + af->members_len + (size_t)comma, body,
		       rest);
		/* The setter copies: free our buffer either way.  `payload`
		 * is not valid after this call. */
		rc = host->msg_set_payload(msg, out, n);
		free(out);
		if (rc != IOTR_OK)
			return rc;
	}
	host->counter_add(af->tagged, 1);
	return IOTR_OK;
}

static const struct iotr_plugin add_fields = {
	IOTR_PLUGIN_HEADER,
	.name = "add_fields",
	.version = "1.0.0",
	.description = "example: add static fields and headers to messages",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = add_fields_params,
	.create = add_fields_create,
	.process = add_fields_process,
	.destroy = add_fields_destroy,
};

/* The one symbol the plugin exports. */
IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &add_fields;
}
