# shellcheck shell=bash
# tests/harness/lib.sh - helpers for iotrouter's integration tests (bash).
#
#   . "$(dirname "$0")/../harness/lib.sh"    # or wherever the test lives
#   tmpdir_setup                             # $TEST_TMPDIR, cleanup on exit
#   start_mosquitto                          # $MQTT_PORT, $MQTT_PID
#   B=$(kafka_bootstrap)                     # shared real broker, or ""
#   [ -n "$B" ] || skip "router -> kafka" "no Kafka broker (IOTR_TEST_KAFKA unset)"
#   assert_eq 1000 "$(kcat_count "$B" "$topic")" "all messages arrived"
#   tap_done                                 # prints 1..N, returns 1 if a test failed
#
# Output is TAP on stdout (automake's tap-driver.sh reads it); diagnostics are
# "# ..." lines. Everything here works under "set -euo pipefail" and without it.
# Nothing here calls exit except skip_all, bail_out and the signal traps.
#
# TAP:       tap_plan N | tap_done, ok, not_ok, skip, skip_all, bail_out, diag,
#            diag_file, assert_eq, assert_ne, assert_ge, assert_match,
#            assert_cmd, assert_fails
# Setup:     tmpdir_setup, register_pid, register_cleanup, stop_pid, wait_for,
#            count_at_least, free_port, unique_name
# MQTT:      start_mosquitto, stop_mosquitto, restart_mosquitto, kill_mosquitto,
#            mqtt_pub, mqtt_sub
# Kafka:     kafka_bootstrap, kafka_available, start_kafka, stop_kafka,
#            kcat_count, kcat_dump, wait_kafka_count
#
# Environment read: IOTR_TEST_KAFKA (bootstrap of the run-wide broker),
# IOTR_KEEP_TMP=1 (keep $TEST_TMPDIR even when every test passed), TMPDIR,
# IOTR_KAFKA_HOME (see tests/kafka/kafka.sh).

IOTR_HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IOTR_SRCDIR=$(cd "$IOTR_HARNESS_DIR/../.." && pwd)
IOTR_KAFKA_SH=$IOTR_SRCDIR/tests/kafka/kafka.sh
MOSQUITTO_BIN=${MOSQUITTO_BIN:-/usr/sbin/mosquitto}

_tap_n=0
_tap_failed=0
_tap_plan=
_tap_done=
_iotr_pids=()
_iotr_cleanups=()
_iotr_kafka_dirs=()
_iotr_ports=" "

# ------------------------------------------------------------------ TAP

