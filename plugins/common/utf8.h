/*
 * utf8.h - the one UTF-8 check the plugins share (jsonline.c, the lua
 * plugin's JSON decoder).  Header only; no state.
 */
#ifndef IOTR_UTF8_H
#define IOTR_UTF8_H

#include <stddef.h>

/*
 * The length (1 to 4) of the well-formed UTF-8 character at p, of which
 * avail bytes (at least 1) may be read, or 0 when it is not one: RFC 3629,
 * no overlong form, no surrogate, nothing past U+10FFFF.  A NUL is a
 * character of length 1 here; callers that refuse it check for it.
 */
static inline size_t utf8_char_length(const unsigned char *p, size_t avail)
{
	unsigned char lo = 0x80, hi = 0xbf;     /* range of the second byte */
	size_t n, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		if (p[0] == 0xe0)
			lo = 0xa0;
		else if (p[0] == 0xed)
			hi = 0x9f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		if (p[0] == 0xf0)
			lo = 0x90;
		else if (p[0] == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (avail < n || p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

#endif
