#!/bin/bash
# lua_safety.sh - a rule cannot take the router down: an endless loop, an
# error and an allocation without bound each dead-letter their message
# (with the script's file and line in the iotrouter.error header) while the
# other messages keep flowing; the sandbox keeps os.execute and io out;
# SIGHUP reloads a good script, keeps the old one when the new one is
# broken, and loses or repeats no message across reloads.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

rule=$TEST_TMPDIR/bad.lua
# write_rule VERSION: the rule, tagging what it passes with its version.
write_rule() {
	cat >"$rule.new" <<EOF
local version = "$1"
function on_message(msg)
	local p = msg.payload
	if p == "loop" then while true do end end
	if p == "error" then error("boom on purpose") end
	if p == "alloc" then
		local t = {}
		while true do t[#t + 1] = string.rep("x", 1000) .. #t end
	end
	if p == "exec" then os.execute("touch " .. router.vars.canary) end
	if p == "io" then io.open(router.vars.canary, "w") end
	local n = router.state()
	n.count = (n.count or 0) + 1
	msg.headers.version = version
	return msg
end
EOF
	mv "$rule.new" "$rule"
}
write_rule 1

conf=$(router_config safety <<'CONF'
router = { workers = 2; dead_letter_topic = "dead"; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "lua-safety";
	topics = [ "t/#" ]; qos = 1;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
transforms = ( {
	name = "bad"; plugin = "lua"; script = "@DIR@/bad.lua";
	instruction_budget = 200000; memory_limit = 4194304;
	vars = [ "canary=@DIR@/pwned" ];
} );
routes = ( {
	match = "t/+dev"; topic = "out"; key = "${dev}"; transforms = [ "bad" ];
	default_headers = false;
} );
CONF
)
router_start "$conf" || bail_out "router did not start"
out=$TEST_TMPDIR/out.jsonl

lines() { wc -l <"$out" 2>/dev/null || echo 0; }
sim_lines() { grep -c '"key":"dev-0' "$out"; }

start=$(date +%s%N)
for p in ok-1 loop ok-2 error ok-3 alloc ok-4 exec io ok-5; do
	mqtt_pub -q 1 -t t/dev-1 -m "$p"
done
wait_for 20 count_at_least 10 lines
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
assert_cmd "the router is still running" kill -0 "$ROUTER_PID"
ok_lines=$(grep '"topic":"out"' "$out")
assert_eq "ok-1 ok-2 ok-3 ok-4 ok-5" \
	"$(jq -r '.payload' <<<"$ok_lines" | tr '\n' ' ' | sed 's/ $//')" \
	"the good messages on the same key keep flowing, in order"
diag "10 messages with 5 failures took ${elapsed_ms} ms"
dead=$(grep '"topic":"dead"' "$out")
line=$(grep '"payload":"loop"' <<<"$dead")
assert_match '"iotrouter.error":"transform .bad. failed: [^"]*/bad.lua:4: instruction budget of 200000 exceeded in on_message' \
	"$line" "an endless loop is cut off by the budget and dead-lettered, naming file and line"
line=$(grep '"payload":"error"' <<<"$dead")
assert_match '"iotrouter.error":"transform .bad. failed: [^"]*/bad.lua:5: boom on purpose"' \
	"$line" "an error is dead-lettered with the script's file, line and message"
line=$(grep '"payload":"alloc"' <<<"$dead")
assert_match '"iotrouter.error":"transform .bad. failed: [^"]*/bad.lua:[0-9]+: memory limit of 4194304 bytes exceeded in on_message' \
	"$line" "an allocation without bound hits memory_limit and is dead-lettered"
line=$(grep '"payload":"exec"' <<<"$dead")
assert_match "bad.lua:10: attempt to call a nil value \(field 'execute'\)" "$line" \
	"the sandbox has no os.execute"
line=$(grep '"payload":"io"' <<<"$dead")
assert_match "bad.lua:11: attempt to index a nil value \(global 'io'\)" "$line" \
	"the sandbox has no io library"
assert_fails "nothing the sandbox refused was done" test -e "$TEST_TMPDIR/pwned"
assert_eq 5 "$(router_live_counter bad.errors)" "five failures are counted"
assert_eq 1 "$(router_live_counter bad.budget_exceeded)" "one as a blown budget"
assert_eq 1 "$(router_live_counter bad.memory_exceeded)" "one as memory"
assert_eq 1 "$(router_live_counter bad.state_resets)" "and that state was started afresh"
assert_match "bad.lua:4: instruction budget .* the message from 't/dev-1' goes to the dead-letter topic" \
	"$(grep 'plugin:bad' "$ROUTER_LOG")" "failures are logged with the file and line"

# --- reload -------------------------------------------------------------------
write_rule 2
kill -HUP "$ROUTER_PID"
wait_for 10 grep -q 'reloaded .*bad.lua (version 2)' "$ROUTER_LOG"
assert_cmd "SIGHUP reloads a changed script" grep -q 'reloaded .*bad.lua' "$ROUTER_LOG"
mqtt_pub -q 1 -t t/dev-1 -m after-reload
wait_for 10 grep -q '"payload":"after-reload"' "$out"
assert_match '"version":"2"' "$(grep '"payload":"after-reload"' "$out")" \
	"the next message meets the new version"

printf 'function on_message(msg)\n  return msg\nend end\n' >"$rule"
kill -HUP "$ROUTER_PID"
wait_for 10 grep -q 'reload of .*bad.lua refused' "$ROUTER_LOG"
assert_match "reload of .*bad.lua refused: .*bad.lua:3: .* the previous version keeps running" \
	"$(grep 'refused' "$ROUTER_LOG")" "a broken script is refused with its file and line"
mqtt_pub -q 1 -t t/dev-1 -m after-broken
wait_for 10 grep -q '"payload":"after-broken"' "$out"
assert_match '"version":"2"' "$(grep '"payload":"after-broken"' "$out")" \
	"and the previous version keeps running"
assert_eq 1 "$(router_live_counter bad.reload_failures)" "the refused reload is counted"

# Reloads while messages flow: none lost, none twice, order kept.
sim --devices 8 --count 3000 --rate 1500 --qos 1 --topic 't/{device}' &
sim_pid=$!
for v in 3 4 5 6; do
	sleep 0.3
	write_rule "$v"
	kill -HUP "$ROUTER_PID"
done
wait "$sim_pid"
wait_for 30 count_at_least 3000 sim_lines
grep '"key":"dev-0' "$out" | sed -E 's/.*"key":"([^"]*)".*"payload":(\{.*\})\}$/\1\t\2/' \
	>"$TEST_TMPDIR/sim.tsv"
assert_eq 3000 "$(wc -l <"$TEST_TMPDIR/sim.tsv")" \
	"3000 messages across four reloads: each delivered once"
assert_cmd "in order per device" check_order "$TEST_TMPDIR/sim.tsv"
assert_eq 6 "$(grep '"key":"dev-0' "$out" | tail -n 1 | jq -r '.headers.version')" \
	"the last messages meet the last version"

router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
assert_eq 0 "$(router_counter router.lost)" "no message lost"

# --- settings ------------------------------------------------------------------
cat >"$TEST_TMPDIR/io.lua" <<'EOF'
function on_message(msg)
	local f = assert(io.open(router.vars.file, "w"))
	f:write(msg.payload)
	f:close()
	return msg
end
EOF
cat >"$TEST_TMPDIR/allow.conf" <<EOF
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = [ "#" ]; } );
outputs = ( { name = "out"; plugin = "file"; path = "/dev/null"; } );
transforms = ( { name = "io"; plugin = "lua"; script = "io.lua"; allow = [ "io" ];
                 vars = [ "file=$TEST_TMPDIR/written" ]; } );
