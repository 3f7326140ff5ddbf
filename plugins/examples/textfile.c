/*
 * textfile.c - example output "textfile": appends each message to a file
 * as one line of text, DEST<TAB>KEY<TAB>HEADERS<TAB>PAYLOAD, for eyes and
 * for grep.  Bytes that would break the line (tab, newline, backslash and
 * other control bytes) are written as \t, \n, \\ and \xHH.
 *
 * An example of an output built outside iotrouter's tree, with the whole
 * output contract: accept a message in deliver(), report it exactly once
 * with host->delivered(), and account for everything in flush().
 *
 * Threading: deliver() runs on several worker threads at once.  Each formats
 * its line on its own, then takes `lock` for the write, so lines never mix.
 * Every message is written (and reported) before deliver() returns, so
 * flush() has nothing left to wait for.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iotrouter/plugin.h>

struct textfile {
	iotr_instance *inst;
	const struct iotr_host *host;
	const char *path;       /* borrowed: parameters live until destroy() */
	int fd;                 /* -1 until start() */
	pthread_mutex_t lock;   /* one write at a time */
	iotr_counter *lines;
	iotr_counter *errors;
};

static const struct iotr_param textfile_params[] = {
	{ .key = "path", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "The file the lines are appended to; created if missing." },
	{ .key = NULL }
};

/* A growing line buffer; on allocation failure `failed` is set and further
 * appends do nothing. */
struct line {
	char *buf;
	size_t len, cap;
	int failed;
};

static void line_put(struct line *l, const char *s, size_t n)
{
	if (l->failed)
		return;
	if (l->len + n > l->cap) {
		size_t cap = l->cap ? l->cap : 256;
		char *buf;

		while (cap < l->len + n)
			cap *= 2;
		if (!(buf = realloc(l->buf, cap))) {
			l->failed = 1;
			return;
		}
		l->buf = buf;
		l->cap = cap;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

/* Append bytes, escaped so that they stay inside one column. */
static void line_put_escaped(struct line *l, const void *data, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = data;

	for (size_t i = 0; i < n; i++) {
		char esc[4] = { '\\', 'x', hex[p[i] >> 4], hex[p[i] & 15] };

		if (p[i] == '\t')
			line_put(l, "\\t", 2);
		else if (p[i] == '\n')
			line_put(l, "\\n", 2);
		else if (p[i] == '\\')
			line_put(l, "\\\\", 2);
		else if (p[i] < 0x20 || p[i] == 0x7f)
			line_put(l, esc, 4);
		else
			line_put(l, (const char *)&p[i], 1);
	}
}

static void line_put_str(struct line *l, const char *s)
{
	line_put_escaped(l, s, strlen(s));
}

/* DEST<TAB>KEY<TAB>NAME=VALUE;NAME=VALUE<TAB>PAYLOAD<LF>; "-" for none. */
static void format_message(const struct iotr_host *host, const iotr_msg *msg,
                           struct line *l)
{
	const char *dest = host->msg_dest(msg);
	size_t key_len = 0, len = 0, n = host->msg_header_count(msg);
	const char *key = host->msg_key(msg, &key_len);
	const void *payload = host->msg_payload(msg, &len);

	line_put_str(l, dest ? dest : "-");
	line_put(l, "\t", 1);
	if (key)
		line_put_escaped(l, key, key_len);
	else
		line_put(l, "-", 1);
	line_put(l, "\t", 1);
	if (n == 0)
		line_put(l, "-", 1);
	for (size_t i = 0; i < n; i++) {
		const char *name;
		const void *value;
		size_t vlen;

		if (host->msg_header_at(msg, i, &name, &value, &vlen) != IOTR_OK)
			continue;
		if (i)
			line_put(l, ";", 1);
		line_put_str(l, name);
		line_put(l, "=", 1);
		line_put_escaped(l, value, vlen);
	}
	line_put(l, "\t", 1);
	line_put_escaped(l, payload, len);
	line_put(l, "\n", 1);
}

static int textfile_create(iotr_instance *inst, const struct iotr_host *host,
                           void **state)
{
	struct textfile *tf;
	const char *path = host->param_string(inst, "path");

	if (!path || !*path) {
		host->log(inst, IOTR_LOG_ERROR, "`path` is empty; set it to "
		          "the file the lines should go to");
		return IOTR_EINVAL;
	}
	if (!(tf = calloc(1, sizeof(*tf))))
		return IOTR_ENOMEM;
	if (pthread_mutex_init(&tf->lock, NULL) != 0) {
		free(tf);
		return IOTR_ENOMEM;
	}
	tf->inst = inst;
	tf->host = host;
	tf->path = path;
	tf->fd = -1;
	tf->lines = host->counter(inst, "lines");
	tf->errors = host->counter(inst, "errors");
	*state = tf;
	return IOTR_OK;
}

/* start(): the first I/O.  A failure here stops the router, with our
 * message saying what to fix. */
static int textfile_start(void *state)
{
	struct textfile *tf = state;

	tf->fd = open(tf->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	              0644);
	if (tf->fd < 0) {
		tf->host->log(tf->inst, IOTR_LOG_ERROR, "cannot open %s: %s; "
		              "fix `path` or the directory's permissions",
		              tf->path, strerror(errno));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

/* Write all of buf; 0 or an errno value. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? errno : EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * deliver(): IOTR_OK means "accepted", and then the message must be
 * reported with host->delivered() exactly once: here that happens at once,
 * because the line is written before we return.  A message that is not
 * accepted (IOTR_ERETRY: the host tries again later; IOTR_FAIL: it is
 * dead-lettered) is not reported.
 */
static int textfile_deliver(void *state, iotr_msg *msg)
{
	struct textfile *tf = state;
	struct line l = { 0 };
	int err;

	format_message(tf->host, msg, &l);
	if (l.failed) {
		free(l.buf);
		return IOTR_ERETRY;
	}
	pthread_mutex_lock(&tf->lock);
	err = write_all(tf->fd, l.buf, l.len);
	pthread_mutex_unlock(&tf->lock);
	free(l.buf);
	if (err) {
		/* A full disk may clear up: let the host retry, and say why
		 * (a real plugin would not repeat this for every message). */
		tf->host->counter_add(tf->errors, 1);
		tf->host->log(tf->inst, IOTR_LOG_ERROR, "cannot write to %s: "
		              "%s; will retry", tf->path, strerror(err));
		return IOTR_ERETRY;
	}
	tf->host->counter_add(tf->lines, 1);
	tf->host->delivered(tf->inst, msg, IOTR_OK, NULL);
	return IOTR_OK;
}

/* flush(): called on shutdown; nothing is pending between deliver() calls,
 * so there is nothing to wait for. */
static int textfile_flush(void *state, int64_t deadline_ms)
{
	(void)state;
	(void)deadline_ms;
	return IOTR_OK;
}

static void textfile_destroy(void *state)
{
	struct textfile *tf = state;

	if (tf->fd >= 0)
		close(tf->fd);
	pthread_mutex_destroy(&tf->lock);
	free(tf);
}

static const struct iotr_plugin textfile = {
	IOTR_PLUGIN_HEADER,
	.name = "textfile",
	.version = "1.0.0",
	.description = "example: append messages to a file as lines of text",
	.kind = IOTR_PLUGIN_OUTPUT,
	.params = textfile_params,
	.create = textfile_create,
	.start = textfile_start,
	.deliver = textfile_deliver,
	.flush = textfile_flush,
	.destroy = textfile_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &textfile;
}
