/*
 * mqtt_out.c - the mqtt plugin's output: publishes messages to an MQTT broker
 * (the reverse path: Kafka to MQTT, e.g. commands to vehicles).
 */
#include "mqttconn.h"
