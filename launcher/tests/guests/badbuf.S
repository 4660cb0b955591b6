/* PUTS whose data pointer lies beyond guest memory (the struct itself is fine). */
#include "hvt.h"

    .text
    .globl _start
_start:
    HYPERCALL HC_PUTS, puts_req
    HYPERCALL HC_HALT, halt_req
1:  jmp 1b

    .data
    .p2align 3
puts_req:
    .quad 0xfffff000, 16
halt_req:
    .quad 0
    .long 0, 0

ABI_NOTE
MFT_EMPTY
