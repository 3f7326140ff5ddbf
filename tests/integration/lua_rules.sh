#!/bin/bash
# lua_rules.sh - the example rules of scripts/rules, each run two ways:
# offline with `iotrouter test-script` (its output must equal NAME.expected)
# and through the running router with a real mosquitto broker and the file
# output (what reaches the output must be what test-script predicted).
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
RULES=$IOTR_SRCDIR/scripts/rules
tmpdir_setup

test_script() {
	"$IOTROUTER" test-script -P "$IOTR_PLUGIN_DIR" -q "$@"
}

# --- 1. test-script over each sample ------------------------------------

for r in threshold_alert fahrenheit_to_celsius window_stats dedupe geofence downsample; do
	args=()
	[ "$r" = window_stats ] && args=(--tick-every 1000)
	out=$TEST_TMPDIR/$r.out
	rc=0
	test_script "$RULES/$r.lua" "${args[@]}" <"$RULES/$r.jsonl" >"$out" 2>"$out.err" || rc=$?
	if [ "$rc" -eq 0 ] && diff -u "$RULES/$r.expected" "$out" >"$out.diff"; then
		ok "test-script: $r.lua turns $r.jsonl into $r.expected"
	else
		not_ok "test-script: $r.lua turns $r.jsonl into $r.expected" \
			"exit $rc" "$(head -n 30 "$out.diff")" "$(tail -n 5 "$out.err")"
	fi
done

# test-script with a config: the route gives captures, topic and key; the
# rule's vars come from the transform.
mkdir -p "$TEST_TMPDIR/ts"
cat >"$TEST_TMPDIR/ts/caps.lua" <<'EOF'
function on_message(msg)
	msg.headers.site = msg.captures.site
	msg.headers.limit = router.vars.limit
	if msg.captures.sensor == "humidity" then return nil end
	return msg
end
EOF
cat >"$TEST_TMPDIR/ts/ts.conf" <<'EOF'
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = [ "#" ]; } );
outputs = ( { name = "out"; plugin = "file"; path = "/dev/null"; } );
transforms = ( { name = "caps"; plugin = "lua"; script = "elsewhere.lua";
                 vars = [ "limit=42" ]; } );
routes = (
	{ name = "readings"; match = "sensors/+site/+device/+sensor";
	  topic = "iot.${site}"; key = "${device}"; transforms = [ "caps" ];
	  default_headers = false; },
	{ name = "other"; match = "other/#"; }
);
EOF
printf '%s\n' '{"topic":"sensors/site-9/dev-7/temperature","payload":{"value":1},"time":1}' \
	'{"topic":"sensors/site-9/dev-7/humidity","payload":"x","time":2}' \
	'{"topic":"other/thing","payload":"x","time":3}' \
	'{"payload":"no topic"}' >"$TEST_TMPDIR/ts/in.jsonl"
rc=0
out=$(test_script "$TEST_TMPDIR/ts/caps.lua" --config "$TEST_TMPDIR/ts/ts.conf" \
	<"$TEST_TMPDIR/ts/in.jsonl" 2>"$TEST_TMPDIR/ts/err") || rc=$?
assert_match '"input":1,"result":"produced","topic":"iot.site-9","source_topic":"sensors/site-9/dev-7/temperature","key":"dev-7"' \
	"$out" "test-script --config: the route sets topic and key"
assert_match '"headers":\{"site":"site-9","limit":"42"\}' "$out" \
	"the rule sees the route's captures and the transform's vars"
assert_match '"input":2,"result":"dropped"' "$out" "a rule's nil drops the message"
assert_match '"input":3,"result":"not routed","reason":"route .other. matches it first' \
	"$out" "a message whose route does not run the rule is reported as not routed"
assert_match '"input":4,"result":"invalid","error":"needs \\"topic\\"' "$out" \
	"an input line without a topic is reported"
assert_eq 1 "$rc" "test-script exits 1 when an input was invalid"
rc=0
test_script "$TEST_TMPDIR/ts/nonexistent.lua" </dev/null >/dev/null 2>"$TEST_TMPDIR/ts/err" || rc=$?
assert_eq 3 "$rc" "test-script exits 3 when the rule cannot be loaded"
assert_match "cannot read .*nonexistent.lua: No such file" "$(cat "$TEST_TMPDIR/ts/err")" \
	"and says why"

