/*
 * jsonline.c - render a message as one line of JSON (format in jsonline.h and
 * doc/plugin-stdout-file.md).  No state outside the call: worker threads
 * format in parallel, and only the plugins' writes are serialised.
 */
#include "jsonline.h"
#include "utf8.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSONLINE_PAYLOAD_KEY ",\"payload\":"

void jsonline_init(void)
{
	/* jansson seeds its hash function on the first json_object(), behind
	 * an unlocked check that workers making their first objects at once
	 * would race on.  Seeding here, on the host's thread, settles it
	 * early; it does nothing when the router has seeded already. */
	json_object_seed(0);
}

int jsonline_parse_format(const char *text,
                          enum jsonline_payload_format *format)
{
	static const struct {
		const char *name;
		enum jsonline_payload_format format;
	} names[] = {
		{ "auto", JSONLINE_PAYLOAD_AUTO },
		{ "json", JSONLINE_PAYLOAD_JSON },
		{ "string", JSONLINE_PAYLOAD_STRING },
		{ "base64", JSONLINE_PAYLOAD_BASE64 },
	};

	for (size_t i = 0; text && i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(text, names[i].name) == 0) {
			*format = names[i].format;
			return 0;
		}
	}
	return -1;
}

/*
 * Non-zero if s is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF) and holds no NUL.  NUL is refused
 * although JSON can escape it, because many readers (jansson by default,
 * C programs generally) stop at it.
 */
static int jsonline_is_text(const unsigned char *s, size_t len)
{
	size_t i = 0, n;

	while (i < len) {
		if (s[i] == 0 || !(n = utf8_char_length(s + i, len - i)))
			return 0;
		i += n;
	}
	return 1;
}

/* Length of the base64 of len bytes, or 0 if it would not fit a size_t. */
static size_t jsonline_base64_len(size_t len)
{
	if (len / 3 >= SIZE_MAX / 4 - 1)
		return 0;
	return (len + 2) / 3 * 4;
}

/* Standard base64 (RFC 4648 section 4) with padding; out holds
 * jsonline_base64_len(len) bytes.  No NUL is written. */
static void jsonline_base64_encode(char *out, const void *data, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *in = data;
	size_t i = 0;

	for (; len - i >= 3; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8
		             | in[i + 2];
		*out++ = alphabet[v >> 18];
		*out++ = alphabet[v >> 12 & 63];
		*out++ = alphabet[v >> 6 & 63];
		*out++ = alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		*out++ = alphabet[v >> 18];
		*out++ = alphabet[v >> 12 & 63];
		*out++ = '=';
		*out++ = '=';
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*out++ = alphabet[v >> 18];
		*out++ = alphabet[v >> 12 & 63];
		*out++ = alphabet[v >> 6 & 63];
		*out++ = '=';
	}
}

/* "<prefix><base64 of data>" as a NUL-terminated string from malloc(3), or
 * NULL when out of memory. */
static char *jsonline_base64_string(const char *prefix, const void *data,
                                    size_t len)
{
	size_t plen = strlen(prefix);
	size_t blen = jsonline_base64_len(len);
	char *out;

	if (blen == 0 && len > 0)
		return NULL;
	out = malloc(plen + blen + 1);
	if (!out)
		return NULL;
	memcpy(out, prefix, plen);
	jsonline_base64_encode(out + plen, data, len);
	out[plen + blen] = '\0';
	return out;
}

/* {"base64": "..."}, or NULL when out of memory. */
static json_t *jsonline_base64(const void *data, size_t len)
{
	char *text = jsonline_base64_string("", data, len);
	json_t *obj;

	if (!text)
		return NULL;
	obj = json_object();
	/* set_new_nocheck releases the value itself when it fails. */
	if (!obj || json_object_set_new_nocheck(obj, "base64",
	                                        json_string_nocheck(text))) {
		json_decref(obj);
		obj = NULL;
	}
	free(text);
	return obj;
}

