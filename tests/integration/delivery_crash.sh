#!/bin/bash
# delivery_crash.sh - kill -9 the router every few seconds while 100 devices
# publish 200,000 QoS 1 readings; with the write-ahead log and a persistent
# MQTT session, every reading reaches the real Kafka broker (duplicates are
# allowed and reported, none may be missing).
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

require_kafka
start_mosquitto || bail_out "mosquitto did not start"
run=$(unique_name crash)
COUNT=${IOTR_CRASH_COUNT:-200000}

conf=$(router_config crash <<CONF
router = { workers = 2; wal_dir = "@DIR@/wal"; shutdown_timeout_ms = 30000; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run"; topics = [ "$run/#" ]; qos = 1;
	clean_session = false; receive_maximum = 1000;
} );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "@KAFKA@"; } );
routes = ( { match = "$run/+site/+device/+sensor"; topic = "$run"; key = "\${device}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start"

sim --devices 100 --count "$COUNT" --rate 25000 --qos 1 \
	--topic "$run/{site}/{device}/{sensor}" >"$TEST_TMPDIR/sim.out" 2>&1 &
simpid=$!
register_pid "$simpid"

kills=0
while kill -0 "$simpid" 2>/dev/null; do
	sleep 1.5
	kill -KILL "$ROUTER_PID" 2>/dev/null
	wait "$ROUTER_PID" 2>/dev/null
	kills=$((kills + 1))
	router_start "$conf" || bail_out "router did not restart after kill -9 #$kills"
done
wait "$simpid"
simrc=$?
assert_eq 0 "$simrc" "the simulator published all $COUNT readings and the broker acknowledged them"
assert_ge 3 "$kills" "the router was killed with SIGKILL $kills times while they were published"

# The last run drains what the broker and the log still hold.
n=$(wait_kafka_count "$KAFKA" "$run" "$COUNT" 180)
diag "records in Kafka: $n"
router_stop
kafka_payloads "$KAFKA" "$run" >"$TEST_TMPDIR/payloads"
seq_report "$COUNT" "$TEST_TMPDIR/payloads"
report=$REPORT
diag "$report"
echo "# delivery_crash: $report"
assert_eq 0 "$MISSING" "after $kills kills, no reading is missing ($report)"
assert_eq 0 "$ROUTER_RC" "the last run stops cleanly"
replayed=$(grep -h 'holds [0-9]* undelivered messages from before' "$TEST_TMPDIR"/router.*.log | wc -l)
assert_ge 1 "$replayed" "restarts replayed undelivered messages from the write-ahead log ($replayed times)"

tap_done
