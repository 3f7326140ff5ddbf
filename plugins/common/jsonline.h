/*
 * jsonline.h - one message as one line of JSON, for the stdout and file
 * output plugins.  Compiled into each plugin's .so and hidden there: a plugin
 * exports only iotr_plugin_entry.  Every function is reentrant; callers may
 * format on several worker threads at once.
 */
#ifndef IOTR_JSONLINE_H
#define IOTR_JSONLINE_H

#include <stddef.h>

#include "iotrouter/plugin.h"

#if defined(__GNUC__)
#define JSONLINE_HIDDEN __attribute__((visibility("hidden")))
#else
#define JSONLINE_HIDDEN
#endif

/* How the payload appears under "payload". */
enum jsonline_payload_format {
	JSONLINE_PAYLOAD_AUTO,   /* JSON value if it parses, else as STRING */
	JSONLINE_PAYLOAD_JSON,   /* JSON value; a payload that is not JSON fails */
	JSONLINE_PAYLOAD_STRING, /* a string, or {"base64": ...} for binary */
	JSONLINE_PAYLOAD_BASE64  /* always {"base64": ...} */
};

/* The accepted values of payload_format, for error messages. */
#define JSONLINE_PAYLOAD_FORMATS "auto, json, string, base64"

/* The payload_format entry of a plugin's parameter table, shared so that
 * both plugins document it the same way. */
#define JSONLINE_PARAM_PAYLOAD_FORMAT \
	{ .key = "payload_format", .type = IOTR_PARAM_STRING, \
	  .default_value = "auto", \
	  .doc = "How the payload is written: auto (JSON if it parses, else " \
	         "a string), json (JSON or fail the message), string, or " \
	         "base64." }

/*
 * jsonline_init - prepare jansson; call from create(), before workers run.
 */
JSONLINE_HIDDEN void jsonline_init(void);

/*
 * jsonline_parse_format - read a payload_format value.
 *
 * Returns 0 and sets *format, or -1 when text is not one of
 * JSONLINE_PAYLOAD_FORMATS (the caller names the value in its error).
 */
JSONLINE_HIDDEN int jsonline_parse_format(const char *text,
                                          enum jsonline_payload_format *format);

/*
 * jsonline_format - render msg as one line of compact JSON ending in '\n'.
 *
 * host, msg: borrowed; msg is only read.
 * *line:     receives a buffer from malloc(3) that the caller frees; it holds
 *            *len bytes, the last one '\n', and no other newline.
 * reason:    a buffer of reason_size bytes that receives, on failure, a
 *            sentence for msg_set_error().
 *
 * Returns IOTR_OK; IOTR_FAIL when format is JSONLINE_PAYLOAD_JSON and the
 * payload is not JSON; IOTR_ENOMEM when out of memory.
 */
JSONLINE_HIDDEN int jsonline_format(const struct iotr_host *host,
                                    const iotr_msg *msg,
                                    enum jsonline_payload_format format,
                                    char **line, size_t *len,
                                    char *reason, size_t reason_size);

#endif
