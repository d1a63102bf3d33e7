/* Start-up checks and the command line: space-separated KEY=VALUE words. */
#include "rt.h"

struct ftvm_boot_info *rt_boot_info;

/* The default for guests that take no arguments; a guest's own definition replaces it. */
__attribute__((weak)) const char *const guest_args[] = { 0 };

/* The next word of the command line at or after *pos: sets *start and *len, returns 0 when
 * there are no more. Bounded by cmdline_len as well as by the NUL. */
static int next_word(struct ftvm_boot_info *bi, size_t *pos, const char **start, size_t *len)
{
	const char *cmd = (const char *)bi->cmdline;
	size_t n = bi->cmdline_len, i = *pos;

	while (i < n && (cmd[i] == ' ' || cmd[i] == '\t'))
		i++;
	if (i >= n || cmd[i] == 0)
		return 0;
	*start = cmd + i;
	while (i < n && cmd[i] != 0 && cmd[i] != ' ' && cmd[i] != '\t')
		i++;
	*len = (size_t)(cmd + i - *start);
	*pos = i;
	return 1;
}

/* The length of the KEY part of a word (up to '='), or 0 if the word has no '=' or an
 * empty key. */
static size_t key_len(const char *w, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (w[i] == '=')
			return i;
	return 0;
}

static int is_known(const char *key, size_t len)
{
	for (const char *const *k = guest_args; *k; k++)
		if (strlen(*k) == len && memcmp(*k, key, len) == 0)
			return 1;
	return 0;
}

__attribute__((noreturn)) static void bad_word(const char *why, const char *w, size_t len)
{
	printf("error: %s: \"", why);
	console_write(w, len);
	printf("\"\n");
	if (guest_args[0] == 0) {
		printf("error: this guest takes no arguments\n");
	} else {
		printf("error: arguments:");
		for (const char *const *k = guest_args; *k; k++)
			printf(" %s=N", *k);
		printf("\n");
	}
	exit(2);
}

/* Called by crt0 before main. */
void rt_init(struct ftvm_boot_info *bi)
{
	rt_boot_info = bi;
	if (bi->magic != FTVM_BOOT_MAGIC || bi->version != FTVM_ABI_VERSION) {
		printf("error: boot information: magic %lx version %u, want %lx version %u\n",
		       bi->magic, bi->version, FTVM_BOOT_MAGIC, FTVM_ABI_VERSION);
		exit(2);
	}

	size_t pos = 0, len;
	const char *w;
	while (next_word(bi, &pos, &w, &len)) {
		size_t k = key_len(w, len);
		if (k == 0)
			bad_word("not a KEY=VALUE argument", w, len);
		if (!is_known(w, k))
			bad_word("unknown argument", w, len);
	}
}

/* Parse s[0:len] as an integer: an optional '-', then decimal digits or 0x and hex
 * digits. Returns 0 if it is not one or does not fit a long. */
static int parse_long(const char *s, size_t len, long *out)
{
	size_t i = 0;
	int neg = 0;
	unsigned base = 10;
	uint64_t v = 0, limit;

	if (i < len && s[i] == '-') {
		neg = 1;
		i++;
	}
	if (i + 1 < len && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
		base = 16;
		i += 2;
	}
	if (i == len)
		return 0;
	limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
	for (; i < len; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return 0;
		if (v > (limit - d) / base)
			return 0;
		v = v * base + d;
	}
	*out = neg ? (long)(0 - v) : (long)v;
	return 1;
}

long arg_long(struct ftvm_boot_info *bi, const char *key, long def)
{
	size_t klen = strlen(key), pos = 0, len;
	const char *w;
	long v = def;

	if (!is_known(key, klen)) { /* a bug in the guest, not in its command line */
		printf("error: arg_long: key \"%s\" is not listed in guest_args\n", key);
		exit(2);
	}
	while (next_word(bi, &pos, &w, &len)) {
		if (key_len(w, len) != klen || memcmp(w, key, klen) != 0)
			continue;
		if (!parse_long(w + klen + 1, len - klen - 1, &v))
			bad_word("not a number", w, len);
	}
	return v;
}
