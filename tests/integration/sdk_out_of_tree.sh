#!/bin/bash
# sdk_out_of_tree.sh - an integrator's path, end to end: iotrouter is
# configured with a prefix of its own and installed there; the example
# plugins in plugins/examples/ are built against that prefix with pkg-config
# alone (autoreconf, configure, make, make install into the plugin
# directory that iotrouter-plugin.pc names); the installed router finds
# them without being told where, and runs them between a real mosquitto
# and the example output.
#
# The source comes from `make distdir` (what the tarball holds), so the
# test also proves the SDK's files are shipped.  Takes 20-40 s.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

: "${top_srcdir:=$IOTR_SRCDIR}" "${top_builddir:=$IOTR_SRCDIR}"
T=$TEST_TMPDIR
PREFIX=$T/prefix
jobs=$(nproc 2>/dev/null || echo 2)
for tool in autoreconf pkg-config make; do
	command -v $tool >/dev/null 2>&1 || skip_all "$tool is not installed"
done
# Called from `make check`: the nested makes must not join its job server
# or take its command-line variables.
unset MAKEFLAGS MFLAGS MAKELEVEL DESTDIR

# run LOG CMD...: run CMD with its output in $T/LOG; on failure show the
# end of it.
run() {
	local log=$T/$1 rc=0
	shift
	"$@" >"$log" 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || diag "$* failed (exit $rc):" "$(tail -n 25 "$log")"
	return "$rc"
}

# --- iotrouter, installed into a prefix of its own --------------------------------

# A clean copy of the source: what `make dist` would ship.  While a file
# listed for the tarball is missing (work in progress in a git checkout),
# fall back to the git work tree; `make distcheck` catches the missing file.
if ! run distdir.log make -C "$top_builddir" distdir distdir="$T/src"; then
	git -C "$top_srcdir" rev-parse --git-dir >/dev/null 2>&1 ||
		bail_out "make distdir failed"
	diag "make distdir failed; building from the git work tree instead"
	rm -rf "$T/src" && mkdir "$T/src"
	git -C "$top_srcdir" ls-files -z -co --exclude-standard |
		tar -C "$top_srcdir" --null --ignore-failed-read -T - -cf - 2>/dev/null |
		tar -C "$T/src" -xf - ||
		bail_out "copying the git work tree failed"
	(cd "$T/src" && run autoreconf-router.log autoreconf -fi) ||
		bail_out "autoreconf of the git work tree failed"
fi
chmod -R u+w "$T/src"           # copied from a read-only tree in distcheck
mkdir "$T/build"
cfg=(--prefix="$PREFIX" --disable-kafka --disable-lua)
[ -f "$IOTR_PLUGIN_DIR/mqtt.so" ] || cfg+=(--disable-mqtt)
(cd "$T/build" && run configure.log "$T/src/configure" "${cfg[@]}") ||
	bail_out "configuring iotrouter with --prefix=$PREFIX failed"
(cd "$T/build" && run make.log make -j"$jobs" && run install.log make install)
assert_eq 0 "$?" "iotrouter builds and installs into --prefix=$PREFIX"

assert_cmd "make install puts the plugin header at \$(includedir)/iotrouter/plugin.h" \
	cmp "$top_srcdir/router/iotrouter/plugin.h" "$PREFIX/include/iotrouter/plugin.h"
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR
assert_eq "-I$PREFIX/include" "$(pkg-config --cflags iotrouter-plugin | sed 's/ *$//')" \
	"iotrouter-plugin.pc gives the include directory"
PLUGINDIR=$(pkg-config --variable=plugindir iotrouter-plugin)
assert_eq "$PREFIX/lib/iotrouter" "$PLUGINDIR" \
	"iotrouter-plugin.pc names the directory the router loads plugins from"
assert_eq "$(sed -n 's/^Version: //p' "$PREFIX/lib/pkgconfig/iotrouter-plugin.pc")" \
	"$(pkg-config --modversion iotrouter-plugin)" "iotrouter-plugin.pc has the version"

# --- the example plugins, built with pkg-config alone --------------------------

