#!/bin/bash
# tests/bench/smoke.sh - scripts/bench still runs and says what it promises.
#
# A short run against the embedded Kafka cluster only (no JVM): 64-byte
# payloads at QoS 1, the plain route and the pass-through Lua rule, with
# two saturation phases per case.  Checks what a reader of the results
# relies on: one printed line per case ending in ratio=, every case
# complete (every message published arrived), a CSV row per case with a
# rate, a bare reference and latencies, and the per-phase lines in
# cases.log that the medians come from.  It does not judge the numbers: on
# a machine running other tests they say nothing.
#
# Run from the top of a built tree: tests/bench/smoke.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/../.." || exit 1
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/iotrouter-bench-smoke.XXXXXX")}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

# options it cannot honour are refused at once, naming the option, before
# anything is installed, built or started
refused() {
	local want=$1 msg rc
	shift
	msg=$(scripts/bench "$@" 2>&1)
	rc=$?
	[ "$rc" -eq 2 ] && [[ $msg == *"$want"* ]] &&
		pass "refused: $*" || fail "scripts/bench $* exited $rc: $msg"
}
refused "--repeat takes a count of 1 or more" --repeat 0
refused "--repeat takes a count of 1 or more" --repeat two
refused "unknown option --no-such-option" --no-such-option

if ! scripts/bench --skip-deps --skip-build --no-real-kafka --quick \
	--qos 1 --variants "plain lua" --repeat 2 --out "$out" >"$out.log" 2>&1; then
	cat "$out.log"
	fail "scripts/bench exited with an error"
fi
txt=$out/bench.txt csv=$out/bench.csv

# the cases a run without the JVM has, each printed once
for c in bare-mqtt bare-kafka router router+lua; do
	n=$(grep -c "case=$c " "$txt" 2>/dev/null)
	[ "${n:-0}" -eq 1 ] && pass "one line for $c" || fail "$c: ${n:-0} lines in bench.txt"
done
bad=$(grep '^size=' "$txt" | grep -cv ' ratio=[0-9][0-9.]*$')
[ "$bad" -eq 0 ] && pass "every case line ends in ratio=N" || fail "$bad case lines without ratio=N"

# CSV: header plus four rows; every row complete, with a rate, a p99 and a
# bare reference (columns after the quoted note, which may hold commas, are
# counted from the end)
head -1 "$csv" | grep -q ',kafka_gc_ms,bare_ref_rate,p99_to_router_ms,p99_after_router_ms,mosquitto_cpu_s_per_M,kafka_cpu_s_per_M$' &&
	pass "CSV header" || fail "CSV header: $(head -1 "$csv")"
rows=$(awk -F, 'NR > 1' "$csv" | wc -l)
[ "$rows" -eq 4 ] && pass "4 CSV rows" || fail "$rows CSV rows, expected 4"
awk -F, 'NR > 1 && !($5 > 0 && $8 > 0 && $16 == 1 && $(NF - 4) > 0) { print; bad = 1 }
	END { exit bad }' "$csv" && pass "every row: rate, p99, complete, bare reference" ||
	fail "rows above lack a rate, a p99, completeness or a bare reference"
# the cases read back from Kafka split their p99 at the record's timestamp,
# and neither part exceeds the whole
awk -F, 'NR > 1 && $3 != "bare-mqtt" && !($(NF - 3) >= 0 && $(NF - 2) > 0 &&
	$(NF - 3) <= $8 + 1 && $(NF - 2) <= $8 + 1) { print; bad = 1 }
	END { exit bad }' "$csv" && pass "Kafka rows: p99 split at the record's timestamp" ||
	fail "rows above lack the p99 split, or a part exceeds the whole"
# mosquitto's CPU per message where it carries the messages (not in the
# bare Kafka producer's case); no JVM's in a run without the real broker
awk -F, 'NR > 1 && !(($3 == "bare-kafka" ? $(NF - 1) == "-" : $(NF - 1) > 0) && $NF == "-") { print; bad = 1 }
	END { exit bad }' "$csv" && pass "mosquitto's CPU per message, and no JVM's" ||
	fail "rows above: mosquitto's CPU missing where it worked, or a JVM's CPU without a JVM"

# the router cases compared with the bare phases around them: 2 router
# phases each, and 1 + 2 bare rates (the one before, one after each)
for c in router router+lua; do
	line=$(grep " $c embedded 64 1 rates " "$out/logs/cases.log")
	set -- $(printf '%s\n' "$line" | sed -n 's/.* rates \(.*\) bare rates \(.*\): ratio.*/\1|\2/p' | tr '|' '\n' | awk '{ print NF }')
	[ "${1:-0}" -eq 2 ] && [ "${2:-0}" -eq 3 ] &&
		pass "$c: 2 router phases, 3 bare references" ||
		fail "$c: cases.log says '$line'"
done

[ "$fails" -eq 0 ] || { echo "results kept in $out"; exit 1; }
rm -rf "$out" "$out.log"
echo "bench smoke run: all checks passed"
