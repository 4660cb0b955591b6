/* Prints one line and halts with status 0. */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_PUTS, puts_req
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
msg:
    .ascii "Hello from a Summon test guest\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg
halt_req:
    .quad 0
    .long 0, 0

ABI_NOTE
MFT_EMPTY
