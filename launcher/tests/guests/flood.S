/* A frame flooder: sends 100 broadcast frames of 60 bytes (ethertype 0x88b5) on net device
 * "service0" as fast as it can; halts with 0 if every NET_WRITE returned OK, else with 1. */
#include "hvt.h"

    .text
    .globl _start
_start:
    mov $100, %r12d
2:  HYPERCALL HC_NET_WRITE, wreq
    cmpl $0, wreq + 24
    jne fail
    dec %r12d
    jnz 2b
    HYPERCALL HC_HALT, halt_ok
1:  jmp 1b
fail:
    HYPERCALL HC_HALT, halt_fail
3:  jmp 3b

    .data
    .p2align 3
wreq:      .quad 1, frame, 60
           .long 0, 0
halt_ok:   .quad 0
           .long 0, 0
halt_fail: .quad 0
           .long 1, 0
frame:
    .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff      /* dst: broadcast */
    .byte 0x02, 0, 0, 0, 0, 0x2a                  /* src: the guest */
    .byte 0x88, 0xb5                              /* local experimental ethertype */
    .ascii "summon flood test frame"
    .space 60 - 14 - 23

ABI_NOTE
MFT_BEGIN 2
MFT_ENTRY service0, MFT_NET
MFT_END
