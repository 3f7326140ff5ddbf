/*
 * stdout.c - output plugin "stdout": each message as one line of JSON on the
 * router's standard output, for trying routes and rules without Kafka.
 * Threading: deliver() runs on several workers at once; they format in
 * parallel and take stdout_state.lock only to write, so lines never mix.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>

#include "iotrouter/plugin.h"
#include "jsonline.h"

struct stdout_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	enum jsonline_payload_format format;
	int flush_each;
	iotr_counter *written;
	iotr_counter *failed;
	pthread_mutex_t lock;   /* guards writes to stdout */
};

static const struct iotr_param stdout_params[] = {
	JSONLINE_PARAM_PAYLOAD_FORMAT,
	{ .key = "flush_each", .type = IOTR_PARAM_BOOL, .default_value = "true",
	  .doc = "Flush standard output after each line; false leaves it to "
	         "the C library's buffer and to flush at shutdown." },
	{ .key = NULL }
};

static int stdout_create(iotr_instance *inst, const struct iotr_host *host,
                         void **state)
{
	const char *format = host->param_string(inst, "payload_format");
	struct stdout_state *st;

	jsonline_init();
	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "stdout output");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	st->flush_each = host->param_bool(inst, "flush_each");
	if (jsonline_parse_format(format, &st->format) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "payload_format \"%s\" is not "
		          "one of %s; fix `payload_format`",
		          format ? format : "", JSONLINE_PAYLOAD_FORMATS);
		free(st);
		return IOTR_EINVAL;
	}
	st->written = host->counter(inst, "written");
	st->failed = host->counter(inst, "failed");
	if (!st->written || !st->failed) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory registering the "
		          "counters of the stdout output");
		free(st);
		return IOTR_ENOMEM;
	}
	if (pthread_mutex_init(&st->lock, NULL) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "cannot create a mutex for the "
		          "stdout output");
		free(st);
		return IOTR_ENOMEM;
	}
	*state = st;
	return IOTR_OK;
}

/* Mark msg failed for the host (no delivered() call then) and count it. */
static int stdout_fail(struct stdout_state *st, iotr_msg *msg, int status,
                       const char *reason)
{
	st->host->msg_set_error(msg, reason);
	st->host->counter_add(st->failed, 1);
	return status;
}

static int stdout_deliver(void *state, iotr_msg *msg)
{
	struct stdout_state *st = state;
	char reason[512];
	char *line;
	size_t len;
	int rc, failed = 0, err = 0, shutdown = 0;

	rc = jsonline_format(st->host, msg, st->format, &line, &len, reason,
	                     sizeof(reason));
	if (rc == IOTR_ENOMEM)
		return stdout_fail(st, msg, IOTR_ERETRY, reason);
	if (rc != IOTR_OK)
		return stdout_fail(st, msg, IOTR_FAIL, reason);

	pthread_mutex_lock(&st->lock);
	/* A worker that waited here while a write was stuck (a reader that
	 * stopped reading a pipe) gives up once the deadline has passed. */
	if (st->host->stopping(st->inst) >= 2) {
		shutdown = 1;
	} else if (fwrite(line, 1, len, stdout) != len
	           || (st->flush_each && fflush(stdout) != 0)) {
		failed = 1;
		err = errno;
		/* The message is reported failed, so its line must not come out
		 * with a later flush; with flush_each the buffer holds only it. */
		if (st->flush_each)
			__fpurge(stdout);
		clearerr(stdout);
	}
	pthread_mutex_unlock(&st->lock);
	free(line);

	if (shutdown)
		return IOTR_ESHUTDOWN;
	if (failed) {
		snprintf(reason, sizeof(reason),
		         "cannot write to standard output: %s",
		         err ? strerror(err) : "unknown error");
		return stdout_fail(st, msg, IOTR_FAIL, reason);
	}
	st->host->counter_add(st->written, 1);
	st->host->delivered(st->inst, msg, IOTR_OK, NULL);
	return IOTR_OK;
}

/*
 * Every message was reported in deliver(), so flushing is all that is left.
 * With flush_each = false a failure here concerns lines that were already
 * reported delivered; it is logged and returned so it is not silent.
 */
static int stdout_flush(void *state, int64_t deadline_ms)
{
	struct stdout_state *st = state;
	int rc = IOTR_OK;

	(void)deadline_ms;
	pthread_mutex_lock(&st->lock);
	if (fflush(stdout) != 0) {
		st->host->log(st->inst, IOTR_LOG_ERROR, "cannot flush standard "
		              "output: %s; lines since the last flush may be "
		              "lost", strerror(errno));
		clearerr(stdout);
		rc = IOTR_FAIL;
	}
	pthread_mutex_unlock(&st->lock);
	return rc;
}

static void stdout_destroy(void *state)
{
	struct stdout_state *st = state;

	pthread_mutex_destroy(&st->lock);
	free(st);
}

static const struct iotr_plugin stdout_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "stdout",
	.version = "1.0.0",
	.description = "Writes each message as one line of JSON to standard "
	               "output, for trying routes without Kafka.",
	.kind = IOTR_PLUGIN_OUTPUT,
	.params = stdout_params,
	.create = stdout_create,
	.deliver = stdout_deliver,
	.flush = stdout_flush,
	.destroy = stdout_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &stdout_plugin;
}
