/* The host tests' check macro (nettest.c runs the tests and counts). */
#ifndef NETTEST_CHECK_H
#define NETTEST_CHECK_H
#include <stdio.h>

extern int failures, checks;
extern const char *current; /* the running test's name */

#define CHECK(cond, ...)                                                          \
	do {                                                                      \
		checks++;                                                         \
		if (!(cond)) {                                                    \
			failures++;                                               \
			fprintf(stderr, "FAIL %s (%s:%d): %s: ", current, __FILE__, \
				__LINE__, #cond);                                 \
			fprintf(stderr, __VA_ARGS__);                             \
			fprintf(stderr, "\n");                                    \
		}                                                                 \
	} while (0)

#endif
