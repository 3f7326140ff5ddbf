#!/bin/bash
# transforms.sh - the shipped transforms (json_fields, schema_check, dedupe,
# rate_limit) in a running router between a real mosquitto broker and the
# file output: what each writes, what each dead-letters and why, windows
# and rate limits in real time, the counters that add up, and the
# configurations that --check or start-up refuse.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

conf=$(router_config transforms <<'CONF'
router = {
	workers = 3;
	dead_letter_topic = "dead";
	unmatched_topic = "unmatched";
};
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "transforms-test";
	topics = [ "#" ]; qos = 1;
} );
transforms = (
	{
		name = "fields"; plugin = "json_fields";
		drop = [ "debug" ];
		rename = [ "temp=temperature" ];
		cast = [ "temperature=float", "count=int", "ok=bool", "id=string" ];
		tags = [ "fleet=north", "site=${site}" ];
		timestamp_field = "received_us";
	},
	{
		name = "lenient"; plugin = "json_fields";
		keep = [ "n", "v" ]; cast = "n=int"; on_cast_error = "skip";
	},
	{
		name = "schema"; plugin = "schema_check";
		require = [ "device:string", "reading.value:number", "reading.unit:string|null" ];
		optional = [ "seq:integer" ];
		allow_extra = false;
	},
	{ name = "dd"; plugin = "dedupe"; window_ms = 1500; },
	{ name = "ddp"; plugin = "dedupe"; by = "payload"; window_ms = 60000; },
	{ name = "rl"; plugin = "rate_limit"; rate = 0.1; burst = 3; },
	{
		name = "rls"; plugin = "rate_limit"; rate = 0.1; burst = 2;
		policy = "sample"; sample_every = 5;
	}
);
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
routes = (
	{ match = "fields/+site/+dev"; topic = "t.fields"; key = "${dev}"; transforms = "fields"; },
	{ match = "lenient/+dev"; topic = "t.lenient"; key = "${dev}"; transforms = "lenient"; },
	{ match = "schema/+dev"; topic = "t.schema"; key = "${dev}"; transforms = "schema"; },
	{ match = "dedupe/+dev"; topic = "t.dedupe"; key = "${dev}"; transforms = "dd"; },
	{ match = "dedupe-payload/+dev"; topic = "t.ddp"; key = "${dev}"; transforms = "ddp"; },
	{ match = "rate/+dev"; topic = "t.rate"; key = "${dev}"; transforms = "rl"; },
	{ match = "sample/+dev"; topic = "t.sample"; key = "${dev}"; transforms = "rls"; },
	{ name = "chain"; match = "chain/+site/+dev"; topic = "t.chain"; key = "${dev}";
	  transforms = [ "schema", "fields" ]; }
);
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/out.jsonl

# lines TOPIC: the output lines written to Kafka topic TOPIC.
lines() {
	grep -F "\"topic\":\"$1\"" "$out" 2>/dev/null || true
}

# dead SOURCE_TOPIC: the dead letter of the message published to it.
dead() {
	grep -F '"topic":"dead"' "$out" 2>/dev/null | grep -F "\"source_topic\":\"$1\"" || true
}

# wait_counter NAME VALUE: until the running router's counter reaches VALUE.
wait_counter() {
	local n i
	for ((i = 0; i < 100; i++)); do
		n=$(router_live_counter "$1")
		[ "${n:-0}" -ge "$2" ] && return 0
		sleep 0.1
	done
	diag "counter $1 is ${n:-unset}, waited for $2"
	return 1
}

# --- json_fields ----------------------------------------------------------

mqtt_pub -q 1 -t fields/s1/d1 \
	-m '{"temp":"21.5","count":"7","ok":"yes","id":42,"debug":"x","v":0.1}'
mqtt_pub -q 1 -t fields/s1/bad-json -m 'not json'
mqtt_pub -q 1 -t fields/s1/bad-cast -m '{"temp":"hot"}'
mqtt_pub -q 1 -t fields/s1/bad-array -m '[1,2]'
mqtt_pub -q 1 -t lenient/d1 -m '{"n":"many","v":1.50,"gone":true}'
wait_until 10 '[ "$(wc -l <"$out" 2>/dev/null || echo 0)" -ge 5 ]'

line=$(lines t.fields)
assert_match '"payload":\{"temperature":21.5,"count":7,"ok":true,"id":"42","v":0.1,"fleet":"north","site":"s1","received_us":[0-9]{16}\}\}$' \
	"$line" "json_fields drops, renames in place, casts, tags (with a route capture) and stamps"
