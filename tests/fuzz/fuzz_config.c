/*
 * fuzz_config.c - libFuzzer target: any bytes as a configuration file.
 * config_load() must report problems, never crash, leak or read out of
 * bounds.  No plugin directory is given, so instances fail to load and the
 * walk over routes, templates and router settings is what gets exercised.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char path[] = "/tmp/iotr-fuzz-conf.XXXXXX";
	struct router_config cfg;
	struct cfg_errors errs = { 0 };
	int fd = mkstemp(path);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		unlink(path);
		return 0;
	}
	close(fd);
	config_load(path, NULL, 0, &cfg, &errs);
	config_free(&cfg);
	cfg_errors_free(&errs);
	unlink(path);
	return 0;
}
