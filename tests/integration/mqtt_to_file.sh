#!/bin/bash
# mqtt_to_file.sh - a real mosquitto broker into the router, out through the
# file plugin: routing by named captures, templates, default and MQTT 5
# headers, unmatched and dead-lettered messages, oversized messages, per-key
# order, a clean stop that accounts for every message, and a QoS 2 backlog
# waiting in a persistent session.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

conf=$(router_config file <<'CONF'
router = {
	workers = 3;
	message_pool_bytes = 0;   # every message freed at once (other tests: pooled)
	max_message_bytes = 2000;
	dead_letter_topic = "dead";
	unmatched_topic = "unmatched";
};
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "file-test";
	topics = [ "#" ]; qos = 1;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
routes = (
	{
		name = "telemetry";
		match = "sensors/+site/+device/+sensor";
		topic = "iot.${site}.telemetry";
		key = "${device}";
		headers = { sensor = "${sensor}"; unit = "${json:unit}"; };
	},
	{
		name = "vehicles";
		match = "fleet/+fleet/#rest";
		topic = "vehicles";
		key = "${json:vin}";
		headers = [ "fleet=${fleet}", "rest=${rest}", "level1=${topic[1]}" ];
		default_headers = false;
	}
);
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/out.jsonl

mqtt_pub -q 1 -t sensors/site-7/dev-42/temperature -m '{"unit":"C","value":21.5}'
mqtt_pub -q 1 -V mqttv5 -t fleet/north/WVW1/gps/raw \
	-D publish user-property driver alice -D publish content-type application/json \
	-m '{"vin":"WVWZZZ1JZXW000001","lat":52.37}'
mqtt_pub -q 1 -t fleet/north/WVW2/gps -m 'not json'
mqtt_pub -q 1 -t elsewhere/x -m 'lost?'
head -c 5000 /dev/zero | tr '\0' 'x' | mqtt_pub -q 1 -t sensors/s/d/big -s
wait_until 10 '[ "$(wc -l <"$out" 2>/dev/null || echo 0)" -ge 5 ]'

line=$(grep '"source_topic":"sensors/site-7/dev-42/temperature"' "$out")
assert_match '"topic":"iot.site-7.telemetry"' "$line" "the topic template fills in the captured site"
assert_match '"key":"dev-42"' "$line" "the key is the captured device"
assert_match '"sensor":"temperature","unit":"C"' "$line" \
	"header templates take a capture and a JSON field"
assert_match '"mqtt.topic":"sensors/site-7/dev-42/temperature","mqtt.qos":"1","received_at":"[0-9]{16}"' \
	"$line" "default headers carry the MQTT topic, QoS and receive time"
assert_match '"payload":\{"unit":"C","value":21.5\}' "$line" "the payload is unchanged"

line=$(grep '"source_topic":"fleet/north/WVW1/gps/raw"' "$out")
assert_match '"key":"WVWZZZ1JZXW000001"' "$line" "\${json:vin} keys a vehicle by its VIN"
assert_match '"fleet":"north","rest":"WVW1/gps/raw","level1":"north"' "$line" \
	"a # capture takes the remaining levels; \${topic[N]} takes one level"
assert_match '"driver":"alice"' "$line" "MQTT 5 user properties become headers"
assert_match '"mqtt.content_type":"application/json"' "$line" "the MQTT 5 content type is carried"
assert_fails "default_headers = false leaves them out" grep -q 'mqtt.topic' <<<"$line"

line=$(grep '"source_topic":"fleet/north/WVW2/gps"' "$out")
assert_match '"topic":"dead"' "$line" "a message whose key cannot be made goes to the dead-letter topic"
assert_match "\"iotrouter.error\":\"route 'vehicles': key: \\$\{json:vin\}: payload is not JSON\"" \
	"$line" "with the reason in a header"
assert_match '"iotrouter.route":"route .vehicles.","iotrouter.source_topic":"fleet/north/WVW2/gps"' \
	"$line" "and the route and original topic"

line=$(grep '"source_topic":"elsewhere/x"' "$out")
assert_match '"topic":"unmatched"' "$line" "a message no route matches goes to the unmatched topic"

line=$(grep '"source_topic":"sensors/s/d/big"' "$out")
assert_match '"topic":"dead".*"iotrouter.error":"message of 5[0-9]{3} bytes exceeds router.max_message_bytes \(2000\)' \
	"$line" "an oversized message is dead-lettered with the limit named"
assert_match '"iotrouter.original_size":"5000"' "$line" "and its original size"

# 2000 messages from 20 devices at QoS 1; every device's sequence in order.
sim --devices 20 --count 2000 --rate 0 --qos 1
wait_until 30 '[ "$(grep -c '\''"topic":"iot.site-1.telemetry"'\'' "$out")" -ge 2000 ]'
grep '"topic":"iot.site-1.telemetry"' "$out" |
	sed -E 's/.*"key":"([^"]*)".*"payload":(\{.*\})\}$/\1\t\2/' >"$TEST_TMPDIR/sim.tsv"
