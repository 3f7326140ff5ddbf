/*
 * mqttconn.c - connection settings shared by the mqtt input and output.
 */
#include "mqttconn.h"
