#!/bin/bash
# inline_auto.sh - router.inline_transforms = "auto", the default: a route
# whose rule is cheap runs on the input's thread, one whose rule is dear
# goes to the workers, and a rule whose cost changes from message to
# message moves between the two with every message delivered once and in
# order per key.  router.inline counts the messages run inline.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

# burn(): about half a millisecond of Lua, a hundred times the cheap rule.
cat >"$TEST_TMPDIR/light.lua" <<'LUA'
function on_message(msg)
	return msg
end
LUA
cat >"$TEST_TMPDIR/heavy.lua" <<'LUA'
local function burn()
	local x = 0
	for i = 1, 100000 do x = x + i end
	return x
end
function on_message(msg)
	-- readings 1 to 9 and 50 to 59 (and so on) of each device are dear
	local r = msg:json()
	if router.vars.always == "yes" or r.seq % 50 < 10 then burn() end
	return msg
end
LUA

# The threshold is set well above the cheap rule's cost even under
# AddressSanitizer, and well below the dear one's.
conf=$(router_config inline <<'CONF'
router = { workers = 2; inline_max_us = 50; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "inline-auto";
	topics = [ "light/#", "heavy/#", "mixed/#" ]; qos = 1;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
transforms = (
	{ name = "light"; plugin = "lua"; script = "@DIR@/light.lua"; },
	{ name = "heavy"; plugin = "lua"; script = "@DIR@/heavy.lua";
	  instruction_budget = 10000000; vars = [ "always=yes" ]; },
	{ name = "mixed"; plugin = "lua"; script = "@DIR@/heavy.lua";
	  instruction_budget = 10000000; }
);
routes = (
	{ match = "light/+site/+dev/+sensor"; topic = "light"; key = "${dev}";
	  transforms = [ "light" ]; default_headers = false; },
	{ match = "heavy/+site/+dev/+sensor"; topic = "heavy"; key = "${dev}";
	  transforms = [ "heavy" ]; default_headers = false; },
	{ match = "mixed/+site/+dev/+sensor"; topic = "mixed"; key = "${dev}";
	  transforms = [ "mixed" ]; default_headers = false; }
);
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/out.jsonl

on_topic() { grep -c "\"topic\":\"$1\"" "$out" 2>/dev/null || echo 0; }
# key<TAB>payload of the messages on a topic, for check_order
tsv_of() {
	grep "\"topic\":\"$1\"" "$out" |
		sed -E 's/.*"key":"([^"]*)".*"payload":(\{.*\})\}$/\1\t\2/'
}
# delivered_once_in_order TOPIC N WHAT: N messages on TOPIC, each device's
# readings once each and in order
delivered_once_in_order() {
	local tsv=$TEST_TMPDIR/$1.tsv
	tsv_of "$1" >"$tsv"
	assert_eq "$2" "$(wc -l <"$tsv")" "$3: $2 messages delivered"
	assert_eq "$2" "$(cut -f2 "$tsv" | jq -r '"\(.device) \(.seq)"' | sort -u | wc -l)" \
		"each of them once"
	assert_cmd "each device's messages in order" check_order "$tsv"
}

# 1. a cheap rule runs inline
sim --devices 10 --count 2000 --rate 0 --qos 1 --topic 'light/{site}/{device}/{sensor}'
wait_for 30 count_at_least 2000 on_topic light
n_light=$(router_live_counter router.inline)
assert_eq 2000 "$(on_topic light)" "cheap rule: 2000 messages delivered"
assert_ge 1900 "${n_light:-0}" "cheap rule: nearly all of them ran on the input's thread (router.inline=${n_light:-?})"

# 2. a dear rule goes to the workers, once a few samples (one message in
# 16, at random) have shown it dear: the first dozens run inline
sim --devices 10 --count 1000 --rate 0 --qos 1 --topic 'heavy/{site}/{device}/{sensor}'
wait_for 60 count_at_least 1000 on_topic heavy
n_heavy=$(( $(router_live_counter router.inline) - n_light ))
assert_eq 1000 "$(on_topic heavy)" "dear rule: 1000 messages delivered"
if [ "$n_heavy" -le 200 ]; then
	ok "dear rule: the workers ran nearly all of them ($n_heavy of 1000 inline)"
else
	not_ok "dear rule: the workers ran nearly all of them" "$n_heavy of 1000 ran inline"
fi

# 3. a rule that is dear for one message in five moves between the two
# (at a pace the workers keep up with: a backlog stays on the workers)
sim --devices 10 --count 3000 --rate 2000 --qos 1 --topic 'mixed/{site}/{device}/{sensor}'
wait_for 60 count_at_least 3000 on_topic mixed
n_mixed=$(( $(router_live_counter router.inline) - n_light - n_heavy ))
delivered_once_in_order mixed 3000 "changing cost"
if [ "$n_mixed" -ge 300 ] && [ "$n_mixed" -le 2700 ]; then
	ok "both ran some: $n_mixed of 3000 inline, the rest on the workers"
else
	not_ok "both ran some" "$n_mixed of 3000 ran inline"
fi

router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"

# 4. a wait for the worker that runs out.  One reading in ten costs 5 ms,
# the rest almost nothing: the route's average stays under inline_max_us
# but now and then goes over it for a few messages, which then queue for
# the worker, 5 ms ones among them.  When the route comes back inline, the
# input waits inline_drain_wait_us (100 us) for them, gives up while the
# worker is on a dear one, counts router.inline_drain_timeouts and sends
# the lane's messages to the worker for 5 ms (50 times the wait) before
# it tries again.  Delivery and order hold all the same.
cat >"$TEST_TMPDIR/spiky.lua" <<'LUA'
function on_message(msg)
	local r = msg:json()
	if r.seq % 10 == 0 then
		local x = 0
		for i = 1, 1000000 do x = x + i end
	end
	return msg
end
LUA
conf=$(router_config drain <<'CONF'
router = { workers = 1; inline_max_us = 100; inline_drain_wait_us = 100; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "inline-drain";
	topics = [ "drain/#" ]; qos = 1;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/drain.jsonl"; } );
transforms = ( { name = "spiky"; plugin = "lua"; script = "@DIR@/spiky.lua";
                 instruction_budget = 50000000; } );
routes = ( { match = "drain/+site/+dev/+sensor"; topic = "drain"; key = "${dev}";
             transforms = [ "spiky" ]; default_headers = false; } );
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/drain.jsonl
sim --devices 10 --count 3000 --rate 2000 --qos 1 --topic 'drain/{site}/{device}/{sensor}'
wait_for 60 count_at_least 3000 on_topic drain
router_stop
assert_eq 0 "$ROUTER_RC" "the second router stops cleanly"
n_timeouts=$(router_counter router.inline_drain_timeouts)
n_inline=$(router_counter router.inline)
delivered_once_in_order drain 3000 "short drain wait"
assert_ge 1 "${n_timeouts:-0}" "waits that ran out are counted (router.inline_drain_timeouts=${n_timeouts:-?})"
if [ "${n_inline:-0}" -ge 1 ] && [ "${n_inline:-0}" -lt 3000 ]; then
	ok "the route still ran inline between them ($n_inline of 3000)"
else
	not_ok "the route still ran inline between them" "router.inline=${n_inline:-?} of 3000"
fi
tap_done
