#!/bin/bash
# kafka_to_mqtt.sh - (being written)
. "$(dirname "$0")/../harness/lib.sh"
skip_all "not written yet"
