/*
 * log.c - write log lines to stderr (one write(2) per line, so lines from
 * several threads never interleave) and optionally to syslog.
 */
#include "config.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static atomic_int log_level = IOTR_LOG_NOTICE;
static atomic_int log_syslog;

static const char *const level_names[] = {
	[IOTR_LOG_ERROR] = "error",
	[IOTR_LOG_WARNING] = "warning",
	[IOTR_LOG_NOTICE] = "notice",
	[IOTR_LOG_INFO] = "info",
	[IOTR_LOG_DEBUG] = "debug",
};

void log_set_level(int level)
{
	if (level < IOTR_LOG_ERROR)
		level = IOTR_LOG_ERROR;
	if (level > IOTR_LOG_DEBUG)
		level = IOTR_LOG_DEBUG;
	atomic_store(&log_level, level);
}

int log_get_level(void)
{
	return atomic_load(&log_level);
}

void log_set_syslog(const char *ident)
{
	if (ident) {
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
		atomic_store(&log_syslog, 1);
	} else if (atomic_exchange(&log_syslog, 0)) {
		closelog();
	}
}

int log_level_parse(const char *name)
{
	int i;

	for (i = IOTR_LOG_ERROR; i <= IOTR_LOG_DEBUG; i++)
		if (strcasecmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

const char *log_level_name(int level)
{
	if (level < IOTR_LOG_ERROR || level > IOTR_LOG_DEBUG)
		return "?";
	return level_names[level];
}

void log_vmsg(int level, const char *prefix, const char *fmt, va_list ap)
{
	char line[4096];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int k;

	if (level > atomic_load(&log_level))
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s: %s%s%s",
	             ts.tv_nsec / 1000000, log_level_name(level),
	             prefix ? "[" : "", prefix ? prefix : "",
	             prefix ? "] " : "");
	if (k > 0)
		n += (size_t)k;
	if (n < sizeof(line)) {
		va_list copy;

		va_copy(copy, ap);
		k = vsnprintf(line + n, sizeof(line) - n, fmt, copy);
		va_end(copy);
		if (k > 0)
			n += (size_t)k;
	}
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0) {
		/* Nowhere left to report it. */
	}
	if (atomic_load(&log_syslog)) {
		/* syslog gets the line without our timestamp. */
		const char *body = strchr(line, ' ');

		line[n - 1] = '\0';
		syslog(level, "%s", body ? body + 1 : line);
	}
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, NULL, fmt, ap);
	va_end(ap);
}