us=$(sed -E 's/.*"received_us":([0-9]+).*/\1/' <<<"$line")
at=$(sed -E 's/.*"received_at":"([0-9]+)".*/\1/' <<<"$line")
assert_eq "$at" "$us" "the timestamp is the message's receive time"

line=$(dead fields/s1/bad-json)
assert_match "\"iotrouter.error\":\"transform 'fields' failed: payload is not JSON: invalid token near 'not' \(line 1, column 3\)\"" \
	"$line" "a payload that is not JSON is dead-lettered with the parser's reason"
assert_match '"payload":"not json"' "$line" "and kept as it was"
line=$(dead fields/s1/bad-cast)
assert_match "\"iotrouter.error\":\"transform 'fields' failed: cannot cast field 'temperature' to float: a string \\\\\"hot\\\\\" is not a number\"" \
	"$line" "a value that cannot be cast is dead-lettered, naming the field and value"
line=$(dead fields/s1/bad-array)
assert_match "payload is an array, not a JSON object" "$line" "a JSON array is not an object"
line=$(lines t.lenient)
assert_match '"payload":\{"n":"many","v":1.5\}' "$line" \
	"on_cast_error = skip leaves the field as it was; keep removes the rest"

# --- schema_check -------------------------------------------------------------

mqtt_pub -q 1 -t schema/good -m '{"device":"d1","seq":3,"reading":{"value":21.5,"unit":null}}'
mqtt_pub -q 1 -t schema/missing -m '{"device":"d1","reading":{"unit":"C"}}'
mqtt_pub -q 1 -t schema/type -m '{"device":7,"reading":{"value":"21.5","unit":"C"}}'
mqtt_pub -q 1 -t schema/extra -m '{"device":"d1","reading":{"value":1,"unit":"C","raw":5},"x":1}'
mqtt_pub -q 1 -t schema/not-json -m '{"device":'
wait_until 10 '[ "$(wc -l <"$out")" -ge 10 ]'

assert_match '"payload":\{"device":"d1","seq":3,"reading":\{"value":21.5,"unit":null\}\}' \
	"$(lines t.schema)" "a valid message passes schema_check unchanged"
assert_match "\"iotrouter.error\":\"transform 'schema' failed: field 'reading.value' is missing\"" \
	"$(dead schema/missing)" "a missing nested field is named by its path"
assert_match "field 'device' must be string, not integer; field 'reading.value' must be number, not string\"" \
	"$(dead schema/type)" "each field of the wrong type is named with both types"
assert_match "field 'reading.raw' is not allowed \(allow_extra = false\); field 'x' is not allowed" \
	"$(dead schema/extra)" "allow_extra = false names the extra fields, nested too"
assert_match "transform 'schema' failed: payload is not JSON: " "$(dead schema/not-json)" \
	"invalid JSON is dead-lettered by schema_check too"

# a chain: schema_check, then json_fields; a failure stops the chain
mqtt_pub -q 1 -t chain/s2/d1 -m '{"device":"d1","reading":{"value":1,"unit":"C"},"seq":1}'
mqtt_pub -q 1 -t chain/s2/d2 -m '{"device":"d2","seq":2}'
wait_until 10 '[ "$(wc -l <"$out")" -ge 12 ]'
assert_match '"payload":\{"device":"d1","reading":\{"value":1,"unit":"C"\},"seq":1,"fleet":"north","site":"s2","received_us":[0-9]+\}' \
	"$(lines t.chain)" "transforms run in the route's order"
assert_match "\"iotrouter.error\":\"transform 'schema' failed: field 'reading' is missing\",\"iotrouter.route\":\"route 'chain'\"" \
	"$(dead chain/s2/d2)" "the dead letter names the failing transform and the route"

# --- dedupe ---------------------------------------------------------------------

# three messages of one key in one connection, well within the window
printf '{"seq":%d}\n' 1 2 3 | mqtt_pub -q 1 -t dedupe/d1 -l
mqtt_pub -q 1 -t dedupe/d2 -m '{"seq":1}'
wait_counter dd.dropped 2
wait_until 10 '[ "$(lines t.dedupe | wc -l)" -ge 2 ]'
assert_eq '{"seq":1}' "$(lines t.dedupe | grep '"key":"d1"' | sed -E 's/.*"payload":(.*)\}$/\1/')" \
	"dedupe passes the first of a key's messages within the window"
