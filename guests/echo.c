/* echo: reads console lines until end of input and writes each back uppercased, as
 * "echo: LINE"; at end of input prints "echo: N lines" and exits 0. */
#include "rt.h"

int main(struct ftvm_boot_info *bi)
{
	char line[1024];
	long len, lines = 0;

	(void)bi;
	while ((len = read_line(line, sizeof line)) >= 0) {
		for (long i = 0; i < len; i++)
			if (line[i] >= 'a' && line[i] <= 'z')
				line[i] = (char)(line[i] - 'a' + 'A');
		printf("echo: %s\n", line);
		lines++;
	}
	printf("echo: %ld lines\n", lines);
	return 0;
}
