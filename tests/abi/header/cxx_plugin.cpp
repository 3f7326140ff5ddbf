/*
 * cxx_plugin.cpp - a transform written in C++: tests/abi/abi.sh compiles it
 * with -Wall -Wextra -pedantic -Werror in every C++ standard from C++98 and
 * loads it in the router.  It shows the two things C++ needs: the
 * descriptor filled in a function (no designated initialisers before
 * C++20) and an extern "C" entry point; and that no exception may leave a
 * callback, since the caller is C.
 */
#include <iotrouter/plugin.h>

#include <cstring>
#include <new>
#include <string>

namespace {

struct cxx_state {
	const iotr_host *host;
	std::string tag;
};

int cxx_create(iotr_instance *inst, const iotr_host *host, void **state)
{
	try {
		cxx_state *s = new cxx_state;
		s->host = host;
		s->tag = std::string("c++:") + host->param_string(inst, "tag");
		*state = s;
		return IOTR_OK;
	} catch (const std::bad_alloc &) {
		return IOTR_ENOMEM;
	}
}

int cxx_process(void *state, iotr_msg *msg)
{
	cxx_state *s = static_cast<cxx_state *>(state);

	return s->host->msg_add_header(msg, "x-cxx", s->tag.data(),
	                               s->tag.size());
}

void cxx_destroy(void *state)
{
	delete static_cast<cxx_state *>(state);
}

const iotr_param cxx_params[] = {
	{ "tag", IOTR_PARAM_STRING, "plugin", 0, "value of the x-cxx header",
	  0, 0 },
	{ 0, 0, 0, 0, 0, 0, 0 }
};

iotr_plugin cxx_describe()
{
	iotr_plugin d;

	std::memset(&d, 0, sizeof(d));
	d.abi_major = IOTR_ABI_MAJOR;
	d.abi_minor = IOTR_ABI_MINOR;
	d.size = sizeof(iotr_plugin);
	d.name = "cxx_plugin";
	d.version = "1.0.0";
	d.description = "test transform written in C++";
	d.kind = IOTR_PLUGIN_TRANSFORM;
	d.params = cxx_params;
	d.create = cxx_create;
	d.process = cxx_process;
	d.destroy = cxx_destroy;
	return d;
}

const iotr_plugin cxx_descriptor = cxx_describe();

} // namespace

extern "C" IOTR_PLUGIN_EXPORT const iotr_plugin *iotr_plugin_entry(void)
{
	return &cxx_descriptor;
}
