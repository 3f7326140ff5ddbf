#!/bin/bash
# mqtt_output.sh - (being written)
. "$(dirname "$0")/../harness/lib.sh"
skip_all "not written yet"
