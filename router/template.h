/*
 * template.h - strings with ${...} references, rendered per message.
 *
 *   ${name}        a named capture of the route's filter (+name or #name)
 *   ${topic}       the source topic
 *   ${topic[N]}    level N (from 0) of the source topic
 *   ${json:a.b.0}  a field of the JSON payload (objects by name, arrays by
 *                  index); strings as they are, other values as JSON text
 *   ${header:x}    a header of the message
 *   ${qos}         the QoS, 0..2
 *   $$             a literal '$'
 *
 * A template is parsed once and read-only afterwards (thread-safe).
 */
#ifndef IOTR_TEMPLATE_H
#define IOTR_TEMPLATE_H

#include <stddef.h>

#include "iotrouter/plugin.h"

struct msg_buf;

struct topic_filter;
struct template;

/* Parse text.  Capture names are checked against filter (may be NULL: then
 * any capture reference is an error).  On error returns NULL and writes a
 * message to err. */
struct template *template_parse(const char *text,
                                const struct topic_filter *filter,
                                char *err, size_t errlen);
void template_free(struct template *t);

/* Non-zero if the template has no references (a plain string). */
int template_is_literal(const struct template *t);
const char *template_source(const struct template *t);

/*
 * Render for a message into a new malloc'd NUL-terminated string (*out,
 * length in *outlen).  Returns IOTR_OK, IOTR_ENOMEM, or IOTR_FAIL with a
 * message in err when a reference has no value (no such JSON field, payload
 * not JSON, no such header or level).
 */
int template_render(const struct template *t, iotr_msg *msg, char **out,
                    size_t *outlen, char *err, size_t errlen);
/* The same into out, replacing what it held: out->data is the text and
 * out->len its length.  out may start in the caller's memory (MSG_BUF_ON),
 * so that a short text costs no allocation; msg_buf_release() it when done,
 * also after a failure. */
int template_render_to(const struct template *t, iotr_msg *msg,
                       struct msg_buf *out, char *err, size_t errlen);

#endif
