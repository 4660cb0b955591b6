/* A hypercall whose request struct straddles the end of guest memory. */
#include "hvt.h"

    .text
    .globl _start
_start:
    /* 16 MiB guest: the 16-byte struct at mem_size - 8 crosses the end. */
    mov $(16 * 1024 * 1024 - 8), %eax
    mov $(0x500 + HC_PUTS), %dx
    outl %eax, %dx
1:  jmp 1b

ABI_NOTE
MFT_EMPTY
