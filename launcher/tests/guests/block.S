/* Writes a patterned sector at offset 512 of block device "storage", reads it back, compares;
 * then checks that a read at the capacity is refused with EINVAL. HALT 0 on success, 1 else. */
#include "hvt.h"

    .text
    .globl _start
_start:
    mov 32(%rdi), %rbx               /* boot_info->mft */
    mov (8 + 104 + 72)(%rbx), %r13   /* e[1].block.capacity */

    HYPERCALL HC_BLOCK_WRITE, wreq
    cmpl $0, wreq + 32
    jne fail

    HYPERCALL HC_BLOCK_READ, rreq
    cmpl $0, rreq + 32
    jne fail

    lea wbuf, %rsi
    lea rbuf, %rdi
    mov $512, %rcx
    cld
    repe cmpsb
    jne fail

    mov %r13, ereq + 8               /* offset = capacity */
    HYPERCALL HC_BLOCK_READ, ereq
    cmpl $2, ereq + 32               /* EINVAL */
    jne fail

    HYPERCALL HC_HALT, halt_ok
1:  jmp 1b
fail:
    HYPERCALL HC_HALT, halt_fail
2:  jmp 2b

    .data
    .p2align 3
wreq:   .quad 1, 512, wbuf, 512
        .long 99, 0
rreq:   .quad 1, 512, rbuf, 512
        .long 99, 0
ereq:   .quad 1, 0, rbuf, 512
        .long 99, 0
halt_ok:   .quad 0
           .long 0, 0
halt_fail: .quad 0
           .long 1, 0
wbuf:
    .set i, 0
    .rept 512
    .byte (i * 7 + 3) & 0xff
    .set i, i + 1
    .endr
rbuf:
    .space 512

ABI_NOTE
MFT_BEGIN 2
MFT_ENTRY storage, MFT_BLOCK
MFT_END
