/* SSE in ring 0: runs on VMX/SVM hosts, fails emulation on nested PVM hosts. */
#include "hvt.h"

    .text
    .globl _start
_start:
    xorps %xmm0, %xmm0
    mulps %xmm0, %xmm1
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
    .p2align 3
halt_req:  .quad 0
           .long 0, 0

ABI_NOTE
MFT_EMPTY
