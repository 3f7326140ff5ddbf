/*
 * kafkaconf.h - what the kafka plugin's output (kafka.c) and input (kafka_in.c)
 * share.
 */
#ifndef IOTR_KAFKACONF_H
#define IOTR_KAFKACONF_H

#include <iotrouter/plugin.h>

/* The input kind of the kafka plugin (kafka_in.c). */
extern const struct iotr_plugin kafka_in_plugin;

#endif
