#!/bin/bash
# cli.sh - the command line a user types: --version, --help, plugin listings,
# and usage errors.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

out=$("$IOTROUTER" --version)
assert_match "iotrouter [0-9]+\.[0-9]+\.[0-9]+ \(plugin ABI 1\.[0-9]+\)" "$out" \
	"--version prints the version and the plugin ABI"

help=$("$IOTROUTER" --help)
missing=""
for flag in --config --check --verbose --quiet --plugin-dir --list-plugins \
            --help-plugin --version --help SIGTERM SIGUSR1 "iotrouter.conf(5)"; do
	grep -q -- "$flag" <<<"$help" || missing="$missing $flag"
done
assert_eq "" "$missing" "--help documents every flag, the signals and the man page"

list=$("$IOTROUTER" --list-plugins -P "$IOTR_PLUGIN_DIR")
for p in "mqtt +input" "kafka +output" "stdout +output" "file +output"; do
	assert_cmd "--list-plugins shows ${p%% *} with its kind" grep -Eq "^$p " <<<"$list"
done

hp=$("$IOTROUTER" --help-plugin mqtt -P "$IOTR_PLUGIN_DIR")
assert_match "client_id +string, required" "$hp" \
	"--help-plugin mqtt marks client_id required"
assert_match "port +integer, default 1883, 1\.\.65535" "$hp" \
	"--help-plugin shows defaults and ranges"

out=$("$IOTROUTER" --help-plugin nosuch -P "$IOTR_PLUGIN_DIR" 2>&1); rc=$?
assert_eq 1 "$rc" "--help-plugin of an unknown plugin fails"
assert_match "unknown plugin 'nosuch': no nosuch.so in $IOTR_PLUGIN_DIR" "$out" \
	"and names the directories it searched"

out=$("$IOTROUTER" --bogus 2>&1); rc=$?
assert_eq 2 "$rc" "an unknown option exits 2"
out=$("$IOTROUTER" 2>&1); rc=$?
assert_eq 2 "$rc" "no config exits 2"
assert_match "no configuration; run iotrouter -c FILE" "$out" \
	"and says how to give one"

out=$("$IOTROUTER" -c "$TEST_TMPDIR/none.conf" 2>&1); rc=$?
assert_eq 3 "$rc" "a missing config file exits 3"
assert_match "none.conf: cannot read the config" "$out" "and names the file"

tap_done