/* A JSON string when the bytes are text (jsonline_is_text), else
 * {"base64": ...}.  NULL when out of memory. */
static json_t *jsonline_bytes(const void *data, size_t len)
{
	if (len == 0)
		return json_string_nocheck("");
	if (jsonline_is_text(data, len))
		return json_stringn_nocheck(data, len);
	return jsonline_base64(data, len);
}

/*
 * Add one header.  A repeated name collects its values in an array, in
 * order, because MQTT 5 user properties may repeat a name and a debugging
 * view should lose none of them.  A name that is not text becomes
 * "base64:<name in base64>".  Takes the reference to value.
 */
static int jsonline_add_header(json_t *headers, const char *name,
                               json_t *value)
{
	char *encoded = NULL;
	json_t *prev, *list;
	int rc;

	if (!jsonline_is_text((const unsigned char *)name, strlen(name))) {
		encoded = jsonline_base64_string("base64:", name, strlen(name));
		if (!encoded) {
			json_decref(value);
			return -1;
		}
		name = encoded;
	}
	prev = json_object_get(headers, name);
	if (!prev) {
		rc = json_object_set_new_nocheck(headers, name, value);
	} else if (json_is_array(prev)) {
		/* Single values are strings or objects, so an array can only be
		 * one this function made. */
		rc = json_array_append_new(prev, value);
	} else {
		list = json_array();
		if (!list) {
			json_decref(value);
			rc = -1;
		} else if (json_array_append(list, prev)
		           || json_array_append_new(list, value)) {
			json_decref(list);
			rc = -1;
		} else {
			rc = json_object_set_new_nocheck(headers, name, list);
		}
	}
	free(encoded);
	return rc;
}

/* {"name": value, ...}, or NULL when out of memory. */
static json_t *jsonline_headers(const struct iotr_host *host,
                                const iotr_msg *msg)
{
	json_t *headers = json_object();
	size_t count = host->msg_header_count(msg);

	for (size_t i = 0; headers && i < count; i++) {
		const char *name;
		const void *value;
		size_t len;

		if (host->msg_header_at(msg, i, &name, &value, &len) != IOTR_OK)
			break;
		if (jsonline_add_header(headers, name,
		                        jsonline_bytes(value, len))) {
			json_decref(headers);
			headers = NULL;
		}
	}
	return headers;
}

/* Text that may be absent: a string, {"base64": ...} or null.  NULL when out
 * of memory. */
static json_t *jsonline_optional(const char *text, size_t len)
{
	return text ? jsonline_bytes(text, len) : json_null();
}

/* Every field but the payload, in the documented order; NULL when out of
 * memory.  The payload is added as text by jsonline_format(). */
static json_t *jsonline_head(const struct iotr_host *host, const iotr_msg *msg)
{
	const char *dest = host->msg_dest(msg);
	const char *topic = host->msg_topic(msg);
	size_t key_len = 0;
	const char *key = host->msg_key(msg, &key_len);
	json_t *head = json_object();

	/* set_new_nocheck fails on a NULL value, so one test covers every
	 * allocation; the keys are ASCII literals. */
	if (!head
	    || json_object_set_new_nocheck(head, "topic",
	           jsonline_optional(dest, dest ? strlen(dest) : 0))
	    || json_object_set_new_nocheck(head, "source_topic",
	           jsonline_bytes(topic, strlen(topic)))
	    || json_object_set_new_nocheck(head, "key",
	           jsonline_optional(key, key_len))
	    || json_object_set_new_nocheck(head, "qos",
	           json_integer(host->msg_qos(msg)))
	    || json_object_set_new_nocheck(head, "retain",
	           json_boolean(host->msg_retain(msg)))
	    || json_object_set_new_nocheck(head, "time",
	           json_integer((json_int_t)host->msg_time(msg)))
	    || json_object_set_new_nocheck(head, "headers",
	           jsonline_headers(host, msg))) {
		json_decref(head);
		return NULL;
	}
	return head;
}

