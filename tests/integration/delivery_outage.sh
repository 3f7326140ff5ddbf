#!/bin/bash
# delivery_outage.sh - outages of the parts around the router, mid-stream,
# against a real Kafka broker of the test's own:
#   1. Kafka stopped for 60 s and started again: intake goes on into the
#      write-ahead log, drains in order when Kafka is back: none missing;
#   2. mosquitto restarted (persistence on): the router reconnects, resumes
#      its session and resubscribes: none missing.
# Each prints "sent=... delivered=... missing=... duplicates=...".
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

[ -n "$(kafka_bootstrap)" ] || [ -n "${IOTR_TEST_OWN_KAFKA:-}" ] ||
	skip_all "no real Kafka (scripts/test runs this with a broker of its own)"
kafka_available || bail_out "cannot start a Kafka broker (tests/kafka/kafka.sh fetch)"
start_kafka || bail_out "Kafka did not start"
KAFKA=$KAFKA_BOOTSTRAP
start_mosquitto || bail_out "mosquitto did not start"
OUTAGE=${IOTR_OUTAGE_SECONDS:-60}

conf=$(router_config outage <<'CONF'
router = { workers = 2; queue_size = 1000; wal_dir = "@DIR@/wal"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "outage-test"; topics = [ "t/#" ]; qos = 1;
	clean_session = false; reconnect_max_ms = 2000;
} );
outputs = ( {
	name = "kafka"; plugin = "kafka"; brokers = "@KAFKA@";
	properties = [ "queue.buffering.max.messages=2000" ];
} );
routes = ( { match = "t/+run/+device/+sensor"; topic = "${run}"; key = "${device}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start"

# 1. Kafka away for $OUTAGE seconds in the middle of 2000 msg/s.
rate=2000 secs=$((OUTAGE + 30))
count=$((rate * secs))
sim --devices 50 --count "$count" --rate "$rate" --qos 1 \
	--topic 't/kafka-outage/{device}/{sensor}' &
simpid=$!
register_pid "$simpid"
sleep 10
stop_kafka
diag "Kafka stopped at $(date +%T)"
sleep "$OUTAGE"
spilled=$(router_live_counter router.wal_spilled)
start_kafka "$KAFKA_DIR" || bail_out "Kafka did not come back"
diag "Kafka back at $(date +%T)"
assert_eq "$KAFKA" "$KAFKA_BOOTSTRAP" "Kafka came back on the same address"
wait "$simpid"
assert_eq 0 $? "the publisher's $count readings were all acknowledged by the broker"
assert_ge 1 "${spilled:-0}" "during the outage intake went on into the write-ahead log (${spilled:-0} spilled)"
n=$(wait_kafka_count "$KAFKA" kafka-outage "$count" 180)
kafka_payloads "$KAFKA" kafka-outage >"$TEST_TMPDIR/outage.payloads"
seq_report "$count" "$TEST_TMPDIR/outage.payloads"
report=$REPORT
echo "# kafka outage ${OUTAGE}s: $report"
assert_eq 0 "$MISSING" "Kafka down for ${OUTAGE}s: none missing ($report)"
kcat -C -b "$KAFKA" -t kafka-outage -e -q -f '%k\t%s\n' >"$TEST_TMPDIR/outage.tsv" 2>/dev/null
assert_cmd "each device's readings are in order after the outage" \
	check_order "$TEST_TMPDIR/outage.tsv"

# 2. mosquitto restarted while 20,000 readings are published.
count=20000
sim --devices 20 --count "$count" --rate 2000 --qos 1 \
	--topic 't/mqtt-restart/{device}/{sensor}' &
simpid=$!
register_pid "$simpid"
sleep 4
restart_mosquitto || bail_out "mosquitto did not restart"
diag "mosquitto restarted at $(date +%T)"
wait "$simpid"
assert_eq 0 $? "the publisher got all $count acknowledged across the broker restart"
n=$(wait_kafka_count "$KAFKA" mqtt-restart "$count" 60)
kafka_payloads "$KAFKA" mqtt-restart >"$TEST_TMPDIR/restart.payloads"
seq_report "$count" "$TEST_TMPDIR/restart.payloads"
report=$REPORT
echo "# mosquitto restart: $report"
assert_eq 0 "$MISSING" "mosquitto restarted mid-stream: none missing ($report)"
reconnects=$(router_live_counter sensors.connects)
assert_ge 2 "${reconnects:-0}" "the router reconnected to the restarted broker"

router_stop
assert_eq 0 "$ROUTER_RC" "the router stops cleanly"
tap_done
