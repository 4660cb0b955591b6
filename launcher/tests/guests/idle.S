/* Says "idle", then sleeps in POLL forever, as an idle network service would. */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_PUTS, puts_req
2:  HYPERCALL HC_POLL, poll_req
    jmp 2b

    .data
msg:
    .ascii "idle\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg
poll_req:
    .quad 10000000000  /* 10 s */
    .quad 0
    .long 0, 0

ABI_NOTE
MFT_EMPTY
