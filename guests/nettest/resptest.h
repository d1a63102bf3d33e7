/* The RESP server's host tests (resptest.c), as rows of nettest.c's test table. */
#ifndef NETTEST_RESPTEST_H
#define NETTEST_RESPTEST_H
void test_resp_commands(void);
void test_resp_pipelined(void);
void test_resp_split(void);
void test_resp_inline(void);
void test_resp_malformed(void);
void test_resp_oversized(void);
void test_resp_backpressure(void);
void test_resp_oom(void);
#define RESP_TESTS                                          \
	{ "resp_commands", test_resp_commands },            \
	{ "resp_pipelined", test_resp_pipelined },          \
	{ "resp_split", test_resp_split },                  \
	{ "resp_inline", test_resp_inline },                \
	{ "resp_malformed", test_resp_malformed },          \
	{ "resp_oversized", test_resp_oversized },          \
	{ "resp_backpressure", test_resp_backpressure },    \
	{ "resp_oom", test_resp_oom },
#endif
