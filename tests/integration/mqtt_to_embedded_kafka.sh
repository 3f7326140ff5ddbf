#!/bin/bash
# mqtt_to_embedded_kafka.sh - real mosquitto into the router, out to the
# embedded Kafka cluster (librdkafka's mock cluster inside the router), read
# back with kcat: topics, keys, headers, per-device order, and the drain on
# SIGTERM; then a Lua fan-out with the write-ahead log, whose records are
# all released once both copies are delivered.  The demo runs this path.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

conf=$(router_config embedded <<'CONF'
router = { workers = 2; dead_letter_topic = "iot.dead"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "embedded-test"; topics = [ "sensors/#", "raw/#" ]; qos = 1;
} );
outputs = ( {
	name = "kafka"; plugin = "kafka"; brokers = "embedded";
	embedded_partitions = 3;
	embedded_bootstrap_file = "@DIR@/bootstrap";
} );
routes = ( {
	match = "sensors/+site/+device/+sensor";
	topic = "iot.${site}.telemetry";
	key = "${device}";
	headers = { sensor = "${sensor}"; };
}, {
	match = "raw/+kind/#";
	topic = "raw.${kind}";
} );
CONF
)
router_start "$conf" || bail_out "router did not start"
B=$(cat "$TEST_TMPDIR/bootstrap")
assert_match "^127\.0\.0\.1:[0-9]+$" "$B" "the embedded cluster's bootstrap address is written to a file"
assert_cmd "and logged" grep -q "embedded Kafka cluster listening on $B" "$ROUTER_LOG"

sim --devices 10 --sites 2 --count 3000 --rate 0 --qos 1
n1=$(wait_kafka_count "$B" iot.site-1.telemetry 1500 30)
n2=$(wait_kafka_count "$B" iot.site-2.telemetry 1500 30)
assert_eq "1500 1500" "$n1 $n2" "3000 readings land on one topic per site"

kcat -C -b "$B" -t iot.site-1.telemetry -e -q -f '%k\t%s\n' >"$TEST_TMPDIR/s1.tsv" 2>/dev/null
kcat -C -b "$B" -t iot.site-2.telemetry -e -q -f '%k\t%s\n' >"$TEST_TMPDIR/s2.tsv" 2>/dev/null
cat "$TEST_TMPDIR/s1.tsv" "$TEST_TMPDIR/s2.tsv" >"$TEST_TMPDIR/all.tsv"
assert_eq 10 "$(cut -f1 "$TEST_TMPDIR/all.tsv" | sort -u | wc -l)" "keyed by the 10 device ids"
bad=$(awk -F'\t' 'index($2, "\"device\":\"" $1 "\"") == 0' "$TEST_TMPDIR/all.tsv" | wc -l)
assert_eq 0 "$bad" "every record's key is the device in its payload"
assert_cmd "each device's sequence numbers arrive in order" check_order "$TEST_TMPDIR/all.tsv"
parts=$(kcat -C -b "$B" -t iot.site-1.telemetry -e -q -f '%k %p\n' 2>/dev/null | sort -u | cut -d' ' -f1 | uniq -d | wc -l)
assert_eq 0 "$parts" "each key stays in one partition"
hdr=$(kcat -C -b "$B" -t iot.site-1.telemetry -c 1 -e -q -f '%h\n' 2>/dev/null)
assert_match "mqtt.topic=sensors/site-1/dev-[0-9]+/[a-z]+,mqtt.qos=1,received_at=[0-9]+,sensor=[a-z]+" \
	"$hdr" "Kafka headers carry the MQTT topic, QoS, receive time and the route's headers"