assert_eq 2000 "$(wc -l <"$TEST_TMPDIR/sim.tsv")" "all 2000 simulated readings are written"
assert_eq 20 "$(cut -f1 "$TEST_TMPDIR/sim.tsv" | sort -u | wc -l)" "keyed by 20 devices"
assert_cmd "each device's readings keep their order across 3 workers" \
	check_order "$TEST_TMPDIR/sim.tsv"

router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
assert_eq 2005 "$(router_counter router.received)" "the router counts every message received"
assert_eq 2005 "$(router_counter router.delivered)" "and every one delivered (dead letters included)"
assert_eq 2 "$(router_counter router.dead_lettered)" "two were dead-lettered"
assert_eq 0 "$(router_counter router.lost)" "none lost"

# A QoS 2 backlog: 500 messages wait in two persistent sessions of the
# router while it is away.  mosquitto before 2.0.13 (Debian 12 has 2.0.11)
# then sends an MQTT 5 client more QoS 2 messages than its Receive Maximum,
# which libmosquitto takes for a protocol error: the log must name the fix.
# With receive_maximum = 65535 the whole backlog arrives, each message once.
q2conf() { # NAME [INPUT SETTINGS]: a router for session q2-NAME into q2-NAME.jsonl
	router_config "q2-$1" <<CONF
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "q2-$1";
	topics = [ "q2/#" ]; qos = 2; clean_session = false; ${2:-}
	reconnect_min_ms = 100; reconnect_max_ms = 500;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/q2-$1.jsonl"; } );
routes = ( { match = "q2/+device"; topic = "q2"; key = "\${device}"; } );
CONF
}
for s in default raised; do      # make both sessions, then leave
	router_start "$(q2conf $s)" || bail_out "router did not start"
	router_stop
done
seq 1 500 | mqtt_pub -q 2 -V mqttv5 -t q2/dev-1 -l ||
	bail_out "publishing the QoS 2 backlog failed"
router_start "$(q2conf default)" || bail_out "router did not start"
wait_until 30 '[ "$(wc -l <"$TEST_TMPDIR/q2-default.jsonl" 2>/dev/null || echo 0)" -ge 500 ] ||
	grep -q "older than 2\.0\.13" "$ROUTER_LOG"'
router_stop
if [ "$(wc -l <"$TEST_TMPDIR/q2-default.jsonl")" -ge 500 ]; then
	ok "with the default receive_maximum the broker sent the whole QoS 2 backlog"
else
	assert_match 'protocol error.*older than 2\.0\.13.*receive_maximum \(100\).*set receive_maximum = 65535' \
		"$(grep 'disconnected from' "$ROUTER_LOG" | head -1)" \
		"when the broker breaks Receive Maximum at QoS 2, the log says which setting avoids it"
fi
router_start "$(q2conf raised "receive_maximum = 65535;")" || bail_out "router did not start"
wait_until 30 '[ "$(wc -l <"$TEST_TMPDIR/q2-raised.jsonl" 2>/dev/null || echo 0)" -ge 500 ]'
router_stop
sed -E 's/.*"payload":([0-9]+).*/\1/' "$TEST_TMPDIR/q2-raised.jsonl" >"$TEST_TMPDIR/q2.seq"
assert_cmd "with receive_maximum = 65535 the whole QoS 2 backlog arrives, each message once, in order" \
	cmp "$TEST_TMPDIR/q2.seq" <(seq 1 500)

tap_done
