/* WALLTIME whose request struct sits in read-only data: the host must refuse to write it. */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_WALLTIME, wt_req
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .section .rodata
    .p2align 3
wt_req:    .quad 0

    .data
    .p2align 3
halt_req:  .quad 0
           .long 0, 0

ABI_NOTE
MFT_EMPTY
