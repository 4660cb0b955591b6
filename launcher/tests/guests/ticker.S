/* Prints "tick" 20 times, sleeping 20 ms in POLL before each, then halts with 0. */
#include "hvt.h"

    .text
    .globl _start
_start:
    mov $20, %r12d
2:  HYPERCALL HC_POLL, poll_req
    HYPERCALL HC_PUTS, puts_req
    dec %r12d
    jnz 2b
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
msg:
    .ascii "tick\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg
poll_req:
    .quad 20000000    /* timeout_nsecs */
    .quad 0           /* ready_set */
    .long 0, 0        /* ret */
halt_req:
    .quad 0
    .long 0, 0

ABI_NOTE
MFT_EMPTY