assert_eq 1 "$(lines t.dedupe | grep -c '"key":"d2"')" "another key is not a duplicate"
sleep 1.6
mqtt_pub -q 1 -t dedupe/d1 -m '{"seq":4}'
wait_counter dd.passed 3
wait_until 10 '[ "$(lines t.dedupe | wc -l)" -ge 3 ]'
assert_match '"payload":\{"seq":4\}' "$(lines t.dedupe | tail -1)" \
	"after window_ms the key passes again"

mqtt_pub -q 1 -t dedupe-payload/a -m '{"state":"open"}'
mqtt_pub -q 1 -t dedupe-payload/b -m '{"state":"open"}'
mqtt_pub -q 1 -t dedupe-payload/b -m '{"state":"closed"}'
wait_counter ddp.dropped 1
wait_counter ddp.passed 2
wait_until 10 '[ "$(lines t.ddp | wc -l)" -ge 2 ]'
assert_eq 2 "$(lines t.ddp | wc -l)" "by = payload drops the same payload from another key"

# --- rate_limit ---------------------------------------------------------------

# 2 devices x 10 readings as fast as the simulator can publish them
sim --devices 2 --count 20 --rate 0 --qos 1 --topic 'rate/{device}'
wait_counter rl.dropped 14
wait_until 10 '[ "$(lines t.rate | wc -l)" -ge 6 ]'
assert_eq 3 "$(lines t.rate | grep -c '"key":"dev-0001"')" \
	"rate_limit passes a key's burst and drops the rest"
assert_eq 3 "$(lines t.rate | grep -c '"key":"dev-0002"')" "each key has its own bucket"
assert_eq '1 2 3' "$(lines t.rate | grep '"key":"dev-0001"' |
	sed -E 's/.*"seq":([0-9]+).*/\1/' | tr '\n' ' ' | sed 's/ $//')" \
	"the first messages of the burst are the ones passed"

seq 1 12 | sed 's/.*/{"n":&}/' | mqtt_pub -q 1 -t sample/d1 -l
wait_counter rls.dropped 8
wait_until 10 '[ "$(lines t.sample | wc -l)" -ge 4 ]'
line=$(lines t.sample)
assert_eq 4 "$(grep -c . <<<"$line")" \
	"policy = sample passes the burst, then 1 in sample_every over the limit"
assert_eq '{"n":1} {"n":2} {"n":3} {"n":8}' \
	"$(sed -E 's/.*"payload":(.*)\}$/\1/' <<<"$line" | tr '\n' ' ' | sed 's/ $//')" \
	"the first over-limit message of each sample_every is the one passed"
assert_eq 2 "$(grep -c '"iotrouter.sampled":"5"' <<<"$line")" \
	"a sampled message carries iotrouter.sampled = sample_every"

router_stop
assert_eq 0 "$ROUTER_RC" "the router stops cleanly"
received=$(router_counter router.received)
assert_eq "$received" "$(($(router_counter router.delivered) + $(router_counter router.dropped)))" \
	"every message is delivered or dropped"
assert_eq "$(router_counter router.dropped)" \
	"$(($(router_counter dd.dropped) + $(router_counter ddp.dropped) + $(router_counter rl.dropped) + $(router_counter rls.dropped)))" \
	"the router's drops are the transforms' drops"
assert_eq 8 "$(router_counter router.dead_lettered)" "eight messages were dead-lettered"
assert_eq 3 "$(router_counter fields.failed)" "json_fields counts what it failed"
assert_eq 1 "$(router_counter lenient.cast_skipped)" "and the casts it skipped"
assert_eq 2 "$(router_counter rls.sampled)" "rate_limit counts what it sampled"
assert_eq 0 "$(router_counter router.lost)" "nothing was lost"

# --- configurations refused ------------------------------------------------------

check() {
	"$IOTROUTER" --check -c "$1" -P "$IOTR_PLUGIN_DIR" 2>&1
}

cat >"$TEST_TMPDIR/params.conf" <<'CONF'
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = [ "#" ]; } );
transforms = (
	{ name = "d"; plugin = "dedupe"; window_ms = "soon"; max_entries = 0; },
	{ name = "r"; plugin = "rate_limit"; burst = 0; rate = "fast"; },
	{ name = "f"; plugin = "json_fields"; keep = 5; },
	{ name = "s"; plugin = "schema_check"; allow_extra = "no"; max_errors = 1000; }
);
outputs = ( { name = "out"; plugin = "stdout"; } );
routes = ( { match = "#"; topic = "t"; transforms = [ "d", "r", "f", "s" ]; } );
CONF
out_check=$(check "$TEST_TMPDIR/params.conf"); rc=$?
assert_eq 3 "$rc" "--check refuses parameters of the wrong type or range"
assert_match "params.conf:3: transform 'd': parameter 'window_ms' must be integer, not a string" \
	"$out_check" "a window that is not a number is named"
