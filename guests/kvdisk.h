/* kvdisk: the kvstore's data on the block device, an append-only log of the requests that
 * changed it, each checksummed (kvdisk.c has the format). A PUT is acknowledged only after
 * the flush of its record completed: the server appends the records of a batch of
 * requests, commits them with one flush, and only then sends the batch's replies. */
#ifndef KVDISK_H
#define KVDISK_H

#include "ftvm.h"

#define KVDISK_PAYLOAD_MAX 1536 /* a request datagram fits */

/* Find the disk and run every record on it again (kv_restore): the number restored, or a
 * negative error (FTVM_ENODEV: no disk). */
long kvdisk_init(void);
/* Whether a record of len payload bytes fits, on the disk and in the commit buffer. */
int kvdisk_room(size_t len);
/* Stage a record; kvdisk_commit writes it. */
void kvdisk_append(const uint8_t *req, size_t len);
/* Whether records are staged. */
int kvdisk_pending(void);
/* Write the staged records and flush: 1 done, 0 nothing to do, negative an error. */
long kvdisk_commit(void);
/* Bytes of log on the disk, records in it. */
uint64_t kvdisk_used(void);
uint32_t kvdisk_records(void);

#endif
