/*
 * fuzz_record.c - libFuzzer target for the message records kept in the
 * write-ahead log: msg_decode() must refuse any damaged record, never crash
 * or read past it, and a record it accepts must encode back to itself.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "msg.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char source[256];
	struct msg_buf b = { 0 };
	iotr_msg *msg = msg_decode(data, size, source, sizeof(source));

	if (!msg)
		return 0;
	if ((msg->made ? msg_encode_made(msg, source, &b) :
	                 msg_encode(msg, source, &b)) == IOTR_OK &&
	    strlen(source) < 255 &&
	    (b.len != size || memcmp(b.data, data, size) != 0))
		abort();   /* an accepted record did not round-trip */
	free(b.data);
	msg_free(msg);
	return 0;
}
