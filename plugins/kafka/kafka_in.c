/*
 * kafka_in.c - the kafka plugin's input: consumes Kafka topics (the reverse
 * path: Kafka to MQTT).
 */
#include "kafkaconf.h"