routes = ( { match = "#"; transforms = [ "io" ]; } );
EOF
echo '{"topic":"a","payload":"granted"}' |
	"$IOTROUTER" test-script -q -P "$IOTR_PLUGIN_DIR" -c "$TEST_TMPDIR/allow.conf" \
	"$TEST_TMPDIR/io.lua" >/dev/null 2>&1
assert_eq granted "$(cat "$TEST_TMPDIR/written" 2>/dev/null)" 'allow = [ "io" ] grants the io library'

sed -e 's/allow = \[ "io" \];/allow = [ "shell" ]; instruction_budget = 5;/' \
	"$TEST_TMPDIR/allow.conf" >"$TEST_TMPDIR/bad.conf"
rc=0
msg=$("$IOTROUTER" --check -P "$IOTR_PLUGIN_DIR" -c "$TEST_TMPDIR/bad.conf" 2>&1) || rc=$?
assert_eq 3 "$rc" "a budget below its minimum is a config error"
assert_match "parameter 'instruction_budget' is 5; it must be between 1000 and" "$msg" \
	"naming the limit"
rc=0
msg=$(echo '{"topic":"a"}' | "$IOTROUTER" test-script -q -P "$IOTR_PLUGIN_DIR" \
	-c "$TEST_TMPDIR/allow.conf" "$TEST_TMPDIR/nope.lua" 2>&1) || rc=$?
sed -i 's/allow = \[ "io" \];/allow = [ "shell" ];/' "$TEST_TMPDIR/allow.conf"
msg=$(echo '{"topic":"a"}' | "$IOTROUTER" test-script -q -P "$IOTR_PLUGIN_DIR" \
	-c "$TEST_TMPDIR/allow.conf" "$TEST_TMPDIR/io.lua" 2>&1) || rc=$?
assert_match 'allow: "shell" is not something a rule can be allowed; use io, os, require' \
	"$msg" "an unknown grant is refused"

# The per-state limits name themselves when hit.
cat >"$TEST_TMPDIR/count.lua" <<'EOF'
function on_message(msg)
	local s = router.state()
	s.n = (s.n or 0) + 1
	return nil
end
function on_stop()
	for key, s in router.keys() do
		router.emit{ topic = "counts", key = key, payload = { n = s.n } }
	end
end
EOF
cat >"$TEST_TMPDIR/limits.conf" <<EOF
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = [ "#" ]; } );
outputs = ( { name = "out"; plugin = "file"; path = "/dev/null"; } );
transforms = ( { name = "count"; plugin = "lua"; script = "count.lua";
                 max_state_keys = 2; max_emits = 1; } );
routes = ( { match = "#"; transforms = [ "count" ]; } );
EOF
msg=$(printf '{"topic":"t","key":"k%d"}\n' 1 2 3 |
	"$IOTROUTER" test-script -q -P "$IOTR_PLUGIN_DIR" -c "$TEST_TMPDIR/limits.conf" \
	"$TEST_TMPDIR/count.lua" 2>&1) || true
assert_match '"input":3,"result":"dead-lettered","error":"[^"]*count.lua:2: router.state: 2 keys are in use \(max_state_keys\)' \
	"$msg" "a third key past max_state_keys = 2 fails its message"
assert_match 'count.lua:8: one call may produce at most 1 messages \(max_emits\)' \
	"$msg" "a second message from one call past max_emits = 1 fails the call"
assert_match '"stop":true,"result":"produced","topic":"counts","source_topic":"counts","key":"k1"' \
	"$msg" "and what was emitted before the limit is still sent"

tap_done
