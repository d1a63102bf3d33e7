/* <string.h> for lwIP in a guest: the runtime's (rt/string.c). */
#ifndef FTVM_LWIP_LIBC_STRING_H
#define FTVM_LWIP_LIBC_STRING_H
#include "rt.h"
#endif
