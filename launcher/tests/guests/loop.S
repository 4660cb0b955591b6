/* Says so, then spins forever without a hypercall: only a kick can get it out of KVM_RUN. */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_PUTS, puts_req
1:  jmp 1b

    .data
msg:
    .ascii "looping\n"
msg_end:
    .p2align 3
puts_req:
    .quad msg, msg_end - msg

ABI_NOTE
MFT_EMPTY
