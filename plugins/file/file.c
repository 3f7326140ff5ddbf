/*
 * file.c - output plugin "file": appends each message as one line of JSON to
 * a file, for trying routes and rules without Kafka.
 * Threading: deliver() runs on several workers at once; they format in
 * parallel and take file_state.lock to check the size limit and write, so
 * lines never mix and the limit check and the write are one step.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "iotrouter/plugin.h"
#include "jsonline.h"

struct file_state {
	iotr_instance *inst;
	const struct iotr_host *host;
	const char *path;       /* borrowed: host parameters live to destroy() */
	enum jsonline_payload_format format;
	int sync_each;          /* fdatasync after each line */
	int64_t max_bytes;      /* 0: no limit */
	iotr_counter *written;
	iotr_counter *failed;

	int fd;                 /* -1 until start() */
	int regular;            /* fd is a regular file (sync and size apply) */

	pthread_mutex_t lock;   /* guards the writes and the fields below */
	int partial;            /* a failed write left half a line in the file */
	int limit_logged;       /* max_bytes was reported; quiet until a write
	                         * succeeds again */
};

static const struct iotr_param file_params[] = {
	{ .key = "path", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "The file the lines are appended to; created with mode 0644 "
	         "(less the umask) if missing, never truncated." },
	JSONLINE_PARAM_PAYLOAD_FORMAT,
	{ .key = "fsync", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Call fdatasync(2) after each line, so a message counts as "
	         "delivered only once it is on disk." },
	{ .key = "max_bytes", .type = IOTR_PARAM_INT, .default_value = "0",
	  .doc = "Largest size of the file in bytes; a message that would "
	         "grow it past this fails.  0 means no limit.",
	  .min = 0, .max = INT64_MAX },
	{ .key = NULL }
};

static int file_create(iotr_instance *inst, const struct iotr_host *host,
                       void **state)
{
	const char *format = host->param_string(inst, "payload_format");
	struct file_state *st;

	jsonline_init();
	st = calloc(1, sizeof(*st));
	if (!st) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the "
		          "file output");
		return IOTR_ENOMEM;
	}
	st->inst = inst;
	st->host = host;
	st->fd = -1;
	st->path = host->param_string(inst, "path");
	st->sync_each = host->param_bool(inst, "fsync");
	st->max_bytes = host->param_int(inst, "max_bytes");
	if (!st->path || st->path[0] == '\0') {
		host->log(inst, IOTR_LOG_ERROR, "`path` is empty; set it to the "
		          "file the lines should go to");
		goto invalid;
	}
	if (jsonline_parse_format(format, &st->format) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "payload_format \"%s\" is not "
		          "one of %s; fix `payload_format`",
		          format ? format : "", JSONLINE_PAYLOAD_FORMATS);
		goto invalid;
	}
	if (st->max_bytes < 0) {
		host->log(inst, IOTR_LOG_ERROR, "max_bytes = %lld is negative; "
		          "use 0 for no limit", (long long)st->max_bytes);
		goto invalid;
	}
	st->written = host->counter(inst, "written");
	st->failed = host->counter(inst, "failed");
	if (!st->written || !st->failed) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory registering the "
		          "counters of the file output");
		free(st);
		return IOTR_ENOMEM;
	}
	if (pthread_mutex_init(&st->lock, NULL) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "cannot create a mutex for the "
		          "file output");
		free(st);
		return IOTR_ENOMEM;
	}
	*state = st;
	return IOTR_OK;
invalid:
	free(st);
	return IOTR_EINVAL;
}

/* What a person can do about a failed open(2). */
static const char *file_open_hint(int err)
{
	switch (err) {
	case ENOENT:
	case ENOTDIR:
		return "create the directory or fix `path`";
	case EACCES:
	case EPERM:
	case EROFS:
		return "let the router's user write there or fix `path`";
	case EISDIR:
		return "`path` names a directory; name a file in it";
	default:
		return "fix `path`";
	}
}

static int file_start(void *state)
{
	struct file_state *st = state;
	struct stat sb;

	st->fd = open(st->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	              0644);
	if (st->fd < 0) {
		int err = errno;

		st->host->log(st->inst, IOTR_LOG_ERROR, "cannot open %s: %s; %s",
		              st->path, strerror(err), file_open_hint(err));
		return IOTR_FAIL;
	}
	if (fstat(st->fd, &sb) != 0) {
		st->host->log(st->inst, IOTR_LOG_ERROR, "cannot stat %s: %s; "
		              "fix `path`", st->path, strerror(errno));
		return IOTR_FAIL;
	}
	/* A FIFO or /dev/stderr has no size and nothing to sync. */
	st->regular = S_ISREG(sb.st_mode);
	if (!st->regular && (st->sync_each || st->max_bytes > 0))
		st->host->log(st->inst, IOTR_LOG_WARNING, "%s is not a regular "
		              "file, so `fsync` and `max_bytes` do not apply",
		              st->path);
	return IOTR_OK;
}

/* Write all of buf, going on after EINTR and short writes.  Returns 0 or an
 * errno value; *done receives the bytes that reached the file. */