# Descriptions may not contain '#' (it starts a directive) or newlines.
_tap_desc() {
	local d=${1//$'\n'/ }
	printf '%s' "${d//#/\\#}"
}

tap_plan() {
	_tap_plan=$1
	echo "1..$1"
}

# diag MSG...: each line of each argument as a "# " line.
diag() {
	local line
	[ $# -gt 0 ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		echo "# $line"
	done <<<"$(printf '%s\n' "$@")"
}

# diag_file FILE [LINES]: the last LINES (default 20) lines of FILE as diagnostics.
diag_file() {
	if [ -f "$1" ]; then
		diag "--- last ${2:-20} lines of $1:"
		diag "$(tail -n "${2:-20}" "$1")"
	else
		diag "--- $1: no such file"
	fi
}

ok() {
	_tap_n=$((_tap_n + 1))
	echo "ok $_tap_n - $(_tap_desc "$1")"
}

# not_ok DESC [DIAG...]
not_ok() {
	_tap_n=$((_tap_n + 1))
	_tap_failed=$((_tap_failed + 1))
	echo "not ok $_tap_n - $(_tap_desc "$1")"
	shift
	diag "$@"
	return 0
}

# skip DESC REASON
skip() {
	_tap_n=$((_tap_n + 1))
	echo "ok $_tap_n - $(_tap_desc "$1") # SKIP $(_tap_desc "${2:-}")"
}

# skip_all REASON: skip the whole script; only before the first test.
skip_all() {
	_tap_done=1
	echo "1..0 # SKIP $(_tap_desc "$1")"
	exit 0
}

# bail_out REASON: abort the whole test run (a harness/setup failure).
bail_out() {
	_tap_done=1
	echo "Bail out! $(_tap_desc "$1")"
	exit 1
}

# tap_done: print the plan (unless tap_plan already did) and return 1 if any
# test failed, so it can be the script's last command.
tap_done() {
	_tap_done=1
	if [ -z "$_tap_plan" ]; then
		echo "1..$_tap_n"
	elif [ "$_tap_plan" != "$_tap_n" ]; then
		diag "planned $_tap_plan tests but ran $_tap_n"
	fi
	[ "$_tap_failed" -eq 0 ]
}

# assert_eq EXPECTED ACTUAL DESC
assert_eq() {
	if [ "$1" = "$2" ]; then
		ok "$3"
	else
		not_ok "$3" "expected: $1" "     got: $2"
	fi
}

# assert_ne UNEXPECTED ACTUAL DESC
assert_ne() {
	if [ "$1" != "$2" ]; then
		ok "$3"
	else
		not_ok "$3" "expected anything but: $1"
	fi
}

# assert_ge MIN ACTUAL DESC (integers; e.g. at-least-once counts)
assert_ge() {
	if [[ $2 =~ ^-?[0-9]+$ ]] && [ "$2" -ge "$1" ]; then
		ok "$3"
	else
		not_ok "$3" "expected >= $1" "     got: $2"
	fi
}

# assert_match REGEX ACTUAL DESC (bash extended regex)
assert_match() {
	if [[ $2 =~ $1 ]]; then
		ok "$3"
	else
		not_ok "$3" "expected to match: $1" "                got: $2"
	fi
}

# assert_cmd DESC CMD [ARGS...]: passes if CMD exits 0; otherwise its output
# (stdout+stderr, last 20 lines) becomes the diagnostics.
assert_cmd() {
	local desc=$1 out rc=0
	shift
	out=$("$@" 2>&1) || rc=$?
	if [ "$rc" -eq 0 ]; then
		ok "$desc"
	else
		not_ok "$desc" "command failed (exit $rc): $*" "$(printf '%s\n' "$out" | tail -n 20)"
	fi
	return 0
}

# assert_fails DESC CMD [ARGS...]: passes if CMD exits non-zero.
assert_fails() {
	local desc=$1 out rc=0
	shift
	out=$("$@" 2>&1) || rc=$?
	if [ "$rc" -ne 0 ]; then
		ok "$desc"
	else
		not_ok "$desc" "command succeeded but should have failed: $*" "$(printf '%s\n' "$out" | tail -n 20)"
	fi
	return 0
}

# ------------------------------------------------------------------ setup, cleanup

# tmpdir_setup: make $TEST_TMPDIR (under ${TMPDIR:-/tmp}) and install traps that,
# on any exit, stop everything the test started. The directory is removed when
# every test passed, kept (and named in a diagnostic) otherwise.
tmpdir_setup() {
	local name
	name=$(basename "${0:-test}")
	name=${name%.sh}
	TEST_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/iotr-${name}.XXXXXX")
	export TEST_TMPDIR
	trap _iotr_cleanup EXIT
	trap '_iotr_signal 130' INT
	trap '_iotr_signal 143' TERM
	trap '_iotr_signal 129' HUP
}

_iotr_signal() {
	diag "interrupted (exit $1), cleaning up"
	exit "$1"
}

# register_pid PID...: kill these processes (TERM, then KILL) on exit.
register_pid() {
	_iotr_pids+=("$@")
}

# register_cleanup CMD [ARGS...]: run this command on exit (before the pids
# are killed and the services stopped; last registered runs first).
register_cleanup() {
	_iotr_cleanups+=("$(printf '%q ' "$@")")
}

# stop_pid PID [TIMEOUT_S]: SIGTERM, wait up to TIMEOUT_S (default 10), SIGKILL.
# Returns 0 once the process is gone.
stop_pid() {
	local pid=$1 t=${2:-10} i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < t * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		# a zombie child of ours: reap it (wait only works for our children)
		if [ "$(_iotr_pstate "$pid")" = Z ]; then wait "$pid" 2>/dev/null || true; fi
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null && [ "$(_iotr_pstate "$pid")" != Z ]; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	return 0
}

_iotr_pstate() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	printf '%s' "${stat%% *}"
}

_iotr_cleanup() {
	local rc=$? i pid
	trap - EXIT INT TERM HUP
	set +e
	for ((i = ${#_iotr_cleanups[@]} - 1; i >= 0; i--)); do
		eval "${_iotr_cleanups[i]}" >/dev/null 2>&1
	done
	for ((i = ${#_iotr_pids[@]} - 1; i >= 0; i--)); do
		pid=${_iotr_pids[i]}
		stop_pid "$pid" 10
	done
	if [ -n "${MQTT_PID:-}" ]; then stop_mosquitto; fi
	for ((i = ${#_iotr_kafka_dirs[@]} - 1; i >= 0; i--)); do
		"$IOTR_KAFKA_SH" stop "${_iotr_kafka_dirs[i]}" >/dev/null 2>&1
	done
	if [ -z "$_tap_done" ] && [ "$_tap_n" -gt 0 ]; then
		diag "test script ended early (exit $rc) after $_tap_n tests, without tap_done"
	fi
	if [ -n "${TEST_TMPDIR:-}" ] && [ -d "$TEST_TMPDIR" ]; then
		if [ "$rc" -ne 0 ] || [ "$_tap_failed" -ne 0 ] || [ -z "$_tap_done" ] || [ -n "${IOTR_KEEP_TMP:-}" ]; then
			diag "kept $TEST_TMPDIR"
		else
			rm -rf "$TEST_TMPDIR"
		fi
	fi
	return "$rc"
}

# wait_for TIMEOUT_S CMD [ARGS...]: run CMD every 0.1 s until it succeeds
# (return 0) or TIMEOUT_S seconds pass (return 1). CMD's output is discarded.
wait_for() {
	local t=$1 end
	shift
	end=$(($(date +%s%N) / 1000000 + t * 1000))
	while :; do
		if "$@" >/dev/null 2>&1; then return 0; fi
		[ "$(($(date +%s%N) / 1000000))" -lt "$end" ] || return 1
		sleep 0.1
	done
}

# count_at_least N CMD [ARGS...]: CMD prints a number that is N or more;
# for wait_for, which runs it again each time.
count_at_least() {
	local want=$1
	shift
	[ "$("$@")" -ge "$want" ]
}

# free_port: a TCP port on 127.0.0.1 that nothing uses now, below the kernel's
# ephemeral range (so an outgoing connection cannot take it before the bind),
# and not handed out before by this shell.
free_port() {
	local lo=20000 hi=32000 p i first
	if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
		read -r first _ </proc/sys/net/ipv4/ip_local_port_range
		if [ "$first" -gt 12000 ] && [ "$first" -le 32768 ]; then
			hi=$((first - 1))
			lo=$((first - 12000))
		fi
	fi
	for ((i = 0; i < 500; i++)); do
		p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
		case $_iotr_ports in *" $p "*) continue ;; esac
		if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
			_iotr_ports="$_iotr_ports$p "
			echo "$p"
			return 0
		fi
	done
	echo "free_port: no free port found" >&2
	return 1
}

# unique_name PREFIX: PREFIX-<random>, e.g. a topic name of one's own on the
# broker that all tests share.
unique_name() {
	printf '%s-%s%04x\n' "$1" "$(date +%s)" "$RANDOM"
}

# ------------------------------------------------------------------ MQTT

# Does process $1 listen on TCP port $2?
_iotr_pid_listens() {
	local l
	l=$(ss -Htlnp "( sport = :$2 )" 2>/dev/null) || return 1
	[[ $l == *"pid=$1,"* ]]
}

# start_mosquitto [DIR [CONF_LINE...]]: start /usr/sbin/mosquitto on a free
# loopback port with persistence in DIR (default $TEST_TMPDIR/mosquitto);
# extra configuration lines are appended to DIR/mosquitto.conf. Waits until a
# client can connect and subscribe. Sets MQTT_PORT, MQTT_PID, MQTT_DIR.
# Returns non-zero (with diagnostics) if it does not come up in 10 s.
start_mosquitto() {
	local dir=${1:-${TEST_TMPDIR:?call tmpdir_setup first}/mosquitto} port
	[ $# -gt 0 ] && shift
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	port=$(free_port) || return 1
	{
		echo "# written by tests/harness/lib.sh"
		# as root, mosquitto would switch to user "mosquitto", which cannot write here
		echo "user $(id -un)"
		echo "listener $port 127.0.0.1"
		echo "allow_anonymous true"
		echo "persistence true"
		echo "persistence_location $dir/"
		echo "persistence_file mosquitto.db"
		echo "max_queued_messages 100000"
		echo "log_dest file $dir/mosquitto.log"
		echo "log_type error"
		echo "log_type warning"
		echo "log_type notice"
		echo "log_type information"
		echo "connection_messages true"
		echo "log_timestamp_format %Y-%m-%dT%H:%M:%S"
		[ $# -eq 0 ] || printf '%s\n' "$@"
	} >"$dir/mosquitto.conf"
	MQTT_DIR=$dir
	MQTT_PORT=$port
	_iotr_mosquitto_launch
}

_iotr_mosquitto_launch() {
	local i
	"$MOSQUITTO_BIN" -c "$MQTT_DIR/mosquitto.conf" </dev/null >>"$MQTT_DIR/mosquitto.out" 2>&1 &
	MQTT_PID=$!
	export MQTT_PORT MQTT_PID MQTT_DIR
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$MQTT_PID" 2>/dev/null; then
			diag "mosquitto exited during startup"
			diag_file "$MQTT_DIR/mosquitto.out"
			diag_file "$MQTT_DIR/mosquitto.log"
			MQTT_PID=
			return 1
		fi
		if _iotr_pid_listens "$MQTT_PID" "$MQTT_PORT" &&
			mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t 'iotr-harness/probe' -E >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	diag "mosquitto did not accept connections on 127.0.0.1:$MQTT_PORT within 10 s"
	diag_file "$MQTT_DIR/mosquitto.log"
	stop_pid "$MQTT_PID" 5
	MQTT_PID=
	return 1
}

# stop_mosquitto: clean stop (SIGTERM: it saves its persistence database).
stop_mosquitto() {
	if [ -n "${MQTT_PID:-}" ]; then
		stop_pid "$MQTT_PID" 10
		MQTT_PID=
	fi
}

# kill_mosquitto: SIGKILL, like a crash (nothing saved since the last autosave).
kill_mosquitto() {
	if [ -n "${MQTT_PID:-}" ]; then
		kill -KILL "$MQTT_PID" 2>/dev/null || true
		wait "$MQTT_PID" 2>/dev/null || true
		MQTT_PID=
	fi
}

# restart_mosquitto: stop (if running) and start again with the same
# configuration, port and persistence database.
restart_mosquitto() {
	: "${MQTT_DIR:?start_mosquitto first}"
	stop_mosquitto
	_iotr_mosquitto_launch
}

# mqtt_pub [mosquitto_pub args...]: mosquitto_pub against the test broker.
mqtt_pub() {
	mosquitto_pub -h 127.0.0.1 -p "${MQTT_PORT:?start_mosquitto first}" "$@"
}

# mqtt_sub [mosquitto_sub args...]: mosquitto_sub against the test broker.
mqtt_sub() {
	mosquitto_sub -h 127.0.0.1 -p "${MQTT_PORT:?start_mosquitto first}" "$@"
}

# mqtt_sub_bg FILE [mosquitto_sub args...]: mosquitto_sub against the test
# broker in the background, output in FILE and errors in FILE.err; sets
# MQTT_SUB_PID (mosquitto_sub's own: `mqtt_sub ... &` would give the pid of
# a subshell, and killing that leaves mosquitto_sub running) and stops it
# on exit.
mqtt_sub_bg() {
	local out=$1
	shift
	mosquitto_sub -h 127.0.0.1 -p "${MQTT_PORT:?start_mosquitto first}" "$@" \
		>"$out" 2>"$out.err" &
	MQTT_SUB_PID=$!
	register_pid "$MQTT_SUB_PID"
}

# ------------------------------------------------------------------ Kafka

# kafka_bootstrap: the run-wide real broker ($IOTR_TEST_KAFKA) or "" (then skip).
kafka_bootstrap() {
	printf '%s\n' "${IOTR_TEST_KAFKA:-}"
}

# require_kafka: set KAFKA to the run's real broker, or skip the whole test.
require_kafka() {
	KAFKA=$(kafka_bootstrap)
	[ -n "$KAFKA" ] || skip_all "no real Kafka broker (IOTR_TEST_KAFKA unset; scripts/test starts one)"
}

# kafka_available: can this test start a broker of its own (jars fetched, java)?
kafka_available() {
	"$IOTR_KAFKA_SH" fetch >/dev/null 2>&1 && command -v java >/dev/null 2>&1
}

# start_kafka [DIR]: a broker of the test's own (for outage tests: stop_kafka,
# then start_kafka again with the same DIR restarts it on the same port with
# the same data). Sets KAFKA_BOOTSTRAP and KAFKA_DIR. It is stopped on exit.
start_kafka() {
	local dir=${1:-${TEST_TMPDIR:?call tmpdir_setup first}/kafka} out rc=0
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd -P)
	case " ${_iotr_kafka_dirs[*]} " in *" $dir "*) ;; *) _iotr_kafka_dirs+=("$dir") ;; esac
	out=$("$IOTR_KAFKA_SH" start "$dir" 2>"$dir/start.err") || rc=$?
	if [ "$rc" -ne 0 ]; then
		diag "kafka.sh start $dir failed (exit $rc)"
		diag "$(cat "$dir/start.err")"
		return 1
	fi
	KAFKA_DIR=$dir
	KAFKA_BOOTSTRAP=$out
	export KAFKA_DIR KAFKA_BOOTSTRAP
}

# stop_kafka [DIR]: stop the test's own broker (default $KAFKA_DIR).
stop_kafka() {
	"$IOTR_KAFKA_SH" stop "${1:-${KAFKA_DIR:?start_kafka first}}"
}

# kcat_count BOOTSTRAP TOPIC: number of records in TOPIC (all partitions, from
# the beginning to the current end). Prints 0 for a missing topic; returns
# kcat's status.
kcat_count() {
	local n rc=0
	n=$(
		kcat -C -b "$1" -t "$2" -o beginning -e -q -m 10 -f 'x\n' 2>/dev/null | wc -l
		exit "${PIPESTATUS[0]}"
	) || rc=$?
	echo "$((n))"
	return "$rc"
}

# kcat_dump BOOTSTRAP TOPIC [kcat args...]: "key<TAB>payload" per record, in
# partition order (not a global order).
kcat_dump() {
	local b=$1 t=$2
	shift 2
	kcat -C -b "$b" -t "$t" -o beginning -e -q -m 10 -f '%k\t%s\n' "$@"
}

# wait_kafka_count BOOTSTRAP TOPIC N [TIMEOUT_S]: wait until TOPIC holds at
# least N records (default timeout 30 s); prints the last count seen.
wait_kafka_count() {
	local b=$1 t=$2 want=$3 timeout=${4:-30} n=0 end
	end=$((SECONDS + timeout))
	while :; do
		n=$(kcat_count "$b" "$t") || true
		[ "$n" -lt "$want" ] || break
		[ "$SECONDS" -lt "$end" ] || break
		sleep 0.5
	done
	echo "$n"
	[ "$n" -ge "$want" ]
}
