#!/bin/bash
# real_kafka_e2e.sh - the whole path against a real Apache Kafka broker:
# 10,000 QoS 1 readings from 100 simulated devices through mosquitto and the
# router; a kcat consumer finds exactly 10,000 records, on the mapped topics,
# keyed by device, each device's sequence numbers in order.  Then a stop in
# the middle of a burst, with Kafka batching, loses nothing.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

KAFKA=$(kafka_bootstrap)
if [ -z "$KAFKA" ]; then
	if [ -n "${IOTR_TEST_KAFKA_REQUIRED:-}" ]; then
		bail_out "the real Kafka broker did not start (see scripts/test output)"
	fi
	skip_all "no real Kafka broker (scripts/test starts one; IOTR_TEST_KAFKA unset)"
fi
start_mosquitto || bail_out "mosquitto did not start"
run=$(unique_name e2e)

conf=$(router_config real <<CONF
router = { workers = 2; dead_letter_topic = "$run.dead"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run"; topics = [ "$run/#" ]; qos = 1; clean_session = false;
} );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "@KAFKA@";
	properties = [ "linger.ms=50" ]; } );
routes = ( {
	match = "$run/+site/+device/+sensor";
	topic = "$run.\${site}";
	key = "\${device}";
} );
CONF
)
router_start "$conf" || bail_out "router did not start"

sim --devices 100 --sites 4 --count 10000 --rate 0 --qos 1 \
	--topic "$run/{site}/{device}/{sensor}"
total=0
for s in 1 2 3 4; do
	n=$(wait_kafka_count "$KAFKA" "$run.site-$s" 2500 60)
	total=$((total + n))
done
assert_eq 10000 "$total" "a kcat consumer finds exactly 10,000 records on the four site topics"
for s in 1 2 3 4; do
	kcat_dump "$KAFKA" "$run.site-$s" 2>/dev/null
done >"$TEST_TMPDIR/all.tsv"
assert_eq 100 "$(cut -f1 "$TEST_TMPDIR/all.tsv" | sort -u | wc -l)" "keyed by the 100 devices"
assert_eq 10000 "$(sed -E 's/.*"device":"([^"]*)".*"seq":([0-9]+).*/\1 \2/' "$TEST_TMPDIR/all.tsv" | sort -u | wc -l)" \
	"no duplicates: 10,000 distinct (device, seq) pairs"
bad=$(awk -F'\t' 'index($2, "\"device\":\"" $1 "\"") == 0' "$TEST_TMPDIR/all.tsv" | wc -l)
assert_eq 0 "$bad" "every record's key is the device in its payload"
assert_cmd "each device's sequence numbers arrive in order" check_order "$TEST_TMPDIR/all.tsv"

# SIGTERM while Kafka is still batching: everything in flight gets there.
sim --devices 10 --count 5000 --rate 0 --qos 1 --topic "$run/{site}/burst-{device}/{sensor}" \
	--start-seq 1
router_wait_received 15000
router_stop
assert_eq 0 "$ROUTER_RC" "the router stops cleanly after a burst"
assert_eq 15000 "$(router_counter kafka.delivered)" "Kafka acknowledged all 15,000 before the router exited"
n=$(kcat_dump "$KAFKA" "$run.site-1" 2>/dev/null | grep -c burst-)
assert_eq 5000 "$n" "and the burst is all in Kafka"

tap_done
