/*
 * noop.h - callbacks that do nothing, for the test plugins in tests/abi that
 * exist to be refused by the loader (each leaves out or breaks one thing).
 * static inline: a plugin that does not use one gets no warning.
 */
#ifndef IOTR_TEST_NOOP_H
#define IOTR_TEST_NOOP_H

#include <iotrouter/plugin.h>

static inline int noop_create(iotr_instance *inst,
                              const struct iotr_host *host, void **state)
{
	(void)inst;
	(void)host;
	*state = NULL;
	return IOTR_OK;
}

static inline int noop_start(void *state)
{
	(void)state;
	return IOTR_OK;
}

static inline int noop_process(void *state, iotr_msg *msg)
{
	(void)state;
	(void)msg;
	return IOTR_OK;
}

static inline int noop_deliver(void *state, iotr_msg *msg)
{
	(void)state;
	(void)msg;
	return IOTR_FAIL;
}

static inline int noop_flush(void *state, int64_t deadline_ms)
{
	(void)state;
	(void)deadline_ms;
	return IOTR_OK;
}

static inline void noop_destroy(void *state)
{
	(void)state;
}

#endif
