/* Prints 200 lines of 50 bytes (49 characters and the newline) as fast as it can, then halts
 * with 0: 10,000 console bytes for the console rate limit to cut. */
#include "hvt.h"

    .text
    .globl _start
_start:
    mov $200, %r12d
2:  HYPERCALL HC_PUTS, puts_req
    dec %r12d
    jnz 2b
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
msg:
    .ascii "chatter chatter chatter chatter chatter chatter !\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg
halt_req:
    .quad 0
    .long 0, 0

ABI_NOTE
MFT_EMPTY
