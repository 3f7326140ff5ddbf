/*
 * metrics.h - named counters, shared by the core and plugins.
 * Registration takes a lock; adding to a counter is one atomic add.
 */
#ifndef IOTR_METRICS_H
#define IOTR_METRICS_H

#include <stdint.h>

#include "iotrouter/plugin.h"

/* The counter with this name, created at zero on first use; NULL only when
 * out of memory. */
iotr_counter *metrics_counter(const char *name);
void metrics_add(iotr_counter *c, uint64_t delta);
uint64_t metrics_value(const iotr_counter *c);
/* The value of a counter by name; 0 if there is none. */
uint64_t metrics_get(const char *name);
/* Log every counter as "name=value ..." on one line. */
void metrics_log(int level, const char *what);
void metrics_free(void);

#endif