assert_match "params.conf:3: transform 'd': parameter 'max_entries' is 0; it must be between 1 and 100000000" \
	"$out_check" "max_entries has a range"
assert_match "params.conf:4: transform 'r': parameter 'burst' is 0; it must be between 1 and 1000000" \
	"$out_check" "burst has a range"
assert_match "params.conf:4: transform 'r': parameter 'rate' must be number, not a string" \
	"$out_check" "rate must be a number"
assert_match "params.conf:5: transform 'f': parameter 'keep' must be list of strings" \
	"$out_check" "keep must be a list of strings"
assert_match "params.conf:6: transform 's': parameter 'allow_extra' must be boolean" \
	"$out_check" "allow_extra must be a boolean"
assert_match "params.conf:6: transform 's': parameter 'max_errors' is 1000; it must be between 1 and 100" \
	"$out_check" "max_errors has a range"

# create() reads the values themselves: its refusals stop the start-up.
starts() {
	local name=$1 rc=0
	shift
	router_config "$name" >/dev/null <<CONF
inputs = ( { name = "in"; plugin = "mqtt"; port = $MQTT_PORT; client_id = "$name"; topics = [ "#" ]; } );
transforms = ( { name = "t"; $* } );
outputs = ( { name = "out"; plugin = "stdout"; } );
routes = ( { match = "#"; topic = "t"; transforms = "t"; } );
CONF
	timeout 20 "$IOTROUTER" -c "$TEST_TMPDIR/$name.conf" -P "$IOTR_PLUGIN_DIR" \
		>/dev/null 2>"$TEST_TMPDIR/$name.log" || rc=$?
	echo "$rc"
}

rc=$(starts rename 'plugin = "json_fields"; rename = [ "a=b", "temp" ];')
assert_ne 0 "$rc" "the router does not start with a rename entry without '='"
assert_match "\[plugin:t\] rename entry \"temp\" has no '='; write it as \"old=new\"" \
	"$(cat "$TEST_TMPDIR/rename.log")" "and says which entry and how to write it"
rc=0; check "$TEST_TMPDIR/rename.conf" >/dev/null || rc=$?
assert_eq 0 "$rc" "--check, which does not run create(), passes that config"
starts cast 'plugin = "json_fields"; cast = [ "t=number" ];' >/dev/null
assert_match "cast entry \"t=number\": the type must be one of int, float, string, bool" \
	"$(cat "$TEST_TMPDIR/cast.log")" "an unknown cast type is named"
# shellcheck disable=SC2016 # ${site is the config's text
starts tags 'plugin = "json_fields"; tags = [ "site=${site" ];' >/dev/null
assert_match "tags entry \"site=\\$\{site\": \"\\$\{\" must be followed by a capture name" \
	"$(cat "$TEST_TMPDIR/tags.log")" "an unclosed capture in a tag is named"
starts schema 'plugin = "schema_check"; require = [ "gps.lat:numbr" ];' >/dev/null
assert_match "require entry \"gps.lat:numbr\": the type must be one of string, number, integer, boolean, object, array, null, any" \
	"$(cat "$TEST_TMPDIR/schema.log")" "an unknown schema type is named with the known ones"
starts schema2 'plugin = "schema_check"; require = [ "gps:string", "gps.lat:number" ];' >/dev/null
assert_match "field 'gps' is declared without type object, but 'gps.lat' is a path into it" \
	"$(cat "$TEST_TMPDIR/schema2.log")" "a path into a non-object is refused"
starts rate 'plugin = "rate_limit"; rate = 0;' >/dev/null
assert_match "rate = 0 is out of range; it must be more than 0 and at most 1e\+06 messages per second" \
	"$(cat "$TEST_TMPDIR/rate.log")" "a rate of 0 is refused"
starts policy 'plugin = "rate_limit"; policy = "sampel";' >/dev/null
assert_match "policy = \"sampel\" is not one of drop, sample; fix .policy." \
	"$(cat "$TEST_TMPDIR/policy.log")" "an unknown policy is named"
starts by 'plugin = "dedupe"; by = "topic";' >/dev/null
assert_match "by = \"topic\" is not one of key, payload, both" \
	"$(cat "$TEST_TMPDIR/by.log")" "an unknown dedupe basis is named"

tap_done
