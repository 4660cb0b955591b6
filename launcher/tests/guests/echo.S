/* Waits for one Ethernet frame of type 0x88b5 on net device "service0", sends it back with
 * source and destination MAC swapped, and halts with 0. Other frames are ignored. */
#include "hvt.h"

    .text
    .globl _start
_start:
3:  HYPERCALL HC_POLL, poll_req
    movq $2048, rreq + 16            /* len in: buffer size */
    HYPERCALL HC_NET_READ, rreq
    cmpl $0, rreq + 24
    jne 3b
    cmpw $0xb588, buf + 12           /* ethertype 0x88b5, big-endian on the wire */
    jne 3b

    mov buf, %eax                    /* swap dst (0..5) and src (6..11) */
    movw buf + 4, %bx
    mov buf + 6, %ecx
    movw buf + 10, %dx
    mov %ecx, buf
    movw %dx, buf + 4
    mov %eax, buf + 6
    movw %bx, buf + 10

    mov rreq + 16, %rax
    mov %rax, wreq + 16
    HYPERCALL HC_NET_WRITE, wreq
    cmpl $0, wreq + 24
    jne fail
    HYPERCALL HC_HALT, halt_ok
1:  jmp 1b
fail:
    HYPERCALL HC_HALT, halt_fail
2:  jmp 2b

    .data
    .p2align 3
poll_req:  .quad 1000000000, 0
           .long 0, 0
rreq:      .quad 1, buf, 2048
           .long 0, 0
wreq:      .quad 1, buf, 0
           .long 0, 0
halt_ok:   .quad 0
           .long 0, 0
halt_fail: .quad 0
           .long 1, 0
buf:
    .space 2048

ABI_NOTE
MFT_BEGIN 2
MFT_ENTRY service0, MFT_NET
MFT_END
