/* An exit storm: prints "x" in an endless loop, one PUTS hypercall (one VM exit) per line. */
#include "hvt.h"

    .text
    .globl _start
_start:
2:  HYPERCALL HC_PUTS, puts_req
    jmp 2b

    .data
msg:
    .ascii "x\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg

ABI_NOTE
MFT_EMPTY
