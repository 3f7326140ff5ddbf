/*
 * pipeline.h - from emit() to delivered(): route, queue, transform, deliver.
 *
 * Threads: inputs call pipeline_ingest() from their own threads; `workers`
 * worker threads each own one bounded queue and run transforms and
 * output->deliver(); outputs call pipeline_delivered() from theirs.  A
 * message's key (or, without a key, its source topic) picks its worker,
 * the key's lane.  A route without transforms, or one whose transforms run
 * inline (router.inline_transforms), is run to its output on the input's
 * thread; its transforms still run in the key's lane, under the lane's
 * lock, so one key's transform calls never overlap and keep arrival order
 * per input connection.
 */
#ifndef IOTR_PIPELINE_H
#define IOTR_PIPELINE_H

#include <stdint.h>

#include "conf.h"

struct pipeline;

struct pipeline *pipeline_new(struct router_config *cfg);
int pipeline_start(struct pipeline *p);

/* host->emit() from an input: route and queue; blocks while full. */
int pipeline_ingest(struct iotr_instance *src, iotr_msg *msg);
/* host->emit() from a transform, during process(), tick() or stop(). */
int pipeline_transform_emit(struct iotr_instance *t, iotr_msg *msg);
/* host->lane(): the lane of the transform call on this thread, or -1. */
int pipeline_current_lane(void);
/* host->delivered() from an output. */
void pipeline_delivered(struct iotr_instance *out, iotr_msg *msg, int status,
                        const char *reason);

/* Call a transform's stop() so that what it emits joins the pipeline. */
void pipeline_stop_transform(struct pipeline *p, struct iotr_instance *t);

/* Start stopping: inputs close, queues drain until deadline_ms
 * (CLOCK_MONOTONIC). */
void pipeline_begin_stop(struct pipeline *p, int64_t deadline_ms);
/* Give up waiting now, as if the deadline had passed. */
void pipeline_deadline_passed(struct pipeline *p);
/* 0 running, 1 draining, 2 past the shutdown deadline. */
int pipeline_stopping(const struct pipeline *p);

/* Wait until every accepted message is finished, or the deadline
 * (CLOCK_MONOTONIC ms).  Returns the number still unfinished. */
uint64_t pipeline_drain(struct pipeline *p, int64_t deadline_ms);
/* Stop and join the workers; messages still queued are counted as lost. */
void pipeline_stop_workers(struct pipeline *p);
void pipeline_free(struct pipeline *p);

int64_t monotonic_ms(void);

#endif
