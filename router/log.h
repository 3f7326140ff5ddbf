/*
 * log.h - the router's log: stderr, and syslog when configured.
 * Thread-safe: each line is written with one call.
 */
#ifndef IOTR_LOG_H
#define IOTR_LOG_H

#include <stdarg.h>

#include "iotrouter/plugin.h"

void log_set_level(int level);
int log_get_level(void);
/* Also send lines to syslog(3) under this identity (NULL: stop). */
void log_set_syslog(const char *ident);
/* Parse "error", "warning", "notice", "info", "debug"; -1 if unknown. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

void log_msg(int level, const char *fmt, ...) IOTR_PRINTF(2, 3);
/* prefix may be NULL; it is written as "[prefix] ". */
void log_vmsg(int level, const char *prefix, const char *fmt, va_list ap);

#define log_error(...) log_msg(IOTR_LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(IOTR_LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(IOTR_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(IOTR_LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(IOTR_LOG_DEBUG, __VA_ARGS__)

#endif