cp -R "$top_srcdir/plugins/examples" "$T/examples"
chmod -R u+w "$T/examples"
(
	cd "$T/examples" &&
	run autoreconf.log autoreconf -fi &&
	run configure-examples.log ./configure &&
	run make-examples.log make -j"$jobs" &&
	run install-examples.log make install
)
assert_eq 0 "$?" "the examples build against the installed prefix and install"
assert_cmd "add_fields.so is installed into plugindir" test -f "$PLUGINDIR/add_fields.so"
assert_cmd "textfile.so is installed into plugindir" test -f "$PLUGINDIR/textfile.so"
assert_eq "iotr_plugin_entry" \
	"$(nm -D --defined-only "$PLUGINDIR/add_fields.so" 2>/dev/null | awk '$2 == "T" { print $3 }')" \
	"an example plugin exports exactly iotr_plugin_entry"

# --- the installed router finds and describes them -------------------------------

IOTROUTER=$PREFIX/bin/iotrouter
out=$("$IOTROUTER" --list-plugins 2>&1)
assert_match "(^|"$'\n'")add_fields +transform +1\.0\.0 +example: add static fields" "$out" \
	"--list-plugins finds add_fields in the plugin directory, with no -P"
assert_match "(^|"$'\n'")textfile +output +1\.0\.0 +example: append messages" "$out" \
	"--list-plugins finds textfile there too"
out=$("$IOTROUTER" --help-plugin add_fields 2>&1)
assert_match "require_object +boolean, default false" "$out" \
	"--help-plugin prints the example's schema"

[ -f "$PLUGINDIR/mqtt.so" ] || {
	skip "the example plugins run in a route" "the mqtt plugin is not built"
	tap_done
	exit
}

# --- and runs them between a real broker and the example output ------------------

start_mosquitto || bail_out "mosquitto did not start"
IOTR_PLUGIN_DIR=$PLUGINDIR
conf=$(router_config sdk <<'CONF'
router = { workers = 2; dead_letter_topic = "dead"; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "sdk-test";
	topics = [ "sensors/#" ]; qos = 1;
} );
transforms = ( {
	name = "tags"; plugin = "add_fields";
	fields = [ "site=north", "note=say \"hi\"" ];
	headers = [ "source=example", "fleet=f1" ];
	require_object = true;
} );
outputs = ( { name = "out"; plugin = "textfile"; path = "@DIR@/out.txt"; } );
routes = ( {
	match = "sensors/+device/+sensor"; topic = "telemetry.${sensor}";
	key = "${device}"; default_headers = false;
	transforms = [ "tags" ];
} );
CONF
)
out=$("$IOTROUTER" --check -c "$conf" 2>&1)
assert_match "configuration is valid: 1 inputs, 1 transforms, 1 outputs" "$out" \
	"--check accepts a config naming the example plugins"
router_start "$conf" || bail_out "the installed router did not start"
mqtt_pub -q 1 -t sensors/dev-1/temp -m '{"value":21.5}'
mqtt_pub -q 1 -t sensors/dev-2/temp -m ' { } '
mqtt_pub -q 1 -t sensors/dev-3/temp -m 'not an object'
wait_until 15 '[ "$(wc -l <"$T/out.txt" 2>/dev/null || echo 0)" -ge 3 ]'
router_stop
assert_eq 0 "$ROUTER_RC" "the router stops cleanly"

tab=$'\t'
out=$(cat "$T/out.txt" 2>/dev/null)
assert_line() {
	if grep -qxF -- "$1" <<<"$out"; then ok "$2"; else not_ok "$2" "expected the line: $1" "in: $out"; fi
}
assert_line "telemetry.temp${tab}dev-1${tab}source=example;fleet=f1${tab}{\"site\":\"north\",\"note\":\"say \\\\\"hi\\\\\"\",\"value\":21.5}" \
	"add_fields adds its fields to a JSON object and its headers; textfile writes the line"
assert_line "telemetry.temp${tab}dev-2${tab}source=example;fleet=f1${tab} {\"site\":\"north\",\"note\":\"say \\\\\"hi\\\\\"\" } " \
	"an empty object gets the fields without a stray comma"
assert_match "(^|"$'\n'")dead${tab}dev-3${tab}source=example;fleet=f1;iotrouter.error=transform 'tags' failed: add_fields: the payload is not a JSON object;[^$tab]*${tab}not an object(\$|"$'\n'")" \
	"$out" "a payload that is not an object is dead-lettered with add_fields' reason"
assert_eq 3 "$(router_counter router.delivered)" "the router counts three delivered"
assert_eq 3 "$(router_counter out.lines)" "and textfile three lines"
assert_eq 2 "$(router_counter tags.tagged)" "add_fields' counters are reported"

tap_done
