#!/bin/sh
# tests/lua/bench.sh - what a Lua rule costs per message: a rule that only
# passes messages on, and a typical one (decode the JSON payload, compare a
# value with a threshold, fan out an alert now and then), each timed over
# N calls of the lua transform's process() by `iotrouter test-script
# --bench`.  Run from the build tree:  tests/lua/bench.sh [N]
set -eu
n=${1:-1000000}
top=$(cd "$(dirname "$0")/../.." && pwd)
iotrouter=${IOTROUTER:-$top/iotrouter}
plugins=${IOTR_PLUGIN_DIR:-$top/plugins/.libs}
dir=$(mktemp -d "${TMPDIR:-/tmp}/iotr-bench-lua.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cat >"$dir/pass.lua" <<'LUA'
function on_message(msg)
	return msg
end
LUA
cat >"$dir/threshold.lua" <<'LUA'
local limit = 30
function on_message(msg)
	local r = msg:json()
	if type(r) == "table" and type(r.value) == "number" and r.value > limit then
		return { msg, { kafka_topic = "alerts", payload = { device = r.device, value = r.value } } }
	end
	return msg
end
LUA
msg='{"topic":"sensors/site-1/dev-0001/temperature","key":"dev-0001","payload":{"device":"dev-0001","site":"site-1","sensor":"temperature","value":21.53,"unit":"C","seq":1234,"ts":1700000000000000}}'
for rule in pass threshold "$top/scripts/rules/threshold_alert" "$top/scripts/rules/fahrenheit_to_celsius"; do
	case $rule in /*) f=$rule.lua ;; *) f=$dir/$rule.lua ;; esac
	echo "$msg" | "$iotrouter" test-script -q -P "$plugins" --bench "$n" "$f"
done