static int file_write_all(int fd, const char *buf, size_t len, size_t *done)
{
	*done = 0;
	while (*done < len) {
		ssize_t n = write(fd, buf + *done, len - *done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (n == 0) /* not expected from a file; do not spin */
			return EIO;
		*done += (size_t)n;
	}
	return 0;
}

/*
 * Append one line under the lock.  Returns IOTR_OK, or a status with reason
 * filled in.  The line goes out in one write(2) so that other processes
 * appending to the same file (O_APPEND) cannot split it; only a disk that
 * fills mid-line makes a second call.
 */
static int file_append(struct file_state *st, const char *line, size_t len,
                       char *reason, size_t reason_size)
{
	char *joined = NULL;
	size_t done;
	int err;

	if (st->fd < 0) {
		snprintf(reason, reason_size, "file output for %s was not "
		         "started", st->path);
		return IOTR_FAIL;
	}
	if (st->partial) {
		/* End the half line the last failure left, so that only that
		 * one line is unreadable. */
		joined = malloc(len + 1);
		if (!joined) {
			snprintf(reason, reason_size, "out of memory while "
			         "writing to %s", st->path);
			return IOTR_ERETRY;
		}
		joined[0] = '\n';
		memcpy(joined + 1, line, len);
		line = joined;
		len++;
	}
	if (st->max_bytes > 0 && st->regular) {
		struct stat sb;

		/* fstat, not a count of our own writes: the file may be
		 * truncated (logrotate copytruncate) or shared. */
		if (fstat(st->fd, &sb) != 0) {
			snprintf(reason, reason_size, "cannot stat %s: %s",
			         st->path, strerror(errno));
			free(joined);
			return IOTR_FAIL;
		}
		if ((uint64_t)sb.st_size + len > (uint64_t)st->max_bytes) {
			snprintf(reason, reason_size, "%s would grow past "
			         "max_bytes = %lld (it holds %lld bytes, the line "
			         "has %zu); rotate the file or raise `max_bytes`",
			         st->path, (long long)st->max_bytes,
			         (long long)sb.st_size, len);
			if (!st->limit_logged)
				st->host->log(st->inst, IOTR_LOG_WARNING, "%s",
				              reason);
			st->limit_logged = 1;
			free(joined);
			return IOTR_FAIL;
		}
	}
	err = file_write_all(st->fd, line, len, &done);
	free(joined);
	if (err) {
		if (done > 0)
			st->partial = 1;
		snprintf(reason, reason_size, "cannot write to %s: %s",
		         st->path, strerror(err));
		return IOTR_FAIL;
	}
	st->partial = 0;
	st->limit_logged = 0;
	if (st->sync_each && st->regular && fdatasync(st->fd) != 0) {
		snprintf(reason, reason_size, "wrote to %s but fdatasync "
		         "failed: %s; the line may be lost if the machine "
		         "stops", st->path, strerror(errno));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

/* Mark msg failed for the host (no delivered() call then) and count it. */
static int file_fail(struct file_state *st, iotr_msg *msg, int status,
                     const char *reason)
{
	st->host->msg_set_error(msg, reason);
	st->host->counter_add(st->failed, 1);
	return status;
}

static int file_deliver(void *state, iotr_msg *msg)
{
	struct file_state *st = state;
	char reason[512];
	char *line;
	size_t len;
	int rc;

	rc = jsonline_format(st->host, msg, st->format, &line, &len, reason,
	                     sizeof(reason));
	if (rc == IOTR_ENOMEM)
		return file_fail(st, msg, IOTR_ERETRY, reason);
	if (rc != IOTR_OK)
		return file_fail(st, msg, IOTR_FAIL, reason);

	pthread_mutex_lock(&st->lock);
	/* A worker that waited here behind a stuck write gives up once the
	 * shutdown deadline has passed. */
	if (st->host->stopping(st->inst) >= 2)
		rc = IOTR_ESHUTDOWN;
	else
		rc = file_append(st, line, len, reason, sizeof(reason));
	pthread_mutex_unlock(&st->lock);
	free(line);

	if (rc == IOTR_ESHUTDOWN)
		return rc;
	if (rc != IOTR_OK)
		return file_fail(st, msg, rc, reason);
	st->host->counter_add(st->written, 1);
	st->host->delivered(st->inst, msg, IOTR_OK, NULL);
	return IOTR_OK;
}

/* Every message was reported in deliver(); what is left is to get the
 * lines from the page cache to the disk. */
static int file_flush(void *state, int64_t deadline_ms)
{
	struct file_state *st = state;

	(void)deadline_ms;
	if (st->fd < 0 || !st->regular)
		return IOTR_OK;
	if (fdatasync(st->fd) != 0) {
		st->host->log(st->inst, IOTR_LOG_ERROR, "fdatasync of %s failed: "
		              "%s; lines written lately may be lost if the "
		              "machine stops", st->path, strerror(errno));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

static void file_destroy(void *state)
{
	struct file_state *st = state;

	if (st->fd >= 0 && close(st->fd) != 0)
		st->host->log(st->inst, IOTR_LOG_ERROR, "closing %s failed: %s; "
		              "the last lines may be lost", st->path,
		              strerror(errno));
	pthread_mutex_destroy(&st->lock);
	free(st);
}

static const struct iotr_plugin file_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "file",
	.version = "1.0.0",
	.description = "Appends each message as one line of JSON to a file, "
	               "for trying routes without Kafka.",
	.kind = IOTR_PLUGIN_OUTPUT,
	.params = file_params,
	.create = file_create,
	.start = file_start,
	.deliver = file_deliver,
	.flush = file_flush,
	.destroy = file_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &file_plugin;
}
