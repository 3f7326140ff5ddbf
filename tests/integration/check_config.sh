#!/bin/bash
# check_config.sh - `iotrouter --check`: the shipped examples are valid, and
# each kind of broken config is reported as FILE:LINE: message with a hint.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

check() {
	"$IOTROUTER" --check -c "$1" -P "$IOTR_PLUGIN_DIR" -P "$IOTR_TEST_PLUGIN_DIR" 2>&1
}

for f in "$top_srcdir"/config/*.conf; do
	out=$(check "$f"); rc=$?
	assert_eq 0 "$rc" "example $(basename "$f") passes --check"
done

# The README's whole configurations (the code blocks with inputs) are valid.
awk -v dir="$TEST_TMPDIR" '
	/^```/ { if (inb) { close(f); inb = 0 } else { inb = 1; f = dir "/readme." ++n ".conf" } next }
	inb { print > f }' "$top_srcdir/README.md"
n=0
for f in "$TEST_TMPDIR"/readme.*.conf; do
	grep -q '^inputs = ' "$f" || continue
	n=$((n + 1))
	out=$(check "$f"); rc=$?
	assert_eq 0 "$rc" "the README's configuration number $n passes --check" "$out"
done
assert_ge 2 "$n" "the README shows the forward and the reverse path"

cat >"$TEST_TMPDIR/syntax.conf" <<'CONF'
router = {
	workers = 2;
	queue_size = = 10;
};
CONF
out=$(check "$TEST_TMPDIR/syntax.conf"); rc=$?
assert_eq 3 "$rc" "a syntax error exits 3"
assert_match "syntax.conf:3: syntax error" "$out" "a syntax error names file and line"

cat >"$TEST_TMPDIR/plugin.conf" <<'CONF'
inputs = (
	{ name = "in"; plugin = "mqtt"; client_id = "x"; topics = ["a/#"]; }
);
outputs = (
	{ name = "out";
	  plugin = "kafak"; }
);
routes = ( { match = "a/#"; topic = "t"; } );
CONF
out=$(check "$TEST_TMPDIR/plugin.conf")
assert_match "plugin.conf:6: output 'out': unknown plugin 'kafak': no kafak.so in " \
	"$out" "an unknown plugin is reported at its line"
assert_match "add its directory to router.plugin_dirs or --plugin-dir" "$out" \
	"with the fix"

cat >"$TEST_TMPDIR/params.conf" <<'CONF'
inputs = (
	{
		name = "in";
		plugin = "mqtt";
		topics = [ "a/#" ];
		port = "1883";
		hots = "x";
		qos = 3;
	}
);
outputs = ( { name = "out"; plugin = "stdout"; } );
routes = ( { match = "a/+dev"; topic = "t.${device}"; key = "${dev}"; } );
CONF
out=$(check "$TEST_TMPDIR/params.conf"); rc=$?
assert_eq 3 "$rc" "invalid parameters exit 3"
assert_match "params.conf:2: input 'in': plugin 'mqtt' needs parameter 'client_id'" \
	"$out" "a missing required parameter is named, at the instance's line"
assert_match "params.conf:6: input 'in': parameter 'port' must be integer, not a string" \
	"$out" "a wrong type is named with both types"
assert_match "params.conf:7: input 'in': plugin 'mqtt' has no parameter 'hots'; its parameters are: host, port" \
	"$out" "an unknown parameter lists the known ones"
assert_match "params.conf:8: input 'in': parameter 'qos' is 3; it must be between 0 and 2" \
	"$out" "a value out of range names the range"
assert_match "params.conf:12: route #1: topic: template 't.\\\$\{device\}': no capture 'device' in filter 'a/\+dev' \(it has: dev\)" \
	"$out" "a template naming an unknown capture lists the captures"
assert_eq 5 "$(grep -c '^/.*params.conf:[0-9]*: ' <<<"$out")" \
	"every problem is reported in one run"

cat >"$TEST_TMPDIR/abi.conf" <<CONF
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = ["a/#"]; } );
transforms = (
	{ name = "future"; plugin = "$IOTR_TEST_PLUGIN_DIR/bad_abi.so"; },
	{ name = "notplugin"; plugin = "$IOTR_TEST_PLUGIN_DIR/no_entry.so"; },
	{ name = "notso"; plugin = "$top_srcdir/configure.ac"; }
);
outputs = (
	{ name = "half"; plugin = "no_deliver"; },
	{ name = "out"; plugin = "stdout"; }
);
routes = ( { match = "a/#"; topic = "t"; output = "out"; } );
CONF
out=$(check "$TEST_TMPDIR/abi.conf")
abi=$(sed -n 's/^#define IOTR_ABI_M[AI][JN]OR \([0-9]*\).*/\1/p' "$top_srcdir/router/iotrouter/plugin.h" | paste -sd.)
assert_match "abi.conf:3: transform 'future': plugin 'bad_abi' \(.*bad_abi.so\): built for ABI 2.0, this router provides $abi" \
	"$out" "an ABI mismatch names the plugin, its file and both versions"
assert_match "abi.conf:4: transform 'notplugin': .*no_entry.so is not an iotrouter plugin: it does not export iotr_plugin_entry" \
	"$out" "a .so without the entry symbol is refused"
assert_match "abi.conf:5: transform 'notso': cannot load plugin .*configure.ac: .*invalid ELF header; use ldd\(1\)" \
	"$out" "dlopen's reason reaches the user"
assert_match "abi.conf:8: output 'half': plugin 'no_deliver' \(.*\): an output plugin must define deliver\(\)" \
	"$out" "a plugin missing a required callback is refused"

cat >"$TEST_TMPDIR/kind.conf" <<'CONF'
inputs = ( { name = "in"; plugin = "mqtt"; client_id = "x"; topics = ["a/#"]; } );
outputs = ( { name = "out"; plugin = "dedupe"; } );
transforms = ( { name = "both"; plugin = "kafka"; } );
bogus = 1;
CONF
out=$(check "$TEST_TMPDIR/kind.conf")
assert_match "kind.conf:2: output 'out': plugin 'dedupe' is a transform plugin; list it under transforms" \
	"$out" "a plugin of the wrong kind is named"
assert_match "kind.conf:3: transform 'both': plugin 'kafka' is an (input and )?output plugin; list it under (inputs or )?outputs" \
	"$out" "a plugin of two kinds names both"
assert_match "kind.conf:4: unknown section 'bogus'" "$out" "an unknown section is named"

tap_done
