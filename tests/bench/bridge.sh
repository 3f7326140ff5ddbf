#!/bin/bash
# bridge.sh - tools/bench-mqtt-bridge, scripts/bench's bare bridge, does
# what its results are read as: every message published at QoS 1 becomes a
# Kafka record on the topic named by its first three topic levels, keyed by
# the fourth, and none is lost when it stops on SIGTERM.  Against the run's
# real broker when there is one (IOTR_TEST_KAFKA), else against the
# embedded cluster of a router started for it.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
BRIDGE=$IOTR_SRCDIR/tools/bench-mqtt-bridge
[ -x "$BRIDGE" ] || skip_all "tools/bench-mqtt-bridge is not built (it needs libmosquitto and librdkafka)"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

N=2000
B=$(kafka_bootstrap)
if [ -z "$B" ]; then
	# a router that only hosts the mock cluster (its input sees nothing)
	conf=$(router_config host <<'CONF'
inputs = ( { name = "idle"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "bridge-test-host"; topics = [ "unused/#" ]; } );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "embedded";
	embedded_bootstrap_file = "@DIR@/bootstrap"; } );
routes = ( { match = "#"; topic = "unused"; } );
CONF
)
	router_start "$conf" || bail_out "the router hosting the embedded cluster did not start"
	B=$(cat "$TEST_TMPDIR/bootstrap")
	diag "embedded cluster at $B"
else
	diag "real broker at $B"
fi
run=r$$$RANDOM
topic=bench.$run.site-1

"$BRIDGE" --host 127.0.0.1 --port "$MQTT_PORT" --topic "bench/$run/#" --qos 1 \
	--brokers "$B" --ready-file "$TEST_TMPDIR/ready" --timeout 600 \
	>"$TEST_TMPDIR/bridge.out" 2>"$TEST_TMPDIR/bridge.err" &
bridge_pid=$!
register_pid "$bridge_pid"
wait_for 30 test -f "$TEST_TMPDIR/ready" || bail_out "the bridge did not subscribe: $(cat "$TEST_TMPDIR/bridge.err")"

"$IOTROUTER_SIM" --host 127.0.0.1 --port "$MQTT_PORT" --quiet --qos 1 \
	--devices 10 --count $N --rate 0 --topic "bench/$run/{site}/{device}/{sensor}"
assert_eq 0 $? "the publisher had all $N messages acknowledged"
# one the bridge cannot name a record topic for: counted, not forwarded
mqtt_pub -q 1 -t "bench/$run" -m short
n=$(wait_kafka_count "$B" "$topic" $N 60)
assert_eq $N "$n" "all $N messages are records on $topic"

keys=$(kcat_dump "$B" "$topic" | cut -f1 | sort -u | tr '\n' ' ')
assert_eq "dev-0001 dev-0002 dev-0003 dev-0004 dev-0005 dev-0006 dev-0007 dev-0008 dev-0009 dev-0010 " \
	"$keys" "each record's key is the device, the fourth topic level"
payloads=$(kcat_dump "$B" "$topic" | cut -f2 | grep -c '"seq":')
assert_eq $N "$payloads" "each record's value is the message's payload"

kill -TERM "$bridge_pid"
rc=0
wait "$bridge_pid" || rc=$?
assert_eq 0 "$rc" "on SIGTERM it flushes and exits 0"
line=$(cat "$TEST_TMPDIR/bridge.out")
diag "bridge: $line"
assert_match "^forwarded=$N delivered=$N failed=0 skipped=1 cpu_s=[0-9.]+ maxrss_kb=[0-9]+$" \
	"$line" "its result line counts every record delivered and the short topic skipped"

# Kafka unreachable: the records it could not deliver by the end are
# counted, named on stderr, and fail the run
dead=127.0.0.1:$(free_port)
rm -f "$TEST_TMPDIR/ready"
"$BRIDGE" --host 127.0.0.1 --port "$MQTT_PORT" --topic "bench/$run-dead/#" --qos 1 \
	--brokers "$dead" --flush-ms 500 --ready-file "$TEST_TMPDIR/ready" --timeout 600 \
	>"$TEST_TMPDIR/dead.out" 2>"$TEST_TMPDIR/dead.err" &
bridge_pid=$!
register_pid "$bridge_pid"
wait_for 30 test -f "$TEST_TMPDIR/ready" || bail_out "the bridge did not subscribe: $(cat "$TEST_TMPDIR/dead.err")"
"$IOTROUTER_SIM" --host 127.0.0.1 --port "$MQTT_PORT" --quiet --qos 1 \
	--devices 2 --count 20 --rate 0 --topic "bench/$run-dead/{site}/{device}/{sensor}"
sleep 1   # the 20 reach the bridge within milliseconds; it has no live count
kill -TERM "$bridge_pid"
rc=0
wait "$bridge_pid" || rc=$?
assert_eq 1 "$rc" "with Kafka unreachable it exits 1"
assert_match "^forwarded=20 delivered=0 failed=0 skipped=0 " "$(cat "$TEST_TMPDIR/dead.out")" \
	"its result line shows the 20 records forwarded and none delivered"
assert_match "20 records not delivered within 500 ms of the end \(is Kafka at $dead up\?\)" \
	"$(cat "$TEST_TMPDIR/dead.err")" "and stderr says how many, and names the brokers"

rc=0
out=$("$BRIDGE" --topic x 2>&1) || rc=$?
assert_eq 2 "$rc" "without --brokers it refuses to start"
assert_match "give the Kafka bootstrap servers \(--brokers\)" "$out" "and says what is missing"
tap_done
