/* Reports a panic and halts with status 255 (abort). */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_PUTS, puts_req
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
msg:
    .ascii "guest panic: on purpose\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg
halt_req:
    .quad 0
    .long 255, 0

ABI_NOTE
MFT_EMPTY