/*
 * Copy JSON text without the whitespace between tokens.  Only for text that
 * jansson accepted: there a raw newline can only be whitespace, since control
 * characters inside strings must be escaped.  Returns the length written,
 * at most len.
 */
static size_t jsonline_compact(char *out, const char *in, size_t len)
{
	size_t n = 0;
	int in_string = 0, escaped = 0;

	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (in_string) {
			if (escaped)
				escaped = 0;
			else if (c == '\\')
				escaped = 1;
			else if (c == '"')
				in_string = 0;
		} else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			continue;
		} else if (c == '"') {
			in_string = 1;
		}
		out[n++] = c;
	}
	return n;
}

int jsonline_format(const struct iotr_host *host, const iotr_msg *msg,
                    enum jsonline_payload_format format, char **line,
                    size_t *len, char *reason, size_t reason_size)
{
	size_t payload_len = 0;
	const void *payload = host->msg_payload(msg, &payload_len);
	json_t *head = NULL, *value = NULL;
	int raw = 0; /* the payload is JSON and is copied in as sent */
	size_t head_len, value_len, n;
	char *buf = NULL;
	int rc = IOTR_ENOMEM;

	if (format == JSONLINE_PAYLOAD_AUTO || format == JSONLINE_PAYLOAD_JSON) {
		json_error_t error;
		json_t *parsed = NULL;

		if (payload_len > 0)
			parsed = json_loadb(payload, payload_len,
			                    JSON_DECODE_ANY, &error);
		else
			snprintf(error.text, sizeof(error.text), "it is empty");
		/*
		 * jansson is only the validator.  The payload goes in as sent,
		 * minus whitespace, because re-encoding changes what the
		 * sender wrote: 0.1 would print as 0.10000000000000001, and
		 * repeated keys would collapse.
		 */
		raw = parsed != NULL;
		json_decref(parsed);
		if (!raw && format == JSONLINE_PAYLOAD_JSON) {
			snprintf(reason, reason_size,
			         "payload is not JSON (%s), and payload_format "
			         "is \"json\"; use \"auto\" to write other "
			         "payloads as strings", error.text);
			return IOTR_FAIL;
		}
	}
	if (!raw) {
		value = format == JSONLINE_PAYLOAD_BASE64
		        ? jsonline_base64(payload, payload_len)
		        : jsonline_bytes(payload, payload_len);
		if (!value)
			goto out;
	}
	head = jsonline_head(host, msg);
	if (!head)
		goto out;

	/* json_dumpb rather than json_dumps: the buffer is ours, so the
	 * caller's free(3) matches even if the router changed jansson's
	 * allocator. */
	head_len = json_dumpb(head, NULL, 0, JSON_COMPACT);
	value_len = raw ? payload_len
	                : json_dumpb(value, NULL, 0,
	                             JSON_COMPACT | JSON_ENCODE_ANY);
	if (head_len < 2 || value_len == 0)
		goto out;
	/* head without its '}', the key, the value, "}\n". */
	buf = malloc(head_len - 1 + strlen(JSONLINE_PAYLOAD_KEY) + value_len
	             + 2);
	if (!buf)
		goto out;
	n = json_dumpb(head, buf, head_len, JSON_COMPACT) - 1;
	memcpy(buf + n, JSONLINE_PAYLOAD_KEY, strlen(JSONLINE_PAYLOAD_KEY));
	n += strlen(JSONLINE_PAYLOAD_KEY);
	if (raw)
		n += jsonline_compact(buf + n, payload, payload_len);
	else
		n += json_dumpb(value, buf + n, value_len,
		                JSON_COMPACT | JSON_ENCODE_ANY);
	buf[n++] = '}';
	buf[n++] = '\n';
	*line = buf;
	*len = n;
	rc = IOTR_OK;
out:
	if (rc == IOTR_ENOMEM)
		snprintf(reason, reason_size,
		         "out of memory while writing the message as JSON");
	json_decref(head);
	json_decref(value);
	return rc;
}