# A route whose topic template renders a name Kafka refuses: that message
# is dead-lettered with the reason; the same route's valid topics flow.
mqtt_pub -q 1 -t 'raw/bad kind/x' -m '{"v":1}'
mqtt_pub -q 1 -t 'raw/ok/x' -m '{"v":2}'
mqtt_pub -q 1 -t 'raw/ok/y' -m '{"v":3}'
assert_eq 2 "$(wait_kafka_count "$B" raw.ok 2 30)" "a route's valid Kafka topic takes its messages"
assert_eq 1 "$(wait_kafka_count "$B" iot.dead 1 30)" "one with an invalid topic name is dead-lettered"
dead=$(kcat -C -b "$B" -t iot.dead -c 1 -e -q -f '%h %s\n' 2>/dev/null)
assert_match 'kafka topic "raw.bad kind": not a valid Kafka topic name' "$dead" \
	"its iotrouter.error names the topic and what a valid name is"
assert_match '"v":1' "$dead" "and it carries the original payload"

# A burst right before SIGTERM: the router drains and flushes before exit.
sim --devices 5 --count 2000 --rate 0 --qos 1 --topic 'sensors/burst/{device}/{sensor}'
router_wait_received 5003
router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM after a burst stops the router cleanly"
assert_eq 5003 "$(router_counter router.received)" "it counted 5003 messages in"
assert_eq 5003 "$(router_counter kafka.delivered)" \
	"and 5003 records acknowledged by Kafka before exit (one a dead letter)"
assert_eq 1 "$(router_counter router.dead_lettered)" "the invalid topic's message is counted as dead-lettered"
assert_eq 0 "$(router_counter router.lost)" "none lost"

# Rules with the write-ahead log: a fan-out shares each reading's record
# with the two messages it makes of it; what a window rule emits in on_tick
# gets a record of its own.  Once all is delivered, no record is left.
cat >"$TEST_TMPDIR/fanout.lua" <<'LUA'
function on_message(msg)
	router.emit{ kafka_topic = "copy.a", key = msg.key, payload = msg.payload }
	router.emit{ kafka_topic = "copy.b", key = msg.key, payload = msg.payload }
	return nil
end
LUA
conf=$(router_config rules <<CONF
router = { workers = 2; wal_dir = "@DIR@/wal"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "embedded-rules"; topics = [ "fan/#", "win/#" ]; qos = 1;
} );
transforms = (
	{ name = "fan"; plugin = "lua"; script = "@DIR@/fanout.lua"; },
	{ name = "win"; plugin = "lua"; tick_ms = 250;
	  script = "$IOTR_SRCDIR/scripts/rules/window_stats.lua";
	  vars = [ "window_seconds=1", "stats_topic=win.stats" ]; }
);
outputs = ( {
	name = "kafka"; plugin = "kafka"; brokers = "embedded";
	embedded_bootstrap_file = "@DIR@/bootstrap2";
} );
routes = (
	{ match = "fan/+device/+sensor"; topic = "fan"; key = "\${device}";
	  transforms = [ "fan" ]; },
	{ match = "win/+site/+device/+sensor"; topic = "win.raw"; key = "\${device}";
	  transforms = [ "win" ]; }
);
CONF
)
router_start "$conf" || bail_out "router did not start"
B=$(cat "$TEST_TMPDIR/bootstrap2")
sim --devices 10 --count 500 --rate 0 --qos 1 --topic 'fan/{device}/{sensor}'
sim --devices 3 --count 300 --rate 0 --qos 1 --topic 'win/{site}/{device}/{sensor}'
assert_eq "500 500" "$(wait_kafka_count "$B" copy.a 500 30) $(wait_kafka_count "$B" copy.b 500 30)" \
	"a rule that emits two copies of each reading delivers both"
n=$(wait_kafka_count "$B" win.stats 1 30)
assert_ge 1 "$n" "closed windows reach Kafka from on_tick ($n aggregates)"
router_stop
assert_eq 0 "$ROUTER_RC" "the rules' router stops cleanly"
assert_eq "0 0" "$(router_counter router.lost) $(router_counter router.deferred)" \
	"nothing lost or deferred"
router_start "$conf" || bail_out "router did not restart"
router_stop
assert_fails "and no record was left in the log" \
	grep -q "holds [0-9]* undelivered messages from before" "$ROUTER_LOG"

tap_done