# msg:json() decodes the payload as it was when called, even when Lua code
# run by a garbage collection during the decoding (a finalizer) changes it.
cat >"$TEST_TMPDIR/ts/gc.lua" <<'EOF'
local decoding, changed = false, false
function on_message(msg)
	-- a payload of its own buffer, which setting msg.payload frees
	msg.payload = msg.payload .. " "
	for i = 1, 2000 do
		setmetatable({}, { __gc = function()
			if decoding then
				msg.payload = '{"late":1}'
				changed = true
			end
		end })
	end
	decoding = true
	local j = msg:json()
	decoding = false
	msg.headers.n = tostring(#j.xs)
	msg.headers.last = tostring(j.xs[#j.xs].v)
	msg.headers.changed = tostring(changed)
	return msg
end
EOF
items=$(seq 1 3000 | sed 's/.*/{"v":&}/' | paste -sd, -)
printf '{"topic":"t","payload":{"xs":[%s]}}\n' "$items" >"$TEST_TMPDIR/ts/gc.jsonl"
out=$(test_script "$TEST_TMPDIR/ts/gc.lua" <"$TEST_TMPDIR/ts/gc.jsonl" 2>"$TEST_TMPDIR/ts/err")
assert_match '"result":"produced".*"headers":\{"n":"3000","last":"3000","changed":"true"\}' "${out:0:300}" \
	"msg:json() decodes the payload it was called on while finalizers change msg.payload"

# --- 2. the same samples through the router ---------------------------------

start_mosquitto || bail_out "mosquitto did not start"
conf=$(sed "s|@SRC@|$IOTR_SRCDIR|g" <<'CONF' | router_config rules
router = { workers = 3; dead_letter_topic = "dead"; inline_transforms = true; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "lua-rules";
	topics = [ "#" ]; qos = 1;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
transforms = (
	{ name = "threshold_alert"; plugin = "lua";
	  script = "@SRC@/scripts/rules/threshold_alert.lua"; },
	{ name = "fahrenheit_to_celsius"; plugin = "lua";
	  script = "@SRC@/scripts/rules/fahrenheit_to_celsius.lua"; },
	{ name = "window_stats"; plugin = "lua"; tick_ms = 250;
	  script = "@SRC@/scripts/rules/window_stats.lua";
	  vars = [ "window_seconds=2" ]; },
	{ name = "dedupe"; plugin = "lua";
	  script = "@SRC@/scripts/rules/dedupe.lua"; },
	{ name = "geofence"; plugin = "lua";
	  script = "@SRC@/scripts/rules/geofence.lua"; },
	{ name = "downsample"; plugin = "lua";
	  script = "@SRC@/scripts/rules/downsample.lua"; }
);
routes = (
	{ match = "threshold_alert/sensors/+site/+device/+sensor"; topic = "iot.telemetry";
	  key = "${device}"; transforms = [ "threshold_alert" ]; },
	{ match = "fahrenheit_to_celsius/sensors/+site/+device/+sensor"; topic = "iot.telemetry";
	  key = "${device}"; transforms = [ "fahrenheit_to_celsius" ]; },
	{ match = "window_stats/sensors/+site/+device/+sensor"; topic = "iot.telemetry";
	  key = "${device}"; transforms = [ "window_stats" ]; },
	{ match = "dedupe/sensors/+site/+device/+sensor"; topic = "iot.telemetry";
	  key = "${device}"; transforms = [ "dedupe" ]; },
	{ match = "geofence/fleet/+fleet/+vin/+stream"; topic = "vehicles.${stream}";
	  key = "${vin}"; transforms = [ "geofence" ]; },
	{ match = "downsample/sensors/+site/+device/+sensor"; topic = "iot.telemetry";
	  key = "${device}"; transforms = [ "downsample" ]; }
);
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/out.jsonl

# publish_sample RULE: each message of RULE.jsonl, on RULE/<its topic>.
publish_sample() {
	local r=$1 topic payload
	jq -r '[.topic, (if (.payload|type) == "string" then .payload else (.payload|tojson) end)] | @tsv' \
		< <(grep -v '^#' "$RULES/$r.jsonl") |
		while IFS=$'\t' read -r topic payload; do
			mqtt_pub -q 1 -t "$r/$topic" -m "$payload"
		done
}

# project FILE DEFAULT_TOPIC: topic, key and payload of each produced
# message, sorted (the router interleaves keys).
expected_of() {
	jq -c --arg d "$2" 'select(.result == "produced" and .input != null) |
		[(.topic // $d), .key, .payload]' "$RULES/$1.expected" | sort
}
produced_by() {
	jq -c --arg r "$1/" 'select(.source_topic | startswith($r)) |
		[.topic, .key, .payload]' "$out" | sort
}

lines() { wc -l <"$out" 2>/dev/null || echo 0; }
n_produced_by() { produced_by "$1" | wc -l; }
stats_are() { [ "$(stats "$1" "$2")" = "$3" ]; }
sim_lines() { grep -c '"source_topic":"threshold_alert/sensors/site-1/sim-' "$out"; }

total=0
for r in threshold_alert fahrenheit_to_celsius dedupe geofence; do
	publish_sample "$r"
	total=$((total + $(grep -vc '^#' "$RULES/$r.jsonl")))
done
want=0
for r in threshold_alert fahrenheit_to_celsius dedupe; do
	want=$((want + $(expected_of "$r" iot.telemetry | wc -l)))
done
want=$((want + $(expected_of geofence vehicles.gps | wc -l)))
wait_for 20 count_at_least "$want" lines
for r in threshold_alert fahrenheit_to_celsius dedupe geofence; do
	d=iot.telemetry
	[ "$r" = geofence ] && d=vehicles.gps
	exp=$(expected_of "$r" "$d")
	got=$(produced_by "$r")
	if [ "$exp" = "$got" ]; then
		ok "router: $r.lua produces what test-script predicted ($(wc -l <<<"$got") messages)"
	else
		not_ok "router: $r.lua produces what test-script predicted" \
			"$(diff <(echo "$exp") <(echo "$got") | head -n 20)"
	fi
done
line=$(grep '"topic":"iot.alerts"' "$out" | head -n 1)
assert_match '"alert":"out of range"' "$line" "threshold alerts reach the alerts topic"
assert_match '"headers":\{"mqtt.topic":"threshold_alert/sensors/site-1/dev-000[12]/[a-z]+",.*"alert":"out of range"\}' \
	"$line" "and keep the reading's headers, with the alert's added"

# downsample by the router's clock: a burst keeps the first reading of each
# device and sensor.
publish_sample downsample
wait_for 10 count_at_least 2 n_produced_by downsample
sleep 0.5
got=$(jq -c 'select(.source_topic | startswith("downsample/")) | [.payload.sensor, .payload.seq]' "$out" | sort | tr '\n' ' ')
assert_eq '["humidity",10] ["temperature",1] ' "$got" \
	"router: downsample.lua keeps one reading per device and sensor in a burst"

# window_stats by the router's clock (2 s windows, ticks every 250 ms): the
# windows account for every reading, and the readings themselves are dropped.
publish_sample window_stats
stats() {
	jq -s -c --arg d "$1" --arg s "$2" '[.[] | select(.topic == "iot.stats" and .key == $d and .payload.sensor == $s) | .payload] |
		[(map(.count) | add), (map(.min) | min), (map(.max) | max)]' "$out"
}
wait_for 15 stats_are dev-0002 humidity '[4,40,52]'
assert_eq '[7,19,24]' "$(stats dev-0001 temperature)" \
	"router: window_stats.lua sends count/min/max windows that cover all 7 temperature readings"
assert_eq '[4,40,52]' "$(stats dev-0002 humidity)" "and all 4 humidity readings"
assert_eq 0 "$(jq -c 'select(.source_topic | startswith("window_stats/"))' "$out" | wc -l)" \
	"the raw readings are dropped"
line=$(grep '"topic":"iot.stats"' "$out" | head -n 1)
assert_match '"payload":\{"avg":[0-9.]+,"count":[0-9]+,"device":"dev-000[12]".*"window_end":[0-9]+,"window_start":[0-9]+\}' \
	"$line" "a window carries avg, count, device, min, max and its bounds"

# A load through a rule: every reading passes, in order per device.
sim --devices 10 --count 2000 --rate 0 --qos 1 --device-format 'sim-%04d' \
	--topic 'threshold_alert/sensors/{site}/{device}/{sensor}'
wait_for 30 count_at_least 2000 sim_lines
grep '"topic":"iot.telemetry".*"source_topic":"threshold_alert/sensors/site-1/sim-' "$out" |
	sed -E 's/.*"key":"([^"]*)".*"payload":(\{.*\})\}$/\1\t\2/' >"$TEST_TMPDIR/sim.tsv"
assert_eq 2000 "$(wc -l <"$TEST_TMPDIR/sim.tsv")" "router: 2000 simulated readings pass threshold_alert.lua"
assert_cmd "each device's readings keep their order through the rule" check_order "$TEST_TMPDIR/sim.tsv"

# on_stop flushes open windows on shutdown.
for i in 1 2 3; do
	mqtt_pub -q 1 -t window_stats/sensors/site-1/dev-0003/pressure \
		-m "{\"device\":\"dev-0003\",\"sensor\":\"pressure\",\"value\":100$i,\"unit\":\"hPa\",\"seq\":$i}"
done
router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
assert_eq '[3,1001,1003]' "$(stats dev-0003 pressure)" \
	"windows still open at SIGTERM are sent by on_stop"
assert_eq 0 "$(router_counter router.lost)" "no message lost"
assert_eq 0 "$(router_counter threshold_alert.errors)" "the rules raised no errors"
assert_eq "$(router_counter router.received)" \
	"$(( $(router_counter router.delivered) + $(router_counter router.dropped) ))" \
	"every message received was delivered or dropped by a rule"

tap_done
