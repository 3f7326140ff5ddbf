#!/bin/bash
# rules_real_kafka.sh - rules and shipped transforms between a real mosquitto
# and a real Apache Kafka broker: a chain schema_check -> json_fields -> Lua
# threshold rule; readings land on their topic with the fields reshaped,
# alerts on the alerts topic, and bad input (not JSON, a missing field, a rule
# that raises) in the dead-letter topic with the reason in a Kafka header.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

require_kafka
start_mosquitto || bail_out "mosquitto did not start"
run=$(unique_name rules)

cat >"$TEST_TMPDIR/fail_on_negative.lua" <<'LUA'
-- Raises on a negative reading: the message must be dead-lettered.
function on_message(msg)
	if msg:json().value < 0 then
		error("negative reading " .. msg:json().value)
	end
	return msg
end
LUA

conf=$(router_config rules <<CONF
router = { workers = 2; dead_letter_topic = "$run.dead"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run"; topics = [ "$run/#" ]; qos = 1;
} );
transforms = (
	{ name = "schema"; plugin = "schema_check";
	  require = [ "device:string", "sensor:string", "value:number", "seq:integer" ]; },
	{ name = "shape"; plugin = "json_fields";
	  drop = [ "ts" ]; rename = [ "value=reading" ]; tags = [ "site=\${site}" ]; },
	{ name = "negative"; plugin = "lua"; script = "@DIR@/fail_on_negative.lua"; },
	{ name = "alerts"; plugin = "lua"; script = "$top_srcdir/scripts/rules/threshold_alert.lua";
	  vars = [ "alerts_topic=$run.alerts", "temperature_max=30" ]; }
);
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "@KAFKA@"; } );
routes = ( {
	match = "$run/+site/+device/+sensor";
	topic = "$run.readings"; key = "\${device}";
	transforms = [ "schema", "negative", "alerts", "shape" ];
} );
CONF
)
router_start "$conf" || bail_out "router did not start"

pub() { mqtt_pub -q 1 -t "$run/$1" -m "$2"; }
pub site-1/dev-1/temperature '{"device":"dev-1","sensor":"temperature","value":21.5,"seq":1,"ts":1}'
pub site-1/dev-1/temperature '{"device":"dev-1","sensor":"temperature","value":35.0,"seq":2,"ts":2}'
pub site-1/dev-1/temperature '{"device":"dev-1","sensor":"temperature","value":22.0,"seq":3,"ts":3}'
pub site-2/dev-2/humidity 'not json'
pub site-2/dev-2/humidity '{"device":"dev-2","sensor":"humidity","seq":1}'
pub site-2/dev-2/humidity '{"device":"dev-2","sensor":"humidity","value":-5,"seq":2}'
sim --devices 10 --count 1000 --rate 0 --qos 1 --topic "$run/{site}/{device}/{sensor}"

n=$(wait_kafka_count "$KAFKA" "$run.readings" 1003 60)
assert_eq 1003 "$n" "the 3 good readings and 1000 simulated ones land on the readings topic"
r=$(kcat -C -b "$KAFKA" -t "$run.readings" -e -q -f '%k %s\n' 2>/dev/null | grep '"seq":2,' | grep dev-1)
assert_match '^dev-1 \{"device":"dev-1","sensor":"temperature","reading":35(\.0)?,"seq":2,"site":"site-1"\}$' \
	"$r" "json_fields reshaped the payload: ts dropped, value renamed, site tagged from the capture"
a=$(wait_kafka_count "$KAFKA" "$run.alerts" 2 30)
assert_ge 2 "$a" "the Lua rule raised an alert going out of range and one coming back"
alert=$(kcat -C -b "$KAFKA" -t "$run.alerts" -e -q -c 1 -f '%k %s\n' 2>/dev/null)
assert_match '^dev-1 .*temperature' "$alert" "alerts are keyed by device and name the sensor"

d=$(wait_kafka_count "$KAFKA" "$run.dead" 3 30)
assert_eq 3 "$d" "the three bad messages are in the dead-letter topic"
kcat -C -b "$KAFKA" -t "$run.dead" -e -q -f '%h\n' 2>/dev/null >"$TEST_TMPDIR/dead.h"
assert_cmd "not JSON: schema_check's reason is in the iotrouter.error header" \
	grep -q "iotrouter.error=transform 'schema' failed: .*not .*JSON" "$TEST_TMPDIR/dead.h"
assert_cmd "a missing field: the header names the field" \
	grep -q "iotrouter.error=transform 'schema' failed: .*value" "$TEST_TMPDIR/dead.h"
assert_cmd "a rule that raises: the header has the script's file and line" \
	grep -q "iotrouter.error=transform 'negative' failed: .*fail_on_negative.lua:4: .*negative reading -5" \
	"$TEST_TMPDIR/dead.h"
assert_cmd "dead letters carry the original MQTT topic" \
	grep -q "iotrouter.source_topic=$run/site-2/dev-2/humidity" "$TEST_TMPDIR/dead.h"

router_stop
assert_eq 0 "$ROUTER_RC" "the router stops cleanly"
assert_eq 0 "$(router_counter router.lost)" "nothing lost"
tap_done
