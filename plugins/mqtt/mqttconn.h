/*
 * mqttconn.h - what the mqtt plugin's input (mqtt.c) and output (mqtt_out.c)
 * share: the output's descriptor, and connection settings both kinds read.
 */
#ifndef IOTR_MQTTCONN_H
#define IOTR_MQTTCONN_H

#include <iotrouter/plugin.h>

/* The output kind of the mqtt plugin (mqtt_out.c). */
extern const struct iotr_plugin mqtt_out_plugin;

#endif
