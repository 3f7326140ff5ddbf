/*
 * route.h - routes: which messages go where, under which names.
 *
 * A route matches an MQTT topic filter with named captures
 * ("sensors/+site/+device/#") and names the destination topic, key and
 * headers with templates over those captures.  Routes are built once from the
 * config and read-only afterwards, so any thread may use them without locks.
 */
#ifndef IOTR_ROUTE_H
#define IOTR_ROUTE_H

#include <stddef.h>

#include "iotrouter/plugin.h"

enum filter_level_kind {
	LEVEL_LITERAL,
	LEVEL_PLUS,     /* one level, maybe captured */
	LEVEL_HASH      /* the rest, maybe captured; last level only */
};

struct filter_level {
	enum filter_level_kind kind;
	char *text;     /* LEVEL_LITERAL only */
	int capture;    /* index into captures, or -1 */
};

struct topic_filter {
	char *source;          /* as written: sensors/+site/+device/# */
	char *mqtt;            /* names stripped: sensors/+/+/# */
	struct filter_level *levels;
	size_t nlevels;
	char **captures;       /* capture names, in order of appearance */
	size_t ncaptures;
};

/* Parse a filter.  On error returns -1 with a message in err. */
int filter_parse(const char *text, struct topic_filter *f, char *err,
                 size_t errlen);
void filter_free(struct topic_filter *f);
/*
 * Match a topic.  On a match returns 1 and, when spans is not NULL, fills
 * spans[2*i] / spans[2*i+1] with the start offset and length in topic of
 * capture i (spans has room for 2 * ncaptures entries).  Returns 0 otherwise.
 */
int filter_match(const struct topic_filter *f, const char *topic,
                 size_t *spans);
int filter_capture_index(const struct topic_filter *f, const char *name);

struct template;

struct route_header {
	char *name;
	struct template *value;
};



struct route {
	char *name;              /* "route #N" when not named */
	const char *file;        /* config file and line, for messages */
	int line;
	struct iotr_instance *input;  /* NULL: messages from any input */
	struct topic_filter filter;
	struct template *topic;  /* destination topic; NULL: output's default */
	struct template *key;    /* NULL: no key */
	struct route_header *headers;
	size_t nheaders;
	int default_headers;     /* add mqtt.topic, mqtt.qos, received_at */
	struct iotr_instance **transforms;
	size_t ntransforms;
	struct iotr_instance *output;
	int inline_transforms;   /* set by the pipeline: run on the input's
	                            thread (router.inline_transforms) */
};

/*
 * Give a message its route: captures, destination, key and headers.  Returns
 * IOTR_OK, or IOTR_FAIL with the reason set on the message (a template could
 * not be rendered), or IOTR_ENOMEM.
 */
int route_apply(const struct route *r, iotr_msg *msg, const size_t *spans);

/* Add the default headers: mqtt.topic, mqtt.qos, received_at (µs). */
int route_default_headers(iotr_msg *msg);

void route_free(struct route *r);

#endif
