/*
 * host.h - the table of host functions handed to every plugin.
 */
#ifndef IOTR_HOST_H
#define IOTR_HOST_H

#include "iotrouter/plugin.h"

const struct iotr_host *host_table(void);

#endif
